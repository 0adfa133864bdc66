//! `km plugin compliance-reporting COMMAND ...`: checking the trail, reports, erasure.
//!
//! Exit codes: 0 success; 1 the check said no (the trail or a report does not verify, an erasure
//! found nothing to erase is still 0); 2 usage or other errors. Output goes to stdout; problems to
//! stderr.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use km_audit::{AuditKey, SignedCheckpoint};
use km_plugin_sdk::auth::now_unix;
use km_plugin_sdk::{CommandOutput, SubscriptionState};
use serde_json::json;

use crate::content::{KeyStore, Opened};
use crate::policy::Policy;
use crate::record::{self, Record};
use crate::report::{self, Facts, Format, Framework, ReportSignature};
use crate::trail::{self, CheckpointLine, Upkeep, Writer};
use crate::verify::{self, Problem, Verification, Witnessed};
use crate::witness::{self, OtherKey, Submission};
use crate::{keys, local_actor, Shared, NAME};

/// `km plugin compliance-reporting --help`.
pub const HELP: &str = "\
compliance-reporting: a tamper-evident audit trail of MCP calls, SOC 2 and GDPR reports.

USAGE: km plugin compliance-reporting COMMAND [OPTIONS]

COMMANDS:
  verify [--json] [--offline] [--public-key FILE]
      Check the trail: every record's link, every signed checkpoint, and the checkpoints the
      Kilometers API holds (unless --offline). Exit 0 when it verifies, 1 when it does not,
      naming the first bad record or checkpoint.
  report --framework soc2|gdpr [--since DATE] [--until DATE] --out FILE
      Write a report (FILE ending in .html, .json or .md) and its signature FILE.sig, from a
      trail that verifies and the checkpoint it ends at. DATE is YYYY-MM-DD (--until: to the end
      of that day) or an RFC 3339 time. Needs an Enterprise subscription.
  verify-report FILE [--public-key FILE]
      Check a report's signature and the checkpoint it carries. Exit 0 or 1.
  erase --subject ID
      Destroy the key of data subject ID: its captured content becomes unreadable; the trail
      still verifies. The erasure is recorded (without the ID).
  show RECORD
      Print record number RECORD, with its captured content if any (and if not erased).
  key
      Print the audit key's id and public key (for auditors: verify --public-key).
  status
      Print the trail's size, its last checkpoint and the policy in force.

verify, verify-report, erase, show, key and status work without a subscription.
";

fn ok(text: String) -> CommandOutput {
    CommandOutput::ok(text.into_bytes())
}

fn fail(code: i32, text: String) -> CommandOutput {
    CommandOutput::failed(code, format!("{NAME}: {text}\n").into_bytes())
}

/// Options of one command, parsed from `--name value` pairs and flags.
struct Args<'a> {
    positional: Vec<&'a str>,
    options: Vec<(&'a str, Option<&'a str>)>,
}

const TAKES_VALUE: &[&str] = &[
    "--framework",
    "--since",
    "--until",
    "--out",
    "--subject",
    "--public-key",
];
const FLAGS: &[&str] = &["--json", "--offline"];

impl<'a> Args<'a> {
    fn parse(args: &'a [String]) -> Result<Args<'a>, String> {
        let mut out = Args {
            positional: Vec::new(),
            options: Vec::new(),
        };
        let mut it = args.iter().map(String::as_str);
        while let Some(arg) = it.next() {
            if let Some((name, value)) = arg.split_once('=').filter(|_| arg.starts_with("--")) {
                if !TAKES_VALUE.contains(&name) {
                    return Err(format!("unknown option {name}"));
                }
                out.options.push((name, Some(value)));
            } else if TAKES_VALUE.contains(&arg) {
                let value = it.next().ok_or_else(|| format!("{arg} needs a value"))?;
                out.options.push((arg, Some(value)));
            } else if FLAGS.contains(&arg) {
                out.options.push((arg, None));
            } else if arg.starts_with("--") {
                return Err(format!("unknown option {arg}"));
            } else {
                out.positional.push(arg);
            }
        }
        Ok(out)
    }

    fn value(&self, name: &str) -> Option<&'a str> {
        self.options
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| *v)
    }

    fn flag(&self, name: &str) -> bool {
        self.options.iter().any(|(n, _)| *n == name)
    }
}

