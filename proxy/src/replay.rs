//! A request body that can be sent again, so a failed attempt can be retried on another
//! endpoint.
//!
//! # Why
//!
//! hyper consumes a request body as it sends it, so once an attempt has failed the bytes it
//! read are gone. The common failures worth retrying happen early: the connection to the
//! endpoint was refused or reset before a byte was read, or the upstream answered 503 /
//! `REFUSED_STREAM` after a few chunks. [`ReplayBody`] keeps what the first attempt read so the
//! next attempt can send it again, and then carries on reading the client's body from the point
//! where the failed attempt stopped: the client never has to send anything twice and the retry
//! does not have to wait for the whole body before starting.
//!
//! Memory is bounded: at most `limit` bytes ([`DEFAULT_REPLAY_LIMIT`], 64 KiB like Linkerd) are
//! kept per request. Once more than that has been read, the buffer is dropped and the body stops
//! being replayable; the attempt in flight keeps streaming normally (a large upload must not
//! fail because retries are enabled), it just cannot be retried.
//!
//! # Design
//!
//! All attempts of one request share one `State`: the original body, the chunks read from it
//! so far (as `Bytes`, so keeping them is a refcount, not a copy) and its trailers. An attempt
//! *takes* the state out of the shared `Mutex` on its first poll and holds it until it has
//! yielded its end of stream or is dropped, then puts it back. So:
//!
//! - the lock is taken once when an attempt starts and once when it ends, never per frame and
//!   never across an await (`poll_frame` is synchronous);
//! - an attempt first yields the buffered chunks from the beginning (its own cursor), then reads
//!   the original body, appending what it reads to the buffer for the attempts after it;
//! - an attempt dropped midway (the upstream failed, or the connect failed before the body was
//!   polled at all) hands the original body back exactly where it stopped.
//!
//! Attempts are meant to run one after the other (the retry loop is sequential). If a second
//! attempt is polled while another one still holds the state, it does not wait (waiting for a
//! body somebody may never drop would hang the request): it fails with
//! [`ReplayError::InUse`]. [`ReplayBody::is_in_use`] lets the retry loop check for that
//! before it starts the next attempt.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::body::BoxError;

/// How much of a request body the proxy keeps for retries: Linkerd's limit, enough for almost
/// every gRPC/JSON request while bounding memory per in-flight request.
pub const DEFAULT_REPLAY_LIMIT: usize = 64 * 1024;

/// Why an attempt's body could not produce the request body. Boxed into the body's error, so a
/// retry loop can `downcast_ref::<ReplayError>()` to tell these from upstream I/O errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// Another attempt's body is still reading the original body (it was neither finished nor
    /// dropped). A misuse of the sequential retry contract, or hyper still sending the previous
    /// attempt after the upstream answered early.
    #[error("request body still in use by an earlier attempt")]
    InUse,
    /// More than the replay limit was read, and the buffer was dropped: the beginning of the
    /// body is gone.
    #[error("request body exceeded the replay buffer limit and cannot be sent again")]
    LimitExceeded,
    /// The original body failed during an earlier read; its error went to that attempt.
    #[error("request body failed in an earlier attempt")]
    Failed,
}

/// A request body that every retry attempt can send from the beginning. See the module docs.
///
/// [`ReplayBody::new`] gives the first attempt's body; [`ReplayBody::replay`] gives the body for
/// the next attempt. Bodies must be polled by one attempt at a time.
pub struct ReplayBody<B> {
    inner: Inner<B>,
}

enum Inner<B> {
    /// The original was already finished when wrapped: nothing to keep, share or lock.
    Empty,
    Shared(Attempt<B>),
}

