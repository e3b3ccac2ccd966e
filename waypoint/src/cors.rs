//! A route's `corsPolicy`, as Envoy's CORS filter applies it: a preflight
//! (`OPTIONS` with `Access-Control-Request-Method`) from an allowed origin
//! is answered by the waypoint; an actual request from one gets the
//! `Access-Control-Allow-*` headers on its answer; anything else passes as
//! it came (or, for a preflight from another origin with
//! `unmatchedPreflights: IGNORE`, is answered without them).
use hyper::{
    HeaderMap, Method,
    header::{self, HeaderName, HeaderValue},
};
use strait_config::manifest::networking::CorsPolicy;

use crate::matching::Str;

#[derive(Debug)]
pub struct Cors {
    origins: Vec<Str>,
    methods: Option<HeaderValue>,
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    credentials: bool,
    forward_unmatched: bool,
}

/// What the policy says of one request.
pub enum Verdict {
    /// Not a cross-origin request the policy answers: sent on unchanged.
    Pass,
    /// A preflight, answered here with these headers (none for an origin
    /// not allowed, with `unmatchedPreflights: IGNORE`).
    Preflight(Vec<(HeaderName, HeaderValue)>),
    /// An allowed actual request: its answer gets these headers.
    Actual(Vec<(HeaderName, HeaderValue)>),
}

fn joined(values: &[String], what: &str) -> Result<Option<HeaderValue>, String> {
    if values.is_empty() {
        return Ok(None);
    }
    HeaderValue::from_str(&values.join(","))
        .map(Some)
        .map_err(|_| format!("corsPolicy.{what}: not a valid header value"))
}

impl Cors {
    pub fn compile(policy: &CorsPolicy) -> Result<Self, String> {
        let mut origins = Vec::new();
        for exact in &policy.allow_origin {
            origins.push(if exact == "*" {
                Str::Present
            } else {
                Str::Exact(exact.clone())
            });
        }
        for (i, m) in policy.allow_origins.iter().enumerate() {
            origins
                .push(Str::compile(m).map_err(|e| format!("corsPolicy.allowOrigins[{i}]: {e}"))?);
        }
        let max_age = match &policy.max_age {
            None => None,
            Some(age) => {
                let age = strait_config::duration::parse(age)
                    .map_err(|e| format!("corsPolicy.maxAge: {e}"))?;
                Some(HeaderValue::from(age.as_secs()))
            }
        };
        Ok(Self {
            origins,
            methods: joined(&policy.allow_methods, "allowMethods")?,
            headers: joined(&policy.allow_headers, "allowHeaders")?,
            expose: joined(&policy.expose_headers, "exposeHeaders")?,
            max_age,
            credentials: policy.allow_credentials == Some(true),
            forward_unmatched: policy.unmatched_preflights.as_deref() != Some("IGNORE"),
        })
    }

    pub fn judge(&self, method: &Method, headers: &HeaderMap) -> Verdict {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Verdict::Pass;
        };
        let preflight = method == Method::OPTIONS
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let allowed = origin
            .to_str()
            .is_ok_and(|o| self.origins.iter().any(|m| m.matches(o, false)));
        let mut out = Vec::new();
        if allowed {
            out.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()));
            if self.credentials {
                out.push((
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                ));
            }
        }
        match (preflight, allowed) {
            (true, true) => {
                let more = [
                    (header::ACCESS_CONTROL_ALLOW_METHODS, &self.methods),
                    (header::ACCESS_CONTROL_ALLOW_HEADERS, &self.headers),
                    (header::ACCESS_CONTROL_MAX_AGE, &self.max_age),
                ];
                out.extend(more.into_iter().filter_map(|(n, v)| Some((n, v.clone()?))));
                Verdict::Preflight(out)
            }
            (true, false) if !self.forward_unmatched => Verdict::Preflight(out),
            (false, true) => {
                if let Some(expose) = &self.expose {
                    out.push((header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone()));
                }
                Verdict::Actual(out)
            }
            _ => Verdict::Pass,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Cors {
        Cors::compile(&serde_json::from_str(yaml).unwrap()).unwrap()
    }

    fn request(origin: &str, preflight: bool) -> (Method, HeaderMap) {
        let mut headers = HeaderMap::new();
        headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        if preflight {
            headers.insert(
                header::ACCESS_CONTROL_REQUEST_METHOD,
                HeaderValue::from_static("POST"),
            );
            return (Method::OPTIONS, headers);
        }
        (Method::GET, headers)
    }

    #[test]
    fn allowed_origins_get_answers_and_others_pass() {
        let cors = policy(
            r#"{"allowOrigins": [{"exact": "https://shop.example"}, {"regex": "https://.*\\.dev\\.example"}],
                "allowMethods": ["GET", "POST"], "allowHeaders": ["x-user"],
                "exposeHeaders": ["x-trace"], "maxAge": "24h", "allowCredentials": true}"#,
        );
        let (m, h) = request("https://shop.example", true);
        let Verdict::Preflight(headers) = cors.judge(&m, &h) else {
            panic!("a preflight from an allowed origin is answered");
        };
        let get = |name: HeaderName| {
            headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_str().unwrap().to_string())
        };
        assert_eq!(
            get(header::ACCESS_CONTROL_ALLOW_ORIGIN).as_deref(),
            Some("https://shop.example")
        );
        assert_eq!(
            get(header::ACCESS_CONTROL_ALLOW_METHODS).as_deref(),
            Some("GET,POST")
        );
        assert_eq!(
            get(header::ACCESS_CONTROL_MAX_AGE).as_deref(),
            Some("86400")
        );
        assert_eq!(
            get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS).as_deref(),
            Some("true")
        );
        let (m, h) = request("https://a.dev.example", false);
        assert!(
            matches!(cors.judge(&m, &h), Verdict::Actual(v) if v.iter().any(|(n, _)| n == header::ACCESS_CONTROL_EXPOSE_HEADERS))
        );
        let (m, h) = request("https://evil.example", false);
        assert!(matches!(cors.judge(&m, &h), Verdict::Pass));
        // A preflight from elsewhere is forwarded by default, answered
        // bare with IGNORE.
        let (m, h) = request("https://evil.example", true);
        assert!(matches!(cors.judge(&m, &h), Verdict::Pass));
        let ignoring = policy(
            r#"{"allowOrigins": [{"exact": "https://shop.example"}], "unmatchedPreflights": "IGNORE"}"#,
        );
        assert!(matches!(ignoring.judge(&m, &h), Verdict::Preflight(v) if v.is_empty()));
        assert!(matches!(
            cors.judge(&Method::GET, &HeaderMap::new()),
            Verdict::Pass
        ));
    }
}
