//! `km plugin team-collaboration ...`: join a team, see where this machine stands, sync now,
//! the team's sessions and members, and the admin's and approvers' commands.
//!
//! km authenticates the plugin before a command runs, and an authentication with a valid
//! subscription syncs (see [`crate::sync`]): every command sees the team as the API has it now.
//! Exit codes: 0 done, 1 the API or a check said no (not a member, not an approver, a bundle
//! that does not verify), 2 usage and other errors.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use km_plugin_sdk::auth::now_unix;
use km_plugin_sdk::{CommandOutput, SubscriptionState};
use km_policy::team::{valid_team, verify, AdminKey, TeamTrust, TRUST_FILE};
use serde_json::{json, Value};

use crate::api::{Api, MemberInfo};
use crate::member_key::MemberKey;
use crate::outbox::Outbox;
use crate::state::State;
use crate::{sync, Error, Shared, POLICY};

/// The usage text.
pub(crate) const HELP: &str = "\
team-collaboration (Enterprise): the team's signed policy, approvals shared by its approvers,
and the team's sessions.

usage: km plugin team-collaboration COMMAND [ARGS]

  join TEAM --admin-key ADMIN.pub [--admin-key NEXT.pub] [--force]
        pin the team's admin key (the only key whose signature makes a team policy valid),
        make this member's own key and register it with the API, and sync
  status [--json]        team, member and role, policy versions, last sync, what was refused
  sync                   fetch the team's policy and approvals now, send what waits
  sessions [--member M] [--since D] [--limit N] [--json]
        the team's recent sessions, newest first (D: 2h, 7d, or YYYY-MM-DD, or RFC 3339)
  members [--roster]     the team's members and their keys; --roster prints the [roster]
                         section of the policy `km-sign team-policy` signs (approvers' keys)
  publish FILE...        (admin) publish bundles made by `km-sign team-policy`
  approve SERVER NAME --sha256 HASH [--kind tool|prompt|resource-template]
        (approver) approve a definition for the whole team, as `km plugin tool-guard diff`
        shows it; approvals made with `km plugin tool-guard approve` are shared by themselves

Exit codes: 0 done, 1 the API or a check said no, 2 usage or other errors.
";

/// Runs a command; never fails: errors are its output.
pub(crate) fn run(shared: &Shared, args: &[String]) -> CommandOutput {
    let result = match args.first().map(String::as_str) {
        Some("join") => join(shared, &args[1..]),
        Some("status") => status(shared, &args[1..]),
        Some("sync") => sync_command(shared, &args[1..]),
        Some("sessions") => sessions(shared, &args[1..]),
        Some("members") => members(shared, &args[1..]),
        Some("publish") => publish(shared, &args[1..]),
        Some("approve") => approve(shared, &args[1..]),
        Some(other) => Err(Error::Usage(format!("unknown command {other:?}\n\n{HELP}"))),
        None => Err(Error::Usage(HELP.to_owned())),
    };
    match result {
        Ok(out) => CommandOutput::ok(out),
        Err(e) => CommandOutput::failed(e.exit_code(), format!("{POLICY}: {e}\n")),
    }
}

/// Parsed arguments: positionals, options with values (repeatable), switches.
#[derive(Debug, Default)]
struct Args {
    positional: Vec<String>,
    values: BTreeMap<String, Vec<String>>,
    switches: Vec<String>,
}

impl Args {
    fn value(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    fn has(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }
}

fn parse(args: &[String], with_value: &[&str], switches: &[&str]) -> Result<Args, Error> {
    let mut parsed = Args::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if let Some((name, value)) = arg.split_once('=').filter(|(n, _)| n.starts_with("--")) {
            if with_value.contains(&name) {
                parsed
                    .values
                    .entry(name.to_owned())
                    .or_default()
                    .push(value.to_owned());
                continue;
            }
            return Err(Error::Usage(format!("unknown option {name}")));
        }
        if with_value.contains(&arg.as_str()) {
            let value = it
                .next()
                .ok_or_else(|| Error::Usage(format!("{arg} needs a value")))?;
            parsed
                .values
                .entry(arg.clone())
                .or_default()
                .push(value.clone());
        } else if switches.contains(&arg.as_str()) {
            parsed.switches.push(arg.clone());
        } else if arg.starts_with("--") {
            return Err(Error::Usage(format!("unknown option {arg}")));
        } else {
            parsed.positional.push(arg.clone());
        }
    }
    Ok(parsed)
}

fn token(shared: &Shared) -> Result<String, Error> {
    shared
        .subscription
        .current_token(now_unix())
        .ok_or_else(|| Error::NotEnterprise(shared.degraded_reason()))
}

fn team(shared: &Shared) -> Result<TeamTrust, Error> {
    sync::trust(&shared.host)?.ok_or(Error::NoTeam)
}

fn rfc3339(secs: i64) -> String {
    humantime::format_rfc3339_seconds(
        UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0)),
    )
    .to_string()
}

