//! The `Date` of the proxy's HTTP/1 writers, formatted once a second per thread.

thread_local! {
    static DATE: std::cell::RefCell<(u64, [u8; 29])> = const { std::cell::RefCell::new((0, [0; 29])) };
}

/// Append the IMF-fixdate of now.
pub fn now(out: &mut Vec<u8>) {
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs || d.1[0] == 0 {
            let s = httpdate::fmt_http_date(now);
            let n = s.len().min(29);
            d.1[..n].copy_from_slice(&s.as_bytes()[..n]);
            d.0 = secs;
        }
        out.extend_from_slice(&d.1);
    });
}
