//! Carrying the bytes of an established connection, then accounting for it:
//! Istio's metrics, counted as bytes pass, and one access-log line per
//! closed connection.
use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, copy_bidirectional_with_sizes};
use tracing::info;

use prometheus_client::metrics::counter::Counter;

use std::sync::{Arc, atomic::Ordering};

use crate::{ResponseFlags, Tcp, TcpLabels, open::Bytes};

/// Larger than tokio's 8 KiB default: fewer syscalls per byte at speed.
const BUFFER: usize = 64 * 1024;

/// Copies both ways until both sides close. `client` is where the
/// connection came from, `server` where it goes. Bytes are counted in
/// Istio's metrics as they pass (a day-long connection shows as it goes):
/// `received` what the client sends, `sent` what comes back, as ztunnel
/// counts them. Returns how the copy ended, for the caller to reset the
/// client on an error.
pub async fn relay<C, S>(
    metrics: &Tcp,
    labels: TcpLabels,
    client: &mut C,
    server: &mut S,
    src: &str,
    dst: &str,
) -> std::io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    metrics.opened.get_or_create(&labels).inc();
    let open = metrics.open.register(&labels, src, dst);
    // Looked up once: each read then costs two atomic adds.
    let (mut client, mut server) = (
        Counted {
            inner: client,
            metric: metrics.received_bytes.get_or_create(&labels).clone(),
            bytes: open.bytes.clone(),
            request: true,
        },
        Counted {
            inner: server,
            metric: metrics.sent_bytes.get_or_create(&labels).clone(),
            bytes: open.bytes.clone(),
            request: false,
        },
    );
    let result = copy_bidirectional_with_sizes(&mut client, &mut server, BUFFER, BUFFER).await;
    drop(open);
    // Bytes read from one side are what was written to the other, also when
    // the copy ended in an error.
    let (sent, received) = (
        client.bytes.received.load(Ordering::Relaxed),
        client.bytes.sent.load(Ordering::Relaxed),
    );
    let outcome = match &result {
        Ok(_) => "ok".to_string(),
        Err(err) => format!("error: {err}"),
    };
    let mut closed = labels;
    if matches!(&result, Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused) {
        // The far end refused the CONNECT: nothing was carried.
        closed.response_flags = ResponseFlags::Connect;
    }
    metrics.closed.get_or_create(&closed).inc();
    let labels = closed;
    info!(
        target: "access",
        reporter = ?labels.reporter,
        src,
        dst,
        src_identity = %labels.source_principal,
        dst_identity = %labels.destination_principal,
        dst_service = %labels.destination_service,
        security = %labels.connection_security_policy,
        bytes_sent = sent,
        bytes_received = received,
        duration_ms = started.elapsed().as_millis() as u64,
        result = %outcome,
        "connection closed"
    );
    result.map(|_| ())
}

/// Counts the bytes read through it, in the connection's totals and a
/// metric.
struct Counted<T> {
    inner: T,
    metric: Counter,
    bytes: Arc<Bytes>,
    /// Reads from the client (the request direction), else from the server.
    request: bool,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        if read > 0 {
            let total = if self.request {
                &self.bytes.received
            } else {
                &self.bytes.sent
            };
            total.fetch_add(read, Ordering::Relaxed);
            self.metric.inc_by(read);
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;
    use crate::Reporter;

    /// What the client sends is `received`, what comes back `sent` (as
    /// ztunnel counts them), each counted while the connection is open.
    #[tokio::test]
    async fn bytes_are_counted_as_they_pass_in_ztunnels_directions() {
        let tcp = Tcp::default();
        let labels = TcpLabels::new(Reporter::Source, true);
        let (mut app, mut client_end) = duplex(1 << 16);
        let (mut server_end, mut upstream) = duplex(1 << 16);
        let relaying = {
            let (tcp, labels) = (tcp.clone(), labels.clone());
            tokio::spawn(async move {
                relay(&tcp, labels, &mut client_end, &mut server_end, "a", "b").await
            })
        };
        app.write_all(&[1; 1000]).await.unwrap();
        let mut request = [0; 1000];
        upstream.read_exact(&mut request).await.unwrap();
        upstream.write_all(&[2; 250]).await.unwrap();
        let mut answer = [0; 250];
        app.read_exact(&mut answer).await.unwrap();
        // Still open: already counted.
        assert_eq!(tcp.received_bytes.get_or_create(&labels).get(), 1000);
        assert_eq!(tcp.sent_bytes.get_or_create(&labels).get(), 250);
        assert_eq!(tcp.opened.get_or_create(&labels).get(), 1);
        assert_eq!(tcp.closed.get_or_create(&labels).get(), 0);
        // Listed as open, with its bytes so far.
        let open = tcp.open.list();
        assert_eq!(open.len(), 1);
        assert_eq!((open[0].bytes_received, open[0].bytes_sent), (1000, 250));
        assert_eq!(
            (open[0].src.as_str(), open[0].reporter.as_str()),
            ("a", "source")
        );
        drop((app, upstream));
        relaying.await.unwrap().unwrap();
        assert_eq!(tcp.closed.get_or_create(&labels).get(), 1);
        assert!(tcp.open.list().is_empty(), "gone once closed");
        assert_eq!(tcp.received_bytes.get_or_create(&labels).get(), 1000);
    }

    /// A refused connection opens with `-` and closes with its flag.
    #[test]
    fn a_refused_connection_closes_with_its_flag() {
        let tcp = Tcp::default();
        let labels = TcpLabels::new(Reporter::Destination, true);
        tcp.refused(labels.clone(), ResponseFlags::Deny);
        assert_eq!(tcp.opened.get_or_create(&labels).get(), 1);
        let mut denied = labels;
        denied.response_flags = ResponseFlags::Deny;
        assert_eq!(tcp.closed.get_or_create(&denied).get(), 1);
    }
}
