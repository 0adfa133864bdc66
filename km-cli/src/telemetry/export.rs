//! The OpenTelemetry SDK pipeline of a session: a tracer provider with the SDK's batch span
//! processor and a meter provider with its periodic reader, both exporting OTLP over
//! http/protobuf: spans through km's exporter of the official protobuf messages
//! ([`super::otlp`], which says why), metrics through the official `opentelemetry-otlp`
//! exporter.
//!
//! The HTTP client is km's own reqwest (0.12, rustls), handed to the metric exporter through
//! `opentelemetry-http`'s `HttpClient` trait, the extension point the crates provide for this:
//! their built-in clients would bring a second reqwest (0.13) and TLS stack into the build. The
//! metrics protocol (protobuf encoding, endpoints, headers, retries) stays the exporter's.
//!
//! # Which threads, and why not all of them are km's runtime's
//!
//! The requests run on km's one runtime ([`crate::runtime`]): the client is reqwest's async one,
//! each export is a task there, and nothing in telemetry starts a runtime or an HTTP thread of
//! its own (reqwest's blocking client, used before, ran a runtime on a thread of its own per
//! client). The SDK's batch span processor and periodic reader still own one thread each, and
//! that is a choice. They are the SDK's default, stable processors; the variants that run on an
//! async runtime instead (`span_processor_with_async_runtime` and
//! `periodic_reader_with_async_runtime`) are behind the SDK's `experimental_*` features and need
//! its `rt-tokio` feature, which brings `tokio-stream` into the build (it is not in the lock
//! file). They would also move the batching
//! and the protobuf encoding, the CPU part of an export, onto the runtime's two worker threads at
//! normal priority, next to the supervision of the server and the plugins' API calls. On their
//! own threads that work inherits the telemetry thread's lowest CPU priority (see [`super`]), so
//! that encoding never competes with the relay; what they hand the runtime is one task per
//! request, which only writes and reads a socket. The shutdowns, which block until those threads
//! answer, run on km's runtime's blocking pool.
//!
//! Both exporters count what was delivered and what failed, so that the end of a
//! session can say what was lost (the SDK's own queues drop silently when full). Shutting down
//! has a deadline: a Collector that hangs costs the session at most `flush_timeout`, after which
//! the export threads are left behind (km is about to exit, and its runtime is shut down
//! without waiting for them).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry::KeyValue;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;

use super::settings::Resolved;
use crate::runtime::Handle;

/// What the exporters delivered, counted as they go.
#[derive(Debug, Default)]
pub(crate) struct Delivery {
    /// Spans ended by km (each one handed to the batch processor).
    pub(crate) spans_ended: AtomicU64,
    /// Spans the Collector accepted.
    pub(crate) spans_exported: AtomicU64,
    /// Spans in batches that failed.
    pub(crate) spans_failed: AtomicU64,
    /// Metric exports that succeeded, and that failed.
    pub(crate) metric_exports: AtomicU64,
    pub(crate) metric_failures: AtomicU64,
    /// The last export error, for the report.
    pub(crate) last_error: Mutex<Option<String>>,
}

impl Delivery {
    pub(crate) fn failed(&self, error: &OTelSdkError) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
    }
}

/// The providers of a session.
pub(crate) struct Pipeline {
    pub(crate) tracer: Option<SdkTracerProvider>,
    pub(crate) meter: Option<SdkMeterProvider>,
    pub(crate) delivery: Arc<Delivery>,
    /// How many spans the batch processor's queue holds.
    pub(crate) span_queue: usize,
}

