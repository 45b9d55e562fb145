//! What `weft-proxy init` captures: [`RawOptions`] (the flags, spelled like Istio's
//! `traffic.sidecar.istio.io/*` annotations) validated into [`InitOptions`]. Pure.
//!
//! List syntax (as Istio's annotations): comma-separated, spaces allowed around entries;
//! `*` alone means "all"; the empty string means "none". Ports are 1-65535; CIDRs are
//! `addr/prefix` with no host bits set, or a bare address (a /32 or /128).

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The proxy's UID (DESIGN.md: "The proxy runs as UID 1337").
pub const DEFAULT_PROXY_UID: u32 = 1337;
pub const DEFAULT_INBOUND_PORT: u16 = 15006;
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;

/// Ports of the proxy that are never captured inbound, whatever the options say (the
/// configured inbound and outbound ports are added to these). An explicit list rather than
/// 15000-15099 so applications keep the rest of that range: 15001 outbound, 15006 inbound,
/// 15008 the reserved mesh tunnel, 15020 admin, 15021 and 15090 (health and Prometheus ports
/// Istio-trained tooling probes on a sidecar).
pub const PROXY_PORTS: [u16; 6] = [15001, 15006, 15008, 15020, 15021, 15090];

/// The flags as given: numbers already parsed, lists still in annotation syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawOptions {
    pub proxy_uid: u32,
    /// Defaults to `proxy_uid` (the proxy image runs as 1337:1337).
    pub proxy_gid: Option<u32>,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub include_inbound_ports: String,
    pub exclude_inbound_ports: String,
    pub exclude_outbound_ports: String,
    pub include_outbound_ip_ranges: String,
    pub exclude_outbound_ip_ranges: String,
    pub ipv6: bool,
}

impl Default for RawOptions {
    fn default() -> Self {
        RawOptions {
            proxy_uid: DEFAULT_PROXY_UID,
            proxy_gid: None,
            inbound_port: DEFAULT_INBOUND_PORT,
            outbound_port: DEFAULT_OUTBOUND_PORT,
            include_inbound_ports: "*".into(),
            exclude_inbound_ports: String::new(),
            exclude_outbound_ports: String::new(),
            include_outbound_ip_ranges: "*".into(),
            exclude_outbound_ip_ranges: String::new(),
            ipv6: true,
        }
    }
}

/// Which inbound destination ports are redirected to the inbound listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundPorts {
    /// `*`: every port except these (and the proxy's own).
    All { except: Vec<u16> },
    /// Only these ports.
    Only(Vec<u16>),
    /// Inbound capture off (`includeInboundPorts: ""`).
    None,
}

/// Which outbound destinations are redirected to the outbound listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundRanges {
    /// `*`: every destination (minus the exclusions).
    All,
    /// Only destinations inside these ranges (minus the exclusions); a family with no range
    /// here has no outbound capture.
    Only(Vec<Cidr>),
    /// Outbound capture off (`includeOutboundIPRanges: ""`).
    None,
}

/// Validated options: everything [`super::rules::plan`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    pub inbound_port: u16,
    pub outbound_port: u16,
    /// Never captured inbound: [`PROXY_PORTS`] plus the two listener ports, sorted.
    pub proxy_ports: Vec<u16>,
    pub inbound: InboundPorts,
    pub exclude_outbound_ports: Vec<u16>,
    pub include_outbound: OutboundRanges,
    pub exclude_outbound_ranges: Vec<Cidr>,
    pub ipv6: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        // The defaults are valid by construction; the fallback only keeps this total.
        RawOptions::default()
            .validate()
            .unwrap_or_else(|_| InitOptions {
                proxy_uid: DEFAULT_PROXY_UID,
                proxy_gid: DEFAULT_PROXY_UID,
                inbound_port: DEFAULT_INBOUND_PORT,
                outbound_port: DEFAULT_OUTBOUND_PORT,
                proxy_ports: PROXY_PORTS.to_vec(),
                inbound: InboundPorts::All { except: Vec::new() },
                exclude_outbound_ports: Vec::new(),
                include_outbound: OutboundRanges::All,
                exclude_outbound_ranges: Vec::new(),
                ipv6: true,
            })
    }
}

