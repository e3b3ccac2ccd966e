//! Fetching a JSON Web Key Set from a RequestAuthentication's `jwksUri`:
//! a GET over HTTP or HTTPS (the system's roots), from the waypoint's own
//! address, bounded in time and size (a config author chooses the URL, and
//! whoever serves it the answer).
use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode, Uri, client::conn::http1, header};
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, pki_types::ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The most a key set may take: a few dozen keys.
pub const MAX_BYTES: usize = 64 * 1024;

/// The body of `uri`, which must answer 200 within `timeout`.
pub async fn get(uri: &str, timeout: Duration) -> Result<Bytes, String> {
    tokio::time::timeout(timeout, fetch(uri))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

async fn fetch(uri: &str) -> Result<Bytes, String> {
    let parsed: Uri = uri.parse().map_err(|e| format!("not a URL: {e}"))?;
    let tls = match parsed.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err("not an http:// or https:// URL".into()),
    };
    let authority = parsed.authority().ok_or("no host")?.clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let path = parsed
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let request = Request::get(path)
        .header(header::HOST, authority.as_str())
        .header(header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    if tls {
        let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
        let stream = TlsConnector::from(client_config()?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        exchange(TokioIo::new(stream), request).await
    } else {
        exchange(TokioIo::new(tcp), request).await
    }
}

async fn exchange<IO>(io: IO, request: Request<Empty<Bytes>>) -> Result<Bytes, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != StatusCode::OK {
        return Err(format!("answered {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the answer (at most {MAX_BYTES} bytes): {e}"))?;
    Ok(body.to_bytes())
}

fn client_config() -> Result<Arc<ClientConfig>, String> {
    let roots = crate::origination::system_roots();
    if roots.is_empty() {
        return Err("no system CA certificates to check the server's with".into());
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}
