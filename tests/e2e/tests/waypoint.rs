//! A waypoint at work: a Service labelled `istio.io/use-waypoint` has its
//! traffic sent by the node agents to the waypoint's instance, which
//! applies the service's VirtualService (a header route, an 80/20 split
//! between DestinationRule subsets) and sends each request on over HBONE;
//! its request metrics count exactly what the client sent; the
//! destination's agent sees the original client's identity (its L4
//! AuthorizationPolicy allows `client` and not `other`, both through the
//! waypoint, and its metrics name `client`); unlabelled, the service is
//! reached directly again; the waypoint refuses a CONNECT for anything not
//! bound to it, and an agent refuses a peer that names a client without
//! being a waypoint of the destination.
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
        .pod("other", "n1")
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
        workload_yaml(topo.pod("other")?, "shop", "other", &[]),
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
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: reviews
  namespace: shop
spec:
  selector:
    matchLabels: {{service: reviews}}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/shop/sa/client]
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

    // The 80/20 split, over 10,000 requests: within two points of 80.
    let started = Instant::now();
    let (v1, v2) = split(&client.place, 10_000, &[])?;
    let share = f64::from(v1) * 100.0 / 10_000.0;
    println!(
        "split: v1 {v1}, v2 {v2}: {share:.1}% to v1 ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    assert!((78.0..=82.0).contains(&share), "{share}% to v1");

    // The waypoint counted every request, by route outcome.
    let metrics = stats("/metrics")?;
    assert_eq!(waypoint_requests(&metrics), 10_050, "{metrics}");
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

    // The destinations' agent saw the client, not the waypoint.
    let n2 = mesh.metrics("n2")?;
    let opened = |principal: &str| {
        metric_sum(
            &n2,
            "istio_tcp_connections_opened_total",
            &[
                "reporter=\"destination\"",
                &format!("source_principal=\"spiffe://cluster.local/ns/shop/sa/{principal}\""),
            ],
        )
    };
    println!(
        "n2 opened: from client {}, from the waypoint {}",
        opened("client"),
        opened("waypoint")
    );
    assert!(opened("client") > 0);
    assert_eq!(opened("waypoint"), 0);

    // The destination's L4 policy allows `client` only: `other` is
    // refused through the waypoint as it would be without it.
    let other = topo.pod("other")?;
    let url = format!("http://{VIP}:9080/marker");
    let out = other.place.run_ok(
        &["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", &url],
        std::time::Duration::from_secs(30),
    )?;
    let code = String::from_utf8_lossy(&out.stdout).to_string();
    println!("other through the waypoint: {code}");
    assert_eq!(code, "503");
    let denied = metric_sum(
        &mesh.metrics("n2")?,
        "strait_connection_failures_total",
        &["reason=\"denied\""],
    );
    assert!(denied > 0);

    // Only a waypoint of the destination may name a client: a mesh
    // member claiming to send for `client` is refused.
    let v1 = topo.pod("v1")?;
    let answer = hbone_probe(
        &other.place,
        &mesh.ca_dir,
        &["HBONE_PROBE_ON_BEHALF_OF=spiffe://cluster.local/ns/shop/sa/client"],
        (
            "spiffe://cluster.local/ns/shop/sa/other",
            "spiffe://cluster.local/ns/shop/sa/reviews",
            &format!("{}:15008", v1.ipv4),
        ),
        &format!("{}:8080", v1.ipv4),
    )?;
    println!("a non-waypoint naming a client: {answer}");
    assert_eq!(answer, "refused 403 Forbidden");

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

/// Polls `value` until it reaches `at_least`; what it was.
fn wait_for(what: &str, at_least: u64, value: impl Fn() -> Result<u64>) -> Result<u64> {
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let now = value()?;
        if now >= at_least {
            return Ok(now);
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: {now}, waited for {at_least}").into());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn switching_a_service_onto_and_off_its_waypoint_loses_no_request() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let mesh = Mesh::new(&topo)?;
    mesh.write("mesh.yaml", &config(&topo, false)?)?;
    let _agents = [mesh.start_agent("n1", &[])?, mesh.start_agent("n2", &[])?];
    let _waypoint = mesh.start_waypoint("wp", "shop/waypoint")?;
    let (client, wp) = (topo.pod("client")?, topo.pod("wp")?);
    let _servers = [
        http_server(topo.pod("v1")?, 8080, "from-v1;")?,
        http_server(topo.pod("v2")?, 8080, "from-v2;")?,
    ];
    let through_waypoint = || -> Result<u64> {
        let metrics = curl_body(&wp.place, &format!("http://{}:15020/metrics", wp.ipv4))?;
        Ok(waypoint_requests(&metrics))
    };
    let delivered = || -> Result<u64> {
        Ok(metric_sum(
            &mesh.metrics("n2")?,
            "istio_tcp_connections_opened_total",
            &["reporter=\"destination\""],
        ))
    };

    // 10,000 requests, each on a connection of its own (so each is sent
    // where the config in force says), codes printed one per line.
    const REQUESTS: u64 = 10_000;
    let url = format!("http://{VIP}:9080/marker?[1-{REQUESTS}]");
    let started = Instant::now();
    let mut load = client.place.spawn(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\\n",
        "-H",
        "Connection: close",
        "--max-time",
        "10",
        &url,
    ])?;
    let direct = wait_for("delivered before labelling", 2000, delivered)?;
    mesh.write("mesh.yaml", &config(&topo, true)?)?;
    let labelled_at = started.elapsed();
    let moved = wait_for("through the waypoint", 2000, through_waypoint)?;
    mesh.write("mesh.yaml", &config(&topo, false)?)?;
    let unlabelled_at = started.elapsed();
    let status = load
        .wait_timeout(std::time::Duration::from_secs(600))?
        .ok_or("the load did not finish")?;
    let took = started.elapsed();
    let codes = load.log();
    let ok = codes.lines().filter(|l| l.trim() == "200").count() as u64;
    let failed: Vec<&str> = codes.lines().filter(|l| l.trim() != "200").collect();
    let total = through_waypoint()?;
    println!(
        "{REQUESTS} requests in {:.1} s: {ok} answered 200, {} failed {:?}; labelled at {:.1} s (after {direct} direct), unlabelled at {:.1} s (after {moved} through the waypoint); {total} through the waypoint in all",
        took.as_secs_f64(),
        failed.len(),
        &failed[..failed.len().min(5)],
        labelled_at.as_secs_f64(),
        unlabelled_at.as_secs_f64(),
    );
    assert!(status.success(), "curl: {status}");
    assert_eq!(ok, REQUESTS, "failed: {failed:?}");
    // Moved back: more requests go straight to the endpoints.
    let (v1, v2) = split(&client.place, 100, &["end-user: jason"])?;
    assert!(v1 > 0 && v2 > 0, "still routed by the waypoint: {v1}/{v2}");
    assert_eq!(through_waypoint()?, total);
    Ok(())
}
