//! What a route does to a request besides sending it on, as Istio defines
//! it: a redirect or a direct response instead of a destination, a rewrite
//! of the path (the matched prefix, the whole path, or by regex) and of the
//! authority, and header operations on the request and the response.
use base64::Engine as _;
use bytes::Bytes;
use hyper::{
    HeaderMap, StatusCode, Uri,
    header::{self, HeaderName, HeaderValue},
};
use regex::Regex;
use strait_config::manifest::networking::{
    DirectResponse, HeaderOperations, Headers, Redirect, Rewrite,
};

/// Header operations on one side, compiled.
#[derive(Clone, Debug, Default)]
pub struct Ops {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl Ops {
    fn compile(ops: Option<&HeaderOperations>) -> Result<Self, String> {
        let Some(ops) = ops else {
            return Ok(Self::default());
        };
        let pair = |(k, v): (&String, &String)| {
            let name = HeaderName::try_from(k.to_ascii_lowercase())
                .map_err(|_| format!("header {k:?}: not a valid header name"))?;
            let value = HeaderValue::from_str(v)
                .map_err(|_| format!("header {k:?}: not a valid header value"))?;
            Ok::<_, String>((name, value))
        };
        Ok(Self {
            set: ops.set.iter().map(pair).collect::<Result<_, _>>()?,
            add: ops.add.iter().map(pair).collect::<Result<_, _>>()?,
            remove: ops
                .remove
                .iter()
                .map(|k| {
                    HeaderName::try_from(k.to_ascii_lowercase())
                        .map_err(|_| format!("header {k:?}: not a valid header name"))
                })
                .collect::<Result<_, _>>()?,
        })
    }

    /// Operations that add these headers.
    pub fn adding(add: Vec<(HeaderName, HeaderValue)>) -> Self {
        Self {
            add,
            ..Self::default()
        }
    }

