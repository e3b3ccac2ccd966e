//! Declaring a topology, and the address plan that turns it into numbers.
//!
//! A **network** is a routing domain: nodes on the same network route to each
//! other's pod subnets; nodes on different networks do not route to each
//! other at all. Nodes marked as **gateways** also get an address on a shared
//! "internet" segment, which is the only place networks meet. A **cluster** is
//! a label on nodes (several clusters can share a network, as in Istio's
//! multi-primary single-network model).
//!
//! Address plan (node `k` is the node's 1-based position in the spec, pod `i`
//! its 0-based position on its node):
//!
//! | what | IPv4 | IPv6 |
//! |---|---|---|
//! | pod subnet of node k | `10.k.0.0/24`, gateway `.1` | `fd00:10:k::/64`, gateway `::1` |
//! | pod i of node k | `10.k.0.(10+i)` | `fd00:10:k::(10+i)` (hex) |
//! | node k on network n | `172.16.n.k/24` | `fd00:172:16:n::k/64` |
//! | gateway node k on the internet | `100.64.0.k/24` | `fd00:100:64::k/64` |
//!
//! Other nodes reach the internet segment through the first gateway node of
//! their network, which masquerades what it forwards there.
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
};

use crate::Error;

const MAX_NAME: usize = 24;
const MAX_NODES: usize = 250;
const MAX_PODS_PER_NODE: usize = 200;

/// `region/zone/subzone`, as Istio writes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    pub fn new(region: &str, zone: &str, subzone: &str) -> Self {
        Self {
            region: region.into(),
            zone: zone.into(),
            subzone: subzone.into(),
        }
    }
}

impl std::fmt::Display for Locality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Istio's form: trailing empty parts are left out.
        let parts = [&self.region, &self.zone, &self.subzone];
        let used = parts
            .iter()
            .rposition(|p| !p.is_empty())
            .map_or(0, |i| i + 1);
        let text: Vec<&str> = parts[..used].iter().map(|p| p.as_str()).collect();
        f.write_str(&text.join("/"))
    }
}

#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub cluster: String,
    pub network: String,
    pub locality: Locality,
    pub gateway: bool,
}

#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub node: String,
}

/// What to build. Declare with the builder methods, then `Topology::create`.
#[derive(Clone, Debug, Default)]
pub struct Spec {
    pub(crate) nodes: Vec<NodeSpec>,
    pub(crate) pods: Vec<PodSpec>,
}

impl Spec {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node; its network is created on first mention.
    pub fn node(mut self, name: &str, cluster: &str, network: &str, locality: Locality) -> Self {
        self.nodes.push(NodeSpec {
            name: name.into(),
            cluster: cluster.into(),
            network: network.into(),
            locality,
            gateway: false,
        });
        self
    }

    /// Like [`Spec::node`], for a node that also sits on the internet segment.
    pub fn gateway_node(
        self,
        name: &str,
        cluster: &str,
        network: &str,
        locality: Locality,
    ) -> Self {
        let mut spec = self.node(name, cluster, network, locality);
        if let Some(node) = spec.nodes.last_mut() {
            node.gateway = true;
        }
        spec
    }

    pub fn pod(mut self, name: &str, node: &str) -> Self {
        self.pods.push(PodSpec {
            name: name.into(),
            node: node.into(),
        });
        self
    }

    pub fn nodes(&self) -> &[NodeSpec] {
        &self.nodes
    }

    pub fn pods(&self) -> &[PodSpec] {
        &self.pods
    }

