//! Rule generation, pure: [`plan`] turns [`InitOptions`] into one family-aware rule list,
//! rendered as `iptables-restore` input per family and as one native `nft` script.
//!
//! Chains (nat table): `PREROUTING -p tcp -> WEFT_INBOUND -> WEFT_IN_REDIRECT` (REDIRECT to
//! the inbound port) and `OUTPUT -p tcp -> WEFT_OUTPUT -> WEFT_REDIRECT` (REDIRECT to the
//! outbound port). `WEFT_OUTPUT`, in order (the shape of istio-iptables):
//!
//! 1. excluded outbound ports: RETURN (first, so not even the proxy's call-to-self below
//!    redirects them);
//! 2. source 127.0.0.6 (`::6`) out of `lo`: RETURN. The address an inbound listener may bind
//!    when it connects to the app on the pod IP (Istio's inbound passthrough), which rule 3
//!    would otherwise loop back into the inbound listener. Weft's inbound forwards to
//!    `--app-address`: 127.0.0.1 never loops (rule 5); the pod IP loops unless the connection
//!    is bound to 127.0.0.6;
//! 3. the app calling its own service IP: app -> outbound listener -> the proxy (UID 1337)
//!    connects to the pod's own IP, which leaves through `lo`; a connection by the proxy out
//!    of `lo` to anything but 127.0.0.1 (`::1`) goes to WEFT_IN_REDIRECT, so the request
//!    crosses the inbound side (policy, mTLS identity) as a call from another pod would
//!    (only when inbound capture is on);
//! 4. other traffic out of `lo` not from the proxy (the app talking to itself): RETURN; then
//!    everything else from the proxy's UID: RETURN. The same two for the proxy's GID;
//! 5. destination 127.0.0.1 (`::1`): RETURN;
//! 6. excluded ranges: RETURN;
//! 7. WEFT_REDIRECT: everything (`*`), or only the included ranges of that family.
//!
//! Idempotence: `iptables-restore --noflush` keeps every other rule; declaring our chains
//! (`:WEFT_X - [0:0]`) and `-F WEFT_X` empties only ours; the two jump rules are appended
//! only when `iptables-save` does not show them already ([`IptablesRules::restore_script`]).
//! nft: `table inet weft` + `delete table inet weft` + the full table, in one transaction,
//! so the table is replaced atomically whether or not it existed; other tables are untouched.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::options::{Cidr, InboundPorts, InitOptions, OutboundRanges};

pub const CHAIN_INBOUND: &str = "WEFT_INBOUND";
pub const CHAIN_IN_REDIRECT: &str = "WEFT_IN_REDIRECT";
pub const CHAIN_OUTPUT: &str = "WEFT_OUTPUT";
pub const CHAIN_REDIRECT: &str = "WEFT_REDIRECT";
/// Our chains, in the order they are declared.
pub const CHAINS: [&str; 4] = [
    CHAIN_INBOUND,
    CHAIN_IN_REDIRECT,
    CHAIN_OUTPUT,
    CHAIN_REDIRECT,
];
/// The native nft table (family `inet`: one table serves IPv4 and IPv6).
pub const NFT_TABLE: &str = "inet weft";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn loopback(self) -> Cidr {
        match self {
            Family::V4 => host(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Family::V6 => host(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        }
    }

    /// The inbound passthrough source (see the module docs, rule 2).
    fn passthrough_source(self) -> Cidr {
        match self {
            Family::V4 => host(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6))),
            Family::V6 => host(IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6))),
        }
    }

    fn of(c: &Cidr) -> Family {
        if c.is_v6() { Family::V6 } else { Family::V4 }
    }
}

fn host(addr: IpAddr) -> Cidr {
    Cidr {
        addr,
        prefix: if addr.is_ipv4() { 32 } else { 128 },
    }
}

