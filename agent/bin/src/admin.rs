//! Admin (`localhost:15000`), metrics (`:15020`) and readiness (`:15021`)
//! endpoints.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    service::service_fn,
};
use serde::Serialize;
use strait_capture::{Attachment, Capture};
use strait_identity::CertManager;
use tokio::{net::TcpListener, task::JoinHandle};

use strait_state::reload;

use crate::{pods::Pods, proxy::Proxy};

pub struct State {
    /// The proxy's view: config, endpoint health, readiness, metrics.
    proxy: Arc<Proxy>,
    reload: reload::SharedStatus,
    ready: AtomicBool,
    capture: Arc<Mutex<Capture>>,
    pods: Arc<Pods>,
    certs: Arc<CertManager>,
    logging: Arc<crate::logging::Logging>,
}

impl State {
    pub fn new(
        proxy: Arc<Proxy>,
        reload: reload::SharedStatus,
        capture: Arc<Mutex<Capture>>,
        pods: Arc<Pods>,
        certs: Arc<CertManager>,
        logging: Arc<crate::logging::Logging>,
    ) -> Self {
        Self {
            proxy,
            reload,
            ready: AtomicBool::new(false),
            capture,
            pods,
            certs,
            logging,
        }
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Not ready any more: the agent is draining.
    pub fn set_stopping(&self) {
        self.ready.store(false, Ordering::Release);
    }

    fn capture_report(&self) -> Result<CaptureReport, strait_capture::Error> {
        let capture = self
            .capture
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let stats = capture.stats()?;
        let maps = capture.maps();
        Ok(CaptureReport {
            node: self.proxy.state.node.to_string(),
            cgroup: capture.cgroup().display().to_string(),
            pin_dir: capture.layout().version_dir().display().to_string(),
            programs: capture
                .attachments()
                .iter()
                .map(|(name, how)| ProgramReport {
                    name,
                    attached: match how {
                        Attachment::New => "new",
                        Attachment::Kept => "kept",
                        Attachment::Replaced => "replaced",
                        Attachment::Pending => "pending",
                    },
                })
                .collect(),
            enrolled_netns: maps.enrolled().len(),
            sk_lookup_netns: capture.attached_netns().map(|s| s.len()).unwrap_or(0),
            counters: stats
                .iter()
                .map(|(stat, value)| (stat.name(), value))
                .collect(),
        })
    }
}

/// The admin endpoint's `/capture` document; `straitctl capture` prints it.
#[derive(Serialize)]
struct CaptureReport {
    node: String,
    cgroup: String,
    pin_dir: String,
    programs: Vec<ProgramReport>,
    enrolled_netns: usize,
    sk_lookup_netns: usize,
    counters: BTreeMap<&'static str, u64>,
}

#[derive(Serialize)]
struct ProgramReport {
    name: &'static str,
    attached: &'static str,
}

/// `/config_dump`: the config in force and how reloads went.
#[derive(Serialize)]
struct ConfigDump<'a> {
    reload: reload::Status,
    /// With a Kubernetes source: the clusters followed.
    clusters: Vec<strait_kube::ClusterStatus>,
    /// Remote clusters' kubeconfigs refused, and why.
    cluster_problems: Vec<String>,
    /// Endpoints outlier detection has set aside right now.
    ejected: Vec<Ejected>,
    /// Probed workloads' readiness, as their nodes' agents published it:
    /// by node, then `namespace/name`.
    readiness: BTreeMap<String, BTreeMap<String, strait_health::Status>>,
    config: &'a strait_config::Config,
}

#[derive(Serialize)]
struct Ejected {
    endpoint: SocketAddr,
    #[serde(flatten)]
    report: strait_balance::outlier::Report,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routes {
    Admin,
    Readiness,
    Metrics,
}

/// Serves `routes` on `addr`, bounded like every server of the agent
/// ([`strait_http::Limits`]: connections, header and connection timeouts).
/// The admin routes are served on loopback only: they show the node's
/// whole config and its certificates.
pub async fn bind(addr: SocketAddr, routes: Routes, state: Arc<State>) -> Result<JoinHandle<()>> {
    check_addr(routes, addr)?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {routes:?} endpoint on {addr}"))?;
    let what = match routes {
        Routes::Admin => "admin",
        Routes::Readiness => "readiness",
        Routes::Metrics => "metrics",
    };
    Ok(strait_http::serve(
        listener,
        strait_http::Limits::default(),
        what,
        move |tcp, _peer| {
            let state = state.clone();
            async move {
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(route(routes, &state, &req).await) }
                });
                Some((tcp, service))
            }
        },
    ))
}

