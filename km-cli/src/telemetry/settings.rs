//! What the telemetry of a session is configured to do: the standard `OTEL_*` environment
//! variables on top of `[telemetry]` in `config.toml`, resolved once, before the session starts.
//!
//! Precedence, per setting: the signal's own variable (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`),
//! then the generic one (`OTEL_EXPORTER_OTLP_ENDPOINT`), then the file's signal key
//! (`traces_endpoint`), then the file's generic key (`endpoint`). An empty variable counts as
//! unset, as the OpenTelemetry specification says. A signal with no endpoint anywhere is not
//! exported: unlike an SDK's default of `localhost:4318`, km exports nothing unless asked, so
//! that an unconfigured km costs nothing.
//!
//! A bad *environment* value (MCP clients pass what they pass) turns that signal off with a
//! warning instead of failing the session: km must never take an MCP server down over its own
//! telemetry. A bad *file* value is refused when `config.toml` is read, like every other key.
//! `grpc` and `http/json` are refused: km speaks OTLP over `http/protobuf` only (a Collector
//! takes it on port 4318), which spares it a gRPC stack; `OTEL_*_EXPORTER` values other than
//! `otlp` and `none` are refused too (a console exporter would write into the MCP stream).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::TelemetrySettings;

/// One signal that is exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Signal {
    /// The URL to hand the exporter; `None` when it comes from the environment, which the
    /// exporter reads itself with the same precedence.
    pub(crate) endpoint: Option<String>,
    /// The URL as the user will recognise it, for messages.
    pub(crate) shown: String,
}

/// The telemetry settings in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub(crate) traces: Option<Signal>,
    pub(crate) metrics: Option<Signal>,
    /// From the file; the exporter adds `OTEL_EXPORTER_OTLP_*HEADERS` on top.
    pub(crate) headers: BTreeMap<String, String>,
    /// How long one export may take.
    pub(crate) timeout: Duration,
    /// `service.name`.
    pub(crate) service_name: String,
    /// From the file; the SDK adds `OTEL_RESOURCE_ATTRIBUTES` on top.
    pub(crate) resource_attributes: BTreeMap<String, String>,
    /// The file's metric export interval, when `OTEL_METRIC_EXPORT_INTERVAL` does not set one.
    pub(crate) metrics_interval: Option<Duration>,
    /// The SDK's span queue: `OTEL_BSP_MAX_QUEUE_SIZE`, else the file's `queue_size`, else
    /// the specification's 2 048.
    pub(crate) span_queue: usize,
    /// Room in km's own queue between the relay and the telemetry thread, in records.
    pub(crate) queue_size: usize,
    /// Tool call arguments and results on spans.
    pub(crate) capture_content: bool,
    /// Trace context written into forwarded requests.
    pub(crate) propagate: bool,
    /// How long the end of a session waits for the last export.
    pub(crate) flush_timeout: Duration,
}

/// The OTLP default export timeout (the specification's 10 s).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The default room in km's queue.
pub(crate) const DEFAULT_QUEUE: usize = 2048;

/// The SDK's default span queue (`OTEL_BSP_MAX_QUEUE_SIZE`'s default in the specification).
const DEFAULT_SPAN_QUEUE: usize = 2048;

/// How long the end of a session waits for the last export by default: long enough for a
/// Collector on the same network, short enough that an MCP client closing km does not wait on
/// one that hangs.
const DEFAULT_FLUSH: Duration = Duration::from_millis(1000);

/// What resolving found: the settings (none when nothing is exported) and warnings about
/// environment values that were ignored.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) resolved: Option<Resolved>,
    pub(crate) warnings: Vec<String>,
}

