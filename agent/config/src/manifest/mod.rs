//! The shapes of the Kubernetes and Istio objects the model is built from,
//! as they appear in YAML, and the table of kinds: which API group each
//! belongs to and whether strait uses it. Specs reject unknown fields: a
//! typo must not pass silently as a default.
pub mod core;
pub mod gateway_api;
pub mod networking;
pub mod security;

use serde::de::DeserializeOwned;
use serde_json::Value as Json;

use crate::Labels;

/// What every object has; read first to pick the kind.
#[derive(Debug, Default)]
pub struct Header {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub metadata: ObjectMeta,
}

/// `metadata`; fields the model does not use (uid, resourceVersion, ...)
/// are allowed and ignored.
#[derive(Debug, Default)]
pub struct ObjectMeta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub labels: Labels,
    pub annotations: Labels,
    /// `metadata.creationTimestamp` (RFC 3339, as the API server writes
    /// it): which of two claims to one address came first.
    pub created: Option<String>,
}

impl Header {
    /// Reads the header field by field: a bad label or annotation is a
    /// problem at its path (returned), never a reason to lose the object's
    /// kind and name.
    pub fn read(json: &Json) -> (Header, Vec<(String, String)>) {
        let mut problems = Vec::new();
        let mut text = |path: &str, value: Option<&Json>| match value {
            None => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(_) => {
                problems.push((path.to_string(), "must be a string".to_string()));
                None
            }
        };
        let api_version = text("apiVersion", json.get("apiVersion"));
        let kind = text("kind", json.get("kind"));
        let meta = json.get("metadata");
        let name = text("metadata.name", meta.and_then(|m| m.get("name")));
        let namespace = text("metadata.namespace", meta.and_then(|m| m.get("namespace")));
        let created = text(
            "metadata.creationTimestamp",
            meta.and_then(|m| m.get("creationTimestamp")),
        );
        if meta.is_some_and(|m| !m.is_object()) {
            problems.push(("metadata".into(), "must be a mapping".into()));
        }
        let mut map = |field: &str| {
            let mut out = Labels::new();
            match meta.and_then(|m| m.get(field)) {
                None => {}
                Some(Json::Object(entries)) => {
                    for (k, v) in entries {
                        match v {
                            Json::String(s) => {
                                out.insert(k.clone(), s.clone());
                            }
                            _ => problems.push((
                                format!("metadata.{field}.{k}"),
                                format!(
                                    "must be a string (quote it: \"{}\")",
                                    v.to_string().trim_matches('"')
                                ),
                            )),
                        }
                    }
                }
                Some(_) => problems.push((
                    format!("metadata.{field}"),
                    "must be a mapping of strings".into(),
                )),
            }
            out
        };
        let labels = map("labels");
        let annotations = map("annotations");
        let header = Header {
            api_version,
            kind,
            metadata: ObjectMeta {
                name,
                namespace,
                labels,
                annotations,
                created,
            },
        };
        (header, problems)
    }
}

