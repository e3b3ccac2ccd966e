//! Several networks (issue 16): pods of one network cannot route to the
//! other's, and reach its services through its east-west gateways as double
//! HBONE; the destination sees the client's own identity.
//!
//! Only gateway nodes sit on the shared segment, behind their network's
//! NAT. The tests share two cores with up to six agents and the load, so
//! they take turns.
use std::{
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use strait_e2e::{
    Load, Mesh, Result, client_cert, closed_by_the_server, connections, curl, curl_body,
    east_west_gateway_yaml, echo_server, footprint, hbone_probe, hbone_tls_status,
    hold_connections, http_server, marker_url, metric_sum, monotonic_now, namespace_yaml,
    require_root, self_signed, slow_handshakes, topology_node_yaml, wait_for_line_prefix,
    workload_yaml,
};
use strait_topology::{Locality, Place, Process, Spec, Topology};

static TURN: Mutex<()> = Mutex::new(());

const FROM_NET2: &str = "served in net2";
const VIP: &str = "10.96.0.10";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";

/// net1: `n1a` (pods `client`, `other`) and the gateway node `g1`; net2:
/// `n2a` (pod `s1`) and the gateway node `g2a`.
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

/// Namespaces, Node objects and the client, as every test here has them.
fn base_yaml(topo: &Topology) -> Result<String> {
    let mut yaml = namespace_yaml("shop", true);
    yaml.push_str(&namespace_yaml("istio-system", false));
    for node in topo.nodes() {
        yaml.push_str(&topology_node_yaml(node));
    }
    yaml.push_str(&workload_yaml(topo.pod("client")?, "shop", "client", &[]));
    Ok(yaml)
}

/// Service `web` (port 80 to 8080, pods labelled `service: web`),
/// exported to other networks, at `cluster_ips`.
fn web_service(cluster_ips: &[&str]) -> String {
    let ips: Vec<String> = cluster_ips.iter().map(|ip| format!("\"{ip}\"")).collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n  labels:\n    istio.io/global: \"true\"\nspec:\n  clusterIP: {}\n  clusterIPs: [{}]\n  selector:\n    service: web\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n---\n",
        cluster_ips[0],
        ips.join(", ")
    )
}

fn config(topo: &Topology) -> Result<String> {
    let mut yaml = base_yaml(topo)?;
    yaml.push_str(&workload_yaml(topo.pod("other")?, "shop", "other", &[]));
    yaml.push_str(&workload_yaml(
        topo.pod("s1")?,
        "shop",
        "web",
        &[("service", "web")],
    ));
    yaml.push_str(&web_service(&[VIP, "fd00:96::10"]));
    // The same endpoint under a name net2 keeps to itself.
    yaml.push_str(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: db\n  namespace: shop\nspec:\n  clusterIP: 10.96.0.12\n  selector:\n    service: web\n  ports:\n  - name: tcp\n    port: 5432\n    targetPort: 8080\n---\n",
    );
    yaml.push_str(&east_west_gateway_yaml(topo, "net1", &["g1"])?);
    yaml.push_str(&east_west_gateway_yaml(topo, "net2", &["g2a"])?);
    Ok(yaml)
}

