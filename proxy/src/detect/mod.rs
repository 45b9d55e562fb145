//! Protocol detection for intercepted connections: HTTP/1.x, HTTP/2 prior knowledge, a TLS
//! ClientHello (the mesh's own or the application's), or else opaque TCP.
//!
//! Three layers, so the rules can be tested on bytes alone:
//!
//! - [`classify`] is pure: it looks at the bytes a client sent so far and answers with a
//!   [`Detection`], or [`Detection::NeedMore`] while those bytes are still a prefix of
//!   something it recognises. Every answer other than `NeedMore` is final: more bytes never
//!   change it, so the caller may stop reading at the first one.
//! - [`skip_detection`] decides, from the port and its declared protocol alone, that a
//!   connection must not wait for the client at all: in server-first protocols (MySQL, SMTP)
//!   the client is silent until the server greets it, so detection could only time out.
//! - [`detect`] reads from a stream until `classify` decides, the buffer is full, the client
//!   closes, or the deadline passes; every way out but a read error ends in an answer, and
//!   the bytes it consumed come back for [`PrefixedIo`] to replay to whoever handles the
//!   stream next. Reading (rather than `peek`) works the same on every stream type,
//!   including TLS streams, and never spins on a peek that keeps returning the same bytes.
//!
//! [`DetectOutcome`] is the label of `weft_protocol_detect_total`
//! ([`crate::telemetry::Metrics::protocol_detected`]).

mod client_hello;
mod prefixed;

#[cfg(test)]
mod tests;

use std::io;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

pub use prefixed::PrefixedIo;

/// The ALPN protocol ID that marks a ClientHello as the mesh hop (proxy to proxy).
///
/// `h2` alone cannot tell the mesh hop from an application speaking HTTP/2 over TLS, so the
/// mesh client offers this ID first and `h2` second (`["weft-mesh/1", "h2"]`): the peer
/// proxy's server config selects `h2` as before, so the framing on the wire does not change,
/// and an application never offers an ID it does not know. The `/1` leaves room for a later,
/// incompatible mesh hop.
pub const MESH_ALPN: &[u8] = b"weft-mesh/1";

/// The longest HTTP/1 request line [`classify`] waits for: without a line end by then the
/// bytes are [`Detection::Opaque`]. 8 KiB is the request-line limit common HTTP servers
/// enforce themselves, so no request a server would accept is misclassified.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a connection say about its protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detection {
    /// An HTTP/1.x request line: a known method, a request target, `HTTP/1.<digit>`.
    Http1 {
        /// The method token, one of [`HTTP_METHODS`].
        method: &'static str,
    },
    /// The full HTTP/2 client preface (prior knowledge, h2c).
    Http2,
    /// A complete TLS ClientHello.
    Tls(ClientHelloInfo),
    /// Definitely none of the above: proxy the bytes as they are.
    Opaque,
    /// A prefix of one of the above; only more bytes can tell.
    NeedMore,
}

/// What a ClientHello says about the connection; only what routing and the mesh need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHelloInfo {
    /// The `server_name` extension's host name, lowercased (DNS names are case-insensitive);
    /// `None` without the extension or when the name is not a plausible DNS name.
    pub sni: Option<String>,
    /// The ALPN protocol IDs in the client's order; empty without the extension.
    pub alpn: Vec<Vec<u8>>,
    /// The ALPN list carries [`MESH_ALPN`]: a peer proxy, not the application, is calling.
    pub mesh: bool,
}

/// The HTTP/1 methods detection accepts: RFC 9110's, PATCH, and the WebDAV and other
/// registered methods that Envoy's HTTP inspector (Istio's sniffing) accepts, plus QUERY
/// (the safe method with a body being standardised). Methods are case-sensitive, so `get`
/// (a memcached or Redis inline command) is not HTTP.
pub const HTTP_METHODS: &[&str] = &[
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "QUERY",
    "COPY",
    "LOCK",
    "MKCOL",
    "MOVE",
    "PROPFIND",
    "PROPPATCH",
    "SEARCH",
    "UNLOCK",
    "BIND",
    "REBIND",
    "UNBIND",
    "ACL",
    "REPORT",
    "MKACTIVITY",
    "CHECKOUT",
    "MERGE",
    "M-SEARCH",
    "NOTIFY",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "PURGE",
    "MKCALENDAR",
    "LINK",
    "UNLINK",
];

