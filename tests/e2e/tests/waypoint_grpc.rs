//! gRPC through a waypoint, with a real gRPC client and server (grpcio):
//! a unary call, a gRPC error counted by its status, and a 60 s
//! bidirectional stream that lives through a config reload, every message
//! answered as it is sent (not held until the stream ends). The reload
//! adds a GRPCRoute that sends one method to another server: new calls
//! follow it, the open stream stays where it is.
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use strait_e2e::{
    Mesh, Result, curl_body, install, metric_sum, namespace_yaml, require_root, wait_for,
    wait_for_line, waypoint_yaml, workload_yaml,
};
use strait_topology::{Locality, Place, Process, Spec, Topology};

const GREETER: &str = "10.96.0.95";
const PORT: u16 = 50051;
const STREAM_SECONDS: &str = "60";

fn spec() -> Spec {
    Spec::new()
        .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n2", "c1", "net1", Locality::new("r1", "z1", ""))
        .pod("client", "n1")
        .pod("wp", "n1")
        .pod("greeter", "n2")
        .pod("greeter2", "n2")
}

/// The mesh; `reloaded` adds a GRPCRoute, as an operator would while
/// streams run: `Unary` goes to greeter2, the rest stays.
fn config(topo: &Topology, reloaded: bool) -> Result<String> {
    let route = if reloaded {
        "apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: greeter
  namespace: shop
spec:
  parentRefs: [{group: '', kind: Service, name: greeter}]
  rules:
  - matches:
    - method: {service: strait.test.Echo, method: Unary}
    backendRefs: [{name: greeter2, port: 50051}]
  - backendRefs: [{name: greeter, port: 50051}]
---
"
    } else {
        ""
    };
    Ok([
        namespace_yaml("shop", true),
        workload_yaml(topo.pod("client")?, "shop", "client", &[]),
        workload_yaml(topo.pod("greeter")?, "shop", "greeter", &[]),
        workload_yaml(topo.pod("greeter2")?, "shop", "greeter", &[]),
        waypoint_yaml("waypoint", "shop", topo.pod("wp")?, &[]),
        format!(
            "apiVersion: v1
kind: Service
metadata:
  name: greeter
  namespace: shop
  labels: {{istio.io/use-waypoint: waypoint}}
spec:
  clusterIP: {GREETER}
  selector: {{app: greeter}}
  ports:
  - name: grpc
    port: {PORT}
---
apiVersion: v1
kind: Service
metadata:
  name: greeter2
  namespace: shop
spec:
  clusterIP: 10.96.0.96
  selector: {{app: greeter2}}
  ports:
  - name: grpc
    port: {PORT}
---
{route}"
        ),
    ]
    .concat())
}

fn grpc(place: &Place, args: &[&str]) -> Result<Process> {
    let python = install::l7_python().display().to_string();
    let script = install::l7_script("grpc_app.py").display().to_string();
    let mut argv = vec![python.as_str(), "-u", script.as_str()];
    argv.extend_from_slice(args);
    Ok(place.spawn(&argv)?)
}

/// The JSON line a client printed last.
fn result_of(process: &Process) -> Result<Json> {
    let log = process.log();
    let line = log
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| format!("no result: {log}"))?;
    Ok(serde_json::from_str(line)?)
}

fn call(place: &Place, args: &[&str]) -> Result<Json> {
    let mut client = grpc(place, args)?;
    client
        .wait_timeout(Duration::from_secs(60))?
        .ok_or("the gRPC client did not finish")?;
    result_of(&client)
}

