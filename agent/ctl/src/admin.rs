//! A request to a node agent's admin endpoint: at an address, or, in
//! Kubernetes, the agent of a node or of a pod's node, reached by the API
//! server's port-forward (the endpoint listens on the node's loopback
//! only, as ztunnel's does, so nothing else on the network can read the
//! mesh's config or change the agent's log level).
use std::{fmt, net::SocketAddr, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use http_body_util::{BodyExt, Empty};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::ListParams};
use strait_config::names::check_subdomain;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

const TIMEOUT: Duration = Duration::from_secs(5);
/// Through the API server and the kubelet: two more hops.
const KUBE_TIMEOUT: Duration = Duration::from_secs(20);
/// The chart's agent pods.
pub const AGENT_SELECTOR: &str = "app.kubernetes.io/name=strait,app.kubernetes.io/component=agent";

/// Which agent to ask.
#[derive(Clone, Debug)]
pub enum Target {
    Addr(SocketAddr),
    /// The agent on this node, at this admin port.
    Node {
        node: String,
        port: u16,
    },
    /// The agent on this pod's node.
    Pod {
        namespace: String,
        name: String,
        port: u16,
    },
}

impl Target {
    /// `--node`, else `--pod`, else `--admin`; names checked before they
    /// reach a selector.
    pub fn new(admin: SocketAddr, node: Option<&str>, pod: Option<&str>) -> Result<Self> {
        let port = admin.port();
        if let Some(node) = node {
            check_subdomain(node).map_err(|why| anyhow!("--node {node:?}: {why}"))?;
            return Ok(Self::Node {
                node: node.into(),
                port,
            });
        }
        if let Some(pod) = pod {
            let (namespace, name) = pod
                .split_once('/')
                .ok_or_else(|| anyhow!("--pod {pod:?}: not namespace/name"))?;
            for part in [namespace, name] {
                check_subdomain(part).map_err(|why| anyhow!("--pod {pod:?}: {why}"))?;
            }
            return Ok(Self::Pod {
                namespace: namespace.into(),
                name: name.into(),
                port,
            });
        }
        Ok(Self::Addr(admin))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(addr) => write!(f, "the agent at {addr}"),
            Self::Node { node, .. } => write!(f, "the agent on node {node}"),
            Self::Pod {
                namespace, name, ..
            } => write!(f, "the agent on pod {namespace}/{name}'s node"),
        }
    }
}

pub fn get(target: &Target, path: &str) -> Result<String> {
    request(target, hyper::Method::GET, path)
}

/// The one change the admin endpoint takes: `/logging?level=`.
pub fn post(target: &Target, path: &str) -> Result<String> {
    request(target, hyper::Method::POST, path)
}

fn request(target: &Target, method: hyper::Method, path: &str) -> Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let timeout = match target {
        Target::Addr(_) => TIMEOUT,
        _ => KUBE_TIMEOUT,
    };
    rt.block_on(async {
        tokio::time::timeout(timeout, fetch(target, method, path))
            .await
            .with_context(|| format!("no answer from {target} within {timeout:?}"))?
    })
}

async fn fetch(target: &Target, method: hyper::Method, path: &str) -> Result<String> {
    match target {
        Target::Addr(addr) => {
            let stream = TcpStream::connect(addr).await.with_context(|| {
                format!("connecting to the agent's admin endpoint at {addr} (is strait-agent running on this node?)")
            })?;
            exchange(stream, &addr.to_string(), method, path).await
        }
        Target::Node { node, port } => {
            let client = kube::Client::try_default()
                .await
                .context("reaching the API server (KUBECONFIG, ~/.kube/config or in-cluster)")?;
            forward(client, node, *port, method, path).await
        }
        Target::Pod {
            namespace,
            name,
            port,
        } => {
            let client = kube::Client::try_default()
                .await
                .context("reaching the API server (KUBECONFIG, ~/.kube/config or in-cluster)")?;
            let pod = Api::<Pod>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await
                .with_context(|| format!("reading pod {namespace}/{name}"))?
                .ok_or_else(|| anyhow!("no pod {namespace}/{name}"))?;
            let node = pod
                .spec
                .and_then(|s| s.node_name)
                .ok_or_else(|| anyhow!("pod {namespace}/{name} is not on a node yet"))?;
            forward(client, &node, *port, method, path).await
        }
    }
}

/// The request, through a port-forward to `node`'s agent pod.
async fn forward(
    client: kube::Client,
    node: &str,
    port: u16,
    method: hyper::Method,
    path: &str,
) -> Result<String> {
    let pods = Api::<Pod>::all(client.clone())
        .list(
            &ListParams::default()
                .labels(AGENT_SELECTOR)
                .fields(&format!("spec.nodeName={node}")),
        )
        .await
        .with_context(|| format!("listing the agent pods on node {node}"))?;
    // During a rolling update two may run: the newest serves new pods.
    let agent = pods
        .items
        .into_iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|phase| phase == "Running")
        })
        .max_by_key(|p| p.metadata.creation_timestamp.clone())
        .ok_or_else(|| {
            anyhow!("no running strait agent pod on node {node} (pods labelled {AGENT_SELECTOR})")
        })?;
    let namespace = agent.metadata.namespace.clone().unwrap_or_default();
    let name = agent.metadata.name.clone().unwrap_or_default();
    let mut forwarder = Api::<Pod>::namespaced(client, &namespace)
        .portforward(&name, &[port])
        .await
        .with_context(|| format!("port-forwarding to {namespace}/{name}:{port}"))?;
    let stream = forwarder
        .take_stream(port)
        .ok_or_else(|| anyhow!("the port-forward to {namespace}/{name} gave no stream"))?;
    let answer = exchange(stream, &format!("localhost:{port}"), method, path)
        .await
        .with_context(|| format!("agent pod {namespace}/{name} on node {node}"));
    forwarder.abort();
    answer
}

async fn exchange<S>(stream: S, host: &str, method: hyper::Method, path: &str) -> Result<String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake with the agent")?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(hyper::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .context("building the request")?;
    let resp = sender
        .send_request(req)
        .await
        .with_context(|| format!("{method} {path}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .context("reading the answer")?
        .to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        bail!("{method} {path}: {status}: {}", body.trim());
    }
    Ok(body)
}
