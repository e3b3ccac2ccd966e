//! A request at a waypoint: the L7 attributes a policy may name, and which
//! policies and RequestAuthentications are the waypoint's to enforce
//! (Istio's ambient attachment:
//! `targetRefs` to its Gateway, to the request's Service or ServiceEntry,
//! or, from the root namespace, to the `istio-waypoint` GatewayClass).
use serde_json::Value;

use super::{Connection, Decision, decide};
use crate::{
    Config, Named, Service, ServiceOrigin,
    manifest::security::{AuthorizationPolicySpec, RequestAuthenticationSpec, TargetRef},
};

/// The request's own attributes.
pub struct Http<'a> {
    pub method: &'a str,
    /// The path as normalized, without its query.
    pub path: &'a str,
    /// `:authority` (or `Host`), as sent.
    pub host: &'a str,
    pub headers: &'a dyn Headers,
    /// The server name of TLS the waypoint terminated, if any.
    pub sni: Option<&'a str>,
    /// What a verified JWT said, if the request carried one.
    pub auth: Option<&'a RequestAuth>,
}

impl std::fmt::Debug for Http<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("host", &self.host)
            .field("sni", &self.sni)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// A request's headers, looked up by lowercase name.
pub trait Headers {
    /// Every value of `name`, in order (Envoy matches them joined by `,`).
    fn values(&self, name: &str) -> Vec<String>;
}

/// A verified JWT's claims.
#[derive(Clone, Debug, Default)]
pub struct RequestAuth {
    /// `iss/sub`.
    pub principal: String,
    pub audiences: Vec<String>,
    /// `azp`.
    pub presenter: Option<String>,
    pub claims: Value,
}

/// The waypoint deciding, and the service the request is for.
#[derive(Clone, Copy)]
pub struct WaypointScope<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub service: Option<&'a Service>,
}

impl Http<'_> {
    /// The values a `when` key names in this request: `None` when the
    /// request lacks it (or the key is not one the waypoint knows).
    pub(super) fn attribute(&self, key: &str) -> Option<Vec<String>> {
        if let Some(name) = bracketed(key, "request.headers") {
            let values = self.headers.values(&name.to_ascii_lowercase());
            return (!values.is_empty()).then(|| vec![values.join(",")]);
        }
        if let Some(path) = bracketed(key, "request.auth.claims") {
            let mut claim = &self.auth?.claims;
            for part in path.split("][") {
                claim = claim.get(part)?;
            }
            return claim_values(claim);
        }
        let auth = self.auth;
        match key {
            "request.auth.principal" => auth.map(|a| vec![a.principal.clone()]),
            "request.auth.audiences" => auth.map(|a| a.audiences.clone()).filter(|a| !a.is_empty()),
            "request.auth.presenter" => auth.and_then(|a| a.presenter.clone()).map(|p| vec![p]),
            "connection.sni" => self.sni.map(|s| vec![s.to_string()]),
            _ => None,
        }
    }
}

/// Whether a waypoint can evaluate `key` (a request may still lack it).
pub(super) fn known(key: &str) -> bool {
    bracketed(key, "request.headers").is_some()
        || bracketed(key, "request.auth.claims").is_some()
        || matches!(
            key,
            "request.auth.principal"
                | "request.auth.audiences"
                | "request.auth.presenter"
                | "connection.sni"
        )
}

/// `prefix[inner]` → `inner` (which may itself hold `][`).
fn bracketed<'k>(key: &'k str, prefix: &str) -> Option<&'k str> {
    let inner = key
        .strip_prefix(prefix)?
        .strip_prefix('[')?
        .strip_suffix(']')?;
    (!inner.is_empty()).then_some(inner)
}

/// A claim as strings: a string, a list of strings (any may match), or a
/// boolean or number as written.
fn claim_values(claim: &Value) -> Option<Vec<String>> {
    let one = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(_) | Value::Number(_) => Some(v.to_string()),
        _ => None,
    };
    match claim {
        Value::Array(items) => Some(items.iter().filter_map(one).collect()),
        other => one(other).map(|v| vec![v]),
    }
}

impl Config {
    /// Decides a request (or, with no `http`, a TCP connection) through
    /// the waypoint of `scope`.
    pub fn authorize_request(&self, scope: WaypointScope<'_>, conn: &Connection<'_>) -> Decision {
        decide(self.waypoint_policies(scope), conn)
    }

