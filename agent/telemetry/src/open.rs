//! The connections open right now, as `straitctl connections` lists them:
//! both ends' addresses and identities, how long, how many bytes so far.
//! An entry lives exactly as long as its relay; the table is bounded by
//! what the proxy's connection caps let open.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::TcpLabels;

/// One open connection, as the admin endpoint reports it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpenConnection {
    /// `source`, `destination` or `waypoint`: which end this proxy is.
    pub reporter: String,
    pub src: String,
    pub dst: String,
    pub source_principal: String,
    pub destination_principal: String,
    /// `namespace/name` of the service, when known.
    pub service: String,
    /// Seconds since the Unix epoch when it opened.
    pub opened_at: u64,
    pub duration_ms: u64,
    /// What the client sent, and what came back, so far.
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

/// The bytes of one connection so far, shared by its relay and the table.
#[derive(Default)]
pub(crate) struct Bytes {
    pub(crate) received: AtomicU64,
    pub(crate) sent: AtomicU64,
}

struct Entry {
    labels: TcpLabels,
    src: String,
    dst: String,
    opened_at: u64,
    started: Instant,
    bytes: Arc<Bytes>,
}

#[derive(Default)]
pub struct OpenConnections {
    next: AtomicU64,
    table: Mutex<HashMap<u64, Entry>>,
}

/// Removes its connection from the table when dropped, however the relay
/// ends.
pub(crate) struct Registered<'a> {
    table: &'a OpenConnections,
    id: u64,
    pub(crate) bytes: Arc<Bytes>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.table.lock().remove(&self.id);
    }
}

impl OpenConnections {
    pub(crate) fn register(&self, labels: &TcpLabels, src: &str, dst: &str) -> Registered<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let bytes = Arc::new(Bytes::default());
        let opened_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.lock().insert(
            id,
            Entry {
                labels: labels.clone(),
                src: src.to_string(),
                dst: dst.to_string(),
                opened_at,
                started: Instant::now(),
                bytes: bytes.clone(),
            },
        );
        Registered {
            table: self,
            id,
            bytes,
        }
    }

    /// The connections open now, oldest first.
    pub fn list(&self) -> Vec<OpenConnection> {
        let mut open: Vec<(Instant, OpenConnection)> = self
            .lock()
            .values()
            .map(|e| {
                let l = &e.labels;
                let service = if l.destination_service_name == crate::UNKNOWN {
                    String::new()
                } else {
                    format!(
                        "{}/{}",
                        l.destination_service_namespace, l.destination_service_name
                    )
                };
                (
                    e.started,
                    OpenConnection {
                        reporter: crate::reporter_name(l.reporter).into(),
                        src: e.src.clone(),
                        dst: e.dst.clone(),
                        source_principal: l.source_principal.clone(),
                        destination_principal: l.destination_principal.clone(),
                        service,
                        opened_at: e.opened_at,
                        duration_ms: e.started.elapsed().as_millis() as u64,
                        bytes_received: e.bytes.received.load(Ordering::Relaxed),
                        bytes_sent: e.bytes.sent.load(Ordering::Relaxed),
                    },
                )
            })
            .collect();
        open.sort_by_key(|(started, _)| *started);
        open.into_iter().map(|(_, c)| c).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}
