//! Trace context on the wire: W3C `traceparent`/`tracestate`, and Zipkin's
//! B3 in its single-header (`b3`) and multi-header (`x-b3-*`) forms. What a
//! client sends is untrusted: anything malformed is ignored, as if absent.
use hyper::header::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// W3C's bound on what `tracestate` must carry; a longer one is dropped
/// rather than cut (cutting could split a member).
const TRACESTATE_MAX: usize = 512;

/// Which header form a request carried its context in: the answer is
/// written in the same form (and always as `traceparent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    W3c,
    B3Single,
    B3Multi,
}

/// One span's place in a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
    /// Vendors' `tracestate`, passed on unchanged.
    pub state: Option<String>,
    pub form: Form,
}

impl Context {
    /// A new trace's first span.
    pub fn root(sampled: bool) -> Self {
        Self {
            trace_id: nonzero(fastrand::u128(..)).to_be_bytes(),
            span_id: new_span_id(),
            sampled,
            state: None,
            form: Form::W3c,
        }
    }

    /// A span under this one: same trace, same decision, a new id.
    pub fn child(&self) -> Self {
        Self {
            span_id: new_span_id(),
            ..self.clone()
        }
    }

    /// The context a request carries: `traceparent` first, then B3.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(mut context) = text(&TRACEPARENT).and_then(Self::from_traceparent) {
            context.state = text(&TRACESTATE)
                .filter(|s| s.len() <= TRACESTATE_MAX)
                .map(str::to_string);
            return Some(context);
        }
        if let Some(context) = text(&B3).and_then(from_b3_single) {
            return Some(context);
        }
        let trace_id = text(&B3_TRACE_ID).and_then(trace_id_of)?;
        let span_id = text(&B3_SPAN_ID).and_then(span_id_of)?;
        let sampled =
            matches!(text(&B3_SAMPLED), Some("1" | "true")) || text(&B3_FLAGS) == Some("1");
        Some(Self {
            trace_id,
            span_id,
            sampled,
            state: None,
            form: Form::B3Multi,
        })
    }

    /// Parses a `traceparent` value (version 00, or a later version's
    /// first four fields, as W3C says).
    pub fn from_traceparent(value: &str) -> Option<Self> {
        let mut fields = value.trim().split('-');
        let version = fields.next()?;
        let (trace, span, flags) = (fields.next()?, fields.next()?, fields.next()?);
        if version.len() != 2 || version == "ff" || !is_hex(version) {
            return None;
        }
        if version == "00" && fields.next().is_some() {
            return None;
        }
        if flags.len() != 2 {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(Self {
            trace_id: trace_id_of(trace).filter(|_| trace.len() == 32)?,
            span_id: span_id_of(span)?,
            sampled: flags & 1 == 1,
            state: None,
            form: Form::W3c,
        })
    }

    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            u8::from(self.sampled)
        )
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// Writes this context into a request's headers: `traceparent` (and
    /// `tracestate`) always, B3 as well when the request came with B3;
    /// `parent` is the B3 parent span.
    pub fn inject(&self, headers: &mut HeaderMap, parent: Option<&[u8; 8]>) {
        let mut put = |name: HeaderName, value: String| {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        };
        put(TRACEPARENT, self.traceparent());
        if let Some(state) = &self.state {
            put(TRACESTATE, state.clone());
        }
        let sampled = if self.sampled { "1" } else { "0" };
        match self.form {
            Form::W3c => {}
            Form::B3Single => {
                let mut value = format!("{}-{}-{sampled}", self.trace_id_hex(), self.span_id_hex());
                if let Some(parent) = parent {
                    value.push('-');
                    value.push_str(&hex(parent));
                }
                put(B3, value);
            }
            Form::B3Multi => {
                put(B3_TRACE_ID, self.trace_id_hex());
                put(B3_SPAN_ID, self.span_id_hex());
                put(B3_SAMPLED, sampled.to_string());
                if let Some(parent) = parent {
                    put(B3_PARENT_SPAN_ID, hex(parent));
                }
                headers.remove(B3_FLAGS);
            }
        }
    }
}