/// Removes every `null` from `json`, at any depth: Kubernetes reads a field
/// left empty (`annotations:`) as absent.
pub fn strip_nulls(json: &mut Json) {
    match json {
        Json::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Json::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// The kinds strait reads, with the group and versions they must come
/// with.
pub const USED: [(&str, &[&str], &str); 17] = [
    ("", &["v1"], "Namespace"),
    ("", &["v1"], "Service"),
    ("", &["v1"], "Node"),
    ("", &["v1"], "Pod"),
    ("networking.istio.io", NETWORKING, "ServiceEntry"),
    ("networking.istio.io", NETWORKING, "WorkloadEntry"),
    ("networking.istio.io", NETWORKING, "WorkloadGroup"),
    ("networking.istio.io", NETWORKING, "DestinationRule"),
    ("networking.istio.io", NETWORKING, "VirtualService"),
    ("networking.istio.io", NETWORKING, "Gateway"),
    (GATEWAY_API, &["v1", "v1beta1"], "Gateway"),
    (GATEWAY_API, &["v1", "v1beta1"], "HTTPRoute"),
    (GATEWAY_API, &["v1", "v1alpha2"], "GRPCRoute"),
    ("security.istio.io", SECURITY, "PeerAuthentication"),
    ("security.istio.io", SECURITY, "AuthorizationPolicy"),
    ("security.istio.io", SECURITY, "RequestAuthentication"),
    // Its rate-limit patches, at waypoints.
    ("networking.istio.io", &["v1alpha3"], "EnvoyFilter"),
];
const NETWORKING: &[&str] = &["v1alpha3", "v1beta1", "v1"];
/// The Kubernetes Gateway API's group.
pub const GATEWAY_API: &str = "gateway.networking.k8s.io";
const SECURITY: &[&str] = &["v1beta1", "v1"];

/// Istio kinds strait does not implement: listed as ignored, not errors.
const ISTIO_OTHER: [(&str, &str); 6] = [
    ("networking.istio.io", "Sidecar"),
    ("networking.istio.io", "ProxyConfig"),
    ("telemetry.istio.io", "Telemetry"),
    ("extensions.istio.io", "WasmPlugin"),
    ("extensions.istio.io", "ExtensionFilter"),
    ("security.istio.io", "CertificateRequest"),
];

/// The group of an `apiVersion` (empty for the core API).
pub fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

/// What to do with an object of `api_version` and `kind`.
#[derive(Debug, PartialEq, Eq)]
pub enum KindCheck {
    Used,
    Ignored(String),
    Wrong(String),
}

pub fn classify(api_version: &str, kind: &str) -> KindCheck {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let istio = group.ends_with(".istio.io");
    // A kind of the object's own group first (Gateway is Istio's and the
    // Gateway API's), else the first of that name, for the error.
    let used = USED
        .iter()
        .find(|(g, _, k)| *k == kind && *g == group)
        .or_else(|| USED.iter().find(|(_, _, k)| *k == kind));
    if let Some((want_group, versions, _)) = used {
        // The same kind name in another API group (Knative's Service) is
        // that API's own kind.
        if group != *want_group && !istio && !group.is_empty() {
            return KindCheck::Ignored(format!("{api_version} {kind} is not used by strait"));
        }
        if group != *want_group {
            let home = if want_group.is_empty() {
                "the core API (apiVersion: v1)".to_string()
            } else {
                format!("{want_group} ({})", versions.join(", "))
            };
            let found = if group.is_empty() { "core" } else { group };
            return KindCheck::Wrong(format!("{kind} belongs to {home}, not to {found}"));
        }
        if !versions.contains(&version) {
            return KindCheck::Wrong(format!(
                "{api_version}: unknown version of {kind} (known: {})",
                versions.join(", ")
            ));
        }
        return KindCheck::Used;
    }
    if istio && !ISTIO_OTHER.iter().any(|(g, k)| *g == group && *k == kind) {
        let known = USED
            .iter()
            .filter(|(g, _, _)| *g == group)
            .map(|(_, _, k)| *k)
            .chain(
                ISTIO_OTHER
                    .iter()
                    .filter(|(g, _)| *g == group)
                    .map(|(_, k)| *k),
            );
        let hint = crate::suggest(kind, known)
            .map(|k| format!("; did you mean {k}?"))
            .unwrap_or_default();
        return KindCheck::Wrong(format!("{group} has no kind {kind}{hint}"));
    }
    KindCheck::Ignored(format!("{api_version} {kind} is not used by strait"))
}

/// Decodes `value` (a spec) into its typed shape. On failure: the dotted
/// path of the offending field (from `prefix`) and the reason, with a
/// "did you mean" for a misspelt field name.
pub fn decode<S: DeserializeOwned>(
    value: &serde_json::Value,
    prefix: &str,
) -> Result<S, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let inner = err.path().to_string();
        let path = if inner == "." || inner.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{inner}")
        };
        let reason = err.into_inner().to_string();
        let field = path.rsplit('.').next().unwrap_or_default();
        let reason = if DURATION_FIELDS.contains(&field) && reason.starts_with("invalid type") {
            "is not a duration: write it as text with a unit (e.g. 30s, 1m30s, 100ms)".into()
        } else {
            with_suggestion(reason)
        };
        (path, reason)
    })
}

