//! `km plugin ml-analytics ARGS...`: the report command and its arguments.
//!
//! Exit codes (km's convention): 0 the report was written, 2 a usage or file error (the
//! message names the argument or the file).

use std::path::PathBuf;

use km_plugin_sdk::CommandOutput;

use crate::clock;
use crate::error::Error;
use crate::report::{self, Query};
use crate::store::Store;

/// The usage text (`km plugin ml-analytics --help`).
pub(crate) const HELP: &str = "\
usage: km plugin ml-analytics report [--since DURATION] [--server SERVER] [--json | --html FILE]

Per-tool latency and error statistics of the MCP servers km monitored, and the anomalies found.

  --since DURATION   only the last DURATION (e.g. 30m, 2h, 7d); default: everything kept
  --server SERVER    only servers whose id starts with SERVER, or whose label contains it
                     (labels are like `node index.js`, ids are shown by --json)
  --json             JSON instead of a table (tools, methods, anomalies, percentiles in ms)
  --html FILE        a self-contained HTML page with charts, written to FILE (`-`: stdout)

Statistics are kept by the minute for 48 hours, by the hour for 60 days and by the day for two
years; anomalies for a year (see the plugin's settings in km's config.toml).
";

/// How to print the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Format {
    Table,
    Json,
    Html(PathBuf),
}

/// The validated arguments of `report`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReportArgs {
    pub(crate) since: Option<std::time::Duration>,
    pub(crate) server: Option<String>,
    pub(crate) format: Format,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    Help,
    Report(ReportArgs),
}

fn usage(message: String) -> Error {
    Error::Usage(format!("{message}\n\n{HELP}"))
}

/// Parses the arguments (without the plugin's name).
pub(crate) fn parse(args: &[String]) -> Result<Command, Error> {
    let mut args = args.iter();
    match args.next().map(String::as_str) {
        None | Some("-h" | "--help" | "help") => return Ok(Command::Help),
        Some("report") => {}
        Some(other) => return Err(usage(format!("unknown command {other:?}"))),
    }
    let mut report = ReportArgs {
        since: None,
        server: None,
        format: Format::Table,
    };
    let value = |flag: &str, args: &mut std::slice::Iter<'_, String>| {
        args.next()
            .cloned()
            .ok_or_else(|| usage(format!("{flag} needs a value")))
    };
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let take = |args: &mut std::slice::Iter<'_, String>| match &inline {
            Some(v) => Ok(v.clone()),
            None => value(flag, args),
        };
        match flag {
            "-h" | "--help" => return Ok(Command::Help),
            "--since" => {
                let text = take(&mut args)?;
                let duration = humantime::parse_duration(&text).map_err(|e| {
                    usage(format!(
                        "--since {text:?} is not a duration ({e}); try 30m, 2h or 7d"
                    ))
                })?;
                report.since = Some(duration);
            }
            "--server" => {
                let text = take(&mut args)?;
                if text.is_empty() {
                    return Err(usage("--server needs a non-empty value".to_owned()));
                }
                report.server = Some(text);
            }
            "--json" => {
                if inline.is_some() {
                    return Err(usage("--json takes no value".to_owned()));
                }
                if report.format != Format::Table {
                    return Err(usage("--json and --html exclude each other".to_owned()));
                }
                report.format = Format::Json;
            }
            "--html" => {
                let file = take(&mut args)?;
                if report.format != Format::Table {
                    return Err(usage("--json and --html exclude each other".to_owned()));
                }
                if file.is_empty() {
                    return Err(usage(
                        "--html needs a file name (or - for stdout)".to_owned(),
                    ));
                }
                report.format = Format::Html(PathBuf::from(file));
            }
            other => return Err(usage(format!("unknown argument {other:?}"))),
        }
    }
    Ok(Command::Report(report))
}

/// Runs the command at `now_ms` against `store`.
pub(crate) fn run(store: &Store, args: &[String], now_ms: i64) -> CommandOutput {
    match parse(args) {
        Ok(Command::Help) => CommandOutput::ok(HELP),
        Ok(Command::Report(args)) => match report_output(store, &args, now_ms) {
            Ok(output) => output,
            Err(e) => CommandOutput::failed(2, format!("ml-analytics: {e}\n")),
        },
        Err(e) => CommandOutput::failed(2, format!("ml-analytics: {e}\n")),
    }
}

