//! `km doctor`: is this km installation sound, and what fixes what is not.
//!
//! One line per check, each failure with the command or edit that fixes it, in the order a
//! person would fix them (a KM_HOME others can write makes every later answer moot):
//!
//! 1. `KM_HOME`: StrictModes ([`crate::strict`]) on it, the directories on the way to it, the
//!    trust store, the rollback record, the plugin directory and `config.toml`; and the local
//!    signing key of `km setup`, which nobody else may read;
//! 2. trusted keys: which ones, for which plugins; none is a failure (no plugin can load);
//! 3. each installed plugin, through the same [`Verifier`] `km monitor` uses;
//! 4. executable memory: whether plugins will load from sealed memfds or a private copy
//!    ([`crate::loader::probe_map_path`]);
//! 5. the API endpoint: the transport in force (TLS 1.3, roots, pins), then whether it answers
//!    and takes the configured API key (`GET /api/account`); skipped with `--offline`, and only
//!    informative when no key is configured (Free plugins need none);
//! 6. MCP clients: for each client configuration on this machine, how many of its stdio
//!    servers run through km.
//!
//! Exit code 0 when nothing failed (warnings do not fail), 1 when a check failed, 2 when the
//! doctor itself could not run.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use km_abi::Tier;
use serde::Serialize;
use serde_json::Value;

use super::Globals;
use crate::api::ApiClient;
use crate::cli::DoctorArgs;
use crate::clients::edit::{self, Outcome, Wrapper};
use crate::clients::{self};
use crate::config::{Config, DEFAULT_API_URL};
use crate::exit;
use crate::host::ApiTransport;
use crate::loader::{self, MapPath};
use crate::strict::{self, Expect};
use crate::verifier::{Refusal, Verifier};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    /// Works, but not as it should (an unwrapped server, no plugins installed).
    Warn,
    /// Broken: km will not do its job until it is fixed.
    Fail,
    /// Neither good nor bad (nothing configured that needs checking).
    Info,
}

