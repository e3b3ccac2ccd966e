//! The mesh as a graph, from Prometheus alone: workloads placed by
//! `strait_workload_info` (cluster, network, locality, role), edges from
//! Istio's standard metrics (`istio_tcp_*`, `istio_requests_total`), and
//! the east-west gateway a cross-network edge goes through.
//!
//! One connection is counted by up to three proxies: the client's agent
//! (`reporter="source"`), the server's (`reporter="destination"`) and, for
//! HTTP through a waypoint, the waypoint (`reporter="waypoint"`). An edge
//! takes its connection figures from the destination's count when there is
//! one (only the server's agent knows the connection was mutual TLS and
//! allowed), else from the source's (a destination outside the mesh), and
//! its request figures from the waypoint's. A gateway's own count is of
//! the leg it opens (gateway to destination): that leg is not an edge of
//! its own but makes the gateway the `via` of every edge from another
//! network to that destination.
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// One series of an instant query's answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or(UNKNOWN, String::as_str)
    }
}

const UNKNOWN: &str = "unknown";

/// The queries a graph is built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Query {
    Opened,
    OpenedRate,
    Closed,
    ClosedRate,
    Sent,
    SentRate,
    Received,
    ReceivedRate,
    Requests,
    RequestsRate,
    Placement,
}

const TCP_BY: &str = "reporter, source_workload, source_workload_namespace, source_cluster, \
destination_workload, destination_workload_namespace, destination_cluster, destination_service, \
destination_service_name, connection_security_policy, response_flags";
const HTTP_BY: &str = "reporter, source_workload, source_workload_namespace, source_cluster, \
destination_workload, destination_workload_namespace, destination_cluster, destination_service, \
destination_service_name, connection_security_policy, response_code";

impl Query {
    pub const ALL: [Self; 11] = [
        Self::Opened,
        Self::OpenedRate,
        Self::Closed,
        Self::ClosedRate,
        Self::Sent,
        Self::SentRate,
        Self::Received,
        Self::ReceivedRate,
        Self::Requests,
        Self::RequestsRate,
        Self::Placement,
    ];

    /// The PromQL; `window` is a Prometheus duration (`1m`).
    pub fn promql(self, window: &str) -> String {
        let (metric, by, rate) = match self {
            Self::Opened => ("istio_tcp_connections_opened_total", TCP_BY, false),
            Self::OpenedRate => ("istio_tcp_connections_opened_total", TCP_BY, true),
            Self::Closed => ("istio_tcp_connections_closed_total", TCP_BY, false),
            Self::ClosedRate => ("istio_tcp_connections_closed_total", TCP_BY, true),
            Self::Sent => ("istio_tcp_sent_bytes_total", TCP_BY, false),
            Self::SentRate => ("istio_tcp_sent_bytes_total", TCP_BY, true),
            Self::Received => ("istio_tcp_received_bytes_total", TCP_BY, false),
            Self::ReceivedRate => ("istio_tcp_received_bytes_total", TCP_BY, true),
            Self::Requests => ("istio_requests_total", HTTP_BY, false),
            Self::RequestsRate => ("istio_requests_total", HTTP_BY, true),
            Self::Placement => {
                return format!(
                    "max by (workload, workload_namespace, cluster, network, region, zone, role) ({})",
                    "strait_workload_info"
                );
            }
        };
        if rate {
            format!("sum by ({by}) (rate({metric}[{window}]))")
        } else {
            format!("sum by ({by}) ({metric})")
        }
    }
}

/// What the page draws.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Node {
    /// `cluster/namespace/workload`, or `service:<host>` for a destination
    /// no proxy serves.
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub cluster: String,
    pub network: String,
    pub region: String,
    pub zone: String,
    /// `workload`, `gateway`, `service` (a destination outside the mesh)
    /// or `unknown` (a client no proxy knows).
    pub role: String,
    /// Whether a proxy reports where it runs (`strait_workload_info`).
    pub placed: bool,
    /// A gateway's legs to destinations in its network: opened in all,
    /// and per second now.
    pub forwarded: f64,
    pub forwarded_per_s: f64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Edge {
    /// `source->target`.
    pub id: String,
    pub source: String,
    pub target: String,
    pub services: BTreeSet<String>,
    /// `tcp`, or `http` when a waypoint counted requests on it.
    pub protocol: String,
    /// `mutual_tls` or `unknown` as the destination's agent (else the
    /// source's) reported it; `mutual_tls` only if every connection was.
    pub security: String,
    /// Which proxy's count the connection figures are.
    pub reporter: String,
    /// East-west gateways it goes through.
    pub via: Vec<String>,
    pub connections: f64,
    pub closed: f64,
    /// Connections refused: closed with `response_flags` other than `-`.
    pub refused: f64,
    pub request_bytes: f64,
    pub response_bytes: f64,
    pub connections_per_s: f64,
    pub bytes_per_s: f64,
    pub requests: f64,
    pub requests_per_s: f64,
    /// Requests answered 5xx.
    pub failed_requests: f64,
    /// Failed requests (or refused connections, without requests) over all,
    /// over the window, else over all time.
    pub error_ratio: f64,
}