#[test]
fn grpc_calls_and_a_long_stream_pass_the_waypoint_through_a_reload() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let mesh = Mesh::new(&topo)?;
    mesh.write("mesh.yaml", &config(&topo, false)?)?;
    let _agents = [mesh.start_agent("n1", &[])?, mesh.start_agent("n2", &[])?];
    let _waypoint = mesh.start_waypoint("wp", "shop/waypoint")?;
    let mut server = grpc(
        &topo.pod("greeter")?.place,
        &["serve", &PORT.to_string(), "greeter"],
    )?;
    server.wait_listening(PORT, Duration::from_secs(20))?;
    let mut server2 = grpc(
        &topo.pod("greeter2")?.place,
        &["serve", &PORT.to_string(), "greeter2"],
    )?;
    server2.wait_listening(PORT, Duration::from_secs(20))?;
    let client = topo.pod("client")?;
    let wp = topo.pod("wp")?;
    let stats =
        || -> Result<String> { curl_body(&wp.place, &format!("http://{}:15020/metrics", wp.ipv4)) };
    let target = format!("{GREETER}:{PORT}");

    // Unary, and a gRPC error: HTTP 200 with grpc-status 5 in trailers.
    let answer = call(&client.place, &["unary", &target, "hello"])?;
    println!("unary: {answer}");
    assert_eq!(answer["answer"], "greeter:hello");
    let missing = call(&client.place, &["missing", &target])?;
    println!("missing: {missing}");
    assert_eq!(missing["code"], "NOT_FOUND");
    let metrics = stats()?;
    let grpc_calls = |status: &str| {
        metric_sum(
            &metrics,
            "istio_requests_total",
            &[
                "reporter=\"waypoint\"",
                "request_protocol=\"grpc\"",
                "response_code=\"200\"",
                &format!("grpc_response_status=\"{status}\""),
                "destination_workload=\"greeter\"",
            ],
        )
    };
    println!(
        "waypoint counted gRPC calls: status 0: {}, status 5: {}",
        grpc_calls("0"),
        grpc_calls("5")
    );
    assert_eq!((grpc_calls("0"), grpc_calls("5")), (1, 1));

    // A bidirectional stream, a message every half second; each answer
    // comes back while the stream is open, and a reload in the middle
    // leaves it be.
    let started = Instant::now();
    let mut chat = grpc(&client.place, &["chat", &target, STREAM_SECONDS, "0.5"])?;
    wait_for_line(&mut chat, "answered 20", Duration::from_secs(40))?;
    println!(
        "stream: 20 answers in {:.1} s (answered as sent)",
        started.elapsed().as_secs_f64()
    );
    let reloads = |m: &str| metric_sum(m, "strait_config_reloads_total", &["result=\"success\""]);
    let before = reloads(&stats()?);
    mesh.write("mesh.yaml", &config(&topo, true)?)?;
    wait_for("the waypoint's reload", Duration::from_secs(30), || {
        (reloads(&stats().ok()?) != before).then_some(())
    })?;
    println!(
        "config reloaded at {:.1} s into the stream",
        started.elapsed().as_secs_f64()
    );
    // New calls take the new route; the open stream stays with greeter.
    let after = call(&client.place, &["unary", &target, "again"])?;
    println!("unary after the GRPCRoute: {after}");
    assert_eq!(after["answer"], "greeter2:again");
    chat.wait_timeout(Duration::from_secs(120))?
        .ok_or("the stream did not end")?;
    let streamed = result_of(&chat)?;
    println!("stream: {streamed}");
    assert_eq!(streamed["code"], "OK");
    assert!(streamed["sent"].as_u64().unwrap_or(0) >= 100, "{streamed}");
    assert_eq!(streamed["answers"], streamed["sent"]);
    assert!(
        streamed["last"][0]
            .as_str()
            .is_some_and(|l| l.starts_with("greeter:"))
    );
    assert!(streamed["seconds"].as_f64().unwrap_or(0.0) >= 60.0);
    // The stream is counted once it ends, with the status in its trailers
    // (two unary calls and the stream).
    let counted = |m: &str| {
        metric_sum(
            m,
            "istio_request_duration_milliseconds_count",
            &["request_protocol=\"grpc\"", "grpc_response_status=\"0\""],
        )
    };
    wait_for("the stream counted", Duration::from_secs(30), || {
        (counted(&stats().ok()?) == 3).then_some(())
    })?;
    server.kill()?;
    server2.kill()?;
    Ok(())
}

