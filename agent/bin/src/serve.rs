//! What each of an enrolled pod's listeners is for: outbound (15001),
//! HBONE (15008) and plaintext (15006) to the proxy, DNS (15053) to the DNS
//! proxy. Each accepted connection runs on a task of its own and counts as
//! in flight until it ends, which is what a draining agent waits for.
use std::{collections::BTreeSet, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use strait_identity::Identity;
use strait_state::Snapshot;
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tracing::warn;

use crate::{
    dns::{self, Dns},
    pod::{Listeners, Pod},
    pods::Serve,
    proxy::{Proxy, inbound, outbound},
};

/// The handlers behind every pod's listeners.
pub struct Handlers {
    pub proxy: Arc<Proxy>,
    pub dns: Arc<Dns>,
}

impl Serve for Handlers {
    fn serve(&self, pod: Arc<Pod>, listeners: Listeners) -> Vec<JoinHandle<()>> {
        let proxy = &self.proxy;
        let mut tasks = Vec::new();
        for listener in listeners.outbound {
            tasks.push(self.accept_loop(listener, &pod, proxy, outbound::handle));
        }
        for listener in listeners.hbone {
            tasks.push(self.accept_loop(listener, &pod, proxy, inbound::handle_hbone));
        }
        for listener in listeners.plaintext {
            tasks.push(self.accept_loop(listener, &pod, proxy, inbound::handle_plaintext));
        }
        for listener in listeners.dns_tcp {
            tasks.push(self.accept_loop(listener, &pod, &self.dns, dns::handle_tcp));
        }
        for socket in listeners.dns_udp {
            tasks.push(dns::serve_udp(self.dns.clone(), pod.clone(), socket));
        }
        tasks
    }

    fn prune(&self, state: &Snapshot, local: &BTreeSet<Identity>) {
        self.proxy.prune(state, local);
    }
}

impl Handlers {
    fn accept_loop<H, F, Fut>(
        &self,
        listener: TcpListener,
        pod: &Arc<Pod>,
        handler: &Arc<H>,
        handle: F,
    ) -> JoinHandle<()>
    where
        H: Send + Sync + 'static,
        F: Fn(Arc<H>, Arc<Pod>, TcpStream, SocketAddr) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (pod, handler) = (pod.clone(), handler.clone());
        let in_flight = self.proxy.in_flight.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        let guard = in_flight.enter();
                        let work = handle(handler.clone(), pod.clone(), stream, peer);
                        tokio::spawn(async move {
                            work.await;
                            drop(guard);
                        });
                    }
                    Err(err) => {
                        warn!(%err, pod = %pod.workload.name, "accept failed");
                        // EMFILE and friends: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        })
    }
}
