//! Endpoint choice for one connection to a service, from the client's point
//! of view, by the rules of DESIGN.md (Istio's):
//!
//! - without a rule, priority levels by locality: same region/zone/subzone,
//!   then same zone, then same region, then elsewhere;
//! - DestinationRule `localityLbSetting`: `failover` (region → region: the
//!   target region comes before every other region), `failoverPriority`
//!   (endpoints matching more leading labels come first), `distribute`
//!   (weights per client locality; endpoints of unlisted localities get
//!   nothing), `enabled: false` (one level);
//! - a Service's `trafficDistribution` (PreferClose / PreferSameZone: same
//!   zone first; PreferSameNode: same node, then same zone);
//! - without `distribute` or `failoverPriority`, the client's own network
//!   before any other (reached through east-west gateways), each by the
//!   levels above.
//!
//! Lower levels take connections only when the levels above have no
//! endpoint left to try: [`order`] lists every eligible endpoint, level by
//! level, in a weighted random order within each level.
pub mod load;
pub mod outlier;

pub use load::Simple;

use strait_config::{
    Labels, Locality, Workload, manifest::networking::LocalityLbSetting, service::Endpoint,
};

/// Labels `failoverPriority` may name that come from the topology rather
/// than from the workload's own labels.
pub const NETWORK: &str = "topology.istio.io/network";
pub const CLUSTER: &str = "topology.istio.io/cluster";
pub const REGION: &str = "topology.kubernetes.io/region";
pub const ZONE: &str = "topology.kubernetes.io/zone";
pub const SUBZONE: &str = "topology.istio.io/subzone";
pub const HOSTNAME: &str = "kubernetes.io/hostname";

/// Added to the level of an endpoint on another network than the
/// client's, past every locality level, when no rule orders networks.
pub const OTHER_NETWORK: u32 = 10;

/// Where a connection comes from.
#[derive(Clone, Copy, Debug)]
pub struct Client<'a> {
    pub locality: &'a Locality,
    pub network: &'a str,
    /// The cluster of the client's node, when known.
    pub cluster: &'a str,
    pub node: &'a str,
    pub labels: &'a Labels,
}

/// What decides the order, besides the endpoints.
#[derive(Clone, Copy, Debug, Default)]
pub struct Policy<'a> {
    /// The DestinationRule's `localityLbSetting`, if any.
    pub locality: Option<&'a LocalityLbSetting>,
    /// The Service's `trafficDistribution`, if any.
    pub traffic_distribution: Option<&'a str>,
}

/// An endpoint with its priority level (0 is first) and its share within
/// the level.
#[derive(Clone, Copy, Debug)]
pub struct Ranked<'a> {
    pub endpoint: Endpoint<'a>,
    pub priority: u32,
    pub weight: f64,
    /// Endpoints of one `distribute` locality share a group: within a level
    /// a group is chosen first, by its weight, then an endpoint in it by the
    /// `simple` policy (Envoy's locality-weighted balancing). 0 otherwise.
    pub group: u32,
}

/// The cluster an endpoint's workload is in: its own label, else its
/// node's (callers pass a lookup over the config's nodes).
pub type ClusterOf<'a> = &'a dyn Fn(&Workload) -> String;