impl Status {
    fn mark(self) -> &'static str {
        match self {
            Status::Ok => "✓",
            Status::Warn => "!",
            Status::Fail => "✗",
            Status::Info => "·",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
struct Finding {
    /// `km_home`, `trust`, `plugin`, `memfd`, `api`, `client`.
    area: &'static str,
    status: Status,
    summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

#[derive(Debug, Default)]
struct Report(Vec<Finding>);

impl Report {
    fn add(&mut self, area: &'static str, status: Status, summary: impl Into<String>) {
        self.0.push(Finding {
            area,
            status,
            summary: summary.into(),
            fix: None,
        });
    }

    fn fail(&mut self, area: &'static str, summary: impl Into<String>, fix: impl Into<String>) {
        self.fix(area, Status::Fail, summary, fix);
    }

    fn fix(
        &mut self,
        area: &'static str,
        status: Status,
        summary: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.0.push(Finding {
            area,
            status,
            summary: summary.into(),
            fix: Some(fix.into()),
        });
    }

    /// A refusal of km's own files: the reason names the path and ends with the fix.
    fn refusal(&mut self, area: &'static str, refusal: &Refusal) {
        let (summary, fix) = split_fix(&refusal.reason);
        self.0.push(Finding {
            area,
            status: Status::Fail,
            summary: format!("{}: {summary}", refusal.path.display()),
            fix,
        });
    }

    fn failed(&self) -> bool {
        self.0.iter().any(|f| f.status == Status::Fail)
    }
}

/// StrictModes reasons end with "; run `...`" or "; ...": the part after the last `; ` that
/// says what to do becomes the fix.
fn split_fix(reason: &str) -> (String, Option<String>) {
    match reason.rsplit_once("; ") {
        Some((what, fix)) if fix.starts_with("run ") || fix.starts_with("remove") => {
            (what.to_owned(), Some(fix.to_owned()))
        }
        _ => (reason.to_owned(), None),
    }
}

/// Runs `km doctor`.
pub(super) fn run(globals: &Globals, args: DoctorArgs) -> Result<ExitCode> {
    let mut report = Report::default();
    let verifier = check_home(globals, &mut report);
    if let Some(verifier) = &verifier {
        check_trust(verifier, &mut report);
        check_plugins(globals, verifier, &mut report);
    }
    check_memory(&mut report);
    check_api(globals, args.offline, &mut report);
    check_clients(&mut report);

    if args.json {
        let value = serde_json::json!({
            "km_home": globals.home.root(),
            "ok": !report.failed(),
            "checks": report.0,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("km doctor: KM_HOME {}", globals.home.root().display());
        for finding in &report.0 {
            println!("{} {}", finding.status.mark(), finding.summary);
            if let Some(fix) = &finding.fix {
                println!("    fix: {fix}");
            }
        }
        let failures = report.0.iter().filter(|f| f.status == Status::Fail).count();
        let warnings = report.0.iter().filter(|f| f.status == Status::Warn).count();
        println!(
            "{}",
            match (failures, warnings) {
                (0, 0) => "Everything checks out.".to_owned(),
                (0, w) => format!("No failures; {w} warning(s)."),
                (f, _) => format!("{f} check(s) failed."),
            }
        );
    }
    Ok(ExitCode::from(if report.failed() {
        exit::REFUSED
    } else {
        exit::OK
    }))
}

/// StrictModes on `KM_HOME` and what in it decides trust; the verifier when they pass.
fn check_home(globals: &Globals, report: &mut Report) -> Option<Verifier> {
    let home = &globals.home;
    if !home.root().exists() {
        report.fix(
            "km_home",
            Status::Warn,
            format!("{} does not exist yet", home.root().display()),
            "km setup",
        );
        return None;
    }
    let verifier = match Verifier::open(home) {
        Ok(v) => v,
        Err(refusal) => {
            report.refusal("km_home", &refusal);
            return None;
        }
    };
    let entries = [
        (home.plugins_dir(), "plugin directory", Expect::Dir),
        (home.config_file(), "configuration file", Expect::File),
        (home.keys_dir(), "keys directory", Expect::Dir),
    ];
    let mut sound = true;
    for (path, what, expect) in entries {
        if let Err(refusal) = strict::check_entry(&path, what, expect) {
            report.refusal("km_home", &refusal);
            sound = false;
        }
    }
    let key = home.local_signing_key();
    match strict::check_entry(&key, "local signing key", Expect::Secret) {
        Ok(_) => {}
        // Readable by others is not fixed by a chmod: whoever read it can sign plugins.
        Err(refusal) if refusal.check == km_signing::Check::Permissions => {
            report.fail(
                "km_home",
                format!(
                    "{}: the local signing key is readable by others ({}): whoever read it can \
                     sign plugins this km trusts",
                    key.display(),
                    refusal.reason
                ),
                format!(
                    "remove it and its trust entry (`km trust list`, `km trust remove KEY_ID`), \
                     then run `km setup` again: {}",
                    key.display()
                ),
            );
            sound = false;
        }
        Err(refusal) => {
            report.refusal("km_home", &refusal);
            sound = false;
        }
    }
    if sound {
        report.add(
            "km_home",
            Status::Ok,
            format!(
                "{}: yours, and writable by nobody else (nor the directories on the way)",
                home.root().display()
            ),
        );
    }
    Some(verifier)
}

fn check_trust(verifier: &Verifier, report: &mut Report) {
    let keys = verifier.trust().keys();
    if keys.is_empty() {
        report.fail(
            "trust",
            "no trusted keys: no plugin can load",
            "km setup (signs and trusts the bundled plugins), or km trust add KEY.pub",
        );
        return;
    }
    let listed: Vec<String> = keys
        .iter()
        .map(|k| {
            let scope = k
                .scope
                .as_ref()
                .map_or_else(|| "any plugin".to_owned(), |s| s.join(", "));
            let origin = if k.builtin { ", built in" } else { "" };
            format!("{} ({scope}{origin})", k.label)
        })
        .collect();
    let revoked = verifier.trust().revocations().len();
    report.add(
        "trust",
        Status::Ok,
        format!(
            "{} trusted key(s): {}{}",
            keys.len(),
            listed.join("; "),
            if revoked > 0 {
                format!("; {revoked} revocation(s)")
            } else {
                String::new()
            }
        ),
    );
}

fn check_plugins(globals: &Globals, verifier: &Verifier, report: &mut Report) {
    let dir = globals.home.plugins_dir();
    let checked = match verifier.check_dir(&dir) {
        Ok(checked) => checked,
        Err(refusal) => {
            report.refusal("plugin", &refusal);
            return;
        }
    };
    if checked.is_empty() {
        report.fix(
            "plugin",
            Status::Warn,
            format!("no plugins installed in {}", dir.display()),
            "km setup",
        );
        return;
    }
    let records = crate::subscription::load_records(&globals.home).unwrap_or_default();
    for result in checked {
        match result {
            Ok(checked) => {
                let m = checked.verified().manifest();
                let grants = if m.capabilities.is_empty() {
                    String::new()
                } else {
                    format!(", may {}", m.capabilities.join(", "))
                };
                let mut summary = format!(
                    "{} {} ({}): verified, signed by {}{grants}",
                    m.name,
                    m.version,
                    m.tier.display_name(),
                    checked.verified().key_label()
                );
                let mut status = Status::Ok;
                let mut fix = None;
                if m.tier != Tier::Free {
                    match records.iter().find(|r| r.plugin == m.name) {
                        Some(record) if record.authorized => {
                            summary.push_str("; subscription authorised");
                        }
                        Some(record) => {
                            status = Status::Warn;
                            summary.push_str(&format!(
                                "; degraded: {}",
                                if record.reason.is_empty() {
                                    &record.outcome
                                } else {
                                    &record.reason
                                }
                            ));
                            fix = Some("km plugin-status, then km plugin-refresh".to_owned());
                        }
                        None => summary.push_str("; not authenticated yet"),
                    }
                }
                report.0.push(Finding {
                    area: "plugin",
                    status,
                    summary,
                    fix,
                });
            }
            Err(refusal) => {
                let name = refusal
                    .claimed
                    .as_ref()
                    .map_or_else(String::new, |m| format!("{} ", m.name));
                report.fail(
                    "plugin",
                    format!(
                        "{name}{}: refused ({}): {}",
                        refusal.path.display(),
                        refusal.check,
                        refusal.reason
                    ),
                    "km setup for a bundled plugin, km install-plugin NAME for one from the API, \
                     or km uninstall-plugin NAME",
                );
            }
        }
    }
}

fn check_memory(report: &mut Report) {
    match loader::probe_map_path() {
        Ok(MapPath::Memfd) => report.add(
            "memfd",
            Status::Ok,
            "executable memfds: plugins load from sealed memory, never from a file",
        ),
        Ok(MapPath::PrivateCopy { base, why }) => report.add(
            "memfd",
            Status::Ok,
            format!(
                "plugins load from private copies in {} ({why})",
                base.display()
            ),
        ),
        Err(refusal) => report.fail(
            "memfd",
            format!("{}: {}", refusal.path.display(), refusal.reason),
            "allow executable memfds (sysctl vm.memfd_noexec=0 or 1), or set XDG_RUNTIME_DIR to \
             a private directory on a file system mounted without noexec",
        ),
    }
}

/// How long the doctor waits for the API.
const API_TIMEOUT_MS: u32 = 5_000;

fn check_api(globals: &Globals, offline: bool, report: &mut Report) {
    let config = match Config::load(&globals.home) {
        Ok(config) => config,
        Err(e) => {
            report.fail(
                "api",
                format!("{}: {e:#}", globals.home.config_file().display()),
                "fix the file, or write it again with km init",
            );
            return;
        }
    };
    let Some(api_key) = config.api_key.clone() else {
        report.add(
            "api",
            Status::Info,
            "no API key configured: Free plugins only (km init --api-key KEY for Pro and \
             Enterprise plugins)",
        );
        return;
    };
    let mut config = config;
    let url = config
        .api_url
        .get_or_insert_with(|| DEFAULT_API_URL.to_owned())
        .clone();
    let transport = match crate::tls::transport_report(&config) {
        Ok(t) => {
            let pins = if t.pins.is_empty() {
                "no pins".to_owned()
            } else {
                format!(
                    "pins {} (from {})",
                    t.pins.join(", "),
                    t.pin_source.map_or("config", |s| s.as_str())
                )
            };
            format!("{}, {}, {pins}", t.tls_versions, t.roots)
        }
        Err(e) => {
            report.fail(
                "api",
                format!("{url}: {e:#}"),
                "correct api_pins / api_ca in config.toml",
            );
            return;
        }
    };
    if offline {
        report.add(
            "api",
            Status::Info,
            format!("{url}: not contacted (--offline); transport: {transport}"),
        );
        return;
    }
    let client = match ApiClient::for_config(&globals.runtime, &config) {
        Ok(Some(client)) => client,
        Ok(None) => return,
        Err(e) => {
            report.fail(
                "api",
                format!("{url}: {e:#}"),
                "set api_url to an https:// URL (km init --api-url URL)",
            );
            return;
        }
    };
    let request = super::seats::with_api_key("GET", "/api/account", &api_key, API_TIMEOUT_MS);
    match client.request(&request) {
        Ok(answer) if answer.status == 200 => {
            let account: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
            let customer = account["customer_id"].as_str().unwrap_or("?");
            let tier = account["tier"].as_str().unwrap_or("?");
            let until = account["subscription_end"]
                .as_i64()
                .and_then(|t| u64::try_from(t).ok())
                .map(|t| {
                    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t);
                    format!(", until {}", humantime::format_rfc3339_seconds(when))
                })
                .unwrap_or_default();
            report.add(
                "api",
                Status::Ok,
                format!(
                    "{url}: reachable, API key valid (customer {customer}, {tier}{until}); \
                     {transport}"
                ),
            );
        }
        Ok(answer) if answer.status == 401 || answer.status == 403 => report.fail(
            "api",
            format!(
                "{url}: reachable, but it refuses the API key {} ({})",
                crate::config::mask_key(&api_key),
                error_text(&answer.body, answer.status)
            ),
            "km init --api-key KEY with a current key",
        ),
        Ok(answer) => report.fail(
            "api",
            format!(
                "{url}: answered {} to GET /api/account ({})",
                answer.status,
                error_text(&answer.body, answer.status)
            ),
            "check api_url in config.toml (km config show)",
        ),
        Err(e) => report.fail(
            "api",
            format!("{url}: unreachable: {}", e.message),
            "check the network and api_url in config.toml (km config show)",
        ),
    }
}

pub(super) fn error_text(body: &[u8], status: u16) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("HTTP {status}"))
}

fn check_clients(report: &mut Report) {
    let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) else {
        report.add(
            "client",
            Status::Info,
            "HOME is not set: no MCP clients to look at",
        );
        return;
    };
    let files = clients::known(Path::new(&home));
    if files.is_empty() {
        report.add(
            "client",
            Status::Info,
            "no MCP client configuration found (Claude Desktop, Claude Code, Cursor, VS Code, \
             Windsurf)",
        );
        return;
    }
    // Only to classify the entries: nothing is written.
    let wrapper = Wrapper {
        km: Path::new("km"),
        home: None,
    };
    for file in files {
        let label = format!("{} ({})", file.client.name(), file.path.display());
        let text = match std::fs::read_to_string(&file.path) {
            Ok(text) => text,
            Err(e) => {
                report.fix(
                    "client",
                    Status::Warn,
                    format!("{label}: cannot be read: {e}"),
                    "check the file's permissions",
                );
                continue;
            }
        };
        let edited = match edit::wrap(&text, file.client, &wrapper) {
            Ok(edited) => edited,
            Err(refusal) => {
                report.fix(
                    "client",
                    Status::Warn,
                    format!("{label}: km cannot edit it: {refusal}"),
                    "fix the file in its client; km wrap leaves it untouched until then",
                );
                continue;
            }
        };
        let count =
            |f: fn(&Outcome) -> bool| edited.servers.iter().filter(|s| f(&s.outcome)).count();
        let through_km = count(|o| *o == Outcome::AlreadyWrapped);
        let not = count(|o| *o == Outcome::Wrapped);
        let remote = count(|o| *o == Outcome::Remote);
        let remote_text = if remote > 0 {
            format!("; {remote} remote server(s), which km cannot stand in front of")
        } else {
            String::new()
        };
        match (through_km, not) {
            (0, 0) => report.add(
                "client",
                Status::Info,
                format!("{label}: no stdio servers{remote_text}"),
            ),
            (k, 0) => report.add(
                "client",
                Status::Ok,
                format!("{label}: all {k} stdio server(s) run through km{remote_text}"),
            ),
            (k, n) => report.fix(
                "client",
                Status::Warn,
                format!(
                    "{label}: {n} of {} stdio server(s) do not run through km{remote_text}",
                    k + n
                ),
                format!("km wrap --config {}", file.path.display()),
            ),
        }
    }
}
