//! What one request looks like on the wire and what makes its answer a success: built once per
//! run (headers and body are shared `Bytes`), cloned per request.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_TYPE, HOST, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::schedule::expected_body_len;
use super::{Proto, Spec};

/// The gRPC frame header: compressed flag + big-endian length.
const GRPC_HEADER: usize = 5;

/// Everything needed to build a request of this run and judge its response.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    method: Method,
    /// Origin-form for HTTP/1.1.
    path: Uri,
    /// Absolute form for HTTP/2 (hyper takes `:scheme` and `:authority` from it).
    absolute: Uri,
    host: HeaderValue,
    body: Bytes,
    grpc: bool,
    /// HTTP/1.1 only: ask the server to close after the answer (new connection per request),
    /// so TIME_WAIT piles up on the server side, not in the client's ephemeral ports.
    close: bool,
    pub(crate) expect: Expect,
}

/// What a successful response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    /// A 2xx with this many body bytes (`None`: any length).
    Body(Option<u64>),
    /// A 200 with one gRPC frame of this many bytes (header included) and `grpc-status: 0`.
    Grpc(u64),
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The connection closed before the request went out (a server ending keep-alive, e.g.
    /// nginx after `keepalive_requests`): safe to send again on a new connection.
    Unsent(String),
    /// The exchange broke; the connection is unusable.
    Transport(String),
    /// HTTP/2 RST_STREAM(REFUSED_STREAM): the server did not process the stream (RFC 9113
    /// §8.7), so one retry is safe; the connection itself is fine.
    Refused(String),
    /// The generator could not make the request (out of file descriptors): its own failure,
    /// not the target's.
    Generator(String),
    /// A complete answer that is not a success.
    Response(String),
}

impl Failure {
    pub(crate) fn message(&self) -> &str {
        match self {
            Failure::Unsent(m)
            | Failure::Transport(m)
            | Failure::Refused(m)
            | Failure::Generator(m)
            | Failure::Response(m) => m,
        }
    }

    pub(crate) fn is_transport(&self) -> bool {
        !matches!(self, Failure::Response(_))
    }
}

impl Shape {
    pub(crate) fn new(spec: &Spec) -> anyhow::Result<Self> {
        let path: Uri = spec
            .path
            .parse()
            .map_err(|e| anyhow::anyhow!("--path {:?}: {e}", spec.path))?;
        let absolute: Uri = format!("http://{}{}", spec.host, spec.path)
            .parse()
            .map_err(|e| {
                anyhow::anyhow!("--host {:?} with --path {:?}: {e}", spec.host, spec.path)
            })?;
        let host = HeaderValue::from_str(&spec.host)
            .map_err(|e| anyhow::anyhow!("--host {:?}: {e}", spec.host))?;
        let grpc = spec.proto == Proto::Grpc;
        let (method, body, expect) = if grpc {
            let frame = grpc_frame(spec.body_size.unwrap_or(super::GRPC_DEFAULT_BODY));
            let len = frame.len() as u64;
            (Method::POST, frame, Expect::Grpc(len))
        } else if let Some(size) = spec.body_size {
            let body = Bytes::from(vec![b'x'; size]);
            (Method::POST, body, Expect::Body(Some(size as u64)))
        } else {
            (
                Method::GET,
                Bytes::new(),
                Expect::Body(expected_body_len(&spec.path)),
            )
        };
        Ok(Self {
            method,
            path,
            absolute,
            host,
            body,
            grpc,
            close: spec.new_conn,
            expect,
        })
    }

    /// A request for an HTTP/1.1 (`h2 == false`) or HTTP/2 connection.
    pub(crate) fn request(&self, h2: bool) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = if h2 {
            self.absolute.clone()
        } else {
            self.path.clone()
        };
        let headers = req.headers_mut();
        if !h2 {
            headers.insert(HOST, self.host.clone());
            if self.close {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
        }
        if self.grpc {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert("te", HeaderValue::from_static("trailers"));
        }
        req
    }
}

/// Reads the whole response (so a keep-alive connection stays usable even after an error
/// status) without copying the body, then judges it.
pub(crate) async fn finish(resp: http::Response<Incoming>, expect: Expect) -> Result<(), Failure> {
    let (head, mut body) = resp.into_parts();
    let mut len = 0u64;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| Failure::Transport(format!("reading the body: {}", chain(&e))))?;
        match frame.into_data() {
            Ok(data) => len += data.len() as u64,
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    judge(head.status, &head.headers, len, trailers.as_ref(), expect).map_err(Failure::Response)
}

