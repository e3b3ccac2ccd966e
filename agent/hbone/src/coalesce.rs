//! Fewer TLS records and syscalls per HBONE connection. HTTP/2 flushes
//! its connection each time the connection's task has run out of work,
//! and under load that task is woken by one stream at a time: a flush (a
//! TLS record and a `writev`) per stream. Here a flush is put off once:
//! the task yields, the streams woken meanwhile add their frames, and the
//! next flush writes them all. What is held is bounded; past the bound,
//! writes go through at once. For a proxy of many small requests (the
//! waypoint); the node agents' streams are mostly byte streams whose
//! latency a put-off flush would only add to, so for them it is off and
//! writes go straight through.
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held before writes go straight through.
const HOLD: usize = 64 * 1024;

pub struct Coalesce<T> {
    inner: T,
    on: bool,
    held: Vec<u8>,
    /// Of `held`, what has been written to `inner` already.
    written: usize,
    /// Whether this flush has been put off once already.
    deferred: bool,
}

impl<T> Coalesce<T> {
    pub fn new(inner: T, on: bool) -> Self {
        Self {
            inner,
            on,
            held: Vec::new(),
            written: 0,
            deferred: false,
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Writes what is held to `inner`.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.held.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.held[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.held.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !self.on {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        if self.held.len() + buf.len() > HOLD {
            match self.poll_drain(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            if buf.len() > HOLD {
                return Pin::new(&mut self.inner).poll_write(cx, buf);
            }
        }
        self.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if !self.on {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if self.held.len() + total > HOLD {
            match self.poll_drain(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            if total > HOLD {
                return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
            }
        }
        for buf in bufs {
            self.held.extend_from_slice(buf);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        self.on || self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.held.is_empty() && !self.deferred {
            // Once: let the tasks woken meanwhile add theirs.
            self.deferred = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match self.poll_drain(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        self.deferred = false;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.poll_drain(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn held_writes_arrive_whole_and_in_order_after_one_put_off_flush() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut io = Coalesce::new(near, true);
        io.write_all(b"one,").await.unwrap();
        io.write_all(b"two,").await.unwrap();
        // Nothing has gone out before the flush.
        let mut probe = [0u8; 8];
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), far.read(&mut probe))
                .await
                .is_err()
        );
        // The first poll of the flush is put off (and wakes itself).
        let mut first = true;
        std::future::poll_fn(|cx| {
            let polled = Pin::new(&mut io).poll_flush(cx);
            if first {
                assert!(polled.is_pending());
                first = false;
            }
            polled
        })
        .await
        .unwrap();
        // More than the bound goes straight through.
        let big = vec![7u8; HOLD + 1];
        io.write_all(&big).await.unwrap();
        io.flush().await.unwrap();
        io.shutdown().await.unwrap();
        drop(io);
        let mut all = Vec::new();
        far.read_to_end(&mut all).await.unwrap();
        assert_eq!(&all[..8], b"one,two,");
        assert_eq!(all.len(), 8 + HOLD + 1);
    }

    #[tokio::test]
    async fn off_it_writes_straight_through() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut io = Coalesce::new(near, false);
        io.write_all(b"now").await.unwrap();
        let mut got = [0u8; 3];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"now");
    }
}
