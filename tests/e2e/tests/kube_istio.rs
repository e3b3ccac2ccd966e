//! The Istio YAML users already have, applied with `kubectl` to a real API
//! server after strait's own CRDs: every example in ../examples/istio is
//! taken, and the `distribute` rule splits traffic 80/20 as measured on
//! the wire. An invalid change to that rule leaves it in force, named
//! with its field; bad input (an unknown field, a wrong type, a missing
//! spec, a huge label set) is refused with a reason and changes nothing
//! else.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value as Json, json};
use strait_e2e::{
    Load, Mesh, Result, connections, curl, http_server,
    kube::{ApiServer, pod_yaml},
    node_yaml, require_root,
};
use strait_topology::{Locality, Spec, Topology};

const WAIT: Duration = Duration::from_secs(60);
const CONNECTIONS: u32 = 4_000;

/// The example's localities are regions named after clusters: the client
/// and `east` in east-cluster, `west` in west-cluster.
fn spec() -> Spec {
    Spec::new()
        .node("n1", "c1", "net1", Locality::new("east-cluster", "z1", ""))
        .node("n2", "c1", "net1", Locality::new("east-cluster", "z1", ""))
        .node("n3", "c1", "net1", Locality::new("west-cluster", "z1", ""))
        .pod("client", "n1")
        .pod("east", "n2")
        .pod("west", "n3")
}

/// `kubectl apply` that must fail: its stderr.
fn refused(api: &ApiServer, yaml: &str, extra: &[&str]) -> Result<String> {
    let file = api.scratch_file("refused.yaml", yaml)?;
    let mut args = vec!["apply", "-f", file.as_str()];
    args.extend_from_slice(extra);
    let out = api.kubectl(&args)?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        return Err(format!(
            "kubectl took {yaml}:\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
        .into());
    }
    Ok(stderr)
}

/// The `to` weights of the in-force rule `cross-cluster-lb`.
fn distribute_to(mesh: &Mesh<'_>) -> Result<Json> {
    let dump = mesh.admin("n1", "/config_dump")?;
    Ok(dump["config"]["destination_rules"]
        .as_array()
        .and_then(|all| all.iter().find(|r| r["name"] == "cross-cluster-lb"))
        .map(|r| {
            r["spec"]["trafficPolicy"]["loadBalancer"]["localityLbSetting"]["distribute"][0]["to"]
                .clone()
        })
        .unwrap_or(Json::Null))
}

