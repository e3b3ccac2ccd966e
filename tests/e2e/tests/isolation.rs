//! Tenant isolation: one agent serves every pod of its node, so nothing one
//! pod does, and nothing one tenant writes, may take it from the others.
use std::{net::IpAddr, time::Duration};

use strait_e2e::{
    Mesh, Result, connections, curl_body, echo_server, footprint, hbone_probe, hold_connections,
    http_server, metric_sum, monotonic_now, namespace_yaml, require_root, two_nodes, workload_yaml,
};
use strait_topology::Topology;

const PROBER: &str = "spiffe://cluster.local/ns/shop/sa/prober";

/// The agent's refusals for one reason, by direction.
fn refused(metrics: &str, direction: &str, reason: &str) -> u64 {
    metric_sum(
        metrics,
        "strait_connection_failures_total",
        &[
            &format!("direction=\"{direction}\""),
            &format!("reason=\"{reason}\""),
        ],
    )
}

/// Waits until `pod` is enrolled on `node`.
fn captured(mesh: &Mesh<'_>, node: &str, pod: &str) -> Result<()> {
    mesh.wait_state(node, pod, Duration::from_secs(30), |s| s == "captured")?;
    Ok(())
}

/// A mesh of three pods: `a` and `b` on n1, `c` on n2.
fn three_pods(topo: &Topology) -> Result<Mesh<'_>> {
    let mesh = Mesh::new(topo)?;
    mesh.write(
        "mesh.yaml",
        &[
            namespace_yaml("shop", true),
            workload_yaml(topo.pod("a")?, "shop", "a", &[]),
            workload_yaml(topo.pod("b")?, "shop", "b", &[]),
            workload_yaml(topo.pod("c")?, "shop", "c", &[]),
        ]
        .concat(),
    )?;
    Ok(mesh)
}

