//! An interceptor for km's tests, driven by its settings (`[plugins.test-intercept]` in
//! `config.toml`), so that one signed library can play every part an interceptor may:
//!
//! ```toml
//! [plugins.test-intercept]
//! directions = "both"          # client-to-server | server-to-client | both
//! methods = ["tools/call"]     # empty: every method
//! response_methods = ["tools/list"]   # responses judged by these instead (empty: methods)
//! kinds = "json-rpc"           # json-rpc | all
//! priority = 500
//! budget_ms = 200
//! observe = false
//! # What to do with a line that contains the trigger (checked in this order):
//! replace = ["SECRET", "[REDACTED]"]  # replace every occurrence
//! block = "FORBIDDEN"                 # block it (rule `test-rule`)
//! panic = "PANIC"
//! fail = "FAIL"
//! hang = "HANG"                       # never answer
//! two_lines = "SPLIT"                 # answer with a replacement holding a newline
//! unknown_action = "WEIRD"            # answer with an action km does not know
//! emit = true                         # emit a `finding` event for every verdict but pass
//! ```
//!
//! It is a real plugin, signed by the tests with the `intercept` capability, not a mock.

#![deny(unsafe_code)]

use std::sync::Mutex;

use km_plugin_sdk::abi::Verdict;
use km_plugin_sdk::{
    Directions, Host, InterceptContext, Interest, KindSet, Message, Plugin, PluginConfig,
    PluginError, Tier, VerdictAction,
};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Settings {
    directions: Option<String>,
    methods: Vec<String>,
    response_methods: Vec<String>,
    kinds: Option<String>,
    priority: Option<i32>,
    budget_ms: Option<u64>,
    observe: bool,
    replace: Option<(String, String)>,
    block: Option<String>,
    panic: Option<String>,
    fail: Option<String>,
    hang: Option<String>,
    two_lines: Option<String>,
    unknown_action: Option<String>,
    emit: bool,
}

/// See the crate documentation.
pub struct TestIntercept {
    host: Host,
    settings: Mutex<Settings>,
}

fn contains(haystack: &[u8], needle: &Option<String>) -> bool {
    needle
        .as_ref()
        .is_some_and(|n| !n.is_empty() && haystack.windows(n.len()).any(|w| w == n.as_bytes()))
}

fn replace_all(haystack: &[u8], from: &str, to: &str) -> Vec<u8> {
    let (from, to) = (from.as_bytes(), to.as_bytes());
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if !from.is_empty() && haystack[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

impl Plugin for TestIntercept {
    const NAME: &'static str = "test-intercept";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const REQUIRED_TIER: Tier = Tier::Free;

    fn new(host: Host) -> Result<Self, PluginError> {
        Ok(TestIntercept {
            host,
            settings: Mutex::new(Settings::default()),
        })
    }

    fn initialize(&self, config: &PluginConfig) -> Result<(), PluginError> {
        let settings: Settings = serde_json::from_str(config.settings_json.as_str())
            .map_err(|e| PluginError::failed(format!("bad settings: {e}")))?;
        *self
            .settings
            .lock()
            .map_err(|_| PluginError::failed("poisoned"))? = settings;
        Ok(())
    }

    fn interest(&self) -> Interest {
        let Ok(settings) = self.settings.lock() else {
            return Interest::observer();
        };
        let directions = match settings.directions.as_deref() {
            Some("client-to-server") => Directions::CLIENT_TO_SERVER,
            Some("server-to-client") => Directions::SERVER_TO_CLIENT,
            _ => Directions::BOTH,
        };
        let mut interest = Interest::interceptor(directions)
            .methods(settings.methods.clone())
            .response_methods(settings.response_methods.clone())
            .observe(settings.observe);
        if settings.kinds.as_deref() == Some("all") {
            interest = interest.kinds(KindSet::ALL);
        }
        if let Some(priority) = settings.priority {
            interest = interest.priority(priority);
        }
        if let Some(ms) = settings.budget_ms {
            interest = interest.budget_ms(ms);
        }
        interest
    }

    fn intercept(
        &self,
        message: &Message<'_>,
        context: &InterceptContext<'_>,
    ) -> Result<Verdict, PluginError> {
        let settings = self
            .settings
            .lock()
            .map_err(|_| PluginError::failed("poisoned"))?;
        let line = message.bytes();
        let event = |action: &str| {
            if settings.emit {
                let _ = self.host.emit(
                    "finding",
                    &serde_json::json!({
                        "rule": "test-rule",
                        "action": action,
                        "method": context.request_method.as_str(),
                        "target": context.target.as_str(),
                    }),
                );
            }
        };
        if let Some((from, to)) = &settings.replace {
            if contains(line, &Some(from.clone())) {
                event("replace");
                return Ok(Verdict::replace(
                    replace_all(line, from, to),
                    &["test-rule"],
                ));
            }
        }
        if contains(line, &settings.block) {
            event("block");
            return Ok(Verdict::block(&["test-rule"], "the test trigger was found"));
        }
        if contains(line, &settings.panic) {
            panic!("test-intercept was told to panic");
        }
        if contains(line, &settings.fail) {
            return Err(PluginError::failed("test-intercept was told to fail"));
        }
        if contains(line, &settings.hang) {
            drop(settings);
            loop {
                std::thread::park();
            }
        }
        if contains(line, &settings.two_lines) {
            return Ok(Verdict::replace(b"{}\n{}".to_vec(), &["test-rule"]));
        }
        if contains(line, &settings.unknown_action) {
            let mut verdict = Verdict::pass();
            verdict.action = VerdictAction(99);
            return Ok(verdict);
        }
        event("pass");
        Ok(Verdict::pass())
    }
}

km_plugin_sdk::export_plugin!(TestIntercept);
