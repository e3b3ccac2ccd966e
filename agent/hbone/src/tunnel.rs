//! An open tunnel, from either end: a byte stream over one HTTP/2 stream.
use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
};

use h2::{RecvStream, SendStream, client::ResponseFuture};
use hyper::{StatusCode, body::Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Counts a tunnel as active on its connection while it exists.
pub(crate) struct Active(Arc<AtomicUsize>);

impl Active {
    pub(crate) fn count(counter: Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Recv {
    /// The CONNECT's answer has not been read yet (client side).
    Answer(ResponseFuture),
    Body(RecvStream),
}

/// An open tunnel: a byte stream to the far end.
pub struct Tunnel {
    send: SendStream<Bytes>,
    recv: Recv,
    /// Received bytes not yet read.
    buf: Bytes,
    /// What the CONNECT asked for, for messages.
    authority: String,
    shut: bool,
    _active: Option<Active>,
}

impl Tunnel {
    /// The client end, before the CONNECT's answer is read.
    pub(crate) fn opened(
        send: SendStream<Bytes>,
        answer: ResponseFuture,
        authority: String,
        active: Active,
    ) -> Self {
        Self {
            send,
            recv: Recv::Answer(answer),
            buf: Bytes::new(),
            authority,
            shut: false,
            _active: Some(active),
        }
    }

    /// The server end, once it answered 200.
    pub(crate) fn accepted(send: SendStream<Bytes>, recv: RecvStream, authority: String) -> Self {
        Self {
            send,
            recv: Recv::Body(recv),
            buf: Bytes::new(),
            authority,
            shut: false,
            _active: None,
        }
    }
}

impl Tunnel {
    /// Resets the stream with CONNECT_ERROR, as RFC 9113 says a proxy does
    /// when the TCP connection behind a CONNECT was reset or broke: the far
    /// end resets its side in turn.
    pub fn reset(&mut self) {
        self.send.send_reset(h2::Reason::CONNECT_ERROR);
    }

    /// Waits for the CONNECT's answer (client end): an error when the far
    /// end refused it (its app is not there) or the connection failed, so
    /// the caller can try another endpoint before any byte is sent.
    pub async fn established(&mut self) -> io::Result<()> {
        if let Recv::Answer(response) = &mut self.recv {
            let response = response.await.map_err(h2_io)?;
            if response.status() != StatusCode::OK {
                return Err(refused(&self.authority, response.status()));
            }
            self.recv = Recv::Body(response.into_body());
        }
        Ok(())
    }
}

/// The far end answered a CONNECT with something other than 200.
#[derive(Debug, thiserror::Error)]
#[error("CONNECT {authority} refused by the peer: {status}")]
pub struct Refused {
    pub authority: String,
    pub status: StatusCode,
}

impl Refused {
    /// The refusal inside an I/O error from a tunnel, if that is what it is.
    pub fn of(err: &io::Error) -> Option<&Refused> {
        err.get_ref()?.downcast_ref()
    }
}

fn refused(authority: &str, status: StatusCode) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionRefused,
        Refused {
            authority: authority.to_owned(),
            status,
        },
    )
}

fn h2_io(err: h2::Error) -> io::Error {
    if err.is_io() {
        err.into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"))
    } else {
        io::Error::other(err)
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.buf.is_empty() {
                let n = self.buf.len().min(out.remaining());
                out.put_slice(&self.buf.split_to(n));
                return Poll::Ready(Ok(()));
            }
            let this = &mut *self;
            match &mut this.recv {
                Recv::Answer(response) => {
                    let response = ready!(Pin::new(response).poll(cx)).map_err(h2_io)?;
                    if response.status() != StatusCode::OK {
                        return Poll::Ready(Err(refused(&this.authority, response.status())));
                    }
                    this.recv = Recv::Body(response.into_body());
                }
                Recv::Body(body) => match ready!(body.poll_data(cx)) {
                    None => return Poll::Ready(Ok(())),
                    Some(Ok(bytes)) => {
                        // Let the peer send more as soon as these are taken.
                        let _ = body.flow_control().release_capacity(bytes.len());
                        this.buf = bytes;
                    }
                    Some(Err(err)) => {
                        // Only NO_ERROR is an orderly end. A reset for any
                        // other reason (CONNECT_ERROR: the far connection
                        // was reset; CANCEL: the far end gave up) is a
                        // reset here too, or a cut stream would pass for a
                        // complete one.
                        return Poll::Ready(match err.reason() {
                            Some(h2::Reason::NO_ERROR) => Ok(()),
                            Some(reason) => Err(io::Error::new(
                                io::ErrorKind::ConnectionReset,
                                format!("the peer reset the stream: {reason}"),
                            )),
                            None => Err(h2_io(err)),
                        });
                    }
                },
            }
        }
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    /// The slices go out as one DATA frame: an HTTP/2 or HTTP/1.1 codec
    /// running over the tunnel writes a frame's head and its payload apart,
    /// which would otherwise be a frame (and a TLS record) each.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(total);
        loop {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => {
                    let n = n.min(total);
                    let mut data = Vec::with_capacity(n);
                    for buf in bufs {
                        let room = n - data.len();
                        if room == 0 {
                            break;
                        }
                        data.extend_from_slice(&buf[..buf.len().min(room)]);
                    }
                    self.send
                        .send_data(Bytes::from(data), false)
                        .map_err(h2_io)?;
                    return Poll::Ready(Ok(n));
                }
                Some(Err(err)) => return Poll::Ready(Err(h2_io(err))),
                None => {
                    let reason = ready!(self.send.poll_reset(cx)).map_err(h2_io)?;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        format!("the peer reset the stream: {reason}"),
                    )));
                }
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.shut {
            self.shut = true;
            self.send.send_data(Bytes::new(), true).map_err(h2_io)?;
        }
        Poll::Ready(Ok(()))
    }
}
