//! Divergences between the lean engine and Pingora's general proxy (or between the HTTP/1
//! and HTTP/2 paths) that the unified request policy fixed, one test each, on real sockets:
//!
//! 1. an HTTP/2 (h2c) connection takes a `max_connections` slot;
//! 2. `h2c: true` keeps the lean engine for the listener's HTTP/1 requests;
//! 3. a CONNECT tunnel is logged and counted with status 200 and the bytes it relayed;
//! 4. an HTTP/2 request's access-log host and X-Forwarded-Host are its `:authority`, on both
//!    engines;
//! 5. `limits.client_timeout` closes a connection whose request body stalls, on both engines
//!    (one test per engine);
//! 6. `limits.keepalive_requests` closes the connection after the Nth answer, counting the
//!    requests of both engines on one connection;
//! 7. refused request heads and connections are counted in `stepstone_refusals_total`;
//! 8. an idle CONNECT tunnel is closed when shutdown starts, and the process exits 0;
//! 9. `upstream_keepalive_pool_size` is one total across backends for the lean engine's pool.
//!
//! Metrics come from the admin listener's `/metrics` (no token needed), on `{{port1}}`.

mod connect;
mod http2;
mod limits;

use crate::support::Proxy;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(5);
const ADMIN: &str = "admin: {address: 127.0.0.1:{{port1}}}\n";

// ---------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------

/// Start the proxy and wait until the listeners `others` (by `{{portN}}` index, the admin
/// listener among them) accept connections too; `Proxy::start` waits for the first only.
fn start(cfg: &str, others: &[usize]) -> Proxy {
    let mut p = Proxy::start(cfg);
    for &i in others {
        let addr = p.addr_of(i);
        p.wait_ready(addr).unwrap_or_else(|e| panic!("{e}"));
    }
    p
}

const FALLBACKS: &str = "stepstone_fast_path_fallbacks_total";
const REFUSALS: &str = "stepstone_refusals_total";

/// Until `deadline`, call `f` until it gives `Some`: for a connection that must be admitted
/// on a `max_connections: 1` listener while the readiness probe's slot may still be taken.
async fn admitted<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(Instant::now() < deadline, "{what}: never admitted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first access-log line (JSON) for which `pred` holds, waiting for the writer thread.
async fn log_line(
    file: &Path,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| pred(v));
        if let Some(v) = found {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "no access log line for {what} in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn upstream_app(origin: SocketAddr) -> String {
    format!("upstreams:\n  - name: app\n    backends: [{{address: {origin}}}]\n    retries: 0\n")
}
