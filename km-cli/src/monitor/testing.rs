//! A plugin object made in-process for the monitor's unit tests: it records every call, and can
//! be slow, hang or "panic" (return the `PANICKED` error the SDK's guard produces), so that
//! dispatch and the session can be tested without loading a library.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RStr, RString};
use km_abi::{
    AuthResponse, ErrorKind, KmPlugin, KmPlugin_TO, Message, PluginConfig, PluginError,
    StreamEvent, Tier,
};

use crate::events::{EventSink, PluginEvent};
use crate::gateway::{LoadedPlugin, Signer};

/// How the probe behaves in `handle_message`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mode {
    /// Records and returns at once.
    Record,
    /// Returns at once without recording (for throughput).
    Noop,
    /// Sleeps this long, then records.
    Slow(Duration),
    /// Never returns from its first message.
    Hang,
    /// Returns a panic failure on the message with this sequence number.
    PanicAt(u64),
    /// Returns an ordinary error on every message.
    Fail,
}

/// What the probe saw, one line per call.
pub(crate) type Log = Arc<Mutex<Vec<String>>>;

/// Where an emitting probe sends an event for each message it handles, once set.
pub(crate) type Emit = Arc<OnceLock<Arc<dyn EventSink>>>;

struct Probe {
    mode: Mode,
    log: Log,
    emit: Option<Emit>,
}

impl Probe {
    fn record(&self, line: String) {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
    }
}

impl KmPlugin for Probe {
    fn name(&self) -> RString {
        "probe".into()
    }

    fn version(&self) -> RString {
        "1.0.0".into()
    }

    fn required_tier(&self) -> Tier {
        Tier::Free
    }

    fn authenticate(&self, _api_key: RStr<'_>) -> RResult<AuthResponse, PluginError> {
        RResult::ROk(AuthResponse::free())
    }

    fn initialize(&self, _config: &PluginConfig) -> RResult<(), PluginError> {
        RResult::ROk(())
    }

    fn shutdown(&self) -> RResult<(), PluginError> {
        self.record("shutdown".into());
        RResult::ROk(())
    }

    fn handle_message(&self, m: &Message<'_>) -> RResult<(), PluginError> {
        match self.mode {
            Mode::Noop => return RResult::ROk(()),
            Mode::Record => {}
            Mode::Slow(pause) => std::thread::sleep(pause),
            Mode::Hang => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            Mode::PanicAt(seq) if seq == m.seq => {
                return RResult::RErr(PluginError::new(ErrorKind::PANICKED, "boom"));
            }
            Mode::PanicAt(_) => {}
            Mode::Fail => return RResult::RErr(PluginError::failed("nope")),
        }
        if let Some(sink) = self.emit.as_ref().and_then(|emit| emit.get()) {
            // As a plugin's `host.emit` does: from inside `handle_message`, on its worker.
            sink.plugin_event(PluginEvent {
                plugin: "probe".into(),
                kind: "finding".into(),
                data: serde_json::Map::new(),
                timestamp_ms: 0,
            });
        }
        let latency = m
            .latency_us
            .into_option()
            .map_or(String::new(), |_| " latency".into());
        self.record(format!(
            "{} {} {} id={} method={} corr={} {:?}{latency}",
            m.seq,
            m.direction,
            m.kind,
            m.id,
            m.method,
            m.correlation_id,
            String::from_utf8_lossy(m.bytes())
        ));
        RResult::ROk(())
    }

    fn handle_error(&self, error: &PluginError) -> RResult<(), PluginError> {
        self.record(format!("error {error}"));
        RResult::ROk(())
    }

    fn handle_stream_event(&self, event: &StreamEvent) -> RResult<(), PluginError> {
        self.record(format!("event {} {}", event.kind.as_str(), event.data));
        RResult::ROk(())
    }
}

/// A loaded probe and its log.
pub(crate) fn probe(mode: Mode) -> (Arc<LoadedPlugin>, Log) {
    make(mode, None)
}

/// A loaded probe that also emits an event (through the sink set in `emit`) for every message
/// it handles, and its log.
pub(crate) fn emitting_probe(mode: Mode, emit: Emit) -> (Arc<LoadedPlugin>, Log) {
    make(mode, Some(emit))
}

fn make(mode: Mode, emit: Option<Emit>) -> (Arc<LoadedPlugin>, Log) {
    let log = Log::default();
    let object = KmPlugin_TO::from_value(
        Probe {
            mode,
            log: log.clone(),
            emit,
        },
        TD_Opaque,
    );
    let signer = Signer {
        key_id: "test".into(),
        label: String::new(),
    };
    (
        Arc::new(LoadedPlugin::new(
            object,
            Path::new("libprobe.so"),
            "0".repeat(64),
            signer,
            crate::gateway::Grants::default(),
        )),
        log,
    )
}

/// A copy of the log so far.
pub(crate) fn lines(log: &Log) -> Vec<String> {
    log.lock().unwrap_or_else(PoisonError::into_inner).clone()
}