/// An IP prefix with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn is_v6(&self) -> bool {
        self.addr.is_ipv6()
    }

    /// Parses `addr/prefix` or a bare address; the error says what is wrong.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr_s, prefix_s) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr_s
            .parse()
            .map_err(|_| format!("{addr_s:?} is not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_s {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("prefix length {p:?} is not 0-{max}")),
            },
        };
        let masked = mask(addr, prefix);
        if masked != addr {
            // iptables would silently widen it and nft refuses it; neither is what was meant
            // for sure, so say it.
            return Err(format!("host bits set; did you mean {masked}/{prefix}?"));
        }
        Ok(Cidr { addr, prefix })
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

impl fmt::Display for Cidr {
    /// Always with the prefix, as `iptables-save` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A rejected option: names the flag (and its annotation), the value and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error("{flag}: {value:?} is not a port (1-65535)")]
    BadPort { flag: &'static str, value: String },
    #[error("{flag}: {value:?} is not a CIDR: {reason}")]
    BadCidr {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("{flag}: empty entry in {value:?} (stray comma?)")]
    EmptyEntry { flag: &'static str, value: String },
    #[error("{flag}: \"*\" cannot be combined with other entries in {value:?}")]
    WildcardMixed { flag: &'static str, value: String },
    #[error("{flag}: \"*\" is not accepted here (list the entries)")]
    WildcardNotAllowed { flag: &'static str },
    #[error("{flag}: {cidr} is IPv6 but IPv6 capture is off (--ipv6=false)")]
    V6RangeWithoutV6 { flag: &'static str, cidr: Cidr },
    #[error(
        "--include-inbound-ports: port {port} is one of the proxy's own ports ({ports}), which are never captured"
    )]
    ProxyPortIncluded { port: u16, ports: String },
    #[error(
        "--exclude-inbound-ports applies only when --include-inbound-ports is \"*\" (got {include:?}); list only the ports to capture"
    )]
    ExcludeWithIncludeList { include: String },
    #[error("--inbound-port and --outbound-port are both {port}; they must differ")]
    SamePorts { port: u16 },
    #[error("--inbound-port/--outbound-port must not be 0")]
    ZeroListenerPort,
    #[error(
        "--proxy-uid/--proxy-gid 0 would exempt every root process from capture; run the proxy as its own user (default 1337)"
    )]
    RootProxy,
}

const INCLUDE_IN: &str = "--include-inbound-ports (traffic.sidecar.istio.io/includeInboundPorts)";
const EXCLUDE_IN: &str = "--exclude-inbound-ports (traffic.sidecar.istio.io/excludeInboundPorts)";
const EXCLUDE_OUT: &str =
    "--exclude-outbound-ports (traffic.sidecar.istio.io/excludeOutboundPorts)";
const INCLUDE_RANGES: &str =
    "--include-outbound-ip-ranges (traffic.sidecar.istio.io/includeOutboundIPRanges)";
const EXCLUDE_RANGES: &str =
    "--exclude-outbound-ip-ranges (traffic.sidecar.istio.io/excludeOutboundIPRanges)";

/// A parsed list: `*`, or entries (possibly none).
enum List<T> {
    All,
    Items(Vec<T>),
}

fn parse_list<T: Ord>(
    flag: &'static str,
    value: &str,
    item: impl Fn(&str) -> Result<T, OptionsError>,
) -> Result<List<T>, OptionsError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Ok(List::Items(Vec::new()));
    }
    if trimmed == "*" {
        return Ok(List::All);
    }
    // A set: duplicates collapse and the order is canonical, so the rules (and goldens) do
    // not depend on how the annotation was spelled.
    let mut out = BTreeSet::new();
    for entry in trimmed.split(',') {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(OptionsError::EmptyEntry {
                flag,
                value: value.to_string(),
            });
        }
        if entry == "*" {
            return Err(OptionsError::WildcardMixed {
                flag,
                value: value.to_string(),
            });
        }
        out.insert(item(entry)?);
    }
    Ok(List::Items(out.into_iter().collect()))
}

fn port(flag: &'static str) -> impl Fn(&str) -> Result<u16, OptionsError> {
    move |s| match s.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(OptionsError::BadPort {
            flag,
            value: s.to_string(),
        }),
    }
}