/// Builds the exporters and providers `settings` ask for, their requests to run on `runtime`. An
/// error names what was wrong (an endpoint from the environment that is not a URL, a client
/// that cannot be built).
pub(crate) fn build(settings: &Resolved, runtime: &Handle) -> Result<Pipeline, String> {
    let delivery = Arc::new(Delivery::default());
    let client = http_client(settings.timeout, runtime)?;
    let resource = resource(settings);
    let headers: HashMap<String, String> = settings
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let tracer = match &settings.traces {
        None => None,
        Some(signal) => {
            let target = super::otlp::Target::new(
                &signal.shown,
                &settings.headers,
                settings.timeout,
                &|name| std::env::var(name).ok(),
            )
            .map_err(|e| format!("the trace exporter: {e}"))?;
            let exporter = super::otlp::Exporter::new(
                client.client.clone(),
                runtime.clone(),
                target,
                delivery.clone(),
            );
            // The queue size as settings resolved it (`OTEL_BSP_MAX_QUEUE_SIZE`, then the
            // file, then the SDK's default), so that the telemetry thread paces by the same
            // figure; the builder reads the other `OTEL_BSP_*` variables itself.
            let batch = BatchConfigBuilder::default().with_max_queue_size(settings.span_queue);
            let processor = BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch.build())
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_span_processor(processor)
                    .with_resource(resource.clone())
                    .with_id_generator(Ids::default())
                    .build(),
            )
        }
    };
    let meter = match &settings.metrics {
        None => None,
        Some(signal) => {
            let mut builder = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_http_client(client)
                .with_protocol(Protocol::HttpBinary)
                .with_timeout(settings.timeout)
                .with_headers(headers);
            if let Some(endpoint) = &signal.endpoint {
                builder = builder.with_endpoint(endpoint.clone());
            }
            let exporter = builder
                .build()
                .map_err(|e| format!("the metric exporter for {}: {e}", signal.shown))?;
            let mut reader = PeriodicReader::builder(CountingMetrics {
                inner: exporter,
                delivery: delivery.clone(),
            });
            if let Some(interval) = settings.metrics_interval {
                reader = reader.with_interval(interval);
            }
            Some(
                SdkMeterProvider::builder()
                    .with_reader(reader.build())
                    .with_resource(resource)
                    .build(),
            )
        }
    };
    Ok(Pipeline {
        tracer,
        meter,
        delivery,
        span_queue: settings.span_queue,
    })
}

/// `service.name` and the rest: km's defaults, then the file, then `OTEL_RESOURCE_ATTRIBUTES`,
/// then `OTEL_SERVICE_NAME` (already in `settings.service_name`), later ones winning.
fn resource(settings: &Resolved) -> Resource {
    use opentelemetry_sdk::resource::{EnvResourceDetector, TelemetryResourceDetector};
    Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("process.pid", i64::from(std::process::id())),
        ])
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_attributes(
            settings
                .resource_attributes
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .with_detector(Box::new(EnvResourceDetector::new()))
        .with_service_name(settings.service_name.clone())
        .build()
}

/// Ends both providers, waiting at most `deadline` in all. `false` when it had to give up. Each
/// shutdown blocks until the SDK's thread answers, so they run side by side on `runtime`'s
/// blocking pool; one that overruns is left there.
pub(crate) fn shutdown(pipeline: &Pipeline, deadline: Duration, runtime: &Handle) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut started = 0;
    if let Some(tracer) = pipeline.tracer.clone() {
        let tx = tx.clone();
        runtime.spawn_blocking(move || {
            let _ = tx.send(tracer.shutdown_with_timeout(deadline));
        });
        started += 1;
    }
    if let Some(meter) = pipeline.meter.clone() {
        let tx = tx.clone();
        runtime.spawn_blocking(move || {
            let _ = tx.send(meter.shutdown_with_timeout(deadline));
        });
        started += 1;
    }
    drop(tx);
    let until = std::time::Instant::now() + deadline;
    let mut finished = 0;
    while finished < started {
        match rx.recv_timeout(until.saturating_duration_since(std::time::Instant::now())) {
            Ok(result) => {
                finished += 1;
                if let Err(e) = result {
                    if !matches!(e, OTelSdkError::AlreadyShutdown) {
                        pipeline.delivery.failed(&e);
                    }
                }
            }
            Err(_) => return false,
        }
    }
    true
}