    /// Operations that set these headers.
    pub fn setting(set: Vec<(HeaderName, HeaderValue)>) -> Self {
        Self {
            set,
            ..Self::default()
        }
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// A route's or a destination's `headers`.
#[derive(Clone, Debug, Default)]
pub struct HeaderActions {
    pub request: Ops,
    pub response: Ops,
}

impl HeaderActions {
    pub fn compile(headers: Option<&Headers>) -> Result<Self, String> {
        Ok(Self {
            request: Ops::compile(headers.and_then(|h| h.request.as_ref()))
                .map_err(|e| format!("headers.request: {e}"))?,
            response: Ops::compile(headers.and_then(|h| h.response.as_ref()))
                .map_err(|e| format!("headers.response: {e}"))?,
        })
    }
}

/// A route's `rewrite`.
#[derive(Clone, Debug, Default)]
pub struct Rewriting {
    uri: Option<String>,
    regex: Option<(Regex, String)>,
    pub authority: Option<String>,
}

impl Rewriting {
    pub fn compile(rewrite: Option<&Rewrite>) -> Result<Self, String> {
        let Some(r) = rewrite else {
            return Ok(Self::default());
        };
        let regex = match &r.uri_regex_rewrite {
            None => None,
            Some(rr) => {
                let re = Regex::new(&rr.matches)
                    .map_err(|e| format!("rewrite.uriRegexRewrite.match: {e}"))?;
                // RE2's `\1` is the regex crate's `${1}`.
                let with = Regex::new(r"\\(\d)")
                    .map_err(|e| e.to_string())?
                    .replace_all(&rr.rewrite, "$${$1}")
                    .into_owned();
                Some((re, with))
            }
        };
        Ok(Self {
            uri: r.uri.clone(),
            regex,
            authority: r.authority.clone(),
        })
    }

    /// The path as rewritten: the matched prefix replaced when the route
    /// matched on one, else the whole path; or by the regex.
    pub fn path(&self, path: &str, matched_prefix: Option<&str>) -> Option<String> {
        if let Some((re, with)) = &self.regex {
            return Some(re.replace_all(path, with.as_str()).into_owned());
        }
        let uri = self.uri.as_ref()?;
        Some(match matched_prefix {
            Some(prefix) if path.starts_with(prefix) => format!("{uri}{}", &path[prefix.len()..]),
            _ => uri.clone(),
        })
    }
}

/// A route's answer of its own instead of a destination's.
#[derive(Clone, Debug)]
pub enum Answer {
    Redirect {
        code: StatusCode,
        uri: Option<String>,
        authority: Option<String>,
        scheme: Option<String>,
        port: Option<Port>,
    },
    Direct {
        code: StatusCode,
        body: Bytes,
    },
}

#[derive(Clone, Copy, Debug)]
pub enum Port {
    Fixed(u16),
    /// 80 for http, 443 for https.
    ProtocolDefault,
    /// The port the request came in on.
    Request,
}

impl Answer {
    pub fn compile(
        redirect: Option<&Redirect>,
        direct: Option<&DirectResponse>,
    ) -> Result<Option<Self>, String> {
        if let Some(r) = redirect {
            let code = StatusCode::from_u16(r.redirect_code.unwrap_or(301).try_into().unwrap_or(0))
                .map_err(|_| "redirect.redirectCode: not a status".to_string())?;
            let port = match (r.port, r.derive_port.as_deref()) {
                (Some(p), _) => Some(Port::Fixed(u16::try_from(p).map_err(|_| "redirect.port")?)),
                (None, Some("FROM_PROTOCOL_DEFAULT")) => Some(Port::ProtocolDefault),
                (None, Some("FROM_REQUEST_PORT")) => Some(Port::Request),
                _ => None,
            };
            return Ok(Some(Self::Redirect {
                code,
                uri: r.uri.clone(),
                authority: r.authority.clone(),
                scheme: r.scheme.clone(),
                port,
            }));
        }
        let Some(d) = direct else {
            return Ok(None);
        };
        let code = StatusCode::from_u16(d.status.try_into().unwrap_or(0))
            .map_err(|_| "directResponse.status: not a status".to_string())?;
        let body = match d.body.as_ref() {
            None => Bytes::new(),
            Some(b) => match (&b.string, &b.bytes) {
                (Some(s), _) => Bytes::from(s.clone()),
                (None, Some(encoded)) => Bytes::from(
                    base64::engine::general_purpose::STANDARD
                        .decode(encoded)
                        .map_err(|e| format!("directResponse.body.bytes: {e}"))?,
                ),
                (None, None) => Bytes::new(),
            },
        };
        Ok(Some(Self::Direct { code, body }))
    }

    /// The `Location` of a redirect for a request to `uri` (its authority
    /// `authority`, its port `port`), rewritten as the redirect says.
    pub fn location(
        uri: &Uri,
        authority: &str,
        port: u16,
        (to_uri, to_authority, scheme, to_port): (
            Option<&str>,
            Option<&str>,
            Option<&str>,
            Option<Port>,
        ),
    ) -> String {
        let scheme = scheme.unwrap_or("http");
        let host = to_authority.unwrap_or(authority);
        // The authority's own port goes when another is given.
        let bare = host
            .rsplit_once(':')
            .filter(|(_, p)| p.parse::<u16>().is_ok())
            .map_or(host, |(h, _)| h);
        let host = match to_port {
            Some(Port::Fixed(p)) => format!("{bare}:{p}"),
            Some(Port::ProtocolDefault) => bare.to_string(),
            Some(Port::Request) => format!("{bare}:{port}"),
            None => host.to_string(),
        };
        let path = match to_uri {
            Some(p) => p.to_string(),
            None => uri
                .path_and_query()
                .map_or("/".to_string(), |p| p.as_str().to_string()),
        };
        format!("{scheme}://{host}{path}")
    }
}

pub fn location_header(value: &str) -> Option<(HeaderName, HeaderValue)> {
    Some((header::LOCATION, HeaderValue::from_str(value).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewrite_replaces_the_matched_prefix_or_the_path() {
        let r: Rewrite = serde_json::from_str(r#"{"uri": "/v2/"}"#).unwrap();
        let r = Rewriting::compile(Some(&r)).unwrap();
        assert_eq!(r.path("/api/items", Some("/api/")).unwrap(), "/v2/items");
        assert_eq!(r.path("/api/items", None).unwrap(), "/v2/");
        let r: Rewrite = serde_json::from_str(
            r#"{"uriRegexRewrite": {"match": "^/service/([^/]+)(/.*)$", "rewrite": "\\2/instance/\\1"}}"#,
        )
        .unwrap();
        let r = Rewriting::compile(Some(&r)).unwrap();
        assert_eq!(
            r.path("/service/foo/v1/api", None).unwrap(),
            "/v1/api/instance/foo"
        );
    }

    #[test]
    fn a_redirect_keeps_what_it_does_not_change() {
        let uri: Uri = "/old/path?x=1".parse().unwrap();
        let loc = |to| Answer::location(&uri, "reviews:9080", 9080, to);
        assert_eq!(
            loc((Some("/new"), None, None, None)),
            "http://reviews:9080/new"
        );
        assert_eq!(
            loc((
                None,
                Some("other.example"),
                Some("https"),
                Some(Port::ProtocolDefault)
            )),
            "https://other.example/old/path?x=1"
        );
        assert_eq!(
            loc((None, None, None, Some(Port::Fixed(8443)))),
            "http://reviews:8443/old/path?x=1"
        );
    }

    #[test]
    fn header_operations_remove_then_set_then_add() {
        let ops: HeaderOperations = serde_json::from_str(
            r#"{"set": {"x-a": "1"}, "add": {"x-b": "2"}, "remove": ["x-c"]}"#,
        )
        .unwrap();
        let ops = Ops::compile(Some(&ops)).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("0"));
        h.insert("x-b", HeaderValue::from_static("1"));
        h.insert("x-c", HeaderValue::from_static("gone"));
        ops.apply(&mut h);
        assert_eq!(h["x-a"], "1");
        assert_eq!(h.get_all("x-b").iter().count(), 2);
        assert!(!h.contains_key("x-c"));
    }
}