type Key = (String, String);

#[derive(Default)]
struct Tcp {
    opened: f64,
    opened_rate: f64,
    refused: f64,
    refused_rate: f64,
    closed: f64,
    sent: f64,
    sent_rate: f64,
    received: f64,
    received_rate: f64,
    mtls: bool,
    plain: bool,
    services: BTreeSet<String>,
}

#[derive(Default)]
struct Http {
    total: f64,
    rate: f64,
    failed: f64,
    failed_rate: f64,
    mtls: bool,
    plain: bool,
    services: BTreeSet<String>,
}

/// Builds the graph from each query's answer (answers of several
/// Prometheus servers concatenated).
pub fn build(answers: &BTreeMap<Query, Vec<Sample>>) -> Graph {
    let get = |q: Query| answers.get(&q).map_or(&[][..], Vec::as_slice);
    let mut gateways: BTreeSet<String> = BTreeSet::new();
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    for s in get(Query::Placement) {
        let id = workload_id(
            s.label("cluster"),
            s.label("workload_namespace"),
            s.label("workload"),
        );
        nodes.insert(
            id.clone(),
            Node {
                id: id.clone(),
                name: s.label("workload").into(),
                namespace: s.label("workload_namespace").into(),
                cluster: s.label("cluster").into(),
                network: s.label("network").into(),
                region: s.label("region").into(),
                zone: s.label("zone").into(),
                role: s.label("role").into(),
                placed: true,
                forwarded: 0.0,
                forwarded_per_s: 0.0,
            },
        );
        if s.label("role") == "gateway" {
            gateways.insert(id);
        }
    }

    // Per edge, per reporter.
    let mut tcp: BTreeMap<(Key, String), Tcp> = BTreeMap::new();
    // Gateway legs: destination -> gateways.
    let mut gateways_to: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (query, s) in [
        Query::Opened,
        Query::OpenedRate,
        Query::Closed,
        Query::ClosedRate,
        Query::Sent,
        Query::SentRate,
        Query::Received,
        Query::ReceivedRate,
    ]
    .into_iter()
    .flat_map(|q| get(q).iter().map(move |s| (q, s)))
    {
        let (source, target) = ends(s, &mut nodes);
        let reporter = s.label("reporter").to_string();
        if reporter == "source" && gateways.contains(&source) {
            gateways_to
                .entry(target.clone())
                .or_default()
                .insert(source.clone());
            if let Some(gateway) = nodes.get_mut(&source) {
                match query {
                    Query::Opened => gateway.forwarded += s.value,
                    Query::OpenedRate => gateway.forwarded_per_s += s.value,
                    _ => {}
                }
            }
            continue;
        }
        let figures = tcp.entry(((source, target), reporter)).or_default();
        // As ztunnel counts a refused connection: opened, then closed with
        // flags saying why.
        let refused = s.label("response_flags") != "-";
        match query {
            Query::Opened => {
                figures.opened += s.value;
                match s.label("connection_security_policy") {
                    "mutual_tls" => figures.mtls = true,
                    _ => figures.plain = true,
                }
                figures
                    .services
                    .insert(s.label("destination_service").to_string());
            }
            Query::OpenedRate => figures.opened_rate += s.value,
            Query::Closed => {
                figures.closed += s.value;
                if refused {
                    figures.refused += s.value;
                }
            }
            Query::ClosedRate if refused => figures.refused_rate += s.value,
            Query::Sent => figures.sent += s.value,
            Query::SentRate => figures.sent_rate += s.value,
            Query::Received => figures.received += s.value,
            Query::ReceivedRate => figures.received_rate += s.value,
            _ => {}
        }
    }
    let mut http: BTreeMap<Key, Http> = BTreeMap::new();
    for (query, s) in [Query::Requests, Query::RequestsRate]
        .into_iter()
        .flat_map(|q| get(q).iter().map(move |s| (q, s)))
    {
        if s.label("reporter") != "waypoint" {
            continue;
        }
        let key = ends(s, &mut nodes);
        let figures = http.entry(key).or_default();
        let failed = s.label("response_code").starts_with('5');
        if query == Query::Requests {
            figures.total += s.value;
            if failed {
                figures.failed += s.value;
            }
            match s.label("connection_security_policy") {
                "mutual_tls" => figures.mtls = true,
                _ => figures.plain = true,
            }
            figures
                .services
                .insert(s.label("destination_service").to_string());
        } else {
            figures.rate += s.value;
            if failed {
                figures.failed_rate += s.value;
            }
        }
    }

    // The destination's count where there is one.
    let mut chosen: BTreeMap<Key, (String, Tcp)> = BTreeMap::new();
    for ((key, reporter), figures) in tcp {
        let better = match chosen.get(&key) {
            None => true,
            Some((have, _)) => have != "destination" && reporter == "destination",
        };
        if better {
            chosen.insert(key, (reporter, figures));
        }
    }
    // A client's agent that sent a connection through another network's
    // gateway knows its service but not the workload that took it; the
    // destination's agent counted the same connection with both.
    let counted: BTreeSet<(String, String)> = chosen
        .iter()
        .filter(|(_, (reporter, _))| reporter == "destination")
        .flat_map(|((source, _), (_, t))| t.services.iter().map(|s| (source.clone(), s.clone())))
        .collect();
    chosen.retain(|(source, target), (reporter, t)| {
        !(reporter == "source"
            && target.starts_with("service:")
            && t.services
                .iter()
                .all(|s| counted.contains(&(source.clone(), s.clone()))))
    });
    let keys: BTreeSet<Key> = chosen.keys().chain(http.keys()).cloned().collect();
    let mut edges = Vec::new();
    for key in keys {
        let (reporter, t) = chosen.remove(&key).unwrap_or_default();
        let h = http.remove(&key).unwrap_or_default();
        let (source, target) = key;
        let source_network = nodes.get(&source).map(|n| n.network.clone());
        let via = gateways_to
            .get(&target)
            .into_iter()
            .flatten()
            .filter(|g| nodes.get(*g).map(|n| Some(&n.network)) != Some(source_network.as_ref()))
            .cloned()
            .collect();
        let error_ratio = if h.total > 0.0 {
            ratio(h.failed_rate, h.rate).unwrap_or_else(|| ratio(h.failed, h.total).unwrap_or(0.0))
        } else {
            ratio(t.refused_rate, t.opened_rate)
                .unwrap_or_else(|| ratio(t.refused, t.opened).unwrap_or(0.0))
        };
        let (mtls, plain) = if t.opened > 0.0 {
            (t.mtls, t.plain)
        } else {
            (h.mtls, h.plain)
        };
        edges.push(Edge {
            id: format!("{source}->{target}"),
            services: t
                .services
                .into_iter()
                .chain(h.services)
                .filter(|s| s != UNKNOWN)
                .collect(),
            protocol: if h.total > 0.0 { "http" } else { "tcp" }.into(),
            security: if mtls && !plain {
                "mutual_tls"
            } else {
                UNKNOWN
            }
            .into(),
            reporter: if t.opened > 0.0 {
                reporter
            } else {
                "waypoint".into()
            },
            via,
            connections: t.opened,
            closed: t.closed,
            refused: t.refused,
            request_bytes: t.received,
            response_bytes: t.sent,
            connections_per_s: t.opened_rate,
            bytes_per_s: t.sent_rate + t.received_rate,
            requests: h.total,
            requests_per_s: h.rate,
            failed_requests: h.failed,
            error_ratio,
            source,
            target,
        });
    }
    // Ends only seen on a count another replaced.
    let ends: BTreeSet<&str> = edges
        .iter()
        .flat_map(|e| [e.source.as_str(), e.target.as_str()])
        .collect();
    nodes.retain(|id, n| n.placed || ends.contains(id.as_str()));
    Graph {
        nodes: nodes.into_values().collect(),
        edges,
    }
}

