//! OTLP/HTTP export: finished spans batched and posted, as protobuf, to a
//! collector's `/v1/traces`. The messages are those of
//! `opentelemetry/proto/collector/trace/v1` (only the fields written here).
//! Exporting never holds up traffic: spans wait in a bounded queue, and
//! what does not fit, or what the collector refuses, is dropped and counted.
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri, client::conn::http1};
use hyper_util::rt::TokioIo;
use prometheus_client::{metrics::counter::Counter, registry::Registry};
use prost::Message;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::{Error, Finished, Value};

/// Spans waiting to be sent, at most.
const QUEUE: usize = 4096;
/// Spans in one request, at most.
const BATCH: usize = 512;
/// How long a finished span waits for others to share its request.
const LINGER: Duration = Duration::from_millis(500);
/// One export, connection included, at most.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, PartialEq, Message)]
struct ExportTraceServiceRequest {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<ResourceSpans>,
}

#[derive(Clone, PartialEq, Message)]
struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<ScopeSpans>,
}

#[derive(Clone, PartialEq, Message)]
struct Resource {
    #[prost(message, repeated, tag = "1")]
    attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, Message)]
struct ScopeSpans {
    #[prost(message, optional, tag = "1")]
    scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    spans: Vec<Span>,
}

#[derive(Clone, PartialEq, Message)]
struct InstrumentationScope {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    version: String,
}

#[derive(Clone, PartialEq, Message)]
struct Span {
    #[prost(bytes = "vec", tag = "1")]
    trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    span_id: Vec<u8>,
    #[prost(string, tag = "3")]
    trace_state: String,
    #[prost(bytes = "vec", tag = "4")]
    parent_span_id: Vec<u8>,
    #[prost(string, tag = "5")]
    name: String,
    #[prost(int32, tag = "6")]
    kind: i32,
    #[prost(fixed64, tag = "7")]
    start_time_unix_nano: u64,
    #[prost(fixed64, tag = "8")]
    end_time_unix_nano: u64,
    #[prost(message, repeated, tag = "9")]
    attributes: Vec<KeyValue>,
    #[prost(message, optional, tag = "15")]
    status: Option<Status>,
    #[prost(fixed32, tag = "16")]
    flags: u32,
}

#[derive(Clone, PartialEq, Message)]
struct Status {
    #[prost(string, tag = "2")]
    message: String,
    #[prost(int32, tag = "3")]
    code: i32,
}

#[derive(Clone, PartialEq, Message)]
struct KeyValue {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(message, optional, tag = "2")]
    value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, Message)]
struct AnyValue {
    #[prost(oneof = "any_value::Value", tags = "1, 3")]
    value: Option<any_value::Value>,
}

mod any_value {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(string, tag = "1")]
        String(String),
        #[prost(int64, tag = "3")]
        Int(i64),
    }
}

/// W3C's "sampled" bit in a span's flags.
const FLAG_SAMPLED: u32 = 1;
/// OTLP's STATUS_CODE_ERROR.
const STATUS_ERROR: i32 = 2;

fn key_value(key: &str, value: &Value) -> KeyValue {
    let value = match value {
        Value::String(s) => any_value::Value::String(s.clone()),
        Value::Int(i) => any_value::Value::Int(*i),
    };
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

fn span_of(finished: Finished) -> Span {
    let nanos = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    };
    Span {
        trace_id: finished.context.trace_id.to_vec(),
        span_id: finished.context.span_id.to_vec(),
        trace_state: finished.context.state.unwrap_or_default(),
        parent_span_id: finished.parent.map(|p| p.to_vec()).unwrap_or_default(),
        name: finished.name,
        kind: finished.kind as i32,
        start_time_unix_nano: nanos(finished.start),
        end_time_unix_nano: nanos(finished.end),
        attributes: finished
            .attributes
            .iter()
            .map(|(k, v)| key_value(k, v))
            .collect(),
        status: finished.error.map(|message| Status {
            message,
            code: STATUS_ERROR,
        }),
        flags: FLAG_SAMPLED,
    }
}

/// Counts of what export did.
#[derive(Clone, Default)]
pub struct Metrics {
    exported: Counter,
    dropped: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "strait_trace_spans_exported",
            "Spans the collector accepted",
            metrics.exported.clone(),
        );
        registry.register(
            "strait_trace_spans_dropped",
            "Spans dropped: the queue was full or the collector did not accept them",
            metrics.dropped.clone(),
        );
        metrics
    }
}

