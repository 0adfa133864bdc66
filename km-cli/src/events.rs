//! Events between plugins (ABI 1.1's `emit`), so that no plugin depends on another: a plugin
//! emits a finding, an anomaly, a drift; km hands it to every other plugin as a stream event and
//! to its own telemetry.
//!
//! The [`EventBus`] is shared by the host services of every plugin of a process. A `km monitor`
//! session attaches itself as the bus's [`EventSink`] once it is ready; events emitted before that
//! (while plugins initialise) wait, a bounded number of them, and are delivered when it attaches.
//! What km checks on the way: the event's kind is a short name, its data a JSON object of at
//! most [`MAX_EVENT_BYTES`]. What it does not check: that a plugin keeps secrets out of its
//! events (the ABI's documentation tells authors to).

use std::sync::{Arc, Mutex, PoisonError};

use km_abi::{ErrorKind, PluginError};

/// The largest `data` of one event.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// How many events may wait for a session to attach.
const MAX_EARLY: usize = 256;

/// One event a plugin emitted.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginEvent {
    /// The plugin that emitted it.
    pub plugin: Arc<str>,
    /// Its kind (`finding`, `anomaly`, ...).
    pub kind: String,
    /// Its data, a JSON object.
    pub data: serde_json::Map<String, serde_json::Value>,
    /// When it was emitted: milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// Where the bus delivers events.
pub trait EventSink: Send + Sync {
    /// Delivers `event` to everyone but its emitter.
    fn plugin_event(&self, event: PluginEvent);
}

#[derive(Default)]
struct State {
    sinks: Vec<Arc<dyn EventSink>>,
    early: Vec<PluginEvent>,
    /// Events dropped because nothing was attached and the early queue was full.
    dropped: u64,
}

/// The bus: see the module documentation.
#[derive(Default)]
pub struct EventBus {
    state: Mutex<State>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventBus")
    }
}

impl EventBus {
    /// A bus with nothing attached.
    pub fn new() -> Arc<Self> {
        Arc::new(EventBus::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Attaches `sink`: it receives the events that waited, then every later one.
    pub fn attach(&self, sink: Arc<dyn EventSink>) {
        let early = {
            let mut state = self.lock();
            state.sinks.push(sink.clone());
            std::mem::take(&mut state.early)
        };
        for event in early {
            sink.plugin_event(event);
        }
    }

    /// Detaches every sink (the session is over); later events wait again.
    pub fn detach_all(&self) {
        self.lock().sinks.clear();
    }

    /// How many events were dropped for want of a sink.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Checks and publishes an event `plugin` emitted.
    pub fn emit(&self, plugin: &Arc<str>, kind: &str, data: &str) -> Result<(), PluginError> {
        let event = PluginEvent {
            plugin: plugin.clone(),
            kind: check_kind(kind)?.to_owned(),
            data: check_data(data)?,
            timestamp_ms: crate::monitor::now_ms(),
        };
        crate::telemetry::plugin_event(&event);
        let sinks = {
            let mut state = self.lock();
            if state.sinks.is_empty() {
                if state.early.len() < MAX_EARLY {
                    state.early.push(event);
                } else {
                    state.dropped += 1;
                }
                return Ok(());
            }
            state.sinks.clone()
        };
        for sink in &sinks {
            sink.plugin_event(event.clone());
        }
        Ok(())
    }
}

fn invalid(message: String) -> PluginError {
    PluginError::new(ErrorKind::FAILED, message)
}

fn check_kind(kind: &str) -> Result<&str, PluginError> {
    let ok = !kind.is_empty()
        && kind.len() <= 64
        && kind
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-'));
    if ok {
        Ok(kind)
    } else {
        Err(invalid(format!(
            "event kind {kind:?} is not 1 to 64 characters of a-z, 0-9, '_', '.', '-'"
        )))
    }
}

fn check_data(data: &str) -> Result<serde_json::Map<String, serde_json::Value>, PluginError> {
    if data.len() > MAX_EVENT_BYTES {
        return Err(invalid(format!(
            "event data is {} bytes, over the limit of {MAX_EVENT_BYTES}",
            data.len()
        )));
    }
    match serde_json::from_str(data) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(invalid("event data must be a JSON object".to_owned())),
        Err(e) => Err(invalid(format!("event data is not JSON: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect(Mutex<Vec<PluginEvent>>);

    impl EventSink for Collect {
        fn plugin_event(&self, event: PluginEvent) {
            self.0.lock().expect("lock").push(event);
        }
    }

    #[test]
    fn events_wait_for_a_sink_then_flow() {
        let bus = EventBus::new();
        let me: Arc<str> = Arc::from("guard");
        bus.emit(&me, "drift", r#"{"tool":"x"}"#).expect("valid");
        let sink = Arc::new(Collect::default());
        bus.attach(sink.clone());
        bus.emit(&me, "finding", r#"{"rule":"aws"}"#)
            .expect("valid");
        let got = sink.0.lock().expect("lock");
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].kind.as_str(), got[1].kind.as_str()),
            ("drift", "finding")
        );
        assert_eq!(&*got[1].plugin, "guard");
    }

    #[test]
    fn bad_events_are_refused_with_a_reason() {
        let bus = EventBus::new();
        let me: Arc<str> = Arc::from("p");
        for (kind, data) in [
            ("Finding", "{}"),
            ("", "{}"),
            ("ok", "[1]"),
            ("ok", "{"),
            ("ok", "\"text\""),
        ] {
            assert!(bus.emit(&me, kind, data).is_err(), "{kind} {data}");
        }
        let big = format!("{{\"x\":\"{}\"}}", "a".repeat(MAX_EVENT_BYTES));
        assert!(bus.emit(&me, "ok", &big).is_err());
    }

    #[test]
    fn early_events_are_bounded() {
        let bus = EventBus::new();
        let me: Arc<str> = Arc::from("p");
        for _ in 0..MAX_EARLY + 10 {
            bus.emit(&me, "e", "{}").expect("valid");
        }
        assert_eq!(bus.dropped(), 10);
    }
}
