//! km's OTLP/HTTP span exporter: the SDK's [`SpanExporter`] trait, turning the batch
//! processor's `SpanData` into the official OTLP protobuf messages and posting them as
//! `http/protobuf` over km's reqwest.
//!
//! # Why km has its own, and why it is not a hand-written protocol
//!
//! `opentelemetry-otlp`'s span exporter cost 21.6 k instructions per span on km's relay mix
//! (BENCHMARKS.md, "OpenTelemetry export"): every attribute key and string value is copied
//! through `Display` into fresh `String`s, every batch builds and then drops a whole tree of
//! protobuf structs, and nothing is reused from one batch to the next. On 2 cores that CPU is
//! taken from the relay. This exporter keeps the same messages, the same encoding and the same
//! HTTP exchange, and only does the conversion differently:
//!
//! - the messages are `opentelemetry-proto`'s generated types (the official crate, from the
//!   official `.proto` files, the same prost structs `opentelemetry-otlp` sends), encoded by
//!   `prost`: no field number, tag or length is written here;
//! - keys and string values are copied as `&str` (no formatting), into the `String`s of the
//!   previous batch's messages, which are kept and overwritten in place, so that a steady
//!   stream of spans allocates and frees almost nothing; the encoded body's buffer is reused
//!   too, once the request is done with it;
//! - the resource is converted once, when the provider hands it over.
//!
//! The conversion is field for field what `opentelemetry-proto`'s own `transform` does (span
//! flags, ids, trace state, events, links, status, scopes grouped); a unit test checks the two
//! give the same message.
//!
//! The HTTP exchange follows `opentelemetry-otlp` 0.33 and the OTLP/HTTP specification: `POST`
//! of `application/x-protobuf` to the traces URL (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as is,
//! else `OTEL_EXPORTER_OTLP_ENDPOINT` with `v1/traces`, else the file's, as [`super::settings`]
//! resolved it), the file's headers under `OTEL_EXPORTER_OTLP_TRACES_HEADERS` (or else
//! `OTEL_EXPORTER_OTLP_HEADERS`, percent-decoded), retries of what the specification calls
//! retryable (no answer, 429, 502, 503, 504; `Retry-After` honoured) with exponential backoff
//! from 100 ms to 1.6 s and up to 100 ms of jitter, at most 3 retries and never past the export
//! timeout, and spans a Collector reports rejected (`partial_success`) counted as failed.
//! Compression is not offered (as before: `opentelemetry-otlp` was built without it), and asking
//! for it is an error that names the variable.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry::{Array, KeyValue, Value};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1 as common;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1 as proto;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use prost::Message as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};

use super::export::Delivery;
use crate::runtime::Handle;

/// Retries after the first attempt, and their backoff (`opentelemetry-otlp`'s recommended
/// policy, which km used before).
const MAX_RETRIES: u32 = 3;
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_millis(1600);
const MAX_JITTER: Duration = Duration::from_millis(100);

/// Largest response body km reads from a Collector (they answer with a few bytes).
const MAX_RESPONSE: usize = 4 * 1024 * 1024;

/// Where and how the spans go.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) url: reqwest::Url,
    pub(crate) headers: HeaderMap,
    /// The whole export, retries included.
    pub(crate) timeout: Duration,
}

impl Target {
    /// The traces URL `shown` (as settings resolved it), the file's `headers` with the
    /// environment's (`env`) on top. An error names what is wrong.
    pub(crate) fn new(
        shown: &str,
        file_headers: &std::collections::BTreeMap<String, String>,
        timeout: Duration,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Target, String> {
        let url = reqwest::Url::parse(shown.trim())
            .map_err(|e| format!("the traces endpoint {shown:?} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "the traces endpoint {shown:?} is not an http or https URL"
            ));
        }
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ] {
            if let Some(value) = var(name) {
                if value.trim() != "none" {
                    return Err(format!(
                        "{name}={value:?}: km does not compress OTLP requests (set it to \"none\" or leave it unset)"
                    ));
                }
                break;
            }
        }
        let mut headers = HeaderMap::new();
        // As `opentelemetry-otlp` does: what does not make a header is skipped.
        let mut add = |key: &str, value: &str| {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(key.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(k, v);
            }
        };
        for (key, value) in file_headers {
            add(key, value);
        }
        let from_env = var("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
            .or_else(|| var("OTEL_EXPORTER_OTLP_HEADERS"))
            .unwrap_or_default();
        for (key, value) in parse_headers(&from_env) {
            add(key, &value);
        }
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        Ok(Target {
            url,
            headers,
            timeout,
        })
    }
}