/// km's reqwest as the exporters' HTTP client: the async client, its requests run as tasks of
/// km's runtime.
#[derive(Debug, Clone)]
struct Http {
    client: reqwest::Client,
    runtime: Handle,
}

/// https gets km's TLS ([`crate::tls`]): TLS 1.3 only, the built-in roots (a Collector is not
/// the API endpoint: no pins, no `api_ca`). `timeout` bounds each request, body included.
fn http_client(timeout: Duration, runtime: &Handle) -> Result<Http, String> {
    let tls = crate::tls::client_config(None).map_err(|e| format!("TLS: {e:#}"))?;
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("km/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    Ok(Http {
        client,
        runtime: runtime.clone(),
    })
}

/// Largest response body km reads from a Collector (they answer with a few bytes).
const MAX_RESPONSE: usize = 4 * 1024 * 1024;

#[async_trait::async_trait]
impl HttpClient for Http {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        // The SDK's export threads poll this future with an executor of their own (`futures`'
        // `block_on`), which has no I/O driver for a socket: the request runs on km's runtime
        // and the export thread waits for its task. Once the runtime is shut down the task is
        // cancelled, and the export fails instead of waiting.
        self.runtime
            .spawn(async move { exchange(&client, request).await })
            .await
            .map_err(|e| HttpError::from(format!("the export did not finish: {e}")))?
    }
}

/// Sends `request` and reads the answer, at most [`MAX_RESPONSE`] of body.
async fn exchange(
    client: &reqwest::Client,
    request: reqwest::Request,
) -> Result<Response<Bytes>, HttpError> {
    let mut response = client.execute(request).await?;
    let status = response.status();
    let headers = std::mem::take(response.headers_mut());
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_RESPONSE {
            return Err("the collector's response is larger than 4 MiB".into());
        }
        body.extend_from_slice(&chunk);
    }
    let mut answer = Response::builder().status(status);
    if let Some(map) = answer.headers_mut() {
        *map = headers;
    }
    Ok(answer.body(Bytes::from(body))?)
}

/// The metric exporter, counting.
struct CountingMetrics<E> {
    inner: E,
    delivery: Arc<Delivery>,
}

impl<E: PushMetricExporter> PushMetricExporter for CountingMetrics<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        match &result {
            Ok(()) => self.delivery.metric_exports.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                self.delivery.failed(e);
                self.delivery
                    .metric_failures
                    .fetch_add(1, Ordering::Relaxed)
            }
        };
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

/// The ids of new spans: random, unless the telemetry thread fixed them for the span it is
/// about to create (the ids it already wrote into a forwarded request's `_meta`, see
/// [`super::inject`]).
#[derive(Debug, Default)]
pub(crate) struct Ids {
    random: RandomIdGenerator,
}

type Fixed = (Option<TraceId>, Option<SpanId>);

thread_local! {
    static NEXT: std::cell::Cell<Fixed> = const { std::cell::Cell::new((None, None)) };
}

/// Runs `f` (which creates one span) so that the span gets `span` as its id and, when it starts
/// a trace, `trace` as its trace id.
pub(crate) fn with_ids<T>(
    trace: Option<TraceId>,
    span: Option<SpanId>,
    f: impl FnOnce() -> T,
) -> T {
    NEXT.with(|next| next.set((trace, span)));
    let made = f();
    NEXT.with(|next| next.set((None, None)));
    made
}

impl IdGenerator for Ids {
    fn new_trace_id(&self) -> TraceId {
        let (trace, span) = NEXT.with(std::cell::Cell::get);
        match trace {
            Some(id) => {
                NEXT.with(|next| next.set((None, span)));
                id
            }
            None => self.random.new_trace_id(),
        }
    }

    fn new_span_id(&self) -> SpanId {
        let (trace, span) = NEXT.with(std::cell::Cell::get);
        match span {
            Some(id) => {
                NEXT.with(|next| next.set((trace, None)));
                id
            }
            None => self.random.new_span_id(),
        }
    }
}
