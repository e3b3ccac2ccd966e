//! Limits as Envoy's reference rate-limit service writes them: one YAML
//! file per `domain`, a tree of `descriptors` (`key`, an optional `value`,
//! a `rate_limit` of `requests_per_unit` per `unit`, nested
//! `descriptors`). A request's descriptor (its entries in order) takes the
//! limit of the node its last entry reaches, matching at each level the
//! node with its key and value, else the one with its key and no value
//! (then each value is counted apart). Errors name the file and field.
use std::{collections::HashMap, path::Path, time::Duration};

use serde::Deserialize;

use crate::proto::Unit;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    domain: String,
    #[serde(default)]
    descriptors: Vec<Node>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub rate_limit: Option<Limit>,
    #[serde(default)]
    pub descriptors: Vec<Node>,
    /// Counted, never refused.
    #[serde(default)]
    pub shadow_mode: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub requests_per_unit: u32,
    #[serde(default)]
    pub unlimited: bool,
}

impl Limit {
    pub fn unit(&self) -> Unit {
        match self.unit.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("minute") => Unit::Minute,
            Some("hour") => Unit::Hour,
            Some("day") => Unit::Day,
            _ => Unit::Second,
        }
    }

    pub fn window(&self) -> Duration {
        Duration::from_secs(match self.unit() {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3600,
            Unit::Day => 86_400,
        })
    }
}

/// What a descriptor matched: its limit, the counter's name (domain and
/// entries), and whether it is only counted.
pub struct Matched<'a> {
    pub limit: &'a Limit,
    pub key: String,
    pub shadow: bool,
}

#[derive(Debug, Default)]
pub struct Limits {
    domains: HashMap<String, Vec<Node>>,
}

impl Limits {
    /// Reads the files (one domain each).
    pub fn read(paths: &[impl AsRef<Path>]) -> Result<Self, String> {
        let mut limits = Self::default();
        for path in paths {
            let path = path.as_ref();
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            limits
                .add(&text)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(limits)
    }

    /// Adds one file's domain.
    pub fn add(&mut self, text: &str) -> Result<(), String> {
        let file: File = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        if file.domain.is_empty() {
            return Err("field domain: is required".into());
        }
        check(&file.descriptors, "descriptors")?;
        if self
            .domains
            .insert(file.domain.clone(), file.descriptors)
            .is_some()
        {
            return Err(format!("field domain: {:?} is in two files", file.domain));
        }
        Ok(())
    }

    /// The limit for one descriptor of `domain`, if any.
    pub fn find<'a>(&'a self, domain: &str, entries: &[(String, String)]) -> Option<Matched<'a>> {
        let mut level = self.domains.get(domain)?;
        let mut key = domain.to_string();
        for (i, (k, v)) in entries.iter().enumerate() {
            let node = level
                .iter()
                .find(|n| n.key == *k && n.value.as_deref() == Some(v.as_str()))
                .or_else(|| level.iter().find(|n| n.key == *k && n.value.is_none()))?;
            key.push_str(&format!("_{k}_{v}"));
            if i + 1 == entries.len() {
                let limit = node.rate_limit.as_ref()?;
                return Some(Matched {
                    limit,
                    key,
                    shadow: node.shadow_mode,
                });
            }
            level = &node.descriptors;
        }
        None
    }
}

fn check(nodes: &[Node], path: &str) -> Result<(), String> {
    for (i, node) in nodes.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if node.key.is_empty() {
            return Err(format!("field {at}.key: is required"));
        }
        if let Some(limit) = &node.rate_limit {
            let unit = limit.unit.as_deref().map(str::to_ascii_lowercase);
            if !limit.unlimited {
                if !matches!(unit.as_deref(), Some("second" | "minute" | "hour" | "day")) {
                    return Err(format!(
                        "field {at}.rate_limit.unit: {:?} is not second, minute, hour or day",
                        limit.unit.as_deref().unwrap_or("")
                    ));
                }
                if limit.requests_per_unit == 0 {
                    return Err(format!(
                        "field {at}.rate_limit.requests_per_unit: is required"
                    ));
                }
            }
        }
        check(&node.descriptors, &format!("{at}.descriptors"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_descriptor_takes_its_deepest_limit_and_values_override_the_default() {
        let mut limits = Limits::default();
        limits
            .add(
                "domain: ratelimit
descriptors:
- key: PATH
  value: /productpage
  rate_limit: {unit: minute, requests_per_unit: 1}
- key: PATH
  rate_limit: {unit: minute, requests_per_unit: 100}
- key: remote_address
  descriptors:
  - key: PATH
    rate_limit: {unit: second, requests_per_unit: 5}
",
            )
            .unwrap();
        let product = limits
            .find("ratelimit", &entries(&[("PATH", "/productpage")]))
            .unwrap();
        assert_eq!(product.limit.requests_per_unit, 1);
        let other = limits
            .find("ratelimit", &entries(&[("PATH", "/x")]))
            .unwrap();
        assert_eq!(other.limit.requests_per_unit, 100);
        assert_eq!(other.key, "ratelimit_PATH_/x");
        let nested = limits
            .find(
                "ratelimit",
                &entries(&[("remote_address", "10.0.0.1"), ("PATH", "/")]),
            )
            .unwrap();
        assert_eq!(
            (nested.limit.requests_per_unit, nested.limit.window()),
            (5, Duration::from_secs(1))
        );
        assert!(
            limits
                .find("ratelimit", &entries(&[("remote_address", "10.0.0.1")]))
                .is_none()
        );
        assert!(limits.find("other", &entries(&[("PATH", "/")])).is_none());
    }

    #[test]
    fn bad_limits_are_refused_naming_the_field() {
        for (text, want) in [
            ("descriptors: []\n", "domain"),
            (
                "domain: d\ndescriptors:\n- key: a\n  rate_limit: {unit: week, requests_per_unit: 1}\n",
                "descriptors[0].rate_limit.unit",
            ),
            (
                "domain: d\ndescriptors:\n- key: a\n  ratelimit: {}\n",
                "ratelimit",
            ),
        ] {
            let err = Limits::default().add(text).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
    }
}