/// A captured pod dialling the agent's own listeners, plaintext or as an
/// HBONE authority, is refused and counted; nothing piles up in the agent,
/// and the node's other pods keep reaching each other.
#[test]
fn a_pod_cannot_loop_connections_into_its_agent() -> Result<()> {
    require_root();
    let topo = Topology::create(two_nodes(&[("a", "n1"), ("b", "n1"), ("c", "n2")]))?;
    let mesh = three_pods(&topo)?;
    let agent1 = mesh.start_agent("n1", &[])?;
    let agent2 = mesh.start_agent("n2", &[])?;
    let (a, b, c) = (topo.pod("a")?, topo.pod("b")?, topo.pod("c")?);
    let _server = http_server(c, 8080, "from-c")?;
    captured(&mesh, "n1", "a")?;
    let before = footprint(agent1.pid())?;

    // Plaintext: the agent's inbound listener on the pod's loopback (never
    // captured), its own address and 0.0.0.0 (captured, then refused).
    let urls = [
        "http://127.0.0.1:15006/".to_string(),
        "http://[::1]:15006/".to_string(),
        format!("http://{}:15006/", a.ipv4),
        "http://0.0.0.0:15006/".to_string(),
    ];
    for url in &urls {
        let out = a.run(
            &["curl", "-sS", "-o", "/dev/null", "--max-time", "5", url],
            Duration::from_secs(10),
        )?;
        println!(
            "a: curl {url}: exit {:?} {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        assert!(!out.status.success(), "{url} was answered");
    }
    let after = footprint(agent1.pid())?;
    let metrics1 = mesh.metrics("n1")?;
    let loops1 = refused(&metrics1, "inbound", "loop") + refused(&metrics1, "outbound", "loop");
    println!(
        "n1's agent: RSS {} -> {} KiB, descriptors {} -> {}; loops refused {loops1}",
        before.0, after.0, before.1, after.1
    );
    assert!(
        after.1 < before.1 + 64,
        "the agent's descriptors grew from {} to {}",
        before.1,
        after.1
    );
    assert_eq!(loops1, urls.len() as u64, "loops refused at n1");

    // HBONE: a mesh identity (minted as an operator would) asks c's agent
    // for c's address at the agent's own ports.
    let host = &topo.node("n1")?.place;
    let c_id = "spiffe://cluster.local/ns/shop/sa/c";
    let hbone = format!("{}:15008", c.ipv4);
    for port in [15008, 15006, 15001, 15053] {
        let authority = format!("{}:{port}", c.ipv4);
        let answer = hbone_probe(host, &mesh.ca_dir, &[], (PROBER, c_id, &hbone), &authority)?;
        println!("CONNECT {authority} at c's agent: {answer}");
        assert_eq!(answer, "refused 403 Forbidden", "CONNECT {authority}");
    }
    let loops2 = refused(&mesh.metrics("n2")?, "inbound", "loop");
    assert_eq!(loops2, 4, "loops refused at n2");

    // The node's other pods still reach each other.
    let url = format!("http://{}:8080/marker", c.ipv4);
    assert_eq!(curl_body(b, &url)?, "from-c");
    drop((agent1, agent2));
    Ok(())
}

/// A pod that opens connections as fast as it can is refused past its cap
/// (counted), the agent's descriptors stay bounded, and the node's other
/// pods keep being served meanwhile.
#[test]
fn one_pod_cannot_take_the_agent_from_the_others() -> Result<()> {
    require_root();
    const CAP: u64 = 100;
    const TRIED: u64 = 400;
    let topo = Topology::create(two_nodes(&[("a", "n1"), ("b", "n1"), ("c", "n2")]))?;
    let mesh = three_pods(&topo)?;
    let cap = CAP.to_string();
    let agent1 = mesh.start_agent("n1", &[("--max-connections-per-pod", &cap)])?;
    let agent2 = mesh.start_agent("n2", &[])?;
    let (a, b, c) = (topo.pod("a")?, topo.pod("b")?, topo.pod("c")?);
    let _echo = echo_server(c, 9000)?;
    let _web = http_server(c, 8080, "from-c")?;
    captured(&mesh, "n1", "a")?;
    captured(&mesh, "n1", "b")?;
    let before = footprint(agent1.pid())?;

    let (hold, held) = hold_connections(a, IpAddr::V4(c.ipv4), 9000, TRIED as u32, 120)?;
    let during = footprint(agent1.pid())?;
    // b's connections while a holds all it may.
    let load = connections(b, IpAddr::V4(c.ipv4), 8080, 200, 8, monotonic_now())?;
    // The client gives up on a connection after 5 s; on two busy cores the
    // agent may refuse (and count) it after that. A connection within the
    // cap that fails for another reason (a TLS handshake timing out on a
    // loaded machine) frees its place for one over it: every refusal is
    // counted, by its reason.
    let outbound_failures = |metrics: &str| {
        metric_sum(
            metrics,
            "strait_connection_failures_total",
            &["direction=\"outbound\""],
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let metrics = mesh.metrics("n1")?;
        if outbound_failures(&metrics) >= TRIED - CAP || std::time::Instant::now() > deadline {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let over = refused(&metrics, "outbound", "pod_limit");
    let other = outbound_failures(&metrics) - over;
    let failures: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("strait_connection_failures_total{"))
        .collect();
    println!("n1's failures: {failures:?}");
    println!(
        "a held {:?} (served, refused) of {TRIED} with a cap of {CAP}; {over} counted over the pod's cap",
        held
    );
    println!(
        "n1's agent: RSS {} -> {} KiB, descriptors {} -> {}",
        before.0, during.0, before.1, during.1
    );
    println!(
        "b meanwhile: {} answered, {} failed ({:?})",
        load.total(),
        load.failures,
        load.errors
    );
    assert_eq!(
        held,
        (CAP, TRIED - CAP),
        "a's connections (served, refused)"
    );
    assert_eq!(over + other, TRIED - CAP, "refusals counted");
    // Refusals are for the cap, but for a tenth at most: on two cores
    // shared with the rest of the suite, some of a's 400 handshakes time
    // out (17 in one CI run).
    assert!(
        other <= (TRIED - CAP) / 10,
        "{other} of a's connections failed for another reason than its cap"
    );
    assert!(
        (during.1 as u64) < before.1 as u64 + 2 * CAP + 64,
        "the agent's descriptors grew from {} to {}",
        before.1,
        during.1
    );
    assert_eq!(load.failures, 0, "b was starved: {:?}", load.errors);
    assert_eq!(load.total(), 200);
    drop(hold);
    drop((agent1, agent2));
    Ok(())
}

/// Connections opened at `node`'s agent as the destination, from `who`.
fn arrived_from(mesh: &Mesh<'_>, node: &str, who: &str) -> Result<u64> {
    Ok(metric_sum(
        &mesh.metrics(node)?,
        "istio_tcp_connections_opened_total",
        &[
            "reporter=\"destination\"",
            &format!("source_principal=\"spiffe://cluster.local/{who}\""),
        ],
    ))
}

/// A tenant's WorkloadEntry with another pod's address, and one naming
/// another pod's network namespace (by the annotation), get neither: both
/// are refused and shown so, the pod's connections keep leaving as itself
/// and arriving to it, also once the tenant's objects are gone.
#[test]
fn a_tenant_cannot_claim_another_pods_address_or_namespace() -> Result<()> {
    require_root();
    let topo = Topology::create(two_nodes(&[("a", "n1"), ("b", "n2")]))?;
    let (a, b) = (topo.pod("a")?, topo.pod("b")?);
    let mesh = Mesh::new(&topo)?;
    mesh.write(
        "mesh.yaml",
        &[
            namespace_yaml("shop", true),
            workload_yaml(a, "shop", "a", &[]),
            workload_yaml(b, "shop", "b", &[]),
        ]
        .concat(),
    )?;
    let agent1 = mesh.start_agent("n1", &[])?;
    let agent2 = mesh.start_agent("n2", &[])?;
    let _a_web = http_server(a, 8080, "from-a")?;
    let _b_web = http_server(b, 8080, "from-b")?;
    captured(&mesh, "n1", "a")?;

    // The tenant's claims, written while a is enrolled.
    let squat = workload_yaml(a, "tenant", "squat", &[]).replace("name: a\n", "name: squat\n");
    let named = format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: borrow\n  namespace: tenant\n  annotations:\n    strait.dev/node: n1\n    strait.dev/netns: {netns}\nspec:\n  address: 10.1.0.99\n  serviceAccount: borrow\n---\n",
        netns = a.name
    );
    mesh.write(
        "tenant.yaml",
        &[namespace_yaml("tenant", true), squat, named].concat(),
    )?;
    let refused = |s: &str| s.starts_with("refused: ");
    let (squat_state, _) = mesh.wait_state("n1", "squat", Duration::from_secs(30), refused)?;
    let (borrow_state, _) = mesh.wait_state("n1", "borrow", Duration::from_secs(30), refused)?;
    println!("squat: {squat_state}");
    println!("borrow: {borrow_state}");
    assert!(
        squat_state.contains(&format!(
            "{} is already the address of WorkloadEntry shop/a",
            a.ipv4
        )),
        "{squat_state}"
    );
    assert!(borrow_state.contains("is shop/a's"), "{borrow_state}");
    let gauge = metric_sum(
        &mesh.metrics("n1")?,
        "strait_workloads",
        &["state=\"refused\""],
    );
    assert_eq!(gauge, 2, "strait_workloads{{state=\"refused\"}}");

    // a's connections leave as a, and connections into a arrive.
    let out = connections(a, IpAddr::V4(b.ipv4), 8080, 40, 4, monotonic_now())?;
    let (as_a, as_squat) = (
        arrived_from(&mesh, "n2", "ns/shop/sa/a")?,
        arrived_from(&mesh, "n2", "ns/tenant/sa/squat")?,
    );
    let into_a = connections(b, IpAddr::V4(a.ipv4), 8080, 10, 2, monotonic_now())?;
    println!(
        "while the claims stand: a -> b {} answered ({as_a} arrived as a, {as_squat} as the tenant), b -> a {} answered, {} failed",
        out.total(),
        into_a.total(),
        into_a.failures
    );
    assert_eq!((out.total(), out.failures), (40, 0));
    assert_eq!((as_a, as_squat), (40, 0));
    assert_eq!((into_a.total(), into_a.failures), (10, 0));

    // The tenant's objects go; a keeps its traffic.
    std::fs::remove_file(mesh.config_dir.join("tenant.yaml"))?;
    mesh.wait_state("n1", "squat", Duration::from_secs(30), str::is_empty)?;
    let after = connections(b, IpAddr::V4(a.ipv4), 8080, 10, 2, monotonic_now())?;
    println!(
        "after the tenant's objects are gone: b -> a {} answered, {} failed",
        after.total(),
        after.failures
    );
    assert_eq!((after.total(), after.failures), (10, 0));
    drop((agent1, agent2));
    Ok(())
}
