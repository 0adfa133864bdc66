//! `km plugin tool-guard ...`: look at the pins, review a change, approve it, start a server
//! over.
//!
//! A server is named by its id (or a unique prefix of at least 4 digits), its label, or its
//! `serverInfo` name, as `list` shows them. A definition is named by its name; `--kind` says
//! which kind when a tool and a prompt share a name.
//!
//! The arguments are parsed here by hand: five commands with one or two options each do not
//! justify linking clap into the plugin library.
//!
//! Exit codes (km's convention): 0 done, 2 usage or other errors (an unknown server, a corrupt
//! pin file; `list` still lists every readable server before it fails).

use std::fmt::Write as _;
use std::time::Duration;

use km_plugin_sdk::{CommandOutput, Host};

use crate::definition::Kind;
use crate::diff::{self, Style};
use crate::events::{self, Server};
use crate::guard::{Found, Report};
use crate::policy::Action;
use crate::session::now;
use crate::store::{is_server_id, Pin, Pinned, ServerPins, Store, BY_USER};
use crate::Error;

/// How long a command waits for a session holding a server's lock.
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// The usage text.
pub(crate) const HELP: &str = "\
tool-guard: pins the tool, prompt and resource template definitions of every MCP server, and
holds a changed one until you approve it.

Usage: km plugin tool-guard COMMAND

Commands:
  list [SERVER]                       servers, their definitions and pin states
  diff SERVER NAME [--kind KIND]      the pinned and the pending definition, member by member
  approve SERVER NAME [--kind KIND] [--sha256 HASH]
                                      make the pending definition the pin (--sha256: only if it
                                      is still the one you reviewed)
  approve SERVER --all                approve every pending change of SERVER
  approve --all                       approve every pending change of every server
  forget SERVER                       drop SERVER's pins; its next session pins anew

SERVER is a server's id (or a unique prefix of it), its label or its serverInfo name, as
`list` shows them. KIND is tool, prompt or resource-template.
Policy: KM_HOME/policies/tool-guard.toml (see the plugin's README).
";

/// Runs a command; never fails: errors are its output. Approvals are events, emitted through
/// `host`.
pub(crate) fn run(host: &Host, store: &Store, args: &[String]) -> CommandOutput {
    // Outside a session km may not deliver events; an approval stands regardless.
    let emit = |event: &serde_json::Value| {
        let _ = host.emit(events::DRIFT, event);
    };
    run_with(&emit, store, args, Style::detect())
}

/// [`run`], with events handed to `emit`.
pub(crate) fn run_with(
    emit: &dyn Fn(&serde_json::Value),
    store: &Store,
    args: &[String],
    style: Style,
) -> CommandOutput {
    let result = match args.first().map(String::as_str) {
        None | Some("help" | "--help" | "-h") => Ok(HELP.to_owned()),
        Some("list") => return with_errors(list(store, &args[1..], style)),
        Some("diff") => diff(store, &args[1..], style),
        Some("approve") => return with_errors(approve(emit, store, &args[1..])),
        Some("forget") => forget(store, &args[1..]),
        Some(other) => Err(Error::Usage(format!(
            "unknown command {other:?}; `km plugin tool-guard --help` lists them"
        ))),
    };
    match result {
        Ok(text) => CommandOutput::ok(text),
        Err(e) => CommandOutput::failed(2, format!("tool-guard: {e}\n")),
    }
}

/// The output of a command that may fail in part: what it did, then what failed (exit 2).
fn with_errors(result: Result<(String, Vec<String>), Error>) -> CommandOutput {
    match result {
        Ok((out, errors)) if errors.is_empty() => CommandOutput::ok(out),
        Ok((out, errors)) => CommandOutput {
            exit_code: 2,
            stdout: out.into_bytes().into(),
            stderr: errors
                .iter()
                .map(|e| format!("tool-guard: {e}\n"))
                .collect::<String>()
                .into_bytes()
                .into(),
        },
        Err(e) => CommandOutput::failed(2, format!("tool-guard: {e}\n")),
    }
}

/// The options and positional arguments of a command.
#[derive(Debug, Default)]
struct Args {
    positional: Vec<String>,
    kind: Option<Kind>,
    sha256: Option<String>,
    all: bool,
}

fn parse(args: &[String], allowed: &[&str]) -> Result<Args, Error> {
    let mut parsed = Args::default();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if arg.starts_with("--") => (flag, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        if !flag.starts_with("--") || flag == "--" {
            parsed.positional.push(arg.clone());
            continue;
        }
        if !allowed.contains(&flag) {
            return Err(Error::Usage(format!("unknown option {flag}")));
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| rest.next().cloned())
                .ok_or_else(|| Error::Usage(format!("{flag} needs a value")))
        };
        match flag {
            "--kind" => {
                let v = value()?;
                parsed.kind = Some(Kind::parse(&v).ok_or_else(|| {
                    Error::Usage(format!(
                        "--kind {v:?}: expected tool, prompt or resource-template"
                    ))
                })?);
            }
            "--sha256" => parsed.sha256 = Some(value()?.to_ascii_lowercase()),
            "--all" => parsed.all = true,
            _ => return Err(Error::Usage(format!("unknown option {flag}"))),
        }
    }
    Ok(parsed)
}

