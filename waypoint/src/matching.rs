//! Whether a request matches a VirtualService `match` entry, as Istio
//! defines it: every condition given must hold (uri, method, authority,
//! headers, absent headers, query parameters, port, the client's labels and
//! namespace). Regular expressions are compiled once per config and match
//! the whole value, as Envoy's do.
use hyper::{HeaderMap, Method, header::HeaderName};
use regex::Regex;
use strait_config::{
    Labels,
    manifest::networking::{HttpMatch, StringMatch},
};

/// A compiled `StringMatch`.
#[derive(Debug)]
pub enum Str {
    Exact(String),
    Prefix(String),
    Regex(Regex),
    /// `{}`: any value, as long as there is one.
    Present,
}

impl Str {
    pub fn compile(m: &StringMatch) -> Result<Self, regex::Error> {
        Ok(match (&m.exact, &m.prefix, &m.regex) {
            (Some(e), _, _) => Self::Exact(e.clone()),
            (_, Some(p), _) => Self::Prefix(p.clone()),
            (_, _, Some(r)) => Self::Regex(Regex::new(&format!("^(?:{r})$"))?),
            _ => Self::Present,
        })
    }

    pub fn matches(&self, value: &str, ignore_case: bool) -> bool {
        match self {
            Self::Exact(e) if ignore_case => e.eq_ignore_ascii_case(value),
            Self::Exact(e) => e == value,
            Self::Prefix(p) if ignore_case => value
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            Self::Prefix(p) => value.starts_with(p.as_str()),
            Self::Regex(r) => r.is_match(value),
            Self::Present => true,
        }
    }
}

/// What a match entry looks at in one request.
pub struct Request<'a> {
    pub method: &'a Method,
    /// The path, without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub authority: &'a str,
    pub headers: &'a HeaderMap,
    /// The service port the client dialled.
    pub port: u16,
    /// The client's labels and namespace, when the config knows it.
    pub source_labels: Option<&'a Labels>,
    pub source_namespace: &'a str,
}

/// One compiled `match` entry.
#[derive(Debug, Default)]
pub struct Match {
    uri: Option<Str>,
    ignore_uri_case: bool,
    method: Option<Str>,
    authority: Option<Str>,
    headers: Vec<(HeaderName, Str)>,
    without_headers: Vec<(HeaderName, Str)>,
    query_params: Vec<(String, Str)>,
    port: Option<u16>,
    source_labels: Labels,
    source_namespace: Option<String>,
}

impl Match {
    /// Compiles `m`; what cannot be compiled (a bad regex, a header name
    /// HTTP does not allow) is named.
    pub fn compile(m: &HttpMatch) -> Result<Self, String> {
        let str =
            |what: &str, s: &StringMatch| Str::compile(s).map_err(|err| format!("{what}: {err}"));
        let header = |name: &str| {
            HeaderName::try_from(name.to_ascii_lowercase())
                .map_err(|_| format!("header {name:?}: not a valid header name"))
        };
        Ok(Self {
            uri: m.uri.as_ref().map(|u| str("uri", u)).transpose()?,
            ignore_uri_case: m.ignore_uri_case == Some(true),
            method: m.method.as_ref().map(|s| str("method", s)).transpose()?,
            authority: m
                .authority
                .as_ref()
                .map(|s| str("authority", s))
                .transpose()?,
            headers: m
                .headers
                .iter()
                .map(|(k, v)| Ok((header(k)?, str(&format!("headers.{k}"), v)?)))
                .collect::<Result<_, String>>()?,
            without_headers: m
                .without_headers
                .iter()
                .map(|(k, v)| Ok((header(k)?, str(&format!("withoutHeaders.{k}"), v)?)))
                .collect::<Result<_, String>>()?,
            query_params: m
                .query_params
                .iter()
                .map(|(k, v)| Ok((k.clone(), str(&format!("queryParams.{k}"), v)?)))
                .collect::<Result<_, String>>()?,
            port: m.port.and_then(|p| u16::try_from(p).ok()),
            source_labels: m.source_labels.clone(),
            source_namespace: m.source_namespace.clone(),
        })
    }