/// Runs a command.
pub(crate) fn run(shared: &Shared, args: &[String]) -> CommandOutput {
    let Some((command, rest)) = args.split_first() else {
        return CommandOutput::failed(2, HELP.as_bytes().to_vec());
    };
    if matches!(command.as_str(), "--help" | "-h" | "help") {
        return ok(HELP.to_owned());
    }
    let parsed = match Args::parse(rest) {
        Ok(p) => p,
        Err(e) => return fail(2, format!("{command}: {e} (see --help)")),
    };
    let result = match command.as_str() {
        "verify" => verify_command(shared, &parsed),
        "report" => report_command(shared, &parsed),
        "verify-report" => verify_report_command(shared, &parsed),
        "erase" => erase_command(shared, &parsed),
        "show" => show_command(shared, &parsed),
        "key" => key_command(shared),
        "status" => status_command(shared),
        other => Err((2, format!("unknown command {other:?} (see --help)"))),
    };
    result.unwrap_or_else(|(code, text)| fail(code, text))
}

type Outcome = Result<CommandOutput, (i32, String)>;

fn error(e: impl std::fmt::Display) -> (i32, String) {
    (2, e.to_string())
}

fn public_key(shared: &Shared, file: Option<&str>) -> Result<Vec<u8>, (i32, String)> {
    match file {
        Some(path) => keys::read_public(Path::new(path)).map_err(error),
        None => match keys::load(&shared.data_dir).map_err(error)? {
            Some(key) => Ok(key.public_key().to_vec()),
            None => Err((
                2,
                format!(
                    "there is no audit key in {}: nothing was recorded yet",
                    shared.data_dir.display()
                ),
            )),
        },
    }
}

/// The witness's checkpoints, or why they could not be had.
fn witnessed(shared: &Shared, key_id: &str) -> Result<(Vec<Witnessed>, Vec<OtherKey>), String> {
    if !shared.api.load(std::sync::atomic::Ordering::Relaxed) {
        return Err("no Kilometers API is configured".to_owned());
    }
    let Some(token) = shared.subscription.current_token(now_unix()) else {
        return Err("no valid subscription to ask the Kilometers API with".to_owned());
    };
    witness::fetch(&shared.host, &token, key_id, &local_actor())
}

/// Verifies the trail (and against the witness unless `offline`).
fn check_trail(
    shared: &Shared,
    public: &[u8],
    offline: bool,
) -> Result<Verification, (i32, String)> {
    let key_id = km_audit::key_id(public);
    let (held, others, witness_note) = if offline {
        (
            Vec::new(),
            Vec::new(),
            Some("not compared with the API (--offline)".to_owned()),
        )
    } else {
        match witnessed(shared, &key_id) {
            Ok((held, others)) => (held, others, None),
            Err(why) => (
                Vec::new(),
                Vec::new(),
                Some(format!("not compared with the API: {why}")),
            ),
        }
    };
    let mut v = verify::verify(&shared.data_dir, public, &held).map_err(error)?;
    if let Some(note) = witness_note {
        v.warnings.push(note);
    }
    if v.ok {
        if let Some(other) = others.first() {
            v.ok = false;
            v.problem = Some(Problem {
                kind: "witness",
                record: None,
                checkpoint: None,
                file: None,
                line: None,
                message: format!(
                    "the API holds checkpoints of another audit key ({}, {} records, last received {}) for this host and user: a trail this installation no longer has (it was replaced together with its key)",
                    other.key_id, other.size, other.received_at
                ),
            });
        }
    }
    Ok(v)
}

fn describe(v: &Verification, dir: &Path) -> String {
    let mut out = format!("audit trail: {}\n", dir.display());
    let last = v.first + v.records;
    if v.records > 0 {
        out.push_str(&format!(
            "  records:     {} (#{}..#{})\n",
            v.records,
            v.first,
            last - 1
        ));
    } else {
        out.push_str("  records:     0\n");
    }
    out.push_str(&format!("  segments:    {}\n", v.segments));
    match &v.last_checkpoint {
        Some(c) => out.push_str(&format!(
            "  checkpoints: {} (last: #{} covers {} records, root {}, signed {}, {})\n",
            v.checkpoints,
            c.index,
            c.size,
            &c.root[..16],
            c.time,
            c.reason
        )),
        None => out.push_str("  checkpoints: none\n"),
    }
    out.push_str(&format!("  audit key:   {}\n", v.key_id));
    out.push_str(&format!(
        "  witness:     {} checkpoint(s) held by the Kilometers API compared\n",
        v.witnessed
    ));
    for w in &v.warnings {
        out.push_str(&format!("  warning: {w}\n"));
    }
    match &v.problem {
        None => out.push_str("OK: the audit trail verifies\n"),
        Some(p) => {
            let place = match (&p.file, p.line) {
                (Some(f), Some(l)) => format!(" ({f} line {l})"),
                (Some(f), None) => format!(" ({f})"),
                _ => String::new(),
            };
            out.push_str(&format!("FAILED{place}: {}\n", p.message));
        }
    }
    out
}

