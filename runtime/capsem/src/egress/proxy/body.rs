//! Body wrappers of the proxy: they stream frames through untouched (never buffering a whole
//! body), count the bytes each way, and record the request in the session log once the response
//! body is finished — or abandoned — so the record carries the real byte counts.
//!
//! A response body that reached its end cleanly also hands its upstream connection back to the
//! guest connection's pool (keep-alive); an abandoned one drops it (its state is unknown).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::upstream::{Pool, PoolKey, Sender};
use crate::egress::{EventSink, RequestRecord};

/// A request body on its way upstream; counts its data bytes into a shared counter.
#[derive(Debug)]
pub(crate) struct Counted<B> {
    inner: B,
    count: Arc<AtomicU64>,
}

impl<B> Counted<B> {
    pub(crate) fn new(inner: B, count: Arc<AtomicU64>) -> Self {
        Counted { inner, count }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What to do when a response body is finished: record the request, and maybe reuse the
/// upstream connection.
pub(crate) struct Finish {
    /// The record, complete but for `bytes_in` / `bytes_out`.
    pub(crate) record: RequestRecord,
    pub(crate) sink: Arc<dyn EventSink>,
    /// Request body bytes sent upstream (shared with the [`Counted`] request body).
    pub(crate) bytes_in: Arc<AtomicU64>,
    /// The upstream connection, returned to `pool` when the body ends cleanly.
    pub(crate) reuse: Option<(Pool, PoolKey, Sender)>,
}

impl std::fmt::Debug for Finish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finish").field("record", &self.record).finish_non_exhaustive()
    }
}

impl Finish {
    fn run(mut self, bytes_out: u64, clean: bool) {
        self.record.bytes_in = self.bytes_in.load(Ordering::Relaxed);
        self.record.bytes_out = bytes_out;
        if let Some((pool, key, sender)) = self.reuse.take()
            && clean
        {
            pool.put(key, sender);
        }
        self.sink.request(self.record);
    }
}

/// The body of every response the proxy sends to the guest.
#[derive(Debug)]
pub(crate) enum ProxyBody {
    /// A short body the proxy wrote itself (refusals); already recorded.
    Text(Option<Bytes>),
    /// An upstream response body, streamed.
    Upstream(Box<UpstreamBody>),
}

#[derive(Debug)]
pub(crate) struct UpstreamBody {
    inner: Incoming,
    bytes_out: u64,
    finish: Option<Finish>,
}

impl ProxyBody {
    /// No body (a `101 Switching Protocols` answer).
    pub(crate) fn empty() -> Self {
        ProxyBody::Text(None)
    }

    pub(crate) fn text(text: String) -> Self {
        ProxyBody::Text(Some(Bytes::from(text)))
    }

    pub(crate) fn upstream(inner: Incoming, finish: Finish) -> Self {
        ProxyBody::Upstream(Box::new(UpstreamBody { inner, bytes_out: 0, finish: Some(finish) }))
    }
}

impl UpstreamBody {
    fn finish(&mut self, clean: bool) {
        if let Some(finish) = self.finish.take() {
            finish.run(self.bytes_out, clean);
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // hyper does not poll a body that says it is at its end (e.g. `content-length: 0`).
        let clean = self.inner.is_end_stream();
        self.finish(clean);
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Text(text) => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
            ProxyBody::Upstream(body) => {
                let polled = Pin::new(&mut body.inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            body.bytes_out += data.len() as u64;
                        }
                        if body.inner.is_end_stream() {
                            body.finish(true);
                        }
                    }
                    Poll::Ready(None) => body.finish(true),
                    Poll::Ready(Some(Err(_))) => body.finish(false),
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Text(text) => text.is_none(),
            ProxyBody::Upstream(body) => body.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Text(text) => SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64)),
            ProxyBody::Upstream(body) => body.inner.size_hint(),
        }
    }
}
