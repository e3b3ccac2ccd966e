//! `gateway.networking.k8s.io` (v1, v1beta1): the Gateway, as users write
//! it. strait reads Gateways of class `istio-east-west`.
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct GatewaySpec {
    pub gateway_class_name: String,
    pub listeners: Vec<Listener>,
    pub addresses: Vec<GatewayAddress>,
    /// Labels and annotations for what the controller makes, and a
    /// parameters reference: for the deployer, not the dataplane.
    pub infrastructure: Option<serde_json::Value>,
    pub allowed_listeners: Option<serde_json::Value>,
    #[serde(rename = "backendTLS")]
    pub backend_tls: Option<serde_json::Value>,
    pub default_scope: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Listener {
    pub name: String,
    pub hostname: Option<String>,
    pub port: u32,
    pub protocol: String,
    pub tls: Option<serde_json::Value>,
    pub allowed_routes: Option<serde_json::Value>,
}

/// `type` is `IPAddress` (the default), `Hostname` or a domain-prefixed
/// implementation type.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct GatewayAddress {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub value: String,
}