/// One attempt's view of the shared body.
struct Attempt<B> {
    shared: Arc<Shared<B>>,
    /// `Some` from this attempt's first poll until it ends or is dropped.
    held: Option<State<B>>,
    /// Index of the next buffered chunk this attempt yields. For the attempt reading the
    /// original body it always equals `chunks.len()`: what it reads, it has already yielded.
    pos: usize,
    /// Bytes of the buffer this attempt has yielded, so `size_hint` can count what is left.
    replayed: usize,
    /// This attempt has yielded its end of stream (or trailers, which end it).
    done: bool,
}

struct Shared<B> {
    /// The state while no attempt holds it.
    slot: Mutex<Option<State<B>>>,
    /// Mirrors `!(state.lost || state.failed)` so any handle can answer `is_replayable` while
    /// another attempt holds the state, without taking the lock.
    replayable: AtomicBool,
    limit: usize,
}

struct State<B> {
    /// `None` once the original has ended (end of stream, trailers or error).
    body: Option<B>,
    /// Everything read so far, in order, while `buffering`.
    chunks: Vec<Bytes>,
    /// Sum of `chunks`' lengths.
    buffered: usize,
    trailers: Option<HeaderMap>,
    /// Still keeping what is read; off after overflow, or from the start when the body says it
    /// is bigger than the limit (buffering it would only be thrown away).
    buffering: bool,
    /// Some bytes were read and not kept: a new attempt cannot start from the beginning.
    lost: bool,
    /// The original body returned an error.
    failed: bool,
}

impl<B: Body> ReplayBody<B> {
    /// Wraps `body`, keeping up to `limit` bytes for later attempts. The result is the first
    /// attempt's body. Wrap before the first attempt: bytes read before wrapping are not kept.
    pub fn new(body: B, limit: usize) -> Self {
        if body.is_end_stream() {
            // GETs and friends: nothing will ever be read, so every attempt can share "empty".
            return Self {
                inner: Inner::Empty,
            };
        }
        let known_too_big = body.size_hint().lower() > u64::try_from(limit).unwrap_or(u64::MAX);
        let state = State {
            body: Some(body),
            chunks: Vec::new(),
            buffered: 0,
            trailers: None,
            buffering: !known_too_big,
            // Not `lost` yet even when too big: until a byte is read, an attempt that failed to
            // connect can still be retried.
            lost: false,
            failed: false,
        };
        let shared = Arc::new(Shared {
            slot: Mutex::new(Some(state)),
            replayable: AtomicBool::new(true),
            limit,
        });
        Self {
            inner: Inner::Shared(Attempt::new(shared)),
        }
    }
}

impl<B> ReplayBody<B> {
    /// A body for another attempt, which will yield the whole request body from the beginning,
    /// or `None` if that is already impossible (the limit was exceeded or the body failed).
    ///
    /// Take it *before* moving this body into a request (the request consumes it), and check
    /// [`is_replayable`](Self::is_replayable) again once that attempt has failed: the attempt may
    /// have overflowed the buffer while it ran.
    pub fn replay(&self) -> Option<Self> {
        match &self.inner {
            Inner::Empty => Some(Self {
                inner: Inner::Empty,
            }),
            Inner::Shared(attempt) => attempt.shared.is_replayable().then(|| Self {
                inner: Inner::Shared(Attempt::new(Arc::clone(&attempt.shared))),
            }),
        }
    }

    /// False once more than the limit was read (the buffer is gone) or the original body failed.
    /// Shared by all attempts of the request. Only bytes actually read count: a body known to
    /// be too big stays replayable until its first byte is read, so a connect failure can still
    /// be retried.
    pub fn is_replayable(&self) -> bool {
        match &self.inner {
            Inner::Empty => true,
            Inner::Shared(attempt) => attempt.shared.is_replayable(),
        }
    }