/// Where spans go: the collector's traces URL, plain HTTP.
#[derive(Clone, Debug)]
pub struct Endpoint {
    uri: Uri,
    authority: String,
}

impl Endpoint {
    /// `base` as `OTEL_EXPORTER_OTLP_ENDPOINT` gives it
    /// (`http://collector:4318`); spans go to its `/v1/traces`.
    pub fn parse(base: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::Endpoint {
            endpoint: base.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = base.parse().map_err(|_| bad("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "https is not supported: use the collector's plain OTLP/HTTP port (4318)",
                ));
            }
            _ => return Err(bad("the URL must start with http://")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| bad("no host"))?
            .as_str()
            .to_string();
        let path = format!("{}/v1/traces", uri.path().trim_end_matches('/'));
        let uri = Uri::builder()
            .scheme("http")
            .authority(authority.as_str())
            .path_and_query(path)
            .build()
            .map_err(|_| bad("not a URL"))?;
        Ok(Self { uri, authority })
    }
}

/// The sending half: spans in, dropped when the queue is full.
#[derive(Clone)]
pub struct Exporter {
    queue: mpsc::Sender<Finished>,
    metrics: Metrics,
}

impl Exporter {
    /// Starts the task that sends to `endpoint`; `resource` describes the
    /// process (`service.name` and the like).
    pub fn start(endpoint: Endpoint, resource: Vec<(String, Value)>, metrics: Metrics) -> Self {
        let (queue, spans) = mpsc::channel(QUEUE);
        let resource = Resource {
            attributes: resource.iter().map(|(k, v)| key_value(k, v)).collect(),
        };
        tokio::spawn(run(endpoint, resource, spans, metrics.clone()));
        Self { queue, metrics }
    }

    pub(crate) fn send(&self, span: Finished) {
        if self.queue.try_send(span).is_err() {
            self.metrics.dropped.inc();
        }
    }
}

async fn run(
    endpoint: Endpoint,
    resource: Resource,
    mut spans: mpsc::Receiver<Finished>,
    metrics: Metrics,
) {
    while let Some(first) = spans.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, spans.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let count = batch.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "strait".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    }),
                    spans: batch.into_iter().map(span_of).collect(),
                }],
            }],
        };
        let body = Bytes::from(request.encode_to_vec());
        match tokio::time::timeout(EXPORT_TIMEOUT, post(&endpoint, body)).await {
            Ok(Ok(())) => {
                metrics.exported.inc_by(count);
            }
            Ok(Err(err)) => {
                metrics.dropped.inc_by(count);
                warn!(%err, endpoint = %endpoint.uri, spans = count, "trace export failed");
            }
            Err(_) => {
                metrics.dropped.inc_by(count);
                warn!(endpoint = %endpoint.uri, spans = count, "trace export timed out");
            }
        }
    }
}

/// One POST on a connection of its own (a batch every half second at
/// most: not worth keeping one open).
async fn post(endpoint: &Endpoint, body: Bytes) -> Result<(), Error> {
    let io = |source| Error::Export { source };
    let stream = tokio::net::TcpStream::connect(&endpoint.authority)
        .await
        .map_err(|e| io(Box::new(e)))?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| io(Box::new(e)))?;
    tokio::spawn(async move {
        if let Err(err) = conn.await {
            debug!(%err, "collector connection");
        }
    });
    // Origin-form: the path alone (the Host header names the collector).
    let path = endpoint
        .uri
        .path_and_query()
        .map_or("/v1/traces", |p| p.as_str());
    let request = Request::post(path)
        .header(hyper::header::HOST, endpoint.authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(body))
        .map_err(|e| io(Box::new(e)))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| io(Box::new(e)))?;
    let status = response.status();
    // Read the answer so the connection ends cleanly.
    let _ = response.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(Error::Refused {
            status: status.as_u16(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked() {
        let e = Endpoint::parse("http://collector:4318").unwrap();
        assert_eq!(e.uri.to_string(), "http://collector:4318/v1/traces");
        let e = Endpoint::parse("http://10.0.0.1:4318/otlp/").unwrap();
        assert_eq!(e.uri.to_string(), "http://10.0.0.1:4318/otlp/v1/traces");
        for bad in ["https://c:4318", "collector:4318", "http://", "ftp://x"] {
            let err = Endpoint::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }
}