#[test]
fn a_service_on_another_network_is_reached_through_its_gateway_as_the_client() -> Result<()> {
    require_root();
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
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

    let agents = [mesh.start_agent("n1a", &[])?, mesh.start_agent("n2a", &[])?];
    let gateways = [
        mesh.start_gateway("g1", "net1")?,
        mesh.start_gateway("g2a", "net2")?,
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
    let client_id = CLIENT_ID;
    let metrics = mesh.metrics("n2a")?;
    let seen = metric_sum(
        &metrics,
        "istio_tcp_connections_opened_total",
        &[
            "reporter=\"destination\"",
            &format!("source_principal=\"{client_id}\""),
            "source_workload=\"client\"",
            "source_cluster=\"c1\"",
            "destination_cluster=\"c2\"",
        ],
    );
    assert!(seen >= 2, "destination metrics:\n{metrics}");
    let gateway_metrics = mesh.metrics("g2a")?;
    let through = metric_sum(
        &gateway_metrics,
        "istio_tcp_connections_opened_total",
        // Istio's gateways report the leg they open, as its source.
        &[
            "reporter=\"source\"",
            "source_workload_namespace=\"istio-system\"",
            "destination_cluster=\"c2\"",
        ],
    );
    assert!(through >= 2, "gateway metrics:\n{gateway_metrics}");
    println!("destination saw {seen} connections from {client_id}; the gateway carried {through}");
    // Each hop's access log names the client and the destination.
    let web_id = "spiffe://cluster.local/ns/shop/sa/web";
    for (hop, process) in [
        ("source", &agents[0]),
        ("gateway", &gateways[1]),
        ("destination", &agents[1]),
    ] {
        let line: serde_json::Value =
            serde_json::from_str(&access_line(process, client_id, web_id)?)?;
        let f = &line["fields"];
        println!(
            "{hop} access log: src {} ({}) -> dst {} ({})",
            f["src"], f["src_identity"], f["dst"], f["dst_identity"]
        );
    }

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

    refusals(&mesh, &topo)?;
    boundary(&mesh, &topo)
}

/// What crosses networks is the ports of exported services and nothing
/// else: the client's agent does not take another port of net2's pod
/// there, the gateway gives one answer to a port not exported and to an
/// address that is nobody's, and the destination refuses what arrives
/// through a gateway for a port or service it does not export.
fn boundary(mesh: &Mesh<'_>, topo: &Topology) -> Result<()> {
    let (client, s1) = (topo.pod("client")?, topo.pod("s1")?);
    let _other = http_server(s1, 9090, "not exported")?;
    let url = format!("http://{}:9090/marker", s1.ipv4);
    let out = client.run(
        &["curl", "-sS", "--max-time", "5", &url],
        Duration::from_secs(10),
    )?;
    println!(
        "client -> {url} (a port of s1 no global service has): exit {:?} {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    assert!(!out.status.success(), "{url} crossed networks");
    let counted = metric_sum(
        &mesh.metrics("n1a")?,
        "strait_connection_failures_total",
        &["direction=\"outbound\"", "reason=\"not_exported\""],
    );
    assert_eq!(counted, 1, "refusals counted at the client's agent");
    // Its exported port, by address, still crosses.
    let exported = format!("http://{}:8080/marker", s1.ipv4);
    assert_eq!(curl_body(client, &exported)?, FROM_NET2);

    let edge = &topo.node("g1")?.place;
    let (gateway_v4, _) = topo.node("g2a")?.addrs.internet.ok_or("no address")?;
    let gateway = format!("{gateway_v4}:15008");
    let gateway_id = "spiffe://cluster.local/ns/istio-system/sa/eastwest-net2-istio-east-west";
    let octets = s1.ipv4.octets();
    let nobody = std::net::Ipv4Addr::new(octets[0], octets[1], octets[2], 99);
    let at_gateway = |authority: &str| {
        hbone_probe(
            edge,
            &mesh.ca_dir,
            &[],
            (CLIENT_ID, gateway_id, &gateway),
            authority,
        )
    };
    let not_exported = at_gateway(&format!("{}:9090", s1.ipv4))?;
    let nobodys = at_gateway(&format!("{nobody}:8080"))?;
    println!(
        "gateway: {}:9090 (not exported) -> {not_exported}; {nobody}:8080 (nobody's) -> {nobodys}",
        s1.ipv4
    );
    assert_eq!(not_exported, "refused 403 Forbidden");
    assert_eq!(nobodys, not_exported, "the answers tell a workload apart");

    // As another network's agent asks the destination, through a gateway.
    let inside = &topo.node("n2a")?.place;
    let web_id = "spiffe://cluster.local/ns/shop/sa/web";
    let s1_hbone = format!("{}:15008", s1.ipv4);
    let across = ["HBONE_PROBE_SOURCE_NETWORK=net1"];
    let at_destination = |authority: &str| {
        hbone_probe(
            inside,
            &mesh.ca_dir,
            &across,
            (CLIENT_ID, web_id, &s1_hbone),
            authority,
        )
    };
    for (authority, want) in [
        (format!("{}:9090", s1.ipv4), "refused 403 Forbidden"),
        (
            "db.shop.svc.cluster.local:5432".to_string(),
            "refused 403 Forbidden",
        ),
        ("web.shop.svc.cluster.local:80".to_string(), "200"),
    ] {
        let answer = at_destination(&authority)?;
        println!("destination, as from net1: CONNECT {authority} -> {answer}");
        assert_eq!(answer, want, "CONNECT {authority} from another network");
    }
    let refused_inbound = metric_sum(
        &mesh.metrics("n2a")?,
        "strait_connection_failures_total",
        &["direction=\"inbound\"", "reason=\"not_exported\""],
    );
    assert_eq!(refused_inbound, 2, "refusals counted at the destination");
    Ok(())
}

/// The first access-log line of `process` naming both identities (a line
/// is written when its connection closes).
fn access_line(process: &Process, source: &str, destination: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = process.log();
        if let Some(line) = log.lines().find(|l| {
            l.contains("connection closed")
                && l.contains(&format!("\"src_identity\":\"{source}\""))
                && l.contains(&format!("\"dst_identity\":\"{destination}\""))
        }) {
            return Ok(line.trim().to_string());
        }
        if Instant::now() > deadline {
            return Err(format!("no access line from {source} to {destination}:\n{log}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What net2's gateway refuses, asked from net1's edge (outside any pod,
/// so nothing captures it): a client without a mesh certificate, a service
/// net2 does not export, an address outside net2. Each refusal counted.
fn refusals(mesh: &Mesh<'_>, topo: &Topology) -> Result<()> {
    let edge = &topo.node("g1")?.place;
    let (gateway_v4, _) = topo.node("g2a")?.addrs.internet.ok_or("no address")?;
    let gateway = format!("{gateway_v4}:15008");
    let gateway_id = "spiffe://cluster.local/ns/istio-system/sa/eastwest-net2-istio-east-west";
    let probe = |authority: &str| {
        hbone_probe(
            edge,
            &mesh.ca_dir,
            &[],
            (CLIENT_ID, gateway_id, &gateway),
            authority,
        )
    };
    let refused = |reason: &str| -> Result<u64> {
        Ok(metric_sum(
            &mesh.metrics("g2a")?,
            "strait_connection_failures_total",
            &["direction=\"gateway\"", &format!("reason=\"{reason}\"")],
        ))
    };

    // The probe itself gets through when it asks for what is exported.
    assert_eq!(probe("web.shop.svc.cluster.local:80")?, "200");

    let dir = edge.scratch_dir()?;
    let (cert, key) = self_signed(edge, &dir, "rogue", Some(CLIENT_ID))?;
    for (what, client) in [
        ("no certificate", None),
        (
            "a self-signed one claiming the client's identity",
            Some((cert.as_str(), key.as_str())),
        ),
    ] {
        assert_eq!(
            hbone_tls_status(edge, &gateway, client)?,
            "000",
            "{what}: the gateway let TLS through"
        );
    }
    assert_eq!(refused("tls")?, 2, "TLS refusals at the gateway");

    let not_exported = probe("db.shop.svc.cluster.local:5432")?;
    assert!(
        not_exported.starts_with("refused"),
        "a service net2 keeps: {not_exported}"
    );
    assert_eq!(refused("not_exported")?, 1);

    let client = topo.pod("client")?;
    let outside = probe(&format!("{}:8080", client.ipv4))?;
    assert!(
        outside.starts_with("refused"),
        "an address in net1: {outside}"
    );
    assert_eq!(refused("outside_network")?, 1);
    println!(
        "gateway refusals: 2 TLS (none, self-signed), not exported ({not_exported}), \
         outside its network ({outside}); each counted"
    );
    Ok(())
}

const CONNECTIONS: u32 = 10_000;
const CONCURRENCY: u32 = 8;
const SHARED_VIP: &str = "10.96.0.11";

/// Two nodes and the edge per network, and two gateway nodes into net2:
/// the client on `n1a`, endpoints `a1` (net1), `s1` and `s2` (net2).
fn failover_spec() -> Spec {
    let (r1, r2) = (Locality::new("r1", "z1", ""), Locality::new("r2", "z1", ""));
    Spec::new()
        .node("n1a", "c1", "net1", r1.clone())
        .node("n1b", "c1", "net1", r1.clone())
        .gateway_node("g1", "c1", "net1", r1)
        .node("n2a", "c2", "net2", r2.clone())
        .node("n2b", "c2", "net2", r2.clone())
        .gateway_node("g2a", "c2", "net2", r2.clone())
        .gateway_node("g2b", "c2", "net2", r2)
        .pod("client", "n1a")
        .pod("a1", "n1b")
        .pod("s1", "n2a")
        .pod("s2", "n2b")
}

fn failover_config(topo: &Topology) -> Result<String> {
    let mut yaml = base_yaml(topo)?;
    for pod in ["a1", "s1", "s2"] {
        yaml.push_str(&workload_yaml(
            topo.pod(pod)?,
            "shop",
            "web",
            &[("service", "web")],
        ));
    }
    yaml.push_str(&web_service(&[SHARED_VIP]));
    yaml.push_str(&east_west_gateway_yaml(topo, "net2", &["g2a", "g2b"])?);
    Ok(yaml)
}

/// Connections each gateway carried so far.
fn carried(mesh: &Mesh<'_>, gateway: &str) -> Result<u64> {
    Ok(metric_sum(
        &mesh.metrics(gateway)?,
        "istio_tcp_connections_opened_total",
        &["reporter=\"source\""],
    ))
}

fn run(client: &Place, n: u32, since: f64) -> Result<Load> {
    connections(client, SHARED_VIP.parse()?, 80, n, CONCURRENCY, since)
}

#[test]
fn failover_crosses_to_the_other_network_and_survives_a_gateway() -> Result<()> {
    require_root();
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let topo = Topology::create(failover_spec())?;
    let mesh = Mesh::new(&topo)?;
    mesh.write("mesh.yaml", &failover_config(&topo)?)?;
    let _agents = ["n1a", "n1b", "n2a", "n2b"]
        .iter()
        .map(|n| mesh.start_agent(n, &[]))
        .collect::<Result<Vec<_>>>()?;
    let _g2a = mesh.start_gateway("g2a", "net2")?;
    let mut g2b = mesh.start_gateway("g2b", "net2")?;
    let mut a1 = http_server(topo.pod("a1")?, 8080, "a1")?;
    let _net2 = [
        http_server(topo.pod("s1")?, 8080, "s1")?,
        http_server(topo.pod("s2")?, 8080, "s2")?,
    ];
    let client = &topo.pod("client")?.place;
    let net2 = ["s1", "s2"];

    // What the client's node shows: net2's endpoints after net1's, each
    // through both gateways.
    let shown = mesh.straitctl("n1a", &["endpoints", "web.shop"])?;
    println!("straitctl endpoints web.shop on n1a:\n{shown}");
    for gateway in ["g2a", "g2b"] {
        let (v4, _) = topo.node(gateway)?.addrs.internet.ok_or("no address")?;
        let via = format!("via gateway istio-system/eastwest-net2 at {v4}:15008  healthy");
        assert_eq!(shown.matches(&via).count(), 2, "{via:?} under s1 and s2");
    }

    // All up: the client's own network serves every connection.
    let got = run(client, CONNECTIONS, 0.0)?;
    got.check_all(&["a1"], "all up");

    // net1's endpoint dies: everything crosses, through both gateways.
    a1.kill()?;
    let killed = monotonic_now();
    let before = (carried(&mesh, "g2a")?, carried(&mesh, "g2b")?);
    let got = run(client, CONNECTIONS, killed)?;
    got.check_all(&net2, "net1's endpoint killed");
    println!(
        "net1's endpoint killed: first connection served in net2 {:.0} ms after the kill \
         (the client process started {:.0} ms after it)",
        got.first_of(&net2).unwrap_or(f64::NAN),
        got.started_ms
    );
    let both = (
        carried(&mesh, "g2a")? - before.0,
        carried(&mesh, "g2b")? - before.1,
    );
    println!("both gateways up: g2a carried {}, g2b {}", both.0, both.1);
    assert!(both.0 > 0 && both.1 > 0, "a gateway idles: {both:?}");
    assert!(
        both.0 + both.1 >= u64::from(CONNECTIONS),
        "connections not through a gateway: {both:?}"
    );

    // One gateway dies in the middle of a run: connections started after
    // it go through the other.
    let since = monotonic_now();
    let mark = carried(&mesh, "g2b")?;
    let (got, killed_ms, g2b_carried) = std::thread::scope(|scope| -> Result<_> {
        let load = scope.spawn(|| run(client, CONNECTIONS, since).map_err(|e| e.to_string()));
        let deadline = Instant::now() + Duration::from_secs(120);
        while carried(&mesh, "g2b")? < mark + 1_000 && !load.is_finished() {
            if Instant::now() > deadline {
                return Err("g2b carried nothing".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let g2b_carried = carried(&mesh, "g2b")? - mark;
        g2b.kill()?;
        let killed_ms = (monotonic_now() - since) * 1000.0;
        let got = load.join().map_err(|_| "the load panicked")??;
        Ok((got, killed_ms, g2b_carried))
    })?;
    println!("g2b killed mid-run: {}", got.summary());
    let after = got.failures_after(killed_ms);
    println!(
        "g2b killed {killed_ms:.0} ms into the run, having carried {g2b_carried}: \
         {} connections in flight through it failed, {after} started after the kill failed",
        got.failures as usize - after
    );
    assert_eq!(after, 0, "{:?}", got.errors);
    assert_eq!(
        got.count(&net2) + got.failures,
        u64::from(CONNECTIONS),
        "{:?}",
        got.answers
    );

    // net1's endpoint comes back: connections return to net1 once the
    // proxy tries it again.
    let _a1 = http_server(topo.pod("a1")?, 8080, "a1")?;
    let restored = monotonic_now();
    let deadline = Instant::now() + Duration::from_secs(60);
    let back_ms = loop {
        let got = run(client, 50, restored)?;
        assert_eq!(got.failures, 0, "while a1 returns: {:?}", got.errors);
        if let Some(first) = got.first_of(&["a1"]) {
            break first;
        }
        if Instant::now() > deadline {
            return Err("connections never returned to net1".into());
        }
    };
    println!("net1's endpoint restored: first connection served in net1 {back_ms:.0} ms after");
    let got = run(client, CONNECTIONS, 0.0)?;
    got.check_all(&["a1"], "net1 restored");
    Ok(())
}

/// The gateway faces every network: a thousand TLS handshakes that never
/// start and a flood of HTTP/2 streams from a mesh identity, both from
/// net1's edge (the address net1's clients share behind its NAT), while
/// the client's connections across keep being served.
#[test]
fn the_gateway_holds_floods_to_its_limits() -> Result<()> {
    require_root();
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let topo = Topology::create(spec())?;
    let mesh = Mesh::new(&topo)?;
    mesh.write("mesh.yaml", &config(&topo)?)?;
    let _server = http_server(topo.pod("s1")?, 8080, FROM_NET2)?;
    let _agents = [mesh.start_agent("n1a", &[])?, mesh.start_agent("n2a", &[])?];
    // Listening on every address, as in a pod behind a load balancer.
    let gateway = mesh.start_agent(
        "g2a",
        &[
            ("--role", "east-west-gateway"),
            ("--gateway", "istio-system/eastwest-net2"),
            ("--listen", "0.0.0.0:15008"),
        ],
    )?;
    let client = topo.pod("client")?;
    assert_eq!(
        curl_body(client, &format!("http://{VIP}/marker"))?,
        FROM_NET2
    );
    let before = footprint(gateway.pid())?;

    let edge = &topo.node("g1")?.place;
    let (gateway_v4, _) = topo.node("g2a")?.addrs.internet.ok_or("no address")?;

    // Many replicas of one workload on many nodes of net1 share its
    // identity and, behind the NAT, one address: a pod's limits (16
    // connections per identity) would turn them away.
    let out = edge.run_ok(
        &[
            env!("CARGO_BIN_EXE_hbone-probe"),
            &mesh.ca_dir.display().to_string(),
            CLIENT_ID,
            "spiffe://cluster.local/ns/istio-system/sa/eastwest-net2-istio-east-west",
            &format!("{gateway_v4}:15008"),
            "web.shop.svc.cluster.local:80",
            "100",
        ],
        Duration::from_secs(60),
    )?;
    let answers = String::from_utf8_lossy(&out.stdout).trim().to_string();
    println!("100 HBONE connections at once as the client, from net1's one address: {answers}");
    assert_eq!(answers, "200 x100");

    let mut slow = slow_handshakes(edge, gateway_v4.into(), 15008, 1000, 30)?;
    let dir = edge.scratch_dir()?;
    let (cert, key) = client_cert(
        edge,
        &dir,
        "flooder",
        "spiffe://cluster.local/ns/shop/sa/flooder",
        &mesh.ca_dir.join("root-cert.pem"),
        &mesh.ca_dir.join("root-key.pem"),
    )?;
    let url = format!("https://{gateway_v4}:15008/");
    let mut floods = Vec::new();
    for _ in 0..30 {
        floods.push(edge.spawn(&[
            "nghttp", "-n", "-y", "--cert", &cert, "--key", &key, "-m", "2000", "-t", "60", &url,
        ])?);
    }

    let load = connections(client, VIP.parse()?, 80, 300, 4, monotonic_now())?;
    let during = footprint(gateway.pid())?;
    println!(
        "client across the gateway during the floods: {} answered, {} failed in {:.1}s ({:?})",
        load.total(),
        load.failures,
        load.seconds,
        load.errors
    );
    assert_eq!(
        load.failures, 0,
        "the client was starved: {:?}",
        load.errors
    );
    assert_eq!(load.count(&[FROM_NET2]), 300);

    for mut flood in floods {
        let _ = flood.wait_timeout(Duration::from_secs(60))?;
    }
    let metrics = mesh.metrics("g2a")?;
    let refused = |reason: &str| {
        metric_sum(
            &metrics,
            "strait_connection_failures_total",
            &["direction=\"gateway\"", &format!("reason=\"{reason}\"")],
        )
    };
    let (limited, tls) = (refused("limit"), refused("tls"));
    wait_for_line_prefix(&mut slow, "closed by the server", Duration::from_secs(60))?;
    let closed = closed_by_the_server(&slow);
    println!(
        "gateway: RSS {} -> {} KiB, fds {} -> {}; refused over a limit {limited}, handshakes failed {tls}; \
         silent connections closed by it {closed} of 1000",
        before.0, during.0, before.1, during.1
    );
    assert!(limited > 0, "no peer was held to a limit:\n{metrics}");
    // 512 pending handshakes per address (a whole network's NAT), not a
    // thousand.
    assert!(
        during.1 < before.1 + 700,
        "the gateway holds {} descriptors (from {})",
        during.1,
        before.1
    );
    assert!(
        closed >= 900,
        "only {closed} silent connections were closed"
    );
    Ok(())
}

const ECHO_VIP: &str = "10.96.0.13";

/// net1: the client on `n1a`, the edge `g1`; net2: `s1` and `c2a` on
/// `n2a`, `c2b` on `n2b`, the gateway node `g2a`.
fn fan_in_spec() -> Spec {
    Spec::new()
        .node("n1a", "c1", "net1", Locality::new("r1", "z1", ""))
        .gateway_node("g1", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n2a", "c2", "net2", Locality::new("r2", "z1", ""))
        .node("n2b", "c2", "net2", Locality::new("r2", "z2", ""))
        .gateway_node("g2a", "c2", "net2", Locality::new("r2", "z1", ""))
        .pod("client", "n1a")
        .pod("s1", "n2a")
        .pod("c2a", "n2a")
        .pod("c2b", "n2b")
}

/// Legitimate fan-in: one identity's 256 connections at once to one pod,
/// from two nodes of its network and from another network (through the
/// gateway, each a tunnel of its own), are all served. And one identity's
/// silent sessions through the gateway (tunnels whose inner handshake
/// never starts, each waiting at the destination's agent) do not keep
/// other identities' connections across from being served: the
/// destination gives its network's gateways room for a whole network,
/// and the gateway bounds each identity's share.
#[test]
fn one_identitys_fan_in_is_served_and_its_silent_sessions_starve_no_one() -> Result<()> {
    require_root();
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let topo = Topology::create(fan_in_spec())?;
    let mesh = Mesh::new(&topo)?;
    let mut yaml = base_yaml(&topo)?;
    yaml.push_str(&workload_yaml(
        topo.pod("s1")?,
        "shop",
        "web",
        &[("service", "web")],
    ));
    for pod in ["c2a", "c2b"] {
        yaml.push_str(&workload_yaml(topo.pod(pod)?, "shop", "client", &[]));
    }
    yaml.push_str(&web_service(&[VIP]));
    yaml.push_str(&format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: echo\n  namespace: shop\n  labels:\n    istio.io/global: \"true\"\nspec:\n  clusterIP: {ECHO_VIP}\n  selector:\n    service: web\n  ports:\n  - name: tcp-echo\n    port: 9000\n---\n"
    ));
    yaml.push_str(&east_west_gateway_yaml(&topo, "net2", &["g2a"])?);
    mesh.write("mesh.yaml", &yaml)?;
    let _agents = ["n1a", "n2a", "n2b"]
        .iter()
        .map(|n| mesh.start_agent(n, &[]))
        .collect::<Result<Vec<_>>>()?;
    let gateway = mesh.start_gateway("g2a", "net2")?;
    let s1 = topo.pod("s1")?;
    let _echo = echo_server(s1, 9000)?;
    let _web = http_server(s1, 8080, FROM_NET2)?;

    // 256 at once, all as shop/client.
    let s1_ip = IpAddr::V4(s1.ipv4);
    let (across, across_held) =
        hold_connections(topo.pod("client")?, ECHO_VIP.parse()?, 9000, 128, 120)?;
    let (near_a, near_a_held) = hold_connections(topo.pod("c2a")?, s1_ip, 9000, 64, 120)?;
    let (near_b, near_b_held) = hold_connections(topo.pod("c2b")?, s1_ip, 9000, 64, 120)?;
    let open = metric_sum(
        &mesh.metrics("n2a")?,
        "istio_tcp_connections_opened_total",
        &[
            "reporter=\"destination\"",
            &format!("source_principal=\"{CLIENT_ID}\""),
        ],
    );
    println!(
        "256 at once as {CLIENT_ID}: from net1 through the gateway {across_held:?}, \
         from n2a {near_a_held:?}, from n2b {near_b_held:?} (served, refused); \
         s1's agent opened {open}"
    );
    assert_eq!(across_held, (128, 0), "from another network");
    assert_eq!(
        (near_a_held, near_b_held),
        ((64, 0), (64, 0)),
        "from two nodes"
    );
    drop((across, near_a, near_b));

    // Silent sessions: 300 tunnels through the gateway as one identity
    // (minted here as an operator would, from net1's edge), each waiting
    // at s1's agent for a handshake that never comes.
    let edge = &topo.node("g1")?.place;
    let (gateway_v4, _) = topo.node("g2a")?.addrs.internet.ok_or("no address")?;
    let ca_dir = mesh.ca_dir.display().to_string();
    let gateway_addr = format!("{gateway_v4}:15008");
    let mut silent = edge.spawn(&[
        "env",
        "HBONE_PROBE_HOLD=60",
        env!("CARGO_BIN_EXE_hbone-probe"),
        &ca_dir,
        "spiffe://cluster.local/ns/shop/sa/flooder",
        "spiffe://cluster.local/ns/istio-system/sa/eastwest-net2-istio-east-west",
        &gateway_addr,
        "echo.shop.svc.cluster.local:9000",
        "300",
    ])?;
    wait_for_line_prefix(&mut silent, "", Duration::from_secs(60))?;
    let answers = silent.log().lines().next().unwrap_or_default().to_string();
    // Another identity's connections across, meanwhile.
    let load = connections(
        topo.pod("client")?,
        VIP.parse()?,
        80,
        100,
        4,
        monotonic_now(),
    )?;
    let gateway_fp = footprint(gateway.pid())?;
    println!(
        "300 silent sessions as shop/flooder through the gateway: {answers}; \
         the client across meanwhile: {} answered, {} failed ({:?}); gateway RSS {} KiB, {} descriptors",
        load.total(),
        load.failures,
        load.errors,
        gateway_fp.0,
        gateway_fp.1
    );
    assert_eq!(answers, "200 x300", "the silent sessions");
    assert_eq!(
        load.failures, 0,
        "the client was starved: {:?}",
        load.errors
    );
    assert_eq!(load.total(), 100);
    drop(silent);
    Ok(())
}
