//! Outbound: a pod of this node connected somewhere; capture sent the
//! connection to the pod's port 15001. Find where it was going and where
//! that leads ([`route`](super::route)), then carry it there: over HBONE
//! (mutual TLS as the pod's identity) to a mesh workload, unchanged as plain
//! TCP to anything else.
use std::{net::SocketAddr, sync::Arc};

use strait_ebpf_common::port;
use strait_hbone::Claims;
use strait_route::{Pool, Route, Target, direct, route};
use strait_telemetry::{Direction, Peer, Reason, Reporter, ResponseFlags, relay};
use strait_trace::Kind;
use strait_upstream::{Upstream, remote, reset};
use tokio::net::TcpStream;
use tracing::{Instrument, debug, info_span, warn};

use super::{Proxy, ServiceHint};
use crate::{pod::Pod, share::Way};

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
        // 0.0.0.0 is this host, and the pod's own address at an agent
        // port is the agent: either would come straight back.
        let ip = original.ip();
        if ip.is_unspecified()
            || ip.is_loopback()
            || (pod.workload.addresses.contains(&ip) && port::is_pod_listener(original.port()))
        {
            proxy.metrics.fail(Direction::Outbound, Reason::Loop);
            warn!("refusing a connection to the agent itself");
            reset(client);
            return;
        }
        let Some(_held) = proxy.admit(&pod, Way::Outbound) else {
            reset(client);
            return;
        };
        let _ = client.set_nodelay(true);
        let state = proxy.state.snapshot();
        // The client as the current config describes it (its locality may
        // have changed since it was enrolled).
        let client_workload = state
            .config
            .workload_by_address(src)
            .unwrap_or(&pod.workload);
        let mut outlier = None;
        let mut pool = Pool::default();
        let targets = match route(
            &state,
            &proxy.health,
            &proxy.board,
            &proxy.load,
            client_workload,
            src,
            original,
        ) {
            Ok(Route::Direct(dst)) => {
                match direct(&state, &proxy.health, &proxy.board, client_workload, dst) {
                    Some(targets) => targets,
                    None => {
                        proxy.metrics.fail(Direction::Outbound, Reason::NotExported);
                        warn!("another network's workload, at a port no service exports to other networks (istio.io/global): refused");
                        reset(client);
                        return;
                    }
                }
            }
            Ok(Route::Endpoints {
                service,
                targets,
                all,
                outlier: settings,
                pool: limits,
            }) => {
                debug!(%service, ?targets, "service address");
                outlier = Some((service, all, settings));
                pool = limits;
                targets
            }
            Ok(Route::Waypoint { waypoint, targets }) => {
                debug!(%waypoint, ?targets, "through its waypoint");
                targets
            }
            Ok(Route::Dns {
                service,
                hosts,
                port,
            }) => match resolve(&hosts, port).await {
                Some(targets) => {
                    debug!(%service, ?targets, "resolved by DNS");
                    targets.into_iter().map(Target::Direct).collect()
                }
                None => {
                    proxy.metrics.fail(Direction::Outbound, Reason::NoEndpoints);
                    warn!(%service, ?hosts, "DNS gave no address");
                    reset(client);
                    return;
                }
            },
            Err(err) => {
                proxy.metrics.fail(Direction::Outbound, Reason::NoEndpoints);
                warn!(%err, "service unavailable");
                reset(client);
                return;
            }
        };
        if targets.is_empty() {
            proxy.metrics.fail(Direction::Outbound, Reason::NoEndpoints);
            warn!("another network's workload, and no gateway leads there");
            reset(client);
            return;
        }
        // connectionPool.tcp.maxConnections: past it, refused (Envoy's
        // overflow) rather than queued.
        let _slot = match (&outlier, pool.max_connections) {
            (Some((service, _, _)), Some(max)) => match proxy.load.open_service(service, max) {
                Some(slot) => Some(slot),
                None => {
                    proxy.metrics.fail(Direction::Outbound, Reason::Overflow);
                    warn!(%service, max, "connectionPool.tcp.maxConnections reached: refused");
                    reset(client);
                    return;
                }
            },
            _ => None,
        };
        // The connection's span, when it starts a sampled trace: its
        // CONNECT names it, so the waypoint's or destination's span joins.
        let mut span = proxy.tracer.sampled_root("outbound", Kind::Client);
        let traceparent = span.as_ref().map(|s| s.context().traceparent());
        if let Some(span) = &mut span {
            span.set("source.address", src.to_string());
            span.set("destination.address", original.to_string());
            span.set("source.principal", pod.identity.to_string());
        }
        let claims = Claims {
            traceparent: traceparent.as_deref(),
            ..Claims::default()
        };
        let timeout = pool.connect_timeout.unwrap_or(proxy.connect_timeout);
        let mut failure = Reason::Upstream;
        // Silent endpoints each cost a connect timeout: stop starting new
        // attempts after three.
        let give_up = std::time::Instant::now() + timeout * 3;
        // Networks whose endpoints failed behind a gateway: their other
        // gateways would reach the same endpoints.
        let mut failed_behind: Vec<String> = Vec::new();
        for target in targets {
            if std::time::Instant::now() >= give_up {
                break;
            }
            // A direct endpoint, or a waypoint instance; another network's
            // endpoints go through its gateways below.
            let (opened, addr, to) = match target {
                Target::Direct(target) => (
                    proxy.dialer.open(&*pod, &state, target, timeout, claims).await,
                    target,
                    target,
                ),
                Target::Waypoint(hop) => (
                    proxy
                        .dialer
                        .open_waypoint(&*pod, &hop, timeout, claims)
                        .await,
                    hop.addr,
                    hop.authority,
                ),
                Target::Remote(via) => {
                    if failed_behind.contains(&via.network) {
                        continue;
                    }
                    match remote(&proxy, &pod, &state, &via, (timeout, claims)).await {
                        Ok(upstream) => {
                            let _active = proxy.load.open(via.gateway);
                            carry(&proxy, &pod, client, upstream, (src, via.gateway, original)).await;
                            return;
                        }
                        Err(remote::Failure::Behind(Reason::NoCertificate)) => {
                            failure = Reason::NoCertificate;
                            warn!("no certificate for this pod yet: refused rather than sent in the clear");
                            break;
                        }
                        Err(remote::Failure::Behind(reason)) => {
                            failure = reason;
                            failed_behind.push(via.network.clone());
                        }
                        Err(remote::Failure::Gateway(reason)) => failure = reason,
                    }
                    continue;
                }
            };
            match opened {
                Ok(upstream) => {
                    proxy.health.success(addr);
                    let _active = proxy.load.open(addr);
                    carry(&proxy, &pod, client, upstream, (src, to, original)).await;
                    return;
                }
                Err(Reason::NoCertificate) => {
                    // Ours, not the endpoint's fault: no other endpoint
                    // helps.
                    failure = Reason::NoCertificate;
                    warn!("no certificate for this pod yet: refused rather than sent in the clear");
                    break;
                }
                Err(reason) => {
                    failure = reason;
                    let now = std::time::Instant::now();
                    if addr != to {
                        // A waypoint instance: set aside like a failing
                        // gateway, the next one tried.
                        let settings = strait_balance::outlier::Settings::from_rule(None);
                        if proxy.health.failure(addr, &[addr], settings, now) {
                            warn!(instance = %addr, "waypoint instance set aside");
                        }
                    } else if let Some((service, all, settings)) = &outlier
                        && proxy.health.failure(addr, all, *settings, now)
                    {
                        // A service's endpoint: its outlier detection (a
                        // workload dialled directly has nothing to rank).
                        proxy.metrics.ejected(service);
                        warn!(%service, endpoint = %addr, "endpoint ejected");
                    }
                }
            }
        }
        proxy.metrics.fail(Direction::Outbound, failure);
        if failure == Reason::Upstream {
            let labels = proxy.labels(
                Reporter::Source,
                src,
                Some(&pod.identity),
                original,
                false,
                ServiceHint::Dialled(original.ip()),
            );
            proxy.metrics.tcp.refused(labels, ResponseFlags::Connect);
        }
        if let Some(span) = &mut span {
            span.error(format!("{failure:?}"));
        }
        reset(client);
    }
    .instrument(span)
    .await
}