/// One match of a rule. Rendered in `iptables-save`'s canonical order, so what we write
/// and what `iptables-save` prints back are the same lines.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Match {
    Src(Cidr),
    Dst(Cidr),
    NotDst(Cidr),
    OutLo,
    Tcp,
    /// TCP destination ports; iptables gets one rule per port, nft one set.
    DstPorts(Vec<u16>),
    Uid(u32),
    NotUid(u32),
    Gid(u32),
    NotGid(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Return,
    Jump(&'static str),
    Redirect(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    chain: &'static str,
    /// `None`: both families; set by the addresses a rule matches.
    family: Option<Family>,
    matches: Vec<Match>,
    target: Target,
}

impl Rule {
    fn new(chain: &'static str, matches: Vec<Match>, target: Target) -> Rule {
        let family = matches.iter().find_map(|m| match m {
            Match::Src(c) | Match::Dst(c) | Match::NotDst(c) => Some(Family::of(c)),
            _ => None,
        });
        Rule {
            chain,
            family,
            matches,
            target,
        }
    }

    fn applies_to(&self, f: Family) -> bool {
        self.family.is_none_or(|x| x == f)
    }
}

/// The rules for one family as `iptables-restore` input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptablesRules {
    pub family: Family,
    /// `-A PREROUTING -p tcp -j WEFT_INBOUND` and the OUTPUT one, as `iptables-save`
    /// prints them.
    pub jumps: Vec<String>,
    /// The rules of our chains, as `iptables-save` prints them.
    pub rules: Vec<String>,
}

impl IptablesRules {
    /// The script for a table with no Weft jump yet (what `--dry-run` prints).
    pub fn script(&self) -> String {
        self.restore_script("")
    }

    /// The `iptables-restore --noflush` input given the table's current `iptables-save`
    /// text: a missing jump is appended, a duplicated one (a past non-idempotent tool) is
    /// deleted down to one; our chains are always flushed and refilled.
    pub fn restore_script(&self, existing_save: &str) -> String {
        let mut s = String::from("*nat\n");
        for c in CHAINS {
            let _ = writeln!(s, ":{c} - [0:0]");
        }
        for c in CHAINS {
            let _ = writeln!(s, "-F {c}");
        }
        for jump in &self.jumps {
            let present = existing_save.lines().filter(|l| l.trim() == jump).count();
            if present == 0 {
                let _ = writeln!(s, "{jump}");
            }
            for _ in 1..present {
                let _ = writeln!(s, "-D{}", &jump[2..]);
            }
        }
        for r in &self.rules {
            let _ = writeln!(s, "{r}");
        }
        s.push_str("COMMIT\n");
        s
    }
}

/// Everything `weft-proxy init` would install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub v4: IptablesRules,
    /// `None` when IPv6 capture is off (ip6tables is then not touched at all).
    pub v6: Option<IptablesRules>,
    /// The native nft script (`nft -f -`), both families.
    pub nft: String,
}

impl Plan {
    /// Both families' iptables scripts, each under a comment naming its tool.
    pub fn iptables_text(&self) -> String {
        let mut s = String::from("# iptables-restore --noflush\n");
        s.push_str(&self.v4.script());
        if let Some(v6) = &self.v6 {
            s.push_str("# ip6tables-restore --noflush\n");
            s.push_str(&v6.script());
        }
        s
    }
}

/// The rules for `opts`. Pure and deterministic.
pub fn plan(opts: &InitOptions) -> Plan {
    let (jumps, rules) = rule_list(opts);
    let v4 = iptables(Family::V4, &jumps, &rules);
    let v6 = opts.ipv6.then(|| iptables(Family::V6, &jumps, &rules));
    Plan {
        v4,
        v6,
        nft: nft(opts, &jumps, &rules),
    }
}

