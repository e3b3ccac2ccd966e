//! What is not HTTP is carried as TCP: by the service's VirtualService
//! `tcp` routes when it has them (the first whose match holds, a
//! destination by weight; none holding refuses the connection), else to an
//! endpoint of the service the client dialled (or to the workload it
//! dialled), chosen as the node agents choose; with Istio's connection
//! metrics.
use std::sync::Arc;

use strait_config::{
    Config,
    authz::cidr_contains,
    manifest::networking::{L4Match, TcpRoute},
};
use strait_route::{Route, Target, route};
use strait_telemetry::{Direction, Reason, Reporter, relay};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, warn};

use crate::proxy::{Client, Waypoint};

pub async fn carry<S>(waypoint: Arc<Waypoint>, client: Arc<Client>, mut stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let state = waypoint.state.snapshot();
    let instance = &waypoint.instance;
    let src = client.addr.ip();
    let routed = match tcp_route(&state.config, &client) {
        Routed::Service => None,
        Routed::NoMatch => {
            waypoint
                .metrics
                .tcp
                .fail(Direction::Inbound, Reason::NoEndpoints);
            warn!(authority = %client.authority, "no tcp route of the VirtualService matches: refused");
            return;
        }
        Routed::To(host, subset, port) => {
            let endpoints = async {
                let at = state.config.find_service(&host)?;
                let subset = match &subset {
                    None => None,
                    Some(name) => Some(crate::plan::subset_labels(
                        &waypoint,
                        &state.config,
                        at,
                        name,
                    )?),
                };
                let port =
                    port.unwrap_or_else(|| crate::plan::port_of(at, None, client.authority.port()));
                let plan = crate::plan::Plan::to(at, port, subset);
                crate::plan::targets(&waypoint, &client, &state, &plan)
                    .await
                    .ok()
            };
            match endpoints.await {
                Some(endpoints) => Some(endpoints.targets),
                None => {
                    waypoint
                        .metrics
                        .tcp
                        .fail(Direction::Inbound, Reason::NoEndpoints);
                    warn!(%host, "tcp route's destination has no endpoint");
                    return;
                }
            }
        }
    };
    let targets = match routed {
        Some(targets) => targets,
        None => match route(
            &state,
            &waypoint.health,
            &waypoint.board,
            &waypoint.load,
            instance,
            src,
            client.authority,
        ) {
            Ok(Route::Endpoints { targets, .. }) => targets,
            Ok(Route::Direct(addr)) => vec![Target::Direct(addr)],
            Ok(Route::Waypoint { .. } | Route::Dns { .. }) | Err(_) => {
                waypoint
                    .metrics
                    .tcp
                    .fail(Direction::Inbound, Reason::NoEndpoints);
                warn!(authority = %client.authority, "no endpoint to carry TCP to");
                return;
            }
        },
    };
    for target in targets {
        let Target::Direct(addr) = target else {
            continue;
        };
        match waypoint
            .dialer
            .open(
                &*waypoint,
                &state,
                addr,
                waypoint.connect_timeout,
                strait_hbone::Claims {
                    on_behalf_of: crate::forward::speaks_for_client(
                        &waypoint,
                        &state,
                        &Target::Direct(addr),
                    )
                    .then_some(&client.identity),
                    ..Default::default()
                },
            )
            .await
        {
            Ok(upstream) => {
                let mut io = match upstream {
                    strait_upstream::Upstream::Hbone { tunnel, .. }
                    | strait_upstream::Upstream::Remote { tunnel, .. } => {
                        crate::pool::Io::Tunnel(Box::new(tunnel))
                    }
                    strait_upstream::Upstream::Plain(tcp) => crate::pool::Io::Tcp(tcp),
                };
                let mut labels = strait_telemetry::labels(
                    &state,
                    Reporter::Destination,
                    client.addr.ip(),
                    client.identity.to_string(),
                    addr.ip(),
                    true,
                );
                labels.reporter = Reporter::Waypoint;
                let (src, dst) = (client.addr.to_string(), addr.to_string());
                let _ = relay(
                    &waypoint.metrics.tcp,
                    labels,
                    &mut stream,
                    &mut io,
                    &src,
                    &dst,
                )
                .await;
                return;
            }
            Err(reason) => debug!(?reason, %addr, "endpoint refused"),
        }
    }
    waypoint
        .metrics
        .tcp
        .fail(Direction::Inbound, Reason::Upstream);
}

/// Where the service's VirtualService sends a TCP connection.
enum Routed {
    /// No `tcp` routes: to the service itself.
    Service,
    /// `tcp` routes, none matching.
    NoMatch,
    /// A destination host, subset and port.
    To(String, Option<String>, Option<u16>),
}

fn tcp_route(config: &Config, client: &Client) -> Routed {
    let Some(at) = config.service_at(client.authority.ip()) else {
        return Routed::Service;
    };
    let Some(vs) = config.virtual_service_for(at.service) else {
        return Routed::Service;
    };
    if vs.spec.tcp.is_empty() {
        return Routed::Service;
    }
    let source = config.workload_by_address(client.addr.ip());
    let holds = |m: &L4Match| {
        m.port
            .is_none_or(|p| p == u32::from(client.authority.port()))
            && (m.destination_subnets.is_empty()
                || m.destination_subnets
                    .iter()
                    .any(|s| cidr_contains(s, client.authority.ip())))
            && m.source_subnet
                .as_deref()
                .is_none_or(|s| cidr_contains(s, client.addr.ip()))
            && m.source_namespace
                .as_deref()
                .is_none_or(|ns| ns == client.identity.namespace)
            && m.source_labels
                .iter()
                .all(|(k, v)| source.is_some_and(|w| w.labels.get(k) == Some(v)))
    };
    let taken: Option<&TcpRoute> = vs
        .spec
        .tcp
        .iter()
        .find(|r| r.matches.is_empty() || r.matches.iter().any(holds));
    let Some(route) = taken else {
        return Routed::NoMatch;
    };
    // By weight; a single destination weighs 100.
    let weights: Vec<u32> = route
        .route
        .iter()
        .map(|d| {
            d.weight
                .map_or(if route.route.len() == 1 { 100 } else { 0 }, |w| {
                    u32::try_from(w.max(0)).unwrap_or(0)
                })
        })
        .collect();
    let total: u32 = weights.iter().sum();
    let mut at = fastrand::f64() * f64::from(total.max(1));
    let chosen = route
        .route
        .iter()
        .zip(&weights)
        .find(|(_, w)| {
            at -= f64::from(**w);
            at < 0.0
        })
        .map(|(d, _)| d)
        .or(route.route.first());
    match chosen {
        Some(d) => Routed::To(
            strait_config::qualify(&d.destination.host, &vs.namespace),
            d.destination.subset.clone(),
            d.destination
                .port
                .as_ref()
                .and_then(|p| u16::try_from(p.number).ok()),
        ),
        None => Routed::NoMatch,
    }
}
