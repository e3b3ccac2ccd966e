//! The parts of Istio's meshConfig strait reads: `extensionProviders` of
//! the external-authorization kinds (`envoyExtAuthzHttp`,
//! `envoyExtAuthzGrpc`), which a CUSTOM AuthorizationPolicy names, and
//! `pathNormalization`. Other meshConfig fields and other provider kinds
//! (tracing, access logs) are left to their own readers. Errors name the
//! file, the field and why.
use std::{collections::BTreeMap, path::Path, time::Duration};

use serde::Deserialize;
use serde_json::Value;

/// Istio's default for an authorizer's `timeout`.
const TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Clone, Debug, Default)]
pub struct MeshConfig {
    /// External authorizers by name.
    pub authorizers: BTreeMap<String, Authorizer>,
    /// `pathNormalization.normalization` (NONE, BASE, MERGE_SLASHES,
    /// DECODE_AND_MERGE_SLASHES), when set.
    pub path_normalization: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Authorizer {
    /// `host` of the service (a Kubernetes Service's or a ServiceEntry's).
    pub service: String,
    pub port: u16,
    pub timeout: Duration,
    /// On error or timeout: let the request through.
    pub fail_open: bool,
    /// The status a request gets on error or timeout (when not failing
    /// open).
    pub status_on_error: u16,
    pub kind: AuthorizerKind,
}

#[derive(Clone, Debug)]
pub enum AuthorizerKind {
    Http(Box<HttpAuthorizer>),
    Grpc,
}

/// `envoyExtAuthzHttp`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct HttpAuthorizer {
    pub service: String,
    pub port: u32,
    pub timeout: Option<String>,
    pub path_prefix: Option<String>,
    pub fail_open: bool,
    pub status_on_error: Option<String>,
    pub include_request_headers_in_check: Vec<String>,
    pub include_headers_in_check: Vec<String>,
    pub include_additional_headers_in_check: BTreeMap<String, String>,
    pub headers_to_upstream_on_allow: Vec<String>,
    pub headers_to_downstream_on_deny: Vec<String>,
    pub headers_to_downstream_on_allow: Vec<String>,
}

/// `envoyExtAuthzGrpc`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
struct GrpcAuthorizer {
    service: String,
    port: u32,
    timeout: Option<String>,
    fail_open: bool,
    status_on_error: Option<String>,
}

impl MeshConfig {
    /// Reads the meshConfig YAML at `path` (what Istio's `mesh` key of its
    /// ConfigMap holds).
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let json = crate::yaml::parse(text)
            .map_err(|e| format!("not YAML: {e}"))?
            .to_json();
        let path_normalization = match json.pointer("/pathNormalization/normalization") {
            None | Some(Value::Null) => None,
            Some(Value::String(mode))
                if matches!(
                    mode.as_str(),
                    "DEFAULT" | "NONE" | "BASE" | "MERGE_SLASHES" | "DECODE_AND_MERGE_SLASHES"
                ) =>
            {
                Some(mode.clone())
            }
            Some(other) => {
                return Err(format!(
                    "field pathNormalization.normalization: {other} is not NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES"
                ));
            }
        };
        let mut authorizers = BTreeMap::new();
        let empty = Vec::new();
        let providers = match json.get("extensionProviders") {
            None | Some(Value::Null) => &empty,
            Some(Value::Array(list)) => list,
            Some(_) => return Err("field extensionProviders: is not a list".into()),
        };
        for (i, provider) in providers.iter().enumerate() {
            let at = format!("extensionProviders[{i}]");
            let name = provider
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| format!("field {at}.name: is required"))?;
            let authorizer = if let Some(spec) = provider.get("envoyExtAuthzHttp") {
                let field = format!("{at}.envoyExtAuthzHttp");
                let spec: HttpAuthorizer = serde_json::from_value(spec.clone())
                    .map_err(|e| format!("field {field}: {e}"))?;
                let (service, port, timeout, fail_open, status) = (
                    spec.service.clone(),
                    spec.port,
                    spec.timeout.clone(),
                    spec.fail_open,
                    spec.status_on_error.clone(),
                );
                common(&field, (service, port, timeout, fail_open, status))?
                    .with(AuthorizerKind::Http(Box::new(spec)))
            } else if let Some(spec) = provider.get("envoyExtAuthzGrpc") {
                let field = format!("{at}.envoyExtAuthzGrpc");
                let spec: GrpcAuthorizer = serde_json::from_value(spec.clone())
                    .map_err(|e| format!("field {field}: {e}"))?;
                common(
                    &field,
                    (
                        spec.service,
                        spec.port,
                        spec.timeout,
                        spec.fail_open,
                        spec.status_on_error,
                    ),
                )?
                .with(AuthorizerKind::Grpc)
            } else {
                continue;
            };
            if authorizers.insert(name.to_string(), authorizer).is_some() {
                return Err(format!("field {at}.name: {name:?} names two providers"));
            }
        }
        Ok(Self {
            authorizers,
            path_normalization,
        })
    }
}

