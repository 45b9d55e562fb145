//! A proxy's resources as the xDS server sees them: type URL -> name -> (version, `Any`).
//!
//! Versions are content hashes rather than counters so that the same config yields the same
//! versions on every control-plane replica and across restarts: a proxy that reconnects with
//! what it already has is sent nothing (SotW `version_info`, delta `initial_resource_versions`).

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use prost_types::Any;

/// What a generator produces for one proxy: type URL -> resource name -> packed resource.
pub type Generated = BTreeMap<&'static str, BTreeMap<String, Any>>;

/// One resource with its content version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionedResource {
    /// Hash of the packed resource (type URL and bytes), as 16 hex digits.
    pub version: String,
    /// The resource, packed.
    pub resource: Any,
}

/// All resources of one type for one proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeResources {
    /// Hash over every (name, version) pair: the SotW `version_info` of the full set.
    pub version: String,
    /// Resources by name.
    pub resources: BTreeMap<String, VersionedResource>,
}

/// Every resource of every type for one proxy; immutable once built, shared as `Arc<Snapshot>`.
/// Each type's resources are behind an `Arc` of their own, so proxies with the same outbound
/// config share one copy (built and hashed once per model, not once per proxy).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    types: BTreeMap<String, Arc<TypeResources>>,
}

// === impl TypeResources ===

impl TypeResources {
    /// Hashes every resource of one type.
    pub fn build(resources: BTreeMap<String, Any>) -> Self {
        Self::new(
            resources
                .into_iter()
                .map(|(name, resource)| {
                    let version = resource_version(&resource);
                    (name, VersionedResource { version, resource })
                })
                .collect(),
        )
    }

    fn new(resources: BTreeMap<String, VersionedResource>) -> Self {
        let version = set_version(
            resources
                .iter()
                .map(|(n, r)| (n.as_str(), r.version.as_str())),
        );
        Self { version, resources }
    }

    /// The version of the subset a SotW client asked for (`None` = wildcard, the whole set).
    pub fn version_of(&self, names: Option<&std::collections::BTreeSet<String>>) -> String {
        match names {
            None => self.version.clone(),
            Some(names) => set_version(
                self.resources
                    .iter()
                    .filter(|(n, _)| names.contains(*n))
                    .map(|(n, r)| (n.as_str(), r.version.as_str())),
            ),
        }
    }
}

static EMPTY: LazyLock<Arc<TypeResources>> =
    LazyLock::new(|| Arc::new(TypeResources::new(BTreeMap::new())));

// === impl Snapshot ===

impl Snapshot {
    /// Hashes every resource. Every type in `weft_api::type_url::ALL` is present (maybe empty),
    /// so that a proxy subscribing to a type with no resources still gets an answer.
    pub fn from_generated(generated: Generated) -> Self {
        Self::from_parts(
            generated
                .into_iter()
                .map(|(t, r)| (t, Arc::new(TypeResources::build(r)))),
        )
    }

    /// A snapshot of types already hashed (some of them shared with other proxies). Every
    /// type in `weft_api::type_url::ALL` is present, as with [`Snapshot::from_generated`].
    pub fn from_parts(parts: impl IntoIterator<Item = (&'static str, Arc<TypeResources>)>) -> Self {
        let mut types: BTreeMap<String, Arc<TypeResources>> = weft_api::type_url::ALL
            .iter()
            .map(|t| ((*t).to_string(), Arc::clone(&EMPTY)))
            .collect();
        for (type_url, resources) in parts {
            types.insert(type_url.to_string(), resources);
        }
        Self { types }
    }

    /// The resources of a type; an unknown type has none.
    pub fn get(&self, type_url: &str) -> &TypeResources {
        self.types.get(type_url).map_or(&EMPTY, |t| t)
    }

    /// Type URL -> version of the full set, for comparing snapshots cheaply.
    pub fn versions(&self) -> impl Iterator<Item = (&str, &str)> {
        self.types
            .iter()
            .map(|(t, r)| (t.as_str(), r.version.as_str()))
    }

    /// Whether two snapshots hold the same content (same versions for every type).
    pub fn same_content(&self, other: &Snapshot) -> bool {
        self.versions().eq(other.versions())
    }
}

/// FNV-1a, 64 bits: stable across processes and Rust versions (unlike `DefaultHasher`), and
/// good enough to tell config versions apart; versions are not a security boundary.
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// A separator so that ("ab", "c") and ("a", "bc") hash differently.
    fn write_field(&mut self, bytes: &[u8]) {
        self.write(&(bytes.len() as u64).to_le_bytes());
        self.write(bytes);
    }

    fn hex(self) -> String {
        format!("{:016x}", self.0)
    }
}

/// The version of one packed resource.
pub fn resource_version(any: &Any) -> String {
    let mut h = Fnv::new();
    h.write_field(any.type_url.as_bytes());
    h.write_field(&any.value);
    h.hex()
}

/// The version of a set of (name, version) pairs, given in name order.
fn set_version<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut h = Fnv::new();
    for (name, version) in pairs {
        h.write_field(name.as_bytes());
        h.write_field(version.as_bytes());
    }
    h.hex()
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::type_url::{CLUSTER, SERVICE};

    fn any(t: &str, v: &[u8]) -> Any {
        Any {
            type_url: t.to_string(),
            value: v.to_vec(),
        }
    }

    #[test]
    fn same_content_same_versions() {
        let g = || {
            Generated::from([(
                SERVICE,
                BTreeMap::from([("a".to_string(), any(SERVICE, b"1"))]),
            )])
        };
        let (a, b) = (Snapshot::from_generated(g()), Snapshot::from_generated(g()));
        assert_eq!(a, b);
        assert!(a.same_content(&b));
    }

    #[test]
    fn a_change_in_one_type_leaves_the_others_alone() {
        let a = Snapshot::from_generated(Generated::from([(
            SERVICE,
            BTreeMap::from([("a".to_string(), any(SERVICE, b"1"))]),
        )]));
        let b = Snapshot::from_generated(Generated::from([(
            SERVICE,
            BTreeMap::from([("a".to_string(), any(SERVICE, b"2"))]),
        )]));
        assert_ne!(a.get(SERVICE).version, b.get(SERVICE).version);
        assert_eq!(a.get(CLUSTER).version, b.get(CLUSTER).version);
        assert!(!a.same_content(&b));
    }

    #[test]
    fn subset_versions_differ_from_the_whole() {
        let s = Snapshot::from_generated(Generated::from([(
            SERVICE,
            BTreeMap::from([
                ("a".to_string(), any(SERVICE, b"1")),
                ("b".to_string(), any(SERVICE, b"2")),
            ]),
        )]));
        let only_a = std::collections::BTreeSet::from(["a".to_string()]);
        let t = s.get(SERVICE);
        assert_ne!(t.version_of(Some(&only_a)), t.version);
        assert_eq!(t.version_of(None), t.version);
    }

    #[test]
    fn unknown_types_are_empty() {
        assert!(Snapshot::default().get("nope").resources.is_empty());
    }
}
