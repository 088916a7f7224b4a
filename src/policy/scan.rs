//! Byte classes of a head found several bytes at a time: the request-head checks and the
//! lean engine's parser both scan every byte of every head, and a browser's request head is
//! 500 to 800 bytes.
//!
//! Each scan gives exactly the index a byte-by-byte loop would (the tests hold them equal).

/// 0x01 in every byte of a word.
pub const ONES: u64 = u64::from_le_bytes([0x01; 8]);
/// 0x80 (bit 7) in every byte of a word.
pub const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);

/// Eight bytes as a word, the first in the lowest byte (so `trailing_zeros / 8` of a mark is
/// its index). `w` must be 8 bytes long.
#[inline(always)]
pub fn word(w: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(w);
    u64::from_le_bytes(b)
}

/// Bit 7 of each byte of `x` equal to `b`. The lowest mark is exact (a borrow marks only
/// bytes above one that matched), so `trailing_zeros / 8` is the index of the first.
#[inline(always)]
pub fn byte_marks(x: u64, b: u8) -> u64 {
    let d = x ^ (ONES * u64::from(b));
    d.wrapping_sub(ONES) & !d & HIGHS
}

/// A control byte as a head's lines see it: below 0x20 (CR, LF, NUL, tab among them) or DEL.
#[inline(always)]
pub fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// Bit 7 of each byte of `x` (little-endian) that is a control byte. The lowest mark is
/// exact (a borrow marks only bytes above one that matched), so `trailing_zeros / 8` is the
/// index of the first.
#[inline(always)]
pub fn control_marks(x: u64) -> u64 {
    let below = x.wrapping_sub(ONES * 0x20) & !x & HIGHS;
    below | byte_marks(x, 0x7f)
}

/// The index of the first control byte of `buf` at or after `from`.
#[inline(always)]
pub fn next_control(buf: &[u8], mut from: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        from = sse2::skip_plain(buf, from);
    }
    while let Some(w) = buf.get(from..from + 8) {
        let m = control_marks(word(w));
        if m != 0 {
            return Some(from + (m.trailing_zeros() / 8) as usize);
        }
        from += 8;
    }
    let tail = buf.get(from..)?;
    tail.iter().position(|&b| is_control(b)).map(|p| from + p)
}

/// The index of the first `needle` in `buf` at or after `from`. A head's lines are short,
/// and memchr's set-up per call (its dispatch, its AVX2 prologue) cost more than the scan of
/// a 40-byte line: 190 instructions a line in the guard's line count.
#[inline(always)]
pub fn find_byte(buf: &[u8], mut from: usize, needle: u8) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(i) = sse2::find(buf, &mut from, needle) {
            return Some(i);
        }
    }
    while let Some(w) = buf.get(from..from + 8) {
        let m = byte_marks(word(w), needle);
        if m != 0 {
            return Some(from + (m.trailing_zeros() / 8) as usize);
        }
        from += 8;
    }
    let tail = buf.get(from..)?;
    tail.iter().position(|&b| b == needle).map(|p| from + p)
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };

    /// `needle`'s index in the 16-byte blocks from `*from`, which is left at the start of
    /// the part shorter than 16 bytes when none has it.
    #[inline(always)]
    pub fn find(buf: &[u8], from: &mut usize, needle: u8) -> Option<usize> {
        while let Some(block) = buf.get(*from..*from + 16) {
            // SAFETY: `block` is 16 readable bytes (an unaligned load); SSE2 is baseline on
            // x86_64.
            let m = unsafe {
                let v = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
                _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(needle as i8)))
            };
            if m != 0 {
                return Some(*from + m.trailing_zeros() as usize);
            }
            *from += 16;
        }
        None
    }

    /// From `from`, past every 16-byte block with no control byte: the start of the first
    /// block that has one, or of the last part shorter than 16 bytes. SSE2 is part of every
    /// x86_64 processor, so there is nothing to detect.
    #[inline(always)]
    pub fn skip_plain(buf: &[u8], mut from: usize) -> usize {
        while let Some(block) = buf.get(from..from + 16) {
            // SAFETY: `block` is 16 readable bytes (an unaligned load); SSE2 is baseline on
            // x86_64.
            let m = unsafe {
                let v = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
                // v <= 0x1f (unsigned) exactly where max(v, 0x1f) == 0x1f
                let low = _mm_cmpeq_epi8(_mm_max_epu8(v, _mm_set1_epi8(0x1f)), _mm_set1_epi8(0x1f));
                let del = _mm_cmpeq_epi8(v, _mm_set1_epi8(0x7f));
                _mm_movemask_epi8(_mm_or_si128(low, del))
            };
            if m != 0 {
                return from;
            }
            from += 16;
        }
        from
    }
}

/// Bit 7 of each byte of `x` that is an ASCII letter, digit or `-`, the bytes of nearly
/// every field name; exact in every byte (no sum carries into the next byte).
#[inline(always)]
fn name_marks(x: u64) -> u64 {
    let v = x & !HIGHS;
    // the high bit of a byte of `v + k`: its low seven bits are at least 0x80 - k
    let at_least = |v: u64, lo: u8| v + ONES * u64::from(0x80 - lo);
    let above = |v: u64, hi: u8| v + ONES * u64::from(0x7f - hi);
    // setting the case bit maps exactly the letters of both cases into 'a'..='z'
    let l = v | (ONES * 0x20);
    let letter = at_least(l, b'a') & !above(l, b'z');
    let digit = at_least(v, b'0') & !above(v, b'9');
    let d = v ^ (ONES * u64::from(b'-'));
    let dash = !((d + !HIGHS) | d);
    (letter | digit | dash) & !x & HIGHS
}

