//! The live topology view (`straitctl dashboard`) against real Prometheus
//! servers, one per network as multi-network meshes run them, loaded in
//! headless Chromium: the workloads grouped by network, cluster and
//! locality, the gateways, and one edge per client and destination with
//! the connections, refusals, mutual TLS and gateway the traffic the test
//! sent implies; a selected edge's details; a screenshot under `target/`.
//!
//! net1 (cluster c1): node `n1a` (pods `client`, `other`, `db`) and gateway
//! node `g1`; net2 (cluster c2): node `n2a` (pod `s1` of Service `web`) and
//! gateway node `g2a`. `client` reaches `web` across the networks and `db`
//! beside it; `other` is refused by `web`'s AuthorizationPolicy.
use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use serde_json::Value as Json;
use strait_e2e::{
    Mesh, Result, curl_body,
    dashboard::{self, Dashboard},
    east_west_gateway_yaml, http_server, namespace_yaml,
    prometheus::{self, Prometheus},
    require_root, topology_node_yaml, wait_for, workload_yaml,
};
use strait_topology::{Locality, Spec, Topology};

const TO_WEB: usize = 4;
const TO_DB: usize = 3;
const REFUSED: usize = 2;
const WAIT: Duration = Duration::from_secs(90);
/// Virtual time the page gets to fetch and draw its graph.
const BUDGET: Duration = Duration::from_secs(8);

fn spec() -> Spec {
    Spec::new()
        .node("n1a", "c1", "net1", Locality::new("r1", "z1", ""))
        .gateway_node("g1", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n2a", "c2", "net2", Locality::new("r2", "z2", ""))
        .gateway_node("g2a", "c2", "net2", Locality::new("r2", "z2", ""))
        .pod("client", "n1a")
        .pod("other", "n1a")
        .pod("db", "n1a")
        .pod("s1", "n2a")
}

const POLICY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-from-client, namespace: shop}
spec:
  selector: {matchLabels: {service: web}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]
---
";

fn config(topo: &Topology) -> Result<String> {
    let mut yaml = namespace_yaml("shop", true);
    yaml.push_str(&namespace_yaml("istio-system", false));
    for node in topo.nodes() {
        yaml.push_str(&topology_node_yaml(node));
    }
    for (pod, sa, labels) in [
        ("client", "client", &[][..]),
        ("other", "other", &[][..]),
        ("db", "db", &[("service", "db")][..]),
        ("s1", "web", &[("service", "web")][..]),
    ] {
        yaml.push_str(&workload_yaml(topo.pod(pod)?, "shop", sa, labels));
    }
    yaml.push_str(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n  labels:\n    istio.io/global: \"true\"\nspec:\n  clusterIP: 10.96.0.10\n  selector:\n    service: web\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n---\n",
    );
    yaml.push_str(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: db\n  namespace: shop\nspec:\n  clusterIP: 10.96.0.11\n  selector:\n    service: db\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n---\n",
    );
    yaml.push_str(&east_west_gateway_yaml(topo, "net1", &["g1"])?);
    yaml.push_str(&east_west_gateway_yaml(topo, "net2", &["g2a"])?);
    yaml.push_str(POLICY);
    Ok(yaml)
}

/// Prometheus in `node`'s namespace scraping `network`'s agents and
/// gateway, and a loopback forward to it.
fn prometheus_of(
    topo: &Topology,
    node: &str,
    network: &str,
) -> Result<(Prometheus, strait_topology::Forward)> {
    let targets: Vec<String> = topo
        .nodes()
        .iter()
        .filter(|n| n.spec.network == network)
        .map(|n| format!("{}:15020", n.addrs.ipv4))
        .collect();
    let count = targets.len();
    let place = &topo.node(node)?.place;
    let ip = topo.node(node)?.addrs.ipv4;
    let prometheus = Prometheus::start(
        place,
        ip.into(),
        &topo.scratch_dir().join(format!("prometheus-{network}")),
        &[("strait", targets)],
    )?;
    prometheus.wait_up(count, Duration::from_secs(60))?;
    let forward = place.forward(SocketAddr::new(ip.into(), prometheus::PORT))?;
    Ok((prometheus, forward))
}

