//! Pure helpers of the scale workloads: percentiles, slopes, /proc text, and recognising a
//! change inside an xDS resource without decoding every resource of a large response.

use serde::{Deserialize, Serialize};

/// Nearest-rank percentile (`q` in 0..=100) of unsorted samples; `None` when empty.
pub fn percentile(xs: &[f64], q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// p50 / p99 / max (= the 100 % point) of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// How many samples (clients that made it).
    pub n: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub p50_ms: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub p99_ms: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub max_ms: f64,
}

/// serde_json writes NaN (no sample) as `null`; read it back as NaN.
pub fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl Spread {
    pub fn of(ms: &[f64]) -> Self {
        Self {
            n: ms.len(),
            p50_ms: percentile(ms, 50.0).unwrap_or(f64::NAN),
            p99_ms: percentile(ms, 99.0).unwrap_or(f64::NAN),
            max_ms: percentile(ms, 100.0).unwrap_or(f64::NAN),
        }
    }
}

/// Ordinary least squares of `y = a + b1*x1 + b2*x2`; returns `(a, b1, b2)`, or `None` when
/// the regressors are collinear (e.g. every point has the same endpoints-per-service ratio).
pub fn fit2(points: &[(f64, f64, f64)]) -> Option<(f64, f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 3 {
        return None;
    }
    let mean = |f: &dyn Fn(&(f64, f64, f64)) -> f64| points.iter().map(f).sum::<f64>() / n;
    let (m1, m2, my) = (mean(&|p| p.0), mean(&|p| p.1), mean(&|p| p.2));
    let (mut s11, mut s22, mut s12, mut s1y, mut s2y) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(x1, x2, y) in points {
        let (d1, d2, dy) = (x1 - m1, x2 - m2, y - my);
        s11 += d1 * d1;
        s22 += d2 * d2;
        s12 += d1 * d2;
        s1y += d1 * dy;
        s2y += d2 * dy;
    }
    let det = s11 * s22 - s12 * s12;
    if det.abs() <= 1e-9 * (s11 * s22).max(1.0) {
        return None;
    }
    let b1 = (s1y * s22 - s2y * s12) / det;
    let b2 = (s2y * s11 - s1y * s12) / det;
    Some((my - b1 * m1 - b2 * m2, b1, b2))
}

/// Ordinary least squares of `y = a + b*x`; returns `(a, b)`.
pub fn fit1(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let b = sxy / sxx;
    Some((my - b * mx, b))
}

/// `MemAvailable` of `/proc/meminfo`, in KiB.
pub fn meminfo_available_kib(text: &str) -> Option<u64> {
    crate::sys::parse_kib(text, "MemAvailable")
}

/// The first field of a protobuf message if it is field 1, length-delimited, as UTF-8: the
/// `cluster` of `weft.mesh.v1.Endpoints` and the `name` of `weft.mesh.v1.Service`. prost
/// writes fields in number order, so this names a resource without decoding it.
pub fn field1_str(msg: &[u8]) -> Option<&str> {
    let (tag, rest) = varint(msg)?;
    if tag != (1 << 3) | 2 {
        return None;
    }
    let (len, rest) = varint(rest)?;
    let len = usize::try_from(len).ok()?;
    std::str::from_utf8(rest.get(..len)?).ok()
}

fn varint(b: &[u8]) -> Option<(u64, &[u8])> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, &b[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use weft_api::mesh;

    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&xs, 50.0), Some(50.0));
        assert_eq!(percentile(&xs, 99.0), Some(99.0));
        assert_eq!(percentile(&xs, 100.0), Some(100.0));
        assert_eq!(percentile(&xs, 0.0), Some(1.0));
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[], 50.0), None);
        let s = Spread::of(&[5.0, 1.0, 9.0]);
        assert_eq!((s.n, s.p50_ms, s.max_ms), (3, 5.0, 9.0));
        assert!(Spread::of(&[]).p50_ms.is_nan());
    }

    #[test]
    fn fits_recover_known_slopes() {
        // rss = 1000 + 4*services + 1.5*endpoints
        let pts: Vec<(f64, f64, f64)> = [(100.0, 300.0), (1000.0, 3000.0), (1000.0, 1000.0)]
            .iter()
            .map(|&(s, e)| (s, e, 1000.0 + 4.0 * s + 1.5 * e))
            .collect();
        let (a, b1, b2) = fit2(&pts).unwrap();
        assert!((a - 1000.0).abs() < 1e-6 && (b1 - 4.0).abs() < 1e-9 && (b2 - 1.5).abs() < 1e-9);
        // Collinear: endpoints always 3x services.
        let col = [(1.0, 3.0, 1.0), (2.0, 6.0, 2.0), (3.0, 9.0, 3.0)];
        assert_eq!(fit2(&col), None);
        let (a, b) = fit1(&[(0.0, 1.0), (10.0, 21.0)]).unwrap();
        assert_eq!((a, b), (1.0, 2.0));
        assert_eq!(fit1(&[(1.0, 1.0), (1.0, 2.0)]), None);
    }

    #[test]
    fn meminfo_is_parsed() {
        assert_eq!(
            meminfo_available_kib("MemTotal: 10 kB\nMemAvailable:    7 kB\n"),
            Some(7)
        );
    }

    #[test]
    fn field1_names_resources_as_prost_encodes_them() {
        let long = "x".repeat(300);
        let e = mesh::Endpoints {
            cluster: long.clone(),
            endpoints: vec![mesh::Endpoint {
                address: "10.0.0.1".into(),
                ..Default::default()
            }],
        };
        assert_eq!(field1_str(&e.encode_to_vec()), Some(long.as_str()));
        let s = mesh::Service {
            name: "a.b.svc.cluster.local".into(),
            ..Default::default()
        };
        assert_eq!(
            field1_str(&s.encode_to_vec()),
            Some("a.b.svc.cluster.local")
        );
        assert_eq!(field1_str(&[]), None);
        assert_eq!(field1_str(&[0x10, 0x01]), None);
    }
}
