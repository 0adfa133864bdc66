//! team-collaboration (Enterprise tier): what a team shares across its members' machines.
//!
//! - **The rules.** The team's policy, signed by its admin key (`km-sign team-policy`), served by
//!   the Kilometers API and fetched at every subscription refresh ([`sync`]): each bundle is
//!   verified (admin key pinned by `join`, team, policy, no rollback) before it is written under
//!   `KM_HOME/policies/team/`, where every plugin verifies its own again (tool-guard,
//!   advanced-filters). This plugin enforces its own part itself ([`rules`]): a call of a tool
//!   the team blocks gets a JSON-RPC error naming the team policy and never reaches the server,
//!   and the tool is taken out of `tools/list` ([`filter`]); a blocked server gets nothing. A
//!   local `policies/team-collaboration.toml` can only add to what is refused.
//! - **The trust decisions.** A change a member with the `approver` role approves with
//!   `km plugin tool-guard approve` is signed with the member's own key ([`member_key`]) and
//!   handed to the API; every member's next sync writes the team's approvals where tool-guard
//!   reads them, and tool-guard accepts only those whose signer the admin-signed roster names
//!   as an approver.
//! - **The evidence.** At the end of each session a summary (member, machine, server, tools and
//!   counts, errors, verdicts, anomalies; no content) goes to the API ([`summary`],
//!   [`outbox`]); `km plugin team-collaboration sessions` shows the team's. The member id is
//!   announced to the other plugins (`member` event) so that the audit trail records it.
//!
//! Without a valid Enterprise subscription it does nothing (no enforcement, no sync, no
//! summary), and `km plugin-status` says why. Until km's first authentication of a session has
//! answered, the team policy last verified on this machine is enforced: a session that starts
//! before the network answers does not start unguarded.
//!
//! It intercepts at priority 150: after tool-guard (100), which must see (and pin) what the
//! server sent, and before content filters. It must be signed with `--capability intercept`.

#![deny(unsafe_code)]

mod api;
mod commands;
mod error;
mod filter;
mod member_key;
mod outbox;
mod rules;
mod state;
mod summary;
mod sync;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use km_plugin_sdk::auth::now_unix;
use km_plugin_sdk::{
    AuthResponse, CommandOutput, Direction, Directions, Host, InterceptContext, Interest, Message,
    MessageKind, Plugin, PluginError, SessionInfo, StreamEvent, StreamEventKind, Subscription,
    SubscriptionState, Tier, Verdict,
};
use serde_json::{json, Value};

pub(crate) use crate::error::Error;
use crate::outbox::{Item, Outbox};
use crate::rules::{Refusal, Rules, ServerNames};
use crate::state::State;
use crate::summary::{End, Summary};

km_plugin_sdk::credentials_region!();

/// The plugin's name, and its policy's.
pub(crate) const POLICY: &str = "team-collaboration";

/// Its place among interceptors.
const PRIORITY: i32 = 150;

/// How long the end of a session waits for the API to take its summary (km gives plugins two
/// seconds at the end; what is not sent waits in the outbox).
const END_SEND_TIMEOUT_MS: u32 = 1500;

/// The policies in force, compiled for the hot path.
#[derive(Debug, Default)]
pub(crate) struct Enforced {
    /// The team and the version of its policy for this plugin, when one is in force.
    team: Option<(String, u64)>,
    team_rules: Option<Rules>,
    local_rules: Option<Rules>,
    /// The local policy does not read: every request is refused (fail closed), with this.
    local_error: Option<String>,
}

/// A refusal and who made it.
struct Decision {
    rule: &'static str,
    reason: String,
}

impl Enforced {
    fn who(&self, team: bool) -> String {
        match (&self.team, team) {
            (Some((name, version)), true) => format!("team {name}'s policy (version {version})"),
            _ => "the local policy (team-collaboration.toml)".to_owned(),
        }
    }

