//! The inbound side: terminate mutual TLS, then serve HTTP/2 CONNECT
//! requests, each handed to the caller with the peer's identity. The caller
//! accepts a request (answering 200, getting the tunnel) or refuses it.
use std::{future::Future, net::SocketAddr, sync::Arc};

use h2::{RecvStream, server::SendResponse};
use hyper::{Method, Request, Response, StatusCode, body::Bytes};
use rustls::ServerConfig;
use strait_identity::{Identity, tls::identity_of};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use crate::{CONNECTION_WINDOW, Error, MAX_FRAME, STREAM_WINDOW, Tunnel};

/// One CONNECT request from an authenticated peer.
pub struct Connect {
    pub peer: Identity,
    /// The TCP peer of the HBONE connection.
    pub peer_addr: SocketAddr,
    /// Where the peer wants to go.
    pub authority: SocketAddr,
    /// The stream, to accept or refuse.
    pub stream: PendingTunnel,
}

/// A CONNECT not answered yet. Dropping it refuses the stream.
pub struct PendingTunnel {
    respond: SendResponse<Bytes>,
    recv: RecvStream,
    authority: SocketAddr,
}

impl PendingTunnel {
    /// Answers 200; bytes the peer sent early are already waiting.
    pub fn accept(mut self) -> Result<Tunnel, Error> {
        let send = self
            .respond
            .send_response(status_response(StatusCode::OK), false)
            .map_err(|source| Error::H2 {
                addr: self.authority,
                source,
            })?;
        Ok(Tunnel::accepted(send, self.recv, self.authority))
    }

    pub fn refuse(mut self, status: StatusCode) {
        let _ = self.respond.send_response(status_response(status), true);
    }
}

fn status_response(status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response
}

/// Serves one accepted HBONE connection, calling `handler` for each CONNECT
/// on a task of its own. A failed handshake (no certificate, another CA) is
/// `Error::Tls`.
pub async fn serve<H, F>(
    tcp: TcpStream,
    peer_addr: SocketAddr,
    tls: Arc<ServerConfig>,
    handler: H,
) -> Result<(), Error>
where
    H: Fn(Connect) -> F,
    F: Future<Output = ()> + Send + 'static,
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
    let h2_err = |source| Error::H2 {
        addr: peer_addr,
        source,
    };
    let mut connection = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .handshake::<_, Bytes>(stream)
        .await
        .map_err(h2_err)?;
    // Accepting also drives the connection's I/O for every open stream.
    while let Some(next) = connection.accept().await {
        let (request, mut respond) = next.map_err(h2_err)?;
        let Some(authority) = authority(&request) else {
            debug!(%peer_addr, method = %request.method(), uri = %request.uri(), "not a CONNECT to ip:port");
            let _ = respond.send_response(status_response(StatusCode::BAD_REQUEST), true);
            continue;
        };
        let recv = request.into_body();
        tokio::spawn(handler(Connect {
            peer: peer.clone(),
            peer_addr,
            authority,
            stream: PendingTunnel {
                respond,
                recv,
                authority,
            },
        }));
    }
    Ok(())
}

/// The `ip:port` a CONNECT asks for; anything else is a bad request.
fn authority<B>(req: &Request<B>) -> Option<SocketAddr> {
    if req.method() != Method::CONNECT {
        return None;
    }
    req.uri().authority()?.as_str().parse().ok()
}
