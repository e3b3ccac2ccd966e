//! What one request leaves behind once its answer has ended (or the client
//! went away): Istio's request metrics, one access-log line and its span.
//! Counted at the end, as Envoy does, so durations include the body,
//! sizes are whole, and a gRPC status in trailers is seen.
use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use hyper::{
    Method,
    body::{Body as _, Frame, SizeHint},
    header::HeaderMap,
};
use strait_trace::Span;

use crate::{
    metrics::RequestLabels,
    pool::{Body, BoxError},
    proxy::Waypoint,
};

/// What the access-log line says beyond the labels.
pub struct Log {
    pub src: std::net::SocketAddr,
    pub method: Method,
    pub path: String,
    pub authority: std::net::SocketAddr,
    pub route: Option<String>,
}

/// A request on its way out: everything known of it but the end.
pub struct Record {
    pub waypoint: Arc<Waypoint>,
    pub started: Instant,
    pub labels: RequestLabels,
    pub attempts: u32,
    /// Request body bytes read from the client so far.
    pub received: Arc<AtomicU64>,
    pub log: Log,
    pub span: Option<Span>,
}

impl Record {
    fn finish(mut self, sent: u64, grpc_status: Option<String>, ended: End) {
        if let Some(status) = grpc_status {
            self.labels.grpc_response_status = status;
        }
        if ended == End::ClientGone && self.labels.response_flags == "-" {
            // Envoy's: the downstream connection ended before the answer.
            self.labels.response_flags = "DC";
        }
        let millis = self.started.elapsed().as_secs_f64() * 1000.0;
        let received = self.received.load(Ordering::Relaxed);
        let labels = &self.labels;
        self.waypoint
            .metrics
            .request(labels, millis, self.attempts, (received, sent));
        let trace_id = self.span.as_ref().map(|s| s.context().trace_id_hex());
        if let Some(span) = &mut self.span {
            span.set("http.response.status_code", i64::from(labels.response_code));
            span.set("response_flags", labels.response_flags);
            span.set("upstream.principal", labels.destination_principal.clone());
            span.set("upstream.workload", labels.destination_workload.clone());
            if !labels.grpc_response_status.is_empty() {
                span.set("rpc.grpc.status_code", labels.grpc_response_status.clone());
            }
            if labels.response_code >= 500 || ended == End::Broken {
                span.error(labels.response_flags);
            }
        }
        let log = &self.log;
        let (src, authority) = (log.src.to_string(), log.authority.to_string());
        use crate::access::Value::{Number, Text};
        self.waypoint.access.write(&[
            ("reporter", Text("waypoint")),
            ("src", Text(&src)),
            ("src_identity", Text(&labels.source_principal)),
            ("method", Text(log.method.as_str())),
            ("path", Text(&log.path)),
            ("authority", Text(&authority)),
            ("dst", Text(&labels.destination_workload)),
            ("dst_identity", Text(&labels.destination_principal)),
            ("status", Number(u64::from(labels.response_code))),
            ("grpc_status", Text(&labels.grpc_response_status)),
            ("flags", Text(labels.response_flags)),
            ("route", Text(log.route.as_deref().unwrap_or("-"))),
            ("attempts", Number(u64::from(self.attempts))),
            ("bytes_received", Number(received)),
            ("bytes_sent", Number(sent)),
            ("duration_ms", Number(millis as u64)),
            ("trace_id", Text(trace_id.as_deref().unwrap_or("-"))),
        ]);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Complete,
    /// The answer's body broke on the way.
    Broken,
    /// The client stopped reading (went away) first.
    ClientGone,
}

/// The gRPC status in `headers`, if any.
pub fn grpc_status(headers: &HeaderMap) -> Option<String> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 3 && v.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_string)
}

/// An answer's body that counts what passes and records the request when
/// it ends.
pub struct Metered {
    inner: Body,
    sent: u64,
    grpc_status: Option<String>,
    record: Option<Record>,
}

impl Metered {
    /// `headers` are the answer's: a trailers-only gRPC answer has its
    /// status there.
    pub fn new(inner: Body, headers: &HeaderMap, record: Record) -> Self {
        Self {
            inner,
            sent: 0,
            grpc_status: grpc_status(headers),
            record: Some(record),
        }
    }

    fn end(&mut self, how: End) {
        if let Some(record) = self.record.take() {
            record.finish(self.sent, self.grpc_status.take(), how);
        }
    }
}

impl hyper::body::Body for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref()
                    && let Some(status) = grpc_status(trailers)
                {
                    self.grpc_status = Some(status);
                }
                if self.inner.is_end_stream() {
                    self.end(End::Complete);
                }
            }
            Poll::Ready(Some(Err(_))) => self.end(End::Broken),
            Poll::Ready(None) => self.end(End::Complete),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        // An empty body may never be polled.
        let how = if self.inner.is_end_stream() {
            End::Complete
        } else {
            End::ClientGone
        };
        self.end(how);
    }
}

/// A request body that counts what the client sent.
pub struct Counted {
    inner: hyper::body::Incoming,
    received: Arc<AtomicU64>,
}

impl Counted {
    pub fn new(inner: hyper::body::Incoming, received: Arc<AtomicU64>) -> Self {
        Self { inner, received }
    }
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.received
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