    /// The first layer that refuses, team first.
    fn decide(&self, refuse: impl Fn(&Rules) -> Option<Refusal>, what: &str) -> Option<Decision> {
        if let Some(error) = &self.local_error {
            return Some(Decision {
                rule: "team-local-policy-invalid",
                reason: format!("{error}: every call is refused until it is fixed"),
            });
        }
        [
            (self.team_rules.as_ref(), true),
            (self.local_rules.as_ref(), false),
        ]
        .into_iter()
        .find_map(|(rules, team)| {
            let refusal = refuse(rules?)?;
            Some(Decision {
                rule: refusal.rule(),
                reason: format!("{} {}: {what}", self.who(team), refusal.says()),
            })
        })
    }

    fn server(&self, names: &ServerNames) -> Option<Decision> {
        let what = names.info_name.as_deref().unwrap_or(&names.label);
        self.decide(|r| r.server(names), &format!("server {what}"))
    }

    fn tool(&self, names: &ServerNames, tool: &str) -> Option<Decision> {
        self.decide(|r| r.tool(names, tool), &format!("tool {tool}"))
            .or_else(|| self.server(names))
    }

    fn is_active(&self) -> bool {
        self.local_error.is_some()
            || self.team_rules.as_ref().is_some_and(|r| !r.is_empty())
            || self.local_rules.as_ref().is_some_and(|r| !r.is_empty())
    }
}

/// The session in progress.
#[derive(Debug, Default)]
struct Session {
    names: ServerNames,
    summary: Option<Summary>,
    /// The member id announced to the other plugins in this session.
    announced: Option<String>,
}

/// What the handler threads, the refresher and the commands share.
pub(crate) struct Shared {
    pub(crate) host: Host,
    pub(crate) subscription: Subscription,
    pub(crate) data_dir: std::path::PathBuf,
    enforced: RwLock<Arc<Enforced>>,
    session: Mutex<Session>,
    /// Why the last authentication left the plugin degraded (for `status`).
    pub(crate) auth_reason: Mutex<String>,
    /// Log lines already written in this process (each problem is told once).
    logged: Mutex<HashSet<String>>,
}

impl Shared {
    fn state(&self) -> SubscriptionState {
        self.subscription.state(now_unix())
    }

    /// Whether the plugin is to act: with a valid subscription, or before km has asked.
    fn acting(&self) -> bool {
        !matches!(self.state(), SubscriptionState::Degraded)
    }