/// The server `name` designates.
fn resolve(store: &Store, name: &str) -> Result<(String, ServerPins), Error> {
    let ids = store.ids()?;
    let mut servers = Vec::new();
    for id in &ids {
        match store.read(id) {
            Ok(Some(pins)) => servers.push(pins),
            Ok(None) => {}
            // A corrupt file can only be named by its id (its label cannot be read).
            Err(e) if id == name => return Err(e),
            Err(_) => {}
        }
    }
    let exact: Vec<&ServerPins> = servers.iter().filter(|p| p.server.id == name).collect();
    let by_prefix: Vec<&ServerPins> = if name.len() >= 4 {
        servers
            .iter()
            .filter(|p| p.server.id.starts_with(name))
            .collect()
    } else {
        Vec::new()
    };
    let by_name: Vec<&ServerPins> = servers
        .iter()
        .filter(|p| p.server.label == name || p.server.info_name() == Some(name))
        .collect();
    let matches = [exact, by_prefix, by_name]
        .into_iter()
        .find(|m| !m.is_empty())
        .unwrap_or_default();
    match matches.as_slice() {
        [one] => Ok((one.server.id.clone(), (*one).clone())),
        [] if is_server_id(name) => Err(Error::UnknownServer {
            server: name.to_owned(),
            known: format!("there is no pin file {}", store.path(name).display()),
        }),
        [] => Err(Error::UnknownServer {
            server: name.to_owned(),
            known: if servers.is_empty() {
                format!(
                    "no server is pinned yet; pins are kept in {}",
                    store_dir(store)
                )
            } else {
                format!(
                    "pinned: {}",
                    servers
                        .iter()
                        .map(|p| format!("{} ({})", p.server.label, p.server.id))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
        }),
        many => Err(Error::AmbiguousServer {
            server: name.to_owned(),
            matches: many
                .iter()
                .map(|p| format!("{} ({})", p.server.label, p.server.id))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

fn store_dir(store: &Store) -> String {
    store
        .path("0000000000000000")
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// The pin `name` of `pins`, of `kind` or of the one kind that has it.
fn find<'a>(
    pins: &'a ServerPins,
    name: &str,
    kind: Option<Kind>,
) -> Result<(Kind, &'a Pin), Error> {
    let kinds: Vec<Kind> = kind.map_or(Kind::ALL.to_vec(), |k| vec![k]);
    let found: Vec<(Kind, &Pin)> = kinds
        .into_iter()
        .filter_map(|k| pins.of(k).get(name).map(|p| (k, p)))
        .collect();
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(Error::UnknownDefinition {
            server: describe_server(pins),
            what: kind.map_or("definition".to_owned(), |k| k.to_string()),
            name: name.to_owned(),
        }),
        many => Err(Error::AmbiguousDefinition {
            server: describe_server(pins),
            name: name.to_owned(),
            kinds: many
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>()
                .join(" and a "),
        }),
    }
}

fn describe_server(pins: &ServerPins) -> String {
    format!("{} ({})", pins.server.label, pins.server.id)
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

fn info_text(pins: &ServerPins) -> String {
    let Some(info) = &pins.server.server_info else {
        return "-".to_owned();
    };
    let name = info.get("name").and_then(|v| v.as_str()).unwrap_or("?");
    match info.get("version").and_then(|v| v.as_str()) {
        Some(version) => format!("{name} {version}"),
        None => name.to_owned(),
    }
}

/// The state of a pin, as `list` shows it.
fn state(pin: &Pin) -> String {
    if let Some(pending) = &pin.pending {
        let what = if !pending.flags.is_empty() {
            format!("poisoned? {}", pending.flags.join(", "))
        } else if pin.trusted.is_some() {
            format!("changed ({})", pending.fields.join(", "))
        } else {
            pending.change.as_str().to_owned()
        };
        let state = if pending.action == Action::Block {
            "HELD"
        } else {
            "UNAPPROVED"
        };
        let hashes = match &pin.trusted {
            Some(t) => format!("{} -> {}", short(&t.sha256), short(&pending.sha256)),
            None => format!("-> {}", short(&pending.sha256)),
        };
        return format!("{state:<10}  {hashes}  {what}");
    }
    match (&pin.trusted, &pin.missing_since) {
        (Some(t), Some(since)) => {
            format!("missing     {}  not listed since {since}", short(&t.sha256))
        }
        (Some(t), None) => format!("pinned      {}  by {}, {}", short(&t.sha256), t.by, t.since),
        (None, _) => "unknown".to_owned(),
    }
}

fn list(store: &Store, args: &[String], style: Style) -> Result<(String, Vec<String>), Error> {
    let parsed = parse(args, &[])?;
    let mut out = String::new();
    let mut errors = Vec::new();
    let ids = match parsed.positional.as_slice() {
        [] => store.ids()?,
        [server] => vec![resolve(store, server)?.0],
        _ => return Err(Error::Usage("list takes at most one SERVER".to_owned())),
    };
    if ids.is_empty() {
        out.push_str(
                "no server is pinned yet: tool-guard pins a server's definitions in its first km monitor session\n",
            );
    }
    for id in ids {
        let pins = match store.read(&id) {
            Ok(Some(pins)) => pins,
            Ok(None) => continue,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        let _ = writeln!(
            out,
            "{}  {}  serverInfo: {}  last seen {}",
            style.bold(&pins.server.label),
            pins.server.id,
            info_text(&pins),
            pins.server.last_seen
        );
        let mut any = false;
        for (kind, name, pin) in pins.all() {
            any = true;
            let _ = writeln!(out, "  {:<17} {:<28} {}", kind.as_str(), name, state(pin));
        }
        if !any {
            out.push_str("  (no definitions listed yet)\n");
        }
        let held = pins.all().filter(|(_, _, p)| p.pending.is_some()).count();
        if held > 0 {
            let _ = writeln!(
                out,
                "  {held} pending: review with `km plugin tool-guard diff {} NAME`",
                pins.server.id
            );
        }
    }
    Ok((out, errors))
}

fn diff(store: &Store, args: &[String], style: Style) -> Result<String, Error> {
    let parsed = parse(args, &["--kind"])?;
    let [server, name] = parsed.positional.as_slice() else {
        return Err(Error::Usage(
            "usage: diff SERVER NAME [--kind KIND]".to_owned(),
        ));
    };
    let (id, pins) = resolve(store, server)?;
    let (kind, pin) = find(&pins, name, parsed.kind)?;
    let mut out = String::new();
    let what = format!("{kind} {name} of server {}", describe_server(&pins));
    let Some(pending) = &pin.pending else {
        let _ = writeln!(out, "{what}: no pending change");
        if let Some(trusted) = &pin.trusted {
            let _ = writeln!(
                out,
                "  pinned   {}  (by {}, {})",
                trusted.sha256, trusted.by, trusted.since
            );
        }
        return Ok(out);
    };
    let state = if pending.action == Action::Block {
        "held"
    } else {
        "let through, not pinned"
    };
    let _ = writeln!(
        out,
        "{}",
        style.bold(&format!("{what}: {} ({state})", pending.change.as_str()))
    );
    if let Some(trusted) = &pin.trusted {
        let _ = writeln!(
            out,
            "  pinned   {}  (by {}, {})",
            trusted.sha256, trusted.by, trusted.since
        );
    }
    let _ = writeln!(
        out,
        "  pending  {}  (seen {})",
        pending.sha256, pending.seen
    );
    if !pending.flags.is_empty() {
        let _ = writeln!(
            out,
            "  flagged by the detectors: {}",
            pending.flags.join(", ")
        );
    }
    out.push('\n');
    match &pin.trusted {
        Some(trusted) => out.push_str(&diff::render(
            &trusted.definition,
            &pending.definition,
            style,
        )),
        None => out.push_str(&diff::render_new(&pending.definition, style)),
    }
    let _ = writeln!(
        out,
        "\nto approve: km plugin tool-guard approve {id} {name}{} --sha256 {}",
        parsed
            .kind
            .map(|k| format!(" --kind {k}"))
            .unwrap_or_default(),
        pending.sha256
    );
    Ok(out)
}

/// Makes `pin`'s pending definition its trusted one; the report of it.
fn approve_pin(kind: Kind, name: &str, pin: &mut Pin, now: &str) -> Option<Report> {
    let pending = pin.pending.take()?;
    let mut report = Report::new(kind, name, Found::Approved, Action::Approve);
    report.sha256 = Some(pending.sha256.clone());
    report.pinned_sha256 = pin.trusted.as_ref().map(|t| t.sha256.clone());
    report.fields = pending.fields.clone();
    report.flags = pending.flags.clone();
    report.by = Some(BY_USER.to_owned());
    pin.trusted = Some(Pinned {
        sha256: pending.sha256,
        body_sha256: pending.body_sha256,
        definition: pending.definition,
        since: now.to_owned(),
        by: BY_USER.to_owned(),
    });
    pin.missing_since = None;
    Some(report)
}

fn approve(
    emit: &dyn Fn(&serde_json::Value),
    store: &Store,
    args: &[String],
) -> Result<(String, Vec<String>), Error> {
    let parsed = parse(args, &["--kind", "--sha256", "--all"])?;
    let now = now();
    let mut out = String::new();
    let (targets, name): (Vec<String>, Option<&String>) =
        match (parsed.all, parsed.positional.as_slice()) {
            (true, []) => (store.ids()?, None),
            (true, [server]) => (vec![resolve(store, server)?.0], None),
            (false, [server, name]) => (vec![resolve(store, server)?.0], Some(name)),
            _ => return Err(Error::Usage(
                "usage: approve SERVER NAME [--kind KIND] [--sha256 HASH] | approve [SERVER] --all"
                    .to_owned(),
            )),
        };
    let mut approved = 0;
    let mut failures = Vec::new();
    for id in targets {
        let result = store.update(&id, LOCK_TIMEOUT, |pins| -> Result<_, Error> {
            let Some(pins) = pins else {
                return Ok(Vec::new());
            };
            let server = (
                pins.server.label.clone(),
                pins.server.id.clone(),
                pins.server.info_name().map(str::to_owned),
            );
            let mut reports = Vec::new();
            match name {
                Some(name) => {
                    let (kind, _) = find(pins, name, parsed.kind)?;
                    let what = format!("{kind} {name} of server {}", describe_server(pins));
                    let pin = pins
                        .of_mut(kind)
                        .get_mut(name.as_str())
                        .ok_or_else(|| Error::NothingPending { what: what.clone() })?;
                    let Some(pending) = &pin.pending else {
                        return Err(Error::NothingPending { what });
                    };
                    if let Some(expected) = &parsed.sha256 {
                        if expected.len() < 8 || !pending.sha256.starts_with(expected.as_str()) {
                            return Err(Error::NotReviewed {
                                what,
                                expected: expected.clone(),
                                actual: pending.sha256.clone(),
                            });
                        }
                    }
                    reports.extend(approve_pin(kind, name, pin, &now));
                }
                None => {
                    for kind in Kind::ALL {
                        for (name, pin) in pins.of_mut(kind).iter_mut() {
                            reports.extend(approve_pin(kind, name, pin, &now));
                        }
                    }
                }
            }
            Ok(reports.into_iter().map(|r| (server.clone(), r)).collect())
        });
        let reports = match result {
            Ok(Ok(reports)) => reports,
            Ok(Err(e)) | Err(e) => {
                if name.is_some() {
                    return Err(e);
                }
                failures.push(e.to_string());
                continue;
            }
        };
        for ((label, id, info_name), report) in reports {
            approved += 1;
            let _ = writeln!(
                out,
                "approved {} {} of server {label} ({id}): pinned {}",
                report.kind,
                report.name,
                report.sha256.as_deref().map(short).unwrap_or("?")
            );
            if !report.flags.is_empty() {
                let _ = writeln!(
                    out,
                    "  note: the detectors flagged it ({})",
                    report.flags.join(", ")
                );
            }
            let server = Server {
                id: &id,
                label: &label,
                info_name: info_name.as_deref(),
                session_id: "",
            };
            emit(&events::event(&server, &report));
        }
    }
    if approved == 0 && failures.is_empty() {
        out.push_str("nothing to approve: no pending change\n");
    }
    Ok((out, failures))
}

fn forget(store: &Store, args: &[String]) -> Result<String, Error> {
    let parsed = parse(args, &[])?;
    let [server] = parsed.positional.as_slice() else {
        return Err(Error::Usage("usage: forget SERVER".to_owned()));
    };
    // A corrupt pin file can be forgotten by its id, since its label cannot be read.
    let (id, label) = if is_server_id(server) && store.path(server).exists() {
        let label = store
            .read(server)
            .ok()
            .flatten()
            .map(|p| p.server.label)
            .unwrap_or_else(|| "?".to_owned());
        (server.clone(), label)
    } else {
        let (id, pins) = resolve(store, server)?;
        (id, pins.server.label)
    };
    if store.forget(&id, LOCK_TIMEOUT)? {
        Ok(format!(
            "forgot server {label} ({id}): its next session pins its definitions anew (trust on first use)\n"
        ))
    } else {
        Err(Error::UnknownServer {
            server: server.clone(),
            known: "it has no pin file".to_owned(),
        })
    }
}

#[cfg(test)]
mod tests;
