//! One body type for everything the proxy sends, so requests and responses from hyper, from
//! upstreams and from the proxy itself flow through the same code.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed body that keeps trailers (gRPC's `grpc-status` rides in them).
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

/// Boxes a hyper body (or any other) without touching its frames.
pub fn boxed<B>(b: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed_unsync()
}

/// A body that holds `guard` until the body ends (its last frame is read) or is dropped.
///
/// A request's slot in the cluster's connection-pool limits and its place in the endpoint's
/// in-flight count last as long as the response streams: the exchange is busy until then.
pub fn guarded<G: Send + Unpin + 'static>(body: Body, guard: G) -> Body {
    Guarded {
        inner: body,
        guard: Some(guard),
    }
    .boxed_unsync()
}

struct Guarded<G> {
    inner: Body,
    guard: Option<G>,
}

impl<G: Unpin> http_body::Body for Guarded<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        // The end of the stream or an error ends the exchange: release now rather than when
        // the server gets around to dropping the body.
        if matches!(polled, std::task::Poll::Ready(None | Some(Err(_)))) {
            this.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly by design
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    struct Flag(Arc<AtomicBool>);

    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_guard_is_released_at_the_end_of_the_body() {
        let released = Arc::new(AtomicBool::new(false));
        let mut b = guarded(full("abc"), Flag(released.clone()));
        assert!(!released.load(Ordering::SeqCst));
        let frame = b.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "abc");
        assert!(b.frame().await.is_none());
        assert!(released.load(Ordering::SeqCst), "released at end of stream");
        drop(b);

        let released = Arc::new(AtomicBool::new(false));
        let b = guarded(full("abc"), Flag(released.clone()));
        drop(b);
        assert!(
            released.load(Ordering::SeqCst),
            "released when dropped unread"
        );
    }
}