    fn session(&self) -> MutexGuard<'_, Session> {
        // The session holds counts; one a panic left half-updated is still better than none.
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn enforced(&self) -> Arc<Enforced> {
        self.enforced
            .read()
            .map(|e| e.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Logs `line` at `level` once per process.
    fn once(&self, level: km_plugin_sdk::LogLevel, line: &str) {
        let new = self
            .logged
            .lock()
            .map(|mut l| l.insert(line.to_owned()))
            .unwrap_or(true);
        if new {
            self.host.log(level, &format!("{POLICY}: {line}"));
        }
    }

    /// Reads the policies in force again (team file verified against this plugin's record,
    /// the local file) and reports what km-policy refused.
    pub(crate) fn reload(&self) {
        let mut enforced = Enforced::default();
        match km_policy::load::<Rules, Rules>(&self.host, POLICY) {
            Ok(policies) => {
                for problem in &policies.team_problems {
                    self.once(
                        km_plugin_sdk::LogLevel::Warn,
                        &format!("team policy: {problem}"),
                    );
                }
                if let Some(team) = policies.team {
                    enforced.team = Some((team.bundle.team().to_owned(), team.bundle.version()));
                    enforced.team_rules = Some(team.policy);
                }
                enforced.local_rules = policies.local;
            }
            Err(e) => {
                self.once(km_plugin_sdk::LogLevel::Error, &e.to_string());
                enforced.local_error = Some(e.to_string());
                // The team's rules still hold.
                let team = km_policy::team::load_team::<Rules>(&self.host, POLICY);
                if let Some(team) = team.applied {
                    enforced.team = Some((team.bundle.team().to_owned(), team.bundle.version()));
                    enforced.team_rules = Some(team.policy);
                }
            }
        }
        if let Ok(mut slot) = self.enforced.write() {
            *slot = Arc::new(enforced);
        }
    }

    /// Syncs with the team now (with the current token), reloads, logs the outcome.
    pub(crate) fn sync_now(&self) -> Result<sync::Report, Error> {
        let Some(token) = self.subscription.current_token(now_unix()) else {
            return Err(Error::NotEnterprise(self.degraded_reason()));
        };
        let outcome = sync::run(&self.host, &self.data_dir, &token);
        self.reload();
        match &outcome {
            Ok(report) => {
                for (policy, version) in &report.applied {
                    self.host.info(&format!(
                        "{POLICY}: applied team {}'s {policy} policy, version {version}",
                        report.team
                    ));
                }
                for problem in &report.problems {
                    self.once(
                        km_plugin_sdk::LogLevel::Warn,
                        &format!("team policy: {problem}"),
                    );
                }
                for note in &report.notes {
                    self.host.info(&format!("{POLICY}: {note}"));
                }
                self.announce();
            }
            Err(Error::NoTeam) => {}
            Err(e) => {
                let kept = match &self.enforced().team {
                    Some((team, version)) => {
                        format!("team {team}'s policy version {version} stays in force")
                    }
                    None => "no team policy is in force yet".to_owned(),
                };
                self.once(
                    km_plugin_sdk::LogLevel::Warn,
                    &format!("team sync failed: {e}; {kept}"),
                );
            }
        }
        outcome
    }

    fn degraded_reason(&self) -> String {
        let reason = self
            .auth_reason
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        if reason.is_empty() {
            "not authenticated with the Kilometers API (see `km plugin-status`)".to_owned()
        } else {
            reason
        }
    }

    /// Tells the other plugins who the member is, once per session (again if it changed).
    fn announce(&self) {
        let state = State::load(&self.data_dir);
        let (Some(member), Some(team)) = (state.member, state.team) else {
            return;
        };
        {
            let session = self.session();
            if session.summary.is_none() || session.announced.as_deref() == Some(member.as_str()) {
                return;
            }
        }
        // Not under the session's lock: km delivers the event to the other plugins' queues,
        // which may wait for room while this plugin's handlers wait for that lock.
        let data = json!({"member": member, "team": team, "role": state.role});
        if self.host.emit("member", &data).is_ok() {
            self.session().announced = Some(member);
        }
    }

    /// Queues a local approval tool-guard reported (a `drift` event with change `approved`),
    /// to be signed and shared at the next sync if the member's role allows.
    fn queue_approval(&self, event: &Value) {
        if event.get("plugin").and_then(Value::as_str) != Some("tool-guard")
            || event.get("kind").and_then(Value::as_str) != Some("drift")
        {
            return;
        }
        let data = event.get("data").cloned().unwrap_or(Value::Null);
        let field = |k: &str| data.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        if field("change") != "approved" || field("sha256").is_empty() || field("name").is_empty() {
            return;
        }
        let server = Some(field("server_name"))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| field("server"));
        let kind = Some(field("kind"))
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| "tool".to_owned());
        let time_ms = event.get("time").and_then(Value::as_i64).unwrap_or(0);
        let issued_at = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH
                + std::time::Duration::from_millis(u64::try_from(time_ms).unwrap_or(0)),
        )
        .to_string();
        let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let body = format!(
            "server = {}\nkind = {}\nname = {}\nsha256 = {}\n",
            quote(&server),
            quote(&kind),
            quote(&field("name")),
            quote(&field("sha256"))
        );
        let what = format!("{kind} {} of server {server}", field("name"));
        // The event id names the item, so that an event delivered twice is queued once.
        let id = event
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| km_durable::digest::sha256_hex(body.as_bytes()));
        let name = format!(
            "approval-{}",
            &km_durable::digest::sha256_hex(id.as_bytes())[..16]
        );
        let item = Item::Approval {
            policy: "tool-guard".to_owned(),
            body,
            issued_at,
            what,
        };
        match Outbox::new(&self.data_dir).put(&name, &item) {
            Ok(true) => {}
            Ok(false) => self.once(
                km_plugin_sdk::LogLevel::Warn,
                "the outbox is full: a local approval is not shared with the team",
            ),
            Err(e) => self.once(km_plugin_sdk::LogLevel::Warn, &e.to_string()),
        }
    }

    /// Ends the session: its summary goes to the outbox, then (if the API answers quickly) to
    /// the API.
    fn end_session(&self, data: &Value) {
        let summary = self.session().summary.take();
        let Some(summary) = summary else {
            return;
        };
        if !self.acting() {
            return;
        }
        let state = State::load(&self.data_dir);
        let Some(team) = state.team.clone() else {
            return;
        };
        let machine = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        let os_user = ["USER", "LOGNAME"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| format!("uid:{}", rustix::process::getuid().as_raw()));
        let enforced = self.enforced();
        let value = summary.finish(&End {
            ended_at: now_unix(),
            exit_code: data.get("exit_code").and_then(Value::as_i64),
            machine: &machine,
            os_user: &os_user,
            policy_version: enforced.team.as_ref().map(|(_, v)| *v),
        });
        let id = summary.id().to_owned();
        let safe: String = id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(64)
            .collect();
        let outbox = Outbox::new(&self.data_dir);
        let name = format!("session-{safe}");
        match outbox.put(
            &name,
            &Item::Session {
                summary: value.clone(),
            },
        ) {
            Ok(true) => {}
            Ok(false) => {
                self.once(
                    km_plugin_sdk::LogLevel::Warn,
                    "the outbox is full: this session's summary is not sent to the team",
                );
                return;
            }
            Err(e) => self.once(km_plugin_sdk::LogLevel::Warn, &e.to_string()),
        }
        let Some(token) = self.subscription.current_token(now_unix()) else {
            return;
        };
        let api = api::Api::new(&self.host, token, &team);
        match api.send_session(&value, END_SEND_TIMEOUT_MS) {
            Ok(()) => {
                outbox.remove(&self.data_dir.join("outbox").join(format!("{name}.json")));
            }
            Err(e) => self.host.debug(&format!(
                "{POLICY}: the session summary waits for the next sync ({e})"
            )),
        }
    }
}

