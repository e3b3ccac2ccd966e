//! Several networks (issue 16): pods of one network cannot route to the
//! other's, and reach its services through its east-west gateways as double
//! HBONE; the destination sees the client's own identity.
//!
//! Network net1: nodes `n1a` (pods `client`, `other`) and the gateway node
//! `g1`; net2: `n2a` (pod `s1`) and the gateway node `g2a`. Only gateway
//! nodes sit on the shared segment, behind their network's NAT.
use std::{net::IpAddr, time::Duration};

use strait_e2e::{
    Mesh, Result, curl, curl_body, http_server, marker_url, metric_sum, namespace_yaml,
    require_root, workload_yaml,
};
use strait_topology::{Locality, Process, Spec, Topology};

const FROM_NET2: &str = "served in net2";
const VIP: &str = "10.96.0.10";

fn spec() -> Spec {
    Spec::new()
        .node("n1a", "c1", "net1", Locality::new("r1", "z1", ""))
        .gateway_node("g1", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n2a", "c2", "net2", Locality::new("r2", "z1", ""))
        .gateway_node("g2a", "c2", "net2", Locality::new("r2", "z1", ""))
        .pod("client", "n1a")
        .pod("other", "n1a")
        .pod("s1", "n2a")
}

fn node_yaml(name: &str, network: &str, region: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    topology.kubernetes.io/region: {region}\n    topology.kubernetes.io/zone: z1\n    topology.istio.io/network: {network}\n---\n"
    )
}

/// An east-west gateway into `network` at `addresses`, with its instances
/// (on the gateway nodes, at their addresses on the shared segment).
fn gateway_yaml(topo: &Topology, network: &str, nodes: &[&str]) -> Result<String> {
    let name = format!("eastwest-{network}");
    let mut addresses = String::new();
    let mut instances = String::new();
    for node in nodes {
        let (v4, v6) = topo
            .node(node)?
            .addrs
            .internet
            .ok_or("not a gateway node")?;
        addresses.push_str(&format!(
            "  - {{type: IPAddress, value: \"{v4}\"}}\n  - {{type: IPAddress, value: \"{v6}\"}}\n"
        ));
        instances.push_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: {name}-{node}\n  namespace: istio-system\n  annotations:\n    strait.dev/node: {node}\n    strait.dev/addresses: \"{v6}\"\nspec:\n  address: {v4}\n  serviceAccount: {name}-istio-east-west\n  labels:\n    gateway.networking.k8s.io/gateway-name: {name}\n---\n"
        ));
    }
    Ok(format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: {name}\n  namespace: istio-system\n  labels:\n    topology.istio.io/network: {network}\nspec:\n  gatewayClassName: istio-east-west\n  listeners:\n  - name: mesh\n    port: 15008\n    protocol: HBONE\n  addresses:\n{addresses}---\n{instances}"
    ))
}

fn config(topo: &Topology) -> Result<String> {
    let mut yaml = namespace_yaml("shop", true);
    yaml.push_str(&namespace_yaml("istio-system", false));
    yaml.push_str(&node_yaml("n1a", "net1", "r1"));
    yaml.push_str(&node_yaml("g1", "net1", "r1"));
    yaml.push_str(&node_yaml("n2a", "net2", "r2"));
    yaml.push_str(&node_yaml("g2a", "net2", "r2"));
    yaml.push_str(&workload_yaml(topo.pod("client")?, "shop", "client", &[]));
    yaml.push_str(&workload_yaml(topo.pod("other")?, "shop", "other", &[]));
    yaml.push_str(&workload_yaml(
        topo.pod("s1")?,
        "shop",
        "web",
        &[("service", "web")],
    ));
    yaml.push_str(&format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n  labels:\n    istio.io/global: \"true\"\nspec:\n  clusterIP: {VIP}\n  clusterIPs: [\"{VIP}\", \"fd00:96::10\"]\n  selector:\n    service: web\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n---\n"
    ));
    yaml.push_str(&gateway_yaml(topo, "net1", &["g1"])?);
    yaml.push_str(&gateway_yaml(topo, "net2", &["g2a"])?);
    Ok(yaml)
}

/// The gateway role on `node`.
fn start_gateway(mesh: &Mesh<'_>, node: &str, network: &str) -> Result<Process> {
    let gateway = format!("istio-system/eastwest-{network}");
    mesh.start_agent(
        node,
        &[
            ("--role", "east-west-gateway"),
            ("--gateway", gateway.as_str()),
        ],
    )
}

