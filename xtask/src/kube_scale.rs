//! The Kubernetes rows of `cargo xtask bench`, against the real API server
//! setup builds: the time from `kubectl apply` of 1,000 pods (made ready
//! as a kubelet would, each with its own network namespace) to all of them
//! enrolled by the agents of their five nodes; then an agent's resident
//! memory once the cluster holds 10,000 pods and 1,000 services.
use std::{
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use serde_json::{Value as Json, json};
use strait_e2e::{Mesh, kube::ApiServer};
use strait_topology::{Locality, Spec, Topology};

use crate::{cmd::section, measure};

/// Pods with a network namespace, enrolled.
pub const PODS: usize = 1_000;
/// Nodes with an agent, sharing the pods (a topology node holds 200).
pub const NODES: usize = 5;
/// Pods in the cluster in all, the others on nodes with no agent.
pub const ALL_PODS: usize = 10_000;
pub const SERVICES: usize = 1_000;
/// Requests in flight to the API server.
const PARALLEL: usize = 16;
const WAIT: Duration = Duration::from_secs(900);

pub struct Figures {
    pub apply_seconds: f64,
    pub enroll_seconds: f64,
    pub listed_seconds: f64,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
    /// n1's agent started again on the full cluster: how long until ready,
    /// and its memory then.
    pub restart_seconds: f64,
    pub restart_rss_mib: f64,
    pub restart_peak_rss_mib: f64,
}

fn pod(name: &str, node: &str, app: &str) -> Json {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "bench", "labels": {"app": app}},
        "spec": {"nodeName": node, "serviceAccountName": "app",
            "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": "none"}]},
    })
}

fn ready(ip: &str) -> Json {
    json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}]}})
}

fn status_path(name: &str) -> String {
    format!("/api/v1/namespaces/bench/pods/{name}/status")
}

/// Pods `captured` on `node`.
fn captured(mesh: &Mesh<'_>, node: &str) -> Result<usize> {
    let workloads = mesh
        .admin(node, "/workloads")
        .map_err(anyhow::Error::from_boxed)?;
    Ok(workloads.as_array().map_or(0, |all| {
        all.iter().filter(|w| w["state"] == "captured").count()
    }))
}