/// Resolves `file` with the environment `env` (a function, so that tests need not touch the
/// process environment).
pub(crate) fn resolve(file: &TelemetrySettings, env: &dyn Fn(&str) -> Option<String>) -> Outcome {
    let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let mut outcome = Outcome::default();
    let disabled = match var("OTEL_SDK_DISABLED") {
        Some(value) => value.trim().eq_ignore_ascii_case("true"),
        None => file.enabled == Some(false),
    };
    if disabled {
        return outcome;
    }
    let protocol_of = |signal: &str| {
        var(&format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"))
            .map(|p| (format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"), p))
            .or_else(|| {
                var("OTEL_EXPORTER_OTLP_PROTOCOL")
                    .map(|p| ("OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(), p))
            })
    };
    let mut signal = |name: &str, path: &str, file_endpoint: &Option<String>| -> Option<Signal> {
        let exporter_var = format!("OTEL_{name}_EXPORTER");
        match var(&exporter_var).map(|v| v.trim().to_ascii_lowercase()) {
            None => {}
            Some(v) if v == "otlp" => {}
            Some(v) if v == "none" => return None,
            Some(v) => {
                outcome.warnings.push(format!(
                    "{exporter_var}={v:?} is not supported (km exports only \"otlp\"): no {} are exported",
                    name.to_ascii_lowercase()
                ));
                return None;
            }
        }
        if let Some((variable, protocol)) = protocol_of(name) {
            if protocol.trim() != "http/protobuf" {
                outcome.warnings.push(format!(
                    "{variable}={protocol:?} is not supported (km exports OTLP over \"http/protobuf\" only): no {} are exported",
                    name.to_ascii_lowercase()
                ));
                return None;
            }
        }
        let signal_var = format!("OTEL_EXPORTER_OTLP_{name}_ENDPOINT");
        if let Some(url) = var(&signal_var) {
            return Some(Signal {
                endpoint: None,
                shown: url.trim().to_owned(),
            });
        }
        if let Some(base) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            return Some(Signal {
                endpoint: None,
                shown: with_path(&base, path),
            });
        }
        if let Some(url) = file_endpoint {
            return Some(Signal {
                endpoint: Some(url.clone()),
                shown: url.clone(),
            });
        }
        file.endpoint.as_ref().map(|base| {
            let url = with_path(base, path);
            Signal {
                endpoint: Some(url.clone()),
                shown: url,
            }
        })
    };
    let traces = signal("TRACES", "v1/traces", &file.traces_endpoint);
    let metrics = signal("METRICS", "v1/metrics", &file.metrics_endpoint);
    if traces.is_none() && metrics.is_none() {
        return outcome;
    }
    let millis = |name: &str, warnings: &mut Vec<String>| -> Option<u64> {
        let value = var(name)?;
        match value.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Some(ms),
            _ => {
                warnings.push(format!(
                    "{name}={value:?} is not a positive number of milliseconds; ignored"
                ));
                None
            }
        }
    };
    // The exporter would read these per signal; one client serves both signals here, so the
    // generic variable decides, then the traces one (the signal whose loss matters most).
    let timeout = millis("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", &mut outcome.warnings)
        .or_else(|| millis("OTEL_EXPORTER_OTLP_TIMEOUT", &mut outcome.warnings))
        .or(file.timeout_ms)
        .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
    let metrics_interval = match var("OTEL_METRIC_EXPORT_INTERVAL") {
        Some(_) => None,
        None => file.metrics_interval_ms.map(Duration::from_millis),
    };
    let span_queue = match var("OTEL_BSP_MAX_QUEUE_SIZE") {
        Some(value) => match value.trim().parse::<u64>() {
            Ok(n) if n > 0 => Some(clamp_queue(n)),
            _ => {
                outcome.warnings.push(format!(
                    "OTEL_BSP_MAX_QUEUE_SIZE={value:?} is not a positive number; ignored"
                ));
                None
            }
        },
        None => None,
    }
    .or(file.queue_size.map(clamp_queue))
    .unwrap_or(DEFAULT_SPAN_QUEUE);
    let service_name = var("OTEL_SERVICE_NAME")
        .map(|s| s.trim().to_owned())
        .or_else(|| file.service_name.clone())
        .unwrap_or_else(|| "km".to_owned());
    outcome.resolved = Some(Resolved {
        traces,
        metrics,
        headers: file.headers.clone(),
        timeout,
        service_name,
        resource_attributes: file.resource_attributes.clone(),
        metrics_interval,
        span_queue,
        queue_size: file.queue_size.map_or(DEFAULT_QUEUE, clamp_queue),
        capture_content: file.capture_content.unwrap_or(false),
        propagate: file.propagate.unwrap_or(false),
        flush_timeout: file
            .flush_timeout_ms
            .map_or(DEFAULT_FLUSH, Duration::from_millis),
    });
    outcome
}

/// A queue size within what makes sense (a huge one would only hold memory).
fn clamp_queue(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX).clamp(16, 1 << 20)
}

/// `base` with the signal's path appended, as the OTLP exporter specification does with
/// `OTEL_EXPORTER_OTLP_ENDPOINT`.
fn with_path(base: &str, path: &str) -> String {
    let base = base.trim();
    if base.ends_with('/') {
        format!("{base}{path}")
    } else {
        format!("{base}/{path}")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn file(endpoint: &str) -> TelemetrySettings {
        TelemetrySettings {
            endpoint: Some(endpoint.to_owned()),
            ..TelemetrySettings::default()
        }
    }

    #[test]
    fn nothing_configured_exports_nothing() {
        let outcome = resolve(&TelemetrySettings::default(), &env(&[]));
        assert_eq!(outcome.resolved, None);
        assert!(outcome.warnings.is_empty());
        // Empty variables are unset.
        let outcome = resolve(
            &TelemetrySettings::default(),
            &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]),
        );
        assert_eq!(outcome.resolved, None);
    }

    #[test]
    fn the_file_alone_configures_both_signals() {
        let resolved = resolve(&file("http://c:4318/"), &env(&[]))
            .resolved
            .expect("on");
        let traces = resolved.traces.expect("traces");
        assert_eq!(traces.endpoint.as_deref(), Some("http://c:4318/v1/traces"));
        assert_eq!(
            resolved.metrics.expect("metrics").shown,
            "http://c:4318/v1/metrics"
        );
        assert_eq!(resolved.service_name, "km");
        assert_eq!(resolved.timeout, DEFAULT_TIMEOUT);
        assert!(!resolved.capture_content && !resolved.propagate);
    }

    #[test]
    fn the_environment_wins_and_is_left_to_the_exporter() {
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:9/x"),
            ("OTEL_SERVICE_NAME", "agent-7"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "250"),
        ]);
        let resolved = resolve(&file("http://file:4318"), &e).resolved.expect("on");
        let traces = resolved.traces.expect("traces");
        assert_eq!(traces.endpoint, None, "the exporter reads the variable");
        assert_eq!(traces.shown, "http://env:4318/v1/traces");
        assert_eq!(resolved.metrics.expect("metrics").shown, "http://m:9/x");
        assert_eq!(resolved.service_name, "agent-7");
        assert_eq!(resolved.timeout, Duration::from_millis(250));
    }

    #[test]
    fn one_signal_can_be_configured_or_turned_off_alone() {
        let e = env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://t:4318/v1/traces",
        )]);
        let resolved = resolve(&TelemetrySettings::default(), &e)
            .resolved
            .expect("on");
        assert!(resolved.traces.is_some() && resolved.metrics.is_none());
        let e = env(&[("OTEL_METRICS_EXPORTER", "none")]);
        let resolved = resolve(&file("http://c:4318"), &e).resolved.expect("on");
        assert!(resolved.traces.is_some() && resolved.metrics.is_none());
    }

    #[test]
    fn disabled_wins_over_any_endpoint() {
        let e = env(&[("OTEL_SDK_DISABLED", "TRUE")]);
        assert_eq!(resolve(&file("http://c:4318"), &e).resolved, None);
        let off = TelemetrySettings {
            enabled: Some(false),
            ..file("http://c:4318")
        };
        assert_eq!(resolve(&off, &env(&[])).resolved, None);
        // An explicit "false" in the environment wins over the file.
        let e = env(&[("OTEL_SDK_DISABLED", "false")]);
        assert!(resolve(&off, &e).resolved.is_some());
    }

    #[test]
    fn unsupported_environment_values_warn_and_turn_the_signal_off() {
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
        ]);
        let outcome = resolve(&file("http://c:4318"), &e);
        let resolved = outcome.resolved.expect("metrics stay on");
        assert!(resolved.traces.is_none() && resolved.metrics.is_some());
        assert_eq!(outcome.warnings.len(), 1, "{:?}", outcome.warnings);
        assert!(
            outcome.warnings[0].contains("grpc"),
            "{:?}",
            outcome.warnings
        );

        let e = env(&[
            ("OTEL_TRACES_EXPORTER", "console"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ]);
        let outcome = resolve(&file("http://c:4318"), &e);
        assert_eq!(outcome.resolved, None);
        assert!(
            outcome.warnings[0].contains("console"),
            "{:?}",
            outcome.warnings
        );

        let e = env(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")]);
        let outcome = resolve(&file("http://c:4318"), &e);
        assert_eq!(outcome.resolved.expect("on").timeout, DEFAULT_TIMEOUT);
        assert!(
            outcome.warnings[0].contains("soon"),
            "{:?}",
            outcome.warnings
        );
    }

    #[test]
    fn file_knobs_yield_to_their_variables() {
        let settings = TelemetrySettings {
            metrics_interval_ms: Some(500),
            queue_size: Some(4),
            ..file("http://c:4318")
        };
        let resolved = resolve(&settings, &env(&[])).resolved.expect("on");
        assert_eq!(resolved.metrics_interval, Some(Duration::from_millis(500)));
        assert_eq!(resolved.span_queue, 16, "clamped");
        assert_eq!(resolved.queue_size, 16);
        let e = env(&[
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
        ]);
        let resolved = resolve(&settings, &e).resolved.expect("on");
        assert_eq!(
            resolved.metrics_interval, None,
            "the SDK reads the variable"
        );
        assert_eq!(resolved.span_queue, 64, "the variable wins");
        let e = env(&[("OTEL_BSP_MAX_QUEUE_SIZE", "many")]);
        let outcome = resolve(&settings, &e);
        assert_eq!(outcome.resolved.expect("on").span_queue, 16, "the file's");
        assert!(
            outcome.warnings[0].contains("OTEL_BSP_MAX_QUEUE_SIZE"),
            "{:?}",
            outcome.warnings
        );
        let resolved = resolve(&file("http://c:4318"), &env(&[]))
            .resolved
            .expect("on");
        assert_eq!(resolved.span_queue, DEFAULT_SPAN_QUEUE);
    }
}
