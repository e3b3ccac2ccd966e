//! A waypoint at work: a Service labelled `istio.io/use-waypoint` has its
//! traffic sent by the node agents to the waypoint's instance, which
//! applies the service's VirtualService (a header route, an 80/20 split
//! between DestinationRule subsets) and sends each request on over HBONE;
//! its request metrics count exactly what the client sent; unlabelled, the
//! service is reached directly again; and the waypoint refuses a CONNECT
//! for anything not bound to it.
use std::time::Instant;

use strait_e2e::{
    Mesh, Result, curl_body, hbone_probe, http_server, metric_sum, namespace_yaml, require_root,
    waypoint_yaml, workload_yaml,
};
use strait_topology::{Locality, Spec, Topology};

const VIP: &str = "10.96.0.90";

fn spec() -> Spec {
    Spec::new()
        .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n2", "c1", "net1", Locality::new("r1", "z1", ""))
        .pod("client", "n1")
        .pod("wp", "n1")
        .pod("v1", "n2")
        .pod("v2", "n2")
}

fn config(topo: &Topology, use_waypoint: bool) -> Result<String> {
    let label = if use_waypoint {
        "\n  labels:\n    istio.io/use-waypoint: waypoint"
    } else {
        ""
    };
    Ok([
        namespace_yaml("shop", true),
        workload_yaml(topo.pod("client")?, "shop", "client", &[]),
        workload_yaml(
            topo.pod("v1")?,
            "shop",
            "reviews",
            &[("service", "reviews"), ("version", "v1")],
        ),
        workload_yaml(
            topo.pod("v2")?,
            "shop",
            "reviews",
            &[("service", "reviews"), ("version", "v2")],
        ),
        waypoint_yaml("waypoint", "shop", topo.pod("wp")?, &[]),
        format!(
            "apiVersion: v1
kind: Service
metadata:
  name: reviews
  namespace: shop{label}
spec:
  clusterIP: {VIP}
  selector:
    service: reviews
  ports:
  - port: 9080
    targetPort: 8080
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: shop
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {{version: v1}}
  - name: v2
    labels: {{version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: shop
spec:
  hosts: [reviews]
  http:
  - name: jason
    match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination: {{host: reviews, subset: v2}}
  - name: split
    route:
    - destination: {{host: reviews, subset: v1}}
      weight: 80
    - destination: {{host: reviews, subset: v2}}
      weight: 20
---
"
        ),
    ]
    .concat())
}

/// `count` requests on one keep-alive connection (curl's URL globbing),
/// with `headers`; how many each version answered.
fn split(place: &strait_topology::Place, count: u32, headers: &[&str]) -> Result<(u32, u32)> {
    let url = format!("http://{VIP}:9080/marker?[1-{count}]");
    let mut argv = vec!["curl", "-sS", "--max-time", "300"];
    for h in headers {
        argv.extend(["-H", h]);
    }
    argv.push(&url);
    let out = place.run_ok(&argv, std::time::Duration::from_secs(320))?;
    let body = String::from_utf8_lossy(&out.stdout);
    let v1 = body.matches("from-v1;").count() as u32;
    let v2 = body.matches("from-v2;").count() as u32;
    if v1 + v2 != count {
        return Err(format!("{count} requests, {v1} + {v2} answers: {body:.300}").into());
    }
    Ok((v1, v2))
}

fn waypoint_requests(metrics: &str) -> u64 {
    metric_sum(metrics, "istio_requests_total", &["reporter=\"waypoint\""])
}

#[test]
fn a_labelled_service_is_routed_by_its_waypoint() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let mesh = Mesh::new(&topo)?;
    mesh.write("mesh.yaml", &config(&topo, true)?)?;
    let _agents = [mesh.start_agent("n1", &[])?, mesh.start_agent("n2", &[])?];
    let _waypoint = mesh.start_waypoint("wp", "shop/waypoint")?;
    let (client, wp) = (topo.pod("client")?, topo.pod("wp")?);
    let _servers = [
        http_server(topo.pod("v1")?, 8080, "from-v1;")?,
        http_server(topo.pod("v2")?, 8080, "from-v2;")?,
    ];
    let stats = |path: &str| -> Result<String> {
        curl_body(&wp.place, &format!("http://{}:15020{path}", wp.ipv4))
    };

    // The header route: jason always reaches v2.
    let started = Instant::now();
    let (v1, v2) = split(&client.place, 50, &["end-user: jason"])?;
    println!(
        "end-user: jason: v1 {v1}, v2 {v2} ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    assert_eq!((v1, v2), (0, 50));

    // The 80/20 split, over 4000 requests: within two points of 80.
    let started = Instant::now();
    let (v1, v2) = split(&client.place, 4000, &[])?;
    let share = f64::from(v1) * 100.0 / 4000.0;
    println!(
        "split: v1 {v1}, v2 {v2}: {share:.1}% to v1 ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    assert!((78.0..=82.0).contains(&share), "{share}% to v1");

    // The waypoint counted every request, by route outcome.
    let metrics = stats("/metrics")?;
    assert_eq!(waypoint_requests(&metrics), 4050, "{metrics}");
    let v2_ok = metric_sum(
        &metrics,
        "istio_requests_total",
        &[
            "reporter=\"waypoint\"",
            "destination_workload=\"v2\"",
            "response_code=\"200\"",
            "source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"",
        ],
    );
    assert_eq!(v2_ok, u64::from(v2) + 50);

    // Nothing else is reached through the waypoint: a CONNECT for a
    // workload or service not bound to it is refused.
    let answer = hbone_probe(
        &client.place,
        &mesh.ca_dir,
        &[],
        (
            "spiffe://cluster.local/ns/shop/sa/client",
            "spiffe://cluster.local/ns/shop/sa/waypoint",
            &format!("{}:15008", wp.ipv4),
        ),
        &format!("{}:8080", topo.pod("v1")?.ipv4),
    )?;
    println!("CONNECT to v1 through the waypoint: {answer}");
    assert_eq!(answer, "refused 403 Forbidden");

    // Unlabelled: the agents send to the service's endpoints again; the
    // waypoint sees no more requests, and both versions still answer.
    mesh.write("mesh.yaml", &config(&topo, false)?)?;
    let before = waypoint_requests(&stats("/metrics")?);
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (v1, v2) = split(&client.place, 20, &["end-user: jason"])?;
        // Without the waypoint no route applies: both versions answer.
        if v1 > 0 && v2 > 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err("still routed by the waypoint after unlabelling".into());
        }
    }
    let settled = waypoint_requests(&stats("/metrics")?);
    let (v1, v2) = split(&client.place, 100, &["end-user: jason"])?;
    println!("unlabelled: v1 {v1}, v2 {v2}; waypoint requests {before} -> {settled}");
    assert_eq!(waypoint_requests(&stats("/metrics")?), settled);
    assert!(v1 > 0 && v2 > 0);
    Ok(())
}