/// Opens the double tunnel to `via`'s network; the gateway set aside when
/// it fails.
async fn remote(
    proxy: &Proxy,
    pod: &Pod,
    state: &strait_state::Snapshot,
    via: &strait_route::Via,
    (timeout, claims): (std::time::Duration, Claims<'_>),
) -> Result<Upstream, remote::Failure> {
    match proxy
        .dialer
        .open_remote(pod, state, via, timeout, claims)
        .await
    {
        Ok((tunnel, destination)) => {
            proxy.health.success(via.gateway);
            Ok(Upstream::Remote {
                tunnel,
                destination,
                via: via.clone(),
            })
        }
        Err(remote::Failure::Gateway(reason)) => {
            let gateways = [via.gateway];
            let settings = strait_balance::outlier::Settings::from_rule(None);
            if proxy
                .health
                .failure(via.gateway, &gateways, settings, std::time::Instant::now())
            {
                warn!(gateway = %via.gateway, network = %via.network, "gateway set aside");
            }
            Err(remote::Failure::Gateway(reason))
        }
        Err(behind) => Err(behind),
    }
}

/// Carries the client's bytes to `target` and back; the client sees a
/// reset when the far end fails it. `original` is what the client dialled.
async fn carry(
    proxy: &Proxy,
    pod: &Pod,
    mut client: TcpStream,
    upstream: Upstream,
    (src, target, original): (std::net::IpAddr, SocketAddr, SocketAddr),
) {
    let mtls = matches!(upstream, Upstream::Hbone { .. } | Upstream::Remote { .. });
    let mut labels = proxy.labels(
        Reporter::Source,
        src,
        Some(&pod.identity),
        target,
        mtls,
        ServiceHint::Dialled(original.ip()),
    );
    let (src, mut dst) = (src.to_string(), target.to_string());
    let result = match upstream {
        Upstream::Remote {
            mut tunnel,
            destination,
            via,
        } => {
            // The gateway picked the endpoint: this end knows the service
            // and the identity that answered inside, not the workload.
            labels = labels.destination(Peer {
                namespace: destination.namespace.clone(),
                ..Peer::unknown()
            });
            labels = labels.destination_principal(&destination);
            dst = format!(
                "{} via {} ({})",
                via.authority, via.gateway, via.gateway_identity
            );
            let result = relay(
                &proxy.metrics.tcp,
                labels,
                &mut client,
                &mut tunnel,
                &src,
                &dst,
            )
            .await;
            if result.is_err() {
                tunnel.reset();
            }
            result
        }
        Upstream::Hbone {
            mut tunnel,
            destination,
        } => {
            let result = relay(
                &proxy.metrics.tcp,
                labels,
                &mut client,
                &mut tunnel,
                &src,
                &dst,
            )
            .await;
            // The far end refused the CONNECT (its app is not listening, or
            // a policy): the client sees a reset, as it would without the
            // mesh.
            if let Err(err) = &result {
                if err.kind() == std::io::ErrorKind::ConnectionRefused {
                    proxy.metrics.fail(Direction::Outbound, Reason::Upstream);
                    warn!(%err, %destination, "CONNECT refused");
                }
                // The client's side broke: the far end resets too.
                tunnel.reset();
            }
            result
        }
        Upstream::Plain(mut stream) => {
            let result = relay(
                &proxy.metrics.tcp,
                labels,
                &mut client,
                &mut stream,
                &src,
                &dst,
            )
            .await;
            if result.is_err() {
                reset(stream);
            }
            result
        }
    };
    if result.is_err() {
        reset(client);
    }
}

/// Looks `hosts` up through the node's resolver; every address found, in a
/// random order.
async fn resolve(hosts: &[String], port: u16) -> Option<Vec<SocketAddr>> {
    let mut found = Vec::new();
    for host in hosts {
        match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(addrs) => found.extend(addrs),
            Err(err) => debug!(%err, %host, "lookup failed"),
        }
    }
    fastrand::shuffle(&mut found);
    (!found.is_empty()).then_some(found)
}
