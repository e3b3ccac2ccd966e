//! The DNS proxy on each enrolled pod's loopback (port 15053, UDP and
//! TCP), where capture sends the pod's queries. Mesh names are answered
//! from the current config ([`strait_dns`]); anything else goes unchanged to
//! the nameserver the pod asked for that query, from inside the pod, so it
//! is resolved as it would be without the mesh. Each pod's share of the
//! proxy is bounded ([`MAX_FORWARDS`], [`MAX_TCP`]).
use std::{net::SocketAddr, sync::Arc, time::Duration};

use strait_dns::Outcome;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    task::JoinHandle,
};
use tracing::{Instrument, debug, info_span, warn};

use strait_capture::Maps;
use strait_state::NodeState;

use crate::{metrics::Metrics, pod::Pod};

/// What the DNS proxy answers from and counts in, shared by every pod's.
pub struct Dns {
    pub state: NodeState,
    pub maps: Arc<Maps>,
    pub metrics: Arc<Metrics>,
}

/// How long an upstream nameserver gets to answer; the client retries
/// on its own schedule anyway.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a TCP client may take to send its next query.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The largest DNS message (TCP's two-byte length).
const MAX_MESSAGE: usize = 65_535;
/// Per pod: UDP queries being forwarded at once (each holds a socket and a
/// receive buffer until its answer or the timeout), and TCP connections.
/// A pod past them has its further queries dropped (UDP clients retry) or
/// waits (TCP); other pods are not affected.
pub const MAX_FORWARDS: usize = 64;
pub const MAX_TCP: usize = 16;