/// Fields Istio writes as durations: a bare number there is the usual
/// mistake.
const DURATION_FIELDS: [&str; 12] = [
    "interval",
    "baseEjectionTime",
    "connectTimeout",
    "idleTimeout",
    "maxConnectionDuration",
    "timeout",
    "perTryTimeout",
    "fixedDelay",
    "exponentialDelay",
    "time",
    "backoff",
    "warmupDurationSecs",
];

/// serde says "unknown field `x`, expected one of `a`, `b`": add the
/// closest expected name, if one is close.
fn with_suggestion(reason: String) -> String {
    let Some(rest) = reason.strip_prefix("unknown field `") else {
        return reason;
    };
    let Some((field, expected)) = rest.split_once('`') else {
        return reason;
    };
    let candidates = expected.split('`').skip(1).step_by(2);
    match crate::suggest(field, candidates) {
        Some(close) => format!("unknown field `{field}`; did you mean `{close}`?"),
        None => reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_checked_against_their_group() {
        assert_eq!(
            classify("networking.istio.io/v1beta1", "VirtualService"),
            KindCheck::Used
        );
        assert_eq!(classify("v1", "Service"), KindCheck::Used);
        let KindCheck::Wrong(why) = classify("networking.istio.io/v1", "PeerAuthentication") else {
            panic!("accepted a kind under the wrong group");
        };
        assert!(why.contains("security.istio.io"), "{why}");
        let KindCheck::Wrong(why) = classify("networking.istio.io/v1", "VirtualServce") else {
            panic!("accepted an unknown Istio kind");
        };
        assert!(why.contains("did you mean VirtualService"), "{why}");
        assert!(matches!(
            classify("networking.istio.io/v2", "Gateway"),
            KindCheck::Wrong(_)
        ));
        assert!(matches!(
            classify("apps/v1", "Deployment"),
            KindCheck::Ignored(_)
        ));
        assert_eq!(
            classify("gateway.networking.k8s.io/v1", "Gateway"),
            KindCheck::Used,
            "the Gateway API's own Gateway"
        );
        assert!(matches!(
            classify("gateway.networking.k8s.io/v1alpha2", "Gateway"),
            KindCheck::Wrong(_)
        ));
        assert_eq!(
            classify("gateway.networking.k8s.io/v1", "HTTPRoute"),
            KindCheck::Used
        );
        for (api, kind) in [
            ("gateway.networking.k8s.io/v1", "TCPRoute"),
            ("serving.knative.dev/v1", "Service"),
        ] {
            assert!(
                matches!(classify(api, kind), KindCheck::Ignored(_)),
                "{api} {kind}"
            );
        }
        assert!(matches!(
            classify("v1", "VirtualService"),
            KindCheck::Wrong(_)
        ));
        assert!(matches!(
            classify("networking.istio.io/v1alpha3", "Sidecar"),
            KindCheck::Ignored(_)
        ));
        assert!(!matches!(
            classify("networking.istio.io/v1alpha3", "EnvoyFilter"),
            KindCheck::Ignored(_) | KindCheck::Wrong(_)
        ));
    }

    #[test]
    fn unknown_fields_get_a_suggestion() {
        let value = serde_json::json!({"host": "r", "trafficPolicy": {"loadBalancr": {}}});
        let (path, reason) = decode::<networking::DestinationRuleSpec>(&value, "spec").unwrap_err();
        assert_eq!(path, "spec.trafficPolicy.loadBalancr");
        assert!(reason.contains("did you mean `loadBalancer`"), "{reason}");
    }
}
