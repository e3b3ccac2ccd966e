//! Outbound: a pod of this node connected somewhere; capture sent the
//! connection to the pod's port 15001. Find where it was going, then carry it
//! there: over HBONE (mutual TLS as the pod's identity) to a mesh workload,
//! unchanged as plain TCP to anything else.
use std::{net::SocketAddr, sync::Arc};

use strait_ebpf_common::port;
use strait_hbone::PoolKey;
use tokio::net::TcpStream;
use tracing::{Instrument, debug, info_span, warn};

use super::{Proxy, relay::relay, reset};
use crate::{
    metrics::{Direction, Reason, Reporter},
    pods::Pod,
};

pub async fn handle(proxy: Arc<Proxy>, pod: Arc<Pod>, client: TcpStream, peer: SocketAddr) {
    let Some(original) = proxy.maps.take_original_dst(pod.netns_cookie(), peer) else {
        proxy
            .metrics
            .fail(Direction::Outbound, Reason::NoOriginalDestination);
        warn!(pod = %pod.workload.name, %peer, "no original destination for a redirected connection");
        reset(client);
        return;
    };
    let src = pod
        .workload
        .addresses
        .iter()
        .copied()
        .find(|a| a.is_ipv4() == original.is_ipv4())
        .unwrap_or(peer.ip());
    let span = info_span!("outbound", %src, dst = %original, src_identity = %pod.identity);
    async move {
        let _ = client.set_nodelay(true);
        let state = proxy.state.snapshot();
        match state
            .mesh_workload(original.ip())
            .map(|w| state.identity(w))
        {
            Some(destination) => {
                let hbone = SocketAddr::new(original.ip(), port::HBONE);
                let key = PoolKey {
                    source: pod.identity.clone(),
                    destination: destination.clone(),
                    addr: hbone,
                };
                let tls = match proxy.clients.get(&pod.identity, &destination) {
                    Ok(tls) => tls,
                    Err(err) => {
                        warn!(%err, "no TLS configuration");
                        reset(client);
                        return;
                    }
                };
                let tunnel = proxy
                    .pool
                    .connect(&key, original, tls, || pod.connect(hbone, None, |_| ()))
                    .await;
                match tunnel {
                    Ok(mut tunnel) => {
                        let labels = proxy.labels(
                            Reporter::Source,
                            src,
                            pod.identity.to_string(),
                            original.ip(),
                            true,
                        );
                        let (src, dst) = (src.to_string(), original.to_string());
                        let mut client = client;
                        if let Err(err) =
                            relay(&proxy.metrics, labels, &mut client, &mut tunnel, &src, &dst)
                                .await
                        {
                            // The far end refused the CONNECT (its app is not
                            // listening): the client sees a reset, as it would
                            // without the mesh.
                            if err.kind() == std::io::ErrorKind::ConnectionRefused {
                                proxy.metrics.fail(Direction::Outbound, Reason::Upstream);
                                warn!(%err, %destination, "CONNECT refused");
                            }
                            reset(client);
                        }
                    }
                    Err(err) => {
                        let reason = if err.is_tls() {
                            Reason::Tls
                        } else {
                            Reason::Upstream
                        };
                        proxy.metrics.fail(Direction::Outbound, reason);
                        warn!(%err, %destination, "HBONE connect failed");
                        reset(client);
                    }
                }
            }
            None => match pod.connect(original, None, |_| ()).await {
                Ok(mut upstream) => {
                    debug!("passthrough: destination is outside the mesh");
                    let labels = proxy.labels(
                        Reporter::Source,
                        src,
                        pod.identity.to_string(),
                        original.ip(),
                        false,
                    );
                    let (src, dst) = (src.to_string(), original.to_string());
                    let mut client = client;
                    if relay(
                        &proxy.metrics,
                        labels,
                        &mut client,
                        &mut upstream,
                        &src,
                        &dst,
                    )
                    .await
                    .is_err()
                    {
                        reset(client);
                    }
                }
                Err(err) => {
                    proxy.metrics.fail(Direction::Outbound, Reason::Upstream);
                    debug!(%err, "passthrough connect failed");
                    reset(client);
                }
            },
        }
    }
    .instrument(span)
    .await
}