/// Serves a pod's UDP DNS socket. Mesh names are answered at once; the rest
/// are forwarded on tasks of their own (at most [`MAX_FORWARDS`]), so a
/// slow upstream does not hold up mesh answers.
pub fn serve_udp(dns: Arc<Dns>, pod: Arc<Pod>, socket: UdpSocket) -> JoinHandle<()> {
    let socket = Arc::new(socket);
    tokio::spawn(async move {
        let Ok(local) = socket.local_addr() else {
            return;
        };
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let (len, peer) = match socket.recv_from(&mut buf).await {
                Ok(got) => got,
                Err(err) => {
                    warn!(%err, pod = %pod.workload.name, "DNS receive failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let query = &buf[..len];
            let span = info_span!("dns", src = %peer, src_identity = %pod.identity, proto = "udp");
            let _entered = span.enter();
            match decide(&dns, &pod, query) {
                Outcome::Answer(answer) => {
                    if let Err(err) = socket.try_send_to(&answer, peer) {
                        debug!(%err, "sending the DNS answer");
                    }
                }
                Outcome::Forward => {
                    let Ok(slot) = pod.dns_forwards.clone().try_acquire_owned() else {
                        dns.metrics.dns_dropped.inc();
                        debug!("too many queries being forwarded for this pod; dropped");
                        continue;
                    };
                    let query = query.to_vec();
                    let (dns, pod, socket) = (dns.clone(), pod.clone(), socket.clone());
                    tokio::spawn(
                        async move {
                            let _slot = slot;
                            if let Some(reply) = forward_udp(&dns, &pod, local, peer, &query).await
                                && let Err(err) = socket.send_to(&reply, peer).await
                            {
                                debug!(%err, "sending the DNS answer");
                            }
                        }
                        .instrument(span.clone()),
                    );
                }
            }
        }
    })
}

/// One TCP connection to the DNS proxy (capture sent a TCP connect to port
/// 53 here): length-prefixed queries, answered in order.
pub async fn handle_tcp(dns: Arc<Dns>, pod: Arc<Pod>, mut client: TcpStream, peer: SocketAddr) {
    let nameserver = dns.maps.take_original_dst(pod.netns_cookie(), peer);
    let span =
        info_span!("dns", src = %peer, src_identity = %pod.identity, proto = "tcp", ?nameserver);
    async move {
        let Ok(_slot) = pod.dns_tcp.clone().try_acquire_owned() else {
            dns.metrics.dns_dropped.inc();
            debug!("too many DNS connections for this pod; closed");
            return;
        };
        let mut upstream: Option<TcpStream> = None;
        while let Ok(Some(query)) = tokio::time::timeout(TCP_IDLE, read_message(&mut client)).await
        {
            let reply = match decide(&dns, &pod, &query) {
                Outcome::Answer(answer) => answer,
                Outcome::Forward => {
                    let Some(nameserver) = nameserver else {
                        warn!("no nameserver recorded for this connection");
                        return;
                    };
                    dns.metrics.dns_forwarded.inc();
                    if upstream.is_none() {
                        let connect = pod.connect(nameserver, None, |_| ());
                        match tokio::time::timeout(UPSTREAM_TIMEOUT, connect).await {
                            Ok(Ok(stream)) => upstream = Some(stream),
                            Ok(Err(err)) => {
                                debug!(%err, "connecting to the nameserver");
                                return;
                            }
                            Err(_) => {
                                debug!("connecting to the nameserver timed out");
                                return;
                            }
                        }
                    }
                    let Some(stream) = upstream.as_mut() else {
                        return;
                    };
                    let exchange = async {
                        write_message(stream, &query).await?;
                        read_message(stream)
                            .await
                            .ok_or(std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
                    };
                    match tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await {
                        Ok(Ok(reply)) => reply,
                        Ok(Err(err)) => {
                            debug!(%err, "nameserver exchange failed");
                            return;
                        }
                        Err(_) => {
                            debug!("nameserver did not answer in time");
                            return;
                        }
                    }
                }
            };
            if write_message(&mut client, &reply).await.is_err() {
                return;
            }
        }
    }
    .instrument(span)
    .await
}

/// Mesh answer or forward; a query strait cannot read is forwarded for the
/// nameserver to judge.
fn decide(dns: &Dns, pod: &Pod, query: &[u8]) -> Outcome {
    dns.metrics.dns_requests.inc();
    let state = dns.state.snapshot();
    match strait_dns::answer(&state.config, &pod.workload.namespace, query) {
        Ok(outcome) => outcome,
        Err(err) => {
            debug!(%err, "unreadable query; forwarding it");
            Outcome::Forward
        }
    }
}

/// Asks the nameserver this query was for, from inside the pod. The
/// client socket is found by its address (`local` is where the query
/// arrived), and capture recorded which nameserver that socket asked.
async fn forward_udp(
    dns: &Dns,
    pod: &Pod,
    local: SocketAddr,
    peer: SocketAddr,
    query: &[u8],
) -> Option<Vec<u8>> {
    dns.metrics.dns_forwarded.inc();
    let nameserver = match pod.udp_socket_cookie(local, peer) {
        Ok(Some(cookie)) => dns.maps.dns_nameserver(cookie),
        Ok(None) => None,
        Err(err) => {
            debug!(%err, "looking up the client socket");
            None
        }
    };
    let Some(nameserver) = nameserver else {
        warn!("no nameserver recorded for the socket that sent this query");
        return None;
    };
    let exchange = async {
        let socket = pod.udp_socket(nameserver.is_ipv4())?;
        socket.connect(nameserver).await?;
        socket.send(query).await?;
        let mut buf = vec![0u8; MAX_MESSAGE];
        let len = socket.recv(&mut buf).await?;
        buf.truncate(len);
        std::io::Result::Ok(buf)
    };
    match tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await {
        Ok(Ok(reply)) => Some(reply),
        Ok(Err(err)) => {
            debug!(%err, %nameserver, "forwarding the query");
            None
        }
        Err(_) => {
            debug!(%nameserver, "nameserver did not answer in time");
            None
        }
    }
}

/// One length-prefixed DNS message (RFC 1035 §4.2.2); `None` at the end of
/// the stream or when it ends inside a message.
async fn read_message(stream: &mut (impl AsyncRead + Unpin)) -> Option<Vec<u8>> {
    let len = stream.read_u16().await.ok()?;
    let mut message = vec![0u8; usize::from(len)];
    stream.read_exact(&mut message).await.ok()?;
    Some(message)
}

async fn write_message(
    stream: &mut (impl AsyncWrite + Unpin),
    message: &[u8],
) -> std::io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| std::io::Error::other("DNS message over 65535 bytes"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_messages_are_framed_by_their_length() {
        let (mut a, mut b) = tokio::io::duplex(1 << 17);
        write_message(&mut a, b"first").await.unwrap();
        write_message(&mut a, &[7u8; 512]).await.unwrap();
        write_message(&mut a, b"").await.unwrap();
        assert_eq!(read_message(&mut b).await.unwrap(), b"first");
        assert_eq!(read_message(&mut b).await.unwrap(), vec![7u8; 512]);
        assert_eq!(read_message(&mut b).await.unwrap(), b"");
        // A message may not outgrow its two-byte length.
        assert!(write_message(&mut a, &vec![0u8; 70_000]).await.is_err());
        // A stream that ends inside a message yields nothing, not a part.
        a.write_all(&[0, 10, 1, 2, 3]).await.unwrap();
        drop(a);
        assert_eq!(read_message(&mut b).await, None);
    }
}
