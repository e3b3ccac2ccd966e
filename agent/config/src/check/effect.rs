//! Which fields of each kind strait acts on. Every other field an object
//! sets is named in a warning, with why it does nothing yet, so that no
//! setting is silently ignored. The README's table is this file in prose.
use std::sync::LazyLock;

use serde_json::Value as Json;

use super::Findings;

/// Why a field does nothing when no better reason is listed.
const NOT_BUILT: &str = "has no effect: strait does not implement it yet";
/// Why an L7 setting does nothing.
const L7: &str =
    "has no effect yet: the node agents act at L4, and strait's waypoint does not apply it yet";

/// One kind's fields, as paths under `spec` (`a.b`, `list[].c`): what acts
/// (a path acts with everything under it), and reasons for some of what
/// does not.
struct Kind {
    acts: Vec<String>,
    reasons: Vec<(String, &'static str)>,
}

/// The settings a traffic policy shares with its port-level settings.
const POLICY_ACTS: [&str; 31] = [
    "loadBalancer.simple",
    "loadBalancer.consistentHash.useSourceIp",
    "loadBalancer.localityLbSetting",
    "connectionPool.tcp.maxConnections",
    "connectionPool.tcp.connectTimeout",
    "outlierDetection.consecutiveGatewayErrors",
    "outlierDetection.consecutive5xxErrors",
    "outlierDetection.consecutiveErrors",
    "outlierDetection.consecutiveLocalOriginFailures",
    "outlierDetection.interval",
    "outlierDetection.baseEjectionTime",
    "outlierDetection.maxEjectionPercent",
    "outlierDetection.minHealthPercent",
    // At a waypoint.
    "connectionPool.http.http1MaxPendingRequests",
    "connectionPool.http.http2MaxRequests",
    "connectionPool.http.maxRequestsPerConnection",
    "connectionPool.http.maxRetries",
    "connectionPool.http.idleTimeout",
    "connectionPool.http.useClientProtocol",
    "loadBalancer.consistentHash.httpHeaderName",
    "loadBalancer.consistentHash.httpCookie.name",
    "loadBalancer.consistentHash.httpCookie.path",
    "loadBalancer.consistentHash.httpCookie.ttl",
    "loadBalancer.consistentHash.httpQueryParameterName",
    // TLS originated by a waypoint to a destination outside the mesh.
    "tls.mode",
    "tls.caCertificates",
    "tls.clientCertificate",
    "tls.privateKey",
    "tls.subjectAltNames",
    "tls.sni",
    "tls.insecureSkipVerify",
];

const POLICY_REASONS: [(&str, &str); 8] = [
    (
        "tls.credentialName",
        "has no effect yet: strait's waypoint reads the files caCertificates, clientCertificate and privateKey name, not Secrets",
    ),
    (
        "tls.caCrl",
        "has no effect yet: strait's waypoint checks no revocation list",
    ),
    ("connectionPool.http.h2UpgradePolicy", L7),
    ("connectionPool.http.maxConcurrentStreams", L7),
    ("connectionPool.http.http2KeepAlive", L7),
    (
        "loadBalancer.consistentHash.httpCookie.attributes",
        "has no effect yet: strait's waypoint sets the cookie with its path and ttl only",
    ),
    (
        "loadBalancer.consistentHash.ringHash",
        "has no effect: strait hashes source addresses by rendezvous hashing, with no ring to size",
    ),
    (
        "loadBalancer.consistentHash.maglev",
        "has no effect: strait hashes source addresses by rendezvous hashing, with no table to size",
    ),
];

static DESTINATION_RULE: LazyLock<Kind> = LazyLock::new(|| {
    let mut acts: Vec<String> = [
        "host",
        "exportTo",
        "workloadSelector",
        "trafficPolicy.portLevelSettings[].port",
        // Where a waypoint routes to them.
        "subsets[].name",
        "subsets[].labels",
    ]
    .map(String::from)
    .to_vec();
    let mut reasons = vec![(
        "subsets[].trafficPolicy".to_string(),
        "has no effect yet: strait's waypoint routes to a subset's endpoints under the rule's own traffic policy",
    )];
    for prefix in ["trafficPolicy", "trafficPolicy.portLevelSettings[]"] {
        acts.extend(POLICY_ACTS.iter().map(|a| format!("{prefix}.{a}")));
        reasons.extend(
            POLICY_REASONS
                .iter()
                .map(|(p, r)| (format!("{prefix}.{p}"), *r)),
        );
    }
    Kind { acts, reasons }
});

static SERVICE_ENTRY: LazyLock<Kind> = LazyLock::new(|| Kind {
    acts: [
        "hosts",
        "addresses",
        "ports",
        "location",
        "resolution",
        "endpoints",
        "workloadSelector",
        "exportTo",
    ]
    .map(String::from)
    .to_vec(),
    reasons: vec![(
        "subjectAltNames".into(),
        "has no effect: strait checks a peer's identity against the workload's service account, not these names",
    )],
});

static WORKLOAD_GROUP: LazyLock<Kind> = LazyLock::new(|| Kind {
    acts: ["metadata.labels", "probe"].map(String::from).to_vec(),
    reasons: vec![
        (
            "template".into(),
            "has no effect: strait does not register workloads from a group; write a WorkloadEntry per workload",
        ),
        (
            "metadata.annotations".into(),
            "has no effect: strait does not register workloads from a group; write a WorkloadEntry per workload",
        ),
    ],
});

static AUTHORIZATION_POLICY: LazyLock<Kind> = LazyLock::new(|| {
    Kind {
    // L7 attributes in rules are warned about where they are checked:
    // they change what a rule matches.
    acts: ["selector", "action", "provider", "rules"].map(String::from).to_vec(),
    reasons: ["targetRef", "targetRefs"]
        .map(|t| {
            (
                t.to_string(),
                "has no effect yet: a policy bound by target applies at a waypoint, and strait's waypoint does not enforce AuthorizationPolicy yet",
            )
        })
        .to_vec(),
}
});

/// What the waypoint applies of a Gateway API route; `rule` is the rule's
/// list path.
fn gateway_route(acts: &[&str]) -> Kind {
    let mut all: Vec<String> = ["parentRefs", "hostnames", "rules[].name", "rules[].matches"]
        .map(String::from)
        .to_vec();
    all.extend(acts.iter().map(|a| format!("rules[].{a}")));
    for filters in ["rules[].filters[]", "rules[].backendRefs[].filters[]"] {
        all.extend(
            [
                "type",
                "requestHeaderModifier",
                "responseHeaderModifier",
                "requestRedirect",
                "urlRewrite",
            ]
            .map(|f| format!("{filters}.{f}")),
        );
    }
    all.extend(
        ["group", "kind", "name", "namespace", "port", "weight"]
            .map(|f| format!("rules[].backendRefs[].{f}")),
    );
    all.push("rules[].filters[].requestMirror".into());
    let mut reasons = vec![(
        "rules[].backendRefs[].filters[].requestMirror".to_string(),
        "has no effect yet: strait's waypoint mirrors by the rule's filters only",
    )];
    for filters in ["rules[].filters[]", "rules[].backendRefs[].filters[]"] {
        reasons.push((
            format!("{filters}.cors"),
            "has no effect yet: strait's waypoint does not answer CORS",
        ));
        reasons.push((
            format!("{filters}.extensionRef"),
            "has no effect: strait's waypoint runs no extensions",
        ));
    }
    reasons.push((
        "rules[].sessionPersistence".into(),
        "has no effect yet: strait's waypoint keeps no sessions",
    ));
    reasons.push((
        "rules[].retry.backoff".into(),
        "has no effect yet: strait's waypoint retries at once",
    ));
    Kind { acts: all, reasons }
}

static HTTP_ROUTE: LazyLock<Kind> =
    LazyLock::new(|| gateway_route(&["timeouts", "retry.codes", "retry.attempts"]));
static GRPC_ROUTE: LazyLock<Kind> = LazyLock::new(|| gateway_route(&[]));

/// The table for `kind`: `None` when every field acts (WorkloadEntry,
/// PeerAuthentication, core kinds) or none does (warned once at `spec`).
fn table(kind: &str) -> Option<&'static Kind> {
    match kind {
        "DestinationRule" => Some(&DESTINATION_RULE),
        "ServiceEntry" => Some(&SERVICE_ENTRY),
        "WorkloadGroup" => Some(&WORKLOAD_GROUP),
        "AuthorizationPolicy" => Some(&AUTHORIZATION_POLICY),
        "HTTPRoute" => Some(&HTTP_ROUTE),
        "GRPCRoute" => Some(&GRPC_ROUTE),
        _ => None,
    }
}