fn short(key_id: &str) -> &str {
    &key_id[..key_id.len().min(16)]
}

fn join(shared: &Shared, args: &[String]) -> Result<String, Error> {
    let a = parse(args, &["--admin-key"], &["--force"])?;
    let [team_name] = a.positional.as_slice() else {
        return Err(Error::Usage(
            "usage: join TEAM --admin-key ADMIN.pub [--admin-key NEXT.pub] [--force]".to_owned(),
        ));
    };
    if !valid_team(team_name) {
        return Err(Error::Usage(format!(
            "{team_name:?} is not a team name (1 to 64 of A-Z, a-z, 0-9, '.', '_', '-')"
        )));
    }
    let paths = a.values.get("--admin-key").cloned().unwrap_or_default();
    if paths.is_empty() {
        return Err(Error::Usage(
            "--admin-key ADMIN.pub is required: the team's admin public key, as `km-sign keygen` wrote it"
                .to_owned(),
        ));
    }
    let mut keys = Vec::with_capacity(paths.len());
    for path in &paths {
        let text = std::fs::read_to_string(path).map_err(|e| Error::File {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let key = AdminKey::from_pem(&text).map_err(|message| Error::File {
            path: path.clone(),
            message,
        })?;
        let label = Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        keys.push((label, key));
    }
    // Nothing is written without the subscription and the API's word that this is a member.
    let token = token(shared)?;
    match sync::trust(&shared.host) {
        Ok(Some(current)) if current.team() != team_name && !a.has("--force") => {
            return Err(Error::Usage(format!(
                "this machine is in team {}; use --force to leave it for {team_name}",
                current.team()
            )))
        }
        Err(e) if !a.has("--force") => {
            return Err(Error::Usage(format!("{e}; use --force to replace it")))
        }
        _ => {}
    }
    let api = Api::new(&shared.host, token, team_name);
    let me = api.me()?;
    let trust = TeamTrust::new(team_name, keys)?;
    shared
        .host
        .write_policy(TRUST_FILE, &trust.to_toml())
        .map_err(|e| Error::WritePolicy {
            file: TRUST_FILE.to_owned(),
            message: e.message.into_string(),
        })?;
    let (key, created) = MemberKey::load_or_create(&shared.data_dir)?;
    api.register_key(&key.public().to_pem())?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "joined team {team_name} as {} (role {})",
        me.member, me.role
    );
    for (path, key) in paths.iter().zip(trust.keys()) {
        let _ = writeln!(out, "admin key: {} (from {path})", key.key_id());
    }
    let _ = writeln!(
        out,
        "member key: {} ({}; registered with the API)",
        key.public().key_id(),
        if created { "new" } else { "kept" }
    );
    match shared.sync_now() {
        Ok(report) => {
            out.push_str(&versions_line(&report.versions));
            for problem in &report.problems {
                let _ = writeln!(out, "refused: {problem}");
            }
        }
        Err(e) => {
            let _ = writeln!(out, "sync: {e}");
        }
    }
    if matches!(me.role.as_str(), "approver" | "admin") {
        out.push_str(
            "your approvals count for the team once an admin adds your key to the roster \
             (km plugin team-collaboration members --roster)\n",
        );
    }
    Ok(out)
}

fn versions_line(versions: &BTreeMap<String, u64>) -> String {
    if versions.is_empty() {
        return "team policy: none published yet\n".to_owned();
    }
    let list: Vec<String> = versions
        .iter()
        .map(|(policy, version)| format!("{policy} v{version}"))
        .collect();
    format!("team policy: {}\n", list.join(", "))
}

fn status(shared: &Shared, args: &[String]) -> Result<String, Error> {
    let a = parse(args, &[], &["--json"])?;
    if !a.positional.is_empty() {
        return Err(Error::Usage("usage: status [--json]".to_owned()));
    }
    let state = State::load(&shared.data_dir);
    let subscription = match shared.subscription.state(now_unix()) {
        SubscriptionState::Active(claims) => json!({
            "active": true, "tier": claims.tier.as_str(), "expires_at": claims.expires_at,
        }),
        SubscriptionState::Pending => {
            json!({"active": false, "reason": "not authenticated (no API key configured?)"})
        }
        SubscriptionState::Degraded => json!({"active": false, "reason": shared.degraded_reason()}),
    };
    let trust = sync::trust(&shared.host);
    let key = MemberKey::load(&shared.data_dir).ok().flatten();
    let (sessions_waiting, approvals_waiting) = Outbox::new(&shared.data_dir).counts();
    let team = match &trust {
        Ok(Some(t)) => json!({
            "name": t.team(),
            "admin_keys": t.keys().map(|k| k.key_id().to_owned()).collect::<Vec<_>>(),
        }),
        Ok(None) => Value::Null,
        Err(e) => json!({"error": e.to_string()}),
    };
    let report = json!({
        "subscription": subscription,
        "team": team,
        "member": state.member,
        "role": state.role,
        "member_key": key.as_ref().map(|k| k.public().key_id().to_owned()),
        "key_registered": key.as_ref().is_some_and(|k| state.registered_key.as_deref() == Some(k.public().key_id())),
        "versions": state.versions,
        "approvals": state.approvals,
        "last_attempt": state.last_attempt,
        "last_success": state.last_success,
        "last_error": state.last_error,
        "problems": state.problems,
        "outbox": {"sessions": sessions_waiting, "approvals": approvals_waiting},
    });
    if a.has("--json") {
        return Ok(format!("{report:#}\n"));
    }
    let mut out = String::new();
    match shared.subscription.state(now_unix()) {
        SubscriptionState::Active(claims) => {
            let _ = writeln!(
                out,
                "subscription: {} (until {})",
                claims.tier.as_str(),
                rfc3339(claims.expires_at)
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "subscription: none: {} (the plugin does nothing without Enterprise)",
                report["subscription"]["reason"].as_str().unwrap_or("")
            );
        }
    }
    match &trust {
        Ok(Some(t)) => {
            let ids: Vec<&str> = t.keys().map(|k| short(k.key_id())).collect();
            let _ = writeln!(out, "team: {} (admin keys {})", t.team(), ids.join(", "));
        }
        Ok(None) => {
            out.push_str(
                "team: none (km plugin team-collaboration join TEAM --admin-key ADMIN.pub)\n",
            );
            return Ok(out);
        }
        Err(e) => {
            let _ = writeln!(out, "team: {e}");
        }
    }
    let _ = writeln!(
        out,
        "member: {} (role {})",
        state
            .member
            .as_deref()
            .unwrap_or("unknown until the first sync"),
        state.role.as_deref().unwrap_or("unknown")
    );
    if let Some(key) = &key {
        let _ = writeln!(
            out,
            "member key: {} ({})",
            key.public().key_id(),
            if report["key_registered"] == true {
                "registered with the API"
            } else {
                "not registered yet"
            }
        );
    }
    out.push_str(&versions_line(&state.versions));
    for (policy, n) in &state.approvals {
        let _ = writeln!(out, "shared approvals for {policy}: {n}");
    }
    match (state.last_success, state.last_attempt, &state.last_error) {
        (_, Some(at), Some(error)) => {
            let _ = writeln!(out, "last sync: failed at {}: {error}", rfc3339(at));
            if let Some(ok) = state.last_success {
                let _ = writeln!(out, "last successful sync: {}", rfc3339(ok));
            }
        }
        (Some(ok), _, None) => {
            let _ = writeln!(out, "last sync: {} (ok)", rfc3339(ok));
        }
        _ => out.push_str("last sync: never\n"),
    }
    for problem in &state.problems {
        let _ = writeln!(out, "refused: {problem}");
    }
    if sessions_waiting + approvals_waiting > 0 {
        let _ = writeln!(
            out,
            "waiting to be sent: {sessions_waiting} session summaries, {approvals_waiting} approvals"
        );
    }
    Ok(out)
}

fn sync_command(shared: &Shared, args: &[String]) -> Result<String, Error> {
    if !args.is_empty() {
        return Err(Error::Usage("usage: sync".to_owned()));
    }
    let report = shared.sync_now()?;
    let mut out = format!(
        "synced with team {} as {} (role {})\n",
        report.team, report.member, report.role
    );
    out.push_str(&versions_line(&report.versions));
    for (policy, version) in &report.applied {
        let _ = writeln!(out, "applied: {policy} v{version}");
    }
    for note in &report.notes {
        let _ = writeln!(out, "{note}");
    }
    if report.sessions_sent > 0 {
        let _ = writeln!(out, "sent {} session summaries", report.sessions_sent);
    }
    for problem in &report.problems {
        let _ = writeln!(out, "refused: {problem}");
    }
    Ok(out)
}

/// A `--since` value: a duration back from now, or a date or time.
fn since(value: &str, now: i64) -> Result<i64, Error> {
    if let Ok(d) = humantime::parse_duration(value) {
        return Ok(now.saturating_sub(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)));
    }
    let stamp = if value.len() == 10 {
        format!("{value}T00:00:00Z")
    } else {
        value.to_owned()
    };
    humantime::parse_rfc3339_weak(&stamp)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .ok_or_else(|| {
            Error::Usage(format!(
                "--since {value:?}: use a duration (2h, 7d) or a date (YYYY-MM-DD, RFC 3339)"
            ))
        })
}