    /// True while *another* attempt's body holds the original body: it has started reading and
    /// has neither finished nor been dropped. Polling this body now would fail with
    /// [`ReplayError::InUse`], so a retry loop should not start this attempt yet (HTTP/2 lets
    /// an upstream answer before the request body is fully sent, and hyper may still hold it).
    pub fn is_in_use(&self) -> bool {
        match &self.inner {
            Inner::Empty => false,
            Inner::Shared(attempt) => attempt.held.is_none() && attempt.shared.lock().is_none(),
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().inner {
            Inner::Empty => Poll::Ready(None),
            Inner::Shared(attempt) => attempt.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Empty => true,
            Inner::Shared(attempt) => attempt.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Empty => SizeHint::with_exact(0),
            Inner::Shared(attempt) => attempt.size_hint(),
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ReplayBody");
        match &self.inner {
            Inner::Empty => d.field("empty", &true),
            Inner::Shared(attempt) => d
                .field("limit", &attempt.shared.limit)
                .field("replayable", &attempt.shared.is_replayable())
                .field("holds_body", &attempt.held.is_some())
                .field("done", &attempt.done),
        };
        d.finish_non_exhaustive()
    }
}

impl<B> Shared<B> {
    fn lock(&self) -> MutexGuard<'_, Option<State<B>>> {
        // Nothing panics while the lock is held (it only moves the state in or out), so a
        // poisoned lock still guards a consistent state.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_replayable(&self) -> bool {
        // Acquire pairs with the Release in `mark_unreplayable`; the state itself is handed over
        // through the mutex, this flag is only the cheap answer for other handles.
        self.replayable.load(Ordering::Acquire)
    }

    fn mark_unreplayable(&self) {
        self.replayable.store(false, Ordering::Release);
    }
}

impl<B: Body> State<B> {
    /// The original will yield no more frames (it ended, or says it has).
    fn original_ended(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    /// An attempt at buffer position `pos` would get `None` from its next poll.
    fn at_end(&self, pos: usize) -> bool {
        !self.failed && pos >= self.chunks.len() && self.trailers.is_none() && self.original_ended()
    }

    /// Data still to come for an attempt that has replayed `replayed` buffered bytes.
    fn size_hint(&self, replayed: usize) -> SizeHint {
        if self.failed {
            return SizeHint::default();
        }
        let rest_of_buffer =
            u64::try_from(self.buffered.saturating_sub(replayed)).unwrap_or(u64::MAX);
        match &self.body {
            Some(body) if !body.is_end_stream() => {
                // What is left of the buffer, then what is left of the original: exact when
                // the original's hint is exact (a Content-Length), so hyper can keep using it.
                let original = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(original.lower().saturating_add(rest_of_buffer));
                if let Some(upper) = original.upper() {
                    hint.set_upper(upper.saturating_add(rest_of_buffer));
                }
                hint
            }
            _ => SizeHint::with_exact(rest_of_buffer),
        }
    }
}

impl<B> Attempt<B> {
    fn new(shared: Arc<Shared<B>>) -> Self {
        Self {
            shared,
            held: None,
            pos: 0,
            replayed: 0,
            done: false,
        }
    }
}

impl<B> Attempt<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        // Split the borrows: `state` borrows `held` while the cursor fields are updated.
        let Self {
            shared,
            held,
            pos,
            replayed,
            done,
        } = self;
        let state = match acquire(held, shared) {
            Ok(state) => state,
            Err(e) => return Poll::Ready(Some(Err(e.into()))),
        };
        if state.failed {
            return Poll::Ready(Some(Err(ReplayError::Failed.into())));
        }

        // First what earlier attempts read, so this attempt starts from the first byte.
        if let Some(chunk) = state.chunks.get(*pos) {
            *pos += 1;
            *replayed += chunk.len();
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }

        let body = match state.body.as_mut() {
            Some(body) if !body.is_end_stream() => body,
            _ => {
                // The original is finished and this attempt has caught up: replay its trailers
                // (gRPC needs them) and end.
                let trailers = state.trailers.clone();
                state.body = None;
                finish(done, held, shared);
                return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
            }
        };

