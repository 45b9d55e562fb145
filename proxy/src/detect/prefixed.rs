//! [`PrefixedIo`]: a stream whose first bytes were already read (by detection) and are
//! replayed before the rest, so the next handler sees the connection from its first byte.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Reads yield `prefix` first, then the inner stream; writes go straight to the inner stream.
///
/// `I: Unpin` keeps this free of pinning machinery; every stream the proxy detects on
/// (`TcpStream`, TLS streams, duplex pipes) is `Unpin`.
#[derive(Debug)]
pub struct PrefixedIo<I> {
    prefix: Bytes,
    inner: I,
}

impl<I> PrefixedIo<I> {
    pub fn new(prefix: Bytes, inner: I) -> Self {
        PrefixedIo { prefix, inner }
    }

    /// The bytes not replayed yet.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    pub fn get_ref(&self) -> &I {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut I {
        &mut self.inner
    }

    /// The bytes not replayed yet and the inner stream.
    pub fn into_parts(self) -> (Bytes, I) {
        (self.prefix, self.inner)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for PrefixedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..n]);
        this.prefix.advance(n);
        if this.prefix.is_empty() {
            // Drop the detection buffer now rather than with the connection, which for
            // opaque TCP may live for hours.
            this.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