fn sessions(shared: &Shared, args: &[String]) -> Result<String, Error> {
    let a = parse(args, &["--member", "--since", "--limit"], &["--json"])?;
    if !a.positional.is_empty() {
        return Err(Error::Usage(
            "usage: sessions [--member M] [--since D] [--limit N] [--json]".to_owned(),
        ));
    }
    let since = a
        .value("--since")
        .map(|v| since(v, now_unix()))
        .transpose()?;
    let limit = match a.value("--limit") {
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| Error::Usage(format!("--limit {v:?}: a number from 1 to 500")))?,
        None => 50,
    };
    let trust = team(shared)?;
    let api = Api::new(&shared.host, token(shared)?, trust.team());
    let list = api.sessions(a.value("--member"), since, limit)?;
    if a.has("--json") {
        return Ok(format!("{:#}\n", Value::Array(list)));
    }
    if list.is_empty() {
        return Ok(format!("no sessions of team {} match\n", trust.team()));
    }
    let rows: Vec<[String; 9]> = list.iter().map(row).collect();
    let header = [
        "ENDED", "MEMBER", "MACHINE", "SERVER", "TIME", "CALLS", "ERRORS", "BLOCKED", "TOOLS",
    ]
    .map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in r.iter().zip(widths).enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    Ok(out)
}

