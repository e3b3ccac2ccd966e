//! Each client's share of the waypoint: the requests it may have waiting
//! for their answer at once. A client is an identity at an address (a pod;
//! through an east-west gateway, each identity behind it). Past its share
//! a client's requests wait their turn (in order, parked: no CPU, no
//! connection to an endpoint), so a pod that opens thousands of streams
//! gets through no faster than its share, and every other client's request
//! still finds the waypoint's workers and its connections to endpoints
//! free. A request leaves the share once its answer's head is back: a long
//! stream of body (a gRPC stream, a download) holds none of it.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use strait_identity::Identity;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

type Client = (IpAddr, Identity);

/// Requests one client pod may have in flight at once: well past what one
/// HTTP/2 connection carries (100 streams), well short of what a flood of
/// connections would.
pub const PER_CLIENT: u32 = 256;

pub struct Shares {
    per_client: usize,
    clients: Mutex<HashMap<Client, Arc<Semaphore>>>,
}

impl Default for Shares {
    fn default() -> Self {
        Self::new(PER_CLIENT)
    }
}

/// A request's place in its client's share, given back on drop.
pub struct Share<'a> {
    shares: &'a Shares,
    client: Client,
    permit: Option<OwnedSemaphorePermit>,
}

impl Shares {
    pub fn new(per_client: u32) -> Self {
        Self {
            per_client: (per_client as usize).max(1),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until `client` has room for one more request.
    pub async fn enter(&self, client: Client) -> Share<'_> {
        let semaphore = self
            .lock()
            .entry(client.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_client)))
            .clone();
        // Never closed, so acquiring only ever waits.
        let permit = semaphore.acquire_owned().await.ok();
        Share {
            shares: self,
            client,
            permit,
        }
    }

    /// Clients with a request in flight or waiting.
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Client, Arc<Semaphore>>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        drop(self.permit.take());
        // Forgotten when nobody holds or waits for it (the map's is the only
        // reference left), so the map holds only clients with requests.
        let mut clients = self.shares.lock();
        if clients
            .get(&self.client)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            clients.remove(&self.client);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_client_past_its_share_waits_and_others_do_not() {
        let shares = Shares::new(2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let web = Identity::new("cluster.local", "shop", "web");
        let a = (ip, web.clone());
        // The same address with another identity (behind a gateway).
        let b = (ip, Identity::new("cluster.local", "shop", "api"));
        let first = shares.enter(a.clone()).await;
        let second = shares.enter(a.clone()).await;
        // A third request of `a` waits (polled once: not ready); `b` goes.
        let third = shares.enter(a.clone());
        tokio::pin!(third);
        assert!(
            tokio::time::timeout(Duration::ZERO, &mut third)
                .await
                .is_err()
        );
        let other = shares.enter(b).await;
        drop(first);
        let third = third.await;
        assert_eq!(shares.clients(), 2);
        drop((third, second));
        assert_eq!(shares.clients(), 1, "a's entry is forgotten");
        drop(other);
        assert_eq!(shares.clients(), 0);
    }
}
