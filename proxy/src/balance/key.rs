//! The affinity key of a request: which attribute [`HashPolicy`] names, hashed with the
//! fixed [`StableHasher`], and the cookie to set when a cookie policy with a TTL finds none.
//!
//! Reading a key allocates nothing (header values, cookies and the query string are scanned
//! in place); only generating a new cookie allocates, once per client session.

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, header};
use rand::RngExt as _;

use super::config::{CookieSpec, HashKey, HashPolicy};
use super::hash::StableHasher;

/// The request facts a hash policy may look at, borrowed from the request.
#[derive(Debug, Clone, Copy)]
pub struct HashInput<'a> {
    pub headers: &'a HeaderMap,
    /// The URI's query string, without the '?'.
    pub query: Option<&'a str>,
    /// The downstream client's address (for `use_source_ip`).
    pub source_ip: Option<IpAddr>,
}

/// What affinity asks of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affinity {
    /// The hash to pass in [`PickCtx::hash`](super::PickCtx); `None`: the request has no key
    /// and gets a random endpoint (Envoy).
    pub hash: Option<u64>,
    /// A `Set-Cookie` value to add to the response: the request had no affinity cookie and
    /// the policy has a TTL, so a value was generated (and `hash` is its hash), pinning the
    /// client's next requests to the same endpoint.
    pub set_cookie: Option<HeaderValue>,
}

/// The hash of the request's key under `policy`; `None` when the request lacks it.
pub fn hash_key(policy: &HashPolicy, req: &HashInput<'_>) -> Option<u64> {
    match &policy.key {
        HashKey::Header(name) => {
            let mut values = req.headers.get_all(name).iter().peekable();
            values.peek()?;
            let mut h = StableHasher::new();
            // Several values hash in order, each terminated by a 0 byte (which header values
            // cannot contain), so ["ab"] and ["a", "b"] differ.
            for v in values {
                h.write(v.as_bytes());
                h.write(&[0]);
            }
            Some(h.finish())
        }
        HashKey::Cookie(c) => cookie_value(req.headers, &c.name).map(hash_bytes),
        HashKey::SourceIp => req.source_ip.map(|ip| match ip.to_canonical() {
            // Canonical form: an IPv4 client seen on a dual-stack socket as ::ffff:a.b.c.d
            // hashes like the same client over IPv4.
            IpAddr::V4(v4) => hash_bytes(&v4.octets()),
            IpAddr::V6(v6) => hash_bytes(&v6.octets()),
        }),
        HashKey::QueryParam(name) => query_value(req.query?, name).map(hash_bytes),
    }
}

/// [`hash_key`], plus a generated cookie when the policy is a cookie with a TTL and the
/// request has none (Envoy's behaviour; Envoy derives the value from the chosen host, Weft
/// uses a random 64-bit value, which needs no pick-then-hash round trip).
pub fn affinity(policy: &HashPolicy, req: &HashInput<'_>, rng: &mut impl rand::Rng) -> Affinity {
    if let Some(hash) = hash_key(policy, req) {
        return Affinity {
            hash: Some(hash),
            set_cookie: None,
        };
    }
    match &policy.key {
        HashKey::Cookie(spec) if spec.ttl.is_some() => {
            let value = format!("{:016x}", rng.random::<u64>());
            let hash = hash_bytes(value.as_bytes());
            Affinity {
                hash: Some(hash),
                set_cookie: set_cookie(spec, &value),
            }
        }
        _ => Affinity {
            hash: None,
            set_cookie: None,
        },
    }
}

/// `Set-Cookie` for `spec` with `value`: `name=value[; Path=p][; Max-Age=s][; attr[=v]]...`.
/// `None` only if the result is not a valid header value, which the config validation rules
/// out.
pub fn set_cookie(spec: &CookieSpec, value: &str) -> Option<HeaderValue> {
    let mut s = format!("{}={}", spec.name, value);
    if let Some(path) = &spec.path {
        s.push_str("; Path=");
        s.push_str(path);
    }
    if let Some(ttl) = spec.ttl.filter(|t| !t.is_zero()) {
        // Max-Age counts whole seconds; round a sub-second TTL up rather than to 0, which
        // would delete the cookie at once.
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        s.push_str(&format!("; Max-Age={secs}"));
    }
    for (name, v) in &spec.attributes {
        s.push_str("; ");
        s.push_str(name);
        if !v.is_empty() {
            s.push('=');
            s.push_str(v);
        }
    }
    HeaderValue::try_from(s).ok()
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = StableHasher::new();
    h.write(bytes);
    h.finish()
}

/// The value of cookie `name` in the request's `Cookie` headers (HTTP/2 may split them into
/// several), surrounding double quotes removed (RFC 6265 allows them).
fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            let (k, v) = (&pair[..eq], &pair[eq + 1..]);
            if k.trim_ascii() != name.as_bytes() {
                return None;
            }
            let v = v.trim_ascii();
            Some(
                v.strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(v),
            )
        })
}

/// The raw value of the first `name=...` (or bare `name`, value "") in a query string.
fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q [u8]> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v.as_bytes())
    })
}
