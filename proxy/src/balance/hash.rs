//! Consistent hashing: a fixed 64-bit hash, the ring (Envoy's RING_HASH) and the Maglev
//! lookup table.
//!
//! **The hash is part of the affinity contract.** Changing [`StableHasher`] or how ring
//! points / Maglev permutations are derived remaps every session when proxies are upgraded,
//! so both are fixed here: FNV-1a over the bytes, then MurmurHash3's 64-bit finalizer
//! (`fmix64`) because FNV alone mixes its last bytes poorly into the high bits, which the
//! ring's ordering depends on. `std`'s `DefaultHasher` is not used: its algorithm may change
//! between Rust releases.
//!
//! Endpoints are placed by their address (IP and port), not their index, so the same
//! endpoint lands on the same points whatever else is in the cluster: when an endpoint
//! leaves, only the keys it owned move (for Maglev, nearly only those; see the tests).
//!
//! Tables are immutable, built once per config/endpoint set by the cluster's
//! [`Balancer`](super::Balancer). An endpoint that may not be used for one request (ejected,
//! or already tried) is skipped by walking on from its slot: the ring clockwise, the Maglev
//! table to the next entry. That is as if the endpoint were removed, for that request only,
//! and its keys spread over the others.

use std::net::SocketAddr;

/// FNV-1a 64 with an `fmix64` finish. Streaming, so multi-valued headers hash without a
/// buffer.
#[derive(Debug, Clone, Copy)]
pub struct StableHasher(u64);

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Default for StableHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl StableHasher {
    pub fn new() -> Self {
        Self(FNV_OFFSET_BASIS)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    pub fn finish(&self) -> u64 {
        fmix64(self.0)
    }

    /// The unmixed FNV-1a state (for the test vectors).
    #[cfg(test)]
    pub(super) fn fnv(&self) -> u64 {
        self.0
    }
}

/// Hash of one byte string.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h = StableHasher::new();
    h.write(bytes);
    h.finish()
}

/// MurmurHash3's 64-bit finalizer: every input bit affects every output bit.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// Hash of an endpoint address with a domain tag (which table, which use) and an index.
fn addr_hash(tag: u8, addr: SocketAddr, index: u64) -> u64 {
    let mut h = StableHasher::new();
    h.write(&[tag]);
    match addr.ip().to_canonical() {
        std::net::IpAddr::V4(ip) => h.write(&ip.octets()),
        std::net::IpAddr::V6(ip) => h.write(&ip.octets()),
    }
    h.write(&addr.port().to_be_bytes());
    h.write(&index.to_le_bytes());
    h.finish()
}

const TAG_RING: u8 = b'r';
const TAG_MAGLEV_OFFSET: u8 = b'o';
const TAG_MAGLEV_SKIP: u8 = b's';

/// A built consistent-hash table of one cluster.
#[derive(Debug)]
pub(super) enum HashTable {
    Ring(Ring),
    Maglev(Maglev),
}

impl HashTable {
    /// The endpoint for `hash`: the table's owner if `admit` accepts it, else the next
    /// admitted one along the table. `None` when `admit` accepts no endpoint in the table.
    pub(super) fn lookup(&self, hash: u64, admit: impl Fn(usize) -> bool) -> Option<usize> {
        match self {
            Self::Ring(r) => r.lookup(hash, admit),
            Self::Maglev(m) => m.lookup(hash, admit),
        }
    }
}

/// Ketama-style ring: each endpoint owns points in proportion to its weight; a key belongs
/// to the first point at or after its hash (wrapping).
#[derive(Debug)]
pub(super) struct Ring {
    /// (point hash, endpoint index), sorted.
    points: Box<[(u64, u32)]>,
}