/// The first byte of a TLS handshake record. No HTTP method starts with it.
const TLS_HANDSHAKE: u8 = 0x16;

/// Classifies the first bytes a client sent. Pure, never panics, allocates only for a
/// complete ClientHello's answer (and to reassemble one split across TLS records).
pub fn classify(prefix: &[u8]) -> Detection {
    match prefix.first() {
        None => Detection::NeedMore,
        Some(&TLS_HANDSHAKE) => client_hello::classify(prefix),
        Some(_) => classify_plaintext(prefix),
    }
}

fn classify_plaintext(prefix: &[u8]) -> Detection {
    let n = prefix.len().min(H2_PREFACE.len());
    if prefix[..n] == H2_PREFACE[..n] {
        // "P" and "PR" could still become POST or PROPFIND, but either way only more bytes
        // can tell, so NeedMore is right for both readings.
        return if n == H2_PREFACE.len() {
            Detection::Http2
        } else {
            Detection::NeedMore
        };
    }
    classify_http1(prefix)
}

fn classify_http1(prefix: &[u8]) -> Detection {
    let mut could_be_method = false;
    for method in HTTP_METHODS {
        let m = method.as_bytes();
        if prefix.len() > m.len() {
            // The space makes the match exact: "LOCK " is not a prefix of "UNLOCK ".
            if prefix.starts_with(m) && prefix[m.len()] == b' ' {
                return request_line(prefix, m.len() + 1, method);
            }
        } else if m.starts_with(prefix) {
            could_be_method = true;
        }
    }
    if could_be_method {
        Detection::NeedMore
    } else {
        Detection::Opaque
    }
}

/// The rest of a request line after "METHOD ": a non-empty request target of visible bytes,
/// one space, `HTTP/1.`, a digit, then CRLF (or a bare LF, which RFC 9112 §2.2 lets a
/// recipient accept and httparse does). Exactly one space each side keeps random text that
/// happens to start with "GET " out; HTTP/0.9 (no version) and HTTP/2+ are not HTTP/1 here.
fn request_line(prefix: &[u8], target_start: usize, method: &'static str) -> Detection {
    // Bytes past the cap are never looked at, so the work per call is bounded too.
    let line = &prefix[..prefix.len().min(MAX_REQUEST_LINE)];
    let undecided = if prefix.len() >= MAX_REQUEST_LINE {
        Detection::Opaque
    } else {
        Detection::NeedMore
    };
    let rest = &line[target_start..];
    let target_len = rest
        .iter()
        .position(|&b| !is_target_byte(b))
        .unwrap_or(rest.len());
    let Some(&after_target) = rest.get(target_len) else {
        return undecided;
    };
    if target_len == 0 || after_target != b' ' {
        return Detection::Opaque;
    }
    let version = &rest[target_len..];
    const VERSION: &[u8] = b" HTTP/1.";
    let n = version.len().min(VERSION.len());
    if version[..n] != VERSION[..n] {
        return Detection::Opaque;
    }
    let tail = &version[n..];
    match tail {
        [] => undecided,
        [d, ..] if !d.is_ascii_digit() => Detection::Opaque,
        [_] | [_, b'\r'] => undecided,
        [_, b'\n', ..] | [_, b'\r', b'\n', ..] => Detection::Http1 { method },
        _ => Detection::Opaque,
    }
}

/// Bytes a request target may hold: visible ASCII and, as httparse tolerates, bytes of
/// raw UTF-8; never spaces or control bytes.
fn is_target_byte(b: u8) -> bool {
    matches!(b, 0x21..=0x7e | 0x80..=0xff)
}