/// Waits until n1's `/config_dump` satisfies `done`; returns it.
fn wait_dump(mesh: &Mesh<'_>, what: &str, done: impl Fn(&Json) -> bool) -> Result<Json> {
    let deadline = Instant::now() + WAIT;
    loop {
        let dump = mesh.admin("n1", "/config_dump")?;
        if done(&dump) {
            return Ok(dump);
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: {}", dump["reload"]).into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn left_out(dump: &Json) -> Vec<String> {
    dump["reload"]["left_out"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str().map(str::to_owned))
        .collect()
}

fn east_share(load: &Load, step: &str) -> f64 {
    assert_eq!(load.failures, 0, "{step}: {:?}", load.errors);
    assert_eq!(load.count(&["east", "west"]), load.total(), "{step}");
    let east = load.count(&["east"]) as f64 * 100.0 / load.total() as f64;
    println!(
        "{step}: {} connections, east-cluster {east:.1}% / west-cluster {:.1}%",
        load.total(),
        100.0 - east
    );
    east
}

#[test]
fn istio_examples_apply_through_the_api_server_and_bad_input_is_refused() -> Result<()> {
    require_root();
    let topo = Topology::create(spec())?;
    let n1 = topo.node("n1")?;
    let (client, east, west) = (topo.pod("client")?, topo.pod("east")?, topo.pod("west")?);
    let api = ApiServer::start(&n1.place, n1.addrs.ipv4.into(), "c1")?;
    let mesh = Mesh::with_cluster(&topo, api.strait_kubeconfig()?)?;

    // strait's CRDs, as `straitctl crds | kubectl apply -f -`.
    strait_e2e::kube::apply_crds(&api)?;

    let mut yaml = String::from(
        "apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 8080}]
---
",
    );
    yaml.push_str(&node_yaml("n1", "east-cluster", "z1"));
    yaml.push_str(&node_yaml("n2", "east-cluster", "z1"));
    yaml.push_str(&node_yaml("n3", "west-cluster", "z1"));
    yaml.push_str(&pod_yaml(
        client,
        "default",
        &client.name,
        &[("app", "client")],
    ));
    yaml.push_str(&pod_yaml(
        east,
        "default",
        &east.name,
        &[("app", "reviews")],
    ));
    yaml.push_str(&pod_yaml(
        west,
        "default",
        &west.name,
        &[("app", "reviews")],
    ));
    api.apply(&yaml)?;
    api.kubectl_ok(&[
        "label",
        "namespace",
        "default",
        "istio.io/dataplane-mode=ambient",
    ])?;

    // Every example, unchanged, as users would apply it.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/istio");
    let mut files: Vec<_> = std::fs::read_dir(&examples)?
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    for file in &files {
        let out = api.kubectl_ok(&["apply", "-f", &file.display().to_string()])?;
        print!("{}: {out}", file.display());
    }

    let _agents = [
        mesh.start_agent("n1", &[])?,
        mesh.start_agent("n2", &[])?,
        mesh.start_agent("n3", &[])?,
    ];
    for pod in [client, east, west] {
        api.make_ready("default", pod)?;
    }
    mesh.wait_state("n1", "client", WAIT, |s| s == "captured")?;
    let dump = wait_dump(&mesh, "the examples are not all in force", |d| {
        distribute_to(&mesh)
            .is_ok_and(|to| to == json!({"east-cluster/*": 80, "west-cluster/*": 20}))
            && d["config"]["virtual_services"]
                .as_array()
                .map_or(0, Vec::len)
                == 1
            && d["config"]["gateways"].as_array().map_or(0, Vec::len) == 1
    })?;
    assert!(left_out(&dump).is_empty(), "{}", dump["reload"]);
    let services = dump["config"]["services"].to_string();
    assert!(
        services.contains("external.service.com"),
        "the ServiceEntry"
    );
    assert!(services.contains("istiod"), "the istiod Service");

    let vip = api.cluster_ip("default", "reviews")?;
    let _servers = [
        http_server(&east.place, 8080, "east")?,
        http_server(&west.place, 8080, "west")?,
    ];
    let got = connections(&client.place, vip, 9080, CONNECTIONS, 8, 0.0)?;
    let share = east_share(&got, "distribute from kubectl");
    assert!((77.0..=83.0).contains(&share), "east got {share:.1}%");

    // A change the checks refuse (weights summing to 110): the rule in
    // force stays, and the agent names the object and the field.
    let example = std::fs::read_to_string(examples.join("003-04.yaml"))?;
    let bad = example.replacen("east-cluster/*: 80", "east-cluster/*: 90", 1);
    assert_ne!(bad, example);
    api.apply(&bad)?;
    let dump = wait_dump(&mesh, "the bad rule was not reported", |d| {
        !left_out(d).is_empty()
    })?;
    let lines = left_out(&dump);
    println!("left out: {lines:?}");
    assert!(
        lines[0].starts_with(
            "DestinationRule default/cross-cluster-lb: field spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to:"
        ),
        "{lines:?}"
    );
    assert_eq!(
        dump["reload"]["kept_previous"],
        json!(["DestinationRule default/cross-cluster-lb"])
    );
    assert_eq!(
        distribute_to(&mesh)?,
        json!({"east-cluster/*": 80, "west-cluster/*": 20})
    );
    let got = connections(&client.place, vip, 9080, CONNECTIONS / 2, 8, 0.0)?;
    let share = east_share(&got, "after the refused change");
    assert!((75.0..=85.0).contains(&share), "east got {share:.1}%");
    let generation = dump["reload"]["generation"].as_u64().unwrap_or_default();

    // Bad input. kubectl checks against the CRDs' schema; without it
    // (`--validate=false`), the API server does.
    let dr = |spec: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: odd, namespace: default}}
{spec}"
        )
    };
    let unknown = refused(
        &api,
        &dr("spec:\n  host: reviews\n  trafficPolicy: {bogusField: 1}\n"),
        &[],
    )?;
    println!("unknown field: {}", unknown.trim());
    assert!(unknown.contains("bogusField"), "{unknown}");
    let wrong_type = refused(
        &api,
        &dr(
            "spec:\n  host: reviews\n  trafficPolicy: {connectionPool: {tcp: {maxConnections: lots}}}\n",
        ),
        &["--validate=false"],
    )?;
    println!("wrong type: {}", wrong_type.trim());
    assert!(
        wrong_type.contains("spec.trafficPolicy.connectionPool.tcp.maxConnections"),
        "{wrong_type}"
    );
    let no_spec = refused(&api, &dr(""), &["--validate=false"])?;
    println!("no spec: {}", no_spec.trim());
    assert!(no_spec.contains("spec: Required value"), "{no_spec}");
    // The API server takes any number of labels; the agents do not.
    let labels: Vec<String> = (0..200).map(|i| format!("    l{i}: v")).collect();
    api.apply(&format!(
        "apiVersion: v1
kind: Service
metadata:
  name: huge
  namespace: default
  labels:
{}
spec:
  selector: {{app: reviews}}
  ports: [{{port: 80}}]
",
        labels.join("\n")
    ))?;
    let dump = wait_dump(&mesh, "the huge Service was not left out", |d| {
        left_out(d).len() == 2
    })?;
    let lines = left_out(&dump);
    println!("left out: {lines:?}");
    assert!(
        lines.contains(
            &"Service default/huge: field metadata.labels: has 200 labels; at most 128".to_string()
        ),
        "{lines:?}"
    );
    // Nothing else changed: one rebuild (for the huge Service), the rule
    // and the service as before.
    assert_eq!(
        dump["reload"]["generation"].as_u64().unwrap_or_default(),
        generation + 1
    );
    assert_eq!(
        distribute_to(&mesh)?,
        json!({"east-cluster/*": 80, "west-cluster/*": 20})
    );
    let out = curl(client, &format!("http://{vip}:9080/marker"))?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