/// `k1=v1,k2=v2` (the OTLP exporter specification's format), values percent-decoded; a pair
/// without `=` or with an empty key or value is skipped.
fn parse_headers(text: &str) -> impl Iterator<Item = (&str, String)> {
    text.split(',').filter_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() || value.is_empty() {
            return None;
        }
        Some((
            key,
            percent_decode(value).unwrap_or_else(|| value.to_owned()),
        ))
    })
}

/// `%XX` sequences decoded; `None` when one is malformed or the result is not UTF-8 (the value
/// is then used as written).
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What a batch is turned into, kept from one batch to the next.
#[derive(Debug, Default)]
struct Buffers {
    request: ExportTraceServiceRequest,
    /// The scopes of `request`'s `ScopeSpans`, in the same order.
    scopes: Vec<opentelemetry::InstrumentationScope>,
    /// How many spans of each `ScopeSpans` this batch filled, and where in the batch the
    /// scope first came (scopes are sent in that order, as `opentelemetry-proto` does).
    used: Vec<usize>,
    first: Vec<usize>,
    /// Span messages not needed by the last batch, to fill in the next.
    spare: Vec<proto::Span>,
    /// The body's buffer, when the last request gave it back.
    body: Option<BytesMut>,
}

/// The exporter the batch span processor calls, on its own thread.
#[derive(Debug)]
pub(crate) struct Exporter {
    client: reqwest::Client,
    runtime: Handle,
    target: Arc<Target>,
    delivery: Arc<Delivery>,
    buffers: Mutex<Buffers>,
    shut: std::sync::atomic::AtomicBool,
}

