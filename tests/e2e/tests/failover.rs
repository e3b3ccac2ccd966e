//! Failover as issue 5 defines it, on 10,000 connections per step: a
//! client's connections stay in its zone, move to the other zone of its
//! region when its zone's endpoints die, then to the other region; a
//! `distribute` rule splits 80/20; a `failover` rule picks the named region
//! over a third one. Every connection is counted, and none may fail.
//!
//! The tests share the machine's two cores with up to six agents and the
//! load, so they take turns.
use std::{
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use strait_e2e::{
    Load, Mesh, Result, connections, http_server, monotonic_now, namespace_yaml, node_yaml,
    require_root, workload_yaml,
};
use strait_topology::{Locality, Process, Spec, Topology};

static TURN: Mutex<()> = Mutex::new(());

const CONNECTIONS: u32 = 10_000;
const CONCURRENCY: u32 = 8;

/// Nodes named `n<i>` with (region, zone); the client is on the first, one
/// endpoint pod (named after its place, `r1z1`...) on each of the others.
fn topology(places: &[(&str, &str)], endpoint_names: &[&str]) -> Spec {
    let mut spec = Spec::new();
    for (i, (region, zone)) in places.iter().enumerate() {
        spec = spec.node(
            &format!("n{}", i + 1),
            "c1",
            "net1",
            Locality::new(region, zone, ""),
        );
    }
    spec = spec.pod("client", "n1");
    for (i, name) in endpoint_names.iter().enumerate() {
        spec = spec.pod(name, &format!("n{}", i + 2));
    }
    spec
}

fn service_yaml(name: &str, namespace: &str, ip: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  clusterIP: {ip}\n  selector:\n    service: {name}\n  ports:\n  - name: http\n    port: {port}\n    targetPort: 8080\n---\n"
    )
}

/// The mesh config: nodes with their labels, the client, the endpoints.
fn mesh_yaml(
    topo: &Topology,
    places: &[(&str, &str)],
    endpoints: &[&str],
    namespace: &str,
    service: &str,
) -> Result<String> {
    let mut yaml = namespace_yaml(namespace, true);
    for (i, (region, zone)) in places.iter().enumerate() {
        yaml.push_str(&node_yaml(&format!("n{}", i + 1), region, zone));
    }
    yaml.push_str(&workload_yaml(
        topo.pod("client")?,
        namespace,
        "client",
        &[],
    ));
    for pod in endpoints {
        yaml.push_str(&workload_yaml(
            topo.pod(pod)?,
            namespace,
            service,
            &[("service", service)],
        ));
    }
    Ok(yaml)
}

fn start(mesh: &Mesh<'_>, nodes: usize) -> Result<Vec<Process>> {
    (1..=nodes)
        .map(|i| mesh.start_agent(&format!("n{i}"), &[]))
        .collect()
}

fn serve(topo: &Topology, pods: &[&str]) -> Result<Vec<(String, Process)>> {
    pods.iter()
        .map(|p| Ok((p.to_string(), http_server(&topo.pod(p)?.place, 8080, p)?)))
        .collect()
}

fn kill(servers: &mut [(String, Process)], names: &[&str]) -> Result<()> {
    for (name, server) in servers.iter_mut() {
        if names.contains(&name.as_str()) {
            server.kill()?;
        }
    }
    Ok(())
}

fn load(topo: &Topology, ip: IpAddr, port: u16, n: u32, since: f64) -> Result<Load> {
    connections(&topo.pod("client")?.place, ip, port, n, CONCURRENCY, since)
}

#[test]
fn no_rule_zone_then_other_zone_then_other_region() -> Result<()> {
    require_root();
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let places = [
        ("r1", "z1"),
        ("r1", "z1"),
        ("r1", "z2"),
        ("r2", "z1"),
        ("r2", "z2"),
    ];
    let endpoints = ["r1z1", "r1z2", "r2z1", "r2z2"];
    let topo = Topology::create(topology(&places, &endpoints))?;
    let mesh = Mesh::new(&topo)?;
    let mut yaml = mesh_yaml(&topo, &places, &endpoints, "shop", "web")?;
    yaml.push_str(&service_yaml("web", "shop", "10.96.0.40", 80));
    mesh.write("mesh.yaml", &yaml)?;
    let _agents = start(&mesh, places.len())?;
    let mut servers = serve(&topo, &endpoints)?;
    let vip: IpAddr = "10.96.0.40".parse()?;

    let got = load(&topo, vip, 80, CONNECTIONS, 0.0)?;
    got.check_all(&["r1z1"], "all up");
    assert_eq!(got.total(), u64::from(CONNECTIONS));

    for (dead, next, step) in [
        (&["r1z1"][..], &["r1z2"][..], "zone r1/z1 killed"),
        (&["r1z2"][..], &["r2z1", "r2z2"][..], "region r1 killed"),
    ] {
        kill(&mut servers, dead)?;
        let killed = monotonic_now();
        let got = load(&topo, vip, 80, CONNECTIONS, killed)?;
        got.check_all(next, step);
        assert_eq!(got.total(), u64::from(CONNECTIONS));
        let first = got.first_of(next).unwrap_or(f64::NAN);
        println!(
            "{step}: first connection served by {next:?} {first:.0} ms after the kill \
             (the client process started {:.0} ms after it)",
            got.started_ms
        );
    }
    Ok(())
}