fn rule_list(o: &InitOptions) -> (Vec<Rule>, Vec<Rule>) {
    use Match::*;
    let jumps = vec![
        Rule::new("PREROUTING", vec![Tcp], Target::Jump(CHAIN_INBOUND)),
        Rule::new("OUTPUT", vec![Tcp], Target::Jump(CHAIN_OUTPUT)),
    ];
    // With IPv6 off no IPv6 rule is written at all (nft's base chains skip IPv6 too).
    let fams: Vec<Family> = if o.ipv6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    };
    let mut r = Vec::new();

    // Inbound.
    r.push(Rule::new(
        CHAIN_INBOUND,
        vec![DstPorts(o.proxy_ports.clone())],
        Target::Return,
    ));
    match &o.inbound {
        InboundPorts::All { except } => {
            if !except.is_empty() {
                r.push(Rule::new(
                    CHAIN_INBOUND,
                    vec![DstPorts(except.clone())],
                    Target::Return,
                ));
            }
            r.push(Rule::new(
                CHAIN_INBOUND,
                vec![Tcp],
                Target::Jump(CHAIN_IN_REDIRECT),
            ));
        }
        InboundPorts::Only(ports) => r.push(Rule::new(
            CHAIN_INBOUND,
            vec![DstPorts(ports.clone())],
            Target::Jump(CHAIN_IN_REDIRECT),
        )),
        InboundPorts::None => {}
    }
    r.push(Rule::new(
        CHAIN_IN_REDIRECT,
        vec![Tcp],
        Target::Redirect(o.inbound_port),
    ));

    // Outbound; the numbers are those of the module docs.
    // 1.
    if !o.exclude_outbound_ports.is_empty() {
        r.push(Rule::new(
            CHAIN_OUTPUT,
            vec![DstPorts(o.exclude_outbound_ports.clone())],
            Target::Return,
        ));
    }
    // 2.
    for &f in &fams {
        r.push(Rule::new(
            CHAIN_OUTPUT,
            vec![Src(f.passthrough_source()), OutLo],
            Target::Return,
        ));
    }
    // 3. and 4., for the UID then the GID.
    let owners: [(Match, Match); 2] = [
        (Uid(o.proxy_uid), NotUid(o.proxy_uid)),
        (Gid(o.proxy_gid), NotGid(o.proxy_gid)),
    ];
    for (is_proxy, not_proxy) in owners {
        if o.inbound != InboundPorts::None {
            for &f in &fams {
                r.push(Rule::new(
                    CHAIN_OUTPUT,
                    vec![NotDst(f.loopback()), OutLo, Tcp, is_proxy.clone()],
                    Target::Jump(CHAIN_IN_REDIRECT),
                ));
            }
        }
        r.push(Rule::new(
            CHAIN_OUTPUT,
            vec![OutLo, not_proxy],
            Target::Return,
        ));
        r.push(Rule::new(CHAIN_OUTPUT, vec![is_proxy], Target::Return));
    }
    // 5.
    for &f in &fams {
        r.push(Rule::new(
            CHAIN_OUTPUT,
            vec![Dst(f.loopback())],
            Target::Return,
        ));
    }
    // 6.
    for c in &o.exclude_outbound_ranges {
        r.push(Rule::new(CHAIN_OUTPUT, vec![Dst(*c)], Target::Return));
    }
    // 7.
    match &o.include_outbound {
        OutboundRanges::All => r.push(Rule::new(
            CHAIN_OUTPUT,
            vec![],
            Target::Jump(CHAIN_REDIRECT),
        )),
        OutboundRanges::Only(ranges) => {
            for c in ranges {
                r.push(Rule::new(
                    CHAIN_OUTPUT,
                    vec![Dst(*c)],
                    Target::Jump(CHAIN_REDIRECT),
                ));
            }
        }
        OutboundRanges::None => {}
    }
    r.push(Rule::new(
        CHAIN_REDIRECT,
        vec![Tcp],
        Target::Redirect(o.outbound_port),
    ));
    (jumps, r)
}