fn verify_command(shared: &Shared, args: &Args<'_>) -> Outcome {
    let public = public_key(shared, args.value("--public-key"))?;
    let v = check_trail(shared, &public, args.flag("--offline"))?;
    let code = if v.ok { 0 } else { 1 };
    let text = if args.flag("--json") {
        let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
        s.push('\n');
        s
    } else {
        describe(&v, &trail::trail_dir(&shared.data_dir))
    };
    Ok(CommandOutput {
        exit_code: code,
        stdout: text.into_bytes().into(),
        stderr: Vec::new().into(),
    })
}

fn parse_date(text: &str, end_of_day: bool) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a date (YYYY-MM-DD) or an RFC 3339 time");
    if text.len() == 10 {
        let start = record::parse_rfc3339_us(&format!("{text}T00:00:00Z")).ok_or_else(bad)?;
        return Ok(if end_of_day {
            start + 86_400_000_000
        } else {
            start
        });
    }
    record::parse_rfc3339_us(text).ok_or_else(bad)
}

fn open_writer(shared: &Shared) -> Result<Writer, (i32, String)> {
    Writer::open(&shared.data_dir, "command", &local_actor()).map_err(error)
}

fn upkeep(policy: &Policy) -> Upkeep {
    Upkeep {
        segment_records: policy.segment_records,
        retention: policy.retention,
    }
}

/// Signs a checkpoint if records are unsigned, sends it to the witness, and returns the last
/// checkpoint of the trail.
fn checkpoint_now(
    shared: &Shared,
    key: &AuditKey,
    writer: &mut Writer,
    reason: &str,
) -> Result<SignedCheckpoint, (i32, String)> {
    let policy = shared.policy();
    let now_ms = i64::try_from(record::now_us() / 1000).unwrap_or(i64::MAX);
    if let Some(made) = writer
        .checkpoint(key, reason, None, now_ms, upkeep(&policy), false)
        .map_err(error)?
    {
        let acked = witness::WitnessState::load(&shared.data_dir).acked;
        let size = made.signed.checkpoint().size;
        let (from, proof) = match writer.consistency_proof(acked, size) {
            Some(p) => (acked, p),
            None => (made.line.from, made.line.proof_hashes().unwrap_or_default()),
        };
        shared.send(vec![Submission::new(
            key,
            &local_actor(),
            &made.signed,
            from,
            &proof,
        )]);
        return Ok(made.signed);
    }
    last_checkpoint(&shared.data_dir)?.ok_or_else(|| (2, "the trail has no checkpoint".to_owned()))
}

fn checkpoint_lines(data_dir: &Path) -> Result<Vec<CheckpointLine>, (i32, String)> {
    let path = trail::trail_dir(data_dir).join("checkpoints.jsonl");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(error(format!("reading {}: {e}", path.display()))),
    };
    Ok(trail::split_lines(&bytes)
        .0
        .iter()
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect())
}

fn last_checkpoint(data_dir: &Path) -> Result<Option<SignedCheckpoint>, (i32, String)> {
    Ok(checkpoint_lines(data_dir)?
        .last()
        .and_then(|l| l.signed().ok()))
}