fn edge<'a>(graph: &'a Json, source: &str, target: &str) -> Option<&'a Json> {
    graph["edges"]
        .as_array()?
        .iter()
        .find(|e| e["source"] == source && e["target"] == target)
}

/// Where the screenshot goes: the target directory this test was built in.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("target"))
}

#[test]
fn the_topology_view_draws_the_mesh_prometheus_sees() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let mesh = Mesh::new(&topo)?;
    mesh.write("mesh.yaml", &config(&topo)?)?;
    let _web = http_server(topo.pod("s1")?, 8080, "web")?;
    let _db = http_server(topo.pod("db")?, 8080, "db")?;
    let _agents = [
        mesh.start_agent("n1a", &[])?,
        mesh.start_agent("n2a", &[])?,
        mesh.start_gateway("g1", "net1")?,
        mesh.start_gateway("g2a", "net2")?,
    ];
    let (client, other) = (topo.pod("client")?, topo.pod("other")?);
    for _ in 0..TO_WEB {
        assert_eq!(curl_body(client, "http://10.96.0.10/marker")?, "web");
    }
    for _ in 0..TO_DB {
        assert_eq!(curl_body(client, "http://10.96.0.11/marker")?, "db");
    }
    for _ in 0..REFUSED {
        let out = other.run(
            &["curl", "-s", "--max-time", "5", "http://10.96.0.10/marker"],
            Duration::from_secs(15),
        )?;
        assert!(!out.status.success(), "other was not refused");
    }
    println!(
        "sent: client -> web {TO_WEB}, client -> db {TO_DB}, other -> web {REFUSED} (refused)"
    );

    let (_p1, f1) = prometheus_of(&topo, "n1a", "net1")?;
    let (_p2, f2) = prometheus_of(&topo, "n2a", "net2")?;
    let scratch = topo.scratch_dir().join("dashboard");
    let dashboard = Dashboard::start(mesh.bin_dir(), vec![f1, f2], 2, &scratch)?;
    println!("dashboard at {}", dashboard.url());

    let (client_id, other_id, db_id, web_id) = (
        "c1/shop/client",
        "c1/shop/other",
        "c1/shop/db",
        "c2/shop/s1",
    );
    let mut last = Json::Null;
    let waited = wait_for("the graph to show every connection sent", WAIT, || {
        let graph = match dashboard.graph() {
            Ok(graph) => graph,
            Err(err) => {
                last = Json::String(err.to_string());
                return None;
            }
        };
        last = graph.clone();
        let count = |s, t, field: &str| edge(&graph, s, t).and_then(|e| e[field].as_f64());
        (count(client_id, web_id, "connections") == Some(TO_WEB as f64)
            && count(client_id, db_id, "connections") == Some(TO_DB as f64)
            && count(other_id, web_id, "refused") == Some(REFUSED as f64))
        .then_some(graph)
    });
    if waited.is_err() {
        println!("the last graph: {last:#}");
    }
    let graph = waited?;
    for source in graph["prometheus"].as_array().into_iter().flatten() {
        assert!(source["error"].is_null(), "a Prometheus failed: {source}");
    }

    // The page, after its script ran.
    let selected = format!("{client_id}->{web_id}");
    let url = format!("{}#edge={}", dashboard.url(), selected.replace('/', "%2F"));
    let dom = dashboard::dom(&url, BUDGET, &scratch)?;
    std::fs::write(scratch.join("dom.html"), &dom)?;
    assert!(
        dom.contains("data-state=\"ready\""),
        "the page did not draw a graph:\n{dom}"
    );
    let nodes: BTreeMap<String, BTreeMap<String, String>> = dashboard::elements(&dom, "g", "node")
        .into_iter()
        .map(|n| (n["data-id"].clone(), n))
        .collect();
    let edges: BTreeMap<String, BTreeMap<String, String>> = dashboard::elements(&dom, "g", "edge")
        .into_iter()
        .map(|e| (e["data-id"].clone(), e))
        .collect();
    println!("page: {} nodes, {} edges", nodes.len(), edges.len());
    for (id, n) in &nodes {
        println!(
            "  node {id:<40} role {:<8} group {}",
            n["data-role"], n["data-group"]
        );
    }
    for (id, e) in &edges {
        println!(
            "  edge {id:<40} connections {} refused {} security {} via [{}] error ratio {}",
            e["data-connections"],
            e["data-refused"],
            e["data-security"],
            e["data-via"],
            e["data-error-ratio"]
        );
    }

    // Workloads grouped by network, cluster and locality.
    for (id, group) in [
        (client_id, "net1/c1/r1/z1"),
        (other_id, "net1/c1/r1/z1"),
        (db_id, "net1/c1/r1/z1"),
        (web_id, "net2/c2/r2/z2"),
    ] {
        let node = nodes
            .get(id)
            .ok_or_else(|| format!("no node {id} on the page"))?;
        assert_eq!(node["data-group"], group, "{id}");
        assert_eq!(node["data-role"], "workload", "{id}");
        assert_eq!(node["data-placed"], "true", "{id}");
    }
    // One gateway per network, in its network's box.
    let gateways: BTreeMap<&str, &str> = nodes
        .values()
        .filter(|n| n["data-role"] == "gateway")
        .map(|n| (n["data-network"].as_str(), n["data-id"].as_str()))
        .collect();
    assert_eq!(
        gateways.keys().copied().collect::<Vec<_>>(),
        ["net1", "net2"],
        "{gateways:?}"
    );
    assert_eq!(nodes[gateways["net2"]]["data-group"], "net2");

    // The edges, as sent.
    let cross = edges
        .get(&selected)
        .ok_or_else(|| format!("no edge {selected}"))?;
    assert_eq!(cross["data-connections"], TO_WEB.to_string());
    assert_eq!(cross["data-refused"], "0");
    assert_eq!(cross["data-security"], "mutual_tls");
    assert_eq!(cross["data-reporter"], "destination");
    assert_eq!(
        cross["data-via"], gateways["net2"],
        "through net2's gateway"
    );
    assert_eq!(cross["data-services"], "web.shop.svc.cluster.local");
    let bytes: f64 = cross["data-request-bytes"].parse()?;
    assert!(bytes > 0.0, "no request bytes on {selected}");
    let local = &edges[&format!("{client_id}->{db_id}")];
    assert_eq!(local["data-connections"], TO_DB.to_string());
    assert_eq!(local["data-via"], "", "same network: no gateway");
    assert_eq!(local["data-security"], "mutual_tls");
    let refused = &edges[&format!("{other_id}->{web_id}")];
    assert_eq!(refused["data-refused"], REFUSED.to_string());
    assert_eq!(refused["data-connections"], REFUSED.to_string());
    assert_eq!(refused["data-error-ratio"], "1");
    assert_eq!(
        edges.len(),
        3,
        "no other edges (gateway legs are not edges): {:?}",
        edges.keys()
    );

    // The selected edge's details.
    assert!(
        dom.contains(&format!(
            "data-selected=\"edge={}\"",
            selected.replace('>', "&gt;")
        )) || dom.contains(&format!("data-selected=\"edge={selected}\"")),
        "the edge in the address is not selected"
    );
    let field = |name: &str| {
        let open = format!("<dd data-field=\"{name}\">");
        dom.split(&open)
            .nth(1)
            .and_then(|rest| rest.split("</dd>").next())
            .map(str::to_string)
    };
    assert_eq!(field("connections").as_deref(), Some("4"));
    assert_eq!(field("security").as_deref(), Some("mutual TLS"));
    assert_eq!(field("via").as_deref(), Some(gateways["net2"]));

    let png = target_dir().join("topology-view.png");
    dashboard::screenshot(&url, &png, (1500, 820), BUDGET, &scratch)?;
    println!(
        "screenshot: {} ({} bytes)",
        png.display(),
        std::fs::metadata(&png)?.len()
    );
    Ok(())
}