    /// The prefix this entry matched the path on, when it matched on one:
    /// what a `rewrite.uri` replaces.
    pub fn uri_prefix(&self) -> Option<&str> {
        match &self.uri {
            Some(Str::Prefix(p)) => Some(p),
            _ => None,
        }
    }

    pub fn matches(&self, req: &Request<'_>) -> bool {
        let header = |name: &HeaderName| req.headers.get(name).and_then(|v| v.to_str().ok());
        self.uri
            .as_ref()
            .is_none_or(|u| u.matches(req.path, self.ignore_uri_case))
            && self
                .method
                .as_ref()
                .is_none_or(|m| m.matches(req.method.as_str(), false))
            && self
                .authority
                .as_ref()
                .is_none_or(|a| a.matches(req.authority, true))
            && self
                .headers
                .iter()
                .all(|(name, m)| header(name).is_some_and(|v| m.matches(v, false)))
            && self
                .without_headers
                .iter()
                .all(|(name, m)| !header(name).is_some_and(|v| m.matches(v, false)))
            && self
                .query_params
                .iter()
                .all(|(name, m)| query_param(req.query, name).is_some_and(|v| m.matches(v, false)))
            && self.port.is_none_or(|p| p == req.port)
            && (self.source_labels.is_empty()
                || req.source_labels.is_some_and(|labels| {
                    self.source_labels
                        .iter()
                        .all(|(k, v)| labels.get(k) == Some(v))
                }))
            && self
                .source_namespace
                .as_deref()
                .is_none_or(|ns| ns == req.source_namespace)
    }
}

/// The first value of query parameter `name`, undecoded.
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn compile(yaml: &str) -> Match {
        let m: HttpMatch = serde_json::from_str(yaml).unwrap();
        Match::compile(&m).unwrap()
    }

    fn request<'a>(path: &'a str, headers: &'a HeaderMap) -> Request<'a> {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        Request {
            method: &Method::GET,
            path,
            query,
            authority: "reviews.shop.svc.cluster.local:9080",
            headers,
            port: 9080,
            source_labels: None,
            source_namespace: "shop",
        }
    }

    #[test]
    fn uri_headers_and_query_match_as_istio_defines_them() {
        let mut headers = HeaderMap::new();
        headers.insert("end-user", HeaderValue::from_static("jason"));
        let m =
            compile(r#"{"uri": {"prefix": "/api"}, "headers": {"end-user": {"exact": "jason"}}}"#);
        assert!(m.matches(&request("/api/v1", &headers)));
        assert!(!m.matches(&request("/web", &headers)));
        assert!(!m.matches(&request("/api", &HeaderMap::new())));
        // A regex matches the whole value.
        let m = compile(r#"{"uri": {"regex": "/r[0-9]+"}}"#);
        assert!(m.matches(&request("/r12", &headers)));
        assert!(!m.matches(&request("/r12/x", &headers)));
        // Presence, absence, query parameters, case.
        let m = compile(r#"{"headers": {"end-user": {}}, "withoutHeaders": {"x-canary": {}}}"#);
        assert!(m.matches(&request("/", &headers)));
        headers.insert("x-canary", HeaderValue::from_static("1"));
        assert!(!m.matches(&request("/", &headers)));
        let m = compile(r#"{"queryParams": {"v": {"exact": "2"}}}"#);
        assert!(m.matches(&request("/x?a=1&v=2", &headers)));
        assert!(!m.matches(&request("/x?v=3", &headers)));
        let m = compile(r#"{"uri": {"exact": "/API"}, "ignoreUriCase": true}"#);
        assert!(m.matches(&request("/api", &headers)));
        // The port dialled.
        assert!(!compile(r#"{"port": 80}"#).matches(&request("/", &headers)));
    }

    #[test]
    fn what_cannot_compile_is_named() {
        let m: HttpMatch = serde_json::from_str(r#"{"uri": {"regex": "("}}"#).unwrap();
        assert!(Match::compile(&m).unwrap_err().starts_with("uri:"));
    }
}