fn report_command(shared: &Shared, args: &Args<'_>) -> Outcome {
    let claims = match shared.subscription.state(now_unix()) {
        SubscriptionState::Active(claims) => claims,
        _ => {
            return Err((
                2,
                "report needs a valid Enterprise subscription (see km plugin-status); verify, verify-report and erase work without one".to_owned(),
            ))
        }
    };
    let framework = args
        .value("--framework")
        .ok_or((2, "report needs --framework soc2|gdpr".to_owned()))?;
    let framework = Framework::parse(framework)
        .ok_or_else(|| (2, format!("unknown framework {framework:?} (soc2 or gdpr)")))?;
    let out = PathBuf::from(args.value("--out").ok_or((
        2,
        "report needs --out FILE (.html, .json or .md)".to_owned(),
    ))?);
    let format = Format::of(&out).ok_or_else(|| {
        (
            2,
            format!(
                "{}: the report's name must end in .html, .json or .md",
                out.display()
            ),
        )
    })?;
    let since = args
        .value("--since")
        .map(|d| parse_date(d, false))
        .transpose()
        .map_err(|e| (2, e))?;
    let until = args
        .value("--until")
        .map(|d| parse_date(d, true))
        .transpose()
        .map_err(|e| (2, e))?;
    let key = keys::load(&shared.data_dir).map_err(error)?.ok_or((
        2,
        "there is no audit trail yet: nothing to report".to_owned(),
    ))?;
    // Sign what is unsigned, then verify everything up to it.
    let mut writer = open_writer(shared)?;
    let signed = checkpoint_now(shared, &key, &mut writer, "report")?;
    drop(writer);
    let v = check_trail(shared, key.public_key(), false)?;
    if let Some(p) = &v.problem {
        return Err((
            1,
            format!(
                "the trail does not verify, so no report is made: {}",
                p.message
            ),
        ));
    }
    let size = signed.checkpoint().size;
    let mut records = Vec::new();
    trail::for_each_record(&shared.data_dir, 0, |i, line| {
        if i >= size {
            return;
        }
        if let Ok(r) = serde_json::from_slice::<Record>(line) {
            let t = record::parse_rfc3339_us(&r.t).unwrap_or(0);
            if since.is_none_or(|s| t >= s) && until.is_none_or(|u| t < u) {
                records.push((i, r));
            }
        }
    })
    .map_err(error)?;
    let policy = shared.policy();
    let actor = local_actor();
    let facts = Facts {
        key_id: key.id().to_owned(),
        installation: format!("{}@{}", actor.user, actor.host),
        customer: claims.customer_id.clone(),
        generated: record::rfc3339_us(record::now_us()),
        since: since.map(record::rfc3339_us),
        until: until.map(record::rfc3339_us),
        verification: format!(
            "{} records and {} checkpoints verified at generation",
            v.records, v.checkpoints
        ),
        witnessed: v.witnessed,
        retention: policy.retention.map_or_else(
            || "records are kept until removed by policy (no retention set)".to_owned(),
            |r| {
                format!(
                    "records older than {} are pruned",
                    humantime::format_duration(r)
                )
            },
        ),
        capture: policy.capture.enabled,
        personal_data_categories: policy.personal_data_categories.clone(),
    };
    let report = report::build(framework, facts, signed.to_json(), &records);
    let bytes = report::render(&report, format);
    let signature = ReportSignature {
        km_audit_report_signature: 1,
        key_id: key.id().to_owned(),
        public_key: STANDARD.encode(key.public_key()),
        sha256: record::sha256_hex(&bytes),
        signature: STANDARD.encode(key.sign_report(&bytes)),
    };
    let sig_path = signature_path(&out);
    let sig_bytes = serde_json::to_vec_pretty(&signature).unwrap_or_default();
    // Reports name people and tools: private to the user, like the trail.
    km_durable::write_atomic(&out, &bytes, km_durable::PRIVATE).map_err(error)?;
    km_durable::write_atomic(&sig_path, &sig_bytes, km_durable::PRIVATE).map_err(error)?;
    let range = report.record_range.map_or_else(
        || "no records".to_owned(),
        |(a, b)| format!("records #{a}..#{b}"),
    );
    Ok(ok(format!(
        "wrote {} ({}, {} records: {range})\n  built from checkpoint of {size} records, root {}\n  signature {}\n",
        out.display(),
        framework_name(framework),
        report.records,
        hex::encode(signed.checkpoint().root),
        sig_path.display()
    )))
}

fn framework_name(f: Framework) -> &'static str {
    match f {
        Framework::Soc2 => "SOC 2",
        Framework::Gdpr => "GDPR",
    }
}

fn signature_path(report: &Path) -> PathBuf {
    let mut name = report.as_os_str().to_os_string();
    name.push(".sig");
    PathBuf::from(name)
}

