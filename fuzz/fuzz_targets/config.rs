//! The config loader: YAML text through serde into the file types, then validation into the
//! runtime types. Whatever the text, the answer is a Config or a ConfigError, never a panic.
//!
//! The file name lies in the repository's conf/ so that relative paths in an input (a
//! forward proxy's `users_file: proxy-users`, certificate files) resolve to real files and
//! the fuzzer reaches the code behind them. Inputs naming device or kernel files are skipped:
//! `users_file: /dev/zero` would only make the harness read forever, and an operator's own
//! config is not hostile input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stepstone::config::Config;

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/fuzz.yaml");

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if ["/dev", "/proc", "/sys", "/run"]
        .iter()
        .any(|p| text.contains(p))
    {
        return;
    }
    match Config::from_yaml(FILE, text) {
        Ok(_) => {}
        Err(e) => {
            // Every error names the file it is about.
            assert_eq!(e.file, FILE);
            let _ = e.to_string();
        }
    }
});
