//! Fixed-window counts in Redis, as Envoy's reference service keeps them:
//! one key per descriptor and window (`<descriptor>_<window start>`),
//! incremented by the request's hits and expiring with its window. The
//! connection is made, and made again after a failure, in the background;
//! meanwhile every count fails (and the waypoint's `failure_mode_deny`
//! decides).
use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::RwLock;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Redis is not connected")]
    NotConnected,
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

#[derive(Clone)]
pub struct Counter {
    connection: Arc<RwLock<Option<ConnectionManager>>>,
}

impl Counter {
    /// Connects to `url` in the background, each step within `timeout`;
    /// `connected` is set once it is.
    pub fn connect(
        url: &str,
        timeout: Duration,
        connected: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<Self, Error> {
        let client = redis::Client::open(url)?;
        let connection = Arc::new(RwLock::new(None));
        let slot = connection.clone();
        tokio::spawn(async move {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(timeout)
                .set_response_timeout(timeout);
            loop {
                match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                    Ok(manager) => {
                        info!("connected to Redis");
                        *slot.write().await = Some(manager);
                        connected.store(true, std::sync::atomic::Ordering::Release);
                        return;
                    }
                    Err(err) => {
                        warn!(%err, "connecting to Redis; trying again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(Self { connection })
    }

    /// Adds `hits` to `key`'s count in the current `window`; the count.
    pub async fn hit(&self, key: &str, hits: u32, window: Duration) -> Result<u64, Error> {
        let mut connection = self
            .connection
            .read()
            .await
            .clone()
            .ok_or(Error::NotConnected)?;
        let seconds = window.as_secs().max(1);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let key = format!("{key}_{}", now / seconds * seconds);
        let (count,): (u64,) = redis::pipe()
            .atomic()
            .incr(&key, hits)
            .expire(&key, seconds as i64)
            .ignore()
            .query_async(&mut connection)
            .await?;
        Ok(count)
    }

    /// Time until the current `window` ends.
    pub fn until_reset(window: Duration) -> Duration {
        let seconds = window.as_secs().max(1);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let end = (now.as_secs() / seconds + 1) * seconds;
        Duration::from_secs(end).saturating_sub(now)
    }
}
