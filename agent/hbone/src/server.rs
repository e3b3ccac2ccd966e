//! The inbound side: terminate mutual TLS, then serve HTTP/2 CONNECT
//! requests, each handed to the caller with the peer's identity.
use std::{future::Future, net::SocketAddr, sync::Arc};

use http_body_util::Empty;
use hyper::{
    Method, Request, Response, StatusCode, body::Bytes, service::service_fn, upgrade::OnUpgrade,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use strait_identity::{Identity, tls::identity_of};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::{CONNECTION_WINDOW, Error, MAX_FRAME, STREAM_WINDOW};

/// One CONNECT request from an authenticated peer.
pub struct Connect {
    pub peer: Identity,
    /// The TCP peer of the HBONE connection.
    pub peer_addr: SocketAddr,
    /// Where the peer wants to go.
    pub authority: SocketAddr,
    /// Resolves to the tunnel once the handler has answered 200.
    pub upgrade: OnUpgrade,
}

/// Serves one accepted HBONE connection. `handler` answers each CONNECT with
/// a status; on 200 it owns `Connect::upgrade` and carries the bytes.
/// A failed handshake (no certificate, another CA) is `Error::Tls`.
pub async fn serve<H, F>(
    tcp: TcpStream,
    peer_addr: SocketAddr,
    tls: Arc<ServerConfig>,
    handler: H,
) -> Result<(), Error>
where
    H: Fn(Connect) -> F + Send + Sync + Clone + 'static,
    F: Future<Output = StatusCode> + Send + 'static,
{
    let _ = tcp.set_nodelay(true);
    let stream = TlsAcceptor::from(tls)
        .accept(tcp)
        .await
        .map_err(|source| Error::Tls {
            addr: peer_addr,
            source,
        })?;
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(identity_of)
        .transpose()?
        .ok_or_else(|| Error::Tls {
            addr: peer_addr,
            source: std::io::Error::other("the peer presented no certificate"),
        })?;
    let service = service_fn(move |mut req: Request<hyper::body::Incoming>| {
        let handler = handler.clone();
        let peer = peer.clone();
        async move {
            let status = match authority(&req) {
                Some(authority) => {
                    let upgrade = hyper::upgrade::on(&mut req);
                    handler(Connect {
                        peer,
                        peer_addr,
                        authority,
                        upgrade,
                    })
                    .await
                }
                None => StatusCode::BAD_REQUEST,
            };
            let mut resp = Response::new(Empty::<Bytes>::new());
            *resp.status_mut() = status;
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .serve_connection(TokioIo::new(stream), service)
        .await
        .map_err(|source| Error::Http {
            addr: peer_addr,
            source,
        })
}

/// The `ip:port` a CONNECT asks for; anything else is a bad request.
fn authority<B>(req: &Request<B>) -> Option<SocketAddr> {
    if req.method() != Method::CONNECT {
        return None;
    }
    req.uri().authority()?.as_str().parse().ok()
}