/// `{trace}-{span}[-{sampled}[-{parent}]]`; a bare `0`/`1`/`d` is a
/// sampling decision without a trace, which starts none here.
fn from_b3_single(value: &str) -> Option<Context> {
    let mut fields = value.trim().split('-');
    let trace_id = trace_id_of(fields.next()?)?;
    let span_id = span_id_of(fields.next()?)?;
    let sampled = match fields.next() {
        None | Some("1") | Some("d") => true,
        Some("0") => false,
        Some(_) => return None,
    };
    if let Some(parent) = fields.next() {
        span_id_of(parent)?;
    }
    Some(Context {
        trace_id,
        span_id,
        sampled,
        state: None,
        form: Form::B3Single,
    })
}

/// A 128-bit trace id, or a 64-bit one (B3) widened with zeros; all zeros
/// is invalid.
fn trace_id_of(text: &str) -> Option<[u8; 16]> {
    if !matches!(text.len(), 16 | 32) || !is_hex(text) {
        return None;
    }
    let id = u128::from_str_radix(text, 16).ok()?;
    (id != 0).then(|| id.to_be_bytes())
}

fn span_id_of(text: &str) -> Option<[u8; 8]> {
    if text.len() != 16 || !is_hex(text) {
        return None;
    }
    let id = u64::from_str_radix(text, 16).ok()?;
    (id != 0).then(|| id.to_be_bytes())
}

/// Lowercase hex only, as W3C requires.
fn is_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn nonzero(id: u128) -> u128 {
    id.max(1)
}

fn new_span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                HeaderName::from_static(name),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn traceparent_round_trips_and_bad_ones_are_ignored() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = Context::from_traceparent(value).unwrap();
        assert!(context.sampled);
        assert_eq!(context.traceparent(), value);
        assert_eq!(context.child().trace_id, context.trace_id);
        assert_ne!(context.child().span_id, context.span_id);
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        ] {
            assert_eq!(Context::from_traceparent(bad), None, "{bad}");
        }
        // A later version's extra fields are allowed.
        assert!(
            Context::from_traceparent(
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more"
            )
            .is_some_and(|c| !c.sampled)
        );
    }

    #[test]
    fn b3_in_both_forms_is_read_and_written_back_in_its_own() {
        let single = headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]);
        let context = Context::from_headers(&single).unwrap();
        assert_eq!(context.form, Form::B3Single);
        assert_eq!(context.trace_id_hex(), "80f198ee56343ba864fe8b2a57d3eff7");
        let mut out = HeaderMap::new();
        let child = context.child();
        child.inject(&mut out, Some(&context.span_id));
        assert_eq!(
            out["b3"].to_str().unwrap(),
            format!(
                "80f198ee56343ba864fe8b2a57d3eff7-{}-1-e457b5a2e4d86bd1",
                child.span_id_hex()
            )
        );
        assert!(
            out["traceparent"]
                .to_str()
                .unwrap()
                .starts_with("00-80f198ee")
        );

        let multi = headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
        ]);
        let context = Context::from_headers(&multi).unwrap();
        assert_eq!(context.form, Form::B3Multi);
        assert_eq!(context.trace_id_hex(), "0000000000000000463ac35c9f6413ad");
        let mut out = multi.clone();
        context.child().inject(&mut out, Some(&context.span_id));
        assert_eq!(out["x-b3-parentspanid"], "a2fb4a1d1a96d312");
        assert_eq!(out["x-b3-sampled"], "1");

        // traceparent wins over B3; junk of either is ignored.
        let both = headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            ),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]);
        let context = Context::from_headers(&both).unwrap();
        assert_eq!(context.form, Form::W3c);
        assert!(!context.sampled);
        assert_eq!(context.state.as_deref(), Some("congo=t61rcWkgMzE"));
        for junk in [
            "0",
            "x-y",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-7",
        ] {
            assert_eq!(
                Context::from_headers(&headers(&[("b3", junk)])),
                None,
                "{junk}"
            );
        }
        let long = "a=".to_string() + &"b".repeat(600);
        let context = Context::from_headers(&headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", &long),
        ]))
        .unwrap();
        assert_eq!(context.state, None);
    }
}