pub fn measure(bin: &Path) -> Result<Figures> {
    let nodes: Vec<String> = (1..=NODES).map(|n| format!("n{n}")).collect();
    let mut spec = Spec::new();
    for node in &nodes {
        spec = spec.node(node, "c1", "net1", Locality::new("r1", "z1", ""));
    }
    let node_of = |i: usize| nodes[i % NODES].as_str();
    for i in 0..PODS {
        spec = spec.pod(&format!("p{i}"), node_of(i));
    }
    let made = Instant::now();
    let topo = Topology::create(spec).context("creating 1,000 pods' namespaces")?;
    eprintln!(
        "{PODS} pod namespaces made in {:.1} s",
        made.elapsed().as_secs_f64()
    );
    let n1 = topo.node("n1")?;
    let api = ApiServer::start(&n1.place, n1.addrs.ipv4.into(), "bench")
        .map_err(anyhow::Error::from_boxed)?;
    let boxed = anyhow::Error::from_boxed;
    let mut mesh = Mesh::with_bin_dir(&topo, bin.to_path_buf()).map_err(boxed)?;
    mesh.kubeconfig = Some(api.strait_kubeconfig().map_err(boxed)?);
    api.apply(
        "apiVersion: v1
kind: Namespace
metadata: {name: bench, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: app, namespace: bench}
",
    )
    .map_err(boxed)?;
    let agents = nodes
        .iter()
        .map(|n| mesh.start_agent(n, &[]).map_err(boxed))
        .collect::<Result<Vec<_>>>()?;

    section(&format!(
        "kubectl apply of {PODS} pods, made ready, until enrolled"
    ));
    let mut yaml = String::new();
    for i in 0..PODS {
        let _ = writeln!(yaml, "---\n{}", pod(&format!("p{i}"), node_of(i), "web"));
    }
    let file = topo.scratch_dir().join("pods.yaml");
    std::fs::write(&file, yaml)?;
    let started = Instant::now();
    api.kubectl_ok(&["apply", "-f", &file.display().to_string()])
        .map_err(boxed)?;
    let apply_seconds = started.elapsed().as_secs_f64();
    let statuses: Vec<(&str, String, Json)> = (0..PODS)
        .map(|i| -> Result<_> {
            let p = topo.pod(&format!("p{i}"))?;
            Ok(("PATCH", status_path(&p.name), ready(&p.ipv4.to_string())))
        })
        .collect::<Result<_>>()?;
    let done = api.requests(&statuses, PARALLEL).map_err(boxed)?;
    ensure!(done == PODS, "{done} of {PODS} statuses written");
    loop {
        let mut enrolled = 0;
        for node in &nodes {
            enrolled += captured(&mesh, node)?;
        }
        if enrolled == PODS {
            break;
        }
        ensure!(
            started.elapsed() < WAIT,
            "{enrolled} of {PODS} pods enrolled"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let enroll_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "kubectl apply took {apply_seconds:.1} s; all {PODS} enrolled {enroll_seconds:.1} s after it began"
    );

    section(&format!(
        "{ALL_PODS} pods and {SERVICES} services in the cluster: the agent's memory"
    ));
    let others: Vec<(&str, String, Json)> = (PODS..ALL_PODS)
        .map(|i| {
            let node = format!("other-{}", i % 50);
            let app = format!("svc-{}", i % SERVICES);
            (
                "POST",
                "/api/v1/namespaces/bench/pods".to_string(),
                pod(&format!("p{i}"), &node, &app),
            )
        })
        .collect();
    let started = Instant::now();
    let done = api.requests(&others, PARALLEL).map_err(boxed)?;
    ensure!(
        done == others.len(),
        "{done} of {} pods created",
        others.len()
    );
    let statuses: Vec<(&str, String, Json)> = (PODS..ALL_PODS)
        .map(|i| {
            let ip = format!("10.{}.{}.{}", 200 + i / 65_536, (i / 256) % 256, i % 256);
            ("PATCH", status_path(&format!("p{i}")), ready(&ip))
        })
        .collect();
    let done = api.requests(&statuses, PARALLEL).map_err(boxed)?;
    ensure!(
        done == statuses.len(),
        "{done} of {} statuses written",
        statuses.len()
    );
    let services: Vec<(&str, String, Json)> = (0..SERVICES)
        .map(|i| {
            (
                "POST",
                "/api/v1/namespaces/bench/services".to_string(),
                json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
                    "spec": {"selector": {"app": format!("svc-{i}")},
                        "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
            )
        })
        .collect();
    let done = api.requests(&services, PARALLEL).map_err(boxed)?;
    ensure!(done == SERVICES, "{done} of {SERVICES} services created");
    // Everything is in the agent's config once it counts every pod as a
    // workload and every service.
    loop {
        let dump = mesh.admin("n1", "/config_dump").map_err(boxed)?;
        let count = |key: &str| dump["config"][key].as_array().map_or(0, Vec::len);
        if count("workloads") >= ALL_PODS && count("services") >= SERVICES {
            break;
        }
        ensure!(
            started.elapsed() < WAIT,
            "the agent holds {} workloads and {} services",
            count("workloads"),
            count("services")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let listed_seconds = started.elapsed().as_secs_f64();
    let (peak_rss_mib, rss_mib) = measure::rss_mib(&agents[0]);
    let mut agents = agents;
    agents[0].kill()?;
    let started = Instant::now();
    agents[0] = mesh.start_agent("n1", &[]).map_err(boxed)?;
    let restart_seconds = started.elapsed().as_secs_f64();
    let (restart_peak_rss_mib, restart_rss_mib) = measure::rss_mib(&agents[0]);
    Ok(Figures {
        restart_seconds,
        restart_rss_mib,
        restart_peak_rss_mib,
        apply_seconds,
        enroll_seconds,
        listed_seconds,
        rss_mib,
        peak_rss_mib,
    })
}
