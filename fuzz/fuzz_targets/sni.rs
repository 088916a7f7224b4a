//! The ClientHello/SNI peek of tls_passthrough listeners, on bytes from any client.
//!
//! Besides "no panic": a name it returns is a valid lower-case host name (it becomes a
//! routing key and a log field), and the answer does not depend on how TCP split the
//! bytes: a prefix that fails means the whole fails, and a prefix that is complete gives the
//! same name as the whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stepstone::config::valid_hostname;
use stepstone::l4::sni::{parse_client_hello, Hello};

fuzz_target!(|data: &[u8]| {
    let full = parse_client_hello(data);
    if let Ok(Hello::Done(Some(name))) = &full {
        assert!(valid_hostname(name), "{name:?}");
        assert_eq!(name, &name.to_ascii_lowercase());
    }
    // A handful of split points rather than all: the parser is linear, this is quadratic.
    let n = data.len();
    let mut cuts: Vec<usize> = vec![0, 1, 2, 4, 5, 6, 9, n / 3, n / 2, n.saturating_sub(1)];
    if let Some(&b) = data.first() {
        cuts.push(b as usize * n / 256);
    }
    for cut in cuts.into_iter().filter(|&c| c < n) {
        match parse_client_hello(&data[..cut]) {
            Err(e) => assert!(
                full.is_err(),
                "prefix of {cut} bytes failed ({e}), whole: {full:?}"
            ),
            Ok(Hello::Done(name)) => assert_eq!(full, Ok(Hello::Done(name))),
            Ok(Hello::Incomplete) => {}
        }
    }
});
