//! `km plugin advanced-filters ...`: the rules, a dry run of the policy on a file or standard
//! input, the keyed hash of a value for allowlists, and a check of the policy file.
//!
//! Commands work on every tier: they change nothing on the path, and `check` says when the
//! subscription is not active (on the path the plugin then passes everything untouched).
//! Output never holds a matched value: findings are shown as they are reported (rule, path,
//! keyed hash), and a redacted line is shown only after redaction. Exit codes follow km's: 0
//! (for `check`: every message would pass unchanged), 1 (`check`: something would be redacted
//! or blocked; `policy`: the policy is invalid), 2 (usage or I/O errors).

use km_plugin_sdk::{CommandOutput, Host};
use serde_json::{json, Value};

use crate::filter::{Filter, Judgement, Outcome};
use crate::policy::{self, PolicyError, ServerNames, Subject};

/// `km plugin advanced-filters --help`.
pub(crate) const HELP: &str = "\
Finds secrets, personal data and tool poisoning in MCP messages; logs, redacts or blocks them by policy

Usage: km plugin advanced-filters <COMMAND>

Commands:
  rules [--json]        list the rules and what the policy does with each by default
  check [FILE|-] [--response] [--method M] [--tool T] [--json]
                        what the policy would do with FILE (or standard input): one JSON-RPC
                        message, JSON lines, or any text; exit 1 if anything would be redacted
                        or blocked
  hash                  the keyed hash of the value on standard input, for [allow] values
  policy                check policies/advanced-filters.toml and show what it sets

The policy is KM_HOME/policies/advanced-filters.toml (see the plugin's README).";

/// What the subscription looks like to a command.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SubscriptionView {
    pub(crate) active: bool,
    pub(crate) decided: bool,
}

/// What commands work with.
pub(crate) struct Context<'a> {
    pub(crate) host: &'a Host,
    pub(crate) filter: &'a Filter,
    pub(crate) policy_error: Option<&'a PolicyError>,
    pub(crate) policy_found: bool,
    pub(crate) team: Option<&'a str>,
    pub(crate) team_problems: &'a [String],
    pub(crate) subscription: SubscriptionView,
}

/// Runs a command.
pub(crate) fn run(args: &[String], cx: &Context<'_>) -> CommandOutput {
    let Some((command, rest)) = args.split_first() else {
        return usage("no command given");
    };
    match command.as_str() {
        "rules" => rules(rest, cx),
        "check" => check(rest, cx),
        "hash" => hash(rest, cx),
        "policy" => policy_cmd(rest, cx),
        other => usage(&format!("unknown command {other:?}")),
    }
}

fn usage(problem: &str) -> CommandOutput {
    CommandOutput::failed(2, format!("advanced-filters: {problem}\n\n{HELP}\n"))
}

fn rules(args: &[String], cx: &Context<'_>) -> CommandOutput {
    let json = match args {
        [] => false,
        [flag] if flag == "--json" => true,
        _ => return usage("rules takes only --json"),
    };
    let layers = cx.filter.layers();
    let rules = cx.filter.detector().rules();
    if json {
        let list: Vec<Value> = rules
            .iter()
            .map(|r| {
                json!({
                    "id": r.id,
                    "category": r.category.as_str(),
                    "severity": r.severity.as_str(),
                    "description": r.description,
                    "action": layers.rule_default(r.id, r.category).as_str(),
                })
            })
            .collect();
        return CommandOutput::ok(format!("{}\n", Value::Array(list)));
    }
    let width = rules.iter().map(|r| r.id.len()).max().unwrap_or(10);
    let mut out = format!(
        "{:<width$}  {:<9}  {:<8}  {:<6}  description\n",
        "rule", "category", "severity", "action"
    );
    for r in rules {
        out.push_str(&format!(
            "{:<width$}  {:<9}  {:<8}  {:<6}  {}\n",
            r.id,
            r.category.as_str(),
            r.severity.as_str(),
            layers.rule_default(r.id, r.category).as_str(),
            r.description
        ));
    }
    out.push_str(&format!(
        "\n{} rules. The action is the policy's default for the rule; overrides and allowlists may change it per message.\n",
        rules.len()
    ));
    CommandOutput::ok(out)
}

/// The options of `check`.
#[derive(Default)]
struct CheckArgs {
    file: Option<String>,
    response: bool,
    method: Option<String>,
    tool: Option<String>,
    json: bool,
}

fn parse_check(args: &[String]) -> Result<CheckArgs, String> {
    let mut out = CheckArgs::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--response" => out.response = true,
            "--request" => out.response = false,
            "--json" => out.json = true,
            "--method" => {
                out.method = Some(it.next().ok_or("--method needs a value")?.clone());
            }
            "--tool" => out.tool = Some(it.next().ok_or("--tool needs a value")?.clone()),
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
            file => {
                if out.file.is_some() {
                    return Err("check takes one FILE".into());
                }
                out.file = Some(file.to_owned());
            }
        }
    }
    Ok(out)
}