fn verify_report_command(shared: &Shared, args: &Args<'_>) -> Outcome {
    let [file] = args.positional.as_slice() else {
        return Err((2, "verify-report needs the report FILE".to_owned()));
    };
    let path = Path::new(file);
    let bytes =
        std::fs::read(path).map_err(|e| error(format!("reading {}: {e}", path.display())))?;
    let sig_path = signature_path(path);
    let sig_bytes = std::fs::read(&sig_path)
        .map_err(|e| (1, format!("{}: no signature ({e})", sig_path.display())))?;
    let sig: ReportSignature = serde_json::from_slice(&sig_bytes).map_err(|_| {
        (
            1,
            format!("{} is not a report signature", sig_path.display()),
        )
    })?;
    let public = public_key(shared, args.value("--public-key"))?;
    let key_id = km_audit::key_id(&public);
    if sig.key_id != key_id {
        return Err((
            1,
            format!(
                "{} is signed by audit key {}, not by {key_id}",
                path.display(),
                sig.key_id
            ),
        ));
    }
    let signature = STANDARD.decode(&sig.signature).unwrap_or_default();
    if km_audit::verify_report(&public, &bytes, &signature).is_err() {
        return Err((
            1,
            format!(
                "{} does not match its signature: it was changed after it was signed",
                path.display()
            ),
        ));
    }
    let embedded = report::embedded_checkpoint(&bytes)
        .ok_or_else(|| (1, format!("{} carries no checkpoint", path.display())))?;
    let cp = SignedCheckpoint::from_json(&embedded)
        .map_err(|e| (1, format!("the checkpoint {} carries: {e}", path.display())))?;
    cp.verify(&public)
        .map_err(|e| (1, format!("the checkpoint {} carries: {e}", path.display())))?;
    let c = cp.checkpoint();
    let mut text = format!(
        "OK: {} is signed by audit key {key_id}\n  built from checkpoint of {} records, root {}, signed {}\n",
        path.display(),
        c.size,
        hex::encode(c.root),
        record::rfc3339_ms(c.time_ms)
    );
    // With this installation's own key, the checkpoint must be one of its trail's.
    if args.value("--public-key").is_none() {
        let lines = checkpoint_lines(&shared.data_dir)?;
        match lines.iter().position(|l| l.checkpoint == cp.text()) {
            Some(n) => text.push_str(&format!(
                "  it is checkpoint #{n} of this installation's trail\n"
            )),
            None => {
                return Err((
                    1,
                    format!(
                        "{}: its checkpoint is not in this installation's trail",
                        path.display()
                    ),
                ))
            }
        }
    }
    Ok(ok(text))
}

fn erase_command(shared: &Shared, args: &Args<'_>) -> Outcome {
    let subject = args
        .value("--subject")
        .filter(|s| !s.is_empty())
        .ok_or((2, "erase needs --subject ID".to_owned()))?;
    let store = KeyStore::open(&shared.data_dir).map_err(error)?;
    let reference = store.reference_of(subject).map_err(error)?;
    let mut affected = 0u64;
    if let Some(r) = &reference {
        trail::for_each_record(&shared.data_dir, 0, |_, line| {
            if let Ok(rec) = serde_json::from_slice::<Record>(line) {
                if rec.content.as_ref().is_some_and(|c| &c.subject == r) {
                    affected += 1;
                }
            }
        })
        .map_err(error)?;
    }
    let erased = store.erase(subject).map_err(error)?;
    // The erasure is recorded and signed; the subject's id is not (it is personal data).
    let key = keys::load_or_create(&shared.data_dir).map_err(error)?;
    let mut writer = open_writer(shared)?;
    let actor = local_actor();
    let mut r = Record::new(
        "erasure",
        record::rfc3339_us(record::now_us()),
        "command",
        &actor,
    );
    r.outcome = if erased.is_some() {
        "erased"
    } else {
        "nothing"
    }
    .to_owned();
    r.detail.insert("subject".into(), json!(erased));
    r.detail.insert("records".into(), json!(affected));
    r.detail.insert(
        "method".into(),
        json!("crypto-shredding: the subject's key was destroyed"),
    );
    writer.append(&r).map_err(error)?;
    checkpoint_now(shared, &key, &mut writer, "erase")?;
    Ok(ok(match erased {
        Some(reference) => format!(
            "erased subject {subject:?} (reference {reference}): its key is destroyed; {affected} captured record(s) are unreadable from now on, and the trail still verifies\n"
        ),
        None => format!(
            "subject {subject:?} has no captured content: nothing to erase (the request is recorded)\n"
        ),
    }))
}

