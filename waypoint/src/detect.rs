//! Telling HTTP from anything else by the client's first bytes: the
//! HTTP/2 connection preface (prior knowledge, gRPC included), or an
//! HTTP/1.1 request line; anything else, or a client that says nothing
//! first, is carried as TCP. The bytes read to decide are replayed.
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT",
];
/// Enough to decide: the HTTP/2 preface is the longest thing looked for.
const ENOUGH: usize = H2_PREFACE.len();
/// How long a client may stay silent before it is taken for one whose
/// protocol has the server speak first.
const FIRST_BYTES: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Tcp,
}

/// What `bytes` (the start of a stream) are, or `None` while more could
/// still decide it.
fn classify(bytes: &[u8]) -> Option<Protocol> {
    let n = bytes.len().min(H2_PREFACE.len());
    if bytes[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    let token: Vec<u8> = bytes
        .iter()
        .take_while(|b| b.is_ascii_uppercase())
        .copied()
        .collect();
    let token = std::str::from_utf8(&token).unwrap_or_default();
    match bytes.get(token.len()) {
        Some(b' ') if METHODS.contains(&token) => Some(Protocol::Http1),
        Some(_) => Some(Protocol::Tcp),
        // Still a method's prefix: wait for more.
        None if METHODS.iter().any(|m| m.starts_with(token)) => None,
        None => Some(Protocol::Tcp),
    }
}

/// Reads the stream's first bytes and says what it speaks; the stream
/// comes back with them put back in front.
pub async fn sniff<S: AsyncRead + Unpin>(mut stream: S) -> io::Result<(Protocol, Prefixed<S>)> {
    let mut read = BytesMut::with_capacity(ENOUGH);
    let protocol = loop {
        if read.len() >= ENOUGH {
            break classify(&read).unwrap_or(Protocol::Tcp);
        }
        let mut chunk = [0u8; ENOUGH];
        let want = ENOUGH - read.len();
        match tokio::time::timeout(FIRST_BYTES, stream.read(&mut chunk[..want])).await {
            Err(_) => break Protocol::Tcp,
            Ok(Ok(0)) => break classify(&read).unwrap_or(Protocol::Tcp),
            Ok(Ok(n)) => read.extend_from_slice(&chunk[..n]),
            Ok(Err(err)) => return Err(err),
        }
        if let Some(protocol) = classify(&read) {
            break protocol;
        }
    };
    Ok((
        protocol,
        Prefixed {
            prefix: read,
            inner: stream,
        },
    ))
}

/// A stream with bytes already read from it put back in front.
pub struct Prefixed<S> {
    prefix: BytesMut,
    inner: S,
}

impl<S: AsyncRead + Unpin> Prefixed<S> {
    /// What has been read ahead and is still to be replayed.
    pub fn ahead(&self) -> &[u8] {
        &self.prefix
    }

    /// Reads more ahead (at most `limit` in all); how much came (0 at the
    /// stream's end or the limit).
    pub async fn read_ahead(&mut self, limit: usize) -> io::Result<usize> {
        let room = limit.saturating_sub(self.prefix.len()).min(4096);
        if room == 0 {
            return Ok(0);
        }
        let mut chunk = [0u8; 4096];
        let n = self.inner.read(&mut chunk[..room]).await?;
        self.prefix.extend_from_slice(&chunk[..n]);
        Ok(n)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[test]
    fn first_bytes_decide_the_protocol() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"POST /x HTTP/1.1"), Some(Protocol::Http1));
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        // Not enough yet.
        assert_eq!(classify(b"PRI * HT"), None);
        assert_eq!(classify(b"GE"), None);
        // A TLS ClientHello, a Redis command, a lowercase method.
        assert_eq!(classify(&[0x16, 0x03, 0x01]), Some(Protocol::Tcp));
        assert_eq!(classify(b"*1\r\n$4\r\nPING"), Some(Protocol::Tcp));
        assert_eq!(classify(b"get / HTTP/1.1"), Some(Protocol::Tcp));
        assert_eq!(classify(b"GETX / HTTP/1.1"), Some(Protocol::Tcp));
    }

    #[tokio::test]
    async fn what_was_read_to_decide_is_replayed() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"GET /a HTTP/1.1\r\n\r\n").await.unwrap();
        let (protocol, mut stream) = sniff(server).await.unwrap();
        assert_eq!(protocol, Protocol::Http1);
        drop(client);
        let mut all = String::new();
        stream.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "GET /a HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn a_silent_client_is_carried_as_tcp() {
        let (_client, server) = tokio::io::duplex(1024);
        let (protocol, _) = sniff(server).await.unwrap();
        assert_eq!(protocol, Protocol::Tcp);
    }
}