#[test]
fn distribute_rule_from_the_istio_examples_splits_80_20() -> Result<()> {
    require_root();
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    // The example's localities are regions named after clusters.
    let places = [
        ("east-cluster", "z1"),
        ("east-cluster", "z1"),
        ("west-cluster", "z1"),
    ];
    let endpoints = ["east", "west"];
    let topo = Topology::create(topology(&places, &endpoints))?;
    let mesh = Mesh::new(&topo)?;
    // The DestinationRule as Istio's docs write it (no namespace: default).
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/istio/003-04.yaml"),
    )?;
    assert!(example.contains("distribute"), "{example}");
    mesh.write("003-04.yaml", &example)?;
    let mut yaml = mesh_yaml(&topo, &places, &endpoints, "default", "reviews")?;
    yaml.push_str(&service_yaml("reviews", "default", "10.96.0.41", 9080));
    mesh.write("mesh.yaml", &yaml)?;
    let _agents = start(&mesh, places.len())?;
    let _servers = serve(&topo, &endpoints)?;

    let got = load(&topo, "10.96.0.41".parse()?, 9080, CONNECTIONS, 0.0)?;
    got.check_all(&["east", "west"], "distribute");
    let east = got.count(&["east"]) as f64 * 100.0 / got.total() as f64;
    println!(
        "distribute east-cluster/* 80, west-cluster/* 20: observed {east:.1}% / {:.1}%",
        100.0 - east
    );
    assert!((77.0..=83.0).contains(&east), "east got {east:.1}%");
    Ok(())
}

#[test]
fn failover_rule_picks_the_named_region_over_a_third() -> Result<()> {
    require_root();
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let places = [("r1", "z1"), ("r1", "z1"), ("r2", "z1"), ("r3", "z1")];
    let endpoints = ["r1", "r2", "r3"];
    let topo = Topology::create(topology(&places, &endpoints))?;
    let mesh = Mesh::new(&topo)?;
    let mut yaml = mesh_yaml(&topo, &places, &endpoints, "shop", "api")?;
    yaml.push_str(&service_yaml("api", "shop", "10.96.0.42", 80));
    mesh.write("mesh.yaml", &yaml)?;
    let _agents = start(&mesh, places.len())?;
    let mut servers = serve(&topo, &endpoints)?;
    let vip: IpAddr = "10.96.0.42".parse()?;

    kill(&mut servers, &["r1"])?;
    // Without a rule both other regions are one level: both take traffic.
    let got = load(&topo, vip, 80, 400, 0.0)?;
    got.check_all(&["r2", "r3"], "no rule, r1 down");
    assert!(
        got.count(&["r2"]) > 0 && got.count(&["r3"]) > 0,
        "without a failover rule r2 and r3 share: {:?}",
        got.answers
    );

    mesh.write(
        "failover.yaml",
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: api-failover
  namespace: shop
spec:
  host: api.shop.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        enabled: true
        failover:
        - from: r1
          to: r2
",
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while mesh.admin("n1", "/config_dump")?["config"]["destination_rules"]
        .as_array()
        .is_none_or(|a| a.is_empty())
    {
        if Instant::now() > deadline {
            return Err("the DestinationRule was not loaded".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = load(&topo, vip, 80, CONNECTIONS, 0.0)?;
    got.check_all(&["r2"], "failover r1 -> r2, r3 present");

    // Past the named region, the rest.
    kill(&mut servers, &["r2"])?;
    let got = load(&topo, vip, 80, 400, 0.0)?;
    got.check_all(&["r3"], "r1 and r2 down");
    Ok(())
}