/// One session as a table row.
fn row(s: &Value) -> [String; 9] {
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let ended = s["ended_at"].as_i64().unwrap_or(0);
    let started = s["started_at"].as_i64().unwrap_or(ended);
    let server = s["server"]["name"]
        .as_str()
        .or(s["server"]["label"].as_str())
        .unwrap_or("-")
        .to_owned();
    let tools = s["tools"].as_array().cloned().unwrap_or_default();
    let calls: u64 = tools.iter().map(|t| n(&t["calls"])).sum();
    let mut named: Vec<String> = tools
        .iter()
        .take(5)
        .map(|t| {
            let mut cell = format!("{}x{}", text(&t["name"]), n(&t["calls"]));
            if n(&t["blocked"]) > 0 {
                let _ = write!(cell, " ({} blocked)", n(&t["blocked"]));
            }
            cell
        })
        .collect();
    if tools.len() > 5 {
        named.push(format!("+{} more", tools.len() - 5));
    }
    let anomalies: u64 = s["anomalies"]
        .as_array()
        .map(|a| a.iter().map(|x| n(&x["count"])).sum())
        .unwrap_or(0);
    let mut errors = n(&s["errors"]).to_string();
    if anomalies > 0 {
        let _ = write!(errors, " ({anomalies} anomalies)");
    }
    [
        rfc3339(ended),
        text(&s["member"]),
        text(&s["machine"]),
        server,
        format!("{}s", ended.saturating_sub(started)),
        calls.to_string(),
        errors,
        n(&s["blocked"]).to_string(),
        named.join(", "),
    ]
}

