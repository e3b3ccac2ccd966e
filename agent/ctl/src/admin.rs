//! A request to the node agent's admin endpoint.
use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Empty};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(5);

pub fn get(addr: SocketAddr, path: &str) -> Result<String> {
    request(addr, hyper::Method::GET, path)
}

/// The one change the admin endpoint takes: `/logging?level=`.
pub fn post(addr: SocketAddr, path: &str) -> Result<String> {
    request(addr, hyper::Method::POST, path)
}

fn request(addr: SocketAddr, method: hyper::Method, path: &str) -> Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async {
        tokio::time::timeout(TIMEOUT, fetch(addr, method, path))
            .await
            .with_context(|| format!("no answer from the agent at {addr} within {TIMEOUT:?}"))?
    })
}

async fn fetch(addr: SocketAddr, method: hyper::Method, path: &str) -> Result<String> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the agent's admin endpoint at {addr} (is strait-agent running on this node?)"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake with the agent")?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(hyper::header::HOST, addr.to_string())
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