fn iptables(family: Family, jumps: &[Rule], rules: &[Rule]) -> IptablesRules {
    let render = |rules: &[Rule]| -> Vec<String> {
        rules
            .iter()
            .filter(|r| r.applies_to(family))
            .flat_map(iptables_lines)
            .collect()
    };
    IptablesRules {
        family,
        jumps: render(jumps),
        rules: render(rules),
    }
}

/// One rule as `iptables-save` prints it (one line per port of a port list).
fn iptables_lines(rule: &Rule) -> Vec<String> {
    let ports = rule.matches.iter().find_map(|m| match m {
        Match::DstPorts(p) => Some(p.as_slice()),
        _ => None,
    });
    match ports {
        Some(ports) => ports
            .iter()
            .map(|p| iptables_line(rule, Some(*p)))
            .collect(),
        None => vec![iptables_line(rule, None)],
    }
}

fn iptables_line(rule: &Rule, port: Option<u16>) -> String {
    let mut s = format!("-A {}", rule.chain);
    // iptables-save order: addresses, interfaces, protocol, then `-m` matches.
    for m in &rule.matches {
        match m {
            Match::Src(c) => {
                let _ = write!(s, " -s {c}");
            }
            Match::Dst(c) => {
                let _ = write!(s, " -d {c}");
            }
            Match::NotDst(c) => {
                let _ = write!(s, " ! -d {c}");
            }
            _ => {}
        }
    }
    if rule.matches.contains(&Match::OutLo) {
        s.push_str(" -o lo");
    }
    // REDIRECT --to-ports needs `-p tcp` in the same rule.
    let tcp = rule
        .matches
        .iter()
        .any(|m| matches!(m, Match::Tcp | Match::DstPorts(_)))
        || matches!(rule.target, Target::Redirect(_));
    if tcp {
        s.push_str(" -p tcp");
    }
    if let Some(p) = port {
        let _ = write!(s, " -m tcp --dport {p}");
    }
    for m in &rule.matches {
        match m {
            Match::Uid(u) => {
                let _ = write!(s, " -m owner --uid-owner {u}");
            }
            Match::NotUid(u) => {
                let _ = write!(s, " -m owner ! --uid-owner {u}");
            }
            Match::Gid(g) => {
                let _ = write!(s, " -m owner --gid-owner {g}");
            }
            Match::NotGid(g) => {
                let _ = write!(s, " -m owner ! --gid-owner {g}");
            }
            _ => {}
        }
    }
    match rule.target {
        Target::Return => s.push_str(" -j RETURN"),
        Target::Jump(c) => {
            let _ = write!(s, " -j {c}");
        }
        Target::Redirect(p) => {
            let _ = write!(s, " -j REDIRECT --to-ports {p}");
        }
    }
    s
}

fn nft(o: &InitOptions, jumps: &[Rule], rules: &[Rule]) -> String {
    let mut s = String::new();
    // Create-if-missing, then delete: replaces the table in one transaction whether or not
    // a previous run left one (`delete` alone fails on a fresh node).
    let _ = writeln!(s, "table {NFT_TABLE}");
    let _ = writeln!(s, "delete table {NFT_TABLE}");
    let _ = writeln!(s, "table {NFT_TABLE} {{");
    for (base, hook) in [("PREROUTING", "prerouting"), ("OUTPUT", "output")] {
        let _ = writeln!(s, "\tchain {base} {{");
        // -100 is where iptables' nat table sits on both hooks (NF_IP_PRI_NAT_DST);
        // numeric so older nft without the `dstnat` name accept it too.
        let _ = writeln!(s, "\t\ttype nat hook {hook} priority -100; policy accept;");
        if !o.ipv6 {
            // An inet table sees both families; with IPv6 off, IPv6 is left alone.
            s.push_str("\t\tmeta nfproto ipv6 return\n");
        }
        for r in jumps.iter().filter(|r| r.chain == base) {
            let _ = writeln!(s, "\t\t{}", nft_rule(r));
        }
        s.push_str("\t}\n");
    }
    for c in CHAINS {
        let _ = writeln!(s, "\tchain {c} {{");
        for r in rules.iter().filter(|r| r.chain == c) {
            let _ = writeln!(s, "\t\t{}", nft_rule(r));
        }
        s.push_str("\t}\n");
    }
    s.push_str("}\n");
    s
}