fn members(shared: &Shared, args: &[String]) -> Result<String, Error> {
    let a = parse(args, &[], &["--roster"])?;
    if !a.positional.is_empty() {
        return Err(Error::Usage("usage: members [--roster]".to_owned()));
    }
    let trust = team(shared)?;
    let api = Api::new(&shared.host, token(shared)?, trust.team());
    let list = api.members()?;
    if a.has("--roster") {
        return Ok(roster(trust.team(), &list));
    }
    let mut out = format!("members of team {}:\n", trust.team());
    for m in &list {
        let _ = writeln!(
            out,
            "  {:<24} {:<9} {}",
            m.id,
            m.role,
            m.key_id.as_deref().unwrap_or("(no key registered)")
        );
    }
    Ok(out)
}

/// The `[roster]` section listing the approvers' and admins' registered keys.
fn roster(team: &str, list: &[MemberInfo]) -> String {
    let mut out = format!(
        "# The roster of team {team}, for the policy `km-sign team-policy` signs: the members\n\
         # whose own keys may sign approvals for the team. These keys are as the API reports\n\
         # them: check each key id with its member before you sign.\n"
    );
    for m in list {
        let roles: &[&str] = match m.role.as_str() {
            "admin" => &["admin", "approver"],
            "approver" => &["approver"],
            _ => continue,
        };
        match (&m.public_key, &m.key_id) {
            (Some(pem), Some(key_id)) => {
                let quoted: Vec<String> = roles.iter().map(|r| format!("\"{r}\"")).collect();
                let _ = write!(
                    out,
                    "\n# key {key_id}\n[[roster.members]]\nid = {}\nroles = [{}]\npublic_key = \"\"\"\n{}\"\"\"\n",
                    toml::Value::String(m.id.clone()),
                    quoted.join(", "),
                    pem.trim_end().to_owned() + "\n"
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "\n# {} ({}) has registered no key yet: `km plugin team-collaboration join` on their machine",
                    m.id, m.role
                );
            }
        }
    }
    out
}

fn publish(shared: &Shared, args: &[String]) -> Result<String, Error> {
    let a = parse(args, &[], &[])?;
    if a.positional.is_empty() {
        return Err(Error::Usage(
            "usage: publish FILE... (the bundles `km-sign team-policy` wrote, named POLICY.toml)"
                .to_owned(),
        ));
    }
    let trust = team(shared)?;
    let api = Api::new(&shared.host, token(shared)?, trust.team());
    let mut out = String::new();
    for file in &a.positional {
        let path = Path::new(file);
        let policy = path
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| Error::Usage(format!("{file}: not a POLICY.toml file name")))?;
        let text = std::fs::read_to_string(path).map_err(|e| Error::File {
            path: file.clone(),
            message: e.to_string(),
        })?;
        // Checked here first against the pinned admin keys: the same check every member makes.
        let bundle = verify(file, &text, &trust, policy)?;
        if api.publish(policy, &text)? {
            let _ = writeln!(out, "published {policy} version {}", bundle.version());
        } else {
            let _ = writeln!(
                out,
                "{policy} version {} was published already",
                bundle.version()
            );
        }
    }
    Ok(out)
}

