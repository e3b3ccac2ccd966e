//! `straitctl waypoint` on a config directory: generate, apply (a file of
//! its own), list (instances and what is bound), routes, clusters, delete;
//! and what it refuses.
use std::{path::PathBuf, process::Command};

/// A scratch directory, removed even when the test fails.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn straitctl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_straitctl"))
        .args(args)
        .output()
        .expect("running straitctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const ROUTES: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: split
    route:
    - {destination: {host: reviews, subset: v1}, weight: 80}
    - {destination: {host: reviews, subset: v2}, weight: 20}
";

const CLUSTERS: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    connectionPool: {http: {http2MaxRequests: 10}}
    outlierDetection: {consecutive5xxErrors: 3}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-v1
  namespace: shop
  labels: {app: reviews, version: v1}
spec: {nodeName: n1}
status: {phase: Running, podIP: 10.1.0.11}
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-v2
  namespace: shop
  labels: {app: reviews, version: v2}
spec: {nodeName: n1}
status: {phase: Running, podIP: 10.1.0.12}
";

const MESH: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: reviews-wp}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: reviews}
  ports: [{port: 9080}]
---
apiVersion: v1
kind: Service
metadata:
  name: ratings
  namespace: shop
  labels: {istio.io/use-waypoint: none}
spec:
  clusterIP: 10.96.0.11
  ports: [{port: 9080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-wp-1
  namespace: shop
  labels: {gateway.networking.k8s.io/gateway-name: reviews-wp}
spec: {nodeName: n1, serviceAccountName: reviews-wp}
status: {phase: Running, podIP: 10.1.0.50}
";

#[test]
fn a_waypoint_is_generated_applied_listed_and_deleted() {
    let dir = std::env::temp_dir().join(format!("straitctl-waypoint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let scratch = Scratch(dir);
    let d = scratch.0.to_str().unwrap();
    std::fs::write(scratch.0.join("mesh.yaml"), MESH).unwrap();

    let (ok, yaml, _) = straitctl(&[
        "waypoint",
        "generate",
        "reviews-wp",
        "-n",
        "shop",
        "--for",
        "all",
    ]);
    assert!(ok);
    assert!(yaml.contains("gatewayClassName: istio-waypoint"), "{yaml}");
    assert!(yaml.contains("istio.io/waypoint-for: all"), "{yaml}");

    let (ok, said, err) = straitctl(&[
        "waypoint",
        "apply",
        "reviews-wp",
        "-n",
        "shop",
        "--config-dir",
        d,
    ]);
    assert!(ok, "{err}");
    println!("{said}");
    assert!(scratch.0.join("waypoint-shop-reviews-wp.yaml").exists());

    let (ok, table, err) = straitctl(&["waypoint", "list", "--config-dir", d]);
    assert!(ok, "{err}");
    println!("{table}");
    let line = table
        .lines()
        .find(|l| l.starts_with("shop "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(line.contains("reviews-wp-1(10.1.0.50)"), "{line}");
    assert!(line.contains("shop/reviews"), "{line}");
    // Opted out by its own label.
    assert!(!line.contains("shop/ratings"), "{line}");

    // Its routes, as the waypoint applies them.
    std::fs::write(scratch.0.join("routes.yaml"), ROUTES).unwrap();
    let (ok, shown, err) = straitctl(&[
        "waypoint",
        "routes",
        "reviews-wp",
        "-n",
        "shop",
        "--config-dir",
        d,
    ]);
    assert!(ok, "{err}");
    println!("{shown}");
    assert!(
        shown.contains(
            "service shop/reviews (reviews.shop.svc.cluster.local): VirtualService shop/reviews"
        ),
        "{shown}"
    );
    assert!(
        shown.contains(
            "1. jason: header end-user = jason -> reviews.shop.svc.cluster.local subset v2"
        ),
        "{shown}"
    );
    assert!(shown.contains("2. split: every request -> reviews.shop.svc.cluster.local subset v1 (80), reviews.shop.svc.cluster.local subset v2 (20)"), "{shown}");

    // Where it sends them: each destination, its policy and endpoints.
    std::fs::write(scratch.0.join("clusters.yaml"), CLUSTERS).unwrap();
    let (ok, shown, err) = straitctl(&[
        "waypoint",
        "clusters",
        "reviews-wp",
        "-n",
        "shop",
        "--config-dir",
        d,
    ]);
    assert!(ok, "{err}");
    println!("{shown}");
    let line = |cluster: &str| {
        shown
            .lines()
            .find(|l| l.starts_with(&format!("{cluster} ")))
            .unwrap_or_else(|| panic!("no {cluster}: {shown}"))
            .to_string()
    };
    let all = line("outbound|9080||reviews.shop.svc.cluster.local");
    assert!(
        all.contains("10.1.0.11:9080(reviews-v1)") && all.contains("10.1.0.12:9080(reviews-v2)"),
        "{all}"
    );
    assert!(
        all.contains("http2MaxRequests 10; eject after 3 5xx"),
        "{all}"
    );
    let v2 = line("outbound|9080|v2|reviews.shop.svc.cluster.local");
    assert!(
        v2.contains("10.1.0.12:9080(reviews-v2)") && !v2.contains("reviews-v1"),
        "{v2}"
    );

    // The same three as JSON and YAML, for scripts.
    let json = |args: &[&str]| -> serde_json::Value {
        let (ok, out, err) = straitctl(args);
        assert!(ok, "{args:?}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    };
    let listed = json(&["waypoint", "list", "--config-dir", d, "-o", "json"]);
    let ours = listed
        .as_array()
        .and_then(|l| l.iter().find(|w| w["name"] == "reviews-wp"))
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(ours["for"], "service");
    assert_eq!(ours["instances"][0], "reviews-wp-1(10.1.0.50)");
    assert!(
        ours["services"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s == "shop/reviews")),
        "{ours}"
    );
    let routes = json(&[
        "waypoint",
        "routes",
        "reviews-wp",
        "-n",
        "shop",
        "--config-dir",
        d,
        "-o",
        "json",
    ]);
    let reviews = routes
        .as_array()
        .and_then(|l| l.iter().find(|s| s["service"] == "shop/reviews"))
        .unwrap_or_else(|| panic!("{routes}"));
    assert_eq!(reviews["from"], "VirtualService shop/reviews");
    assert_eq!(reviews["routes"][0]["name"], "jason");
    assert_eq!(
        reviews["routes"][0]["matches"][0],
        "header end-user = jason"
    );
    let clusters = json(&[
        "waypoint",
        "clusters",
        "reviews-wp",
        "-n",
        "shop",
        "--config-dir",
        d,
        "-o",
        "json",
    ]);
    let v2 = clusters
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|c| c["cluster"] == "outbound|9080|v2|reviews.shop.svc.cluster.local")
        })
        .unwrap_or_else(|| panic!("{clusters}"));
    assert_eq!(
        v2["endpoints"],
        serde_json::json!(["10.1.0.12:9080(reviews-v2)"])
    );
    let (ok, yaml, err) = straitctl(&["waypoint", "list", "--config-dir", d, "-o", "yaml"]);
    assert!(ok, "{err}");
    assert!(yaml.contains("name: reviews-wp"), "{yaml}");
    let generated = json(&[
        "waypoint",
        "generate",
        "reviews-wp",
        "-n",
        "shop",
        "-o",
        "json",
    ]);
    assert_eq!(generated["spec"]["gatewayClassName"], "istio-waypoint");

    // A cluster-only flag, and a bad name, are refused with the reason.
    let (ok, _, err) = straitctl(&[
        "waypoint",
        "apply",
        "reviews-wp",
        "-n",
        "shop",
        "--enroll-namespace",
        "--config-dir",
        d,
    ]);
    assert!(!ok);
    assert!(err.contains("--enroll-namespace"), "{err}");
    let (ok, _, err) = straitctl(&[
        "waypoint",
        "apply",
        "Bad_Name",
        "-n",
        "shop",
        "--config-dir",
        d,
    ]);
    assert!(!ok);
    assert!(err.contains("Bad_Name"), "{err}");

    let (ok, _, err) = straitctl(&[
        "waypoint",
        "delete",
        "reviews-wp",
        "-n",
        "shop",
        "--config-dir",
        d,
    ]);
    assert!(ok, "{err}");
    assert!(!scratch.0.join("waypoint-shop-reviews-wp.yaml").exists());
    let (ok, table, _) = straitctl(&["waypoint", "list", "--config-dir", d]);
    assert!(ok);
    assert!(!table.lines().any(|l| l.starts_with("shop ")), "{table}");
    let (ok, _, err) = straitctl(&[
        "waypoint",
        "delete",
        "reviews-wp",
        "-n",
        "shop",
        "--config-dir",
        d,
    ]);
    assert!(!ok);
    assert!(err.contains("waypoint-shop-reviews-wp.yaml"), "{err}");
}
