//! AuthorizationPolicy: which policies apply (to a workload at its node
//! proxy, or to a request through a waypoint) and what they decide, by
//! Istio's rules.
//!
//! Order: a matching DENY (or CUSTOM, where no authorizer is consulted)
//! refuses; otherwise, when ALLOW policies apply, one must match; with none,
//! the connection is allowed. AUDIT policies only mark the connection.
//!
//! A node proxy sees no HTTP, nor does a waypoint on a TCP connection. Like
//! ztunnel, they fail closed on L7 attributes: in an ALLOW policy a rule that
//! uses one never matches; in a DENY policy the L7 parts are dropped, so the
//! rule denies every connection its L4 parts match. A waypoint's requests
//! carry them ([`Http`]) and are decided on them.
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::{
    Config, Named, Workload,
    manifest::security::{AuthorizationPolicySpec, Condition, Operation, Rule, Source},
};

mod request;

pub use request::{Headers, Http, RequestAuth, WaypointScope};

/// What the node proxy knows about a connection to one of its workloads.
#[derive(Clone, Debug)]
pub struct Connection<'a> {
    /// The peer's identity without `spiffe://` (`td/ns/x/sa/y`), when it
    /// came over mutual TLS.
    pub principal: Option<&'a str>,
    /// The peer's namespace, from its identity.
    pub namespace: Option<&'a str>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
    /// The request, when the connection is one at a waypoint.
    pub http: Option<&'a Http<'a>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    /// The policy that decided (`namespace/name`), if one did.
    pub policy: Option<String>,
    /// AUDIT policies that matched.
    pub audited: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Allow,
    Deny,
    Audit,
}

impl Config {
    /// Decides a connection to `workload`.
    pub fn authorize(&self, workload: &Workload, conn: &Connection<'_>) -> Decision {
        decide(self.policies_for(workload), conn)
    }

    /// Policies that apply to `workload` at the node proxy: mesh-wide ones
    /// (root namespace, no selector), its namespace's, and those whose
    /// selector matches it (in its namespace or the root namespace).
    /// Policies bound with `targetRef(s)` are for waypoints and gateways.
    pub(crate) fn policies_for<'a>(
        &'a self,
        workload: &'a Workload,
    ) -> impl Iterator<Item = &'a Named<AuthorizationPolicySpec>> + 'a {
        self.authorization_policies.iter().filter(move |p| {
            if p.spec.target_ref.is_some() || !p.spec.target_refs.is_empty() {
                return false;
            }
            let in_scope = p.namespace == self.root_namespace || p.namespace == workload.namespace;
            in_scope
                && match &p.spec.selector {
                    None => true,
                    Some(sel) => sel
                        .match_labels
                        .iter()
                        .all(|(k, v)| workload.labels.get(k) == Some(v)),
                }
        })
    }
}

/// What `policies` decide about `conn`.
fn decide<'a>(
    policies: impl Iterator<Item = &'a Named<AuthorizationPolicySpec>>,
    conn: &Connection<'_>,
) -> Decision {
    let mut any_allow = false;
    let mut allowed_by = None;
    let mut audited = Vec::new();
    for policy in policies {
        let action = match policy.spec.action.as_deref().unwrap_or("ALLOW") {
            // A waypoint consults the policy's authorizer for a request
            // ([`Config::custom_policies`]); without one, its matches are
            // denied.
            "CUSTOM" if conn.http.is_some() => continue,
            "DENY" | "CUSTOM" => Action::Deny,
            "AUDIT" => Action::Audit,
            _ => Action::Allow,
        };
        let matched = policy
            .spec
            .rules
            .iter()
            .any(|rule| rule_matches(rule, conn, action));
        let id = format!("{}/{}", policy.namespace, policy.name);
        match action {
            Action::Deny if matched => {
                return Decision {
                    allowed: false,
                    policy: Some(id),
                    audited,
                };
            }
            Action::Deny => {}
            Action::Audit => {
                if matched {
                    audited.push(id);
                }
            }
            Action::Allow => {
                any_allow = true;
                if matched && allowed_by.is_none() {
                    allowed_by = Some(id);
                }
            }
        }
    }
    Decision {
        allowed: !any_allow || allowed_by.is_some(),
        policy: allowed_by,
        audited,
    }
}

/// A rule matches when each of its parts does: one of its `from`, one of
/// its `to`, and every `when`. Missing parts match anything.
fn rule_matches(rule: &Rule, conn: &Connection<'_>, action: Action) -> bool {
    let from = rule.from.is_empty()
        || rule
            .from
            .iter()
            .any(|f| source_matches(&f.source, conn, action));
    let to = rule.to.is_empty()
        || rule
            .to
            .iter()
            .any(|t| operation_matches(&t.operation, conn, action));
    from && to && rule.when.iter().all(|c| condition_matches(c, conn, action))
}

