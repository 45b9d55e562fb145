//! The TCP idle timeout of opaque tunnels (`connectionPool.tcp.idleTimeout`): a tunnel with no
//! byte either way for that long fails its pending read or write with `TimedOut`, which ends
//! the splice and so closes both sides.
//!
//! The timer is lazy: reads and writes only record the time of the last byte (a clock read,
//! no timer-wheel work), and the one sleep is re-armed only when it fires early. A busy
//! tunnel therefore costs one wake-up per idle period at most.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `io` closed after `timeout` without traffic; `hold` lives as long as the tunnel (an
/// HTTP/2 stream's place on its pooled connection, for a tunnel over the mesh hop).
#[derive(Debug)]
pub(super) struct IdleTimeout<T, H> {
    io: T,
    idle: Option<Idle>,
    _hold: H,
}

#[derive(Debug)]
struct Idle {
    timeout: Duration,
    last: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl<T, H> IdleTimeout<T, H> {
    /// `timeout`: `None` never closes (the tunnel only carries `hold`).
    pub(super) fn new(io: T, timeout: Option<Duration>, hold: H) -> Self {
        let now = Instant::now();
        Self {
            io,
            idle: timeout.map(|timeout| Idle {
                timeout,
                last: now,
                sleep: Box::pin(tokio::time::sleep_until(now + timeout)),
            }),
            _hold: hold,
        }
    }

    fn touch(&mut self) {
        if let Some(i) = &mut self.idle {
            i.last = Instant::now();
        }
    }

    /// Called when the tunnel would wait: `Ready(Err)` once it has been idle for the
    /// timeout, else `Pending` with a wake-up registered for that moment.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some(i) = &mut self.idle else {
            return Poll::Pending;
        };
        loop {
            if i.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let deadline = i.last + i.timeout;
            if Instant::now() >= deadline {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no traffic either way for {:?} (tcp idle timeout)",
                        i.timeout
                    ),
                ));
            }
            // Traffic since the sleep was armed: wait for the new deadline.
            i.sleep.as_mut().reset(deadline);
        }
    }
}

impl<T: AsyncRead + Unpin, H: Unpin> AsyncRead for IdleTimeout<T, H> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin, H: Unpin> AsyncWrite for IdleTimeout<T, H> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    this.touch();
                }
                Poll::Ready(r)
            }
            // A peer that stopped reading is no traffic either.
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    this.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
