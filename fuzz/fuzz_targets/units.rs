//! Duration (`500ms`, `2m`) and size (`64KiB`) parsing, used for every timeout and limit in
//! the config. Besides "no panic": what parses is in range, and whole numbers of a unit give
//! exactly that many units (no float rounding: `1ms` must not become 999.999µs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::Duration;
use stepstone::config::units::{parse_duration, parse_size};

const YEAR: u64 = 31_536_000;

fuzz_target!(|input: (&str, u64, u8)| {
    let (text, n, sel) = input;
    if let Ok(d) = parse_duration(text) {
        assert!(d <= Duration::from_secs(YEAR), "{text:?} gave {d:?}");
    }
    let _ = parse_size(text);

    let (unit, per) =
        [("ms", 1u64), ("s", 1000), ("m", 60_000), ("h", 3_600_000)][sel as usize % 4];
    let n = n % (YEAR * 1000 / per + 2);
    let want = Duration::from_millis(n * per);
    let got = parse_duration(&format!("{n}{unit}"));
    if want <= Duration::from_secs(YEAR) {
        assert_eq!(got, Ok(want), "{n}{unit}");
        assert_eq!(parse_duration(&format!(" {n} {unit} ")), Ok(want));
    } else {
        assert!(got.is_err(), "{n}{unit} is over a year");
    }

    let (unit, mult) = [
        ("", 1u64),
        ("B", 1),
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("KB", 1000),
        ("MB", 1_000_000),
        ("GB", 1_000_000_000),
    ][(sel >> 2) as usize % 8];
    let size = parse_size(&format!("{n}{unit}"));
    match n.checked_mul(mult) {
        Some(v) => assert_eq!(size, Ok(v), "{n}{unit}"),
        None => assert!(size.is_err()),
    }
});
