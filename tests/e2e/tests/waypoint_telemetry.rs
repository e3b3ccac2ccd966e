//! What a waypoint tells about requests: one trace across the client's
//! agent, the waypoint and the server's agent, received by a real OTLP
//! receiver (OpenTelemetry's own protobuf messages); trace context passed
//! to the server in the form the request used (W3C, B3); and Istio's
//! request metrics with their full label set and body sizes.
use std::{path::Path, time::Duration};

use serde_json::Value as Json;
use strait_e2e::{
    Mesh, Result, http_app, install, namespace_yaml, require_root, topology_node_yaml, wait_for,
    waypoint_yaml, workload_yaml,
};
use strait_topology::{Locality, Spec, Topology};

const VIP: &str = "10.96.0.91";
const OTLP_PORT: u16 = 4318;

fn spec() -> Spec {
    Spec::new()
        .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n2", "c1", "net1", Locality::new("r1", "z1", ""))
        .pod("productpage", "n1")
        .pod("wp", "n1")
        .pod("reviews", "n2")
}

fn config(topo: &Topology) -> Result<String> {
    Ok([
        topology_node_yaml(topo.node("n1")?),
        topology_node_yaml(topo.node("n2")?),
        namespace_yaml("shop", true),
        workload_yaml(
            topo.pod("productpage")?,
            "shop",
            "productpage",
            &[("version", "v7")],
        ),
        workload_yaml(
            topo.pod("reviews")?,
            "shop",
            "reviews",
            &[
                ("version", "v1"),
                ("service.istio.io/canonical-revision", "r1"),
            ],
        ),
        waypoint_yaml("waypoint", "shop", topo.pod("wp")?, &[]),
        format!(
            "apiVersion: v1
kind: Service
metadata:
  name: reviews
  namespace: shop
  labels:
    istio.io/use-waypoint: waypoint
spec:
  clusterIP: {VIP}
  selector:
    app: reviews
  ports:
  - port: 9080
    targetPort: 8080
---
# A connection per request: the server's agent ends its span for a
# connection when the connection ends.
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: shop
spec:
  host: reviews
  trafficPolicy:
    connectionPool:
      http:
        maxRequestsPerConnection: 1
---
"
        ),
    ]
    .concat())
}

