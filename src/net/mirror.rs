//! The sender of mirrored requests ([`crate::policy::mirror`]): a plain HTTP/1.1 client that
//! opens a connection to a backend of the mirror upstream, writes the copy (which asks for
//! `Connection: close`), and reads the answer to its end only to throw it away. It runs on
//! a task of its own, so nothing it does (a slow shadow, a refused connect) reaches or
//! delays the client of the primary request. Each step is bounded by the mirror upstream's
//! `connect_timeout`, `write_timeout` and `read_timeout` (per read, and for the whole
//! answer).

use crate::policy::mirror::Permit;
use crate::upstream::Pick;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Send `copy` on its own task; the permit is held until the copy is done.
pub fn send(permit: Permit, copy: Vec<u8>) {
    let hash = crate::policy::mirror::hash_of_copy(&permit.mirror.pool, &copy);
    let pick = match permit.mirror.pool.select(hash, 0) {
        Some(p) => p,
        None => {
            let stats = &permit.mirror.pool.shadow;
            stats.no_backend.fetch_add(1, Relaxed);
            return;
        }
    };
    tokio::spawn(async move {
        if let Err(e) = exchange(&permit, &pick, &copy).await {
            permit.mirror.pool.shadow.errors.fetch_add(1, Relaxed);
            log::debug!(
                "mirror copy to {} (upstream {}) failed: {e}",
                pick.slot.label,
                permit.mirror.pool.name
            );
        }
    });
}

async fn exchange(permit: &Permit, pick: &Pick, copy: &[u8]) -> std::io::Result<()> {
    let pool = &permit.mirror.pool;
    let mut s = timed(pool.connect_timeout, TcpStream::connect(pick.slot.addr)).await?;
    let _ = s.set_nodelay(true);
    timed(pool.spec.write_timeout, s.write_all(copy)).await?;
    // the answer is read and dropped, into no buffer of this task's (see net::discard)
    super::discard::discard(&mut s, pool.read_timeout, pool.read_timeout).await
}

async fn timed<T>(
    d: Duration,
    f: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(d, f)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}
