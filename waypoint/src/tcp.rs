//! What is not HTTP is carried as TCP: TLS by the service's VirtualService
//! `tls` routes when it has them (the first whose match holds on the
//! ClientHello's server name, [`crate::sni`], and the connection; none
//! holding goes on to the tcp routes), by its `tcp` routes when it has them
//! (the first whose match holds, a destination by weight; none holding
//! refuses the connection), else to an endpoint of the service the client
//! dialled (or to the workload it dialled), chosen as the node agents
//! choose; with Istio's connection metrics.
use std::sync::Arc;

use strait_config::{
    Config,
    authz::cidr_contains,
    manifest::networking::{L4Match, L4RouteDestination, TlsMatch},
};
use strait_route::{Route, Target, route};
use strait_telemetry::{Direction, Reason, Reporter, ResponseFlags, relay};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, warn};

use crate::{
    detect::Prefixed,
    proxy::{Client, Waypoint},
};

pub async fn carry<S>(waypoint: Arc<Waypoint>, client: Arc<Client>, mut stream: Prefixed<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let state = waypoint.state.snapshot();
    let instance = &waypoint.instance;
    let src = client.addr.ip();
    let server_name = if has_tls_routes(&state.config, &client) {
        crate::sni::server_name(&mut stream).await
    } else {
        None
    };
    // The policies attached to this waypoint, without request attributes:
    // rules on them allow nothing and deny all they otherwise match.
    let asker = crate::authz::Asker {
        identity: &client.identity,
        addr: client.addr,
        authority: client.authority,
    };
    let service = state.config.service_at(client.authority.ip());
    let decision = crate::authz::connection(
        &waypoint,
        &state.config,
        asker,
        service.map(|at| at.service),
    );
    if !decision.allowed {
        waypoint
            .metrics
            .tcp
            .fail(Direction::Inbound, Reason::Denied);
        let labels = strait_telemetry::labels(
            &state,
            Reporter::Waypoint,
            src,
            Some(&client.identity),
            client.authority.ip(),
            true,
        )
        .service(service.map(|at| at.service));
        waypoint.metrics.tcp.refused(labels, ResponseFlags::Deny);
        return;
    }
    let routed = match l4_route(&state.config, &client, server_name.as_deref()) {
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
                let labels = strait_telemetry::labels(
                    &state,
                    Reporter::Waypoint,
                    client.addr.ip(),
                    Some(&client.identity),
                    addr.ip(),
                    true,
                )
                .service(service.map(|at| at.service));
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

/// Whether the service dialled has `tls` routes (only then is a ClientHello
/// waited for).
fn has_tls_routes(config: &Config, client: &Client) -> bool {
    config
        .service_at(client.authority.ip())
        .and_then(|at| config.virtual_service_for(at.service))
        .is_some_and(|vs| !vs.spec.tls.is_empty())
}

fn l4_route(config: &Config, client: &Client, server_name: Option<&str>) -> Routed {
    let Some(at) = config.service_at(client.authority.ip()) else {
        return Routed::Service;
    };
    let Some(vs) = config.virtual_service_for(at.service) else {
        return Routed::Service;
    };
    let source = config.workload_by_address(client.addr.ip());
    // What a tcp and a tls match have alike.
    let holds = |port: Option<u32>,
                 subnets: &[String],
                 namespace: &Option<String>,
                 labels: &strait_config::Labels| {
        port.is_none_or(|p| p == u32::from(client.authority.port()))
            && (subnets.is_empty()
                || subnets
                    .iter()
                    .any(|s| cidr_contains(s, client.authority.ip())))
            && namespace
                .as_deref()
                .is_none_or(|ns| ns == client.identity.namespace)
            && labels
                .iter()
                .all(|(k, v)| source.is_some_and(|w| w.labels.get(k) == Some(v)))
    };
    if let Some(name) = server_name {
        let tls_holds = |m: &TlsMatch| {
            m.sni_hosts
                .iter()
                .any(|h| strait_config::host_matches(h, name))
                && holds(
                    m.port,
                    &m.destination_subnets,
                    &m.source_namespace,
                    &m.source_labels,
                )
        };
        if let Some(route) = vs.spec.tls.iter().find(|r| r.matches.iter().any(tls_holds)) {
            return pick(&route.route, &vs.namespace);
        }
    }
    if vs.spec.tcp.is_empty() {
        return Routed::Service;
    }
    let tcp_holds = |m: &L4Match| {
        holds(
            m.port,
            &m.destination_subnets,
            &m.source_namespace,
            &m.source_labels,
        ) && m
            .source_subnet
            .as_deref()
            .is_none_or(|s| cidr_contains(s, client.addr.ip()))
    };
    match vs
        .spec
        .tcp
        .iter()
        .find(|r| r.matches.is_empty() || r.matches.iter().any(tcp_holds))
    {
        Some(route) => pick(&route.route, &vs.namespace),
        None => Routed::NoMatch,
    }
}

/// One of a route's destinations, by weight (a single one weighs 100).
fn pick(destinations: &[L4RouteDestination], namespace: &str) -> Routed {
    let weights: Vec<u32> = destinations
        .iter()
        .map(|d| {
            d.weight
                .map_or(if destinations.len() == 1 { 100 } else { 0 }, |w| {
                    u32::try_from(w.max(0)).unwrap_or(0)
                })
        })
        .collect();
    let total: u32 = weights.iter().sum();
    let mut at = fastrand::f64() * f64::from(total.max(1));
    let chosen = destinations
        .iter()
        .zip(&weights)
        .find(|(_, w)| {
            at -= f64::from(**w);
            at < 0.0
        })
        .map(|(d, _)| d)
        .or(destinations.first());
    match chosen {
        Some(d) => Routed::To(
            strait_config::qualify(&d.destination.host, namespace),
            d.destination.subset.clone(),
            d.destination
                .port
                .as_ref()
                .and_then(|p| u16::try_from(p.number).ok()),
        ),
        None => Routed::NoMatch,
    }
}
