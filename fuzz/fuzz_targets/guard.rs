//! The request-head guard's scanner, which sees every byte of every HTTP/1 request head
//! before Pingora parses it and runs the strict checks on the complete head (through the
//! library's `fuzz_scan` hook).
//!
//! Input: four bytes choosing the limits and how the bytes are split into reads, then the
//! bytes. Besides "no panic": the verdict (the error code, or whether and where the head
//! ends) must not depend on how TCP split the bytes into reads, and a read is never
//! reported as consuming more than it had.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::Duration;
use stepstone::http::guard::{fuzz_scan, HeadLimits};

/// Error code, or (head complete, bytes of the input consumed up to the head's end).
fn verdict(limits: HeadLimits, data: &[u8], cuts: &[usize]) -> Result<(bool, usize), u16> {
    let mut reads = Vec::new();
    let mut at = 0;
    for &c in cuts {
        let c = c.clamp(at, data.len());
        reads.push(&data[at..c]);
        at = c;
    }
    reads.push(&data[at..]);
    let stream: pingora_core::protocols::Stream = Box::new(tokio_test::io::Builder::new().build());
    let (answers, done) = fuzz_scan(stream, limits, &reads);
    let mut consumed = 0;
    for (r, a) in reads.iter().zip(&answers) {
        let n = (*a)?;
        assert!(n <= r.len(), "consumed {n} of a {}-byte read", r.len());
        consumed += n;
    }
    Ok((done, consumed))
}

fuzz_target!(|input: &[u8]| {
    let Some((sel, data)) = input.split_first_chunk::<4>() else {
        return;
    };
    // Mostly the real defaults, so that heads get as far as the strict checks; sometimes
    // tiny limits, so that every limit is hit at every position.
    let pick = |b: u8, small: usize, default: usize| if b < 96 { small } else { default };
    let limits = HeadLimits {
        max_request_line: pick(sel[0], sel[0] as usize, 8192),
        max_header_size: pick(sel[1], sel[1] as usize * 2, 32768),
        max_header_count: pick(sel[2], sel[2] as usize % 16, 100),
        header_timeout: Duration::from_secs(10),
    };
    let whole = verdict(limits, data, &[]);
    // Split points from a small xorshift seeded by the fourth byte.
    let mut x = sel[3] as u32 | 0x100;
    let mut cuts: Vec<usize> = (0..8)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as usize % (data.len() + 1)
        })
        .collect();
    cuts.sort_unstable();
    assert_eq!(whole, verdict(limits, data, &cuts), "cuts {cuts:?}");
    if data.len() <= 512 {
        let bytewise: Vec<usize> = (1..data.len()).collect();
        assert_eq!(whole, verdict(limits, data, &bytewise), "byte by byte");
    }
});