/// Whether a complete response is a success; the error names what was wrong.
pub(crate) fn judge(
    status: StatusCode,
    headers: &HeaderMap,
    body_len: u64,
    trailers: Option<&HeaderMap>,
    expect: Expect,
) -> Result<(), String> {
    if !status.is_success() {
        return Err(format!("HTTP status {status}"));
    }
    match expect {
        Expect::Body(Some(want)) if body_len != want => {
            Err(format!("body of {body_len} bytes, expected {want}"))
        }
        Expect::Body(_) => Ok(()),
        Expect::Grpc(want) => {
            // A trailers-only answer carries the status in the headers.
            let fields = trailers
                .filter(|t| t.contains_key("grpc-status"))
                .unwrap_or(headers);
            let code = fields.get("grpc-status").map(|v| v.to_str().unwrap_or("?"));
            match code {
                None => Err("gRPC answer without grpc-status".to_owned()),
                Some("0") if body_len == want => Ok(()),
                Some("0") => Err(format!("gRPC body of {body_len} bytes, expected {want}")),
                Some(code) => {
                    let message = fields.get("grpc-message").and_then(|v| v.to_str().ok());
                    Err(format!("grpc-status {code}: {}", message.unwrap_or("")))
                }
            }
        }
    }
}

/// One uncompressed gRPC frame whose message is `size` bytes: a protobuf with field 1 as
/// `bytes` (so a real gRPC server could decode it too), padded to the exact size.
pub(crate) fn grpc_frame(size: usize) -> Bytes {
    let message = proto_bytes_message(size);
    let mut frame = BytesMut::with_capacity(GRPC_HEADER + message.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    frame.put_slice(&message);
    frame.freeze()
}

/// A protobuf message `{ 1: bytes }` of exactly `size` encoded bytes (an empty message when a
/// field cannot fit).
fn proto_bytes_message(size: usize) -> Vec<u8> {
    // tag (1 byte) + varint length (1..=10 bytes) + payload; find the payload that fills `size`.
    for len_bytes in 1..=10usize {
        let Some(payload) = size.checked_sub(1 + len_bytes) else {
            break;
        };
        if varint_len(payload as u64) == len_bytes {
            let mut out = Vec::with_capacity(size);
            out.push(0x0a);
            let mut v = payload as u64;
            while v >= 0x80 {
                out.push((v as u8 & 0x7f) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
            out.resize(size, b'x');
            return out;
        }
    }
    // Sizes 0 and 1, or a size no (tag, length) split reaches: pad with zero-length field 2s.
    let mut out = Vec::with_capacity(size);
    while out.len() + 2 <= size {
        out.extend_from_slice(&[0x12, 0x00]);
    }
    out.resize(size, 0);
    out
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Whether a failed send was refused by the server with REFUSED_STREAM. hyper does not
/// re-export h2's error type, so the reason is recognised by h2's wording for it ("refused
/// stream before processing any application logic").
pub(crate) fn is_refused_stream(text: &str) -> bool {
    text.contains("refused stream")
}

/// Whether a socket error means this process (or the system) ran out of file descriptors.
pub(crate) fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    matches!(Errno::from_io_error(e), Some(Errno::MFILE | Errno::NFILE))
}

/// An error with its sources, so "connection closed before message completed" and the like
/// survive into the samples.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc_trailers(code: &str) -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", code.parse().unwrap());
        t.insert("grpc-message", "boom".parse().unwrap());
        t
    }

    #[test]
    fn judging_http() {
        let h = HeaderMap::new();
        assert!(judge(StatusCode::OK, &h, 1024, None, Expect::Body(Some(1024))).is_ok());
        assert!(judge(StatusCode::NO_CONTENT, &h, 0, None, Expect::Body(None)).is_ok());
        let e = judge(
            StatusCode::INTERNAL_SERVER_ERROR,
            &h,
            0,
            None,
            Expect::Body(None),
        );
        assert_eq!(e.unwrap_err(), "HTTP status 500 Internal Server Error");
        let e = judge(StatusCode::OK, &h, 10, None, Expect::Body(Some(1024)));
        assert_eq!(e.unwrap_err(), "body of 10 bytes, expected 1024");
    }

    #[test]
    fn judging_grpc() {
        let h = HeaderMap::new();
        let ok = grpc_trailers("0");
        assert!(judge(StatusCode::OK, &h, 105, Some(&ok), Expect::Grpc(105)).is_ok());
        let e = judge(StatusCode::OK, &h, 5, Some(&ok), Expect::Grpc(105)).unwrap_err();
        assert!(e.contains("5 bytes"), "{e}");
        let e = judge(
            StatusCode::OK,
            &h,
            0,
            Some(&grpc_trailers("13")),
            Expect::Grpc(105),
        );
        assert_eq!(e.unwrap_err(), "grpc-status 13: boom");
        // Trailers-only: the status is in the headers.
        let e = judge(
            StatusCode::OK,
            &grpc_trailers("14"),
            0,
            None,
            Expect::Grpc(105),
        );
        assert_eq!(e.unwrap_err(), "grpc-status 14: boom");
        let e = judge(StatusCode::OK, &h, 105, None, Expect::Grpc(105)).unwrap_err();
        assert!(e.contains("without grpc-status"), "{e}");
    }

    #[test]
    fn grpc_frames_have_the_exact_size_and_decode() {
        for size in [
            0,
            1,
            2,
            3,
            100,
            127,
            128,
            129,
            130,
            131,
            16_384,
            16_386,
            1 << 20,
        ] {
            let frame = grpc_frame(size);
            assert_eq!(frame.len(), GRPC_HEADER + size, "size {size}");
            assert_eq!(frame[0], 0);
            let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
            assert_eq!(len, size);
            let msg = &frame[GRPC_HEADER..];
            if size >= 2 && msg[0] == 0x0a {
                // field 1, length-delimited: the varint must cover the rest exactly.
                let (mut v, mut shift, mut i) = (0usize, 0, 1);
                loop {
                    let b = msg[i];
                    v |= ((b & 0x7f) as usize) << shift;
                    i += 1;
                    if b < 0x80 {
                        break;
                    }
                    shift += 7;
                }
                assert_eq!(i + v, size, "size {size}");
            }
        }
        assert_eq!(grpc_frame(100)[5], 0x0a);
    }

    #[test]
    fn request_shapes() {
        let mut spec = Spec::new("127.0.0.1:8080".parse().unwrap(), Proto::H1);
        spec.host = "app.local".into();
        let shape = Shape::new(&spec).unwrap();
        let r = shape.request(false);
        assert_eq!(r.method(), Method::GET);
        assert_eq!(r.uri(), "/1024");
        assert_eq!(r.headers()[HOST], "app.local");
        assert_eq!(shape.expect, Expect::Body(Some(1024)));
        let r = shape.request(true);
        assert_eq!(r.uri(), "http://app.local/1024");
        assert!(r.headers().get(HOST).is_none());

        spec.proto = Proto::Grpc;
        spec.path = "/meshbench.Echo/Unary".into();
        let shape = Shape::new(&spec).unwrap();
        let r = shape.request(true);
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/grpc");
        assert_eq!(r.headers()["te"], "trailers");
        assert_eq!(shape.expect, Expect::Grpc(105));

        spec.proto = Proto::H1;
        spec.new_conn = true;
        spec.body_size = Some(10);
        let shape = Shape::new(&spec).unwrap();
        let r = shape.request(false);
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.headers()[CONNECTION], "close");
        assert_eq!(shape.expect, Expect::Body(Some(10)));
    }

    #[test]
    fn failures_are_classified() {
        let emfile = std::io::Error::from_raw_os_error(rustix::io::Errno::MFILE.raw_os_error());
        let enfile = std::io::Error::from_raw_os_error(rustix::io::Errno::NFILE.raw_os_error());
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(is_fd_exhaustion(&emfile) && is_fd_exhaustion(&enfile));
        assert!(!is_fd_exhaustion(&refused));
        assert!(is_refused_stream(
            "http2 error: stream error received: refused stream before processing any \
             application logic"
        ));
        assert!(!is_refused_stream("connection refused"));
        assert!(Failure::Refused(String::new()).is_transport());
        assert!(!Failure::Response(String::new()).is_transport());
    }

    #[test]
    fn error_chains_keep_their_sources() {
        let inner = std::io::Error::other("reset by peer");
        let outer = anyhow::Error::new(inner).context("reading");
        let e: &(dyn std::error::Error + 'static) = outer.as_ref();
        assert_eq!(chain(e), "reading: reset by peer");
    }
}
