//! Locality at L4: a client's connections to a service go to endpoints in
//! its own zone, then its region, then elsewhere; when a node's link is cut
//! (nothing killed), new connections still succeed on the next level, and
//! the silent endpoint is ejected so later ones do not wait for it.
use std::time::{Duration, Instant};

use strait_e2e::{
    Mesh, Result, curl, http_server, metric_sum, namespace_yaml, node_yaml, require_root,
    workload_yaml,
};
use strait_topology::{Locality, Place, Spec, Topology};

/// The client on n1 (r1/z1); one endpoint each on n2 (r1/z1), n3 (r1/z2)
/// and n4 (r2/z1).
fn spec() -> Spec {
    Spec::new()
        .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n2", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n3", "c1", "net1", Locality::new("r1", "z2", ""))
        .node("n4", "c1", "net1", Locality::new("r2", "z1", ""))
        .pod("client", "n1")
        .pod("near", "n2")
        .pod("zone2", "n3")
        .pod("far", "n4")
}

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  clusterIP: 10.96.0.30
  selector:
    service: web
  ports:
  - name: http
    port: 80
    targetPort: 8080
";

const URL: &str = "http://10.96.0.30/marker";

/// Which endpoint answered each of `n` connections; an error on any
/// failure.
fn answers(client: &Place, n: usize) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let got = curl(client, URL)?;
        if !got.status.success() {
            return Err(format!(
                "connection {i} failed: {}",
                String::from_utf8_lossy(&got.stderr)
            )
            .into());
        }
        out.push(String::from_utf8_lossy(&got.stdout).into_owned());
    }
    Ok(out)
}

#[test]
fn connections_stay_in_zone_then_region_and_survive_cut_links() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let mesh = Mesh::new(&topo)?;
    let mut yaml = namespace_yaml("shop", true);
    for (node, region, zone) in [
        ("n1", "r1", "z1"),
        ("n2", "r1", "z1"),
        ("n3", "r1", "z2"),
        ("n4", "r2", "z1"),
    ] {
        yaml.push_str(&node_yaml(node, region, zone));
    }
    yaml.push_str(&workload_yaml(topo.pod("client")?, "shop", "client", &[]));
    for pod in ["near", "zone2", "far"] {
        yaml.push_str(&workload_yaml(
            topo.pod(pod)?,
            "shop",
            "web",
            &[("service", "web")],
        ));
    }
    yaml.push_str(SERVICE);
    mesh.write("mesh.yaml", &yaml)?;
    let _agents = ["n1", "n2", "n3", "n4"]
        .iter()
        .map(|n| mesh.start_agent(n, &[("--connect-timeout", "500ms")]))
        .collect::<Result<Vec<_>>>()?;
    let _servers = ["near", "zone2", "far"]
        .iter()
        .map(|p| http_server(topo.pod(p)?, 8080, p))
        .collect::<Result<Vec<_>>>()?;
    let client = &topo.pod("client")?.place;

    let got = answers(client, 30)?;
    assert!(
        got.iter().all(|a| a == "near"),
        "not all in the zone: {got:?}"
    );

    // As n1 sees the service: its zone, its region, the rest.
    let table = mesh.straitctl("n1", &["endpoints", "web.shop"])?;
    println!("{table}");
    let column = table
        .lines()
        .find(|l| l.starts_with("ENDPOINT"))
        .and_then(|header| header.split_whitespace().position(|h| h == "PRIORITY"))
        .ok_or_else(|| format!("no PRIORITY column:\n{table}"))?;
    for (pod, priority) in [("near", 0), ("zone2", 2), ("far", 3)] {
        let line = table
            .lines()
            .find(|l| l.contains(&format!("shop/{pod} ")))
            .ok_or_else(|| format!("{pod} missing:\n{table}"))?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            fields.get(column),
            Some(&priority.to_string().as_str()),
            "{line}"
        );
        assert!(line.ends_with("healthy"), "{line}");
    }

    for (cut, next, dead) in [("n2", "zone2", "near"), ("n3", "far", "zone2")] {
        topo.cut_node(cut)?;
        let start = Instant::now();
        let first = answers(client, 1)?;
        let first_took = start.elapsed();
        let start = Instant::now();
        let rest = answers(client, 20)?;
        println!(
            "{cut} cut: first connection served by the next level after {first_took:?}, \
             then {:?} per connection with {dead} ejected",
            start.elapsed() / 20
        );
        assert!(
            first.iter().chain(&rest).all(|a| a == next),
            "after cutting {cut}: {first:?} {rest:?}"
        );
        let table = mesh.straitctl("n1", &["endpoints", "shop/web"])?;
        assert!(
            table
                .lines()
                .any(|l| l.contains(&format!("shop/{dead} ")) && l.contains("ejected")),
            "{dead} not shown ejected:\n{table}"
        );
        let dump = mesh.admin("n1", "/config_dump")?;
        let dead_ip = topo.pod(dead)?.ipv4.to_string();
        assert!(
            dump["ejected"]
                .as_array()
                .is_some_and(|all| all.iter().any(|e| e["endpoint"]
                    .as_str()
                    .is_some_and(|a| a.starts_with(&dead_ip)))),
            "{dead} is not listed as ejected: {}",
            dump["ejected"]
        );
    }
    let ejections = metric_sum(&mesh.metrics("n1")?, "strait_outlier_ejections_total", &[]);
    assert!(ejections >= 2, "ejections counted: {ejections}");
    topo.restore_node("n2")?;
    topo.restore_node("n3")?;
    // Back once the ejection has run out and the link works again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while answers(client, 1)?[0] != "near" {
        if Instant::now() > deadline {
            return Err("traffic did not return to the zone after the links came back".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