fn report_output(store: &Store, args: &ReportArgs, now_ms: i64) -> Result<CommandOutput, Error> {
    let until = now_ms.div_euclid(1000) + 1;
    let since = args.since.map(|d| {
        until
            - i64::try_from(d.as_secs())
                .unwrap_or(i64::MAX / 4)
                .min(until)
    });
    let query = Query {
        since,
        until,
        server: args.server.clone(),
    };
    let report = report::build(store, &query, now_ms)?;
    let warnings: String = report
        .warnings
        .iter()
        .map(|w| format!("ml-analytics: warning: {w}\n"))
        .collect();
    match &args.format {
        Format::Table => Ok(CommandOutput {
            exit_code: 0,
            stdout: report::table::render(&report).into_bytes().into(),
            stderr: Vec::new().into(),
        }),
        Format::Json => Ok(CommandOutput {
            exit_code: 0,
            stdout: report::to_json(&report).into_bytes().into(),
            stderr: warnings.into_bytes().into(),
        }),
        Format::Html(path) => {
            let page = report::html::render(&report);
            if path.as_os_str() == "-" {
                return Ok(CommandOutput {
                    exit_code: 0,
                    stdout: page.into_bytes().into(),
                    stderr: warnings.into_bytes().into(),
                });
            }
            write_page(path, page.as_bytes())?;
            let mut stderr = warnings;
            stderr.push_str(&format!(
                "ml-analytics: wrote {} ({} tools, {} anomalies, {})\n",
                path.display(),
                report.tools.len(),
                report.anomalies.len(),
                clock::rfc3339(now_ms)
            ));
            Ok(CommandOutput {
                exit_code: 0,
                stdout: Vec::new().into(),
                stderr: stderr.into_bytes().into(),
            })
        }
    }
}

/// Writes the page beside its final name and renames it, so a reader never opens half a page.
fn write_page(path: &std::path::Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(Error::io(
            "writing",
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "its directory does not exist"),
        ));
    }
    crate::files::write_atomic(path, bytes)?;
    // A report is meant to be opened and shared: readable like any file the user writes.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| Error::io("setting the mode of", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn report_arguments_are_parsed_and_checked() {
        assert_eq!(parse(&args(&[])).expect("help"), Command::Help);
        assert_eq!(parse(&args(&["--help"])).expect("help"), Command::Help);
        let Command::Report(r) = parse(&args(&[
            "report",
            "--since",
            "2h",
            "--server=node",
            "--json",
        ]))
        .expect("ok") else {
            panic!("a report");
        };
        assert_eq!(r.since, Some(std::time::Duration::from_secs(7200)));
        assert_eq!(r.server.as_deref(), Some("node"));
        assert_eq!(r.format, Format::Json);
        let Command::Report(r) = parse(&args(&["report", "--html", "out.html"])).expect("ok")
        else {
            panic!("a report");
        };
        assert_eq!(r.format, Format::Html(PathBuf::from("out.html")));
        for (bad, says) in [
            (&["report", "--since", "soon"][..], "--since \"soon\""),
            (&["report", "--json", "--html", "x"], "exclude"),
            (&["report", "--since"], "needs a value"),
            (&["report", "--verbose"], "--verbose"),
            (&["export"], "unknown command"),
            (&["report", "--server", ""], "non-empty"),
        ] {
            let error = parse(&args(bad)).expect_err("refused").to_string();
            assert!(error.contains(says), "{bad:?}: {error}");
        }
    }

    #[test]
    fn a_report_into_a_missing_directory_fails_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path(), crate::settings::Retention::default());
        let target = dir.path().join("no-such-dir").join("r.html");
        let output = run(
            &store,
            &args(&["report", "--html", &target.to_string_lossy()]),
            1_800_000_000_000,
        );
        assert_eq!(output.exit_code, 2);
        let stderr = String::from_utf8_lossy(output.stderr.as_slice()).into_owned();
        assert!(stderr.contains("r.html"), "{stderr}");
    }
}