fn source_matches(s: &Source, conn: &Connection<'_>, action: Action) -> bool {
    let principal = |p: &String| conn.principal.is_some_and(|have| pattern_matches(p, have));
    let namespace = |n: &String| conn.namespace.is_some_and(|have| pattern_matches(n, have));
    let ip = |b: &String| cidr_contains(b, conn.source_ip);
    let account = service_account(conn.principal);
    let service_account = |a: &String| account.as_deref() == Some(a.as_str());
    // Request principals come from a JWT, which only a waypoint sees.
    let uses_l7 = !s.request_principals.is_empty() || !s.not_request_principals.is_empty();
    let requested = match conn.http {
        Some(http) => {
            let principal = |p: &String| {
                http.auth
                    .is_some_and(|auth| pattern_matches(p, &auth.principal))
            };
            one_of(&s.request_principals, principal)
                && none_of(&s.not_request_principals, principal)
        }
        None => l7_outcome(uses_l7, action),
    };
    requested
        && one_of(&s.principals, principal)
        && none_of(&s.not_principals, principal)
        && one_of(&s.namespaces, namespace)
        && none_of(&s.not_namespaces, namespace)
        && one_of(&s.service_accounts, service_account)
        && none_of(&s.not_service_accounts, service_account)
        && one_of(&s.ip_blocks, ip)
        && none_of(&s.not_ip_blocks, ip)
        // Without a proxy in front, the remote address is the source.
        && one_of(&s.remote_ip_blocks, ip)
        && none_of(&s.not_remote_ip_blocks, ip)
}

fn operation_matches(o: &Operation, conn: &Connection<'_>, action: Action) -> bool {
    let port = |p: &String| p.parse::<u16>() == Ok(conn.destination_port);
    let l4 = one_of(&o.ports, port) && none_of(&o.not_ports, port);
    let uses_l7 = [
        &o.hosts,
        &o.not_hosts,
        &o.methods,
        &o.not_methods,
        &o.paths,
        &o.not_paths,
    ]
    .iter()
    .any(|v| !v.is_empty());
    let l7 = match conn.http {
        Some(http) => {
            let host = |h: &String| {
                pattern_matches(&h.to_ascii_lowercase(), &http.host.to_ascii_lowercase())
            };
            let method = |m: &String| m == http.method;
            let path = |p: &String| pattern_matches(p, http.path);
            one_of(&o.hosts, host)
                && none_of(&o.not_hosts, host)
                && one_of(&o.methods, method)
                && none_of(&o.not_methods, method)
                && one_of(&o.paths, path)
                && none_of(&o.not_paths, path)
        }
        None => l7_outcome(uses_l7, action),
    };
    l4 && l7
}

fn condition_matches(c: &Condition, conn: &Connection<'_>, action: Action) -> bool {
    let value: Option<String> = match c.key.as_str() {
        "source.ip" | "remote.ip" => Some(conn.source_ip.to_string()),
        "source.namespace" => conn.namespace.map(str::to_string),
        "source.principal" => conn.principal.map(str::to_string),
        "source.serviceAccount" => service_account(conn.principal),
        "destination.ip" => Some(conn.destination_ip.to_string()),
        "destination.port" => Some(conn.destination_port.to_string()),
        key => match conn.http.map(|http| http.attribute(key)) {
            Some(Some(values)) => {
                let test = |want: &String| values.iter().any(|have| pattern_matches(want, have));
                return one_of(&c.values, test) && none_of(&c.not_values, test);
            }
            // The request lacks it (no such header, no token): no value
            // matches, and every notValues passes.
            Some(None) if request::known(key) => {
                return c.values.is_empty();
            }
            _ => return l7_outcome(true, action),
        },
    };
    let test = |want: &String| match (&value, c.key.ends_with(".ip")) {
        (Some(_), true) => {
            let ip = match c.key.as_str() {
                "destination.ip" => conn.destination_ip,
                _ => conn.source_ip,
            };
            cidr_contains(want, ip)
        }
        (Some(have), false) => pattern_matches(want, have),
        (None, _) => false,
    };
    one_of(&c.values, test) && none_of(&c.not_values, test)
}