#[test]
fn a_service_on_another_network_is_reached_through_its_gateway_as_the_client() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let mesh = Mesh::new(&topo)?;
    mesh.write("mesh.yaml", &config(&topo)?)?;
    let _server = http_server(topo.pod("s1")?, 8080, FROM_NET2)?;
    let (client, s1) = (topo.pod("client")?, topo.pod("s1")?);

    // Before the mesh: net2's pods do not route from net1.
    for ip in [IpAddr::V4(s1.ipv4), IpAddr::V6(s1.ipv6)] {
        let out = client.run(
            &["curl", "-s", "--max-time", "2", &marker_url(ip, 8080)],
            Duration::from_secs(10),
        )?;
        assert!(
            !out.status.success(),
            "{ip} answered from net1 without the mesh"
        );
    }
    println!("net1 -> net2 pod addresses without the mesh: no route (asserted, v4 and v6)");

    let _agents = [mesh.start_agent("n1a", &[])?, mesh.start_agent("n2a", &[])?];
    let _gateways = [
        start_gateway(&mesh, "g1", "net1")?,
        start_gateway(&mesh, "g2a", "net2")?,
    ];

    let segment = topo.node("g2a")?.capture("eth1", &["tcp"])?;
    let inside = topo.node("g2a")?.capture("eth0", &["tcp"])?;
    let started = std::time::Instant::now();
    assert_eq!(
        curl_body(client, &format!("http://{VIP}/marker"))?,
        FROM_NET2
    );
    println!(
        "first cross-network request served in {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(
        curl_body(client, "http://[fd00:96::10]/marker")?,
        FROM_NET2,
        "IPv6"
    );
    let (segment, inside) = (segment.finish()?, inside.finish()?);
    for (what, pcap) in [("shared segment", &segment), ("inside net2", &inside)] {
        let ports = pcap.tcp_ports();
        println!(
            "{what}: {} packets, TCP ports {ports:?}, {} TLS handshakes",
            pcap.len(),
            pcap.tls_handshakes()
        );
        assert!(ports.contains(&15008), "{what}: no HBONE: {ports:?}");
        for plain in [80, 8080] {
            assert!(!ports.contains(&plain), "{what}: port {plain}: {ports:?}");
        }
        assert!(pcap.tls_handshakes() >= 1, "{what}: no TLS");
        for clear in [FROM_NET2.as_bytes(), b"GET /marker".as_slice()] {
            assert!(
                !pcap.contains(clear),
                "{what}: {:?} in the clear",
                String::from_utf8_lossy(clear)
            );
        }
    }

    // The destination saw the client, not the gateway.
    let client_id = "spiffe://cluster.local/ns/shop/sa/client";
    let metrics = mesh.metrics("n2a")?;
    let seen = metric_sum(
        &metrics,
        "istio_tcp_connections_opened_total",
        &[
            "reporter=\"destination\"",
            &format!("source_principal=\"{client_id}\""),
        ],
    );
    assert!(seen >= 2, "destination metrics:\n{metrics}");
    let gateway_metrics = mesh.metrics("g2a")?;
    let through = metric_sum(
        &gateway_metrics,
        "istio_tcp_connections_opened_total",
        &[
            "reporter=\"gateway\"",
            &format!("source_principal=\"{client_id}\""),
        ],
    );
    assert!(through >= 2, "gateway metrics:\n{gateway_metrics}");
    println!("destination saw {seen} connections from {client_id}; the gateway carried {through}");

    // The destination's policy judges the client's own identity, across
    // the gateway: the client is let in, another pod of net1 is not.
    let other = topo.pod("other")?;
    assert_eq!(
        curl_body(other, &format!("http://{VIP}/marker"))?,
        FROM_NET2
    );
    mesh.write(
        "authz.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: only-client\n  namespace: shop\nspec:\n  selector:\n    matchLabels:\n      service: web\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/shop/sa/client\"]\n",
    )?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while curl(other, &format!("http://{VIP}/marker"))?
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the policy never applied"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        curl_body(client, &format!("http://{VIP}/marker"))?,
        FROM_NET2
    );
    let denied = metric_sum(
        &mesh.metrics("n2a")?,
        "strait_connection_failures_total",
        &["direction=\"inbound\"", "reason=\"denied\""],
    );
    assert!(denied >= 1, "no denial counted at the destination");
    println!("policy at the destination: client allowed, other denied ({denied} denials counted)");
    Ok(())
}