/// Warns, at the outermost such field, about every field of `spec` that
/// strait does not act on.
pub(super) fn warn_without_effect(f: &mut Findings, kind: &str, spec: &Json) {
    if let Some(table) = table(kind) {
        walk(f, table, spec, "", "spec");
    }
}

fn walk(f: &mut Findings, table: &Kind, value: &Json, pattern: &str, path: &str) {
    let Json::Object(fields) = value else {
        return;
    };
    for (key, v) in fields {
        let pattern = join(pattern, key);
        let path = format!("{path}.{key}");
        if table.acts.iter().any(|a| covers(a, &pattern)) {
            continue;
        }
        if table.acts.iter().any(|a| covers(&pattern, a)) {
            match v {
                Json::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        walk(
                            f,
                            table,
                            item,
                            &format!("{pattern}[]"),
                            &format!("{path}[{i}]"),
                        );
                    }
                }
                other => walk(f, table, other, &pattern, &path),
            }
            continue;
        }
        let reason = table
            .reasons
            .iter()
            .find(|(p, _)| covers(p, &pattern))
            .map_or(NOT_BUILT, |(_, r)| *r);
        f.warn(&path, reason);
    }
}

fn join(pattern: &str, key: &str) -> String {
    if pattern.is_empty() {
        key.to_string()
    } else {
        format!("{pattern}.{key}")
    }
}

/// Whether `outer` is `inner` or contains it.
fn covers(outer: &str, inner: &str) -> bool {
    inner
        .strip_prefix(outer)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cover_their_subfields_only() {
        assert!(covers("trafficPolicy.tls", "trafficPolicy.tls.mode"));
        assert!(covers("a[]", "a[].b"));
        assert!(covers("a", "a[].b"));
        assert!(!covers("trafficPolicy.tl", "trafficPolicy.tls"));
        assert!(covers("host", "host"));
    }
}
