//! How the controller makes waypoints: a JSON file the chart renders from
//! its values (`waypoints.*`), read once at start (the chart rolls the
//! controller when it changes).
use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;
use serde_json::Value as Json;

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Settings {
    /// The image holding `strait-waypoint`.
    pub image: String,
    #[serde(default = "if_not_present")]
    pub image_pull_policy: String,
    #[serde(default)]
    pub image_pull_secrets: Vec<Json>,
    /// Where waypoints find the CA (`--ca-addr`).
    pub ca_address: String,
    /// This cluster's name (`--cluster`).
    pub cluster: String,
    pub cert_lifetime: String,
    pub log_level: String,
    /// The ConfigMap the CA publishes its roots in; copied into each
    /// waypoint's namespace as [`crate::objects::ROOTS`], since a pod mounts
    /// only its own namespace's ConfigMaps.
    pub roots_config_map: ObjectRef,
    /// Istio's meshConfig (key `mesh`), for the external authorizers CUSTOM
    /// policies name; copied into each waypoint's namespace as
    /// [`crate::objects::MESH`] and read by its pods (`--mesh-config`).
    #[serde(default)]
    pub mesh_config_map: Option<ObjectRef>,
    /// The ClusterRole (reads only) each waypoint's ServiceAccount is
    /// bound to.
    pub cluster_role: String,
    /// As the agents' `--east-west-gateway-namespaces`: every model of the
    /// mesh is built with the same list.
    #[serde(default)]
    pub east_west_gateway_namespaces: Vec<String>,
    pub replicas: u32,
    #[serde(default)]
    pub resources: Json,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub tolerations: Vec<Json>,
    /// How long a waypoint's requests in flight may take to finish on
    /// SIGTERM; the pod's grace period is a few seconds more.
    pub drain_seconds: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

fn if_not_present() -> String {
    "IfNotPresent".into()
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {source}")]
    Parse {
        file: String,
        source: serde_json::Error,
    },
    #[error("{file}: {field}: {reason}")]
    Invalid {
        file: String,
        field: &'static str,
        reason: String,
    },
}

impl Settings {
    pub fn read(path: &Path) -> Result<Self, SettingsError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&text, &file)
    }

    pub fn parse(text: &str, file: &str) -> Result<Self, SettingsError> {
        let settings: Self = serde_json::from_str(text).map_err(|source| SettingsError::Parse {
            file: file.into(),
            source,
        })?;
        let invalid = |field, reason: String| SettingsError::Invalid {
            file: file.into(),
            field,
            reason,
        };
        for (field, value) in [
            ("image", &settings.image),
            ("caAddress", &settings.ca_address),
            ("cluster", &settings.cluster),
            ("clusterRole", &settings.cluster_role),
        ] {
            if value.trim().is_empty() {
                return Err(invalid(field, "is empty".into()));
            }
        }
        strait_config::duration::parse(&settings.cert_lifetime)
            .map_err(|why| invalid("certLifetime", why.to_string()))?;
        if !matches!(
            settings.image_pull_policy.as_str(),
            "Always" | "IfNotPresent" | "Never"
        ) {
            return Err(invalid(
                "imagePullPolicy",
                format!(
                    "{:?}: must be Always, IfNotPresent or Never",
                    settings.image_pull_policy
                ),
            ));
        }
        if settings.replicas == 0 {
            return Err(invalid(
                "replicas",
                "is 0: a waypoint with no instance drops what is sent to it".into(),
            ));
        }
        if !(settings.resources.is_null() || settings.resources.is_object()) {
            return Err(invalid("resources", "is not an object".into()));
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const GOOD: &str = r#"{
        "image": "localhost/strait:0.1.0",
        "caAddress": "strait-ca.strait-system.svc:15012",
        "cluster": "c1",
        "certLifetime": "24h",
        "logLevel": "info",
        "rootsConfigMap": {"namespace": "strait-system", "name": "strait-ca-roots"},
        "clusterRole": "strait-waypoint",
        "replicas": 1,
        "drainSeconds": 5
    }"#;

    #[test]
    fn good_settings_read_and_bad_ones_name_the_field() {
        let s = Settings::parse(GOOD, "s.json").unwrap();
        assert_eq!(s.image_pull_policy, "IfNotPresent");
        let unknown = GOOD.replace("\"replicas\"", "\"replica\"");
        let err = Settings::parse(&unknown, "s.json").unwrap_err().to_string();
        assert!(err.starts_with("s.json: unknown field `replica`"), "{err}");
        let zero = GOOD.replace("\"replicas\": 1", "\"replicas\": 0");
        let err = Settings::parse(&zero, "s.json").unwrap_err().to_string();
        assert!(err.starts_with("s.json: replicas: is 0"), "{err}");
        let life = GOOD.replace("24h", "a day");
        let err = Settings::parse(&life, "s.json").unwrap_err().to_string();
        assert!(err.starts_with("s.json: certLifetime: "), "{err}");
    }
}