/// `retryOn` with gRPC's codes: a method that fails every other call with
/// UNAVAILABLE (a trailers-only answer, grpc-status in its headers) is
/// answered every time through a route retrying `unavailable`, and half
/// the time through one that does not retry.
#[test]
fn grpc_status_codes_are_retried_when_the_route_says() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let mesh = Mesh::new(&topo)?;
    let service = |name: &str, vip: &str, retries: &str| {
        format!(
            "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: shop
  labels: {{istio.io/use-waypoint: waypoint}}
spec:
  clusterIP: {vip}
  selector: {{app: greeter}}
  ports: [{{name: grpc, port: {PORT}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: shop}}
spec:
  hosts: [{name}]
  http:
  - route: [{{destination: {{host: {name}}}}}]
    retries: {retries}
---
"
        )
    };
    mesh.write(
        "mesh.yaml",
        &[
            namespace_yaml("shop", true),
            workload_yaml(topo.pod("client")?, "shop", "client", &[]),
            workload_yaml(topo.pod("greeter")?, "shop", "greeter", &[]),
            waypoint_yaml("waypoint", "shop", topo.pod("wp")?, &[]),
            service(
                "retried",
                "10.96.0.97",
                "{attempts: 2, retryOn: unavailable}",
            ),
            service("unretried", "10.96.0.98", "{attempts: 0}"),
        ]
        .concat(),
    )?;
    let _agents = [mesh.start_agent("n1", &[])?, mesh.start_agent("n2", &[])?];
    let _waypoint = mesh.start_waypoint("wp", "shop/waypoint")?;
    let mut server = grpc(
        &topo.pod("greeter")?.place,
        &["serve", &PORT.to_string(), "greeter"],
    )?;
    server.wait_listening(PORT, Duration::from_secs(20))?;
    let client = topo.pod("client")?;
    let retried = call(
        &client.place,
        &["flaky", &format!("10.96.0.97:{PORT}"), "10"],
    )?;
    let unretried = call(
        &client.place,
        &["flaky", &format!("10.96.0.98:{PORT}"), "10"],
    )?;
    println!("10 calls retried on unavailable: {retried}; not retried: {unretried}");
    assert_eq!(retried["codes"]["OK"], 10, "{retried}");
    assert_eq!(unretried["codes"]["UNAVAILABLE"], 5, "{unretried}");
    server.kill()?;
    Ok(())
}

/// A gRPC method an AuthorizationPolicy denies at the waypoint answers
/// PERMISSION_DENIED (as Envoy's RBAC filter answers gRPC), and the
/// service's other methods are served.
#[test]
fn a_grpc_method_a_policy_denies_is_permission_denied() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let mesh = Mesh::new(&topo)?;
    mesh.write(
        "mesh.yaml",
        &[
            namespace_yaml("shop", true),
            workload_yaml(topo.pod("client")?, "shop", "client", &[]),
            workload_yaml(topo.pod("greeter")?, "shop", "greeter", &[]),
            waypoint_yaml("waypoint", "shop", topo.pod("wp")?, &[]),
            format!(
                "apiVersion: v1
kind: Service
metadata:
  name: greeter
  namespace: shop
  labels: {{istio.io/use-waypoint: waypoint}}
spec:
  clusterIP: 10.96.0.99
  selector: {{app: greeter}}
  ports: [{{name: grpc, port: {PORT}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-flaky, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: \"\", name: greeter}}]
  action: DENY
  rules: [{{to: [{{operation: {{paths: [/strait.test.Echo/Flaky]}}}}]}}]
---
"
            ),
        ]
        .concat(),
    )?;
    let _agents = [mesh.start_agent("n1", &[])?, mesh.start_agent("n2", &[])?];
    let _waypoint = mesh.start_waypoint("wp", "shop/waypoint")?;
    let mut server = grpc(
        &topo.pod("greeter")?.place,
        &["serve", &PORT.to_string(), "greeter"],
    )?;
    server.wait_listening(PORT, Duration::from_secs(20))?;
    let client = topo.pod("client")?;
    let target = format!("10.96.0.99:{PORT}");
    let allowed = call(&client.place, &["unary", &target, "hello"])?;
    let denied = call(&client.place, &["flaky", &target, "4"])?;
    println!("Unary: {allowed}; Flaky (denied by policy), 4 calls: {denied}");
    assert_eq!(allowed["code"], "OK", "{allowed}");
    assert_eq!(denied["codes"]["PERMISSION_DENIED"], 4, "{denied}");
    server.kill()?;
    Ok(())
}
