//! AuthorizationPolicy at the waypoint (Istio's ambient attachment,
//! `targetRefs`): paths, methods, principals and headers decide each
//! request; paths are normalized first (Istio's default, BASE), so
//! `/public/../admin` is `/admin` to the policy and to the app; refusals are
//! 403 `RBAC: access denied`, counted by policy; a TCP connection through
//! the waypoint meets the same policies without request attributes.
use std::time::Duration;

use strait_e2e::{
    Mesh, Result, curl_body, http_app, namespace_yaml, require_root, waypoint_yaml, workload_yaml,
};
use strait_topology::{Locality, Place, Spec, Topology};

const API: &str = "10.96.0.120";

fn spec() -> Spec {
    Spec::new()
        .node("n1", "c1", "net1", Locality::new("r1", "z1", ""))
        .node("n2", "c1", "net1", Locality::new("r1", "z1", ""))
        .pod("client", "n1")
        .pod("ops", "n1")
        .pod("wp", "n1")
        .pod("api", "n2")
}

fn config(topo: &Topology) -> Result<String> {
    Ok([
        namespace_yaml("shop", true),
        workload_yaml(topo.pod("client")?, "shop", "client", &[]),
        workload_yaml(topo.pod("ops")?, "shop", "ops", &[]),
        workload_yaml(topo.pod("api")?, "shop", "api", &[]),
        waypoint_yaml("waypoint", "shop", topo.pod("wp")?, &[]),
        format!(
            "apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: shop
  labels: {{istio.io/use-waypoint: waypoint}}
spec:
  clusterIP: {API}
  selector: {{app: api}}
  ports:
  - port: 9080
    targetPort: 8080
---
"
        ),
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api, namespace: shop}
spec:
  targetRefs:
  - {kind: Service, group: \"\", name: api}
  action: ALLOW
  rules:
  - to:
    - operation:
        methods: [GET]
        paths: [/public, /public/*]
  - from:
    - source:
        principals: [cluster.local/ns/shop/sa/ops]
    to:
    - operation:
        paths: [/admin, /admin/*]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-debug, namespace: shop}
spec:
  targetRefs:
  - {kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}
  action: DENY
  rules:
  - when:
    - key: request.headers[x-debug]
      values: [\"*\"]
---
"
        .to_string(),
    ]
    .concat())
}

/// The status and body of one request with curl's `args`.
fn ask(place: &Place, args: &[&str]) -> Result<(String, String)> {
    let mut argv = vec!["curl", "-s", "--path-as-is", "-w", "\n%{http_code}"];
    argv.extend_from_slice(args);
    let out = place.run_ok(&argv, Duration::from_secs(30))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((code.to_string(), body.to_string()))
}

#[test]
fn policies_attached_to_the_waypoint_decide_each_request() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let mesh = Mesh::new(&topo)?;
    mesh.write("mesh.yaml", &config(&topo)?)?;
    let _agents = [mesh.start_agent("n1", &[])?, mesh.start_agent("n2", &[])?];
    let _waypoint = mesh.start_waypoint("wp", "shop/waypoint")?;
    let _app = http_app(topo.pod("api")?, 8080, "echo", "api")?;
    let (client, ops, wp) = (
        &topo.pod("client")?.place,
        &topo.pod("ops")?.place,
        topo.pod("wp")?,
    );
    let url = |path: &str| format!("http://{API}:9080{path}");
    let cases: [(&str, &Place, &[&str], &str, &str); 9] = [
        ("GET /public by client", client, &[], "/public/x", "200"),
        (
            "POST /public by client",
            client,
            &["-X", "POST"],
            "/public/x",
            "403",
        ),
        (
            "POST /admin by client",
            client,
            &["-X", "POST"],
            "/admin",
            "403",
        ),
        (
            "POST /admin by ops",
            ops,
            &["-X", "POST"],
            "/admin/users",
            "200",
        ),
        (
            "GET /public by ops with x-debug",
            ops,
            &["-H", "x-debug: 1"],
            "/public/x",
            "403",
        ),
        (
            "/public/../admin by client",
            client,
            &[],
            "/public/../admin",
            "403",
        ),
        (
            "/public/%2e%2e/admin by client",
            client,
            &[],
            "/public/%2e%2e/admin",
            "403",
        ),
        ("/public/./x by client", client, &[], "/public/./x", "200"),
        (
            "/admin/../public/y by ops",
            ops,
            &["-X", "POST"],
            "/admin/../public/y",
            "403",
        ),
    ];
    for (what, place, args, path, want) in cases {
        let target = url(path);
        let argv: Vec<&str> = args.iter().copied().chain([target.as_str()]).collect();
        let (code, body) = ask(place, &argv)?;
        println!("{what}: {code} {body:?}");
        assert_eq!(code, want, "{what}: {body}");
        if code == "403" {
            assert_eq!(body, "RBAC: access denied", "{what}");
        }
    }
    // The app sees the path as the policy did.
    let (_, body) = ask(client, &[&url("/public/./x/../y")])?;
    assert!(body.contains(" /public/y "), "{body}");

    // Counted by the policy that refused.
    let metrics = curl_body(&wp.place, &format!("http://{}:15020/metrics", wp.ipv4))?;
    let count = |labels: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("strait_waypoint_authz_denied_total{{{labels}}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    let (deny, none) = (
        count("policy=\"shop/no-debug\",reason=\"deny\""),
        count("policy=\"\",reason=\"no_allow\""),
    );
    println!("denied: {deny} by shop/no-debug, {none} for want of an ALLOW");
    assert_eq!((deny, none), (1.0, 5.0));

    // Bytes that are not HTTP are carried as TCP, and meet the same
    // policies without request attributes, failing closed as Istio does:
    // the DENY's rule loses its header condition and so denies every
    // connection (the ALLOW's rules, all needing request attributes,
    // would match none). Closed unanswered (the app would answer 400).
    const RAW: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], 9080), timeout=20)
s.sendall(bytes(range(1, 64)) + b"\r\n\r\n")
try:
    print("answer:", repr(s.recv(100)))
except ConnectionResetError:
    print("answer: reset")
"#;
    let out = client.run_ok(&["python3", "-c", RAW, API], Duration::from_secs(30))?;
    let answer = String::from_utf8_lossy(&out.stdout);
    let answer = answer.trim();
    println!("TCP through the waypoint: {answer}");
    assert!(
        answer == "answer: b''" || answer == "answer: reset",
        "{answer}"
    );
    let metrics = curl_body(&wp.place, &format!("http://{}:15020/metrics", wp.ipv4))?;
    assert!(
        metrics.contains(
            "strait_waypoint_authz_denied_total{policy=\"shop/no-debug\",reason=\"deny\"} 2"
        ),
        "the TCP connection was not refused by the policy: {metrics}"
    );
    Ok(())
}