/// The plugin.
pub struct TeamCollaboration {
    shared: Arc<Shared>,
}

impl Plugin for TeamCollaboration {
    const NAME: &'static str = POLICY;
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const REQUIRED_TIER: Tier = Tier::Enterprise;

    fn new(host: Host) -> Result<Self, PluginError> {
        let subscription = Subscription::new(
            POLICY,
            env!("CARGO_PKG_VERSION"),
            Tier::Enterprise,
            km_credentials_region(),
        );
        let data_dir = host.data_dir();
        subscription.cache_in(data_dir.clone());
        Ok(TeamCollaboration {
            shared: Arc::new(Shared {
                host,
                subscription,
                data_dir,
                enforced: RwLock::new(Arc::new(Enforced::default())),
                session: Mutex::new(Session::default()),
                auth_reason: Mutex::new(String::new()),
                logged: Mutex::new(HashSet::new()),
            }),
        })
    }

    fn authenticate(&self, api_key: &str) -> Result<AuthResponse, PluginError> {
        let shared = &self.shared;
        let response = shared.subscription.authenticate(&shared.host, api_key);
        if let Ok(mut reason) = shared.auth_reason.lock() {
            *reason = response.reason.to_string();
        }
        if matches!(shared.state(), SubscriptionState::Active(_)) {
            // The refresh is the sync's schedule: every 3 minutes for Enterprise (see km's
            // subscription module), so the team's changes arrive within one interval.
            let _ = shared.sync_now();
        } else {
            shared.reload();
            if matches!(sync::trust(&shared.host), Ok(Some(_))) {
                shared.once(
                    km_plugin_sdk::LogLevel::Info,
                    &format!(
                        "not enforcing the team policy, not syncing, not reporting sessions: {}",
                        shared.degraded_reason()
                    ),
                );
            }
        }
        Ok(response)
    }

    fn interest(&self) -> Interest {
        Interest::interceptor(Directions::BOTH)
            // Every request (a blocked server gets none), and of responses only the two it
            // reads: `initialize` (the server's name) and `tools/list` (to take refused tools
            // out).
            .response_methods(["initialize", "tools/list"])
            .priority(PRIORITY)
            .observe(true)
    }

    fn begin_session(&self, info: &SessionInfo) -> Result<(), PluginError> {
        let shared = &self.shared;
        shared.reload();
        {
            let mut session = shared.session();
            *session = Session {
                names: ServerNames {
                    id: info.server_id(),
                    label: info.server_label(),
                    info_name: None,
                },
                summary: Some(Summary::begin(info, now_unix())),
                announced: None,
            };
        }
        // Who the member is was confirmed by the last sync; announcing it now lets the audit
        // trail name the member from the first record.
        shared.announce();
        Ok(())
    }