/// The messages of the input: JSON lines, one JSON document, or text.
fn messages(input: &[u8]) -> Vec<&[u8]> {
    let lines: Vec<&[u8]> = input
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .collect();
    let all_json = !lines.is_empty()
        && lines
            .iter()
            .all(|l| serde_json::from_slice::<serde::de::IgnoredAny>(l).is_ok());
    if all_json {
        return lines;
    }
    let trimmed = input.strip_suffix(b"\n").unwrap_or(input);
    vec![trimmed.strip_suffix(b"\r").unwrap_or(trimmed)]
}

/// The method and target of a message, as km would tell them.
fn method_and_target(line: &[u8]) -> (String, String) {
    let Ok(v) = serde_json::from_slice::<Value>(line) else {
        return (String::new(), String::new());
    };
    let method = v["method"].as_str().unwrap_or_default().to_owned();
    let target = match method.as_str() {
        "tools/call" | "prompts/get" => v["params"]["name"].as_str(),
        "resources/read" | "resources/subscribe" => v["params"]["uri"].as_str(),
        _ => None,
    }
    .unwrap_or_default()
    .to_owned();
    (method, target)
}

fn policy_summary(cx: &Context<'_>) -> String {
    let layers = cx.filter.layers();
    let (overrides, allows) = layers.counts();
    let defaults = format!(
        "secrets {}, pii {}, injection {}",
        layers.rule_default("", km_detect::Category::SECRET),
        layers.rule_default("", km_detect::Category::PII),
        layers.rule_default("", km_detect::Category::INJECTION),
    );
    let mut summary = match (cx.policy_error, cx.policy_found) {
        (Some(e), _) => {
            format!("INVALID: {e}; until it is fixed, every finding blocks its message")
        }
        (None, false) => format!("policies/{} not found", policy::FILE),
        (None, true) => format!("policies/{}", policy::FILE),
    };
    if let Some(team) = cx.team {
        summary.push_str(&format!(
            ", with the {team} (policies/{})",
            policy::TEAM_FILE
        ));
    }
    summary.push_str(&format!(
        ": {defaults}; {overrides} overrides, {allows} allowlist entries"
    ));
    for p in cx.team_problems {
        summary.push_str(&format!("\n  {p}"));
    }
    summary
}

fn check(args: &[String], cx: &Context<'_>) -> CommandOutput {
    let opts = match parse_check(args) {
        Ok(o) => o,
        Err(e) => return usage(&e),
    };
    let input = match opts.file.as_deref() {
        None | Some("-") => match cx.host.read_stdin() {
            Ok(bytes) => bytes,
            Err(e) => {
                return CommandOutput::failed(2, format!("advanced-filters: standard input: {e}\n"))
            }
        },
        Some(path) => match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) => return CommandOutput::failed(2, format!("advanced-filters: {path}: {e}\n")),
        },
    };
    let server = ServerNames::default();
    let mut changed = false;
    let mut results = Vec::new();
    let mut text = format!("policy: {}\n", policy_summary(cx));
    if !cx.subscription.active {
        text.push_str(if cx.subscription.decided {
            "note: no active Pro subscription: on the path every line passes untouched (`km plugin-status` says why); below is what the policy would do with one\n"
        } else {
            "note: the subscription was not checked (no API key configured?): without an active Pro subscription every line passes untouched\n"
        });
    }
    for (n, line) in messages(&input).into_iter().enumerate() {
        let (own_method, own_target) = method_and_target(line);
        let method = if opts.response {
            opts.method.clone().unwrap_or_default()
        } else {
            opts.method.clone().unwrap_or(own_method)
        };
        let tool = opts.tool.clone().unwrap_or(own_target);
        let subject = Subject {
            server: &server,
            tool: &tool,
            method: &method,
            request: !opts.response,
        };
        let j = cx.filter.judge(line, &subject);
        changed |= !matches!(j.outcome, Outcome::Pass);
        if opts.json {
            results.push(result_json(n + 1, &j));
        } else {
            describe(&mut text, n + 1, &j, &subject);
        }
    }
    let code = i32::from(changed);
    if opts.json {
        let out = json!({
            "policy": policy_summary(cx),
            "subscription_active": cx.subscription.active,
            "results": results,
        });
        return CommandOutput {
            exit_code: code,
            stdout: format!("{out}\n").into_bytes().into(),
            stderr: Vec::new().into(),
        };
    }
    CommandOutput {
        exit_code: code,
        stdout: text.into_bytes().into(),
        stderr: Vec::new().into(),
    }
}

fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Pass => "pass",
        Outcome::Replace { .. } => "redact",
        Outcome::Block { .. } => "block",
    }
}

