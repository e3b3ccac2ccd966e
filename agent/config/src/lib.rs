//! strait's config model: what the proxies know about workloads and
//! policies. Sources translate into it ([`local`]: a directory of Kubernetes
//! and Istio YAML manifests); the proxies only ever see the model.
pub mod duration;
pub mod local;
mod manifest;

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use serde::Serialize;

pub use local::{LoadError, load_dir};

/// Namespace labels that put a namespace in the mesh.
pub const ENROLL_LABELS: [(&str, &str); 2] = [
    ("istio.io/dataplane-mode", "ambient"),
    ("strait.dev/mesh", "enabled"),
];
/// Workload label that keeps one workload out of the mesh.
pub const OPT_OUT_LABEL: (&str, &str) = ("istio.io/dataplane-mode", "none");
/// Annotation naming the node a WorkloadEntry runs on.
pub const NODE_ANNOTATION: &str = "strait.dev/node";
/// Annotation naming a workload's network namespace (path), when it cannot
/// be found by address.
pub const NETNS_ANNOTATION: &str = "strait.dev/netns";
/// Annotation with a workload's further addresses (comma separated), for
/// dual-stack workloads: a WorkloadEntry has one `address`.
pub const ADDRESSES_ANNOTATION: &str = "strait.dev/addresses";

pub type Labels = BTreeMap<String, String>;

/// The whole model.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub trust_domain: String,
    /// Policies here apply mesh-wide (Istio's root namespace).
    pub root_namespace: String,
    pub namespaces: BTreeMap<String, Namespace>,
    pub workloads: Vec<Workload>,
    pub peer_authentications: Vec<PeerAuthentication>,
    /// Objects of kinds the model does not use, as `kind namespace/name`.
    pub ignored: Vec<String>,
    /// Workloads by address (index into `workloads`); see [`Config::reindex`].
    #[serde(skip)]
    by_address: std::collections::HashMap<IpAddr, usize>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            root_namespace: "istio-system".into(),
            namespaces: BTreeMap::new(),
            workloads: Vec::new(),
            peer_authentications: Vec::new(),
            ignored: Vec::new(),
            by_address: std::collections::HashMap::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

/// `region/zone/subzone`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    pub fn parse(text: &str) -> Self {
        let mut parts = text.splitn(3, '/').map(str::to_string);
        Self {
            region: parts.next().unwrap_or_default(),
            zone: parts.next().unwrap_or_default(),
            subzone: parts.next().unwrap_or_default(),
        }
    }
}

/// A workload: one pod or VM, with its addresses and identity.
#[derive(Clone, Debug, Serialize)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub addresses: Vec<IpAddr>,
    pub labels: Labels,
    pub service_account: String,
    pub locality: Locality,
    pub network: String,
    /// Named ports (`spec.ports`), for services that target them by name.
    pub ports: BTreeMap<String, u16>,
    /// Relative weight among a service's endpoints.
    pub weight: u32,
    /// The node it runs on; only that node's agent serves it.
    pub node: Option<String>,
    /// Its network namespace, when given explicitly.
    pub netns: Option<PathBuf>,
}

/// `mtls.mode` of a PeerAuthentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum MtlsMode {
    /// Inherit from the enclosing scope.
    Unset,
    Permissive,
    Strict,
    Disable,
}

#[derive(Clone, Debug, Serialize)]
pub struct PeerAuthentication {
    pub name: String,
    pub namespace: String,
    /// `selector.matchLabels`; none selects the whole namespace.
    pub selector: Option<Labels>,
    pub mode: MtlsMode,
    pub port_level: BTreeMap<u16, MtlsMode>,
}

impl Config {
    /// Whether `workload` is in the mesh: its namespace is labelled in and
    /// the workload itself does not opt out.
    pub fn enrolled(&self, workload: &Workload) -> bool {
        let ns_in = self.namespaces.get(&workload.namespace).is_some_and(|ns| {
            ENROLL_LABELS
                .iter()
                .any(|(k, v)| ns.labels.get(*k).map(String::as_str) == Some(*v))
        });
        let opted_out =
            workload.labels.get(OPT_OUT_LABEL.0).map(String::as_str) == Some(OPT_OUT_LABEL.1);
        ns_in && !opted_out
    }

    /// Rebuilds the address index after `workloads` changed (sources call
    /// it once they are done). The first workload with an address wins.
    pub fn reindex(&mut self) {
        self.by_address.clear();
        for (i, w) in self.workloads.iter().enumerate() {
            for ip in &w.addresses {
                self.by_address.entry(*ip).or_insert(i);
            }
        }
    }

    /// The workload that has `ip`, if any: on every proxied connection, so
    /// a hash lookup rather than a scan.
    pub fn workload_by_address(&self, ip: IpAddr) -> Option<&Workload> {
        self.by_address
            .get(&ip)
            .and_then(|i| self.workloads.get(*i))
    }