/// Well-known ports of protocols that detection must skip, so the connection is opaque TCP
/// at once:
///
/// - server-first: the client waits for the server's greeting, so detection could only
///   time out: FTP 21, SMTP 25 and 587, POP3 110, IMAP 143, MySQL 3306;
/// - Linkerd's default opaque ports (25, 587, 3306, 4444, 5432, 6379, 9300, 11211), kept
///   whole so operators coming from Linkerd find the same behaviour (4444 is Galera's state
///   transfer, next to MySQL). PostgreSQL 5432,
///   Redis 6379, Elasticsearch's transport 9300 and Memcached 11211 are client-first, and
///   [`classify`] already calls their first bytes opaque at once, so skipping costs nothing
///   and spares the read;
/// - MongoDB 27017: client-first too, but Istio treats `mongo` as opaque TCP, so the port
///   is treated like the name.
///
/// AMQP 5672 is client-first ("AMQP" then a version) and is left to detection.
pub const DEFAULT_SKIP_PORTS: &[u16] = &[
    21, 25, 110, 143, 587, 3306, 4444, 5432, 6379, 9300, 11211, 27017,
];

/// Declared protocols (a port's `appProtocol`, or an Istio-style port name `<proto>[-x]`)
/// that mean opaque TCP. Istio's own list is `tcp`, `mysql`, `mongo` and `redis`; the rest
/// are the server-first and database protocols of [`DEFAULT_SKIP_PORTS`] by name.
const OPAQUE_NAMES: &[&str] = &[
    "tcp",
    "mysql",
    "mariadb",
    "mongo",
    "mongodb",
    "redis",
    "postgres",
    "postgresql",
    "smtp",
    "ftp",
    "pop3",
    "imap",
    "memcache",
    "memcached",
];

/// Declared protocols that mean HTTP: detection runs even on a default skip port, so naming
/// a port `http-cache` is how an operator runs HTTP on, say, 6379.
const HTTP_NAMES: &[&str] = &["http", "http2", "h2c", "grpc", "ws"];

/// Whether a connection to `port` must skip detection and be opaque TCP at once.
///
/// In order: a port the operator declared opaque (`opaque_ports`) is skipped; else a
/// declared protocol decides (opaque names skip, HTTP names detect); else the port is
/// skipped when it is in [`DEFAULT_SKIP_PORTS`]. `app_protocol_or_port_name` is compared
/// case-insensitively, after any domain prefix (`example.com/mysql`) and from the first `-`
/// on (`mysql-primary`, `grpc-web`) are dropped. `tls` and `https` do not skip: the client
/// speaks first, and detection reads the SNI and tells the mesh's TLS from the app's.
pub fn skip_detection(
    port: u16,
    app_protocol_or_port_name: Option<&str>,
    opaque_ports: &[u16],
) -> bool {
    if opaque_ports.contains(&port) {
        return true;
    }
    if let Some(name) = app_protocol_or_port_name {
        let name = name.trim();
        let name = name.rsplit('/').next().unwrap_or(name);
        let proto = name.split('-').next().unwrap_or(name);
        let is = |list: &[&str]| list.iter().any(|n| n.eq_ignore_ascii_case(proto));
        if is(OPAQUE_NAMES) {
            return true;
        }
        if is(HTTP_NAMES) {
            return false;
        }
    }
    DEFAULT_SKIP_PORTS.contains(&port)
}

/// How detection ended, the label of `weft_protocol_detect_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DetectOutcome {
    Http1,
    H2,
    /// TLS whose ALPN carries [`MESH_ALPN`].
    TlsMesh,
    /// TLS from the application itself.
    TlsApp,
    /// Not HTTP or TLS, the client closed first, or the buffer filled undecided.
    Opaque,
    /// The client sent too little before the deadline (a server-first protocol on a port
    /// not known to skip); the connection is treated as opaque.
    Timeout,
    /// [`skip_detection`] said so; no byte was read.
    Skipped,
}