/// The spans the receiver has written so far.
fn spans(file: &Path) -> Vec<Json> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The value of the samples of `name` whose labels contain all of
/// `labels`, summed (histogram sums are floats).
fn sample_sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
                && labels.iter().all(|w| l.contains(w))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn one_trace_crosses_the_agents_and_the_waypoint_and_requests_are_measured() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let mesh = Mesh::new(&topo)?;
    mesh.write("mesh.yaml", &config(&topo)?)?;
    let n1 = topo.node("n1")?;
    let collector = format!("http://{}:{OTLP_PORT}", n1.addrs.ipv4);
    let received = topo.scratch_dir().join("spans.jsonl");
    let python = install::l7_python().display().to_string();
    let receiver_script = install::l7_script("otlp_receiver.py").display().to_string();
    let mut receiver = n1.place.spawn(&[
        &python,
        &receiver_script,
        &n1.addrs.ipv4.to_string(),
        &OTLP_PORT.to_string(),
        &received.display().to_string(),
    ])?;
    receiver.wait_listening(OTLP_PORT, Duration::from_secs(20))?;
    let tracing = [
        ("--otlp-endpoint", collector.as_str()),
        ("--trace-sampling", "100"),
    ];
    let _agents = [
        mesh.start_agent("n1", &tracing)?,
        mesh.start_agent("n2", &tracing)?,
    ];
    let waypoint_process = mesh.start_waypoint_with(
        "wp",
        "shop/waypoint",
        &["--otlp-endpoint", &collector, "--trace-sampling", "100"],
    )?;
    let _server = http_app(&topo.pod("reviews")?.place, 8080, "headers", "")?;
    let client = topo.pod("productpage")?;
    let url = format!("http://{VIP}:9080/reviews/1");

    // A request with no trace of its own: the client's agent starts one
    // for the connection, the waypoint's span joins it, and so does the
    // server's agent's for the connection the waypoint opened.
    let body = "a".repeat(1000);
    let out = client.place.run_ok(
        &[
            "curl",
            "-sS",
            "--max-time",
            "20",
            "--data-binary",
            &body,
            &url,
        ],
        Duration::from_secs(30),
    )?;
    let first = String::from_utf8_lossy(&out.stdout).into_owned();
    let seen: Json = serde_json::from_str(&first).map_err(|e| format!("{e}: {first}"))?;
    let traceparent = seen["traceparent"]
        .as_str()
        .ok_or_else(|| format!("the server got no traceparent: {first}"))?
        .to_string();
    println!("the server got traceparent {traceparent}");
    let (trace_id, parent_of_server) = {
        let fields: Vec<&str> = traceparent.split('-').collect();
        (fields[1].to_string(), fields[2].to_string())
    };
    let chain = wait_for("the trace's three spans", Duration::from_secs(30), || {
        let all = spans(&received);
        let of_trace: Vec<&Json> = all.iter().filter(|s| s["trace_id"] == trace_id).collect();
        let find = |service: &str, instance: &str| {
            of_trace
                .iter()
                .find(|s| {
                    s["service"] == service
                        && s["instance"].as_str().is_some_and(|i| i.contains(instance))
                })
                .map(|s| (*s).clone())
        };
        Some((
            find("strait-agent", "n1")?,
            find("strait-waypoint", "shop/waypoint")?,
            find("strait-agent", "n2")?,
        ))
    })
    .map_err(|e| {
        format!(
            "{e}; received: {:?}; receiver: {}; waypoint: {}",
            spans(&received),
            receiver.log(),
            waypoint_process.log()
        )
    })?;
    let (outbound, waypoint, inbound) = chain;
    for span in [&outbound, &waypoint, &inbound] {
        println!(
            "span {} {} {}: parent {:?}",
            span["service"], span["name"], span["span_id"], span["parent_span_id"]
        );
    }
    assert_eq!(
        outbound["parent_span_id"], "",
        "the trace starts at the client's agent"
    );
    assert_eq!(outbound["kind"], 3);
    assert_eq!(waypoint["parent_span_id"], outbound["span_id"]);
    assert_eq!(
        waypoint["name"],
        format!("reviews.shop.svc.cluster.local:9080/*")
    );
    assert_eq!(waypoint["attributes"]["http.response.status_code"], 200);
    assert_eq!(inbound["parent_span_id"], waypoint["span_id"]);
    assert_eq!(inbound["kind"], 2);
    assert_eq!(waypoint["span_id"], parent_of_server.as_str());

    // A request that carries B3: the waypoint continues that trace, and
    // the server gets it back as B3 (and as traceparent).
    let out = client.place.run_ok(
        &[
            "curl",
            "-sS",
            "--max-time",
            "20",
            "-H",
            "x-b3-traceid: 463ac35c9f6413ad48485a3953bb6124",
            "-H",
            "x-b3-spanid: a2fb4a1d1a96d312",
            "-H",
            "x-b3-sampled: 1",
            &url,
        ],
        Duration::from_secs(30),
    )?;
    let second_body = String::from_utf8_lossy(&out.stdout).into_owned();
    let second: Json = serde_json::from_str(&second_body)?;
    println!(
        "B3 in: the server got x-b3-traceid {}, x-b3-spanid {}, x-b3-parentspanid {}, traceparent {}",
        second["x-b3-traceid"],
        second["x-b3-spanid"],
        second["x-b3-parentspanid"],
        second["traceparent"]
    );
    assert_eq!(second["x-b3-traceid"], "463ac35c9f6413ad48485a3953bb6124");
    assert_eq!(second["x-b3-parentspanid"], "a2fb4a1d1a96d312");
    let b3_span = second["x-b3-spanid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        second["traceparent"]
            .as_str()
            .is_some_and(|t| t.starts_with("00-463ac35c9f6413ad48485a3953bb6124-")),
        "{second_body}"
    );
    let waypoint_b3 = wait_for("the B3 request's span", Duration::from_secs(30), || {
        spans(&received).into_iter().find(|s| {
            s["trace_id"] == "463ac35c9f6413ad48485a3953bb6124" && s["service"] == "strait-waypoint"
        })
    })?;
    assert_eq!(waypoint_b3["parent_span_id"], "a2fb4a1d1a96d312");
    assert_eq!(waypoint_b3["span_id"], b3_span.as_str());
    let malformed = spans(&received)
        .iter()
        .filter(|s| s.get("malformed").is_some())
        .count();
    assert_eq!(malformed, 0, "the receiver could not decode some exports");

    // Istio's request metrics: both requests, with the owning workloads'
    // app, version and canonical names, and the bodies' sizes.
    let wp = topo.pod("wp")?;
    let stats = || -> Result<String> {
        strait_e2e::curl_body(&wp.place, &format!("http://{}:15020/metrics", wp.ipv4))
    };
    let labels = [
        "reporter=\"waypoint\"",
        "source_workload=\"productpage\"",
        "source_app=\"productpage\"",
        "source_version=\"v7\"",
        "source_canonical_service=\"productpage\"",
        "source_canonical_revision=\"v7\"",
        "source_cluster=\"c1\"",
        "destination_workload=\"reviews\"",
        "destination_app=\"reviews\"",
        "destination_version=\"v1\"",
        "destination_canonical_service=\"reviews\"",
        "destination_canonical_revision=\"r1\"",
        "destination_cluster=\"c1\"",
        "destination_service=\"reviews.shop.svc.cluster.local\"",
        "destination_service_name=\"reviews\"",
        "destination_service_namespace=\"shop\"",
        "request_protocol=\"http\"",
        "response_code=\"200\"",
        "grpc_response_status=\"\"",
        "response_flags=\"-\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    let metrics = wait_for("both requests counted", Duration::from_secs(30), || {
        let metrics = stats().ok()?;
        (sample_sum(&metrics, "istio_requests_total", &labels) == 2.0).then_some(metrics)
    })
    .map_err(|e| {
        let counted: Vec<String> = stats()
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("istio_requests_total"))
            .map(str::to_string)
            .collect();
        format!("{e}: {counted:?}")
    })?;
    let request_bytes = sample_sum(&metrics, "istio_request_bytes_sum", &labels);
    let response_bytes = sample_sum(&metrics, "istio_response_bytes_sum", &labels);
    let answered = (first.len() + second_body.len()) as f64;
    println!(
        "istio_request_bytes_sum {request_bytes} (sent 1000), istio_response_bytes_sum {response_bytes} (received {answered})"
    );
    assert_eq!(request_bytes, 1000.0);
    assert_eq!(response_bytes, answered);
    assert_eq!(
        sample_sum(
            &metrics,
            "istio_request_duration_milliseconds_count",
            &labels
        ),
        2.0
    );
    let exported = sample_sum(&metrics, "strait_trace_spans_exported_total", &[]);
    println!("the waypoint exported {exported} spans");
    assert!(exported >= 2.0);
    receiver.kill()?;
    Ok(())
}
