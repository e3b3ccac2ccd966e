//! The waypoint's HBONE listener: mutual TLS as its own identity (mesh
//! clients only), each CONNECT checked against what is bound to this
//! waypoint (a service address whose service uses it, or a workload
//! address), then served as HTTP or carried as TCP. A client's share of
//! the listener is bounded as the agents bound theirs; an HTTP client's
//! headers, streams and idle time are bounded too.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use hyper::{StatusCode, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use strait_hbone::{Authority, Connect};
use strait_telemetry::{Direction, Reason};
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, info_span, warn};

use crate::{
    detect::{self, Protocol},
    forward,
    pool::Version,
    proxy::Client,
    proxy::Waypoint,
    tcp,
};

/// HTTP/1.1: the request line and headers may take this much.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// HTTP/2: concurrent streams per connection (gRPC's and most servers'
/// default).
const MAX_STREAMS: u32 = 100;
/// Time for a request's headers to arrive.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a CONNECT for an address this waypoint's config does not bind
/// yet waits for the config to catch up before it is refused.
const CATCH_UP: Duration = Duration::from_secs(3);

/// Accepts on `listener` until aborted.
pub fn serve(waypoint: Arc<Waypoint>, listener: TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((tcp, peer)) => {
                    let guard = waypoint.in_flight.enter();
                    let waypoint = waypoint.clone();
                    tokio::spawn(async move {
                        handle(waypoint, tcp, peer).await;
                        drop(guard);
                    });
                }
                Err(err) => {
                    warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}

async fn handle(waypoint: Arc<Waypoint>, tcp: TcpStream, peer: SocketAddr) {
    let span = info_span!("waypoint", src = %peer, waypoint = %waypoint.identity);
    async move {
        let tls = waypoint.tls.clone();
        let handler = {
            let waypoint = waypoint.clone();
            move |connect: Connect| on_connect(waypoint.clone(), connect)
        };
        // Many small requests share each connection: their writes are
        // gathered into fewer TLS records and syscalls.
        let limits = strait_hbone::Limits {
            coalesce_writes: true,
            ..strait_hbone::Limits::default()
        };
        let admission = (&waypoint.admission, false);
        match strait_hbone::serve(tcp, peer, tls, limits, admission, handler).await {
            Ok(()) => {}
            Err(err) if err.is_tls() => {
                waypoint.metrics.tcp.fail(Direction::Inbound, Reason::Tls);
                warn!(%err, "HBONE handshake refused");
            }
            Err(err @ strait_hbone::Error::Limit { .. }) => {
                waypoint.metrics.tcp.fail(Direction::Inbound, Reason::Limit);
                warn!(%err, "HBONE connection refused");
            }
            Err(err) => debug!(%err, "HBONE connection ended"),
        }
    }
    .instrument(span)
    .await
}

/// One CONNECT: what it asks for must be bound to this waypoint.
async fn on_connect(waypoint: Arc<Waypoint>, connect: Connect) {
    let span = info_span!("waypoint_connect", src = %connect.peer_addr, src_identity = %connect.peer, authority = %connect.authority);
    async move {
        let Ok(_slot) = &connect.admitted else {
            waypoint.metrics.tcp.fail(Direction::Inbound, Reason::Limit);
            connect.stream.refuse(StatusCode::SERVICE_UNAVAILABLE);
            return;
        };
        let authority = match &connect.authority {
            Authority::Addr(addr) => *addr,
            Authority::Host { .. } => {
                waypoint
                    .metrics
                    .tcp
                    .fail(Direction::Inbound, Reason::Misdirected);
                connect.stream.refuse(StatusCode::BAD_REQUEST);
                return;
            }
        };
        // A client whose agent read a binding first is not refused while
        // this waypoint's config catches up.
        let bound = |config: &strait_config::Config| waypoint.serves(config, authority);
        let serves = waypoint.state.held_recently(bound)
            || waypoint.state.holds_within(CATCH_UP, bound).await;
        if !serves {
            // Nothing bound here: a client may not use the waypoint as a
            // way to anything else.
            waypoint
                .metrics
                .tcp
                .fail(Direction::Inbound, Reason::Misdirected);
            warn!("CONNECT for an address not bound to this waypoint: refused");
            connect.stream.refuse(StatusCode::FORBIDDEN);
            return;
        }
        let tunnel = match connect.stream.accept() {
            Ok(tunnel) => tunnel,
            Err(err) => {
                debug!(%err, "the tunnel did not open");
                return;
            }
        };
        let (protocol, stream) = match detect::sniff(tunnel).await {
            Ok(found) => found,
            Err(err) => {
                debug!(%err, "the client went away");
                return;
            }
        };
        let version = match protocol {
            Protocol::Http1 => Version::Http1,
            Protocol::Http2 => Version::Http2,
            Protocol::Tcp => {
                let client = Arc::new(Client {
                    identity: connect.peer.clone(),
                    addr: connect.peer_addr,
                    authority,
                    version: Version::Http1,
                    unbound: Default::default(),
                    trace: None,
                });
                tcp::carry(waypoint, client, stream).await;
                return;
            }
        };
        let client = Arc::new(Client {
            identity: connect.peer.clone(),
            addr: connect.peer_addr,
            authority,
            version,
            unbound: Default::default(),
            trace: connect
                .traceparent
                .as_deref()
                .and_then(strait_trace::Context::from_traceparent),
        });
        let service = {
            let client = client.clone();
            service_fn(move |request| forward::handle(waypoint.clone(), client.clone(), request))
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(MAX_HEADER_BYTES);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_STREAMS)
            .max_header_list_size(MAX_HEADER_BYTES as u32);
        let builder = match version {
            Version::Http1 => builder.http1_only(),
            Version::Http2 => builder.http2_only(),
        };
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let served = tokio::select! {
            served = connection.as_mut() => served,
            () = client.unbound.notified() => {
                // No longer this waypoint's to serve: what is in flight
                // finishes, then the client reconnects (and its agent
                // sends it straight on).
                debug!("the address left this waypoint: closing the connection");
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(err) = served {
            debug!(%err, "HTTP connection ended");
        }
    }
    .instrument(span)
    .await
}