impl DetectOutcome {
    /// Every outcome, e.g. to pre-create the counters.
    pub const ALL: [DetectOutcome; 7] = [
        DetectOutcome::Http1,
        DetectOutcome::H2,
        DetectOutcome::TlsMesh,
        DetectOutcome::TlsApp,
        DetectOutcome::Opaque,
        DetectOutcome::Timeout,
        DetectOutcome::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DetectOutcome::Http1 => "http1",
            DetectOutcome::H2 => "h2",
            DetectOutcome::TlsMesh => "tls_mesh",
            DetectOutcome::TlsApp => "tls_app",
            DetectOutcome::Opaque => "opaque",
            DetectOutcome::Timeout => "timeout",
            DetectOutcome::Skipped => "skipped",
        }
    }

    /// The outcome of a finished detection; an undecided one counts as opaque, which is how
    /// it is then handled.
    pub fn of(detection: &Detection) -> Self {
        match detection {
            Detection::Http1 { .. } => DetectOutcome::Http1,
            Detection::Http2 => DetectOutcome::H2,
            Detection::Tls(hello) if hello.mesh => DetectOutcome::TlsMesh,
            Detection::Tls(_) => DetectOutcome::TlsApp,
            Detection::Opaque | Detection::NeedMore => DetectOutcome::Opaque,
        }
    }
}

/// A `max` for [`detect`] that holds any request line [`classify`] accepts
/// ([`MAX_REQUEST_LINE`]) and a ClientHello with large extensions (post-quantum key shares,
/// many ALPN IDs); a smaller `max` turns longer ones into `Opaque`.
pub const DEFAULT_MAX: usize = 16 * 1024;

/// The first buffer [`detect`] allocates (less when `max` is smaller): a request line or a
/// ClientHello fits; the buffer doubles, up to `max`, only for longer ones.
const INITIAL_BUFFER: usize = 2048;

/// [`detect`], unless `skip` ([`skip_detection`] said so): then opaque at once, nothing read.
pub async fn detect_or_skip<I>(
    io: &mut I,
    skip: bool,
    timeout: Duration,
) -> io::Result<(Detection, Bytes, DetectOutcome)>
where
    I: AsyncRead + Unpin + ?Sized,
{
    if skip {
        return Ok((Detection::Opaque, Bytes::new(), DetectOutcome::Skipped));
    }
    detect(io, timeout, DEFAULT_MAX).await
}

/// Reads the first bytes of `io` until [`classify`] decides, and returns the answer, the
/// bytes read (to replay with [`PrefixedIo`]: they are gone from `io`) and the outcome.
///
/// Never returns [`Detection::NeedMore`] and never waits past `timeout` (one deadline for
/// the whole detection, however the client trickles its bytes):
/// - the deadline passes undecided: `Opaque`, outcome `Timeout`, with whatever was read;
/// - `max` bytes read undecided, or the client closed first (EOF, possibly before any
///   byte): `Opaque`, outcome `Opaque`. After EOF the stream keeps answering EOF, so a
///   client that half-closed and waits for the server still gets opaque TCP, half-close
///   included.
///
/// A read error is returned as is: the connection is broken, there is nothing to proxy.
pub async fn detect<I>(
    io: &mut I,
    timeout: Duration,
    max: usize,
) -> io::Result<(Detection, Bytes, DetectOutcome)>
where
    I: AsyncRead + Unpin + ?Sized,
{
    let mut buf = BytesMut::with_capacity(max.min(INITIAL_BUFFER));
    // `read_buf` is cancel-safe: bytes read before the deadline are in `buf`, not lost.
    let decided = tokio::time::timeout(timeout, read_until_decided(io, &mut buf, max)).await;
    match decided {
        Ok(Ok(detection)) => {
            let outcome = DetectOutcome::of(&detection);
            Ok((detection, buf.freeze(), outcome))
        }
        Ok(Err(e)) => Err(e),
        Err(_elapsed) => Ok((Detection::Opaque, buf.freeze(), DetectOutcome::Timeout)),
    }
}

async fn read_until_decided<I>(io: &mut I, buf: &mut BytesMut, max: usize) -> io::Result<Detection>
where
    I: AsyncRead + Unpin + ?Sized,
{
    loop {
        match classify(buf) {
            Detection::NeedMore => {}
            decided => return Ok(decided),
        }
        let room = max.saturating_sub(buf.len());
        if room == 0 {
            return Ok(Detection::Opaque);
        }
        if buf.len() == buf.capacity() {
            // Grow by doubling, so a client sending one byte per segment costs a handful of
            // allocations, not one per read.
            buf.reserve(buf.capacity().max(INITIAL_BUFFER).min(room));
        }
        let n = io.read_buf(&mut (&mut *buf).limit(room)).await?;
        if n == 0 {
            return Ok(Detection::Opaque);
        }
    }
}
