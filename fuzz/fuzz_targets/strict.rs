//! The strict request-head checks (src/http/strict.rs) that stand between a client and
//! Pingora's HTTP/1 parser against request smuggling.
//!
//! Besides "no panic": a refusal is 400 or 501, and a head it accepts is read the same way
//! by the parser behind it (httparse, as Pingora calls it): when the checks see a complete
//! head, httparse either refuses it or finds the same end. A head the guard considers
//! complete but the parser does not would let the parser read on past the guard's limits.
//! And it carries at most one Host field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stepstone::policy::head::check_head;

fuzz_target!(|data: &[u8]| {
    // The guard skips empty lines before the request line and never hands them over.
    if matches!(data.first(), None | Some(b'\r' | b'\n')) {
        return;
    }
    if let Err(r) = check_head(data) {
        assert!(r.status == 400 || r.status == 501, "{r:?}");
        return;
    }
    // Accepted: find the end of the head as the checks did, line by line.
    let mut end = None;
    let mut pos = 0;
    let mut first = true;
    while let Some(lf) = data[pos..].iter().position(|&b| b == b'\n') {
        let line = &data[pos..pos + lf];
        assert!(line.last() == Some(&b'\r'), "accepted a line without CRLF");
        assert!(
            !line[..line.len() - 1].contains(&b'\r'),
            "accepted a bare CR"
        );
        pos += lf + 1;
        if !first && line == b"\r" {
            end = Some(pos);
            break;
        }
        first = false;
    }
    let Some(end) = end else {
        return; // no empty line yet: the guard keeps reading
    };
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(data) {
        Ok(httparse::Status::Complete(n)) => {
            assert_eq!(n, end, "httparse ends the head elsewhere");
            // One Host only: the router reads the first, other servers the last.
            let hosts = req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("host"))
                .count();
            assert!(hosts <= 1, "accepted {hosts} Host fields");
        }
        Ok(httparse::Status::Partial) => {
            panic!("accepted a complete head httparse finds incomplete")
        }
        Err(_) => {} // Pingora answers 400: nothing is forwarded
    }
});