/// What both kinds share, checked.
struct Common {
    service: String,
    port: u16,
    timeout: Duration,
    fail_open: bool,
    status_on_error: u16,
}

impl Common {
    fn with(self, kind: AuthorizerKind) -> Authorizer {
        Authorizer {
            service: self.service,
            port: self.port,
            timeout: self.timeout,
            fail_open: self.fail_open,
            status_on_error: self.status_on_error,
            kind,
        }
    }
}

fn common(
    field: &str,
    (service, port, timeout, fail_open, status): (
        String,
        u32,
        Option<String>,
        bool,
        Option<String>,
    ),
) -> Result<Common, String> {
    if service.is_empty() {
        return Err(format!("field {field}.service: is required"));
    }
    let port = u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("field {field}.port: {port} is not a port number"))?;
    let timeout = match timeout {
        None => TIMEOUT,
        Some(t) => crate::duration::parse(&t).map_err(|e| format!("field {field}.timeout: {e}"))?,
    };
    let status_on_error = match status {
        None => 403,
        Some(s) => s
            .parse::<u16>()
            .ok()
            .filter(|c| (200..600).contains(c))
            .ok_or_else(|| format!("field {field}.statusOnError: {s:?} is not an HTTP status"))?,
    };
    Ok(Common {
        service,
        port,
        timeout,
        fail_open,
        status_on_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorizers_are_read_and_bad_ones_named() {
        let mesh = MeshConfig::parse(
            "accessLogFile: /dev/stdout
pathNormalization: {normalization: MERGE_SLASHES}
extensionProviders:
- name: zipkin
  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
- name: http-authz
  envoyExtAuthzHttp:
    service: authz.shop.svc.cluster.local
    port: 8000
    includeRequestHeadersInCheck: [x-ext-authz]
    headersToUpstreamOnAllow: [x-user]
- name: grpc-authz
  envoyExtAuthzGrpc: {service: authz.shop.svc.cluster.local, port: 9000, timeout: 2s, failOpen: true}
",
        )
        .unwrap();
        assert_eq!(mesh.authorizers.len(), 2);
        assert_eq!(mesh.path_normalization.as_deref(), Some("MERGE_SLASHES"));
        let grpc = &mesh.authorizers["grpc-authz"];
        assert!(grpc.fail_open && grpc.timeout == Duration::from_secs(2));
        assert_eq!(mesh.authorizers["http-authz"].status_on_error, 403);
        for (text, want) in [
            (
                "extensionProviders:\n- name: a\n  envoyExtAuthzHttp: {service: s, port: 70000}\n",
                "extensionProviders[0].envoyExtAuthzHttp.port",
            ),
            (
                "extensionProviders:\n- name: a\n  envoyExtAuthzGrpc: {service: s, port: 1, bogus: 1}\n",
                "extensionProviders[0].envoyExtAuthzGrpc: unknown field `bogus`",
            ),
            (
                "extensionProviders:\n- envoyExtAuthzGrpc: {service: s, port: 1}\n",
                "extensionProviders[0].name",
            ),
            (
                "pathNormalization: {normalization: SLASHES}\n",
                "pathNormalization.normalization",
            ),
        ] {
            let err = MeshConfig::parse(text).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
    }
}
