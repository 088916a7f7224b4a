//! The lean engine's head parser (src/http/fast/parse.rs) against httparse, which it stands
//! in for on the common shape of a head: on every input, as a request head and as a
//! response head, the result (complete with its length, partial, or the same error) and
//! everything parsed (method, target, version, status, reason, each field's name and value
//! as the same bytes of the input) must be httparse's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stepstone::http::fast::{agree_request, agree_response};

fuzz_target!(|data: &[u8]| {
    agree_request(data);
    agree_response(data);
});
