//! Just enough of a TLS ClientHello (RFC 8446 §4.1.2, the same layout since TLS 1.0) to read
//! the SNI and the ALPN list: record header, handshake header, then skip the session id,
//! cipher suites and compression methods, and walk the extensions.
//!
//! Every length is checked against two bounds: the enclosing block's declared length (a
//! length that overflows it is garbage: [`Detection::Opaque`]) and the bytes received so far
//! (a read past them is a truncated hello: [`Detection::NeedMore`]). A prefix of a valid
//! hello is therefore always `NeedMore`, and corrupt input is rejected as soon as a length
//! contradicts its block, without reading (or panicking) past the buffer.

use std::borrow::Cow;

use super::{ClientHelloInfo, Detection, MESH_ALPN};

/// TLSPlaintext.length may not exceed 2^14 (RFC 8446 §5.1).
const MAX_RECORD: usize = 1 << 14;
/// A ClientHello longer than this is not worth waiting for: real ones, post-quantum key
/// shares included, stay under a few KiB.
const MAX_HELLO: usize = 1 << 16;
const RECORD_HEADER: usize = 5;
const HANDSHAKE_HEADER: usize = 4;
const CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;

/// Why parsing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The bytes so far are a valid prefix.
    More,
    /// A byte or a length no ClientHello has.
    Invalid,
}

type Parse<T> = Result<T, Stop>;

/// `prefix` starts with a handshake record's type byte.
pub(super) fn classify(prefix: &[u8]) -> Detection {
    match client_hello(prefix) {
        Ok(info) => Detection::Tls(info),
        Err(Stop::More) => Detection::NeedMore,
        Err(Stop::Invalid) => Detection::Opaque,
    }
}

fn client_hello(prefix: &[u8]) -> Parse<ClientHelloInfo> {
    let message = handshake_message(prefix)?;
    let (&kind, rest) = message.split_first().ok_or(Stop::More)?;
    if kind != CLIENT_HELLO {
        return Err(Stop::Invalid);
    }
    let [a, b, c] = *rest.get(..3).ok_or(Stop::More)? else {
        return Err(Stop::More);
    };
    let len = (usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c);
    if len > MAX_HELLO {
        return Err(Stop::Invalid);
    }
    let body = &message[HANDSHAKE_HEADER..];
    let body = &body[..body.len().min(len)];
    parse_body(Reader::new(body, len))
}

/// One record's header, checked as far as it was received.
struct Record<'a> {
    /// The payload bytes received (at most the declared length).
    payload: &'a [u8],
    /// The declared payload length.
    len: usize,
}

fn record(bytes: &[u8]) -> Parse<Record<'_>> {
    // Check what arrived before asking for more, so garbage is rejected early.
    if bytes.first().is_some_and(|&t| t != super::TLS_HANDSHAKE) {
        return Err(Stop::Invalid);
    }
    if bytes.get(1).is_some_and(|&major| major != 3) {
        return Err(Stop::Invalid);
    }
    // Minor 0 (SSL 3.0) to 4: TLS 1.3 clients send 1 or 3 here (legacy_record_version).
    if bytes.get(2).is_some_and(|&minor| minor > 4) {
        return Err(Stop::Invalid);
    }
    let [_, _, _, hi, lo] = *bytes.get(..RECORD_HEADER).ok_or(Stop::More)? else {
        return Err(Stop::More);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    // Zero-length handshake fragments are forbidden (RFC 8446 §5.1).
    if len == 0 || len > MAX_RECORD {
        return Err(Stop::Invalid);
    }
    let payload = &bytes[RECORD_HEADER..];
    Ok(Record {
        payload: &payload[..payload.len().min(len)],
        len,
    })
}

/// The handshake message's bytes received so far. Borrowed when the message sits in the
/// first record (every client we know); copied only when a client split it across records,
/// which TLS allows.
fn handshake_message(prefix: &[u8]) -> Parse<Cow<'_, [u8]>> {
    let first = record(prefix)?;
    if let Some(total) = message_len(first.payload) {
        if total <= first.len {
            return Ok(Cow::Borrowed(first.payload));
        }
    } else if first.payload.len() < first.len {
        // The handshake header is still in flight inside this record.
        return Ok(Cow::Borrowed(first.payload));
    }
    let mut message = Vec::with_capacity(prefix.len());
    let mut offset = 0;
    while offset < prefix.len() {
        let rec = record(&prefix[offset..])?;
        message.extend_from_slice(rec.payload);
        if rec.payload.len() < rec.len {
            break;
        }
        if message_len(&message).is_some_and(|total| message.len() >= total) {
            break;
        }
        offset += RECORD_HEADER + rec.len;
    }
    Ok(Cow::Owned(message))
}

/// The whole handshake message's length (header included), once its header is known.
fn message_len(bytes: &[u8]) -> Option<usize> {
    let [_, a, b, c] = *bytes.get(..HANDSHAKE_HEADER)? else {
        return None;
    };
    Some(HANDSHAKE_HEADER + ((usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c)))
}