        let frame = match ready!(Pin::new(body).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            None => {
                state.body = None;
                finish(done, held, shared);
                return Poll::Ready(None);
            }
            Some(Err(e)) => {
                // The error goes to this attempt only; later attempts could not send a complete
                // body, so they must not be made. Drop the buffer now rather than with the
                // request.
                state.body = None;
                state.failed = true;
                state.chunks = Vec::new();
                state.buffered = 0;
                state.trailers = None;
                *pos = 0;
                *replayed = 0;
                shared.mark_unreplayable();
                return Poll::Ready(Some(Err(e.into())));
            }
        };

        let frame = match frame.into_data() {
            Ok(data) => {
                record(state, shared, pos, replayed, &data);
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Err(frame) => frame,
        };
        if let Some(trailers) = frame.trailers_ref() {
            if !state.lost {
                // One HeaderMap clone per request, so later attempts end the same way.
                state.trailers = Some(trailers.clone());
            }
            // Trailers are the last frame of a body: the original is done, and so is this
            // attempt. Releasing now (not on drop) lets a retry start even if hyper keeps the
            // finished body around.
            state.body = None;
            finish(done, held, shared);
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        if self.done {
            return true;
        }
        match &self.held {
            Some(state) => state.at_end(self.pos),
            // Not started: look at the shared state (a short lock, no await). If another
            // attempt holds it, or it cannot be replayed, polling will yield an error, not None.
            None => self
                .shared
                .lock()
                .as_ref()
                .is_some_and(|state| !state.lost && state.at_end(self.pos)),
        }
    }

    fn size_hint(&self) -> SizeHint {
        if self.done {
            return SizeHint::with_exact(0);
        }
        match &self.held {
            Some(state) => state.size_hint(self.replayed),
            None => match self.shared.lock().as_ref() {
                Some(state) if !state.lost => state.size_hint(self.replayed),
                _ => SizeHint::default(),
            },
        }
    }
}

impl<B> Drop for Attempt<B> {
    fn drop(&mut self) {
        // The attempt failed or was abandoned: hand the original back, positioned where this
        // attempt stopped reading, for the next attempt.
        release(&mut self.held, &self.shared);
    }
}

/// The state for this attempt: already held, or taken from the shared slot on first poll.
fn acquire<'a, B>(
    held: &'a mut Option<State<B>>,
    shared: &Shared<B>,
) -> Result<&'a mut State<B>, ReplayError> {
    if held.is_none() {
        let mut slot = shared.lock();
        let state = slot.take().ok_or(ReplayError::InUse)?;
        // A new attempt starts from byte zero, which is only possible if nothing read was lost.
        let refusal = if state.failed {
            Some(ReplayError::Failed)
        } else if state.lost {
            Some(ReplayError::LimitExceeded)
        } else {
            None
        };
        if let Some(e) = refusal {
            *slot = Some(state);
            return Err(e);
        }
        *held = Some(state);
    }
    held.as_mut().ok_or(ReplayError::InUse)
}

fn release<B>(held: &mut Option<State<B>>, shared: &Shared<B>) {
    if let Some(state) = held.take() {
        *shared.lock() = Some(state);
    }
}

/// This attempt yielded its last frame: give the state back at once for the next attempt.
fn finish<B>(done: &mut bool, held: &mut Option<State<B>>, shared: &Shared<B>) {
    *done = true;
    release(held, shared);
}

