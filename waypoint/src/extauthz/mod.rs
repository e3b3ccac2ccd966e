//! CUSTOM AuthorizationPolicy: a request its rules match is first put to
//! the external authorizer it names (meshConfig `extensionProviders`,
//! [`strait_config::mesh_config`]), over the mesh like any call, as Envoy's
//! `ext_authz` filter puts it: over HTTP (the request's method and path
//! under `pathPrefix`, its Host, Authorization and the headers the
//! provider lists; a 200 allows) or gRPC (`Authorization/Check` with the
//! request's attributes; status OK allows). An allowed request carries on
//! with the headers the authorizer added; a denied one gets the
//! authorizer's answer. If the authorizer cannot be reached or answer in
//! time, `failOpen` lets the request through, else it gets
//! `statusOnError`.
mod proto;

use std::collections::HashMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{
    HeaderMap, Method, StatusCode,
    header::{self, HeaderName, HeaderValue},
    http::request::Parts,
};
use strait_config::mesh_config::{Authorizer, AuthorizerKind, HttpAuthorizer};
use tracing::debug;

use crate::{
    call,
    pool::{Body, Version},
    proxy::{Client, Waypoint},
};

/// The most of an authorizer's answer read.
const ANSWER_LIMIT: usize = 64 * 1024;

/// What the authorizer decided.
pub enum Answer {
    /// Go on, with these headers set on the request and these removed.
    Allow {
        set: Vec<(HeaderName, HeaderValue)>,
        remove: Vec<HeaderName>,
    },
    /// Answer the client with this.
    Deny {
        status: StatusCode,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    },
}

impl Answer {
    /// Applies an allowing answer's header edits to the request.
    pub fn edit(
        set: Vec<(HeaderName, HeaderValue)>,
        remove: Vec<HeaderName>,
        headers: &mut HeaderMap,
    ) {
        for name in remove {
            headers.remove(name);
        }
        for (name, value) in set {
            headers.insert(name, value);
        }
    }
}

/// Puts the request (`parts`) to `authorizer`, within its timeout.
pub async fn check(
    waypoint: &Waypoint,
    client: &Client,
    authorizer: &Authorizer,
    parts: &Parts,
) -> Answer {
    let asked = async {
        match &authorizer.kind {
            AuthorizerKind::Http(spec) => {
                check_http(waypoint, client, authorizer, spec, parts).await
            }
            AuthorizerKind::Grpc => check_grpc(waypoint, client, authorizer, parts).await,
        }
    };
    let failed = match tokio::time::timeout(authorizer.timeout, asked).await {
        Ok(Ok(answer)) => return answer,
        Ok(Err(why)) => why,
        Err(_) => "no answer in time",
    };
    debug!(service = %authorizer.service, why = failed, fail_open = authorizer.fail_open, "external authorizer failed");
    if authorizer.fail_open {
        return Answer::Allow {
            set: Vec::new(),
            remove: Vec::new(),
        };
    }
    Answer::Deny {
        status: StatusCode::from_u16(authorizer.status_on_error).unwrap_or(StatusCode::FORBIDDEN),
        headers: Vec::new(),
        body: Bytes::new(),
    }
}

/// Istio's header pattern: exact (any case), `prefix*` or `*suffix`.
fn listed(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| {
        let p = p.to_ascii_lowercase();
        if let Some(prefix) = p.strip_suffix('*') {
            name.starts_with(prefix)
        } else if let Some(suffix) = p.strip_prefix('*') {
            name.ends_with(suffix)
        } else {
            p == name
        }
    })
}

/// Headers an answer may not hand on: its framing and hop-by-hop ones.
fn framing(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-length" | "transfer-encoding" | "connection" | "keep-alive" | "upgrade" | "te"
    )
}

fn to_target(authorizer: &Authorizer, version: Option<Version>) -> call::To<'_> {
    call::To {
        host: &authorizer.service,
        subset: None,
        port: authorizer.port,
        version,
    }
}