/// The end of the bytes from `i` for which `tchar` holds (a field name): eight at a time
/// while all are letters, digits or `-`, then one at a time from the first that is not,
/// unless it is the colon after the name. `tchar` must hold for letters, digits and `-`.
#[inline(always)]
pub fn name_end(buf: &[u8], mut i: usize, tchar: impl Fn(u8) -> bool) -> usize {
    while let Some(w) = buf.get(i..i + 8) {
        let other = !name_marks(word(w)) & HIGHS;
        if other != 0 {
            i += (other.trailing_zeros() / 8) as usize;
            if buf[i] == b':' {
                return i;
            }
            break;
        }
        i += 8;
    }
    while i < buf.len() && tchar(buf[i]) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::Rng;

    fn tchar(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
    }

    #[test]
    fn word_scan_finds_the_first_control_byte() {
        let first = |w: [u8; 8]| match control_marks(u64::from_le_bytes(w)) {
            0 => None,
            m => Some(m.trailing_zeros() as usize / 8),
        };
        for fill in [b'a', b' ', b'~', 0x80, 0xff] {
            for b in 0..=255u8 {
                for at in 0..8 {
                    let mut w = [fill; 8];
                    w[at] = b;
                    let want = is_control(b).then_some(at);
                    assert_eq!(first(w), want, "{b:#x} at {at} among {fill:#x}");
                    // a second control byte after it does not move the first
                    for later in at + 1..8 {
                        let mut w2 = w;
                        w2[later] = b'\r';
                        let want = Some(if is_control(b) { at } else { later });
                        assert_eq!(first(w2), want, "{b:#x} at {at}, CR at {later}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_control_scan_finds_what_the_byte_scan_does() {
        let mut rng = Rng(3);
        for _ in 0..200_000 {
            let len = rng.below(70);
            // mostly plain text, so that the 16- and 8-byte steps are taken
            let v: Vec<u8> = (0..len)
                .map(|_| match rng.below(30) {
                    0 => rng.next() as u8,
                    1 => b"\r\n\t\x00\x1f\x20\x7e\x7f\x80\xff"[rng.below(10)],
                    _ => 0x20 + rng.below(0x5f) as u8,
                })
                .collect();
            let from = rng.below(len + 1);
            let want = v[from..]
                .iter()
                .position(|&b| is_control(b))
                .map(|p| from + p);
            assert_eq!(next_control(&v, from), want, "{v:?} from {from}");
        }
        for b in 0..=255u8 {
            for at in 0..40 {
                let mut v = vec![b'a'; 40];
                v[at] = b;
                let want = is_control(b).then_some(at);
                assert_eq!(next_control(&v, 0), want, "{b:#x} at {at}");
            }
        }
    }

    #[test]
    fn the_byte_search_finds_what_position_does() {
        let mut rng = Rng(5);
        for _ in 0..200_000 {
            let len = rng.below(80);
            let v: Vec<u8> = (0..len)
                .map(|_| match rng.below(25) {
                    0 => b'\n',
                    1 => rng.next() as u8,
                    _ => b'a' + rng.below(26) as u8,
                })
                .collect();
            let from = rng.below(len + 1);
            let want = v[from..].iter().position(|&b| b == b'\n').map(|p| from + p);
            assert_eq!(find_byte(&v, from, b'\n'), want, "{v:?} from {from}");
        }
        for needle in [0u8, b'\n', 0x7f, 0x80, 0xff] {
            for b in 0..=255u8 {
                for at in 0..40 {
                    let mut v = vec![b'a'; 40];
                    v[at] = b;
                    let want = (b == needle).then_some(at);
                    assert_eq!(find_byte(&v, 0, needle), want, "{b:#x} at {at}");
                }
            }
        }
    }

    #[test]
    fn the_name_scan_stops_where_the_byte_scan_does() {
        let byte_scan = |v: &[u8], from: usize| {
            let mut i = from;
            while i < v.len() && tchar(v[i]) {
                i += 1;
            }
            i
        };
        let mut rng = Rng(11);
        for _ in 0..300_000 {
            let len = rng.below(40);
            let v: Vec<u8> = (0..len)
                .map(|_| match rng.below(6) {
                    0 => b"\r\n :\t\x00\x7f\x80\xff\"(),;=@[]{}_.~"[rng.below(21)],
                    1 => rng.next() as u8,
                    2 => b'-',
                    _ => b"ContentTypeXfoward09"[rng.below(20)],
                })
                .collect();
            let from = rng.below(len + 1);
            assert_eq!(
                name_end(&v, from, tchar),
                byte_scan(&v, from),
                "{v:?} from {from}"
            );
        }
        for b in 0..=255u8 {
            for at in 0..9 {
                let mut v = b"x-forwarded-for: 1".to_vec();
                v[at] = b;
                assert_eq!(name_end(&v, 0, tchar), byte_scan(&v, 0), "{b:#x} at {at}");
            }
        }
    }
}
