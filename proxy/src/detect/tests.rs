#![allow(clippy::unwrap_used)] // tests fail loudly by design
//! Detection on byte fixtures (every method, every split point, real rustls ClientHellos,
//! garbage and seeded random input) and the async layer on in-memory pipes with paused time.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn http1(method: &'static str) -> Detection {
    Detection::Http1 { method }
}

// ---- HTTP/1 -------------------------------------------------------------------------------

#[test]
fn every_method_is_http1() {
    for &method in HTTP_METHODS {
        let req = format!("{method} /reviews/1?x=y HTTP/1.1\r\nHost: reviews:9080\r\n\r\n");
        assert_eq!(classify(req.as_bytes()), http1(method), "{method}");
        let req = format!("{method} * HTTP/1.0\r\n");
        assert_eq!(classify(req.as_bytes()), http1(method), "{method}");
    }
}

#[test]
fn request_line_split_at_every_byte_is_need_more_then_http1() {
    for req in [
        &b"GET /productpage HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"PROPPATCH /a HTTP/1.1\r\n",
        b"M-SEARCH * HTTP/1.1\r\n",
        b"UNSUBSCRIBE /x HTTP/1.0\n",
        b"CONNECT reviews.default:9080 HTTP/1.1\r\n\r\n",
    ] {
        let line_end = req.iter().position(|&b| b == b'\n').unwrap() + 1;
        for cut in 0..line_end {
            assert_eq!(
                classify(&req[..cut]),
                Detection::NeedMore,
                "{:?}",
                String::from_utf8_lossy(&req[..cut])
            );
        }
        for cut in line_end..=req.len() {
            assert!(matches!(classify(&req[..cut]), Detection::Http1 { .. }));
        }
    }
}

