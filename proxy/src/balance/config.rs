//! Load-balancing and outlier-detection settings, validated from the wire messages
//! (`weft_api::mesh::{LoadBalancer, ConsistentHash, Warmup, OutlierDetection}`).
//!
//! Everything that could make the request path fail later (a header name that is not a header
//! name, a cookie attribute that cannot go into `Set-Cookie`, a Maglev table size that is not a
//! prime) is rejected here, with the field path and the reason, so the xDS applier can NACK it.
//! Defaults the translation may leave out are filled with Istio's (or Envoy's, where Istio is
//! silent) and documented on each field.

use std::collections::BTreeMap;
use std::time::Duration;

use http::HeaderName;
use serde::{Serialize, Serializer};
use weft_api::mesh as pb;

/// Ring size when the config says 0 (Envoy's `minimum_ring_size` default).
pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
/// Largest ring we build (Envoy's `maximum_ring_size` default, 8M points); a larger minimum is
/// refused rather than silently using hundreds of megabytes per cluster.
pub const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
/// Maglev table size when the config says 0 (Envoy's default).
pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65_537;
/// Largest Maglev table accepted (Envoy's limit, 5000011, itself a prime).
pub const MAX_MAGLEV_TABLE_SIZE: u64 = 5_000_011;
/// Istio's default outlier-detection sweep interval.
pub const DEFAULT_OUTLIER_INTERVAL: Duration = Duration::from_secs(10);
/// Istio's default base ejection time.
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
/// Envoy's default `max_ejection_time`: the cap on one ejection unless the base is longer.
pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// How a cluster's endpoints are chosen: the resolved `DestinationRule.trafficPolicy.loadBalancer`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LbConfig {
    /// The simple algorithm; ignored when `consistent_hash` is set (Istio's rule).
    pub simple: Simple,
    /// Session affinity; replaces `simple` when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<HashPolicy>,
    /// Slow start for new endpoints; applies to ROUND_ROBIN (and PASSTHROUGH, which balances as
    /// round robin) and LEAST_REQUEST only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup: Option<WarmupConfig>,
}

/// The simple algorithms of Istio's `LoadBalancerSettings.SimpleLB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Simple {
    /// Weighted round robin over a cursor owned by the cluster's balancer.
    RoundRobin,
    /// Weighted random.
    Random,
    /// Power of two choices on a peak-EWMA latency cost (Linkerd's balancer; Envoy's
    /// LEAST_REQUEST compares in-flight counts only, ours compares in-flight counts times
    /// latency). Istio's default since 1.14, and ours for UNSPECIFIED.
    LeastRequest,
    /// Istio forwards to the address the client asked for. When the integrator has no
    /// original destination to forward to and asks the balancer anyway, it gets round robin
    /// (what Weft's router already does for PASSTHROUGH).
    Passthrough,
}

/// Session affinity: what is hashed and how the hash maps to an endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HashPolicy {
    pub key: HashKey,
    pub algorithm: HashAlgorithm,
}

/// The request attribute hashed for affinity.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashKey {
    /// Every value of this header, in order.
    Header(#[serde(serialize_with = "ser_header_name")] HeaderName),
    /// The value of this cookie; with a `ttl` the proxy sets it when the request lacks it.
    Cookie(CookieSpec),
    /// The client's source address (the IP only, not the port).
    SourceIp,
    /// The raw (not percent-decoded) value of the first query parameter with this name.
    QueryParam(String),
}

/// Istio's `consistentHash.httpCookie`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CookieSpec {
    pub name: String,
    /// `Path` attribute of a generated cookie; `None`: no `Path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `None`: the proxy never sets the cookie and hashes only requests that carry it (Envoy).
    /// `Some(ZERO)`: a session cookie (no `Max-Age`). Otherwise `Max-Age` in whole seconds.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_opt_duration"
    )]
    pub ttl: Option<Duration>,
    /// Extra attributes, name -> value (empty value: a flag such as `HttpOnly`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// The consistent-hashing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashAlgorithm {
    /// Ketama-style ring (Envoy's `RING_HASH`); at least `min_ring_size` points.
    RingHash { min_ring_size: u64 },
    /// Google's Maglev lookup table; `table_size` is a prime.
    Maglev { table_size: u64 },
}