    /// Networks in order of first mention.
    pub fn networks(&self) -> Vec<&str> {
        let mut seen = BTreeSet::new();
        self.nodes
            .iter()
            .map(|n| n.network.as_str())
            .filter(|n| seen.insert(*n))
            .collect()
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let bad = |what: String| Err(Error::Spec(what));
        if self.nodes.is_empty() {
            return bad("a topology needs at least one node".into());
        }
        if self.nodes.len() > MAX_NODES {
            return bad(format!("{} nodes; at most {MAX_NODES}", self.nodes.len()));
        }
        if self.networks().len() > 250 {
            return bad("more than 250 networks".into());
        }
        let mut names = BTreeSet::new();
        for node in &self.nodes {
            check_name("node", &node.name)?;
            check_name("network", &node.network)?;
            if !names.insert(("node", node.name.as_str())) {
                return bad(format!("node {} is declared twice", node.name));
            }
        }
        for pod in &self.pods {
            check_name("pod", &pod.name)?;
            if !names.insert(("pod", pod.name.as_str())) {
                return bad(format!("pod {} is declared twice", pod.name));
            }
            if !self.nodes.iter().any(|n| n.name == pod.node) {
                return bad(format!(
                    "pod {} is on node {}, which is not declared",
                    pod.name, pod.node
                ));
            }
        }
        for node in &self.nodes {
            let pods = self.pods.iter().filter(|p| p.node == node.name).count();
            if pods > MAX_PODS_PER_NODE {
                return bad(format!(
                    "node {} has {pods} pods; at most {MAX_PODS_PER_NODE}",
                    node.name
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn node_index(&self, node: &str) -> Option<u8> {
        let i = self.nodes.iter().position(|n| n.name == node)?;
        u8::try_from(i + 1).ok()
    }

    pub(crate) fn network_index(&self, network: &str) -> Option<u8> {
        let i = self.networks().iter().position(|n| *n == network)?;
        u8::try_from(i + 1).ok()
    }

    pub(crate) fn pod_slot(&self, pod: &PodSpec) -> Option<u8> {
        let i = self
            .pods
            .iter()
            .filter(|p| p.node == pod.node)
            .position(|p| p.name == pod.name)?;
        u8::try_from(i).ok()
    }
}

/// Names become parts of netns, cgroup and file names: keep them tame.
fn check_name(what: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::Spec(format!(
            "{what} name {name:?} must be 1-{MAX_NAME} of [a-z0-9-], not starting with '-'"
        )))
    }
}

/// Addresses of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeAddrs {
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub pod_gateway_v4: Ipv4Addr,
    pub pod_gateway_v6: Ipv6Addr,
    /// On the internet segment; only gateway nodes have them.
    pub internet: Option<(Ipv4Addr, Ipv6Addr)>,
}

pub(crate) fn node_addrs(k: u8, network: u8, gateway: bool) -> NodeAddrs {
    NodeAddrs {
        ipv4: Ipv4Addr::new(172, 16, network, k),
        ipv6: Ipv6Addr::new(0xfd00, 0x172, 0x16, network.into(), 0, 0, 0, k.into()),
        pod_gateway_v4: Ipv4Addr::new(10, k, 0, 1),
        pod_gateway_v6: Ipv6Addr::new(0xfd00, 0x10, k.into(), 0, 0, 0, 0, 1),
        internet: gateway.then(|| {
            (
                Ipv4Addr::new(100, 64, 0, k),
                Ipv6Addr::new(0xfd00, 0x100, 0x64, 0, 0, 0, 0, k.into()),
            )
        }),
    }
}

pub(crate) fn pod_addrs(k: u8, slot: u8) -> (Ipv4Addr, Ipv6Addr) {
    let host = 10 + slot;
    (
        Ipv4Addr::new(10, k, 0, host),
        Ipv6Addr::new(0xfd00, 0x10, k.into(), 0, 0, 0, 0, host.into()),
    )
}

/// The internet segment's subnets.
pub(crate) fn internet_subnets() -> (&'static str, &'static str) {
    ("100.64.0.0/24", "fd00:100:64::/64")
}

pub(crate) fn pod_subnets(k: u8) -> (String, String) {
    (format!("10.{k}.0.0/24"), format!("fd00:10:{k:x}::/64"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_by_two() -> Spec {
        Spec::new()
            .gateway_node("a1", "c1", "net1", Locality::new("r1", "z1", ""))
            .node("a2", "c1", "net1", Locality::new("r1", "z2", ""))
            .gateway_node("b1", "c2", "net2", Locality::new("r2", "z1", ""))
            .pod("p1", "a1")
            .pod("p2", "a1")
            .pod("p3", "b1")
    }

    #[test]
    fn locality_prints_as_istio_writes_it() {
        assert_eq!(Locality::new("r1", "z1", "s1").to_string(), "r1/z1/s1");
        assert_eq!(Locality::new("r1", "z1", "").to_string(), "r1/z1");
        assert_eq!(Locality::new("r1", "", "").to_string(), "r1");
        assert_eq!(Locality::default().to_string(), "");
    }

    #[test]
    fn valid_spec_passes() {
        two_by_two().validate().unwrap();
    }

    #[test]
    fn networks_keep_first_mention_order() {
        assert_eq!(two_by_two().networks(), ["net1", "net2"]);
    }

    #[test]
    fn pods_get_slots_per_node() {
        let spec = two_by_two();
        let slots: Vec<_> = spec.pods.iter().map(|p| spec.pod_slot(p)).collect();
        assert_eq!(slots, [Some(0), Some(1), Some(0)]);
    }

    #[test]
    fn addresses_follow_the_plan() {
        let a = node_addrs(3, 2, true);
        assert_eq!(a.ipv4, Ipv4Addr::new(172, 16, 2, 3));
        assert_eq!(a.ipv6.to_string(), "fd00:172:16:2::3");
        assert_eq!(a.internet.unwrap().0, Ipv4Addr::new(100, 64, 0, 3));
        assert!(node_addrs(3, 2, false).internet.is_none());
        let (v4, v6) = pod_addrs(12, 1);
        assert_eq!(v4, Ipv4Addr::new(10, 12, 0, 11));
        assert_eq!(v6.to_string(), "fd00:10:c::b");
        assert_eq!(pod_subnets(12).1, "fd00:10:c::/64");
    }

    #[test]
    fn bad_specs_name_the_problem() {
        let cases = [
            (Spec::new(), "at least one node"),
            (two_by_two().pod("p1", "a2"), "pod p1 is declared twice"),
            (
                two_by_two().pod("p9", "zz"),
                "node zz, which is not declared",
            ),
            (two_by_two().pod("Bad_Name", "a1"), "pod name \"Bad_Name\""),
            (
                two_by_two().node("a1", "c1", "net1", Locality::default()),
                "node a1 is declared twice",
            ),
        ];
        for (spec, want) in cases {
            let err = spec.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }
}