#[test]
fn not_quite_http1_is_opaque() {
    for bytes in [
        &b"get / HTTP/1.1\r\n"[..], // methods are case-sensitive
        b"GET  / HTTP/1.1\r\n",     // empty target
        b"GET / HTTP/1.1 \r\n",
        b"GET / HTTP/2.0\r\n",
        b"GET / HTTP/1.x\r\n",
        b"GET / HTTP/1.1x",
        b"GET /\r\n", // HTTP/0.9
        b"GET /a\tb HTTP/1.1\r\n",
        b"GETS / HTTP/1.1\r\n",
        b"FETCH / HTTP/1.1\r\n",
        b"PRI * HTTP/1.1\r\n",
        b"POST / HTTP/1.1\r\r\n",
        b" GET / HTTP/1.1\r\n",
    ] {
        assert_eq!(
            classify(bytes),
            Detection::Opaque,
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn request_line_length_is_capped() {
    let mut long = b"GET /".to_vec();
    long.resize(MAX_REQUEST_LINE - 1, b'a');
    assert_eq!(classify(&long), Detection::NeedMore);
    long.push(b'a');
    assert_eq!(classify(&long), Detection::Opaque);
    long.extend_from_slice(b" HTTP/1.1\r\n");
    assert_eq!(classify(&long), Detection::Opaque);

    let mut fits = b"GET /".to_vec();
    fits.resize(MAX_REQUEST_LINE - b" HTTP/1.1\r\n".len(), b'a');
    fits.extend_from_slice(b" HTTP/1.1\r\n");
    assert_eq!(fits.len(), MAX_REQUEST_LINE);
    assert_eq!(classify(&fits), http1("GET"));
}

// ---- HTTP/2 -------------------------------------------------------------------------------

#[test]
fn h2_preface_split_at_every_byte() {
    for cut in 0..H2_PREFACE.len() {
        assert_eq!(
            classify(&H2_PREFACE[..cut]),
            Detection::NeedMore,
            "cut {cut}"
        );
    }
    assert_eq!(classify(H2_PREFACE), Detection::Http2);
    let mut with_settings = H2_PREFACE.to_vec();
    with_settings.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    assert_eq!(classify(&with_settings), Detection::Http2);

    let mut broken = H2_PREFACE.to_vec();
    broken[H2_PREFACE.len() - 1] = b'X';
    assert_eq!(classify(&broken), Detection::Opaque);
    // "PRO" leaves the preface for PROPFIND and stays undecided.
    assert_eq!(classify(b"PRO"), Detection::NeedMore);
    assert_eq!(classify(b"PROPFIND / HTTP/1.1\r\n"), http1("PROPFIND"));
}

// ---- TLS ----------------------------------------------------------------------------------

/// A real ClientHello, as the first flight of a rustls client.
fn client_hello(sni: &str, alpn: &[&[u8]], tls13_only: bool) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider);
    let builder = if tls13_only {
        builder.with_protocol_versions(&[&rustls::version::TLS13])
    } else {
        builder.with_safe_default_protocol_versions()
    };
    let mut cfg = builder
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

fn mesh_hello() -> Vec<u8> {
    client_hello("reviews.default", &[MESH_ALPN, b"h2"], true)
}

fn tls(sni: &str, alpn: &[&[u8]], mesh: bool) -> Detection {
    Detection::Tls(ClientHelloInfo {
        sni: Some(sni.to_string()),
        alpn: alpn.iter().map(|p| p.to_vec()).collect(),
        mesh,
    })
}

#[test]
fn mesh_client_hello_is_tls_mesh() {
    let hello = mesh_hello();
    let got = classify(&hello);
    assert_eq!(got, tls("reviews.default", &[MESH_ALPN, b"h2"], true));
    assert_eq!(DetectOutcome::of(&got), DetectOutcome::TlsMesh);
}

#[test]
fn app_client_hello_is_tls_app() {
    // Today's mesh client (only "h2") and an app's HTTP/2 over TLS look alike: not mesh.
    let hello = client_hello("Reviews.Default", &[b"h2"], true);
    let got = classify(&hello);
    assert_eq!(got, tls("reviews.default", &[b"h2"], false));
    assert_eq!(DetectOutcome::of(&got), DetectOutcome::TlsApp);

    let hello = client_hello("api.example.com", &[], false);
    assert_eq!(classify(&hello), tls("api.example.com", &[], false));

    let hello = client_hello("db.internal", &[b"http/1.1", b"weft-mesh/2"], false);
    assert_eq!(
        classify(&hello),
        tls("db.internal", &[b"http/1.1", b"weft-mesh/2"], false)
    );
}

#[test]
fn truncated_client_hello_is_need_more_at_every_byte() {
    for hello in [
        mesh_hello(),
        client_hello("x.y", &[b"h2"], false),
        fragmented(&mesh_hello(), 7),
        fragmented(&mesh_hello(), 1),
    ] {
        for cut in 0..hello.len() {
            assert_eq!(classify(&hello[..cut]), Detection::NeedMore, "cut {cut}");
        }
        assert!(matches!(classify(&hello), Detection::Tls(_)));
    }
}

/// The same hello split into handshake records of at most `size` payload bytes.
fn fragmented(single: &[u8], size: usize) -> Vec<u8> {
    let message = &single[5..];
    let mut out = Vec::new();
    for chunk in message.chunks(size) {
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        out.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

#[test]
fn client_hello_split_across_records_is_reassembled() {
    let hello = mesh_hello();
    for size in [1, 3, 4, 5, 100, hello.len() - 6] {
        assert_eq!(
            classify(&fragmented(&hello, size)),
            classify(&hello),
            "size {size}"
        );
    }
    // A record of another type between fragments is not a ClientHello.
    let mut split = fragmented(&hello, 100);
    split[105] = 0x17;
    assert_eq!(classify(&split), Detection::Opaque);
}

/// Offsets in a single-record hello (5-byte record header, 4-byte handshake header).
const SESSION_ID_LEN: usize = 5 + 4 + 2 + 32;

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[test]
fn corrupted_lengths_are_opaque() {
    let hello = mesh_hello();
    let corrupt = |at: usize, value: u8| {
        let mut h = hello.clone();
        h[at] = value;
        classify(&h)
    };
    let session_id = usize::from(hello[SESSION_ID_LEN]);
    let suites = SESSION_ID_LEN + 1 + session_id;
    let suites_len = usize::from(u16::from_be_bytes([hello[suites], hello[suites + 1]]));
    let compression = suites + 2 + suites_len;
    let extensions = compression + 1 + usize::from(hello[compression]);
    let sni = find(&hello, b"reviews.default");
    let alpn = find(&hello, MESH_ALPN);

    let cases = [
        (0, 0x17, "record type"),
        (1, 0x02, "record major version"),
        (3, 0x40, "record length over 2^14"),
        (5, 0x02, "handshake type"),
        (9, 0x02, "hello major version"),
        (SESSION_ID_LEN, 33, "session id over 32"),
        (
            suites + 1,
            hello[suites + 1] | 1,
            "odd cipher suites length",
        ),
        (suites, 0xff, "cipher suites overflow the hello"),
        (compression, 0, "no compression method"),
        (compression, 0xff, "compression overflows the hello"),
        (
            extensions + 1,
            hello[extensions + 1].wrapping_add(1),
            "extensions overflow",
        ),
        (
            extensions + 1,
            hello[extensions + 1].wrapping_sub(1),
            "trailing bytes",
        ),
        (sni - 1, 0xff, "host name overflows its list"),
        (sni - 4, 0xff, "name list overflows its extension"),
        (sni - 5, 0xff, "server_name overflows the extensions"),
        (alpn - 1, 0xff, "ALPN id overflows its list"),
        (alpn - 1, 0, "empty ALPN id"),
        (alpn - 2, 0xff, "ALPN list overflows its extension"),
    ];
    for (at, value, what) in cases {
        assert_eq!(corrupt(at, value), Detection::Opaque, "{what}");
    }
    // A handshake length that disagrees with the blocks inside it is garbage...
    assert_eq!(corrupt(7, hello[7].wrapping_add(1)), Detection::Opaque);
    // ...but record, handshake and extensions all claiming 256 more bytes could be a real,
    // longer hello still in flight: wait.
    let mut longer = hello.clone();
    for at in [3, 7, extensions] {
        longer[at] += 1;
    }
    assert_eq!(classify(&longer), Detection::NeedMore);
}

#[test]
fn every_single_byte_corruption_is_handled() {
    let hello = mesh_hello();
    let clean = classify(&hello);
    for at in 0..hello.len() {
        for value in [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff, hello[at] ^ 0x20] {
            let mut h = hello.clone();
            h[at] = value;
            let got = classify(&h);
            // Any answer but a panic; and an answer, once given, survives more bytes.
            h.extend_from_slice(b"more bytes");
            if got != Detection::NeedMore {
                assert_eq!(classify(&h), got, "at {at} = {value:#x}");
            }
        }
    }
    assert_eq!(classify(&hello), clean);
}

#[test]
fn odd_server_names_are_withheld_not_fatal() {
    let hello = mesh_hello();
    let at = find(&hello, b"reviews.default");
    let mut odd = hello.clone();
    odd[at + 3] = b'/';
    let Detection::Tls(info) = classify(&odd) else {
        panic!("still a ClientHello");
    };
    assert_eq!(info.sni, None);
    assert!(info.mesh);
}

#[test]
fn hello_without_extensions() {
    // TLS 1.2-era minimal hello: version, random, empty session id, one suite, null
    // compression, no extensions block at all.
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0u8; 32]);
    body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
    let mut hello = vec![0x16, 0x03, 0x01, 0, u8::try_from(body.len() + 4).unwrap()];
    hello.extend_from_slice(&[1, 0, 0, u8::try_from(body.len()).unwrap()]);
    hello.extend_from_slice(&body);
    assert_eq!(classify(&hello), Detection::Tls(ClientHelloInfo::default()));
}

// ---- Garbage ------------------------------------------------------------------------------

#[test]
fn other_protocols_are_opaque() {
    let mysql_greeting: &[u8] = &[
        0x4a, 0x00, 0x00, 0x00, 0x0a, b'8', b'.', b'0', b'.', b'3', b'3', 0x00, 0x08, 0x00, 0x00,
        0x00, 0x2e, 0x5b, 0x1f, 0x7a, 0x3c, 0x51, 0x68, 0x2b, 0x00, 0xff, 0xff, 0xff, 0x02, 0x00,
        0xff, 0xdf, 0x15,
    ];
    let postgres_ssl_request: &[u8] = &[0x00, 0x00, 0x00, 0x08, 0x04, 0xd2, 0x16, 0x2f];
    let mongo_op_msg: &[u8] = &[0x3c, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00];
    for bytes in [
        mysql_greeting,
        postgres_ssl_request,
        mongo_op_msg,
        b"*1\r\n$4\r\nPING\r\n", // Redis RESP: client-first, not HTTP
        b"PING\r\n",             // Redis inline
        b"GET key\r\n",          // Redis inline GET: no HTTP version
        b"get key\r\n",          // memcached
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"AMQP\x00\x00\x09\x01",
        b"220 mail.example.com ESMTP\r\n",
        b"\x80\x2e\x01\x00\x02", // SSLv2-style hello
        b"\x16\x04",
        b"\x16\x03\x05",
        b"\x16\x03\x01\x00\x00",
    ] {
        assert_eq!(
            classify(bytes),
            Detection::Opaque,
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    assert_eq!(classify(b""), Detection::NeedMore);
    assert_eq!(classify(b"GE"), Detection::NeedMore);
    assert_eq!(classify(b"\x16"), Detection::NeedMore);
    assert_eq!(classify(b"\x16\x03\x01\x02\x00\x01"), Detection::NeedMore);
}

/// SplitMix64: deterministic, dependency-free randomness for the fuzz-ish test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n).unwrap()).unwrap()
    }
}

#[test]
fn random_buffers_never_panic_and_answers_are_final() {
    let hello = mesh_hello();
    let seeds: [&[u8]; 6] = [
        b"",
        b"GET ",
        b"GET /x HTTP/1.",
        H2_PREFACE,
        &hello[..9],
        &hello[..60],
    ];
    let mut rng = Rng(0x5eed_0005);
    for _ in 0..10_000 {
        let mut buf = seeds[rng.below(seeds.len())].to_vec();
        let extra = rng.below(400);
        for _ in 0..extra {
            // Mostly bytes that matter to the parsers, so paths past the first byte run.
            let b = match rng.below(4) {
                0 => b" \r\n/HTTP1."[rng.below(10)],
                1 => u8::try_from(rng.below(4)).unwrap(),
                _ => u8::try_from(rng.below(256)).unwrap(),
            };
            buf.push(b);
        }
        let whole = classify(&buf);
        let cut = rng.below(buf.len() + 1);
        let part = classify(&buf[..cut]);
        if part != Detection::NeedMore {
            assert_eq!(whole, part, "{buf:?} cut at {cut}");
        }
    }
}

// ---- Skipping -----------------------------------------------------------------------------

#[test]
fn server_first_ports_skip_detection() {
    for port in [25, 587, 3306, 5432, 6379, 27017] {
        assert!(skip_detection(port, None, &[]), "{port}");
    }
    assert!(!skip_detection(9080, None, &[]));
    assert!(!skip_detection(5672, None, &[])); // AMQP is client-first
    assert!(skip_detection(9080, None, &[9080]));
}

#[test]
fn declared_protocols_decide_before_default_ports() {
    for name in [
        "tcp",
        "MySQL",
        "mysql-primary",
        "redis",
        "mongo",
        "example.com/postgres",
    ] {
        assert!(skip_detection(9080, Some(name), &[]), "{name}");
    }
    for name in [
        "http",
        "HTTP2",
        "grpc-web",
        "kubernetes.io/h2c",
        "http-cache",
    ] {
        assert!(!skip_detection(6379, Some(name), &[]), "{name}");
    }
    // Unknown or TLS names leave the port's default.
    assert!(skip_detection(3306, Some("primary"), &[]));
    assert!(!skip_detection(443, Some("https"), &[]));
    assert!(!skip_detection(9080, Some(""), &[]));
    // An operator's opaque port beats a port name.
    assert!(skip_detection(8080, Some("http"), &[8080]));
}

// ---- Outcomes and the metric --------------------------------------------------------------

#[test]
fn outcome_labels_and_counter() {
    let labels: Vec<_> = DetectOutcome::ALL.iter().map(|o| o.as_str()).collect();
    assert_eq!(
        labels,
        [
            "http1", "h2", "tls_mesh", "tls_app", "opaque", "timeout", "skipped"
        ]
    );
    assert_eq!(
        DetectOutcome::of(&Detection::NeedMore),
        DetectOutcome::Opaque
    );
    let metrics = crate::telemetry::Metrics::new();
    metrics.protocol_detected(DetectOutcome::Timeout);
    metrics.protocol_detected(DetectOutcome::Timeout);
    metrics.protocol_detected(DetectOutcome::H2);
    let text = metrics.encode();
    assert!(
        text.contains("weft_protocol_detect_total{outcome=\"timeout\"} 2"),
        "{text}"
    );
    assert!(text.contains("weft_protocol_detect_total{outcome=\"h2\"} 1"));
}

// ---- The async layer ----------------------------------------------------------------------

const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test(start_paused = true)]
async fn silent_client_times_out_to_opaque_exactly_on_time() {
    let (mut server, _client) = tokio::io::duplex(1024);
    let start = tokio::time::Instant::now();
    let (got, bytes, outcome) = detect(&mut server, TIMEOUT, 4096).await.unwrap();
    assert_eq!(start.elapsed(), TIMEOUT);
    assert_eq!(got, Detection::Opaque);
    assert_eq!(outcome, DetectOutcome::Timeout);
    assert!(bytes.is_empty());
}

#[tokio::test(start_paused = true)]
async fn trickling_client_gets_one_deadline_and_keeps_its_bytes() {
    let (mut server, mut client) = tokio::io::duplex(1024);
    let writer = tokio::spawn(async move {
        for b in b"GET /slow" {
            client.write_all(&[*b]).await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        client
    });
    let start = tokio::time::Instant::now();
    let (got, bytes, outcome) = detect(&mut server, TIMEOUT, 4096).await.unwrap();
    assert_eq!(start.elapsed(), TIMEOUT);
    assert_eq!((got, outcome), (Detection::Opaque, DetectOutcome::Timeout));
    assert_eq!(&bytes[..], b"GET /");
    // The rest is still in the stream, after the replayed bytes.
    let mut client = writer.await.unwrap();
    client.shutdown().await.unwrap();
    let mut io = PrefixedIo::new(bytes, server);
    let mut all = Vec::new();
    io.read_to_end(&mut all).await.unwrap();
    assert_eq!(all, b"GET /slow");
}

#[tokio::test]
async fn eof_before_any_byte_is_opaque() {
    let (mut server, client) = tokio::io::duplex(1024);
    drop(client);
    let (got, bytes, outcome) = detect(&mut server, TIMEOUT, 4096).await.unwrap();
    assert_eq!((got, outcome), (Detection::Opaque, DetectOutcome::Opaque));
    assert!(bytes.is_empty());
}

#[tokio::test]
async fn eof_mid_request_line_is_opaque_with_its_bytes() {
    let (mut server, mut client) = tokio::io::duplex(1024);
    client.write_all(b"GET / HT").await.unwrap();
    drop(client);
    let (got, bytes, _) = detect(&mut server, TIMEOUT, 4096).await.unwrap();
    assert_eq!(got, Detection::Opaque);
    assert_eq!(&bytes[..], b"GET / HT");
}

#[tokio::test]
async fn max_reached_is_opaque_and_the_rest_stays_in_the_stream() {
    let (mut server, mut client) = tokio::io::duplex(1024);
    let mut sent = b"GET /".to_vec();
    sent.resize(100, b'a');
    client.write_all(&sent).await.unwrap();
    drop(client);
    let (got, bytes, outcome) = detect(&mut server, TIMEOUT, 64).await.unwrap();
    assert_eq!((got, outcome), (Detection::Opaque, DetectOutcome::Opaque));
    assert_eq!(bytes.len(), 64);
    let mut io = PrefixedIo::new(bytes, server);
    let mut all = Vec::new();
    io.read_to_end(&mut all).await.unwrap();
    assert_eq!(all, sent);

    let (mut server, _client) = tokio::io::duplex(16);
    let (got, bytes, _) = detect(&mut server, TIMEOUT, 0).await.unwrap();
    assert_eq!((got, bytes.len()), (Detection::Opaque, 0));
}

#[tokio::test]
async fn one_byte_reads_still_detect() {
    // A 1-byte pipe hands the reader one byte at a time.
    let (mut server, mut client) = tokio::io::duplex(1);
    let hello = mesh_hello();
    let sent = hello.clone();
    let writer = tokio::spawn(async move {
        client.write_all(&sent).await.unwrap();
        client
    });
    let (got, bytes, outcome) = detect(&mut server, TIMEOUT, 16 * 1024).await.unwrap();
    assert_eq!(got, tls("reviews.default", &[MESH_ALPN, b"h2"], true));
    assert_eq!(outcome, DetectOutcome::TlsMesh);
    assert_eq!(bytes[..], hello[..]);
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn prefixed_io_replays_then_continues_and_writes_through() {
    let (mut server, mut client) = tokio::io::duplex(1024);
    client
        .write_all(b"POST /a HTTP/1.1\r\nContent-Length: 4\r\n\r\n")
        .await
        .unwrap();
    let (got, bytes, outcome) = detect(&mut server, TIMEOUT, 4096).await.unwrap();
    assert_eq!((got, outcome), (http1("POST"), DetectOutcome::Http1));
    let mut io = PrefixedIo::new(bytes, server);
    assert!(!io.prefix().is_empty());

    // A small read takes part of the prefix only.
    let mut head = [0u8; 4];
    io.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"POST");

    client.write_all(b"body").await.unwrap();
    drop(client.shutdown().await);
    let mut rest = Vec::new();
    // Writes go to the client while reads replay.
    io.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
    io.flush().await.unwrap();
    io.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b" /a HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody");
    assert!(io.prefix().is_empty());

    let mut answer = vec![0u8; 19];
    client.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer, b"HTTP/1.1 200 OK\r\n\r\n");
    let (left, _inner) = io.into_parts();
    assert!(left.is_empty());
}

#[tokio::test]
async fn h2_preface_over_a_pipe() {
    let (mut server, mut client) = tokio::io::duplex(1024);
    client.write_all(&H2_PREFACE[..10]).await.unwrap();
    let rest = tokio::spawn(async move {
        tokio::task::yield_now().await;
        client.write_all(&H2_PREFACE[10..]).await.unwrap();
        client
    });
    let (got, bytes, outcome) = detect(&mut server, TIMEOUT, 4096).await.unwrap();
    assert_eq!((got, outcome), (Detection::Http2, DetectOutcome::H2));
    assert_eq!(&bytes[..], H2_PREFACE);
    drop(rest.await.unwrap());
}
