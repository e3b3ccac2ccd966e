//! Graceful shutdown: what a process counts while it handles connections,
//! and how it waits, within a bound, for them to finish once told to stop.
use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::Notify,
};
use tracing::info;

/// A count of connections being handled, and a way to wait until none is.
#[derive(Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// Counts one connection while it lives.
pub struct InFlightGuard(Arc<InFlight>);

impl InFlight {
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Returns once no connection is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Returns at the first SIGTERM or SIGINT.
pub async fn signalled() -> io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
    Ok(())
}

/// Waits up to `timeout` for what is in flight to finish; says how it
/// went. Returns whether everything finished.
pub async fn drain(in_flight: &InFlight, timeout: Duration) -> bool {
    let open = in_flight.count();
    if open == 0 {
        return true;
    }
    if timeout.is_zero() {
        return false;
    }
    info!(open, ?timeout, "draining");
    match tokio::time::timeout(timeout, in_flight.idle()).await {
        Ok(()) => {
            info!("drained");
            true
        }
        Err(_) => {
            info!(
                open = in_flight.count(),
                "drain timeout: closing what is left"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_returns_once_the_last_guard_is_gone() {
        let in_flight = Arc::new(InFlight::default());
        let (a, b) = (in_flight.enter(), in_flight.enter());
        assert_eq!(in_flight.count(), 2);
        assert!(!drain(&in_flight, Duration::from_millis(10)).await);
        drop(a);
        let waiter = tokio::spawn({
            let in_flight = in_flight.clone();
            async move { drain(&in_flight, Duration::from_secs(60)).await }
        });
        drop(b);
        assert!(waiter.await.unwrap());
        assert_eq!(in_flight.count(), 0);
    }
}