/// Every eligible endpoint with its level and weight, in no particular
/// order.
pub fn rank<'a>(
    client: &Client<'_>,
    endpoints: &[Endpoint<'a>],
    policy: Policy<'_>,
    cluster_of: ClusterOf<'_>,
) -> Vec<Ranked<'a>> {
    let weight = |e: &Endpoint<'_>| f64::from(e.workload.weight.max(1));
    let setting = policy.locality.filter(|s| s.enabled != Some(false));
    if let Some(setting) = setting {
        if let Some(rule) = setting
            .distribute
            .iter()
            .find(|d| locality_matches(&d.from, client.locality))
        {
            return distribute(&rule.to, endpoints);
        }
        if !setting.failover_priority.is_empty() {
            return endpoints
                .iter()
                .map(|e| Ranked {
                    endpoint: *e,
                    priority: label_priority(
                        client,
                        e.workload,
                        &setting.failover_priority,
                        cluster_of,
                    ),
                    weight: weight(e),
                    group: 0,
                })
                .collect();
        }
    }
    if policy.locality.is_some_and(|s| s.enabled == Some(false)) {
        return endpoints
            .iter()
            .map(|e| Ranked {
                endpoint: *e,
                priority: 0,
                weight: weight(e),
                group: 0,
            })
            .collect();
    }
    let failover_to: Option<&str> = setting.and_then(|s| {
        s.failover
            .iter()
            .find(|f| f.from == client.locality.region)
            .map(|f| f.to.as_str())
    });
    endpoints
        .iter()
        .map(|e| {
            let w = e.workload;
            // Another network is behind a gateway: it comes after every
            // level of the client's own network.
            let network = if w.network == client.network {
                0
            } else {
                OTHER_NETWORK
            };
            let priority = network
                + match policy.traffic_distribution {
                    Some("PreferClose" | "PreferSameZone") if setting.is_none() => {
                        u32::from(!same_zone(client.locality, &w.locality))
                    }
                    Some("PreferSameNode") if setting.is_none() => {
                        if w.node.as_deref() == Some(client.node) {
                            0
                        } else if same_zone(client.locality, &w.locality) {
                            1
                        } else {
                            2
                        }
                    }
                    _ => locality_priority(client.locality, &w.locality, failover_to),
                };
            Ranked {
                endpoint: *e,
                priority,
                weight: weight(e),
                group: 0,
            }
        })
        .collect()
}