fn ratio(part: f64, whole: f64) -> Option<f64> {
    (whole > 0.0).then(|| part / whole)
}

fn workload_id(cluster: &str, namespace: &str, workload: &str) -> String {
    format!("{cluster}/{namespace}/{workload}")
}

/// The edge's two node ids; a node not yet known is added unplaced.
fn ends(s: &Sample, nodes: &mut BTreeMap<String, Node>) -> Key {
    let source = end(s, "source", nodes);
    let target = end(s, "destination", nodes);
    (source, target)
}

fn end(s: &Sample, side: &str, nodes: &mut BTreeMap<String, Node>) -> String {
    let workload = s.label(&format!("{side}_workload"));
    let namespace = s.label(&format!("{side}_workload_namespace"));
    let cluster = s.label(&format!("{side}_cluster"));
    let (id, name, role) = if workload != UNKNOWN {
        (
            workload_id(cluster, namespace, workload),
            workload,
            "workload",
        )
    } else if side == "destination" && s.label("destination_service") != UNKNOWN {
        let host = s.label("destination_service");
        (format!("service:{host}"), host, "service")
    } else if namespace != UNKNOWN {
        // A client known only by its identity's namespace (through a
        // waypoint): one node per namespace, not one for the whole mesh.
        (workload_id(cluster, namespace, UNKNOWN), UNKNOWN, UNKNOWN)
    } else {
        (UNKNOWN.to_string(), UNKNOWN, UNKNOWN)
    };
    nodes.entry(id.clone()).or_insert_with(|| Node {
        id: id.clone(),
        name: name.into(),
        namespace: namespace.into(),
        cluster: cluster.into(),
        network: UNKNOWN.into(),
        region: UNKNOWN.into(),
        zone: UNKNOWN.into(),
        role: role.into(),
        placed: false,
        forwarded: 0.0,
        forwarded_per_s: 0.0,
    });
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(graph: &Graph, pick: impl Fn(&Edge) -> bool) -> &Edge {
        graph
            .edges
            .iter()
            .find(|e| pick(e))
            .unwrap_or_else(|| panic!("no such edge in {:?}", graph.edges))
    }

    fn node(graph: &Graph, pick: impl Fn(&Node) -> bool) -> &Node {
        graph
            .nodes
            .iter()
            .find(|n| pick(n))
            .unwrap_or_else(|| panic!("no such node in {:?}", graph.nodes))
    }

    fn sample(labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        }
    }

    fn info(workload: &str, cluster: &str, network: &str, zone: &str, role: &str) -> Sample {
        sample(
            &[
                ("workload", workload),
                ("workload_namespace", "shop"),
                ("cluster", cluster),
                ("network", network),
                ("region", "r1"),
                ("zone", zone),
                ("role", role),
            ],
            1.0,
        )
    }

    fn tcp(
        reporter: &str,
        from: (&str, &str),
        to: (&str, &str),
        policy: &str,
        flags: &str,
        value: f64,
    ) -> Sample {
        sample(
            &[
                ("reporter", reporter),
                ("source_workload", from.0),
                ("source_workload_namespace", "shop"),
                ("source_cluster", from.1),
                ("destination_workload", to.0),
                ("destination_workload_namespace", "shop"),
                ("destination_cluster", to.1),
                ("destination_service", "web.shop.svc.cluster.local"),
                ("connection_security_policy", policy),
                ("response_flags", flags),
            ],
            value,
        )
    }

    /// Two networks: `sleep` (c1, net1) reaches `web` (c2, net2) through
    /// net2's gateway, and `web` reaches `db` outside the mesh.
    fn answers() -> BTreeMap<Query, Vec<Sample>> {
        let mut a = BTreeMap::new();
        a.insert(
            Query::Placement,
            vec![
                info("sleep", "c1", "net1", "z1", "workload"),
                info("web", "c2", "net2", "z2", "workload"),
                info("eastwest", "c2", "net2", "z2", "gateway"),
            ],
        );
        a.insert(
            Query::Opened,
            vec![
                tcp(
                    "source",
                    ("sleep", "c1"),
                    ("web", "c2"),
                    "unknown",
                    "-",
                    10.0,
                ),
                tcp(
                    "destination",
                    ("sleep", "c1"),
                    ("web", "c2"),
                    "mutual_tls",
                    "-",
                    12.0,
                ),
                tcp(
                    "source",
                    ("eastwest", "c2"),
                    ("web", "c2"),
                    "unknown",
                    "-",
                    12.0,
                ),
                tcp(
                    "source",
                    ("web", "c2"),
                    ("unknown", "unknown"),
                    "unknown",
                    "-",
                    3.0,
                ),
            ],
        );
        a.insert(
            Query::Closed,
            vec![
                tcp(
                    "destination",
                    ("sleep", "c1"),
                    ("web", "c2"),
                    "mutual_tls",
                    "-",
                    10.0,
                ),
                tcp(
                    "destination",
                    ("sleep", "c1"),
                    ("web", "c2"),
                    "mutual_tls",
                    "DENY",
                    2.0,
                ),
            ],
        );
        a.insert(
            Query::Received,
            vec![tcp(
                "destination",
                ("sleep", "c1"),
                ("web", "c2"),
                "mutual_tls",
                "-",
                5000.0,
            )],
        );
        a
    }

    #[test]
    fn an_edge_takes_the_destinations_count_and_its_gateway() {
        let graph = build(&answers());
        let edge = edge(&graph, |e| e.id == "c1/shop/sleep->c2/shop/web");
        assert_eq!(edge.reporter, "destination");
        assert_eq!(
            edge.connections, 12.0,
            "the destination's count, refused included"
        );
        assert_eq!(edge.refused, 2.0);
        assert_eq!(edge.request_bytes, 5000.0);
        assert_eq!(edge.security, "mutual_tls");
        assert_eq!(edge.via, vec!["c2/shop/eastwest".to_string()]);
        assert!((edge.error_ratio - 2.0 / 12.0).abs() < 1e-9);
        assert!(
            !graph.edges.iter().any(|e| e.source == "c2/shop/eastwest"),
            "a gateway's leg is no edge of its own: {:?}",
            graph.edges
        );
        let gateway = node(&graph, |n| n.role == "gateway");
        assert_eq!(gateway.forwarded, 12.0);
    }

    #[test]
    fn a_destination_outside_the_mesh_is_its_service_and_same_network_edges_have_no_via() {
        let graph = build(&answers());
        let edge = edge(&graph, |e| e.source == "c2/shop/web");
        assert_eq!(edge.target, "service:web.shop.svc.cluster.local");
        assert_eq!(edge.reporter, "source");
        assert_eq!(edge.security, "unknown");
        assert!(edge.via.is_empty(), "web is in the gateway's network");
        let node = node(&graph, |n| n.id == edge.target);
        assert!(!node.placed);
        assert_eq!(node.role, "service");
    }

    #[test]
    fn a_source_count_of_a_service_the_destination_counted_is_not_an_edge_of_its_own() {
        let mut a = answers();
        let mut through = tcp(
            "source",
            ("sleep", "c1"),
            ("unknown", "unknown"),
            "mutual_tls",
            "-",
            12.0,
        );
        through
            .labels
            .insert("destination_workload_namespace".into(), "unknown".into());
        a.get_mut(&Query::Opened).expect("opened").push(through);
        let graph = build(&a);
        let from_sleep: Vec<&str> = graph
            .edges
            .iter()
            .filter(|e| e.source == "c1/shop/sleep")
            .map(|e| e.target.as_str())
            .collect();
        assert_eq!(from_sleep, ["c2/shop/web"]);
        // web's own edge to the service outside the mesh stays.
        assert!(
            graph
                .nodes
                .iter()
                .any(|n| n.id == "service:web.shop.svc.cluster.local")
        );
    }

    #[test]
    fn requests_a_waypoint_counts_make_an_edge_http_with_its_error_ratio() {
        let mut a = answers();
        let request = |code: &str, value| {
            let mut s = tcp(
                "waypoint",
                ("sleep", "c1"),
                ("web", "c2"),
                "mutual_tls",
                "-",
                value,
            );
            s.labels.remove("response_flags");
            s.labels.insert("response_code".into(), code.into());
            s
        };
        a.insert(
            Query::Requests,
            vec![request("200", 90.0), request("503", 10.0)],
        );
        a.insert(
            Query::RequestsRate,
            vec![request("200", 3.0), request("503", 1.0)],
        );
        let graph = build(&a);
        let edge = edge(&graph, |e| e.id == "c1/shop/sleep->c2/shop/web");
        assert_eq!(edge.protocol, "http");
        assert_eq!(edge.requests, 100.0);
        assert_eq!(edge.failed_requests, 10.0);
        assert!(
            (edge.error_ratio - 0.25).abs() < 1e-9,
            "over the window: {}",
            edge.error_ratio
        );
    }

    #[test]
    fn every_query_is_promql_over_the_window() {
        for q in Query::ALL {
            let promql = q.promql("2m");
            assert!(
                promql.starts_with("sum by (") || promql.starts_with("max by ("),
                "{promql}"
            );
        }
        assert!(Query::OpenedRate.promql("2m").contains("[2m]"));
        assert!(!Query::Opened.promql("2m").contains('['));
    }
}