fn nft_rule(rule: &Rule) -> String {
    let mut parts: Vec<String> = Vec::new();
    let ip = |c: &Cidr| if c.is_v6() { "ip6" } else { "ip" };
    let addr = |c: &Cidr| {
        if c.prefix == if c.is_v6() { 128 } else { 32 } {
            c.addr.to_string()
        } else {
            c.to_string()
        }
    };
    let has_ports = rule.matches.iter().any(|m| matches!(m, Match::DstPorts(_)));
    for m in &rule.matches {
        match m {
            Match::Src(c) => parts.push(format!("{} saddr {}", ip(c), addr(c))),
            Match::Dst(c) => parts.push(format!("{} daddr {}", ip(c), addr(c))),
            Match::NotDst(c) => parts.push(format!("{} daddr != {}", ip(c), addr(c))),
            Match::OutLo => parts.push("oifname \"lo\"".into()),
            Match::Tcp if !has_ports => parts.push("meta l4proto tcp".into()),
            Match::Tcp => {}
            Match::DstPorts(p) if p.len() == 1 => parts.push(format!("tcp dport {}", p[0])),
            Match::DstPorts(p) => parts.push(format!(
                "tcp dport {{ {} }}",
                p.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
            )),
            Match::Uid(u) => parts.push(format!("meta skuid {u}")),
            Match::NotUid(u) => parts.push(format!("meta skuid != {u}")),
            Match::Gid(g) => parts.push(format!("meta skgid {g}")),
            Match::NotGid(g) => parts.push(format!("meta skgid != {g}")),
        }
    }
    parts.push(match rule.target {
        Target::Return => "return".into(),
        Target::Jump(c) => format!("jump {c}"),
        Target::Redirect(p) => format!("redirect to :{p}"),
    });
    parts.join(" ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly by design
mod tests {
    use super::*;

    #[test]
    fn jumps_are_added_once_and_deduplicated() {
        let p = plan(&InitOptions::default());
        let fresh = p.v4.restore_script("");
        assert!(fresh.contains("\n-A PREROUTING -p tcp -j WEFT_INBOUND\n"));
        let existing = "*nat\n-A PREROUTING -p tcp -j WEFT_INBOUND\n-A OUTPUT -p tcp -j WEFT_OUTPUT\n-A OUTPUT -p tcp -j WEFT_OUTPUT\nCOMMIT\n";
        let again = p.v4.restore_script(existing);
        assert!(!again.contains("-A PREROUTING -p tcp -j WEFT_INBOUND"));
        assert!(!again.contains("-A OUTPUT -p tcp -j WEFT_OUTPUT"));
        assert_eq!(
            again.matches("-D OUTPUT -p tcp -j WEFT_OUTPUT\n").count(),
            1
        );
        // Our chains are always emptied and refilled.
        for c in CHAINS {
            assert!(
                again.contains(&format!(":{c} - [0:0]\n-"))
                    || again.contains(&format!(":{c} - [0:0]\n:"))
            );
            assert!(again.contains(&format!("-F {c}\n")));
        }
    }

    #[test]
    fn families_get_their_own_addresses() {
        let p = plan(&InitOptions::default());
        let v6 = p.v6.unwrap();
        assert!(p.v4.rules.iter().all(|r| !r.contains("::")));
        assert!(v6.rules.iter().all(|r| !r.contains("127.0.0")));
        assert!(v6.rules.iter().any(|r| r.contains("-d ::1/128 -j RETURN")));
    }
}