/// [`rank`], then the order to try them: level by level; within a level,
/// as `simple` says (`turn` is the service's ROUND_ROBIN turn, `active`
/// an endpoint's open connections, `random` yields numbers in (0, 1]).
pub fn order<'a>(
    ranked: Vec<Ranked<'a>>,
    simple: Simple,
    turn: usize,
    active: &dyn Fn(std::net::SocketAddr) -> usize,
    mut random: impl FnMut() -> f64,
) -> Vec<Endpoint<'a>> {
    let mut levels: std::collections::BTreeMap<u32, Vec<Ranked<'a>>> = Default::default();
    for r in ranked.into_iter().filter(|r| r.weight > 0.0) {
        levels.entry(r.priority).or_default().push(r);
    }
    let mut out = Vec::new();
    for (_, level) in levels {
        let mut groups: std::collections::BTreeMap<u32, Vec<Ranked<'a>>> = Default::default();
        for r in level {
            groups.entry(r.group).or_default().push(r);
        }
        let mut groups: Vec<(f64, Vec<Ranked<'a>>)> = groups
            .into_values()
            .map(|g| (g.iter().map(|r| r.weight).sum(), g))
            .collect();
        // The first group by weight: weighted random, or the turn's point
        // for ROUND_ROBIN; the others follow in weighted random order, for
        // the attempts after the first.
        let first = match simple {
            Simple::RoundRobin if groups.len() > 1 => {
                let weights: Vec<f64> = groups.iter().map(|(w, _)| *w).collect();
                Some(on_turn(&weights, turn))
            }
            _ => None,
        };
        let mut head = first.map(|i| groups.remove(i));
        let mut keyed: Vec<(f64, Vec<Ranked<'a>>)> = groups
            .into_iter()
            .map(|(w, g)| {
                let u = match simple {
                    Simple::SourceHash(key) => {
                        let first = g.first().map(|r| r.endpoint.addr.to_string());
                        load::unit(load::hash_of(&first.unwrap_or_default(), key))
                    }
                    _ => random(),
                };
                (u.powf(1.0 / w), g)
            })
            .collect();
        keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
        for group in head
            .take()
            .map(|(_, g)| g)
            .into_iter()
            .chain(keyed.into_iter().map(|(_, g)| g))
        {
            out.extend(
                order_group(group, simple, turn, active, &mut random)
                    .into_iter()
                    .map(|r| r.endpoint),
            );
        }
    }
    out
}

/// Index of the entry `turn` lands on, spreading turns evenly over the
/// cumulative `weights` (a golden-ratio sequence).
fn on_turn(weights: &[f64], turn: usize) -> usize {
    let total: f64 = weights.iter().sum();
    let point = (turn as f64 * 0.618_033_988_749_895).fract() * total;
    let mut acc = 0.0;
    weights
        .iter()
        .position(|w| {
            acc += w;
            point < acc
        })
        .unwrap_or(weights.len().saturating_sub(1))
}

/// One group's endpoints in the order to try them, by `simple`.
fn order_group<'a>(
    group: Vec<Ranked<'a>>,
    simple: Simple,
    turn: usize,
    active: &dyn Fn(std::net::SocketAddr) -> usize,
    random: &mut impl FnMut() -> f64,
) -> Vec<Ranked<'a>> {
    // Weighted random order (Efraimidis–Spirakis): sort by u^(1/w); with a
    // source hash, u is the hash of (source, endpoint), which makes it
    // weighted rendezvous hashing.
    let mut keyed: Vec<(f64, Ranked<'a>)> = group
        .into_iter()
        .map(|r| {
            let u = match simple {
                Simple::SourceHash(key) => {
                    load::unit(load::hash_of(&r.endpoint.addr.to_string(), key))
                }
                _ => random(),
            };
            (u.powf(1.0 / r.weight), r)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut level: Vec<Ranked<'a>> = keyed.into_iter().map(|(_, r)| r).collect();
    match simple {
        Simple::Random | Simple::SourceHash(_) | Simple::Passthrough => {}
        Simple::LeastRequest | Simple::RequestHash => {
            if level.len() >= 2 && active(level[1].endpoint.addr) < active(level[0].endpoint.addr) {
                level.swap(0, 1);
            }
        }
        Simple::RoundRobin => {
            // In a stable (address) order: an even spread by weight.
            let mut stable = level.clone();
            stable.sort_by_key(|r| r.endpoint.addr);
            let weights: Vec<f64> = stable.iter().map(|r| r.weight).collect();
            let first = stable.get(on_turn(&weights, turn)).map(|r| r.endpoint.addr);
            if let Some(i) = level.iter().position(|r| Some(r.endpoint.addr) == first) {
                let chosen = level.remove(i);
                level.insert(0, chosen);
            }
        }
    }
    level
}

/// Istio's levels: 0 same region/zone/subzone, 1 same region and zone, 2
/// same region, then (with a failover rule) 3 the failover region and 4
/// the rest; without one, 3 the rest.
fn locality_priority(client: &Locality, endpoint: &Locality, failover_to: Option<&str>) -> u32 {
    if client.region == endpoint.region {
        if client.zone == endpoint.zone {
            if client.subzone == endpoint.subzone {
                0
            } else {
                1
            }
        } else {
            2
        }
    } else if failover_to == Some(endpoint.region.as_str()) {
        3
    } else if failover_to.is_some() {
        4
    } else {
        3
    }
}

fn same_zone(a: &Locality, b: &Locality) -> bool {
    a.region == b.region && a.zone == b.zone
}

/// `failoverPriority`: with N labels, matching all N is level 0, matching
/// the first N-1 is level 1, ..., none is level N; a label counts only when
/// all before it match. `key=value` compares the endpoint with that value
/// instead of the client's.
fn label_priority(
    client: &Client<'_>,
    endpoint: &Workload,
    labels: &[String],
    cluster_of: ClusterOf<'_>,
) -> u32 {
    let n = labels.len() as u32;
    let matched = labels
        .iter()
        .take_while(|label| {
            let (key, wanted) = match label.split_once('=') {
                Some((k, v)) => (k, Some(v.to_string())),
                None => (label.as_str(), None),
            };
            let wanted = wanted.or_else(|| client_label(client, key));
            let have = endpoint_label(endpoint, key, cluster_of);
            wanted.is_some() && wanted == have
        })
        .count() as u32;
    n - matched
}

fn client_label(client: &Client<'_>, key: &str) -> Option<String> {
    let value = match key {
        NETWORK => client.network,
        CLUSTER => client.cluster,
        REGION => &client.locality.region,
        ZONE => &client.locality.zone,
        SUBZONE => &client.locality.subzone,
        HOSTNAME => client.node,
        _ => return client.labels.get(key).cloned(),
    };
    (!value.is_empty()).then(|| value.to_string())
}

fn endpoint_label(w: &Workload, key: &str, cluster_of: ClusterOf<'_>) -> Option<String> {
    let value = match key {
        NETWORK => w.network.clone(),
        CLUSTER => cluster_of(w),
        REGION => w.locality.region.clone(),
        ZONE => w.locality.zone.clone(),
        SUBZONE => w.locality.subzone.clone(),
        HOSTNAME => w.node.clone().unwrap_or_default(),
        _ => return w.labels.get(key).cloned(),
    };
    (!value.is_empty()).then_some(value)
}

/// `distribute.to`: each pattern's weight is shared by the localities it
/// matches (first matching pattern wins), a locality's share by its
/// endpoints; endpoints no pattern matches get nothing.
fn distribute<'a>(
    to: &std::collections::BTreeMap<String, u32>,
    endpoints: &[Endpoint<'a>],
) -> Vec<Ranked<'a>> {
    let pattern_of = |l: &Locality| to.keys().find(|p| locality_matches(p, l));
    let mut localities: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    let mut per_locality: std::collections::BTreeMap<String, f64> = Default::default();
    for e in endpoints {
        let l = &e.workload.locality;
        if let Some(p) = pattern_of(l) {
            let key = locality_key(l);
            *per_locality.entry(key.clone()).or_default() += f64::from(e.workload.weight.max(1));
            let list = localities.entry(p.as_str()).or_default();
            if !list.contains(&key) {
                list.push(key);
            }
        }
    }
    endpoints
        .iter()
        .filter_map(|e| {
            let l = &e.workload.locality;
            let p = pattern_of(l)?;
            let share = f64::from(*to.get(p)?) / localities.get(p.as_str())?.len() as f64;
            let key = locality_key(l);
            let total = per_locality.get(&key)?;
            let group = per_locality.keys().position(|k| *k == key)? as u32;
            Some(Ranked {
                endpoint: *e,
                priority: 0,
                weight: share * f64::from(e.workload.weight.max(1)) / total,
                group,
            })
        })
        .collect()
}

fn locality_key(l: &Locality) -> String {
    format!("{}/{}/{}", l.region, l.zone, l.subzone)
}

/// A `region/zone/subzone` pattern where any part may be `*` and missing
/// parts match anything.
pub fn locality_matches(pattern: &str, l: &Locality) -> bool {
    let mut parts = pattern.split('/');
    [&l.region, &l.zone, &l.subzone]
        .iter()
        .all(|have| match parts.next() {
            None | Some("*") => true,
            Some(want) => want == *have,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use strait_config::manifest::networking::{Distribute, Failover};

    fn workload(name: &str, locality: &str, labels: &[(&str, &str)]) -> Workload {
        Workload {
            name: name.into(),
            namespace: "ns".into(),
            addresses: vec!["10.0.0.1".parse().unwrap()],
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            service_account: "sa".into(),
            locality: Locality::parse(locality),
            network: labels
                .iter()
                .find(|(k, _)| *k == NETWORK)
                .map(|(_, v)| v.to_string())
                .unwrap_or_default(),
            ports: Default::default(),
            weight: 1,
            node: Some(format!("node-{name}")),
            netns: None,
            ready: true,
            group: None,
            probe: None,
            owner: None,
            sidecar: false,
        }
    }

    fn endpoints(ws: &[Workload]) -> Vec<Endpoint<'_>> {
        ws.iter()
            .map(|w| Endpoint {
                addr: SocketAddr::new(w.addresses[0], 80),
                workload: w,
            })
            .collect()
    }

    fn no_cluster(_: &Workload) -> String {
        String::new()
    }

    fn priorities(client: &Client<'_>, ws: &[Workload], policy: Policy<'_>) -> Vec<(String, u32)> {
        let eps = endpoints(ws);
        let mut out: Vec<(String, u32)> = rank(client, &eps, policy, &no_cluster)
            .into_iter()
            .map(|r| (r.endpoint.workload.name.clone(), r.priority))
            .collect();
        out.sort();
        out
    }

    fn client<'a>(locality: &'a Locality, labels: &'a Labels) -> Client<'a> {
        Client {
            locality,
            network: labels.get(NETWORK).map_or("", String::as_str),
            cluster: labels.get(CLUSTER).map_or("", String::as_str),
            node: "node-client",
            labels,
        }
    }

    /// Istio's locality failover task: a client in region1/zone1.
    #[test]
    fn istio_failover_task_priorities() {
        let ws = [
            workload("r1z1", "region1/zone1", &[]),
            workload("r1z2", "region1/zone2", &[]),
            workload("r2z3", "region2/zone3", &[]),
            workload("r3z4", "region3/zone4", &[]),
        ];
        let here = Locality::parse("region1/zone1");
        let labels = Labels::new();
        let c = client(&here, &labels);
        let setting = LocalityLbSetting {
            failover: vec![Failover {
                from: "region1".into(),
                to: "region2".into(),
            }],
            ..Default::default()
        };
        let policy = Policy {
            locality: Some(&setting),
            traffic_distribution: None,
        };
        assert_eq!(
            priorities(&c, &ws, policy),
            [
                ("r1z1".into(), 0),
                ("r1z2".into(), 2),
                ("r2z3".into(), 3),
                ("r3z4".into(), 4)
            ]
        );
        // Without a rule, every other region is one level.
        assert_eq!(
            priorities(&c, &ws, Policy::default()),
            [
                ("r1z1".into(), 0),
                ("r1z2".into(), 2),
                ("r2z3".into(), 3),
                ("r3z4".into(), 3)
            ]
        );
    }

    #[test]
    fn subzone_comes_before_zone() {
        let ws = [
            workload("same", "r/z/s1", &[]),
            workload("sibling", "r/z/s2", &[]),
        ];
        let here = Locality::parse("r/z/s1");
        let labels = Labels::new();
        assert_eq!(
            priorities(&client(&here, &labels), &ws, Policy::default()),
            [("same".into(), 0), ("sibling".into(), 1)]
        );
    }

    /// Istio's failoverPriority example: labels [network, region, zone].
    #[test]
    fn failover_priority_counts_leading_matches() {
        let ws = [
            workload("all", "r1/z1", &[(NETWORK, "n1")]),
            workload("net-region", "r1/z2", &[(NETWORK, "n1")]),
            workload("net", "r2/z1", &[(NETWORK, "n1")]),
            workload("none", "r1/z1", &[(NETWORK, "n2")]),
        ];
        let here = Locality::parse("r1/z1");
        let labels: Labels = [(NETWORK.to_string(), "n1".to_string())].into();
        let setting = LocalityLbSetting {
            failover_priority: vec![NETWORK.into(), REGION.into(), ZONE.into()],
            ..Default::default()
        };
        let policy = Policy {
            locality: Some(&setting),
            traffic_distribution: None,
        };
        assert_eq!(
            priorities(&client(&here, &labels), &ws, policy),
            [
                ("all".into(), 0),
                ("net".into(), 2),
                ("net-region".into(), 1),
                ("none".into(), 3)
            ]
        );
    }

    /// `failoverPriority: [topology.istio.io/network,
    /// topology.istio.io/cluster]` as Istio documents it: same network and
    /// cluster first, then same network, then everything else (a cluster
    /// match alone counts for nothing, the network label being first).
    #[test]
    fn failover_priority_network_then_cluster() {
        let ws = [
            workload("net1-c1", "r1/z1", &[(NETWORK, "net1")]),
            workload("net1-c2", "r1/z1", &[(NETWORK, "net1")]),
            workload("net2-c1", "r1/z1", &[(NETWORK, "net2")]),
            workload("net2-c2", "r1/z1", &[(NETWORK, "net2")]),
        ];
        let here = Locality::parse("r1/z1");
        let labels = Labels::new();
        let mut who = client(&here, &labels);
        who.network = "net1";
        who.cluster = "c1";
        let cluster_of = |w: &Workload| w.name.rsplit('-').next().unwrap_or_default().to_string();
        let setting = LocalityLbSetting {
            failover_priority: vec![NETWORK.into(), CLUSTER.into()],
            ..Default::default()
        };
        let policy = Policy {
            locality: Some(&setting),
            traffic_distribution: None,
        };
        let eps = endpoints(&ws);
        let ranked = rank(&who, &eps, policy, &cluster_of);
        let mut got: Vec<(String, u32)> = ranked
            .iter()
            .map(|r| (r.endpoint.workload.name.clone(), r.priority))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("net1-c1".into(), 0),
                ("net1-c2".into(), 1),
                ("net2-c1".into(), 2),
                ("net2-c2".into(), 2)
            ]
        );
        // The order tries the levels in turn.
        let tried: Vec<&str> = order(ranked, Simple::Random, 0, &|_| 0, || 0.5)
            .iter()
            .map(|e| e.workload.name.as_str())
            .collect();
        assert_eq!(&tried[..2], ["net1-c1", "net1-c2"]);
    }

    #[test]
    fn failover_priority_key_value_and_cluster() {
        let ws = [workload("c2", "r1/z1", &[]), workload("c1", "r1/z1", &[])];
        let here = Locality::parse("r1/z1");
        let labels: Labels = [(CLUSTER.to_string(), "c1".to_string())].into();
        let cluster_of = |w: &Workload| w.name.clone();
        let eps = endpoints(&ws);
        let setting = LocalityLbSetting {
            failover_priority: vec![format!("{CLUSTER}=c2")],
            ..Default::default()
        };
        let policy = Policy {
            locality: Some(&setting),
            traffic_distribution: None,
        };
        let mut got: Vec<(String, u32)> = rank(&client(&here, &labels), &eps, policy, &cluster_of)
            .into_iter()
            .map(|r| (r.endpoint.workload.name.clone(), r.priority))
            .collect();
        got.sort();
        // `key=value` prefers cluster c2 although the client is in c1.
        assert_eq!(got, [("c1".into(), 1), ("c2".into(), 0)]);
    }

    #[test]
    fn distribute_shares_weights_and_drops_unlisted() {
        let ws = [
            workload("a1", "east/z1", &[]),
            workload("a2", "east/z1", &[]),
            workload("b1", "west/z1", &[]),
            workload("c1", "north/z1", &[]),
        ];
        let here = Locality::parse("east/z1");
        let labels = Labels::new();
        let setting = LocalityLbSetting {
            distribute: vec![Distribute {
                from: "east/*".into(),
                to: [("east/*".to_string(), 80), ("west/*".to_string(), 20)].into(),
            }],
            ..Default::default()
        };
        // Distinct ports tell the endpoints apart for `active`.
        let eps: Vec<Endpoint<'_>> = ws
            .iter()
            .zip(80..)
            .map(|(w, port)| Endpoint {
                addr: SocketAddr::new(w.addresses[0], port),
                workload: w,
            })
            .collect();
        let ranked = rank(
            &client(&here, &labels),
            &eps,
            Policy {
                locality: Some(&setting),
                traffic_distribution: None,
            },
            &no_cluster,
        );
        let weight = |name: &str| {
            ranked
                .iter()
                .find(|r| r.endpoint.workload.name == name)
                .map(|r| r.weight)
        };
        assert_eq!(weight("a1"), Some(40.0));
        assert_eq!(weight("a2"), Some(40.0));
        assert_eq!(weight("b1"), Some(20.0));
        assert_eq!(weight("c1"), None, "unlisted localities get nothing");

        // The observed split follows the weights.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 11) as f64 + 1.0) / (1u64 << 53) as f64
        };
        let mut east = 0;
        for _ in 0..10_000 {
            let first = order(ranked.clone(), Simple::Random, 0, &|_| 0, &mut random)[0];
            if first.workload.locality.region == "east" {
                east += 1;
            }
        }
        assert!((7_700..=8_300).contains(&east), "east got {east} of 10000");

        // LEAST_REQUEST chooses within the locality the weights chose: east
        // being busier (it takes 80%) does not pull traffic west.
        let busy_east = |a: SocketAddr| if a.port() < 82 { 6 } else { 1 };
        let mut east = 0;
        for _ in 0..10_000 {
            let first = order(
                ranked.clone(),
                Simple::LeastRequest,
                0,
                &busy_east,
                &mut random,
            )[0];
            if first.workload.locality.region == "east" {
                east += 1;
            }
        }
        assert!(
            (7_700..=8_300).contains(&east),
            "least request: east got {east} of 10000"
        );
    }

    #[test]
    fn traffic_distribution_and_disabled() {
        let ws = [
            workload("zone", "r/z1", &[]),
            workload("region", "r/z2", &[]),
            workload("far", "q/z9", &[]),
        ];
        let here = Locality::parse("r/z1");
        let labels = Labels::new();
        let c = client(&here, &labels);
        let close = Policy {
            locality: None,
            traffic_distribution: Some("PreferClose"),
        };
        assert_eq!(
            priorities(&c, &ws, close),
            [("far".into(), 1), ("region".into(), 1), ("zone".into(), 0)]
        );
        let off = LocalityLbSetting {
            enabled: Some(false),
            ..Default::default()
        };
        let flat = Policy {
            locality: Some(&off),
            traffic_distribution: None,
        };
        assert!(priorities(&c, &ws, flat).iter().all(|(_, p)| *p == 0));
    }

    #[test]
    fn order_is_level_by_level() {
        let ws = [workload("far", "q/z9", &[]), workload("near", "r/z1", &[])];
        let here = Locality::parse("r/z1");
        let labels = Labels::new();
        let eps = endpoints(&ws);
        let ranked = rank(
            &client(&here, &labels),
            &eps,
            Policy::default(),
            &no_cluster,
        );
        let names: Vec<&str> = order(ranked, Simple::Random, 0, &|_| 0, || 0.5)
            .iter()
            .map(|e| e.workload.name.as_str())
            .collect();
        assert_eq!(names, ["near", "far"]);
    }

    #[test]
    fn least_request_prefers_the_less_busy_of_two() {
        let ws = [workload("busy", "r/z1", &[]), workload("idle", "r/z1", &[])];
        let mut eps = endpoints(&ws);
        eps[1].addr = SocketAddr::from(([10, 0, 0, 2], 80));
        let here = Locality::parse("r/z1");
        let labels = Labels::new();
        let ranked = rank(
            &client(&here, &labels),
            &eps,
            Policy::default(),
            &no_cluster,
        );
        let busy = eps[0].addr;
        let active = move |a: SocketAddr| if a == busy { 10 } else { 0 };
        let mut seed = 7u64;
        for _ in 0..100 {
            let mut random = || {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 11) as f64 + 1.0) / (1u64 << 53) as f64
            };
            let first = order(
                ranked.clone(),
                Simple::LeastRequest,
                0,
                &active,
                &mut random,
            )[0];
            assert_eq!(first.workload.name, "idle");
        }
    }

    #[test]
    fn round_robin_spreads_evenly_by_weight() {
        let mut ws = [
            workload("a", "r/z1", &[]),
            workload("b", "r/z1", &[]),
            workload("c", "r/z1", &[]),
        ];
        ws[2].weight = 2;
        let mut eps = endpoints(&ws);
        for (i, e) in eps.iter_mut().enumerate() {
            e.addr = SocketAddr::from(([10, 0, 0, i as u8 + 1], 80));
        }
        let here = Locality::parse("r/z1");
        let labels = Labels::new();
        let ranked = rank(
            &client(&here, &labels),
            &eps,
            Policy::default(),
            &no_cluster,
        );
        let mut count = std::collections::BTreeMap::<String, usize>::new();
        for turn in 0..400 {
            let first = order(ranked.clone(), Simple::RoundRobin, turn, &|_| 0, || 0.5)[0];
            *count.entry(first.workload.name.clone()).or_default() += 1;
        }
        // 1 : 1 : 2, within a few turns.
        assert!((95..=105).contains(&count["a"]), "{count:?}");
        assert!((95..=105).contains(&count["b"]), "{count:?}");
        assert!((195..=205).contains(&count["c"]), "{count:?}");
    }

    #[test]
    fn patterns() {
        let l = Locality::parse("us-east/us-east-1a/rack1");
        assert!(locality_matches("us-east/*", &l));
        assert!(locality_matches("us-east", &l));
        assert!(locality_matches("*", &l));
        assert!(locality_matches("us-east/us-east-1a/rack1", &l));
        assert!(!locality_matches("us-west/*", &l));
        assert!(!locality_matches("us-east/us-east-1b", &l));
    }

    /// With `useSourceIp`, a client always gets the same endpoint, clients
    /// spread over the endpoints, and removing one endpoint moves only its
    /// own clients.
    #[test]
    fn source_hash_is_sticky_and_moves_little() {
        let workloads: Vec<Workload> = (0..4)
            .map(|i| workload(&format!("e{i}"), "r1/z1", &[]))
            .collect();
        let endpoints: Vec<Endpoint<'_>> = workloads
            .iter()
            .enumerate()
            .map(|(i, w)| Endpoint {
                addr: format!("10.0.0.{}:80", i + 1).parse().unwrap(),
                workload: w,
            })
            .collect();
        let (locality, labels) = (Locality::parse("r1/z1"), Labels::default());
        let who = client(&locality, &labels);
        let pick = |endpoints: &[Endpoint<'_>], source: &str| {
            let ranked = rank(&who, endpoints, Policy::default(), &no_cluster);
            let simple = Simple::parse(None, true, false).for_source(source.parse().unwrap());
            order(ranked, simple, 0, &|_| 0, || unreachable!("no randomness"))[0].addr
        };
        let sources: Vec<String> = (0..400)
            .map(|i| format!("10.9.{}.{}", i / 250, i % 250))
            .collect();
        let before: Vec<_> = sources.iter().map(|s| pick(&endpoints, s)).collect();
        let again: Vec<_> = sources.iter().map(|s| pick(&endpoints, s)).collect();
        assert_eq!(before, again, "the same source, the same endpoint");
        let spread: std::collections::BTreeSet<_> = before.iter().collect();
        assert_eq!(spread.len(), 4, "sources spread over every endpoint");
        let fewer = &endpoints[..3];
        let gone = endpoints[3].addr;
        for (s, b) in sources.iter().zip(&before) {
            let now = pick(fewer, s);
            if *b != gone {
                assert_eq!(now, *b, "{s} moved although its endpoint stayed");
            }
        }
    }
}