/// `namespace/name` of the service account a principal
/// (`<trust domain>/ns/<namespace>/sa/<name>`) names, whatever its trust
/// domain: what `serviceAccounts` and `source.serviceAccount` compare.
fn service_account(principal: Option<&str>) -> Option<String> {
    let (_, rest) = principal?.split_once("/ns/")?;
    let (namespace, name) = rest.split_once("/sa/")?;
    (!namespace.contains('/') && !name.contains('/')).then(|| format!("{namespace}/{name}"))
}

/// Whether the L7 part of a rule counts as matched: never in ALLOW (allow
/// nothing the proxy cannot check), always in DENY and AUDIT.
fn l7_outcome(uses_l7: bool, action: Action) -> bool {
    !uses_l7 || action != Action::Allow
}

/// An empty list places no constraint.
fn one_of(values: &[String], test: impl Fn(&String) -> bool) -> bool {
    values.is_empty() || values.iter().any(test)
}

fn none_of(values: &[String], test: impl Fn(&String) -> bool) -> bool {
    !values.iter().any(test)
}

/// Istio's string match: exact, `*`, `prefix*` or `*suffix`.
pub(crate) fn pattern_matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

/// `block` is an address or a CIDR; a malformed one (refused by the
/// checks, so not expected here) contains nothing.
pub fn cidr_contains(block: &str, ip: IpAddr) -> bool {
    match block.parse::<IpNet>() {
        Ok(net) => net.contains(&ip),
        Err(_) => block.parse::<IpAddr>() == Ok(ip),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Locality, manifest::security};

    fn workload(ns: &str, app: &str) -> Workload {
        Workload {
            name: app.into(),
            namespace: ns.into(),
            addresses: vec!["10.0.0.9".parse().unwrap()],
            labels: [("app".to_string(), app.to_string())].into(),
            service_account: "default".into(),
            locality: Locality::default(),
            network: String::new(),
            ports: Default::default(),
            weight: 1,
            node: None,
            netns: None,
            ready: true,
            group: None,
            probe: None,
            owner: None,
            sidecar: false,
        }
    }

    fn policy(ns: &str, name: &str, yaml: &str) -> Named<AuthorizationPolicySpec> {
        let spec: security::AuthorizationPolicySpec =
            serde_saphyr::from_str(yaml).expect("test policy parses");
        Named::new(name, ns, spec)
    }

    fn conn<'a>(principal: Option<&'a str>, port: u16) -> Connection<'a> {
        Connection {
            principal,
            namespace: principal.and_then(|p| p.split('/').nth(2)),
            source_ip: "10.1.0.5".parse().unwrap(),
            destination_ip: "10.0.0.9".parse().unwrap(),
            destination_port: port,
            http: None,
        }
    }

    const WEB: Option<&str> = Some("cluster.local/ns/frontend/sa/web");
    const OTHER: Option<&str> = Some("cluster.local/ns/frontend/sa/other");

    fn with(policies: Vec<Named<AuthorizationPolicySpec>>) -> Config {
        Config {
            authorization_policies: policies,
            ..Config::default()
        }
    }

    #[test]
    fn no_policy_allows() {
        let d = Config::default().authorize(&workload("backend", "api"), &conn(None, 80));
        assert!(d.allowed);
        assert_eq!(d.policy, None);
    }

    #[test]
    fn allow_admits_only_its_principals() {
        let cfg = with(vec![policy(
            "backend",
            "web-only",
            "rules:\n- from:\n  - source:\n      principals: [cluster.local/ns/frontend/sa/web]\n",
        )]);
        let w = workload("backend", "api");
        assert!(cfg.authorize(&w, &conn(WEB, 80)).allowed);
        assert!(!cfg.authorize(&w, &conn(OTHER, 80)).allowed);
        assert!(!cfg.authorize(&w, &conn(None, 80)).allowed, "plaintext");
        // Another namespace's policy does not apply.
        assert!(
            cfg.authorize(&workload("other", "api"), &conn(OTHER, 80))
                .allowed
        );
    }

    #[test]
    fn deny_wins_over_allow() {
        let cfg = with(vec![
            policy("backend", "allow-all", "rules:\n- {}\n"),
            policy(
                "backend",
                "deny-web",
                "action: DENY\nrules:\n- from:\n  - source:\n      namespaces: [frontend]\n  to:\n  - operation:\n      ports: [\"80\"]\n",
            ),
        ]);
        let w = workload("backend", "api");
        let d = cfg.authorize(&w, &conn(WEB, 80));
        assert!(!d.allowed);
        assert_eq!(d.policy.as_deref(), Some("backend/deny-web"));
        assert!(cfg.authorize(&w, &conn(WEB, 81)).allowed, "other port");
    }

    #[test]
    fn allow_without_rules_denies_everything() {
        let cfg = with(vec![policy("backend", "nothing", "action: ALLOW\n")]);
        assert!(
            !cfg.authorize(&workload("backend", "api"), &conn(WEB, 80))
                .allowed
        );
    }

    #[test]
    fn scope_mesh_namespace_selector() {
        let mut cfg = with(vec![
            policy(
                "istio-system",
                "mesh-deny-other",
                "action: DENY\nrules:\n- from:\n  - source:\n      principals: [\"*/sa/other\"]\n",
            ),
            policy(
                "backend",
                "db-only-ip",
                "selector:\n  matchLabels:\n    app: db\nrules:\n- from:\n  - source:\n      ipBlocks: [10.2.0.0/16]\n",
            ),
        ]);
        cfg.root_namespace = "istio-system".into();
        let api = workload("backend", "api");
        let db = workload("backend", "db");
        assert!(!cfg.authorize(&api, &conn(OTHER, 80)).allowed, "mesh DENY");
        assert!(
            cfg.authorize(&api, &conn(WEB, 80)).allowed,
            "no ALLOW for api"
        );
        assert!(
            !cfg.authorize(&db, &conn(WEB, 80)).allowed,
            "selector ALLOW"
        );
        let mut from_db_net = conn(WEB, 80);
        from_db_net.source_ip = "10.2.3.4".parse().unwrap();
        assert!(cfg.authorize(&db, &from_db_net).allowed);
    }

    #[test]
    fn conditions_and_negations() {
        let cfg = with(vec![policy(
            "backend",
            "cond",
            "rules:\n- from:\n  - source:\n      notPrincipals: [\"*/sa/other\"]\n  when:\n  - key: destination.port\n    values: [\"80\", \"443\"]\n  - key: source.ip\n    notValues: [10.9.0.0/16]\n",
        )]);
        let w = workload("backend", "api");
        assert!(cfg.authorize(&w, &conn(WEB, 443)).allowed);
        assert!(!cfg.authorize(&w, &conn(WEB, 8080)).allowed);
        assert!(!cfg.authorize(&w, &conn(OTHER, 80)).allowed);
        let mut far = conn(WEB, 80);
        far.source_ip = "10.9.1.1".parse().unwrap();
        assert!(!cfg.authorize(&w, &far).allowed);
    }

    #[test]
    fn l7_attributes_fail_closed() {
        let allow_get = policy(
            "backend",
            "get-only",
            "rules:\n- to:\n  - operation:\n      methods: [GET]\n",
        );
        let w = workload("backend", "api");
        assert!(
            !with(vec![allow_get]).authorize(&w, &conn(WEB, 80)).allowed,
            "an ALLOW on methods allows nothing at L4"
        );
        let deny_post = policy(
            "backend",
            "no-post",
            "action: DENY\nrules:\n- from:\n  - source:\n      namespaces: [frontend]\n  to:\n  - operation:\n      methods: [POST]\n",
        );
        let cfg = with(vec![deny_post]);
        assert!(
            !cfg.authorize(&w, &conn(WEB, 80)).allowed,
            "a DENY on methods denies its L4 matches"
        );
        assert!(
            cfg.authorize(&w, &conn(None, 80)).allowed,
            "not from frontend"
        );
    }

    #[test]
    fn audit_marks_without_deciding() {
        let cfg = with(vec![policy(
            "backend",
            "watch",
            "action: AUDIT\nrules:\n- {}\n",
        )]);
        let d = cfg.authorize(&workload("backend", "api"), &conn(WEB, 80));
        assert!(d.allowed);
        assert_eq!(d.audited, vec!["backend/watch".to_string()]);
    }

    #[test]
    fn target_ref_policies_are_for_waypoints() {
        let cfg = with(vec![policy(
            "backend",
            "waypoint",
            "targetRefs:\n- kind: Service\n  name: api\n",
        )]);
        assert!(
            cfg.authorize(&workload("backend", "api"), &conn(OTHER, 80))
                .allowed
        );
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("*", "x"));
        assert!(pattern_matches(
            "cluster.local/*",
            "cluster.local/ns/a/sa/b"
        ));
        assert!(pattern_matches("*/sa/b", "cluster.local/ns/a/sa/b"));
        assert!(!pattern_matches("*/sa/b", "cluster.local/ns/a/sa/bb"));
        assert!(cidr_contains("10.0.0.0/8", "10.1.2.3".parse().unwrap()));
        assert!(cidr_contains("10.1.2.3", "10.1.2.3".parse().unwrap()));
        assert!(!cidr_contains("fd00::/8", "10.1.2.3".parse().unwrap()));
    }
}