fn show_command(shared: &Shared, args: &Args<'_>) -> Outcome {
    let [number] = args.positional.as_slice() else {
        return Err((2, "show needs a record number".to_owned()));
    };
    let index: u64 = number
        .trim_start_matches('#')
        .parse()
        .map_err(|_| (2, format!("{number:?} is not a record number")))?;
    let mut found = None;
    trail::for_each_record(&shared.data_dir, index, |i, line| {
        if i == index {
            found = Some(line.to_vec());
        }
    })
    .map_err(error)?;
    let line = found.ok_or_else(|| (2, format!("the trail has no record #{index}")))?;
    let mut out = String::from_utf8_lossy(&line).into_owned();
    out.push('\n');
    let record: Record = serde_json::from_slice(&line).map_err(error)?;
    if let Some(content) = &record.content {
        let store = KeyStore::open(&shared.data_dir).map_err(error)?;
        match store
            .unseal(content, &record.session, &record.t)
            .map_err(error)?
        {
            Opened::Plain(text) => {
                out.push_str("content:\n");
                out.push_str(&String::from_utf8_lossy(&text));
                out.push('\n');
            }
            Opened::Erased => {
                out.push_str("content: erased (the data subject's key was destroyed)\n")
            }
        }
    }
    Ok(ok(out))
}

fn key_command(shared: &Shared) -> Outcome {
    let key = keys::load_or_create(&shared.data_dir).map_err(error)?;
    Ok(ok(format!(
        "audit key {}\npublic key {}\nfile {}\n",
        key.id(),
        STANDARD.encode(key.public_key()),
        keys::public_path(&shared.data_dir).display()
    )))
}

fn status_command(shared: &Shared) -> Outcome {
    let policy = shared.policy();
    let lines = checkpoint_lines(&shared.data_dir)?;
    let last = lines.last().and_then(|l| l.signed().ok());
    let mut count = 0u64;
    let mut first = None;
    trail::for_each_record(&shared.data_dir, 0, |i, _| {
        first.get_or_insert(i);
        count += 1;
    })
    .map_err(error)?;
    let subscription = match shared.subscription.state(now_unix()) {
        SubscriptionState::Active(c) => format!("active ({}, {})", c.customer_id, c.tier),
        SubscriptionState::Pending => "not checked".to_owned(),
        SubscriptionState::Degraded => "not valid: nothing is recorded".to_owned(),
    };
    Ok(ok(format!(
        "trail:        {} records{}\nlast checkpoint: {}\nsubscription: {subscription}\nretention:    {}\ncheckpoints:  every {} and at each session's end\ncapture:      {}\n",
        count,
        first.map_or_else(String::new, |f| format!(" from #{f}")),
        last.map_or_else(
            || "none".to_owned(),
            |c| format!(
                "{} records, signed {} ({})",
                c.checkpoint().size,
                record::rfc3339_ms(c.checkpoint().time_ms),
                c.checkpoint().reason
            )
        ),
        policy
            .retention
            .map_or_else(|| "keep for ever".to_owned(), |r| humantime::format_duration(r).to_string()),
        humantime::format_duration(policy.checkpoint_interval),
        if policy.capture.enabled {
            format!("on, {} subject rule(s)", policy.capture.subjects.len())
        } else {
            "off".to_owned()
        }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_parsed_strictly() {
        let args: Vec<String> = ["--framework", "soc2", "--out=r.html", "--json", "x"]
            .map(String::from)
            .to_vec();
        let a = Args::parse(&args).expect("parses");
        assert_eq!(a.value("--framework"), Some("soc2"));
        assert_eq!(a.value("--out"), Some("r.html"));
        assert!(a.flag("--json") && !a.flag("--offline"));
        assert_eq!(a.positional, ["x"]);
        let bad: Vec<String> = vec!["--frobnicate".into()];
        assert!(Args::parse(&bad).is_err());
        let missing: Vec<String> = vec!["--out".into()];
        assert!(Args::parse(&missing).is_err());
    }

    #[test]
    fn dates_are_days_or_times() {
        let day = parse_date("2026-01-02", false).expect("a day");
        assert_eq!(
            parse_date("2026-01-02", true).expect("a day"),
            day + 86_400_000_000
        );
        assert_eq!(
            parse_date("2026-01-02T00:00:00Z", false).expect("a time"),
            day
        );
        assert!(parse_date("yesterday", false).is_err());
    }
}