    /// The CUSTOM policies of `scope` whose rules match `conn`: each
    /// names the external authorizer (`provider.name`) the request must
    /// then pass, before the DENY and ALLOW policies decide.
    pub fn custom_policies<'a>(
        &'a self,
        scope: WaypointScope<'a>,
        conn: &Connection<'_>,
    ) -> Vec<&'a Named<AuthorizationPolicySpec>> {
        self.waypoint_policies(scope)
            .filter(|p| p.spec.action.as_deref() == Some("CUSTOM"))
            .filter(|p| {
                p.spec
                    .rules
                    .iter()
                    .any(|rule| super::rule_matches(rule, conn, super::Action::Deny))
            })
            .collect()
    }

    /// Policies a waypoint enforces for a request to `scope.service`.
    pub fn waypoint_policies<'a>(
        &'a self,
        scope: WaypointScope<'a>,
    ) -> impl Iterator<Item = &'a Named<AuthorizationPolicySpec>> + 'a {
        self.authorization_policies.iter().filter(move |p| {
            let targets = p.spec.target_ref.iter().chain(&p.spec.target_refs);
            self.attached(&p.namespace, targets, scope)
        })
    }

    /// RequestAuthentications a waypoint applies to a request to
    /// `scope.service`, attached as its policies are.
    pub fn waypoint_request_authentications<'a>(
        &'a self,
        scope: WaypointScope<'a>,
    ) -> impl Iterator<Item = &'a Named<RequestAuthenticationSpec>> + 'a {
        self.request_authentications.iter().filter(move |r| {
            let targets = r.spec.target_ref.iter().chain(&r.spec.target_refs);
            self.attached(&r.namespace, targets, scope)
        })
    }

    /// Whether an object of `namespace` with `targets` attaches to the
    /// waypoint and service of `scope`.
    pub(crate) fn attached<'t>(
        &self,
        namespace: &str,
        mut targets: impl Iterator<Item = &'t TargetRef>,
        scope: WaypointScope<'_>,
    ) -> bool {
        targets.any(|target| {
            let group = target.group.as_deref().unwrap_or_default();
            match (group, target.kind.as_str()) {
                ("gateway.networking.k8s.io", "Gateway") => {
                    namespace == scope.namespace && target.name == scope.name
                }
                ("gateway.networking.k8s.io", "GatewayClass") => {
                    namespace == self.root_namespace && target.name == "istio-waypoint"
                }
                ("" | "core", "Service") => scope.service.is_some_and(|s| {
                    s.origin == ServiceOrigin::Kubernetes
                        && s.namespace == namespace
                        && s.name == target.name
                }),
                ("networking.istio.io", "ServiceEntry") => scope.service.is_some_and(|s| {
                    s.origin != ServiceOrigin::Kubernetes
                        && s.namespace == namespace
                        && s.name == target.name
                }),
                _ => false,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::manifest::security;

    struct Map(HashMap<&'static str, Vec<&'static str>>);

    impl Headers for Map {
        fn values(&self, name: &str) -> Vec<String> {
            self.0
                .get(name)
                .map(|v| v.iter().map(|s| s.to_string()).collect())
                .unwrap_or_default()
        }
    }

    fn policy(ns: &str, name: &str, yaml: &str) -> Named<AuthorizationPolicySpec> {
        let spec: security::AuthorizationPolicySpec =
            serde_saphyr::from_str(yaml).expect("test policy parses");
        Named::new(name, ns, spec)
    }

    fn service(ns: &str, name: &str) -> Service {
        Service {
            name: name.into(),
            namespace: ns.into(),
            hosts: vec![format!("{name}.{ns}.svc.cluster.local")],
            addresses: vec![],
            ports: vec![],
            endpoints: crate::Endpoints::Unset,
            origin: ServiceOrigin::Kubernetes,
            traffic_distribution: None,
            node_local: false,
            export_to: vec![],
            labels: Default::default(),
            ingress: vec![],
        }
    }

    fn req<'a>(method: &'a str, path: &'a str, headers: &'a dyn Headers) -> Http<'a> {
        Http {
            method,
            path,
            host: "api.shop:8080",
            headers,
            sni: None,
            auth: None,
        }
    }

    const WEB: &str = "cluster.local/ns/shop/sa/web";
    const OPS: &str = "cluster.local/ns/ops/sa/admin";

    fn decide_for(cfg: &Config, svc: &Service, principal: &str, http: &Http<'_>) -> Decision {
        let conn = Connection {
            principal: Some(principal),
            namespace: principal.split('/').nth(2),
            source_ip: "10.1.0.5".parse().unwrap(),
            destination_ip: "10.96.0.10".parse().unwrap(),
            destination_port: 8080,
            http: Some(http),
        };
        let scope = WaypointScope {
            namespace: "shop",
            name: "waypoint",
            service: Some(svc),
        };
        cfg.authorize_request(scope, &conn)
    }

    #[test]
    fn methods_paths_headers_and_claims_decide_at_the_waypoint() {
        let mut cfg = Config {
            authorization_policies: vec![
                policy(
                    "shop",
                    "api",
                    "targetRefs:\n- kind: Service\n  group: \"\"\n  name: api\nrules:\n\
                     - to:\n  - operation:\n      methods: [GET]\n      paths: [/public*]\n\
                     - from:\n  - source:\n      principals: [\"*/ns/ops/sa/admin\"]\n  to:\n  - operation:\n      paths: [/admin*]\n\
                     - to:\n  - operation:\n      paths: [/groups]\n  when:\n  - key: request.auth.claims[groups]\n    values: [\"dev*\"]\n",
                ),
                policy(
                    "shop",
                    "no-debug",
                    "targetRefs:\n- kind: Gateway\n  group: gateway.networking.k8s.io\n  name: waypoint\naction: DENY\nrules:\n\
                     - when:\n  - key: request.headers[x-debug]\n    values: [\"*\"]\n",
                ),
                // Another waypoint's: not this one's to enforce.
                policy(
                    "shop",
                    "elsewhere",
                    "targetRefs:\n- kind: Gateway\n  group: gateway.networking.k8s.io\n  name: other\naction: DENY\nrules:\n- {}\n",
                ),
            ],
            ..Config::default()
        };
        cfg.root_namespace = "istio-system".into();
        let api = service("shop", "api");
        let none = Map(HashMap::new());

        assert!(decide_for(&cfg, &api, WEB, &req("GET", "/public/x", &none)).allowed);
        let post = decide_for(&cfg, &api, WEB, &req("POST", "/public/x", &none));
        assert!(!post.allowed && post.policy.is_none(), "{post:?}");
        assert!(!decide_for(&cfg, &api, WEB, &req("GET", "/admin", &none)).allowed);
        assert!(decide_for(&cfg, &api, OPS, &req("POST", "/admin/x", &none)).allowed);
        let debug = Map([("x-debug", vec!["1"])].into());
        let denied = decide_for(&cfg, &api, OPS, &req("POST", "/admin/x", &debug));
        assert_eq!(denied.policy.as_deref(), Some("shop/no-debug"));
        assert!(!denied.allowed);

        let auth = |groups: serde_json::Value| RequestAuth {
            principal: "https://issuer/alice".into(),
            audiences: vec!["api".into()],
            presenter: None,
            claims: serde_json::json!({ "groups": groups }),
        };
        let (dev, ops) = (auth(serde_json::json!(["ops", "devs"])), auth("ops".into()));
        let with = |a| Http {
            auth: Some(a),
            ..req("GET", "/groups", &none)
        };
        assert!(
            decide_for(&cfg, &api, WEB, &with(&dev)).allowed,
            "a list claim"
        );
        assert!(!decide_for(&cfg, &api, WEB, &with(&ops)).allowed);
        assert!(!decide_for(&cfg, &api, WEB, &req("GET", "/groups", &none)).allowed);

        // Another service: only the Gateway's policies.
        let web = service("shop", "web");
        assert!(decide_for(&cfg, &web, WEB, &req("DELETE", "/", &none)).allowed);
    }

    #[test]
    fn request_principals_and_absent_attributes() {
        let cfg = Config {
            authorization_policies: vec![policy(
                "shop",
                "need-jwt",
                "targetRefs:\n- kind: Gateway\n  group: gateway.networking.k8s.io\n  name: waypoint\naction: DENY\nrules:\n\
                 - from:\n  - source:\n      notRequestPrincipals: [\"*\"]\n\
                 - when:\n  - key: request.auth.claims[role][level]\n    notValues: [\"admin\"]\n    values: [\"*\"]\n",
            )],
            ..Config::default()
        };
        let api = service("shop", "api");
        let none = Map(HashMap::new());
        let plain = Http {
            method: "GET",
            path: "/",
            host: "api",
            headers: &none,
            sni: None,
            auth: None,
        };
        let d = decide_for(&cfg, &api, WEB, &plain);
        assert!(!d.allowed, "no token: notRequestPrincipals [*] matches");
        let token = |level: &str| RequestAuth {
            principal: "iss/sub".into(),
            claims: serde_json::json!({ "role": { "level": level } }),
            ..RequestAuth::default()
        };
        let (admin, user) = (token("admin"), token("user"));
        let with = |a| Http {
            auth: Some(a),
            ..plain
        };
        assert!(decide_for(&cfg, &api, WEB, &with(&admin)).allowed);
        assert!(
            !decide_for(&cfg, &api, WEB, &with(&user)).allowed,
            "nested claim"
        );
    }
}