fn parse_body(mut hello: Reader<'_>) -> Parse<ClientHelloInfo> {
    let [major, _minor] = hello.array()?;
    if major != 3 {
        return Err(Stop::Invalid);
    }
    hello.take(32)?; // random
    let session_id = usize::from(hello.u8()?);
    if session_id > 32 {
        return Err(Stop::Invalid);
    }
    hello.take(session_id)?;
    let suites = usize::from(hello.u16()?);
    if suites < 2 || suites % 2 != 0 {
        return Err(Stop::Invalid);
    }
    hello.take(suites)?;
    let compression = usize::from(hello.u8()?);
    if compression == 0 {
        return Err(Stop::Invalid);
    }
    hello.take(compression)?;
    if hello.is_done() && hello.received_all() {
        // A TLS 1.2 hello may have no extensions at all.
        return Ok(ClientHelloInfo::default());
    }
    let len = usize::from(hello.u16()?);
    let mut extensions = hello.block(len)?;
    if !hello.is_done() {
        return Err(Stop::Invalid);
    }

    // Slices until the hello is complete, so a truncated one allocates nothing.
    let mut sni: Option<Option<&[u8]>> = None;
    let mut alpn: Option<Reader<'_>> = None;
    while !extensions.is_done() {
        let kind = extensions.u16()?;
        let len = usize::from(extensions.u16()?);
        let mut data = extensions.block(len)?;
        match kind {
            // A repeated extension is a protocol error (RFC 8446 §4.2).
            EXT_SERVER_NAME if sni.is_some() => return Err(Stop::Invalid),
            EXT_ALPN if alpn.is_some() => return Err(Stop::Invalid),
            EXT_SERVER_NAME => sni = Some(server_name(&mut data)?),
            EXT_ALPN => alpn = Some(alpn_list(&mut data)?),
            _ => {}
        }
    }

    // Extensions the walk skipped may still be in flight (typically the key share, last);
    // a hello is only complete with every declared byte.
    if !hello.received_all() {
        return Err(Stop::More);
    }
    let sni = sni.flatten().map(|name| {
        // `server_name` checked the name is ASCII.
        String::from_utf8_lossy(name).to_ascii_lowercase()
    });
    let mut protocols = Vec::new();
    if let Some(mut list) = alpn {
        while !list.is_done() {
            let len = usize::from(list.u8()?);
            protocols.push(list.take(len)?.to_vec());
        }
    }
    let mesh = protocols.iter().any(|p| p == MESH_ALPN);
    Ok(ClientHelloInfo {
        sni,
        alpn: protocols,
        mesh,
    })
}

/// The `server_name` extension (RFC 6066 §3): the first `host_name` entry, if it looks like
/// a DNS name; other name types are skipped.
fn server_name<'a>(data: &mut Reader<'a>) -> Parse<Option<&'a [u8]>> {
    let len = usize::from(data.u16()?);
    let mut list = data.block(len)?;
    if !data.is_done() {
        return Err(Stop::Invalid);
    }
    let mut host = None;
    while !list.is_done() {
        let kind = list.u8()?;
        let len = usize::from(list.u16()?);
        let name = list.take(len)?;
        if kind == 0 && host.is_none() {
            host = Some(name);
        }
    }
    // An odd name is still TLS; only the name is withheld, so routing never sees it.
    Ok(host.filter(|n| is_dns_name(n)))
}

fn is_dns_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// The ALPN extension (RFC 7301 §3.1), validated now, read into owned IDs at the end.
fn alpn_list<'a>(data: &mut Reader<'a>) -> Parse<Reader<'a>> {
    let len = usize::from(data.u16()?);
    if len < 2 {
        return Err(Stop::Invalid);
    }
    let list = data.block(len)?;
    if !data.is_done() {
        return Err(Stop::Invalid);
    }
    let mut check = list.clone();
    while !check.is_done() {
        let id = usize::from(check.u8()?);
        if id == 0 {
            return Err(Stop::Invalid);
        }
        check.take(id)?;
    }
    Ok(list)
}

/// A cursor over a block whose declared end (`end`) may lie past the bytes received
/// (`bytes.len()`). Positions are absolute within the outermost block.
#[derive(Debug, Clone)]
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    fn new(received: &'a [u8], declared: usize) -> Self {
        Reader {
            bytes: &received[..received.len().min(declared)],
            pos: 0,
            end: declared,
        }
    }

    fn is_done(&self) -> bool {
        self.pos >= self.end
    }

    /// Every declared byte of this block arrived.
    fn received_all(&self) -> bool {
        self.bytes.len() >= self.end
    }

    /// Claims the next `n` bytes: past the block's end is invalid, past the bytes received
    /// is a truncation.
    fn advance(&mut self, n: usize) -> Parse<usize> {
        let start = self.pos;
        let stop = start.checked_add(n).ok_or(Stop::Invalid)?;
        if stop > self.end {
            return Err(Stop::Invalid);
        }
        self.pos = stop;
        Ok(start)
    }

    fn take(&mut self, n: usize) -> Parse<&'a [u8]> {
        let start = self.advance(n)?;
        self.bytes.get(start..self.pos).ok_or(Stop::More)
    }

    fn array<const N: usize>(&mut self) -> Parse<[u8; N]> {
        let bytes = self.take(N)?;
        <[u8; N]>::try_from(bytes).map_err(|_| Stop::Invalid)
    }

    fn u8(&mut self) -> Parse<u8> {
        let [b] = self.array()?;
        Ok(b)
    }

    fn u16(&mut self) -> Parse<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// A nested block of `len` declared bytes, skipped in `self`; its reads past the bytes
    /// received are truncations, past `len` invalid.
    fn block(&mut self, len: usize) -> Parse<Reader<'a>> {
        let start = self.advance(len)?;
        let received = self.bytes.len().min(self.pos);
        Ok(Reader {
            bytes: &self.bytes[..received],
            pos: start,
            end: self.pos,
        })
    }
}
