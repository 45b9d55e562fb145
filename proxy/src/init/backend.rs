//! Which firewall backend to write with, decided from [`Facts`] (gathered by
//! [`super::system`]), and what a failure means. Pure.
//!
//! `auto` picks, in order (the first that applies; steps 2-4 only among backends whose
//! binaries are present):
//! 1. where Weft's own rules already are (`WEFT_*` chains in `iptables-legacy-save` or
//!    `iptables-nft-save`, or the nft table `inet weft`), so a re-run replaces them instead of
//!    adding a second set in another backend;
//! 2. the iptables variant that already holds rules (istio-iptables' test: which of
//!    `iptables-legacy-save` / `iptables-nft-save` shows rules); both: the one with more
//!    rules, a tie goes to nf_tables. Two backends with rules in one netns would both run,
//!    so writing where the node's tooling writes keeps one view of the nat table;
//! 3. the variant plain `iptables` is (`iptables --version`: "(nf_tables)" or "(legacy)"):
//!    what the image (and usually the node) defaults to;
//! 4. iptables-nft, then iptables-legacy, then native nft, whichever exists.
//!
//! Native nft is thus chosen automatically only where it already holds Weft's table or no
//! iptables exists; `--backend nft` asks for it.

use std::collections::BTreeMap;
use std::fmt;

use super::rules::Family;

/// A way to write the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Backend {
    /// iptables on the nf_tables kernel API (`iptables-nft-restore`).
    IptablesNft,
    /// iptables on the legacy x_tables kernel API (`iptables-legacy-restore`).
    IptablesLegacy,
    /// Native nft (`nft -f -`), table `inet weft`.
    Nft,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::IptablesNft => "iptables-nft",
            Backend::IptablesLegacy => "iptables-legacy",
            Backend::Nft => "nft",
        })
    }
}

/// What an iptables `*-save` showed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaveSummary {
    /// `-A` lines, every table.
    pub rules: usize,
    /// A `WEFT_` chain is there.
    pub weft: bool,
}

impl SaveSummary {
    pub fn of(save_text: &str) -> SaveSummary {
        SaveSummary {
            rules: save_text.lines().filter(|l| l.starts_with("-A ")).count(),
            weft: save_text
                .lines()
                .any(|l| l.starts_with(":WEFT_") || l.contains("-j WEFT_")),
        }
    }
}

/// The node facts the decision uses; [`super::system::gather_facts`] collects them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Binaries found, by name, with their path.
    pub binaries: BTreeMap<String, String>,
    /// What plain `iptables` is, from `iptables --version`.
    pub default_iptables: Option<Backend>,
    /// `iptables-legacy-save` (+ ip6) output summary; `None`: could not be read.
    pub legacy_save: Option<SaveSummary>,
    /// `iptables-nft-save` (+ ip6) output summary; `None`: could not be read.
    pub nft_save: Option<SaveSummary>,
    /// `nft list tables` shows `table inet weft`.
    pub nft_weft_table: bool,
}

/// The binaries one backend runs, by path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tools {
    Iptables {
        restore4: String,
        save4: String,
        /// Present when IPv6 is on.
        v6: Option<(String, String)>,
    },
    Nft {
        nft: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub backend: Backend,
    /// Why this backend, for the summary and `--dry-run`.
    pub reason: String,
    pub tools: Tools,
}