fn result_json(n: usize, j: &Judgement) -> Value {
    let findings: Vec<Value> = j
        .findings
        .iter()
        .map(|x| {
            let f = &x.finding;
            json!({
                "rule": f.rule,
                "category": f.category.as_str(),
                "severity": f.severity.as_str(),
                "confidence": f.confidence.as_str(),
                "example": f.example,
                "path": f.path,
                "action": x.action.as_str(),
                "overruled": x.overruled.map(|o| o.as_str()),
                "hmac8": f.fingerprint.map(|fp| fp.to_string()),
            })
        })
        .collect();
    let mut v = json!({
        "message": n,
        "outcome": outcome_name(&j.outcome),
        "findings": findings,
        "score": j.score,
        "not_json": j.malformed,
    });
    match &j.outcome {
        Outcome::Replace { line, .. } => v["output"] = json!(String::from_utf8_lossy(line)),
        Outcome::Block { rules, reason } => {
            v["rules"] = json!(rules);
            v["reason"] = json!(reason);
        }
        Outcome::Pass => {}
    }
    if let Some(why) = &j.incomplete {
        v["incomplete"] = json!(why.to_string());
    }
    v
}

fn describe(out: &mut String, n: usize, j: &Judgement, s: &Subject<'_>) {
    let mut head = format!("message {n}: {}", outcome_name(&j.outcome));
    if !s.method.is_empty() {
        head.push_str(&format!(
            " ({} {}{}{})",
            if s.request { "request" } else { "response" },
            s.method,
            if s.tool.is_empty() { "" } else { " " },
            s.tool
        ));
    }
    if j.malformed {
        head.push_str(" [not JSON: scanned as text]");
    }
    if j.findings.is_empty() && j.incomplete.is_none() {
        head.push_str(": no findings");
    }
    out.push_str(&head);
    out.push('\n');
    for x in &j.findings {
        let f = &x.finding;
        out.push_str(&format!(
            "  {:<6} {} {} at {} [{}, {} confidence]{}{}\n",
            x.action.as_str(),
            f.category,
            f.rule,
            if f.path.is_empty() { "$" } else { &f.path },
            f.severity.as_str(),
            f.confidence.as_str(),
            if f.example {
                " documentation example"
            } else {
                ""
            },
            f.fingerprint
                .map(|fp| format!(" hmac8={fp}"))
                .unwrap_or_default(),
        ));
    }
    if let Some(why) = &j.incomplete {
        out.push_str(&format!("  not inspected completely: {why}\n"));
    }
    match &j.outcome {
        Outcome::Replace { line, .. } => {
            out.push_str("  out: ");
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        Outcome::Block { reason, .. } => {
            out.push_str(&format!("  blocked: {reason}\n"));
        }
        Outcome::Pass => {}
    }
}

fn hash(args: &[String], cx: &Context<'_>) -> CommandOutput {
    if !args.is_empty() {
        return usage("hash reads the value from standard input (never from the command line, where shell history would keep it)");
    }
    let input = match cx.host.read_stdin() {
        Ok(bytes) => bytes,
        Err(e) => {
            return CommandOutput::failed(2, format!("advanced-filters: standard input: {e}\n"))
        }
    };
    let value = input.strip_suffix(b"\n").unwrap_or(&input);
    let value = value.strip_suffix(b"\r").unwrap_or(value);
    if value.is_empty() {
        return CommandOutput::failed(2, "advanced-filters: no value on standard input\n");
    }
    match cx.filter.value_hash(value) {
        Some(h) => CommandOutput::ok(format!(
            "{h}\n# in policies/{}: [allow] values = [\"{h}\"] (this installation's key; its first 8 digits are the hmac8 findings show)\n",
            policy::FILE
        )),
        None => CommandOutput::failed(
            2,
            "advanced-filters: this installation has no fingerprint key (see km's log)\n",
        ),
    }
}

fn policy_cmd(args: &[String], cx: &Context<'_>) -> CommandOutput {
    if !args.is_empty() {
        return usage("policy takes no arguments");
    }
    let summary = policy_summary(cx);
    if cx.policy_error.is_some() {
        return CommandOutput {
            exit_code: 1,
            stdout: format!("{summary}\n").into_bytes().into(),
            stderr: Vec::new().into(),
        };
    }
    let layers = cx.filter.layers();
    let flag = layers.flag_at();
    let block_at = layers
        .block_calls_at()
        .map_or("never".to_owned(), |n| format!("from {n}"));
    CommandOutput::ok(format!(
        "{summary}\nexamples: never redacted or blocked; uninspectable lines: {}; marker: {}\nrisk: flag at {flag}; calls of tools that are not read-only blocked {block_at}; exfiltration: {}\nlongest line scanned: {} bytes\n",
        if layers.blocks_uninspectable() { "block" } else { "log" },
        match layers.marker() {
            policy::MarkerKind::Rule => "[REDACTED:rule-id]",
            policy::MarkerKind::Keyed => "[REDACTED:rule-id:hmac8]",
        },
        if layers.blocks_exfiltration() { "block" } else { "log" },
        layers.max_line_bytes(),
    ))
}
