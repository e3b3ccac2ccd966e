//! The shapes of the Kubernetes and Istio objects the model is built from,
//! as they appear in YAML. Specs reject unknown fields: a typo must not pass
//! silently as a default.
use std::collections::BTreeMap;

use serde::Deserialize;

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

/// An object with a typed spec.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Object<S> {
    #[serde(rename = "apiVersion")]
    pub _api_version: String,
    #[serde(rename = "kind")]
    pub _kind: String,
    #[serde(rename = "metadata")]
    pub _metadata: serde::de::IgnoredAny,
    #[serde(default = "Option::default")]
    pub spec: Option<S>,
    #[serde(default, rename = "status")]
    pub _status: Option<serde::de::IgnoredAny>,
}

/// `networking.istio.io` WorkloadEntry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadEntrySpec {
    pub address: Option<String>,
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    #[serde(default)]
    pub labels: Labels,
    pub network: Option<String>,
    pub locality: Option<String>,
    pub weight: Option<u32>,
    pub service_account: Option<String>,
}

/// `security.istio.io` PeerAuthentication.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    pub selector: Option<Selector>,
    pub mtls: Option<Mtls>,
    #[serde(default)]
    pub port_level_mtls: BTreeMap<u32, Mtls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    #[serde(default)]
    pub match_labels: Labels,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mtls {
    pub mode: Option<String>,
}