fn host_of(parts: &Parts) -> String {
    parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

async fn check_http(
    waypoint: &Waypoint,
    client: &Client,
    authorizer: &Authorizer,
    spec: &HttpAuthorizer,
    parts: &Parts,
) -> Result<Answer, &'static str> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = format!("{}{path}", spec.path_prefix.as_deref().unwrap_or(""));
    let mut request = hyper::Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .body(())
        .map_err(|_| "the check request cannot be made")?;
    let headers = request.headers_mut();
    let include: Vec<String> = spec
        .include_request_headers_in_check
        .iter()
        .chain(&spec.include_headers_in_check)
        .cloned()
        .collect();
    for (name, value) in &parts.headers {
        if matches!(name.as_str(), "host" | "authorization") || listed(&include, name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Ok(host) = HeaderValue::from_str(&host_of(parts)) {
        headers.insert(header::HOST, host);
    }
    for (name, value) in &spec.include_additional_headers_in_check {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    let (head, ()) = request.into_parts();
    let body: Body = Empty::new().map_err(|never| match never {}).boxed();
    let (answer, body, _) = call::exchange(
        waypoint,
        client,
        to_target(authorizer, None),
        &head,
        body,
        ANSWER_LIMIT,
    )
    .await?;
    let pick = |patterns: &[String], all: bool| -> Vec<(HeaderName, HeaderValue)> {
        answer
            .headers
            .iter()
            .filter(|(name, _)| !framing(name))
            .filter(|(name, _)| {
                if all && patterns.is_empty() {
                    true
                } else {
                    listed(patterns, name.as_str())
                }
            })
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    };
    if answer.status == StatusCode::OK {
        return Ok(Answer::Allow {
            set: pick(&spec.headers_to_upstream_on_allow, false),
            remove: Vec::new(),
        });
    }
    Ok(Answer::Deny {
        status: answer.status,
        // With no list, every header of the answer (as Istio).
        headers: pick(&spec.headers_to_downstream_on_deny, true),
        body,
    })
}

async fn check_grpc(
    waypoint: &Waypoint,
    client: &Client,
    authorizer: &Authorizer,
    parts: &Parts,
) -> Result<Answer, &'static str> {
    let mut headers = HashMap::new();
    for (name, value) in &parts.headers {
        if let Ok(value) = value.to_str() {
            headers
                .entry(name.as_str().to_string())
                .and_modify(|v: &mut String| {
                    v.push(',');
                    v.push_str(value);
                })
                .or_insert_with(|| value.to_string());
        }
    }
    let host = host_of(parts);
    let peer = |addr: std::net::SocketAddr, principal: String| proto::Peer {
        address: Some(proto::Address {
            socket_address: Some(proto::SocketAddress {
                address: addr.ip().to_string(),
                port_value: u32::from(addr.port()),
            }),
        }),
        service: String::new(),
        principal,
    };
    let check = proto::CheckRequest {
        attributes: Some(proto::AttributeContext {
            source: Some(peer(client.addr, client.identity.to_string())),
            destination: Some(peer(client.authority, waypoint.identity.to_string())),
            request: Some(proto::Request {
                http: Some(proto::HttpRequest {
                    id: parts
                        .headers
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string(),
                    method: parts.method.to_string(),
                    headers,
                    path: parts
                        .uri
                        .path_and_query()
                        .map_or("/", |p| p.as_str())
                        .to_string(),
                    host: host.clone(),
                    scheme: "http".into(),
                    query: parts.uri.query().unwrap_or_default().to_string(),
                    size: -1,
                    protocol: format!("{:?}", parts.version),
                }),
            }),
        }),
    };
    let mut request = hyper::Request::builder()
        .method(Method::POST)
        .uri(proto::CHECK_PATH)
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(())
        .map_err(|_| "the check request cannot be made")?;
    if let Ok(authority) =
        HeaderValue::from_str(&format!("{}:{}", authorizer.service, authorizer.port))
    {
        request.headers_mut().insert(header::HOST, authority);
    }
    let (head, ()) = request.into_parts();
    let body: Body = Full::new(strait_http::grpc::frame(&check))
        .map_err(|never| match never {})
        .boxed();
    let (answer, body, trailers) = call::exchange(
        waypoint,
        client,
        to_target(authorizer, Some(Version::Http2)),
        &head,
        body,
        ANSWER_LIMIT,
    )
    .await?;
    let grpc_status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| answer.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok());
    if answer.status != StatusCode::OK || grpc_status != Some("0") {
        return Err("the check call failed");
    }
    let response: proto::CheckResponse = strait_http::grpc::unframe(&body)?;
    let pairs = |options: &[proto::HeaderValueOption]| -> Vec<(HeaderName, HeaderValue)> {
        options
            .iter()
            .filter_map(|o| o.header.as_ref())
            .filter_map(|h| {
                Some((
                    HeaderName::from_bytes(h.key.as_bytes()).ok()?,
                    HeaderValue::from_str(&h.value).ok()?,
                ))
            })
            .filter(|(name, _)| !framing(name))
            .collect()
    };
    if response.status.as_ref().map_or(0, |s| s.code) == 0 {
        let ok = response.ok_response.unwrap_or_default();
        return Ok(Answer::Allow {
            set: pairs(&ok.headers),
            remove: ok
                .headers_to_remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
        });
    }
    let denied = response.denied_response.unwrap_or_default();
    let status = denied
        .status
        .and_then(|s| u16::try_from(s.code).ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .filter(|c| c.as_u16() >= 200)
        .unwrap_or(StatusCode::FORBIDDEN);
    Ok(Answer::Deny {
        status,
        headers: pairs(&denied.headers),
        body: Bytes::from(denied.body),
    })
}
