//! Selection algorithms over a [`Members`] snapshot. They are pure functions of the snapshot,
//! a start position and the `tried` mask, so they can be unit-tested and benchmarked without
//! a network.

use super::{bit, Members};
use std::sync::atomic::Ordering::Relaxed;

/// Points per unit of weight on the ketama ring. 160 is what ketama uses; it keeps the share
/// of each backend within a few percent of its weight.
const RING_POINTS_PER_WEIGHT: u32 = 160;

/// nginx's smooth weighted round robin, unrolled into a wheel once. Weights {5,1,1} give
/// a,a,b,a,c,a,a rather than a,a,a,a,a,b,c, so a heavy backend is not hit in bursts.
pub fn smooth_wheel(weights: &[u32]) -> Vec<u32> {
    let total: i64 = weights.iter().map(|&w| w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut wheel = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        wheel.push(best as u32);
    }
    wheel
}

/// FNV-1a, then a splitmix finaliser. Stable across processes and versions, so every instance
/// of a fleet maps a key to the same backend.
pub fn hash_bytes(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub fn ketama_ring(labels: &[&str], weights: &[u32]) -> Vec<(u64, u32)> {
    let mut ring = Vec::new();
    for (i, (label, &w)) in labels.iter().zip(weights).enumerate() {
        let base = hash_bytes(label.as_bytes());
        for p in 0..w * RING_POINTS_PER_WEIGHT {
            ring.push((mix(base ^ mix(p as u64 + 1)), i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

#[inline]
fn ok(m: &Members, idx: usize, tried: u64) -> bool {
    tried & bit(idx) == 0 && m.slots[idx].usable() && m.slots[idx].has_room()
}

pub fn from_wheel(m: &Members, start: usize, tried: u64) -> Option<usize> {
    let n = m.wheel.len();
    if n == 0 {
        return None;
    }
    for k in 0..n {
        let idx = m.wheel[(start.wrapping_add(k)) % n] as usize;
        if ok(m, idx, tried) {
            return Some(idx);
        }
    }
    None
}

/// Fewest in-flight per unit of weight. The scan starts at a rotating position so that ties
/// (an idle pool) spread instead of all landing on the first backend.
pub fn least_loaded(m: &Members, start: usize, tried: u64) -> Option<usize> {
    let n = m.slots.len();
    let mut best: Option<(usize, u64, u64)> = None;
    for k in 0..n {
        let idx = (start.wrapping_add(k)) % n;
        if !ok(m, idx, tried) {
            continue;
        }
        let s = &m.slots[idx];
        let load = s.inflight.load(Relaxed) as u64;
        let w = s.weight as u64;
        match best {
            // load/w < best_load/best_w, without division
            Some((_, bl, bw)) if load * bw >= bl * w => {}
            _ => best = Some((idx, load, w)),
        }
    }
    best.map(|b| b.0)
}

/// Two weighted random choices, then the less loaded one.
pub fn power_of_two(m: &Members, r1: usize, r2: usize, tried: u64) -> Option<usize> {
    let n = m.wheel.len();
    if n == 0 {
        return None;
    }
    let a = m.wheel[r1 % n] as usize;
    let b = m.wheel[r2 % n] as usize;
    match (ok(m, a, tried), ok(m, b, tried)) {
        (true, true) => {
            let (sa, sb) = (&m.slots[a], &m.slots[b]);
            let la = sa.inflight.load(Relaxed) as u64 * sb.weight as u64;
            let lb = sb.inflight.load(Relaxed) as u64 * sa.weight as u64;
            Some(if lb < la { b } else { a })
        }
        (true, false) => Some(a),
        (false, true) => Some(b),
        (false, false) => least_loaded(m, r1, tried),
    }
}

/// The first usable backend clockwise from the key's point. A backend that leaves only moves
/// its own keys, to their next point on the ring.
pub fn from_ring(m: &Members, hash: u64, tried: u64) -> Option<usize> {
    let n = m.ring.len();
    if n == 0 {
        return None;
    }
    let start = m.ring.partition_point(|&(p, _)| p < hash);
    for k in 0..n {
        let idx = m.ring[(start + k) % n].1 as usize;
        if ok(m, idx, tried) {
            return Some(idx);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendSpec;

    fn members(weights: &[u32]) -> Members {
        let specs: Vec<BackendSpec> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| BackendSpec {
                max_connections: None,
                addr: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                weight: w,
            })
            .collect();
        Members::build(&specs)
    }

    #[test]
    fn smooth_wheel_is_interleaved_and_weighted() {
        let w = smooth_wheel(&[5, 1, 1]);
        assert_eq!(w.len(), 7);
        assert_eq!(w.iter().filter(|&&i| i == 0).count(), 5);
        assert_ne!(&w[..5], &[0, 0, 0, 0, 0]);
    }

    #[test]
    fn wheel_skips_tried_and_unhealthy() {
        let m = members(&[1, 1, 1]);
        m.slots[1].healthy.store(false, Relaxed);
        for s in 0..10 {
            let i = from_wheel(&m, s, bit(0)).unwrap();
            assert_eq!(i, 2);
        }
        assert_eq!(from_wheel(&m, 0, bit(0) | bit(2)), None);
    }

    #[test]
    fn ring_moves_about_one_nth() {
        let m = members(&[1, 1, 1, 1]);
        let keys: Vec<u64> = (0..4000u32).map(|k| hash_bytes(&k.to_le_bytes())).collect();
        let before: Vec<usize> = keys.iter().map(|&h| from_ring(&m, h, 0).unwrap()).collect();
        m.slots[2].healthy.store(false, Relaxed);
        let after: Vec<usize> = keys.iter().map(|&h| from_ring(&m, h, 0).unwrap()).collect();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        // only keys of backend 2 move
        assert!(before.iter().zip(&after).all(|(a, b)| a == b || *a == 2));
        assert!((700..1300).contains(&moved), "moved {moved}");
    }

    #[test]
    fn least_loaded_prefers_idle() {
        let m = members(&[1, 1]);
        m.slots[0].inflight.store(5, Relaxed);
        assert_eq!(least_loaded(&m, 0, 0), Some(1));
        assert_eq!(power_of_two(&m, 0, 1, 0), Some(1));
    }
}
