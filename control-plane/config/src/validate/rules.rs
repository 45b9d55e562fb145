//! Small value checks shared by every kind: names, labels, hosts, ports, durations,
//! percentages, string matches. Messages follow Kubernetes' wording where Istio's CRD
//! validation uses it (`Required value`, `Unsupported value`), so users who search for an
//! Istio error find the same words.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::Errors;
use crate::kinds::{Percent, StringMatch, parse_duration};

/// A Kubernetes DNS-1123 label: lower-case alphanumerics and `-`, at most 63 characters,
/// starting and ending with an alphanumeric.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A host name as Istio accepts it in `hosts`: DNS labels (any case), optionally with a
/// leading `*.` wildcard, or `*` alone when `allow_star`.
pub(crate) fn check_host(errors: &mut Errors, path: &str, host: &str, allow_star: bool) {
    if host.is_empty() {
        errors.push(path, "host must not be empty");
        return;
    }
    if host == "*" {
        if !allow_star {
            errors.push(path, "hostname cannot be wildcard \"*\"");
        }
        return;
    }
    let bare = host.strip_prefix("*.").unwrap_or(host);
    if host.len() > 253
        || bare.split('.').any(|label| {
            label.is_empty()
                || label.len() > 63
                || !label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                || label.starts_with('-')
                || label.ends_with('-')
        })
    {
        errors.push(
            path,
            format!(
                "invalid host {host:?}: expected a DNS name (letters, digits, '-', dot-separated), optionally prefixed with \"*.\""
            ),
        );
    }
}

/// Validates a Kubernetes label map (keys: optional DNS-subdomain prefix + `/` + name;
/// values: at most 63 characters of alphanumerics, `-`, `_`, `.`).
pub(crate) fn check_labels(
    errors: &mut Errors,
    path: &str,
    labels: &BTreeMap<String, String>,
    is_selector: bool,
) {
    for (key, value) in labels {
        let field = crate::yaml::join_key(path, key);
        if let Err(why) = label_key(key) {
            errors.push(&field, format!("invalid label key {key:?}: {why}"));
        }
        if is_selector && value.contains('*') {
            errors.push(&field, "wildcard is not supported in selector");
        } else if !is_label_value(value) {
            errors.push(
                &field,
                format!(
                    "invalid label value {value:?}: at most 63 characters, alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
                ),
            );
        }
    }
}

fn label_key(key: &str) -> Result<(), &'static str> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && !is_dns_subdomain(prefix)
    {
        return Err("the prefix must be a DNS subdomain");
    }
    if name.is_empty() || name.len() > 63 || !is_label_name(name) {
        return Err(
            "the name must be 1-63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric",
        );
    }
    Ok(())
}

fn is_label_name(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn is_label_value(s: &str) -> bool {
    s.is_empty() || (s.len() <= 63 && is_label_name(s))
}

/// A port number in 1..=65535.
pub(crate) fn check_port(errors: &mut Errors, path: &str, port: i64) {
    if !(1..=65535).contains(&port) {
        errors.push(
            path,
            format!("port number {port} is out of range: port must be between 1-65535"),
        );
    }
}

/// A required port number.
pub(crate) fn check_required_port(errors: &mut Errors, path: &str, port: Option<i64>) {
    match port {
        Some(port) => check_port(errors, path, port),
        None => errors.push(path, "Required value"),
    }
}

/// A duration string, optionally with a lower bound.
pub(crate) fn check_duration(
    errors: &mut Errors,
    path: &str,
    value: Option<&String>,
    min: Option<std::time::Duration>,
) {
    let Some(value) = value else { return };
    match parse_duration(value) {
        Ok(d) => {
            if let Some(min) = min
                && d < min
            {
                errors.push(
                    path,
                    format!("duration {value:?} is too short: must be at least {min:?}"),
                );
            }
        }
        Err(e) => errors.push(path, e.to_string()),
    }
}

/// A `Percent` in 0..=100.
pub(crate) fn check_percent(errors: &mut Errors, path: &str, percent: Option<&Percent>) {
    if let Some(value) = percent.and_then(|p| p.value)
        && !(0.0..=100.0).contains(&value)
    {
        errors.push(
            &format!("{path}.value"),
            format!("percentage {value} is out of range: must be between 0 and 100"),
        );
    }
}

/// A non-negative integer.
pub(crate) fn check_non_negative(errors: &mut Errors, path: &str, value: Option<i64>) {
    if let Some(v) = value
        && v < 0
    {
        errors.push(path, format!("{v} must not be negative"));
    }
}

/// A `StringMatch`: exactly one of exact/prefix/regex; regexes must be RE2 (compiled with
/// the `regex` crate, which has RE2's syntax: no look-around, no backreferences).
pub(crate) fn check_string_match(
    errors: &mut Errors,
    path: &str,
    m: &StringMatch,
    allow_empty: bool,
) {
    let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if set > 1 {
        errors.push(path, "only one of exact, prefix or regex may be set");
    } else if set == 0 && !allow_empty {
        errors.push(path, "one of exact, prefix or regex is required");
    }
    if let Some(re) = &m.regex {
        check_regex(errors, &format!("{path}.regex"), re);
    }
}

pub(crate) fn check_regex(errors: &mut Errors, path: &str, re: &str) {
    if let Err(e) = regex::Regex::new(re) {
        // The regex crate's message is multi-line with a caret diagram; keep its last line.
        let detail = e.to_string();
        let reason = detail
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("invalid syntax")
            .trim()
            .trim_start_matches("error: ")
            .to_string();
        errors.push(
            path,
            format!("invalid RE2 regular expression {re:?}: {reason}"),
        );
    }
}

/// `exportTo`: `.`, `*`, `~` or namespace names; no duplicates; `*` alone.
pub(crate) fn check_export_to(errors: &mut Errors, path: &str, export_to: &[String]) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, ns) in export_to.iter().enumerate() {
        let field = format!("{path}[{i}]");
        if !seen.insert(ns.as_str()) {
            errors.push(&field, format!("duplicate entry {ns:?}"));
        } else if !matches!(ns.as_str(), "." | "*" | "~") && !is_dns_label(ns) {
            errors.push(
                &field,
                format!("invalid exportTo entry {ns:?}: expected \".\", \"*\" or a namespace name"),
            );
        }
    }
    if export_to.len() > 1 && seen.contains("*") {
        errors.push(path, "\"*\" may not be combined with other entries");
    }
}

/// One of a fixed set of values (upper case, as Istio's enums).
pub(crate) fn check_enum(
    errors: &mut Errors,
    path: &str,
    value: Option<&String>,
    allowed: &[&str],
) {
    if let Some(value) = value
        && !allowed.contains(&value.as_str())
    {
        let list = allowed
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        errors.push(
            path,
            format!("Unsupported value: {value:?}: supported values: {list}"),
        );
    }
}

/// An IP address or a CIDR block. The prefix length is plain decimal digits (`parse::<u8>`
/// alone would take `+8`, which Istio's `netip.ParsePrefix` and the proxy refuse). Host bits
/// may be set (`10.1.2.3/16`): Istio accepts them and Envoy ignores them.
pub(crate) fn is_ip_or_cidr(s: &str) -> bool {
    match s.split_once('/') {
        Some((_, bits)) if bits.is_empty() || !bits.bytes().all(|b| b.is_ascii_digit()) => false,
        Some((ip, bits)) => match (ip.parse::<IpAddr>(), bits.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(b)) => b <= 32,
            (Ok(IpAddr::V6(_)), Ok(b)) => b <= 128,
            _ => false,
        },
        None => s.parse::<IpAddr>().is_ok(),
    }
}
