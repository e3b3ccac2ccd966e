//! The shapes of the Kubernetes and Istio objects the model is built from,
//! as they appear in YAML, and the table of kinds: which API group each
//! belongs to and whether strait uses it. Specs reject unknown fields: a
//! typo must not pass silently as a default.
pub mod core;
pub mod networking;
pub mod security;

use serde::{Deserialize, de::DeserializeOwned};

use crate::Labels;

/// What every object has; read first to pick the kind.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
}

/// `metadata`; fields the model does not use (uid, resourceVersion, ...)
/// are allowed and ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub annotations: Labels,
}

/// The kinds strait reads, with the group and versions they must come
/// with.
pub const USED: [(&str, &[&str], &str); 12] = [
    ("", &["v1"], "Namespace"),
    ("", &["v1"], "Service"),
    ("", &["v1"], "Node"),
    ("networking.istio.io", NETWORKING, "ServiceEntry"),
    ("networking.istio.io", NETWORKING, "WorkloadEntry"),
    ("networking.istio.io", NETWORKING, "WorkloadGroup"),
    ("networking.istio.io", NETWORKING, "DestinationRule"),
    ("networking.istio.io", NETWORKING, "VirtualService"),
    ("networking.istio.io", NETWORKING, "Gateway"),
    ("security.istio.io", SECURITY, "PeerAuthentication"),
    ("security.istio.io", SECURITY, "AuthorizationPolicy"),
    ("security.istio.io", SECURITY, "RequestAuthentication"),
];
const NETWORKING: &[&str] = &["v1alpha3", "v1beta1", "v1"];
const SECURITY: &[&str] = &["v1beta1", "v1"];

/// Istio kinds strait does not implement: listed as ignored, not errors.
const ISTIO_OTHER: [(&str, &str); 6] = [
    ("networking.istio.io", "Sidecar"),
    ("networking.istio.io", "EnvoyFilter"),
    ("networking.istio.io", "ProxyConfig"),
    ("telemetry.istio.io", "Telemetry"),
    ("extensions.istio.io", "WasmPlugin"),
    ("security.istio.io", "CertificateRequest"),
];

/// What to do with an object of `api_version` and `kind`.
#[derive(Debug, PartialEq, Eq)]
pub enum KindCheck {
    Used,
    Ignored(String),
    Wrong(String),
}

pub fn classify(api_version: &str, kind: &str) -> KindCheck {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    if let Some((want_group, versions, _)) = USED.iter().find(|(_, _, k)| *k == kind) {
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
    let istio = group.ends_with(".istio.io");
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
        assert!(matches!(
            classify("networking.istio.io/v1alpha3", "EnvoyFilter"),
            KindCheck::Ignored(_)
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