impl Exporter {
    pub(crate) fn new(
        client: reqwest::Client,
        runtime: Handle,
        target: Target,
        delivery: Arc<Delivery>,
    ) -> Self {
        let mut buffers = Buffers::default();
        buffers.request.resource_spans.push(proto::ResourceSpans {
            resource: Some(ProtoResource::default()),
            ..Default::default()
        });
        Exporter {
            client,
            runtime,
            target: Arc::new(target),
            delivery,
            buffers: Mutex::new(buffers),
            shut: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Encodes `batch` into a body (the previous one's buffer when it came back).
    fn encode(&self, batch: &[SpanData]) -> Bytes {
        let mut buffers = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
        let buffers = &mut *buffers;
        fill(buffers, batch);
        let mut body = buffers.body.take().unwrap_or_default();
        body.clear();
        // No `reserve` of the encoded length first: that would compute every nested message's
        // length once more (prost's `encode` already does, to check the room); the buffer kept
        // from the last batch has the room, and `BytesMut` grows when it has not, so encoding
        // cannot run out of room.
        let _ = buffers.request.encode(&mut body);
        body.freeze()
    }

    /// Keeps `body` for the next batch if nothing else holds it any more.
    fn give_back(&self, body: Bytes) {
        if let Ok(body) = body.try_into_mut() {
            self.buffers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .body = Some(body);
        }
    }
}

impl SpanExporter for Exporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if self.shut.load(Ordering::Relaxed) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let n = batch.len() as u64;
        let body = self.encode(&batch);
        drop(batch);
        let client = self.client.clone();
        let target = self.target.clone();
        let sent = body.clone();
        // The SDK's thread polls this future with an executor of its own, which has no I/O
        // driver: the request runs on km's runtime and this thread waits for its task. Once
        // the runtime is shut down the task is cancelled and the export fails.
        let outcome = self
            .runtime
            .spawn(async move { post(&client, &target, sent).await })
            .await
            .unwrap_or_else(|e| Err(format!("the export did not finish: {e}")));
        self.give_back(body);
        let delivery = &self.delivery;
        match outcome {
            Ok(rejected) => {
                let rejected = rejected.min(n);
                delivery
                    .spans_exported
                    .fetch_add(n - rejected, Ordering::Relaxed);
                if rejected > 0 {
                    delivery.spans_failed.fetch_add(rejected, Ordering::Relaxed);
                    delivery.failed(&OTelSdkError::InternalFailure(format!(
                        "the collector rejected {rejected} of {n} spans"
                    )));
                }
                Ok(())
            }
            Err(message) => {
                let error = OTelSdkError::InternalFailure(message);
                delivery.failed(&error);
                delivery.spans_failed.fetch_add(n, Ordering::Relaxed);
                Err(error)
            }
        }
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        if self.shut.swap(true, Ordering::Relaxed) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        let buffers = self
            .buffers
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(spans) = buffers.request.resource_spans.first_mut() {
            let mut attributes = Vec::new();
            for (key, value) in resource.iter() {
                let mut kv = common::KeyValue::default();
                set(&mut kv.key, key.as_str());
                fill_value(kv.value.get_or_insert_with(Default::default), value);
                attributes.push(kv);
            }
            spans.resource = Some(ProtoResource {
                attributes,
                ..Default::default()
            });
            spans.schema_url = resource.schema_url().unwrap_or_default().to_owned();
        }
    }
}

/// Why an attempt failed, and whether (and when) to try again.
struct Failure {
    message: String,
    /// `Some` when the attempt may be retried; the inner duration is the Collector's
    /// `Retry-After`.
    retry: Option<Option<Duration>>,
}

/// Posts `body`, retrying what may be retried within the target's timeout; the number of spans
/// the Collector rejected, or what went wrong.
async fn post(client: &reqwest::Client, target: &Target, body: Bytes) -> Result<u64, String> {
    let deadline = Instant::now() + target.timeout;
    let mut delay = FIRST_DELAY;
    let mut attempt = 0;
    loop {
        let failure = match tokio::time::timeout_at(
            deadline.into(),
            once(client, target, body.clone()),
        )
        .await
        {
            Ok(Ok(answer)) => return Ok(rejected(&answer)),
            Ok(Err(failure)) => failure,
            Err(_) => {
                return Err(format!(
                    "the export to {} timed out after {:?}",
                    target.url, target.timeout
                ))
            }
        };
        let Some(after) = failure.retry else {
            return Err(failure.message);
        };
        if attempt >= MAX_RETRIES {
            return Err(failure.message);
        }
        let wait = after.unwrap_or_else(|| delay + crate::api::jitter(MAX_JITTER));
        if Instant::now() + wait >= deadline {
            return Err(failure.message);
        }
        tokio::time::sleep(wait).await;
        delay = (delay * 2).min(MAX_DELAY);
        attempt += 1;
    }
}

/// One attempt: the answer's body when the status is a success.
async fn once(client: &reqwest::Client, target: &Target, body: Bytes) -> Result<Bytes, Failure> {
    let network = |e: reqwest::Error| Failure {
        message: format!("the export to {} failed: {e}", target.url),
        retry: Some(None),
    };
    let mut response = client
        .post(target.url.clone())
        .headers(target.headers.clone())
        .body(body)
        .send()
        .await
        .map_err(network)?;
    let status = response.status();
    if !status.is_success() {
        let code = status.as_u16();
        let retry = match code {
            429 | 503 => Some(retry_after(response.headers())),
            502 | 504 => Some(None),
            _ => None,
        };
        return Err(Failure {
            message: format!("the export to {} failed with status {code}", target.url),
            retry,
        });
    }
    let mut answer = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(network)? {
        if answer.len() + chunk.len() > MAX_RESPONSE {
            return Err(Failure {
                message: format!("the answer of {} is larger than 4 MiB", target.url),
                retry: None,
            });
        }
        answer.extend_from_slice(&chunk);
    }
    Ok(answer.freeze())
}

/// `Retry-After` in seconds or as an HTTP date ([`crate::api::parse_retry_after`]), when it is
/// one and at most a minute away (a longer wait is past any export timeout).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let wait = crate::api::parse_retry_after(value, SystemTime::now())?;
    (wait <= Duration::from_secs(60)).then_some(wait)
}

