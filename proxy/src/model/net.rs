//! [`IpNet`]: one entry of a service's virtual addresses (`Service.addresses`), an IP address
//! or a CIDR block, and the address index the snapshot builds from them
//! ([`AddressIndex`], behind `Snapshot::service_for_addr`).
//!
//! A few dozen lines rather than the `ipnet` crate: the proxy needs parsing, masking and
//! `contains`, nothing else, and the model is meant to become its own small crate.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use serde::{Serialize, Serializer};

use super::types::Service;

/// An IP prefix: `addr` with its host bits cleared, and the prefix length. A bare address is
/// a prefix of full length (32 or 128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `"10.0.0.1"`, `"2001:db8::1"`, `"10.1.0.0/16"` or `"2001:db8::/64"`; the error
    /// says what is wrong.
    ///
    /// Host bits are cleared rather than refused (`10.1.2.3/16` is `10.1.0.0/16`), as Envoy
    /// does and as Istio's validation allows, so nothing the control plane accepts is NACKed
    /// here. An IPv4-mapped IPv6 prefix (`::ffff:10.0.0.0/104`) becomes the IPv4 one, because
    /// lookups canonicalize the destination the same way (a dual-stack socket reports an IPv4
    /// peer as `::ffff:a.b.c.d`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr_s, prefix_s) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr_s
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let max = max_prefix(addr);
        let prefix = match prefix_s {
            None => max,
            // Digits only: `u8::from_str` would also take `+8`.
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                match p.parse::<u8>() {
                    Ok(n) if n <= max => n,
                    _ => return Err(format!("{s:?}: prefix length {p:?} is not 0-{max}")),
                }
            }
            Some(p) => return Err(format!("{s:?}: prefix length {p:?} is not 0-{max}")),
        };
        Ok(Self::new(addr, prefix))
    }

    /// `addr/prefix` with host bits cleared; `prefix` is clamped to the family's length.
    pub fn new(addr: IpAddr, prefix: u8) -> Self {
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        let prefix = prefix.min(max_prefix(addr));
        Self {
            addr: mask(addr, prefix),
            prefix,
        }
    }

    /// The network address (host bits cleared).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    /// A single address (`/32` or `/128`).
    pub fn is_host(&self) -> bool {
        self.prefix == max_prefix(self.addr)
    }

    /// Whether `ip` is inside this prefix; never across families (`ip` is expected
    /// canonical, see [`IpAddr::to_canonical`]).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(ip, self.prefix) == self.addr
            }
            _ => false,
        }
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    // `checked_shl` gives None for a shift by the full width (prefix 0): no bits kept.
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

impl fmt::Display for IpNet {
    /// A bare address for a single host, `addr/prefix` otherwise (host bits cleared).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

impl Serialize for IpNet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Services by virtual address, built once per snapshot so that a lookup allocates nothing:
/// single addresses in a hash map, prefixes in a short list scanned in order.
#[derive(Debug, Default)]
pub(crate) struct AddressIndex {
    /// Single addresses -> the services claiming them, in service-name order.
    exact: HashMap<IpAddr, Vec<Arc<Service>>>,
    /// Prefixes, longest first, then in service-name order: the first that contains the
    /// address (and has the port) is the most specific.
    prefixes: Vec<(IpNet, Arc<Service>)>,
}

impl AddressIndex {
    /// Indexes `services`, which must come in name order (the snapshot's `BTreeMap`): ties
    /// between services claiming the same address then go to the first name, whatever the
    /// hash order.
    pub(crate) fn build<'a>(services: impl IntoIterator<Item = &'a Arc<Service>>) -> Self {
        let mut index = Self::default();
        for svc in services {
            for net in &svc.addresses {
                if net.is_host() {
                    let claims = index.exact.entry(net.addr()).or_default();
                    // The same address written twice by one service is one claim.
                    if !claims.last().is_some_and(|s| Arc::ptr_eq(s, svc)) {
                        claims.push(svc.clone());
                    }
                } else {
                    index.prefixes.push((*net, svc.clone()));
                }
            }
        }
        // Stable, so equal prefixes keep service-name order.
        index
            .prefixes
            .sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        index
    }

    /// The service whose addresses hold `ip` and that serves `port`: a single address first,
    /// then the longest prefix. As Envoy matches filter chains, the port narrows the
    /// candidates before the address does: a longer prefix whose service lacks the port does
    /// not hide a shorter one that has it.
    pub(crate) fn lookup(&self, ip: IpAddr, port: u16) -> Option<&Arc<Service>> {
        let ip = ip.to_canonical();
        if let Some(svc) = self
            .exact
            .get(&ip)
            .and_then(|claims| claims.iter().find(|s| s.has_port(port)))
        {
            return Some(svc);
        }
        self.prefixes
            .iter()
            .find(|(net, svc)| net.contains(ip) && svc.has_port(port))
            .map(|(_, svc)| svc)
    }
}
