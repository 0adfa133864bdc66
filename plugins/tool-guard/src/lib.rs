//! tool-guard (Free tier): pins every MCP server's tool, prompt and resource template
//! definitions, and stops a changed one (a "rug pull") at run time until the user approves it.
//!
//! An MCP server can change what a tool says it does after the user started trusting it: a new
//! description that tells the model to read `~/.ssh/id_rsa`, a widened input schema, a flipped
//! `destructiveHint`. tool-guard sees every list result of every session:
//!
//! - **Pins** ([`store`]): per server (its id from the command line, recorded with its label,
//!   command and `serverInfo`), per definition, the SHA-256 of the whole definition in canonical
//!   JSON ([`canonical`], [`definition`]), and the definition itself for diffs. The first session
//!   of a server pins what it lists (trust on first use), after the shared detectors found no
//!   poisoning in it ([`poison`]); a poisoned definition is held, not pinned.
//! - **Checks** ([`guard`], [`session`]) on every `tools/list`, `prompts/list` and
//!   `resources/templates/list` result: a changed definition is taken out of the result the
//!   client receives (the line is rebuilt without it; lines without a change pass untouched) and
//!   its calls are answered with an error naming it and how to approve it, without reaching the
//!   server. A new definition is pinned; a removed one, or one renamed, is reported; a call to a
//!   tool the server did not list in this session is reported. What happens in each case is the
//!   policy's ([`policy`]: `KM_HOME/policies/tool-guard.toml`, and the team's signed one).
//! - **Commands** ([`commands`]): `km plugin tool-guard list | diff | approve | forget`.
//! - **Events**: every finding is a `drift` event through km and a line on km's log
//!   ([`events`]); never a definition's content.
//!
//! It intercepts at priority 100, before content filters, so that what it pins is what the
//! server sent. Lines longer than km's inspection limit on the methods it watches are blocked
//! (fail closed): a list too long to check is not let through unchecked.

#![deny(unsafe_code)]

mod canonical;
mod commands;
mod definition;
mod diff;
mod error;
mod events;
mod guard;
mod list;
mod poison;
mod policy;
mod session;
mod store;

use std::sync::{Mutex, MutexGuard, PoisonError};

use km_plugin_sdk::{
    CommandOutput, Direction, Directions, Host, InterceptContext, Interest, Message, MessageKind,
    Plugin, PluginError, SessionInfo, Tier, Verdict,
};

use crate::definition::Kind;
pub(crate) use crate::error::Error;
use crate::poison::Scanner;
use crate::session::Session;
use crate::store::Store;

/// The methods whose lines tool-guard intercepts (for a response: its request's method).
const METHODS: [&str; 9] = [
    "initialize",
    "tools/list",
    "prompts/list",
    "resources/templates/list",
    "tools/call",
    "prompts/get",
    "notifications/tools/list_changed",
    "notifications/prompts/list_changed",
    "notifications/resources/list_changed",
];

/// The methods whose results it reads.
const RESPONSE_METHODS: [&str; 4] = [
    "initialize",
    "tools/list",
    "prompts/list",
    "resources/templates/list",
];

/// The plugin.
pub struct ToolGuard {
    host: Host,
    store: Store,
    scanner: Scanner,
    session: Mutex<Session>,
}

impl ToolGuard {
    fn session(&self) -> MutexGuard<'_, Session> {
        // A panic while the session was locked left it as it was; carrying on with it is safer
        // than failing every later line.
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Plugin for ToolGuard {
    const NAME: &'static str = "tool-guard";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const REQUIRED_TIER: Tier = Tier::Free;

    fn new(host: Host) -> Result<Self, PluginError> {
        let store = Store::new(&host.data_dir());
        Ok(ToolGuard {
            host,
            store,
            scanner: Scanner::default(),
            session: Mutex::new(Session::default()),
        })
    }

    fn interest(&self) -> Interest {
        Interest::interceptor(Directions::BOTH)
            .methods(METHODS)
            // Of responses, only those it judges: not every tools/call result (a large one
            // would otherwise meet the inspection limit for nothing).
            .response_methods(RESPONSE_METHODS)
            .priority(100)
            // A list check reads and writes the server's pin file under its lock.
            .budget_ms(5000)
    }

    fn begin_session(&self, info: &SessionInfo) -> Result<(), PluginError> {
        *self.session() = Session::begin(info, &self.host, &self.store);
        Ok(())
    }

    fn intercept(
        &self,
        message: &Message<'_>,
        context: &InterceptContext<'_>,
    ) -> Result<Verdict, PluginError> {
        let method = context.request_method.as_str();
        let verdict = match (message.direction, message.kind) {
            (Direction::Response, MessageKind::RESPONSE) if !message.is_error => {
                if method == "initialize" {
                    self.session().initialized(message);
                    Verdict::pass()
                } else if let Some(kind) = Kind::of_list_method(method) {
                    self.session().list_result(
                        kind,
                        message,
                        &self.host,
                        &self.store,
                        &self.scanner,
                    )
                } else {
                    Verdict::pass()
                }
            }
            (Direction::Request, MessageKind::REQUEST) => {
                if Kind::of_list_method(method).is_some() {
                    self.session().list_requested(message);
                    Verdict::pass()
                } else if let Some(kind) = Kind::of_use_method(method) {
                    self.session()
                        .used(kind, context.target.as_str(), &self.host)
                } else {
                    Verdict::pass()
                }
            }
            (Direction::Response, MessageKind::NOTIFICATION)
                if method.ends_with("/list_changed") =>
            {
                self.session().list_changed(method, &self.host);
                Verdict::pass()
            }
            _ => Verdict::pass(),
        };
        Ok(verdict)
    }

    fn command_help(&self) -> Option<String> {
        Some(commands::HELP.to_owned())
    }

    fn run_command(&self, args: &[String]) -> Result<CommandOutput, PluginError> {
        Ok(commands::run(&self.host, &self.store, args))
    }
}

km_plugin_sdk::export_plugin!(ToolGuard);