/// The spans a Collector's answer says it rejected (an answer that does not decode says
/// nothing: it was a success).
fn rejected(answer: &[u8]) -> u64 {
    ExportTraceServiceResponse::decode(answer)
        .ok()
        .and_then(|r| r.partial_success)
        .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0))
}

/// Puts `batch` into `buffers.request`, reusing its messages.
fn fill(buffers: &mut Buffers, batch: &[SpanData]) {
    let Buffers {
        request,
        scopes,
        used,
        first,
        spare,
        ..
    } = buffers;
    let Some(resource) = request.resource_spans.first_mut() else {
        return;
    };
    used.clear();
    used.resize(scopes.len(), 0);
    first.clear();
    first.resize(scopes.len(), usize::MAX);
    for (at, data) in batch.iter().enumerate() {
        let index = match scopes.iter().position(|s| *s == data.instrumentation_scope) {
            Some(index) => index,
            None => {
                scopes.push(data.instrumentation_scope.clone());
                used.push(0);
                first.push(at);
                resource
                    .scope_spans
                    .push(scope_spans(&data.instrumentation_scope));
                scopes.len() - 1
            }
        };
        first[index] = first[index].min(at);
        let spans = &mut resource.scope_spans[index].spans;
        let slot = used[index];
        if slot == spans.len() {
            spans.push(spare.pop().unwrap_or_default());
        }
        fill_span(&mut spans[slot], data);
        used[index] += 1;
    }
    // What this batch did not fill goes back to the spare messages; scopes without spans go.
    let mut index = 0;
    while index < scopes.len() {
        let spans = &mut resource.scope_spans[index].spans;
        spare.extend(spans.drain(used[index]..));
        if used[index] == 0 {
            scopes.remove(index);
            used.remove(index);
            first.remove(index);
            resource.scope_spans.remove(index);
        } else {
            index += 1;
        }
    }
    if first.windows(2).any(|w| w[0] > w[1]) {
        // Rare (km has one scope): put the scopes in the order the batch named them.
        let mut order: Vec<usize> = (0..first.len()).collect();
        order.sort_by_key(|&i| first[i]);
        let mut old_scopes: Vec<_> = std::mem::take(scopes).into_iter().map(Some).collect();
        let mut old_spans: Vec<_> = std::mem::take(&mut resource.scope_spans)
            .into_iter()
            .map(Some)
            .collect();
        for i in order {
            scopes.extend(old_scopes[i].take());
            resource.scope_spans.extend(old_spans[i].take());
        }
        first.sort_unstable();
    }
}

fn scope_spans(scope: &opentelemetry::InstrumentationScope) -> proto::ScopeSpans {
    let mut attributes = Vec::new();
    fill_attributes(&mut attributes, scope.attributes());
    proto::ScopeSpans {
        scope: Some(common::InstrumentationScope {
            name: scope.name().to_owned(),
            version: scope.version().unwrap_or_default().to_owned(),
            attributes,
            ..Default::default()
        }),
        schema_url: scope.schema_url().unwrap_or_default().to_owned(),
        spans: Vec::new(),
    }
}

/// `dst` becomes `src`, in its own buffer.
fn set(dst: &mut String, src: &str) {
    dst.clear();
    dst.push_str(src);
}

