//! Distributed tracing. A [`Tracer`] starts spans that continue a trace
//! the request or CONNECT carried ([`context`]), or start one, sampled at
//! the configured rate; a span is sent when it ends ([`otlp`]). With no
//! collector configured nothing is recorded and contexts are only passed on.
pub mod context;
pub mod otlp;

use std::time::SystemTime;

pub use context::Context;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("OTLP endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("sampling {value}: must be a percentage from 0 to 100")]
    Sampling { value: f64 },
    #[error("exporting spans: {source}")]
    Export {
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the collector answered {status}")]
    Refused { status: u16 },
}

/// An attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    String(String),
    Int(i64),
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Self::String(s)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Self::String(s.to_string())
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Self::Int(i)
    }
}

/// OTLP's span kinds that strait reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Server = 2,
    Client = 3,
}

/// A span once it ended.
pub(crate) struct Finished {
    context: Context,
    parent: Option<[u8; 8]>,
    name: String,
    kind: Kind,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<(&'static str, Value)>,
    error: Option<String>,
}

/// Starts spans, and sends those sampled.
#[derive(Clone)]
pub struct Tracer {
    exporter: Option<otlp::Exporter>,
    /// Share of new traces recorded, 0 to 1.
    sampling: f64,
}

impl Tracer {
    /// Records nothing; contexts are passed on as they came.
    pub fn disabled() -> Self {
        Self {
            exporter: None,
            sampling: 0.0,
        }
    }

    /// Sends spans to `endpoint`; `sampling` is the percentage of new
    /// traces recorded (a trace a request carries keeps its own decision).
    pub fn new(
        endpoint: otlp::Endpoint,
        sampling: f64,
        resource: Vec<(String, Value)>,
        metrics: otlp::Metrics,
    ) -> Result<Self, Error> {
        if !(0.0..=100.0).contains(&sampling) {
            return Err(Error::Sampling { value: sampling });
        }
        Ok(Self {
            exporter: Some(otlp::Exporter::start(endpoint, resource, metrics)),
            sampling: sampling / 100.0,
        })
    }

    pub fn enabled(&self) -> bool {
        self.exporter.is_some()
    }

    /// A span under `parent`, or the first of a new trace; `None` when
    /// tracing is off.
    pub fn span(&self, name: &str, kind: Kind, parent: Option<&Context>) -> Option<Span> {
        let exporter = self.exporter.clone()?;
        let (context, parent_id) = match parent {
            Some(parent) => (parent.child(), Some(parent.span_id)),
            None => (Context::root(fastrand::f64() < self.sampling), None),
        };
        Some(Span {
            exporter: context.sampled.then_some(exporter),
            context,
            parent: parent_id,
            name: name.to_string(),
            kind,
            start: SystemTime::now(),
            attributes: Vec::new(),
            error: None,
        })
    }

    /// A span only when a new trace is sampled: for connections, which
    /// start traces but carry no context of their own.
    pub fn sampled_root(&self, name: &str, kind: Kind) -> Option<Span> {
        self.span(name, kind, None).filter(|s| s.context.sampled)
    }
}

/// An open span: sent when dropped, if its trace is sampled.
pub struct Span {
    exporter: Option<otlp::Exporter>,
    context: Context,
    parent: Option<[u8; 8]>,
    name: String,
    kind: Kind,
    start: SystemTime,
    attributes: Vec<(&'static str, Value)>,
    error: Option<String>,
}

impl Span {
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The span this one is under, if any.
    pub fn parent(&self) -> Option<&[u8; 8]> {
        self.parent.as_ref()
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if self.exporter.is_some() {
            self.attributes.push((key, value.into()));
        }
    }

    /// Marks the span failed.
    pub fn error(&mut self, message: impl Into<String>) {
        self.error = Some(message.into());
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(exporter) = self.exporter.take() {
            exporter.send(Finished {
                context: self.context.clone(),
                parent: self.parent,
                name: std::mem::take(&mut self.name),
                kind: self.kind,
                start: self.start,
                end: SystemTime::now(),
                attributes: std::mem::take(&mut self.attributes),
                error: self.error.take(),
            });
        }
    }
}

/// The tracing flags of the binaries, with OpenTelemetry's environment
/// variable.
#[cfg(feature = "cli")]
#[derive(Clone, Debug, clap::Args)]
pub struct TraceArgs {
    /// An OpenTelemetry collector's OTLP/HTTP address
    /// (`http://collector:4318`); spans go to its `/v1/traces`. Unset: no
    /// spans are recorded, trace headers are passed on.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Percentage of new traces recorded (Istio's default is 1); a trace a
    /// request carries keeps its own sampling decision.
    #[arg(long, default_value_t = 1.0)]
    pub trace_sampling: f64,
}

#[cfg(feature = "cli")]
impl TraceArgs {
    /// The tracer these flags describe, for the process `service`
    /// (`instance` tells its replicas apart).
    pub fn tracer(
        &self,
        service: &str,
        instance: &str,
        metrics: otlp::Metrics,
    ) -> Result<Tracer, Error> {
        let Some(endpoint) = &self.otlp_endpoint else {
            return Ok(Tracer::disabled());
        };
        let endpoint = otlp::Endpoint::parse(endpoint)?;
        Tracer::new(
            endpoint,
            self.trace_sampling,
            vec![
                ("service.name".into(), service.into()),
                ("service.instance.id".into(), instance.into()),
            ],
            metrics,
        )
    }
}
