//! The admin listener's `/metrics`, read as tests need it: one scrape, one series summed
//! over its labels, and a wait for a counter that is bumped when a request ends.

use super::{client, Proxy};
use std::time::{Duration, Instant};

/// The text of `/metrics` from the admin listener on `{{port1}}` (no token).
pub async fn metrics(p: &Proxy) -> String {
    client::get(p.addr_of(1), "/metrics", &[])
        .await
        .expect("admin /metrics answers")
        .text()
}

/// Sum of the samples of metric `name` whose labels contain every one of `labels`
/// (`key="value"` strings). 0 when there is none.
pub fn series(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, lbls) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            (n == name && labels.iter().all(|x| lbls.contains(x)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Poll `/metrics` until the series sum is `want` (the counters are bumped when a request
/// ends, which may be a moment after the client saw the answer); the last text seen.
pub async fn wait_series(p: &Proxy, name: &str, labels: &[&str], want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics(p).await;
        if series(&text, name, labels) == want || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
