//! The CustomResourceDefinitions of the ten Istio kinds strait reads,
//! generated from the same types its checks deserialize into
//! (`kube::CustomResource` + schemars), so the API server refuses what the
//! agents would: a wrong type, a missing `spec`. Istio's own CRDs can take
//! their place: group, kinds, plurals, short names, scope and versions
//! (`v1alpha3`/`v1beta1`/`v1` served, `v1` stored) are the same.
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use strait_config::manifest::{networking, security};

/// An Istio object's `status`: written by controllers, kept as it is
/// (a WorkloadEntry's `Healthy` condition is read from it).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Status(pub Json);

impl JsonSchema for Status {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Status".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

macro_rules! istio_kind {
    ($wrapper:ident, $inner:ty, $group:literal, $kind:literal, $plural:literal, [$($short:literal),*]) => {
        #[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema)]
        #[kube(
            group = $group,
            version = "v1",
            kind = $kind,
            plural = $plural,
            namespaced,
            status = "Status",
            category = "istio-io",
            $(shortname = $short,)*
        )]
        pub struct $wrapper {
            #[serde(flatten)]
            pub spec: $inner,
        }
    };
}

istio_kind!(
    ServiceEntryCrd,
    networking::ServiceEntrySpec,
    "networking.istio.io",
    "ServiceEntry",
    "serviceentries",
    ["se"]
);
istio_kind!(
    WorkloadEntryCrd,
    networking::WorkloadEntrySpec,
    "networking.istio.io",
    "WorkloadEntry",
    "workloadentries",
    ["we"]
);
istio_kind!(
    WorkloadGroupCrd,
    networking::WorkloadGroupSpec,
    "networking.istio.io",
    "WorkloadGroup",
    "workloadgroups",
    ["wg"]
);
istio_kind!(
    DestinationRuleCrd,
    networking::DestinationRuleSpec,
    "networking.istio.io",
    "DestinationRule",
    "destinationrules",
    ["dr"]
);
istio_kind!(
    VirtualServiceCrd,
    networking::VirtualServiceSpec,
    "networking.istio.io",
    "VirtualService",
    "virtualservices",
    ["vs"]
);
istio_kind!(
    GatewayCrd,
    networking::GatewaySpec,
    "networking.istio.io",
    "Gateway",
    "gateways",
    ["gw"]
);
istio_kind!(
    PeerAuthenticationCrd,
    security::PeerAuthenticationSpec,
    "security.istio.io",
    "PeerAuthentication",
    "peerauthentications",
    ["pa"]
);
istio_kind!(
    AuthorizationPolicyCrd,
    security::AuthorizationPolicySpec,
    "security.istio.io",
    "AuthorizationPolicy",
    "authorizationpolicies",
    ["ap"]
);
istio_kind!(
    RequestAuthenticationCrd,
    security::RequestAuthenticationSpec,
    "security.istio.io",
    "RequestAuthentication",
    "requestauthentications",
    ["ra"]
);

/// The versions Istio serves for each group, the last one stored.
fn versions(group: &str) -> &'static [&'static str] {
    match group {
        "networking.istio.io" => &["v1alpha3", "v1beta1", "v1"],
        _ => &["v1beta1", "v1"],
    }
}

/// EnvoyFilter's: its patches' values are Envoy's own config, any shape
/// (strait's checks read them, refusing what it does not apply).
fn envoy_filter() -> Json {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "envoyfilters.networking.istio.io"},
        "spec": {
            "group": "networking.istio.io",
            "names": {
                "kind": "EnvoyFilter",
                "listKind": "EnvoyFilterList",
                "plural": "envoyfilters",
                "singular": "envoyfilter",
                "categories": ["istio-io", "networking-istio-io"],
            },
            "scope": "Namespaced",
            "versions": [{
                "name": "v1alpha3",
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "Istio's EnvoyFilter, as strait reads it (its rate-limit patches)",
                    "properties": {
                        "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    },
                    "required": ["spec"],
                }},
            }],
        },
    })
}