fn set_bytes(dst: &mut Vec<u8>, src: &[u8]) {
    dst.clear();
    dst.extend_from_slice(src);
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The OTLP span flags: the W3C flags, and whether the parent is remote (as
/// `opentelemetry-proto` sets them).
fn flags(remote: bool, trace_flags: u8) -> u32 {
    let mut flags = u32::from(trace_flags) | proto::SpanFlags::ContextHasIsRemoteMask as u32;
    if remote {
        flags |= proto::SpanFlags::ContextIsRemoteMask as u32;
    }
    flags
}

fn fill_span(span: &mut proto::Span, data: &SpanData) {
    let context = &data.span_context;
    set_bytes(&mut span.trace_id, &context.trace_id().to_bytes());
    set_bytes(&mut span.span_id, &context.span_id().to_bytes());
    let state = context.trace_state();
    if *state == opentelemetry::trace::TraceState::NONE {
        span.trace_state.clear();
    } else {
        span.trace_state = state.header();
    }
    if data.parent_span_id == SpanId::INVALID {
        span.parent_span_id.clear();
    } else {
        set_bytes(&mut span.parent_span_id, &data.parent_span_id.to_bytes());
    }
    span.flags = flags(data.parent_span_is_remote, context.trace_flags().to_u8());
    set(&mut span.name, &data.name);
    span.kind = match data.span_kind {
        SpanKind::Client => proto::span::SpanKind::Client,
        SpanKind::Server => proto::span::SpanKind::Server,
        SpanKind::Producer => proto::span::SpanKind::Producer,
        SpanKind::Consumer => proto::span::SpanKind::Consumer,
        SpanKind::Internal => proto::span::SpanKind::Internal,
    } as i32;
    span.start_time_unix_nano = nanos(data.start_time);
    span.end_time_unix_nano = nanos(data.end_time);
    fill_attributes(&mut span.attributes, &data.attributes);
    span.dropped_attributes_count = data.dropped_attributes_count;
    let events = &data.events.events;
    span.events.truncate(events.len());
    for (i, event) in events.iter().enumerate() {
        if i == span.events.len() {
            span.events.push(proto::span::Event::default());
        }
        let out = &mut span.events[i];
        out.time_unix_nano = nanos(event.timestamp);
        set(&mut out.name, &event.name);
        fill_attributes(&mut out.attributes, &event.attributes);
        out.dropped_attributes_count = event.dropped_attributes_count;
    }
    span.dropped_events_count = data.events.dropped_count;
    let links = &data.links.links;
    span.links.truncate(links.len());
    for (i, link) in links.iter().enumerate() {
        if i == span.links.len() {
            span.links.push(proto::span::Link::default());
        }
        let out = &mut span.links[i];
        let context = &link.span_context;
        set_bytes(&mut out.trace_id, &context.trace_id().to_bytes());
        set_bytes(&mut out.span_id, &context.span_id().to_bytes());
        out.trace_state = context.trace_state().header();
        fill_attributes(&mut out.attributes, &link.attributes);
        out.dropped_attributes_count = link.dropped_attributes_count;
        out.flags = flags(context.is_remote(), context.trace_flags().to_u8());
    }
    span.dropped_links_count = data.links.dropped_count;
    let status = span.status.get_or_insert_with(Default::default);
    match &data.status {
        Status::Unset => {
            status.code = proto::status::StatusCode::Unset as i32;
            status.message.clear();
        }
        Status::Ok => {
            status.code = proto::status::StatusCode::Ok as i32;
            status.message.clear();
        }
        Status::Error { description } => {
            status.code = proto::status::StatusCode::Error as i32;
            set(&mut status.message, description);
        }
    }
}

fn fill_attributes<'a>(
    dst: &mut Vec<common::KeyValue>,
    src: impl IntoIterator<Item = &'a KeyValue>,
) {
    let mut n = 0;
    for kv in src {
        if n == dst.len() {
            dst.push(common::KeyValue::default());
        }
        let out = &mut dst[n];
        set(&mut out.key, kv.key.as_str());
        fill_value(out.value.get_or_insert_with(Default::default), &kv.value);
        n += 1;
    }
    dst.truncate(n);
}

fn fill_value(dst: &mut common::AnyValue, value: &Value) {
    match value {
        Value::String(text) => match &mut dst.value {
            Some(Any::StringValue(s)) => set(s, text.as_str()),
            other => *other = Some(Any::StringValue(text.as_str().to_owned())),
        },
        Value::Bool(b) => dst.value = Some(Any::BoolValue(*b)),
        Value::I64(i) => dst.value = Some(Any::IntValue(*i)),
        Value::F64(f) => dst.value = Some(Any::DoubleValue(*f)),
        Value::Array(array) => {
            let values = match array {
                Array::Bool(v) => v.iter().map(|b| any(Any::BoolValue(*b))).collect(),
                Array::I64(v) => v.iter().map(|i| any(Any::IntValue(*i))).collect(),
                Array::F64(v) => v.iter().map(|f| any(Any::DoubleValue(*f))).collect(),
                Array::String(v) => v
                    .iter()
                    .map(|s| any(Any::StringValue(s.as_str().to_owned())))
                    .collect(),
                // A kind of array added to the API later: its text, rather than nothing.
                other => vec![any(Any::StringValue(other.to_string()))],
            };
            dst.value = Some(Any::ArrayValue(common::ArrayValue { values }));
        }
        // A kind of value added to the API later: its text, rather than nothing.
        other => dst.value = Some(Any::StringValue(other.to_string())),
    }
}

fn any(value: Any) -> common::AnyValue {
    common::AnyValue { value: Some(value) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Link, SpanContext, TraceFlags, TraceId, TraceState};
    use opentelemetry::InstrumentationScope;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use std::borrow::Cow;

    fn span(
        name: &'static str,
        attributes: Vec<KeyValue>,
        scope: &InstrumentationScope,
    ) -> SpanData {
        let context = SpanContext::new(
            TraceId::from_bytes([7; 16]),
            SpanId::from_bytes([9; 8]),
            TraceFlags::SAMPLED,
            false,
            TraceState::from_key_value([("k", "v")]).expect("a trace state"),
        );
        let mut events = opentelemetry_sdk::trace::SpanEvents::default();
        events.events.push(opentelemetry::trace::Event::new(
            "km.verdict",
            UNIX_EPOCH + Duration::from_millis(5),
            vec![KeyValue::new("km.plugin.name", "p")],
            1,
        ));
        let mut links = opentelemetry_sdk::trace::SpanLinks::default();
        links.links.push(Link::with_context(SpanContext::new(
            TraceId::from_bytes([8; 16]),
            SpanId::from_bytes([10; 8]),
            TraceFlags::SAMPLED,
            true,
            TraceState::NONE,
        )));
        SpanData {
            span_context: context,
            parent_span_id: SpanId::from_bytes([3; 8]),
            parent_span_is_remote: true,
            span_kind: SpanKind::Server,
            name: Cow::Borrowed(name),
            start_time: UNIX_EPOCH + Duration::from_millis(1),
            end_time: UNIX_EPOCH + Duration::from_millis(9),
            attributes,
            dropped_attributes_count: 2,
            events,
            links,
            status: Status::error("boom"),
            instrumentation_scope: scope.clone(),
        }
    }

    fn attributes(n: usize) -> Vec<KeyValue> {
        let mut all = vec![
            KeyValue::new("mcp.method.name", "tools/call"),
            KeyValue::new("shared", Value::from(Arc::<str>::from("shared text"))),
            KeyValue::new("owned", "x".repeat(40)),
            KeyValue::new("flag", true),
            KeyValue::new("int", -4i64),
            KeyValue::new("float", 0.5),
            KeyValue::new("ints", Value::Array(Array::I64(vec![1, 2]))),
            KeyValue::new(
                "strings",
                Value::Array(Array::String(vec!["a".into(), "b".into()])),
            ),
        ];
        all.truncate(n);
        all
    }

    /// This exporter's message is the one `opentelemetry-proto`'s own conversion makes, batch
    /// after batch, while buffers are reused with more and fewer spans, attributes and scopes.
    #[test]
    fn the_message_is_the_one_the_official_conversion_makes() {
        let km = InstrumentationScope::builder("km")
            .with_version("1.2")
            .build();
        let other = InstrumentationScope::builder("other")
            .with_attributes([KeyValue::new("a", 1i64)])
            .build();
        let resource = Resource::builder_empty()
            .with_service_name("svc")
            .with_attributes([KeyValue::new("process.pid", 12i64)])
            .build();
        let client = reqwest::Client::new();
        let target = Target::new(
            "http://127.0.0.1:9/v1/traces",
            &Default::default(),
            Duration::from_secs(1),
            &|_| None,
        )
        .expect("a target");
        let mut exporter = Exporter::new(
            client,
            crate::runtime::for_tests(),
            target,
            Arc::new(Delivery::default()),
        );
        exporter.set_resource(&resource);
        let batches = [
            vec![span("a", attributes(8), &km), span("b", attributes(3), &km)],
            vec![
                span("c", attributes(2), &other),
                span("d", attributes(8), &km),
                span("e", attributes(0), &km),
            ],
            vec![span("f", attributes(5), &km)],
        ];
        for batch in batches {
            let body = exporter.encode(&batch);
            let ours = ExportTraceServiceRequest::decode(&body[..]).expect("it decodes");
            let theirs = ExportTraceServiceRequest {
                resource_spans: group_spans_by_resource_and_scope(
                    batch,
                    &ResourceAttributesWithSchema::from(&resource),
                ),
            };
            assert_eq!(ours, theirs);
            exporter.give_back(body);
        }
    }

    #[test]
    fn headers_are_parsed_and_decoded_as_the_specification_says() {
        let parsed: Vec<_> = parse_headers("a=1, b = x%20y ,c=,=d,e,f=%zz,g=%E2%9C%93").collect();
        assert_eq!(
            parsed,
            vec![
                ("a", "1".to_owned()),
                ("b", "x y".to_owned()),
                ("f", "%zz".to_owned()),
                ("g", "✓".to_owned()),
            ]
        );
        let file = [
            ("x-file".to_owned(), "1".to_owned()),
            ("x-both".to_owned(), "file".to_owned()),
        ]
        .into_iter()
        .collect();
        let env = |name: &str| match name {
            "OTEL_EXPORTER_OTLP_HEADERS" => Some("x-both=env,x-generic=1".to_owned()),
            _ => None,
        };
        let target = Target::new(
            "http://c:4318/v1/traces",
            &file,
            Duration::from_secs(1),
            &env,
        )
        .expect("a target");
        assert_eq!(target.headers["x-file"], "1");
        assert_eq!(target.headers["x-both"], "env", "the environment wins");
        assert_eq!(target.headers["content-type"], "application/x-protobuf");
        let env = |name: &str| match name {
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS" => Some("x-signal=1".to_owned()),
            "OTEL_EXPORTER_OTLP_HEADERS" => Some("x-generic=1".to_owned()),
            _ => None,
        };
        let target = Target::new(
            "http://c:4318/v1/traces",
            &file,
            Duration::from_secs(1),
            &env,
        )
        .expect("a target");
        assert!(target.headers.contains_key("x-signal"));
        assert!(
            !target.headers.contains_key("x-generic"),
            "the signal's variable wins"
        );
    }

    #[test]
    fn bad_endpoints_and_compression_are_refused_by_name() {
        let none = |_: &str| None;
        let error = Target::new(
            "not a url",
            &Default::default(),
            Duration::from_secs(1),
            &none,
        )
        .expect_err("refused");
        assert!(error.contains("not a URL"), "{error}");
        let error = Target::new(
            "ftp://c/v1/traces",
            &Default::default(),
            Duration::from_secs(1),
            &none,
        )
        .expect_err("refused");
        assert!(error.contains("http or https"), "{error}");
        let gzip =
            |name: &str| (name == "OTEL_EXPORTER_OTLP_COMPRESSION").then(|| "gzip".to_owned());
        let error = Target::new(
            "http://c/v1/traces",
            &Default::default(),
            Duration::from_secs(1),
            &gzip,
        )
        .expect_err("refused");
        assert!(error.contains("OTEL_EXPORTER_OTLP_COMPRESSION"), "{error}");
    }
}