/// A setup failure; each names exactly what is missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    #[error(
        "backend {backend} needs the binary `{binary}`, which is not in PATH (install the `{package}` package{hint})"
    )]
    MissingBinary {
        backend: Backend,
        binary: String,
        package: &'static str,
        hint: &'static str,
    },
    #[error(
        "no firewall backend: none of iptables-nft-restore, iptables-legacy-restore, iptables-restore or nft is in PATH (install the `iptables` or `nftables` package)"
    )]
    NoBackend,
    #[error(
        "missing capability {cap}: the init container needs securityContext.capabilities.add: [NET_ADMIN, NET_RAW] (or run as root)"
    )]
    MissingCapability { cap: &'static str },
    #[error("missing kernel module {module} ({tool} failed: {stderr})")]
    MissingModule {
        module: &'static str,
        tool: String,
        stderr: String,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    ToolFailed {
        tool: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run {tool}: {error}")]
    Spawn { tool: String, error: String },
}

/// The binary names a backend needs: (restore, save) per family, or nft.
fn names(backend: Backend, family: Family, plain: bool) -> (&'static str, &'static str) {
    match (backend, family, plain) {
        (_, Family::V4, true) => ("iptables-restore", "iptables-save"),
        (_, Family::V6, true) => ("ip6tables-restore", "ip6tables-save"),
        (Backend::IptablesLegacy, Family::V4, false) => {
            ("iptables-legacy-restore", "iptables-legacy-save")
        }
        (Backend::IptablesLegacy, Family::V6, false) => {
            ("ip6tables-legacy-restore", "ip6tables-legacy-save")
        }
        (_, Family::V4, false) => ("iptables-nft-restore", "iptables-nft-save"),
        (_, Family::V6, false) => ("ip6tables-nft-restore", "ip6tables-nft-save"),
    }
}

/// The tools of `backend` on this node, or the exact binary that is missing. For an
/// iptables variant the suffixed binaries are preferred; plain `iptables-restore` serves
/// when `iptables --version` says it is that variant (distributions without alternatives).
pub fn tools(backend: Backend, facts: &Facts, ipv6: bool) -> Result<Tools, SetupError> {
    let missing = |binary: &str, hint: &'static str| SetupError::MissingBinary {
        backend,
        binary: binary.to_string(),
        package: if backend == Backend::Nft {
            "nftables"
        } else {
            "iptables"
        },
        hint,
    };
    if backend == Backend::Nft {
        return match facts.binaries.get("nft") {
            Some(p) => Ok(Tools::Nft { nft: p.clone() }),
            None => Err(missing("nft", "")),
        };
    }
    let plain_ok = facts.default_iptables == Some(backend);
    let pair = |family: Family| -> Result<(String, String), SetupError> {
        let hint = if family == Family::V6 {
            ", or turn IPv6 capture off with --ipv6=false"
        } else {
            ""
        };
        let try_names = |plain: bool| {
            let (r, s) = names(backend, family, plain);
            match (facts.binaries.get(r), facts.binaries.get(s)) {
                (Some(r), Some(s)) => Ok((r.clone(), s.clone())),
                (None, _) => Err(r),
                (_, None) => Err(s),
            }
        };
        match try_names(false) {
            Ok(p) => Ok(p),
            Err(first_missing) if plain_ok => {
                try_names(true).map_err(|_| missing(first_missing, hint))
            }
            Err(first_missing) => Err(missing(first_missing, hint)),
        }
    };
    let (restore4, save4) = pair(Family::V4)?;
    let v6 = if ipv6 { Some(pair(Family::V6)?) } else { None };
    Ok(Tools::Iptables {
        restore4,
        save4,
        v6,
    })
}

/// Chooses the backend: `explicit` (from `--backend`) wins; otherwise the order of the
/// module docs.
pub fn choose(facts: &Facts, explicit: Option<Backend>, ipv6: bool) -> Result<Choice, SetupError> {
    let pick = |backend: Backend, reason: String| -> Result<Choice, SetupError> {
        Ok(Choice {
            backend,
            reason,
            tools: tools(backend, facts, ipv6)?,
        })
    };
    if let Some(b) = explicit {
        return pick(b, "--backend".into());
    }
    let legacy = facts.legacy_save.unwrap_or_default();
    let nft = facts.nft_save.unwrap_or_default();
    // 1. Where our rules are.
    if nft.weft {
        return pick(
            Backend::IptablesNft,
            "Weft's chains are already in iptables-nft".into(),
        );
    }
    if legacy.weft {
        return pick(
            Backend::IptablesLegacy,
            "Weft's chains are already in iptables-legacy".into(),
        );
    }
    if facts.nft_weft_table {
        return pick(
            Backend::Nft,
            "the nft table inet weft already exists".into(),
        );
    }
    let available = |b: Backend| tools(b, facts, ipv6).is_ok();
    // 2. Where the node's rules are.
    let by_rules = match (legacy.rules, nft.rules) {
        (0, 0) => None,
        (l, n) if l > n => Some((Backend::IptablesLegacy, l, n)),
        (l, n) => Some((Backend::IptablesNft, l, n)),
    };
    if let Some((b, l, n)) = by_rules
        && available(b)
    {
        return pick(
            b,
            format!("existing rules: {n} in iptables-nft, {l} in iptables-legacy"),
        );
    }
    // 3. What plain iptables is.
    if let Some(b) = facts.default_iptables
        && available(b)
    {
        return pick(b, format!("no rules yet; `iptables` is {b}"));
    }
    // 4. Whatever exists.
    for b in [Backend::IptablesNft, Backend::IptablesLegacy, Backend::Nft] {
        if available(b) {
            return pick(b, format!("no rules yet; {b} is the first available"));
        }
    }
    Err(SetupError::NoBackend)
}

/// `iptables --version` -> the variant it is.
pub fn variant_of(version_output: &str) -> Option<Backend> {
    if version_output.contains("(nf_tables)") {
        Some(Backend::IptablesNft)
    } else if version_output.contains("(legacy)") {
        Some(Backend::IptablesLegacy)
    } else {
        None
    }
}

/// Whether `/proc/self/status` grants capability `bit` (CapEff); `None` if unreadable.
pub fn has_capability(proc_status: &str, bit: u32) -> Option<bool> {
    let hex = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    let mask = u64::from_str_radix(hex, 16).ok()?;
    Some(mask & (1u64 << bit) != 0)
}

pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_NET_RAW: u32 = 13;

/// Turns a failed tool's stderr into the exact missing thing when it is recognisable;
/// otherwise [`SetupError::ToolFailed`] with the tool's own words.
pub fn diagnose(
    backend: Backend,
    family: Family,
    tool: &str,
    status: &str,
    stderr: &str,
) -> SetupError {
    let err = stderr.trim().to_string();
    let module = |module: &'static str| SetupError::MissingModule {
        module,
        tool: tool.to_string(),
        stderr: err.clone(),
    };
    let has = |s: &str| stderr.contains(s);
    if has("Permission denied") || has("Operation not permitted") || has("must be root") {
        return SetupError::MissingCapability {
            cap: "CAP_NET_ADMIN",
        };
    }
    match backend {
        Backend::IptablesLegacy | Backend::IptablesNft => {
            if has("Couldn't load target `REDIRECT'") {
                return module(match family {
                    Family::V4 if backend == Backend::IptablesLegacy => "xt_REDIRECT",
                    _ => "xt_REDIRECT (and nft_compat)",
                });
            }
            if has("Couldn't load match `owner'") {
                return module("xt_owner");
            }
            if has("Couldn't load match `tcp'") {
                return module("xt_tcpudp");
            }
            if backend == Backend::IptablesLegacy
                && (has("Table does not exist") || has("can't initialize"))
            {
                return module(match family {
                    Family::V4 => "iptable_nat",
                    Family::V6 => "ip6table_nat",
                });
            }
            if backend == Backend::IptablesNft {
                if has("Protocol not supported") || has("Failed to initialize nft") {
                    return module("nf_tables");
                }
                if has("does not exist") || has("No such file or directory") {
                    return module("nft_chain_nat");
                }
            }
        }
        Backend::Nft => {
            if has("Protocol not supported") {
                return module("nf_tables");
            }
            // nft echoes the statement it could not add; the statement names the module.
            if has("No such file or directory") || has("Operation not supported") {
                if has("redirect") {
                    return module("nft_redir");
                }
                if has("type nat") {
                    return module("nft_chain_nat");
                }
            }
        }
    }
    SetupError::ToolFailed {
        tool: tool.to_string(),
        status: status.to_string(),
        stderr: err,
    }
}