/// Slow start (Istio `warmup`, Envoy `slow_start_config`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WarmupConfig {
    /// Length of the ramp; always > 0 (a zero window is "no warmup", `None` in [`LbConfig`]).
    #[serde(serialize_with = "ser_duration")]
    pub duration: Duration,
    /// Starting share of the weight, 0-100.
    pub minimum_percent: f64,
    /// Curve exponent, > 0: 1 is linear, larger ramps faster at first.
    pub aggression: f64,
}

/// Passive health checking (`DestinationRule.trafficPolicy.outlierDetection`), every field
/// of the wire message with durations resolved. Thresholds of 0 turn their check off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutlierConfig {
    /// Consecutive 5xx responses that eject (local-origin failures count too unless split).
    pub consecutive_5xx: u32,
    /// Consecutive 502/503/504 responses that eject (local-origin failures count too unless
    /// split).
    pub consecutive_gateway: u32,
    /// Consecutive local-origin failures that eject; used only when split.
    pub consecutive_local_origin: u32,
    /// Count local-origin failures (connect failure, reset, timeout) apart from responses.
    pub split_external_local_origin_errors: bool,
    /// Weft un-ejects lazily at expiry (see the `outlier` module); the interval only paces
    /// how fast a returned endpoint's ejection multiplier decays. Always > 0.
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
    /// One ejection lasts `base_ejection_time * times_ejected`, capped at
    /// `max(base_ejection_time, 300s)`.
    #[serde(serialize_with = "ser_duration")]
    pub base_ejection_time: Duration,
    /// 0-100: share of endpoints that may be ejected at once (one always may).
    pub max_ejection_percent: u32,
    /// 0-100: below this share of healthy endpoints, ejections are ignored (panic mode).
    pub min_health_percent: u32,
}

impl Default for LbConfig {
    /// What a cluster without a `loadBalancer` block gets: Istio's default, LEAST_REQUEST.
    fn default() -> Self {
        Self {
            simple: Simple::LeastRequest,
            consistent_hash: None,
            warmup: None,
        }
    }
}

impl LbConfig {
    /// Validates the wire message. Errors name the field (relative to `LoadBalancer`) and why.
    ///
    /// `simple: UNSPECIFIED` (and an enum value this proxy does not know, from a newer control
    /// plane) becomes LEAST_REQUEST, Istio's default since 1.14. mesh.proto's comment on
    /// UNSPECIFIED ("round robin until the load-balancing issue...") predates this module.
    pub fn from_proto(lb: &pb::LoadBalancer) -> Result<Self, String> {
        use pb::load_balancer::Simple as S;
        let simple = match S::try_from(lb.simple).unwrap_or(S::Unspecified) {
            S::RoundRobin => Simple::RoundRobin,
            S::Random => Simple::Random,
            S::Passthrough => Simple::Passthrough,
            S::LeastRequest | S::Unspecified => Simple::LeastRequest,
        };
        let consistent_hash = lb
            .consistent_hash
            .as_ref()
            .map(HashPolicy::from_proto)
            .transpose()
            .map_err(|e| format!("consistent_hash.{e}"))?;
        let warmup = match &lb.warmup {
            None => None,
            Some(w) => WarmupConfig::from_proto(w).map_err(|e| format!("warmup.{e}"))?,
        };
        Ok(Self {
            simple,
            consistent_hash,
            warmup,
        })
    }
}