async fn route(
    routes: Routes,
    state: &Arc<State>,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    // The admin endpoint (loopback only) changes one thing: the log filter.
    if routes == Routes::Admin && req.method() == Method::POST && req.uri().path() == "/logging" {
        let query = req.uri().query().unwrap_or_default();
        let level = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "level")
            .map(|(_, v)| v.into_owned());
        return match level {
            Some(level) => match state.logging.set(&level) {
                Ok(()) => text(StatusCode::OK, &format!("{}\n", state.logging.level())),
                Err(err) => text(StatusCode::BAD_REQUEST, &format!("{err}\n")),
            },
            None => text(
                StatusCode::BAD_REQUEST,
                "say the filter: POST /logging?level=debug\n",
            ),
        };
    }
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match (routes, req.uri().path()) {
        (_, "/healthz/ready") => {
            if state.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, &readiness_details(state))
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (Routes::Metrics | Routes::Admin, "/metrics" | "/stats/prometheus") => response(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.proxy.metrics.encode().into_bytes(),
        ),
        (Routes::Admin, "/capture") => match state.capture_report() {
            Ok(report) => json(&report),
            Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{err}\n")),
        },
        (Routes::Admin, "/workloads") => json(&state.pods.statuses()),
        (Routes::Admin, "/endpoints") => {
            let query = req.uri().query().unwrap_or_default();
            match strait_route::report::report(
                &state.proxy.state.snapshot(),
                &state.proxy.health,
                &state.proxy.board,
                state.proxy.metrics.clusters().as_deref(),
                query,
            ) {
                Ok(report) => json(&report),
                Err(err) => text(StatusCode::NOT_FOUND, &format!("{err}\n")),
            }
        }
        (Routes::Admin, "/describe") => describe(state, req.uri().query().unwrap_or_default()),
        (Routes::Admin, "/services") => {
            // Every service against every workload: not on the threads
            // that carry connections.
            let state = state.clone();
            tokio::task::spawn_blocking(move || {
                json(&state.proxy.state.snapshot().config.describe_services())
            })
            .await
            .unwrap_or_else(|err| text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{err}\n")))
        }
        (Routes::Admin, "/policies") => policies(state),
        (Routes::Admin, "/connections") => json(&state.proxy.metrics.tcp.open.list()),
        (Routes::Admin, "/logging") => {
            text(StatusCode::OK, &format!("{}\n", state.logging.level()))
        }
        (Routes::Admin, "/certs") => json(&state.certs.infos()),
        (Routes::Admin, "/config_dump") => {
            // Serializing the whole config takes a while at scale: not on
            // the threads that carry connections.
            let state = state.clone();
            tokio::task::spawn_blocking(move || config_dump(&state))
                .await
                .unwrap_or_else(|err| text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{err}\n")))
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `/describe?pod=namespace/name` or `?service=NAME`: what the config
/// says of it and why, with what this node knows (the pod's capture state,
/// the service's endpoints as this node's clients see them).
fn describe(state: &State, query: &str) -> Response<Full<Bytes>> {
    let param = |key: &str| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    };
    let snapshot = state.proxy.state.snapshot();
    let config = &snapshot.config;
    match (param("pod"), param("service")) {
        (Some(pod), None) => match config.describe_pod(&pod) {
            Ok(mut described) => {
                described.capture = state
                    .pods
                    .statuses()
                    .into_iter()
                    .find(|s| s.namespace == described.namespace && s.name == described.name)
                    .map(|s| s.state);
                json(&described)
            }
            Err(err) => text(StatusCode::NOT_FOUND, &format!("{err}\n")),
        },
        (None, Some(service)) => match config.describe_service(&service) {
            Ok(described) => {
                let endpoints = strait_route::report::report(
                    &snapshot,
                    &state.proxy.health,
                    &state.proxy.board,
                    state.proxy.metrics.clusters().as_deref(),
                    &format!("service={service}"),
                );
                json(&serde_json::json!({
                    "service": described,
                    "endpoints": endpoints.ok(),
                }))
            }
            Err(err) => text(StatusCode::NOT_FOUND, &format!("{err}\n")),
        },
        _ => text(
            StatusCode::BAD_REQUEST,
            "say what to describe: ?pod=NAMESPACE/NAME or ?service=NAME\n",
        ),
    }
}

/// `/policies`: the AuthorizationPolicies that apply to each workload of
/// this node, and why.
fn policies(state: &State) -> Response<Full<Bytes>> {
    let snapshot = state.proxy.state.snapshot();
    let config = &snapshot.config;
    let applied: Vec<serde_json::Value> = config
        .workloads_on(&snapshot.node)
        .filter(|w| config.enrolled(w))
        .map(|w| {
            serde_json::json!({
                "pod": format!("{}/{}", w.namespace, w.name),
                "policies": config.applied_policies(w),
            })
        })
        .collect();
    json(&applied)
}

/// Ready, and which clusters' API servers are away (the agent serves
/// what they last listed meanwhile) and which certificate requests fail
/// (the current certificates stay in use, requests are retried).
fn readiness_details(state: &State) -> String {
    let mut out = String::from("ready\n");
    for (identity, why) in state.certs.failing() {
        let held = match state.certs.current(&identity) {
            Some(_) => "the current certificate stays in use",
            None => "no certificate yet",
        };
        out.push_str(&format!(
            "certificate {identity}: the CA request fails, retrying ({held}): {why}\n"
        ));
    }
    for cluster in state
        .proxy
        .metrics
        .clusters()
        .map(|c| c.status())
        .unwrap_or_default()
    {
        if let Some(problem) = &cluster.problem {
            out.push_str(&format!(
                "cluster {}: not followed: {problem}\n",
                cluster.name
            ));
        } else if !cluster.connected {
            out.push_str(&format!(
                "cluster {}: API server away; what it last listed is in force\n",
                cluster.name
            ));
        } else if !cluster.listed {
            out.push_str(&format!("cluster {}: not listed yet\n", cluster.name));
        }
    }
    out
}

fn config_dump(state: &State) -> Response<Full<Bytes>> {
    let reload = state
        .reload
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let ejected = state
        .proxy
        .health
        .ejected(std::time::Instant::now())
        .into_iter()
        .map(|(endpoint, report)| Ejected { endpoint, report })
        .collect();
    let clusters = state.proxy.metrics.clusters();
    json(&ConfigDump {
        reload,
        clusters: clusters.as_ref().map(|c| c.status()).unwrap_or_default(),
        cluster_problems: clusters.map(|c| c.problems()).unwrap_or_default(),
        ejected,
        readiness: state.proxy.board.all().iter().fold(
            BTreeMap::new(),
            |mut by_node: BTreeMap<String, BTreeMap<String, strait_health::Status>>,
             ((node, key), status)| {
                by_node
                    .entry(node.clone())
                    .or_default()
                    .insert(key.clone(), status.clone());
                by_node
            },
        ),
        config: &state.proxy.state.snapshot().config,
    })
}

/// The admin routes show the node's whole config and its certificates:
/// they are served on a loopback address only.
fn check_addr(routes: Routes, addr: SocketAddr) -> Result<()> {
    if routes == Routes::Admin && !addr.ip().is_loopback() {
        anyhow::bail!(
            "--admin-addr {addr}: the admin endpoint shows the node's config and certificates; it listens on a loopback address only"
        );
    }
    Ok(())
}

fn json(value: &impl Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => response(StatusCode::OK, "application/json", body),
        Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{err}\n")),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    response(status, "text/plain", body.as_bytes().to_vec())
}

fn response(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        resp.headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_endpoint_is_loopback_only() {
        for ok in ["127.0.0.1:15000", "[::1]:15000"] {
            assert!(
                check_addr(Routes::Admin, ok.parse().unwrap()).is_ok(),
                "{ok}"
            );
        }
        let err = check_addr(Routes::Admin, "0.0.0.0:15000".parse().unwrap()).unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
        // Metrics and readiness are for the node's network, as documented.
        assert!(check_addr(Routes::Metrics, "0.0.0.0:15020".parse().unwrap()).is_ok());
        assert!(check_addr(Routes::Readiness, "0.0.0.0:15021".parse().unwrap()).is_ok());
    }
}