fn approve(shared: &Shared, args: &[String]) -> Result<String, Error> {
    let a = parse(args, &["--sha256", "--kind"], &[])?;
    let [server, name] = a.positional.as_slice() else {
        return Err(Error::Usage(
            "usage: approve SERVER NAME --sha256 HASH [--kind tool|prompt|resource-template]"
                .to_owned(),
        ));
    };
    let sha256 = a
        .value("--sha256")
        .ok_or_else(|| Error::Usage("--sha256 HASH is required: the definition's hash, as `km plugin tool-guard diff` prints it".to_owned()))?
        .to_ascii_lowercase();
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Usage(format!(
            "--sha256 {sha256:?}: the full 64 hex digits of the definition's hash"
        )));
    }
    let kind = a.value("--kind").unwrap_or("tool");
    if !matches!(kind, "tool" | "prompt" | "resource-template") {
        return Err(Error::Usage(format!(
            "--kind {kind:?}: tool, prompt or resource-template"
        )));
    }
    let trust = team(shared)?;
    let api = Api::new(&shared.host, token(shared)?, trust.team());
    let me = api.me()?;
    let key = MemberKey::load(&shared.data_dir)?.ok_or_else(|| Error::File {
        path: shared.data_dir.join("member-key.pk8").display().to_string(),
        message: "no member key: run `km plugin team-collaboration join` first".to_owned(),
    })?;
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let body = format!(
        "server = {}\nkind = {}\nname = {}\nsha256 = {}\n",
        quote(server),
        quote(kind),
        quote(name),
        quote(&sha256)
    );
    let envelope = key.sign_approval(
        trust.team(),
        "tool-guard",
        &me.member,
        &rfc3339(now_unix()),
        &body,
    )?;
    api.approve("tool-guard", &envelope)?;
    Ok(format!(
        "approved {kind} {name} of server {server} for team {} as {}: every member's tool-guard accepts it after its next sync\n",
        trust.team(),
        me.member
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn arguments_parse_with_values_switches_and_equals() {
        let a = parse(
            &strings(&[
                "acme",
                "--admin-key",
                "a.pub",
                "--admin-key=b.pub",
                "--force",
            ]),
            &["--admin-key"],
            &["--force"],
        )
        .expect("parses");
        assert_eq!(a.positional, ["acme"]);
        assert_eq!(a.values["--admin-key"], ["a.pub", "b.pub"]);
        assert!(a.has("--force"));
        assert!(parse(&strings(&["--nope"]), &[], &[]).is_err());
        assert!(parse(&strings(&["--admin-key"]), &["--admin-key"], &[]).is_err());
    }

    #[test]
    fn since_takes_durations_and_dates() {
        assert_eq!(since("2h", 10_000).expect("duration"), 10_000 - 7200);
        assert_eq!(since("1970-01-02", 0).expect("date"), 86_400);
        assert_eq!(since("1970-01-01T00:01:00Z", 0).expect("rfc 3339"), 60);
        assert!(since("yesterday", 0).is_err());
    }

    #[test]
    fn rows_show_counts_and_never_more_than_names() {
        let s = json!({
            "id": "s1", "member": "alice", "machine": "box", "started_at": 0, "ended_at": 12,
            "server": {"label": "node x.js", "name": "demo"}, "errors": 1, "blocked": 1,
            "tools": [{"name": "echo", "calls": 3, "errors": 1, "blocked": 0},
                      {"name": "rm", "calls": 0, "errors": 0, "blocked": 1}],
            "anomalies": [{"kind": "latency", "tool": "echo", "count": 2}],
        });
        let r = row(&s);
        assert_eq!(r[1], "alice");
        assert_eq!(r[3], "demo");
        assert_eq!(r[4], "12s");
        assert_eq!(r[5], "3");
        assert_eq!(r[6], "1 (2 anomalies)");
        assert_eq!(r[8], "echox3, rmx0 (1 blocked)");
    }

    #[test]
    fn the_roster_lists_approvers_keys_and_reads_back_as_a_roster() {
        let key = AdminKey::from_raw([9; 32]);
        let list = vec![
            MemberInfo {
                id: "alice".into(),
                role: "approver".into(),
                key_id: Some(key.key_id().to_owned()),
                public_key: Some(key.to_pem()),
            },
            MemberInfo {
                id: "bob".into(),
                role: "member".into(),
                key_id: None,
                public_key: None,
            },
            MemberInfo {
                id: "carol".into(),
                role: "admin".into(),
                key_id: None,
                public_key: None,
            },
        ];
        let text = roster("acme", &list);
        assert!(
            text.contains("carol (admin) has registered no key"),
            "{text}"
        );
        assert!(!text.contains("bob"), "{text}");
        let table: toml::Table = text.parse().expect("TOML");
        let section: km_policy::team::RosterFile = table["roster"]
            .clone()
            .try_into()
            .expect("a roster section");
        let checked = section.check().expect("valid");
        assert_eq!(checked.members()[0].id(), "alice");
        assert!(checked.members()[0].has_role("approver"));
    }
}