impl HashPolicy {
    /// Validates a `ConsistentHash`. Errors are relative to it (`maglev.table_size: ...`).
    pub fn from_proto(ch: &pb::ConsistentHash) -> Result<Self, String> {
        use pb::consistent_hash::{Algorithm, HashKey as K};
        let key = match &ch.hash_key {
            Some(K::HttpHeaderName(name)) => HashKey::Header(
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("http_header_name: {name:?} is not a header name"))?,
            ),
            Some(K::HttpCookie(c)) => {
                HashKey::Cookie(CookieSpec::from_proto(c).map_err(|e| format!("http_cookie.{e}"))?)
            }
            Some(K::UseSourceIp(true)) => HashKey::SourceIp,
            Some(K::HttpQueryParameterName(q)) if !q.is_empty() => HashKey::QueryParam(q.clone()),
            Some(K::HttpQueryParameterName(_)) => {
                return Err("http_query_parameter_name: must not be empty".into());
            }
            // `use_source_ip: false` names no key at all, like an unset oneof.
            Some(K::UseSourceIp(false)) | None => {
                return Err(
                    "hash_key: one of http_header_name, http_cookie, use_source_ip or \
                     http_query_parameter_name must be set"
                        .into(),
                );
            }
        };
        let algorithm = match &ch.algorithm {
            None => HashAlgorithm::RingHash {
                min_ring_size: DEFAULT_MIN_RING_SIZE,
            },
            Some(Algorithm::RingHash(r)) => {
                let min_ring_size = match r.minimum_ring_size {
                    0 => DEFAULT_MIN_RING_SIZE,
                    n if n > MAX_RING_SIZE => {
                        return Err(format!(
                            "ring_hash.minimum_ring_size: {n} is over the maximum, {MAX_RING_SIZE}"
                        ));
                    }
                    n => n,
                };
                HashAlgorithm::RingHash { min_ring_size }
            }
            Some(Algorithm::Maglev(m)) => {
                let table_size = match m.table_size {
                    0 => DEFAULT_MAGLEV_TABLE_SIZE,
                    n if n > MAX_MAGLEV_TABLE_SIZE => {
                        return Err(format!(
                            "maglev.table_size: {n} is over the maximum, {MAX_MAGLEV_TABLE_SIZE}"
                        ));
                    }
                    // Maglev's permutations (offset + j*skip mod M) visit every slot only
                    // when M is prime; otherwise population may never fill the table.
                    n if !is_prime(n) => {
                        return Err(format!(
                            "maglev.table_size: {n} is not a prime (e.g. 65537, 131071)"
                        ));
                    }
                    n => n,
                };
                HashAlgorithm::Maglev { table_size }
            }
        };
        Ok(Self { key, algorithm })
    }
}

impl CookieSpec {
    fn from_proto(c: &pb::consistent_hash::HttpCookie) -> Result<Self, String> {
        // Everything here ends up in a Set-Cookie header we build on the response path, where
        // a failure could only be swallowed; so the grammar is enforced now.
        if c.name.is_empty() || !c.name.bytes().all(is_tchar) {
            return Err(format!(
                "name: {:?} is not a cookie name (RFC 6265 token)",
                c.name
            ));
        }
        let path = match c.path.as_str() {
            "" => None,
            p if p.bytes().all(is_attr_char) => Some(p.to_owned()),
            p => return Err(format!("path: {p:?} has a ';' or a control character")),
        };
        let ttl = match &c.ttl {
            None => None,
            Some(d) => Some(
                Duration::try_from(*d)
                    .map_err(|_| format!("ttl: {d:?} is not a valid non-negative duration"))?,
            ),
        };
        for (name, value) in &c.attributes {
            if name.is_empty() || !name.bytes().all(is_tchar) {
                return Err(format!("attributes: {name:?} is not an attribute name"));
            }
            if !value.bytes().all(is_attr_char) {
                return Err(format!(
                    "attributes[{name}]: {value:?} has a ';' or a control character"
                ));
            }
        }
        Ok(Self {
            name: c.name.clone(),
            path,
            ttl,
            attributes: c.attributes.clone(),
        })
    }
}