    /// Workloads scheduled on `node`.
    pub fn workloads_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Workload> + 'a {
        self.workloads
            .iter()
            .filter(move |w| w.node.as_deref() == Some(node))
    }

    /// The effective mTLS mode for connections to `workload` on `port`, by
    /// Istio's precedence: workload-selector policy over namespace policy over
    /// mesh policy, port-level settings over the policy's own; UNSET
    /// inherits; PERMISSIVE when nothing says otherwise.
    pub fn mtls_mode(&self, workload: &Workload, port: u16) -> MtlsMode {
        let mesh = self.scoped_policy(&self.root_namespace, None);
        let namespace = self.scoped_policy(&workload.namespace, None);
        let selected = self.scoped_policy(&workload.namespace, Some(workload));
        let mut mode = MtlsMode::Permissive;
        for policy in [mesh, namespace, selected].into_iter().flatten() {
            let m = policy
                .port_level
                .get(&port)
                .copied()
                .filter(|_| policy.selector.is_some())
                .unwrap_or(policy.mode);
            if m != MtlsMode::Unset {
                mode = m;
            }
        }
        mode
    }

    /// The policy of one scope: in `namespace`, without a selector (`None`),
    /// or selecting `workload`. Istio picks the oldest when several match; the
    /// local source has no creation times, so the first by name.
    fn scoped_policy(
        &self,
        namespace: &str,
        workload: Option<&Workload>,
    ) -> Option<&PeerAuthentication> {
        let mut matching: Vec<&PeerAuthentication> = self
            .peer_authentications
            .iter()
            .filter(|p| p.namespace == namespace)
            .filter(|p| match (workload, &p.selector) {
                (None, None) => true,
                (Some(w), Some(sel)) => sel.iter().all(|(k, v)| w.labels.get(k) == Some(v)),
                _ => false,
            })
            .collect();
        matching.sort_by(|a, b| a.name.cmp(&b.name));
        matching.first().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(ns: &str, labels: &[(&str, &str)]) -> Workload {
        Workload {
            name: "w".into(),
            namespace: ns.into(),
            addresses: vec!["10.0.0.1".parse().unwrap()],
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            service_account: "default".into(),
            locality: Locality::default(),
            network: String::new(),
            ports: BTreeMap::new(),
            weight: 1,
            node: None,
            netns: None,
        }
    }

    fn ns(name: &str, labels: &[(&str, &str)]) -> (String, Namespace) {
        (
            name.into(),
            Namespace {
                name: name.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
        )
    }

    fn pa(
        ns: &str,
        selector: Option<&[(&str, &str)]>,
        mode: MtlsMode,
        ports: &[(u16, MtlsMode)],
    ) -> PeerAuthentication {
        PeerAuthentication {
            name: format!("pa-{ns}"),
            namespace: ns.into(),
            selector: selector.map(|s| {
                s.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
            mode,
            port_level: ports.iter().copied().collect(),
        }
    }

    #[test]
    fn enrollment_follows_namespace_labels_and_opt_out() {
        let cfg = Config {
            namespaces: [
                ns("ambient", &[("istio.io/dataplane-mode", "ambient")]),
                ns("strait", &[("strait.dev/mesh", "enabled")]),
                ns("plain", &[]),
            ]
            .into(),
            ..Config::default()
        };
        assert!(cfg.enrolled(&workload("ambient", &[])));
        assert!(cfg.enrolled(&workload("strait", &[])));
        assert!(!cfg.enrolled(&workload("plain", &[])));
        assert!(!cfg.enrolled(&workload("missing", &[])));
        assert!(!cfg.enrolled(&workload("ambient", &[("istio.io/dataplane-mode", "none")])));
    }

    #[test]
    fn mtls_mode_precedence() {
        let w = workload("app", &[("app", "db")]);
        let mut cfg = Config::default();
        assert_eq!(cfg.mtls_mode(&w, 80), MtlsMode::Permissive, "default");

        cfg.peer_authentications
            .push(pa("istio-system", None, MtlsMode::Strict, &[]));
        assert_eq!(cfg.mtls_mode(&w, 80), MtlsMode::Strict, "mesh-wide");

        cfg.peer_authentications
            .push(pa("app", None, MtlsMode::Permissive, &[]));
        assert_eq!(
            cfg.mtls_mode(&w, 80),
            MtlsMode::Permissive,
            "namespace over mesh"
        );

        cfg.peer_authentications.push(pa(
            "app",
            Some(&[("app", "db")]),
            MtlsMode::Unset,
            &[(5432, MtlsMode::Strict)],
        ));
        assert_eq!(
            cfg.mtls_mode(&w, 80),
            MtlsMode::Permissive,
            "UNSET inherits"
        );
        assert_eq!(cfg.mtls_mode(&w, 5432), MtlsMode::Strict, "port level");

        let other = workload("app", &[("app", "web")]);
        assert_eq!(
            cfg.mtls_mode(&other, 5432),
            MtlsMode::Permissive,
            "selector does not match"
        );
    }

    #[test]
    fn locality_parses_partial_forms() {
        assert_eq!(
            Locality::parse("r/z/s"),
            Locality {
                region: "r".into(),
                zone: "z".into(),
                subzone: "s".into()
            }
        );
        assert_eq!(Locality::parse("r").zone, "");
        assert_eq!(Locality::parse("").region, "");
    }
}
