//! Types shared by several kinds: metadata, selectors, string matches, percentages.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Kubernetes object metadata. Lenient on purpose (no `deny_unknown_fields`): server-set
/// fields such as `uid`, `resourceVersion` or `managedFields` are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Required; checked by validation so the message can name the field.
    #[serde(default)]
    pub name: Option<String>,
    /// `default` when absent (as `kubectl apply` without `-n` does).
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl ObjectMeta {
    /// The namespace, `default` when absent or empty.
    pub fn namespace(&self) -> &str {
        match self.namespace.as_deref() {
            Some(ns) if !ns.is_empty() => ns,
            _ => "default",
        }
    }

    /// The name, empty when absent (validation rejects that before it matters).
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }
}

/// `networking.v1.WorkloadSelector` (ServiceEntry, Sidecar): `{labels}`, exact equality.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl WorkloadSelector {
    /// Whether `labels` carries every label of the selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        labels_match(&self.labels, labels)
    }
}

/// `type.v1beta1.WorkloadSelector` (DestinationRule, security policies): `{matchLabels}`.
/// Istio really has two selector shapes; using the wrong one is an unknown-field error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchLabelsSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl MatchLabelsSelector {
    /// Whether `labels` carries every label of the selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        labels_match(&self.match_labels, labels)
    }
}

/// Whether `labels` carries every `key: value` of `selector` (an empty selector matches all).
pub fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// `StringMatch`: exactly one of `exact`, `prefix`, `regex` (RE2 syntax, whole-value match).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

/// `PortSelector`: `{number}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    #[serde(default, deserialize_with = "super::de::opt_int")]
    pub number: Option<i64>,
}

/// `Percent`: `{value}` in 0..=100.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: Option<f64>,
}

/// `Headers`: request and response header manipulation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    #[serde(default)]
    pub request: Option<HeaderOperations>,
    #[serde(default)]
    pub response: Option<HeaderOperations>,
}

/// `Headers.HeaderOperations`: `set`, `add`, `remove`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// Parses an Istio duration (`"10s"`, `"0.5s"`, `"1m"`, `"100ms"`, `"1h30m"`): one or more
/// decimal numbers each followed by a unit (`h`, `m`, `s`, `ms`, `us`/`µs`, `ns`), as Go's
/// `time.ParseDuration` and Istio's CRD validation accept. Negative durations are refused.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, DurationError> {
    let bad = || DurationError(text.to_string());
    let mut rest = text.trim();
    if rest.is_empty() || rest.starts_with(['-', '+']) {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if number_len == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += number * seconds_per_unit;
    }
    // 10 000 years is far beyond any sensible timeout and keeps the conversion in range.
    if !(0.0..3.2e11).contains(&total) {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

/// A duration string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {0:?}: expected a number with a unit, such as \"10s\", \"0.5s\", \"1m\" or \"100ms\""
)]
pub struct DurationError(pub String);

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        for bad in ["", "10", "s", "-1s", "1x", "1.2.3s", "ten s"] {
            assert!(parse_duration(bad).is_err(), "{bad} should not parse");
        }
    }
}