fn cidr(flag: &'static str) -> impl Fn(&str) -> Result<Cidr, OptionsError> {
    move |s| {
        Cidr::parse(s).map_err(|reason| OptionsError::BadCidr {
            flag,
            value: s.to_string(),
            reason,
        })
    }
}

fn items<T>(flag: &'static str, list: List<T>) -> Result<Vec<T>, OptionsError> {
    match list {
        List::All => Err(OptionsError::WildcardNotAllowed { flag }),
        List::Items(v) => Ok(v),
    }
}

fn no_v6(flag: &'static str, ranges: &[Cidr], ipv6: bool) -> Result<(), OptionsError> {
    match ranges.iter().find(|c| c.is_v6()) {
        Some(c) if !ipv6 => Err(OptionsError::V6RangeWithoutV6 { flag, cidr: *c }),
        _ => Ok(()),
    }
}

impl RawOptions {
    /// Checks every option; the first problem found is returned.
    pub fn validate(&self) -> Result<InitOptions, OptionsError> {
        if self.inbound_port == 0 || self.outbound_port == 0 {
            return Err(OptionsError::ZeroListenerPort);
        }
        if self.inbound_port == self.outbound_port {
            return Err(OptionsError::SamePorts {
                port: self.inbound_port,
            });
        }
        let proxy_gid = self.proxy_gid.unwrap_or(self.proxy_uid);
        if self.proxy_uid == 0 || proxy_gid == 0 {
            return Err(OptionsError::RootProxy);
        }
        let mut proxy_ports: BTreeSet<u16> = PROXY_PORTS.into_iter().collect();
        proxy_ports.insert(self.inbound_port);
        proxy_ports.insert(self.outbound_port);
        let proxy_ports: Vec<u16> = proxy_ports.into_iter().collect();

        let include_in = parse_list(INCLUDE_IN, &self.include_inbound_ports, port(INCLUDE_IN))?;
        let exclude_in = items(
            EXCLUDE_IN,
            parse_list(EXCLUDE_IN, &self.exclude_inbound_ports, port(EXCLUDE_IN))?,
        )?;
        let inbound = match include_in {
            List::All => InboundPorts::All { except: exclude_in },
            List::Items(ports) => {
                if !exclude_in.is_empty() {
                    return Err(OptionsError::ExcludeWithIncludeList {
                        include: self.include_inbound_ports.clone(),
                    });
                }
                if let Some(p) = ports.iter().find(|p| proxy_ports.contains(p)) {
                    return Err(OptionsError::ProxyPortIncluded {
                        port: *p,
                        ports: join(&proxy_ports),
                    });
                }
                if ports.is_empty() {
                    InboundPorts::None
                } else {
                    InboundPorts::Only(ports)
                }
            }
        };

        let exclude_outbound_ports = items(
            EXCLUDE_OUT,
            parse_list(EXCLUDE_OUT, &self.exclude_outbound_ports, port(EXCLUDE_OUT))?,
        )?;
        let include_outbound = match parse_list(
            INCLUDE_RANGES,
            &self.include_outbound_ip_ranges,
            cidr(INCLUDE_RANGES),
        )? {
            List::All => OutboundRanges::All,
            List::Items(v) if v.is_empty() => OutboundRanges::None,
            List::Items(v) => {
                no_v6(INCLUDE_RANGES, &v, self.ipv6)?;
                OutboundRanges::Only(v)
            }
        };
        let exclude_outbound_ranges = items(
            EXCLUDE_RANGES,
            parse_list(
                EXCLUDE_RANGES,
                &self.exclude_outbound_ip_ranges,
                cidr(EXCLUDE_RANGES),
            )?,
        )?;
        no_v6(EXCLUDE_RANGES, &exclude_outbound_ranges, self.ipv6)?;

        Ok(InitOptions {
            proxy_uid: self.proxy_uid,
            proxy_gid,
            inbound_port: self.inbound_port,
            outbound_port: self.outbound_port,
            proxy_ports,
            inbound,
            exclude_outbound_ports,
            include_outbound,
            exclude_outbound_ranges,
            ipv6: self.ipv6,
        })
    }
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly by design
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut RawOptions)) -> Result<InitOptions, OptionsError> {
        let mut raw = RawOptions::default();
        f(&mut raw);
        raw.validate()
    }

    fn err(f: impl FnOnce(&mut RawOptions)) -> String {
        with(f).unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let o = InitOptions::default();
        assert_eq!((o.proxy_uid, o.proxy_gid), (1337, 1337));
        assert_eq!((o.inbound_port, o.outbound_port), (15006, 15001));
        assert_eq!(
            o.proxy_ports,
            vec![15001, 15006, 15008, 15020, 15021, 15090]
        );
        assert_eq!(o.inbound, InboundPorts::All { except: vec![] });
        assert_eq!(o.include_outbound, OutboundRanges::All);
        assert!(o.ipv6);
    }

    #[test]
    fn lists_are_sets_and_empty_means_none() {
        let o = with(|r| {
            r.include_inbound_ports = " 9080, 80,9080 ".into();
            r.include_outbound_ip_ranges = String::new();
            r.exclude_outbound_ip_ranges = "10.0.0.0/8,fd00::/8, 10.0.0.0/8".into();
        })
        .unwrap();
        assert_eq!(o.inbound, InboundPorts::Only(vec![80, 9080]));
        assert_eq!(o.include_outbound, OutboundRanges::None);
        assert_eq!(o.exclude_outbound_ranges.len(), 2);
        let o = with(|r| r.include_inbound_ports = String::new()).unwrap();
        assert_eq!(o.inbound, InboundPorts::None);
        let o = with(|r| r.exclude_outbound_ip_ranges = "10.1.2.3".into()).unwrap();
        assert_eq!(o.exclude_outbound_ranges[0].to_string(), "10.1.2.3/32");
    }

    #[test]
    fn precise_errors() {
        assert_eq!(
            err(|r| r.exclude_inbound_ports = "80,http".into()),
            "--exclude-inbound-ports (traffic.sidecar.istio.io/excludeInboundPorts): \"http\" is not a port (1-65535)"
        );
        assert!(err(|r| r.exclude_outbound_ports = "0".into()).contains("\"0\" is not a port"));
        assert!(err(|r| r.exclude_outbound_ports = "70000".into()).contains("\"70000\""));
        assert!(err(|r| r.exclude_outbound_ports = "80,,90".into()).contains("empty entry"));
        assert!(err(|r| r.exclude_outbound_ports = "*".into()).contains("\"*\" is not accepted"));
        assert!(err(|r| r.include_inbound_ports = "*,80".into()).contains("cannot be combined"));
        assert_eq!(
            err(|r| r.include_outbound_ip_ranges = "10.0.0.1/8".into()),
            "--include-outbound-ip-ranges (traffic.sidecar.istio.io/includeOutboundIPRanges): \"10.0.0.1/8\" is not a CIDR: host bits set; did you mean 10.0.0.0/8?"
        );
        assert!(
            err(|r| r.exclude_outbound_ip_ranges = "10.0.0.0/33".into())
                .contains("prefix length \"33\" is not 0-32")
        );
        assert!(
            err(|r| r.exclude_outbound_ip_ranges = "example.com".into())
                .contains("not an IPv4 or IPv6 address")
        );
        assert!(
            err(|r| {
                r.ipv6 = false;
                r.exclude_outbound_ip_ranges = "fd00::/8".into();
            })
            .contains("fd00::/8 is IPv6 but IPv6 capture is off")
        );
        assert!(
            err(|r| r.include_inbound_ports = "8080,15020".into())
                .contains("port 15020 is one of the proxy's own ports")
        );
        assert!(
            err(|r| {
                r.include_inbound_ports = "8080".into();
                r.exclude_inbound_ports = "9090".into();
            })
            .contains("applies only when --include-inbound-ports is \"*\"")
        );
        assert!(err(|r| r.outbound_port = 15006).contains("both 15006"));
        assert!(err(|r| r.inbound_port = 0).contains("must not be 0"));
        assert!(err(|r| r.proxy_uid = 0).contains("root"));
        assert!(err(|r| r.proxy_gid = Some(0)).contains("root"));
    }

    #[test]
    fn custom_listener_ports_are_proxy_ports() {
        let o = with(|r| r.inbound_port = 16006).unwrap();
        assert!(o.proxy_ports.contains(&16006));
        assert!(
            err(|r| {
                r.inbound_port = 16006;
                r.include_inbound_ports = "16006".into();
            })
            .contains("port 16006")
        );
    }
}