impl Ring {
    /// Builds the ring of `members` (address, weight >= 1) with at least `min_size` points
    /// (fewer only when the weights would need more than `max_size`).
    ///
    /// Points per unit of weight are rounded up to a power of two. That keeps an endpoint's
    /// points identical when another endpoint joins or leaves (unless the total weight crosses
    /// a power of two), so keys of unrelated endpoints do not move. Envoy scales the count to
    /// the exact ring size instead, which shifts a share of every endpoint's keys on each
    /// change. The cost: a ring up to twice `min_size`.
    pub(super) fn build(members: &[(SocketAddr, u32)], min_size: u64, max_size: u64) -> Self {
        let total: u64 = members.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return Self {
                points: Box::default(),
            };
        }
        let per_weight = min_size.div_ceil(total).max(1).next_power_of_two();
        let points_of = |w: u32| -> u64 {
            let w = u64::from(w);
            match w.checked_mul(per_weight) {
                Some(n) if total.saturating_mul(per_weight) <= max_size => n,
                // Over the cap: share max_size by weight; every endpoint keeps one point.
                _ => ((u128::from(w) * u128::from(max_size) / u128::from(total)) as u64).max(1),
            }
        };
        let len: u64 = members.iter().map(|(_, w)| points_of(*w)).sum();
        let mut points = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        for (i, (addr, w)) in members.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            for replica in 0..points_of(*w) {
                points.push((addr_hash(TAG_RING, *addr, replica), i));
            }
        }
        // Sorting by (hash, index) makes colliding points deterministic.
        points.sort_unstable();
        Self {
            points: points.into_boxed_slice(),
        }
    }

    fn lookup(&self, hash: u64, admit: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.points.len();
        let start = self.points.partition_point(|(h, _)| *h < hash);
        (0..len)
            .map(|k| self.points[(start + k) % len].1 as usize)
            .find(|&i| admit(i))
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.points.len()
    }

    #[cfg(test)]
    pub(super) fn owners(&self) -> impl Iterator<Item = usize> + '_ {
        self.points.iter().map(|(_, i)| *i as usize)
    }
}

/// Maglev (Eisenbud et al., NSDI 2016): a prime-sized table where each endpoint fills slots
/// in the order of its own permutation, taking turns, so every endpoint gets a near-equal
/// (weighted) share and the table changes little when the endpoint set does.
#[derive(Debug)]
pub(super) struct Maglev {
    /// Endpoint index per slot.
    table: Box<[u32]>,
}

const EMPTY: u32 = u32::MAX;

impl Maglev {
    /// Populates a table of `size` slots (a prime, validated by the config) for `members`
    /// (address, weight >= 1).
    ///
    /// Endpoint i's permutation is `offset_i + j * skip_i (mod size)`, j = 0, 1, ...; with
    /// `size` prime and `skip_i` in 1..size it visits every slot. Weights: each round every
    /// endpoint earns its weight in credit and claims its next free preferred slot per
    /// `max_weight` of credit, so an endpoint of weight w claims w/max_weight slots per round
    /// (the heaviest claims one every round).
    pub(super) fn build(members: &[(SocketAddr, u32)], size: u64) -> Self {
        let size_usize = usize::try_from(size).unwrap_or(0);
        if members.is_empty() || size_usize == 0 {
            return Self {
                table: Box::default(),
            };
        }
        let max_weight = members
            .iter()
            .map(|(_, w)| u64::from(*w))
            .max()
            .unwrap_or(1);
        // (offset, skip, next j, credit) per endpoint.
        let mut cursors: Vec<(u64, u64, u64, u64)> = members
            .iter()
            .map(|(addr, _)| {
                let offset = addr_hash(TAG_MAGLEV_OFFSET, *addr, 0) % size;
                let skip = if size > 1 {
                    addr_hash(TAG_MAGLEV_SKIP, *addr, 0) % (size - 1) + 1
                } else {
                    1
                };
                (offset, skip, 0, 0)
            })
            .collect();
        // Turns go in address order, not list order: when two endpoints want the same slot
        // the first to ask gets it, and the table must not change when the control plane
        // merely reorders the endpoints.
        let mut order: Vec<usize> = (0..members.len()).collect();
        order.sort_by_key(|&i| members[i].0);
        let mut table = vec![EMPTY; size_usize];
        let mut filled = 0usize;
        // Every round the heaviest endpoint claims a slot, so this ends within `size` rounds.
        while filled < size_usize {
            for &i in &order {
                if filled == size_usize {
                    break;
                }
                let c = &mut cursors[i];
                c.3 += u64::from(members[i].1.max(1));
                if c.3 < max_weight {
                    continue;
                }
                c.3 -= max_weight;
                // The permutation visits every slot within `size` steps, and at least one
                // slot is free, so this finds one.
                loop {
                    let slot = ((c.0 + c.2 % size * c.1) % size) as usize;
                    c.2 += 1;
                    if table[slot] == EMPTY {
                        table[slot] = u32::try_from(i).unwrap_or(EMPTY - 1);
                        filled += 1;
                        break;
                    }
                }
            }
        }
        Self {
            table: table.into_boxed_slice(),
        }
    }

    fn lookup(&self, hash: u64, admit: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.table.len();
        if len == 0 {
            return None;
        }
        let start = (hash % len as u64) as usize;
        (0..len)
            .map(|k| self.table[(start + k) % len] as usize)
            .find(|&i| admit(i))
    }

    #[cfg(test)]
    pub(super) fn slots(&self) -> &[u32] {
        &self.table
    }
}
