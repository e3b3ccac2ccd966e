//! What is not HTTP is carried as TCP to an endpoint of the service the
//! client dialled (or to the workload it dialled), chosen as the node
//! agents choose, with Istio's connection metrics.
use std::sync::Arc;

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
    let src = instance
        .addresses
        .first()
        .copied()
        .unwrap_or(client.addr.ip());
    let targets = match route(
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