    fn intercept(
        &self,
        message: &Message<'_>,
        context: &InterceptContext<'_>,
    ) -> Result<Verdict, PluginError> {
        let shared = &self.shared;
        if !shared.acting() {
            return Ok(Verdict::pass());
        }
        let method = context.request_method.as_str();
        match (message.direction, message.kind) {
            (Direction::Request, MessageKind::REQUEST | MessageKind::NOTIFICATION) => {
                let enforced = shared.enforced();
                if !enforced.is_active() {
                    return Ok(Verdict::pass());
                }
                let names = shared.session().names.clone();
                let decision = if method == "tools/call" {
                    enforced.tool(&names, context.target.as_str())
                } else {
                    enforced.server(&names)
                };
                Ok(decision.map_or_else(Verdict::pass, |d| Verdict::block(&[d.rule], &d.reason)))
            }
            (Direction::Response, MessageKind::RESPONSE) if !message.is_error => match method {
                "initialize" => {
                    if let Some(name) = server_info_name(message.bytes()) {
                        let mut session = shared.session();
                        session.names.info_name = Some(name.clone());
                        if let Some(summary) = session.summary.as_mut() {
                            summary.set_server_name(&name);
                        }
                    }
                    let enforced = shared.enforced();
                    let names = shared.session().names.clone();
                    Ok(enforced
                        .server(&names)
                        .map_or_else(Verdict::pass, |d| Verdict::block(&[d.rule], &d.reason)))
                }
                "tools/list" => {
                    let enforced = shared.enforced();
                    if !enforced.is_active() {
                        return Ok(Verdict::pass());
                    }
                    let names = shared.session().names.clone();
                    let mut rules: Vec<&'static str> = Vec::new();
                    let filtered = filter::without_tools(message.bytes(), |tool| {
                        match enforced.tool(&names, tool) {
                            Some(d) => {
                                if !rules.contains(&d.rule) {
                                    rules.push(d.rule);
                                }
                                true
                            }
                            None => false,
                        }
                    });
                    Ok(match filtered {
                        Some((line, _)) => Verdict::replace(line, &rules),
                        None => Verdict::pass(),
                    })
                }
                _ => Ok(Verdict::pass()),
            },
            _ => Ok(Verdict::pass()),
        }
    }

    fn handle_message(&self, message: &Message<'_>) -> Result<(), PluginError> {
        if self.shared.acting() {
            if let Some(summary) = self.shared.session().summary.as_mut() {
                summary.message(message);
            }
        }
        Ok(())
    }

    fn handle_stream_event(&self, event: &StreamEvent) -> Result<(), PluginError> {
        let shared = &self.shared;
        let data: Value = serde_json::from_str(event.data.as_str()).unwrap_or(Value::Null);
        match event.kind {
            StreamEventKind::END => shared.end_session(&data),
            StreamEventKind::VERDICT => {
                if let Some(summary) = shared.session().summary.as_mut() {
                    summary.verdict(&data);
                }
            }
            StreamEventKind::PLUGIN => {
                if !shared.acting() {
                    return Ok(());
                }
                shared.queue_approval(&data);
                if let Some(summary) = shared.session().summary.as_mut() {
                    summary.plugin_event(&data);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn command_help(&self) -> Option<String> {
        Some(commands::HELP.to_owned())
    }

    fn run_command(&self, args: &[String]) -> Result<CommandOutput, PluginError> {
        Ok(commands::run(&self.shared, args))
    }
}

/// `result.serverInfo.name` of an `initialize` response.
fn server_info_name(line: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Init {
        result: InitResult,
    }
    #[derive(serde::Deserialize)]
    struct InitResult {
        #[serde(rename = "serverInfo")]
        server_info: ServerInfo,
    }
    #[derive(serde::Deserialize)]
    struct ServerInfo {
        name: String,
    }
    serde_json::from_slice::<Init>(line)
        .ok()
        .map(|i| i.result.server_info.name)
}

km_plugin_sdk::export_plugin!(TeamCollaboration);