/// Every tool a backend may use, the order [`Facts`] tests rely on: iptables (whatever it
/// points to), iptables-nft, iptables-legacy (restore/save for v4 and v6 each), then nft.
pub const BINARIES: [&str; 13] = [
    "iptables-restore",
    "iptables-save",
    "ip6tables-restore",
    "ip6tables-save",
    "iptables-nft-restore",
    "iptables-nft-save",
    "ip6tables-nft-restore",
    "ip6tables-nft-save",
    "iptables-legacy-restore",
    "iptables-legacy-save",
    "ip6tables-legacy-restore",
    "ip6tables-legacy-save",
    "nft",
];

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly by design
mod tests {
    use super::*;

    fn facts(bins: &[&str]) -> Facts {
        Facts {
            binaries: bins
                .iter()
                .map(|b| (b.to_string(), format!("/usr/sbin/{b}")))
                .collect(),
            ..Facts::default()
        }
    }

    fn rules(n: usize) -> Option<SaveSummary> {
        Some(SaveSummary {
            rules: n,
            weft: false,
        })
    }

    fn weft() -> Option<SaveSummary> {
        Some(SaveSummary {
            rules: 3,
            weft: true,
        })
    }

    /// The decision table: (case, facts, explicit, ipv6) -> backend or error text.
    #[test]
    fn choice_table() {
        let debian = || {
            let mut f = facts(&BINARIES);
            f.default_iptables = Some(Backend::IptablesNft);
            f
        };
        type Case = (
            &'static str,
            Facts,
            Option<Backend>,
            Result<Backend, &'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "fresh Debian: plain iptables is nft",
                debian(),
                None,
                Ok(Backend::IptablesNft),
            ),
            (
                "plain iptables is legacy",
                Facts {
                    default_iptables: Some(Backend::IptablesLegacy),
                    ..debian()
                },
                None,
                Ok(Backend::IptablesLegacy),
            ),
            (
                "node rules in legacy win over the default",
                Facts {
                    legacy_save: rules(12),
                    nft_save: rules(0),
                    ..debian()
                },
                None,
                Ok(Backend::IptablesLegacy),
            ),
            (
                "more rules in nft",
                Facts {
                    legacy_save: rules(2),
                    nft_save: rules(9),
                    ..debian()
                },
                None,
                Ok(Backend::IptablesNft),
            ),
            (
                "a tie goes to nf_tables",
                Facts {
                    legacy_save: rules(4),
                    nft_save: rules(4),
                    default_iptables: Some(Backend::IptablesLegacy),
                    ..debian()
                },
                None,
                Ok(Backend::IptablesNft),
            ),
            (
                "our chains in legacy win over more rules in nft",
                Facts {
                    legacy_save: weft(),
                    nft_save: rules(50),
                    ..debian()
                },
                None,
                Ok(Backend::IptablesLegacy),
            ),
            (
                "our nft table",
                Facts {
                    nft_weft_table: true,
                    nft_save: rules(50),
                    ..debian()
                },
                None,
                Ok(Backend::Nft),
            ),
            (
                "explicit wins over everything",
                Facts {
                    legacy_save: weft(),
                    ..debian()
                },
                Some(Backend::Nft),
                Ok(Backend::Nft),
            ),
            (
                "only nft installed",
                facts(&["nft"]),
                None,
                Ok(Backend::Nft),
            ),
            (
                "only legacy binaries, no version info",
                facts(&BINARIES[8..12]),
                None,
                Ok(Backend::IptablesLegacy),
            ),
            (
                "rules in legacy but its binaries are gone: the next step",
                Facts {
                    legacy_save: rules(5),
                    ..facts(&BINARIES[4..8])
                },
                None,
                Ok(Backend::IptablesNft),
            ),
            (
                "plain binaries of the legacy variant serve as legacy",
                Facts {
                    default_iptables: Some(Backend::IptablesLegacy),
                    ..facts(&BINARIES[0..4])
                },
                Some(Backend::IptablesLegacy),
                Ok(Backend::IptablesLegacy),
            ),
            (
                "plain binaries do not serve another variant",
                Facts {
                    default_iptables: Some(Backend::IptablesLegacy),
                    ..facts(&BINARIES[0..4])
                },
                Some(Backend::IptablesNft),
                Err("backend iptables-nft needs the binary `iptables-nft-restore`"),
            ),
            (
                "nothing installed",
                facts(&[]),
                None,
                Err("no firewall backend"),
            ),
            (
                "explicit nft without nft",
                facts(&BINARIES[..12]),
                Some(Backend::Nft),
                Err(
                    "backend nft needs the binary `nft`, which is not in PATH (install the `nftables` package)",
                ),
            ),
            (
                "missing ip6tables names the binary and --ipv6=false",
                facts(&["iptables-legacy-restore", "iptables-legacy-save"]),
                Some(Backend::IptablesLegacy),
                Err(
                    "`ip6tables-legacy-restore`, which is not in PATH (install the `iptables` package, or turn IPv6 capture off with --ipv6=false)",
                ),
            ),
        ];
        for (name, f, explicit, want) in cases {
            let got = choose(&f, explicit, true);
            match (want, got) {
                (Ok(b), Ok(c)) => assert_eq!(c.backend, b, "{name}: {}", c.reason),
                (Err(text), Err(e)) => {
                    assert!(e.to_string().contains(text), "{name}: {e}")
                }
                (want, got) => panic!("{name}: want {want:?}, got {got:?}"),
            }
        }
        // IPv6 off: the ip6 binaries are not needed.
        let c = choose(
            &facts(&["iptables-legacy-restore", "iptables-legacy-save"]),
            None,
            false,
        )
        .unwrap();
        assert_eq!(c.backend, Backend::IptablesLegacy);
        assert!(matches!(c.tools, Tools::Iptables { v6: None, .. }));
    }

    #[test]
    fn facts_parsing() {
        assert_eq!(
            variant_of("iptables v1.8.9 (nf_tables)"),
            Some(Backend::IptablesNft)
        );
        assert_eq!(
            variant_of("iptables v1.8.9 (legacy)"),
            Some(Backend::IptablesLegacy)
        );
        assert_eq!(variant_of("?"), None);
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:WEFT_INBOUND - [0:0]\n-A PREROUTING -p tcp -j WEFT_INBOUND\n-A KUBE x\nCOMMIT\n";
        assert_eq!(
            SaveSummary::of(save),
            SaveSummary {
                rules: 2,
                weft: true
            }
        );
        let status = "Name:\tx\nCapEff:\t0000000000001000\n";
        assert_eq!(has_capability(status, CAP_NET_ADMIN), Some(true));
        assert_eq!(has_capability(status, CAP_NET_RAW), Some(false));
        assert_eq!(has_capability("", CAP_NET_ADMIN), None);
    }

    #[test]
    fn failures_name_what_is_missing() {
        let d = |b, f, e: &str| diagnose(b, f, "tool", "exit status: 1", e).to_string();
        assert!(
            d(
                Backend::IptablesLegacy,
                Family::V4,
                "iptables-restore v1.8.9 (legacy): iptables-restore: unable to initialize table 'nat'\n\nError occurred at line: 1\nTry `iptables-restore -h' or 'iptables-restore --help' for more information.\ncan't initialize iptables table `nat': Table does not exist (do you need to insmod?)"
            )
            .starts_with("missing kernel module iptable_nat")
        );
        assert!(
            d(Backend::IptablesLegacy, Family::V6, "Table does not exist")
                .starts_with("missing kernel module ip6table_nat")
        );
        assert!(
            d(
                Backend::IptablesNft,
                Family::V4,
                "Couldn't load match `owner':No such file or directory"
            )
            .starts_with("missing kernel module xt_owner")
        );
        assert!(
            d(
                Backend::IptablesNft,
                Family::V4,
                "iptables-nft-restore: Failed to initialize nft: Protocol not supported"
            )
            .starts_with("missing kernel module nf_tables")
        );
        assert!(
            d(
                Backend::Nft,
                Family::V4,
                "Error: Could not process rule: No such file or directory\n\t\tmeta l4proto tcp redirect to :15006\n"
            )
            .starts_with("missing kernel module nft_redir")
        );
        assert!(
            d(
                Backend::Nft,
                Family::V4,
                "Error: Could not process rule: Operation not permitted"
            )
            .starts_with("missing capability CAP_NET_ADMIN")
        );
        assert_eq!(
            d(Backend::Nft, Family::V4, "syntax error"),
            "tool failed (exit status: 1): syntax error"
        );
    }
}