impl WarmupConfig {
    /// `Ok(None)` when the window is unset or zero: Envoy treats a zero slow-start window as
    /// "off", and an unset one has nothing to ramp over.
    pub fn from_proto(w: &pb::Warmup) -> Result<Option<Self>, String> {
        let duration = match &w.duration {
            None => return Ok(None),
            Some(d) => Duration::try_from(*d)
                .map_err(|_| format!("duration: {d:?} is not a valid non-negative duration"))?,
        };
        if duration.is_zero() {
            return Ok(None);
        }
        let minimum_percent = w.minimum_percent;
        if !(0.0..=100.0).contains(&minimum_percent) {
            return Err(format!(
                "minimum_percent: {minimum_percent} is not within 0-100"
            ));
        }
        let aggression = w.aggression;
        // 1/aggression is the exponent: 0 divides by zero, negatives invert the ramp.
        if !(aggression.is_finite() && aggression > 0.0) {
            return Err(format!("aggression: {aggression} must be a number > 0"));
        }
        Ok(Some(Self {
            duration,
            minimum_percent,
            aggression,
        }))
    }
}

impl OutlierConfig {
    /// Validates an `OutlierDetection`. The translation fills Istio's defaults; unset
    /// durations here get them too (interval 10s, base ejection time 30s).
    pub fn from_proto(od: &pb::OutlierDetection) -> Result<Self, String> {
        let duration = |field: &str, d: Option<&prost_types::Duration>, default: Duration| match d {
            None => Ok(default),
            Some(d) => Duration::try_from(*d)
                .map_err(|_| format!("{field}: {d:?} is not a valid non-negative duration")),
        };
        let interval = duration("interval", od.interval.as_ref(), DEFAULT_OUTLIER_INTERVAL)?;
        if interval.is_zero() {
            return Err("interval: must be greater than zero".into());
        }
        let base_ejection_time = duration(
            "base_ejection_time",
            od.base_ejection_time.as_ref(),
            DEFAULT_BASE_EJECTION_TIME,
        )?;
        let percent = |field: &str, v: u32| {
            if v > 100 {
                Err(format!("{field}: {v} is not within 0-100"))
            } else {
                Ok(v)
            }
        };
        Ok(Self {
            consecutive_5xx: od.consecutive_5xx_errors,
            consecutive_gateway: od.consecutive_gateway_errors,
            consecutive_local_origin: od.consecutive_local_origin_failures,
            split_external_local_origin_errors: od.split_external_local_origin_errors,
            interval,
            base_ejection_time,
            max_ejection_percent: percent("max_ejection_percent", od.max_ejection_percent)?,
            min_health_percent: percent("min_health_percent", od.min_health_percent)?,
        })
    }

    /// How long the `times`-th ejection lasts (`times` >= 1): base * times, capped at
    /// max(base, 300s) (Envoy's `max_ejection_time`, which never shortens the base itself).
    pub fn ejection_time(&self, times: u32) -> Duration {
        let cap = self.base_ejection_time.max(MAX_EJECTION_TIME);
        self.base_ejection_time
            .checked_mul(times.max(1))
            .map_or(cap, |d| d.min(cap))
    }
}

/// Trial division: table sizes are at most ~5M, so this is a few thousand divisions, once per
/// config.
pub(crate) fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u64;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// RFC 7230 `tchar`: what a cookie name (RFC 6265 `token`) and attribute name may hold.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What an attribute value may hold (RFC 6265 `av-octet`): any visible character or space but
/// ';'.
fn is_attr_char(b: u8) -> bool {
    (0x20..0x7f).contains(&b) && b != b';'
}

fn ser_header_name<S: Serializer>(h: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(h.as_str())
}

// Durations as "<n>ms" strings, like the rest of /config_dump (model's `opt_duration`).
fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}

fn ser_opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}
