//! Where an outbound connection goes. A connection to a service address (a
//! Service's ClusterIP, a ServiceEntry's declared or allocated address)
//! goes to one of the service's endpoints, picked uniformly at random; any
//! other goes where the client asked.
use std::net::SocketAddr;

use strait_config::service::{Backends, NoBackends};

use crate::state::Snapshot;

/// Endpoints tried for one connection before giving up.
const ATTEMPTS: usize = 3;

#[derive(Debug)]
pub enum Route {
    /// Straight to this address: a workload, or somewhere outside the mesh.
    Direct(SocketAddr),
    /// A service's endpoints, in the order to try them.
    Endpoints {
        service: String,
        targets: Vec<SocketAddr>,
    },
    /// A service resolved by DNS when used: look these names up (through
    /// the node's resolver), then connect straight to what they give.
    Dns {
        service: String,
        hosts: Vec<String>,
        port: u16,
    },
}

pub fn route(state: &Snapshot, dst: SocketAddr) -> Result<Route, NoBackends> {
    let Some(at) = state.config.service_at(dst.ip()) else {
        return Ok(Route::Direct(dst));
    };
    let service = format!("{}/{}", at.service.namespace, at.service.name);
    match state.config.backends(at, dst.port())? {
        Backends::Original => Ok(Route::Direct(dst)),
        Backends::Dns { hosts, port } => Ok(Route::Dns {
            service,
            hosts,
            port,
        }),
        Backends::Endpoints(endpoints) => {
            let mut targets: Vec<SocketAddr> = endpoints
                .iter()
                // internalTrafficPolicy: Local keeps to this node.
                .filter(|e| {
                    !at.service.node_local || e.workload.node.as_deref() == Some(&*state.node)
                })
                .map(|e| e.addr)
                .collect();
            fastrand::shuffle(&mut targets);
            targets.truncate(ATTEMPTS);
            if targets.is_empty() {
                return Err(NoBackends::NoEndpoints {
                    service,
                    port: dst.port(),
                });
            }
            Ok(Route::Endpoints { service, targets })
        }
    }
}
