//! A request body on its way to the first attempt: passed on as it arrives
//! (a gRPC stream or a long upload is never held back), and kept up to
//! [`REPLAY_LIMIT`] so another attempt can send it again. A body longer
//! than that, or one still arriving when an attempt fails, is sent once
//! and never retried.
use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::{
    body::{Body as _, Frame, SizeHint},
    header::HeaderMap,
};

use crate::{
    pool::{Body, BoxError},
    record::Counted,
};

/// Request bodies up to this size are kept so an attempt can be repeated.
pub const REPLAY_LIMIT: usize = 64 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Progress {
    Arriving,
    /// All of it is kept.
    Complete,
    /// Longer than the limit: what was kept is gone.
    TooLong,
    /// The client's side broke off.
    Broken,
}

struct Kept {
    data: BytesMut,
    trailers: Option<HeaderMap>,
    progress: Progress,
}

pub struct Replay {
    kept: Arc<Mutex<Kept>>,
    /// The client's body, until the first attempt takes it.
    first: Option<Counted>,
}

impl Replay {
    pub fn new(body: Counted) -> Self {
        let empty = body.is_end_stream();
        Self {
            kept: Arc::new(Mutex::new(Kept {
                data: BytesMut::new(),
                trailers: None,
                progress: if empty {
                    Progress::Complete
                } else {
                    Progress::Arriving
                },
            })),
            first: (!empty).then_some(body),
        }
    }

    fn progress(&self) -> Progress {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).progress
    }

    /// Whether another attempt can send the whole body again.
    pub fn replayable(&self) -> bool {
        self.progress() == Progress::Complete
    }

    /// Whether the client's body broke off (the client went away).
    pub fn client_broke(&self) -> bool {
        self.progress() == Progress::Broken
    }

    /// The body for the next attempt: the client's as it arrives the first
    /// time, a copy of what was kept after; none when it cannot be sent
    /// again.
    pub fn take(&mut self) -> Option<Body> {
        if let Some(first) = self.first.take() {
            let tee = Tee {
                inner: first,
                kept: self.kept.clone(),
            };
            return Some(tee.boxed());
        }
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.progress != Progress::Complete {
            return None;
        }
        let mut frames = VecDeque::new();
        if !kept.data.is_empty() {
            frames.push_back(Frame::data(kept.data.clone().freeze()));
        }
        if let Some(trailers) = &kept.trailers {
            frames.push_back(Frame::trailers(trailers.clone()));
        }
        Some(Frames(frames).boxed())
    }
}

/// The client's body, kept as it passes.
struct Tee {
    inner: Counted,
    kept: Arc<Mutex<Kept>>,
}

impl hyper::body::Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if kept.progress == Progress::Arriving {
                    if let Some(data) = frame.data_ref() {
                        if kept.data.len() + data.len() > REPLAY_LIMIT {
                            kept.progress = Progress::TooLong;
                            kept.data = BytesMut::new();
                        } else {
                            kept.data.extend_from_slice(data);
                        }
                    } else if let Some(trailers) = frame.trailers_ref() {
                        kept.trailers = Some(trailers.clone());
                    }
                }
                if self.inner.is_end_stream() && kept.progress == Progress::Arriving {
                    kept.progress = Progress::Complete;
                }
            }
            Poll::Ready(None) => {
                if kept.progress == Progress::Arriving {
                    kept.progress = Progress::Complete;
                }
            }
            Poll::Ready(Some(Err(_))) => kept.progress = Progress::Broken,
            Poll::Pending => {}
        }
        drop(kept);
        polled.map(|frame| frame.map(|r| r.map_err(|e| Box::new(e) as BoxError)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Frames kept, sent again.
struct Frames(VecDeque<Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}