/// Every CRD, as the API server takes them.
pub fn all() -> Vec<Json> {
    let mut all: Vec<Json> = [
        ServiceEntry::crd(),
        WorkloadEntry::crd(),
        WorkloadGroup::crd(),
        DestinationRule::crd(),
        VirtualService::crd(),
        Gateway::crd(),
        PeerAuthentication::crd(),
        AuthorizationPolicy::crd(),
        RequestAuthentication::crd(),
    ]
    .into_iter()
    .map(finish)
    .collect();
    all.push(envoy_filter());
    all
}

/// Every CRD as one multi-document YAML stream, for `kubectl apply -f -`
/// (`--json`: one JSON document per line).
pub fn render(json: bool) -> String {
    all()
        .iter()
        .map(|crd| match json {
            true => format!("{crd}\n"),
            false => format!("---\n{}", serde_saphyr::to_string(crd).unwrap_or_default()),
        })
        .collect()
}

/// One version per Istio version (same schema), the schema made
/// structural and free of defaults: the checks, not the API server, decide
/// what an absent field means.
fn finish(crd: CustomResourceDefinition) -> Json {
    let mut crd = serde_json::to_value(crd).unwrap_or_default();
    let group = crd["spec"]["group"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let kind = crd["spec"]["names"]["kind"].clone();
    let mut version = crd["spec"]["versions"][0].take();
    if let Some(schema) = version.pointer_mut("/schema/openAPIV3Schema") {
        structural(schema);
        schema["description"] = json!(format!(
            "Istio's {}, as strait reads it",
            kind.as_str().unwrap_or_default()
        ));
    }
    let names = versions(&group);
    crd["spec"]["versions"] = names
        .iter()
        .map(|name| {
            let mut v = version.clone();
            v["name"] = json!(name);
            v["served"] = json!(true);
            v["storage"] = json!(*name == "v1");
            v
        })
        .collect();
    crd
}

/// Removes what a structural schema may not hold, or what would change
/// objects as the API server stores them: `additionalProperties: false`
/// beside `properties` (unknown fields are pruned instead), and `default`.
/// `nullable` goes too, as in Istio's CRDs: the API server publishes a
/// nullable field to kubectl without its schema, so kubectl would not
/// check what is inside it.
fn structural(schema: &mut Json) {
    match schema {
        Json::Object(map) => {
            map.remove("default");
            if map.get("nullable") == Some(&Json::Bool(true)) {
                map.remove("nullable");
            }
            if map.get("additionalProperties") == Some(&Json::Bool(false)) {
                map.remove("additionalProperties");
            }
            map.values_mut().for_each(structural);
        }
        Json::Array(items) => items.iter_mut().for_each(structural),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_crd_serves_istios_versions_and_requires_a_spec() {
        let crds = all();
        assert_eq!(crds.len(), 10);
        for crd in &crds {
            let name = crd["metadata"]["name"].as_str().unwrap();
            let versions = crd["spec"]["versions"].as_array().unwrap();
            let stored: Vec<&Json> = versions.iter().filter(|v| v["storage"] == true).collect();
            assert_eq!(stored.len(), 1, "{name}");
            // Istio serves EnvoyFilter only as v1alpha3.
            let want = if name == "envoyfilters.networking.istio.io" {
                "v1alpha3"
            } else {
                "v1"
            };
            assert_eq!(stored[0]["name"], want, "{name}");
            let schema = &versions[0]["schema"]["openAPIV3Schema"];
            let required = schema["required"].as_array().cloned().unwrap_or_default();
            assert!(required.contains(&json!("spec")), "{name}: {schema}");
            let text = schema.to_string();
            assert!(!text.contains("\"default\""), "{name}");
            assert!(!text.contains("\"nullable\""), "{name}");
            assert!(!text.contains("\"additionalProperties\":false"), "{name}");
        }
        let dr = &crds[3];
        assert_eq!(
            dr["metadata"]["name"],
            "destinationrules.networking.istio.io"
        );
        assert_eq!(dr["spec"]["names"]["shortNames"], json!(["dr"]));
        let spec = &dr["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["properties"]["host"]["type"], "string", "{spec}");
    }
}