/// Keeps a chunk the reading attempt just got from the original, within the limit.
fn record<B>(
    state: &mut State<B>,
    shared: &Shared<B>,
    pos: &mut usize,
    replayed: &mut usize,
    data: &Bytes,
) {
    if data.is_empty() {
        // Nothing to replay, nothing lost.
        return;
    }
    if state.buffering {
        let buffered = state.buffered.saturating_add(data.len());
        if buffered <= shared.limit {
            // A refcount bump, not a copy.
            state.chunks.push(data.clone());
            state.buffered = buffered;
            // The reader has yielded this chunk itself; keep its cursor at the end.
            *pos += 1;
            *replayed += data.len();
            return;
        }
        // Over the limit: free the buffer now (not when the request ends) and stop keeping.
        // The reader's cursor moves with the emptied buffer.
        state.chunks = Vec::new();
        state.buffered = 0;
        state.buffering = false;
        *pos = 0;
        *replayed = 0;
    }
    if !state.lost {
        state.lost = true;
        state.trailers = None;
        shared.mark_unreplayable();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use http::HeaderValue;
    use http_body_util::{BodyExt, Empty, Full, StreamBody};
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    type Item = Result<Frame<Bytes>, BoxError>;
    type TestBody = StreamBody<ReceiverStream<Item>>;

    /// What a body yielded, comparable in assertions.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Ev {
        Data(Bytes),
        Trailers(HeaderMap),
        Err(String),
    }

    fn channel() -> (mpsc::Sender<Item>, TestBody) {
        let (tx, rx) = mpsc::channel(64);
        (tx, StreamBody::new(ReceiverStream::new(rx)))
    }

    /// A streaming body (unknown size) that yields `items` and then ends.
    fn body_of(items: Vec<Item>) -> TestBody {
        let (tx, body) = channel();
        for item in items {
            tx.try_send(item).unwrap();
        }
        body
    }

    fn data(s: &'static str) -> Item {
        Ok(Frame::data(Bytes::from_static(s.as_bytes())))
    }

    fn trailers() -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t
    }

    async fn next<B>(body: &mut ReplayBody<B>) -> Option<Ev>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        match body.frame().await? {
            Err(e) => Some(Ev::Err(e.to_string())),
            Ok(frame) => Some(match frame.into_data() {
                Ok(d) => Ev::Data(d),
                Err(frame) => Ev::Trailers(frame.into_trailers().unwrap()),
            }),
        }
    }

    /// Every event until the end of stream, stopping after an error.
    async fn drain<B>(mut body: ReplayBody<B>) -> Vec<Ev>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let mut evs = Vec::new();
        while let Some(ev) = next(&mut body).await {
            let stop = matches!(ev, Ev::Err(_));
            evs.push(ev);
            if stop {
                break;
            }
        }
        evs
    }

    fn d(s: &'static str) -> Ev {
        Ev::Data(Bytes::from_static(s.as_bytes()))
    }

    #[tokio::test]
    async fn full_read_then_replay_yields_identical_frames_and_trailers() {
        let body = body_of(vec![
            data("hello "),
            data("wor"),
            data("ld"),
            Ok(Frame::trailers(trailers())),
        ]);
        let first = ReplayBody::new(body, DEFAULT_REPLAY_LIMIT);
        let second = first.replay().unwrap();
        let expected = vec![d("hello "), d("wor"), d("ld"), Ev::Trailers(trailers())];

        assert_eq!(drain(first).await, expected);
        assert!(second.is_replayable());
        assert!(!second.is_in_use());
        let third = second.replay().unwrap();
        assert_eq!(second.size_hint().exact(), Some(11));
        assert_eq!(drain(second).await, expected);
        // Any number of attempts, not just one retry.
        assert_eq!(drain(third).await, expected);
    }

    #[tokio::test]
    async fn collect_sees_whole_body_and_trailers_on_replay() {
        let body = body_of(vec![
            data("ab"),
            data("cd"),
            Ok(Frame::trailers(trailers())),
        ]);
        let first = ReplayBody::new(body, 16);
        let second = first.replay().unwrap();
        let a = first.collect().await.unwrap();
        assert_eq!(a.trailers(), Some(&trailers()));
        assert_eq!(a.to_bytes(), "abcd");
        let b = second.collect().await.unwrap();
        assert_eq!(b.trailers(), Some(&trailers()));
        assert_eq!(b.to_bytes(), "abcd");
    }

    #[tokio::test]
    async fn replay_after_partial_read_continues_from_the_original() {
        let (tx, body) = channel();
        for s in ["1", "22", "333", "4444"] {
            tx.send(data(s)).await.unwrap();
        }
        drop(tx);
        let mut first = ReplayBody::new(body, DEFAULT_REPLAY_LIMIT);
        let second = first.replay().unwrap();
        assert_eq!(next(&mut first).await, Some(d("1")));
        assert_eq!(next(&mut first).await, Some(d("22")));
        assert!(second.is_in_use(), "the first attempt holds the original");
        drop(first);

        assert!(!second.is_in_use());
        assert!(second.is_replayable());
        // Each chunk exactly once, in order: two from the buffer, two from the original.
        assert_eq!(
            drain(second).await,
            vec![d("1"), d("22"), d("333"), d("4444")]
        );
    }

    #[tokio::test]
    async fn replay_after_partial_read_of_a_still_streaming_body() {
        // The client is still sending while the first attempt fails.
        let (tx, body) = channel();
        tx.send(data("a")).await.unwrap();
        let mut first = ReplayBody::new(body, DEFAULT_REPLAY_LIMIT);
        let mut second = first.replay().unwrap();
        assert_eq!(next(&mut first).await, Some(d("a")));
        assert!(
            first.frame().now_or_never().is_none(),
            "waits for the client"
        );
        drop(first);

        assert_eq!(next(&mut second).await, Some(d("a")));
        assert!(
            second.frame().now_or_never().is_none(),
            "caught up, waits too"
        );
        tx.send(data("b")).await.unwrap();
        tx.send(Ok(Frame::trailers(trailers()))).await.unwrap();
        assert_eq!(next(&mut second).await, Some(d("b")));
        assert_eq!(next(&mut second).await, Some(Ev::Trailers(trailers())));
        assert_eq!(next(&mut second).await, None);
    }

    #[tokio::test]
    async fn replay_after_an_attempt_that_read_nothing() {
        // Connect failure: the first attempt's body is dropped without being polled.
        let body = body_of(vec![data("x"), data("y")]);
        let first = ReplayBody::new(body, DEFAULT_REPLAY_LIMIT);
        let second = first.replay().unwrap();
        drop(first);
        let third = second.replay().unwrap();
        assert_eq!(drain(second).await, vec![d("x"), d("y")]);
        assert_eq!(drain(third).await, vec![d("x"), d("y")]);
    }

    #[tokio::test]
    async fn replay_after_an_attempt_that_polled_but_got_nothing() {
        let (tx, body) = channel();
        let mut first = ReplayBody::new(body, DEFAULT_REPLAY_LIMIT);
        let second = first.replay().unwrap();
        assert!(first.frame().now_or_never().is_none());
        drop(first);
        tx.send(data("late")).await.unwrap();
        drop(tx);
        assert_eq!(drain(second).await, vec![d("late")]);
    }

    #[tokio::test]
    async fn overflow_stops_replay_but_not_the_current_attempt() {
        let chunks = ["0123", "4567", "89ab", "cdef"];
        let body = body_of(chunks.iter().map(|s| data(s)).collect());
        let mut first = ReplayBody::new(body, 10);
        let spare = first.replay().unwrap();

        assert_eq!(next(&mut first).await, Some(d("0123")));
        assert_eq!(next(&mut first).await, Some(d("4567")));
        assert!(first.is_replayable(), "8 bytes fit in 10");
        assert_eq!(next(&mut first).await, Some(d("89ab")));
        assert!(!first.is_replayable(), "12 bytes do not");
        assert!(!spare.is_replayable());
        assert!(first.replay().is_none());
        assert!(spare.replay().is_none());
        // The attempt in flight still gets every byte.
        assert_eq!(next(&mut first).await, Some(d("cdef")));
        assert_eq!(next(&mut first).await, None);
        drop(first);

        // A spare taken before the overflow refuses rather than sending a truncated body.
        assert!(!spare.is_end_stream());
        let evs = drain(spare).await;
        assert_eq!(
            evs,
            vec![Ev::Err(ReplayError::LimitExceeded.to_string())],
            "{evs:?}"
        );
    }

    #[tokio::test]
    async fn exactly_the_limit_is_still_replayable() {
        let body = body_of(vec![data("1234"), data("5678")]);
        let first = ReplayBody::new(body, 8);
        let second = first.replay().unwrap();
        assert_eq!(drain(first).await, vec![d("1234"), d("5678")]);
        assert!(second.is_replayable());
        assert_eq!(drain(second).await, vec![d("1234"), d("5678")]);
    }

    #[tokio::test]
    async fn known_too_big_body_is_replayable_until_read() {
        let payload = Bytes::from(vec![7u8; 100]);
        let first = ReplayBody::new(Full::new(payload.clone()), 10);
        assert!(first.is_replayable());
        let second = first.replay().unwrap();
        drop(first); // connect failure: nothing read, so a retry is still fine
        assert!(second.is_replayable());
        let third = second.replay().unwrap();
        let got = second.collect().await.unwrap().to_bytes();
        assert_eq!(got, payload);
        assert!(!third.is_replayable());
        let err = third.collect().await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<ReplayError>(),
            Some(&ReplayError::LimitExceeded)
        );
    }

    #[tokio::test]
    async fn error_mid_body_goes_to_the_reader_and_stops_replay() {
        let body = body_of(vec![data("ok"), Err("client reset".into()), data("never")]);
        let first = ReplayBody::new(body, DEFAULT_REPLAY_LIMIT);
        let spare = first.replay().unwrap();
        assert_eq!(
            drain(first).await,
            vec![d("ok"), Ev::Err("client reset".into())]
        );
        assert!(!spare.is_replayable());
        assert!(spare.replay().is_none());
        let err = spare.collect().await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<ReplayError>(),
            Some(&ReplayError::Failed)
        );
    }

    #[tokio::test]
    async fn error_is_not_followed_by_a_clean_end() {
        let body = body_of(vec![Err("boom".into())]);
        let mut first = ReplayBody::new(body, DEFAULT_REPLAY_LIMIT);
        assert_eq!(next(&mut first).await, Some(Ev::Err("boom".into())));
        assert!(!first.is_end_stream());
        assert!(matches!(next(&mut first).await, Some(Ev::Err(_))));
    }

    #[tokio::test]
    async fn empty_body_is_trivially_replayable() {
        let first = ReplayBody::new(Empty::<Bytes>::new(), DEFAULT_REPLAY_LIMIT);
        assert!(
            matches!(first.inner, Inner::Empty),
            "no shared state for empty bodies"
        );
        assert!(first.is_end_stream());
        assert_eq!(first.size_hint().exact(), Some(0));
        assert!(first.is_replayable());
        assert!(!first.is_in_use());
        let second = first.replay().unwrap();
        assert_eq!(drain(first).await, vec![]);
        assert!(second.is_end_stream());
        assert_eq!(drain(second).await, vec![]);
    }

    #[tokio::test]
    async fn streaming_body_that_turns_out_empty() {
        let first = ReplayBody::new(body_of(vec![]), 0);
        let second = first.replay().unwrap();
        assert!(!first.is_end_stream(), "unknown until read");
        assert_eq!(drain(first).await, vec![]);
        assert!(second.is_replayable());
        assert!(second.is_end_stream());
        assert_eq!(second.size_hint().exact(), Some(0));
        assert_eq!(drain(second).await, vec![]);
    }

    #[tokio::test]
    async fn exact_size_hint_and_end_stream_follow_each_attempt() {
        let mut first = ReplayBody::new(Full::new(Bytes::from_static(b"hello")), 64);
        let mut second = first.replay().unwrap();
        assert_eq!(first.size_hint().exact(), Some(5));
        assert_eq!(second.size_hint().exact(), Some(5));
        assert!(!first.is_end_stream());

        assert_eq!(next(&mut first).await, Some(d("hello")));
        // Full says it is done after its one chunk; hyper relies on this to set END_STREAM
        // on the last DATA frame.
        assert!(first.is_end_stream());
        assert_eq!(first.size_hint().exact(), Some(0));
        drop(first);

        assert!(!second.is_end_stream());
        assert_eq!(second.size_hint().exact(), Some(5));
        assert_eq!(next(&mut second).await, Some(d("hello")));
        assert!(second.is_end_stream());
        assert_eq!(second.size_hint().exact(), Some(0));
        assert_eq!(next(&mut second).await, None);
    }

    #[tokio::test]
    async fn size_hint_counts_buffer_plus_the_rest_of_the_original() {
        let (tx, body) = channel();
        tx.send(data("abc")).await.unwrap();
        tx.send(data("def")).await.unwrap();
        let mut first = ReplayBody::new(body, 64);
        let mut second = first.replay().unwrap();
        let third = first.replay().unwrap();
        assert_eq!(next(&mut first).await, Some(d("abc")));
        assert_eq!(next(&mut first).await, Some(d("def")));
        // While the first attempt holds the original, the spare cannot know.
        assert_eq!(second.size_hint().lower(), 0);
        drop(first);

        let hint = second.size_hint();
        assert_eq!((hint.lower(), hint.upper()), (6, None));
        assert_eq!(next(&mut second).await, Some(d("abc")));
        assert_eq!(second.size_hint().lower(), 3);
        tx.send(Ok(Frame::trailers(trailers()))).await.unwrap();
        assert_eq!(next(&mut second).await, Some(d("def")));
        assert_eq!(next(&mut second).await, Some(Ev::Trailers(trailers())));
        assert!(second.is_end_stream());

        // After the original ended the size is known exactly; trailers are not the end.
        assert_eq!(third.size_hint().exact(), Some(6));
        assert!(!third.is_end_stream(), "trailers are still to come");
    }

    #[tokio::test]
    async fn concurrent_attempt_errors_instead_of_waiting() {
        let body = body_of(vec![data("a"), data("b")]);
        let mut first = ReplayBody::new(body, 64);
        let mut second = first.replay().unwrap();
        assert_eq!(next(&mut first).await, Some(d("a")));

        assert!(second.is_in_use());
        let err = second.frame().await.unwrap().unwrap_err();
        assert_eq!(err.downcast_ref::<ReplayError>(), Some(&ReplayError::InUse));
        assert_eq!(next(&mut first).await, Some(d("b")));

        // Once the first lets go, the second can start (from the beginning).
        drop(first);
        assert!(!second.is_in_use());
        assert_eq!(drain(second).await, vec![d("a"), d("b")]);
    }

    #[tokio::test]
    async fn finished_attempt_releases_even_if_not_dropped() {
        // hyper may keep a finished request body alive for a while.
        let body = body_of(vec![data("z"), Ok(Frame::trailers(trailers()))]);
        let first = ReplayBody::new(body, 64);
        let second = first.replay().unwrap();
        let mut first = first;
        assert_eq!(next(&mut first).await, Some(d("z")));
        assert_eq!(next(&mut first).await, Some(Ev::Trailers(trailers())));
        assert!(first.is_end_stream());
        assert!(!second.is_in_use());
        assert_eq!(drain(second).await, vec![d("z"), Ev::Trailers(trailers())]);
        assert_eq!(next(&mut first).await, None);
    }

    #[test]
    fn fits_the_proxy_body_type() {
        fn is_send<T: Send + 'static>() {}
        is_send::<ReplayBody<hyper::body::Incoming>>();
        is_send::<ReplayBody<crate::body::Body>>();
        let replay = ReplayBody::new(crate::body::full("x"), DEFAULT_REPLAY_LIMIT);
        let _: crate::body::Body = crate::body::boxed(replay);
    }
}
