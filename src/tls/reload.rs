//! Certificate reload as a Pingora background service: SIGHUP reloads every TLS listener at
//! once; in between, each listener's files are polled (mtime, size, inode) at its
//! `reload_interval`. A reload never touches established connections (see
//! [`super::store`]).

use super::store::CertStore;
use async_trait::async_trait;
use log::{info, warn};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct ReloadService;

/// How often the list of listeners is looked at for files to poll when none has a
/// `reload_interval` sooner (a reload may add one).
const IDLE_STEP: Duration = Duration::from_secs(1);

/// The certificate reload service. Add it after the listeners are built; it also watches
/// the TLS listeners that configuration reloads add, and stops watching those they remove.
pub fn service() -> ReloadService {
    ReloadService
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!("tls: cannot listen for SIGHUP, only polling for changes: {e}");
                None
            }
        };
        info!(
            "tls: certificate reload ready for {} listener(s): SIGHUP, or file changes",
            super::stores().len()
        );
        // when each polled store is next due, by store
        let mut due: Vec<(Arc<CertStore>, Instant)> = Vec::new();
        loop {
            let now = Instant::now();
            let stores = super::stores();
            // stores a reload removed are dropped, stores it added are first due an interval on
            due.retain(|(s, _)| stores.iter().any(|t| Arc::ptr_eq(s, t)));
            for s in stores.iter().filter(|s| !s.spec.reload_interval.is_zero()) {
                if !due.iter().any(|(t, _)| Arc::ptr_eq(s, t)) {
                    due.push((s.clone(), now + s.spec.reload_interval));
                }
            }
            let next = due
                .iter()
                .map(|(_, d)| *d)
                .min()
                .unwrap_or(now + IDLE_STEP)
                .min(now + IDLE_STEP);
            let sighup = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = sighup => {
                    info!("tls: SIGHUP: reloading certificates");
                    for s in &stores {
                        s.reload("SIGHUP");
                    }
                }
                _ = tokio::time::sleep_until(next.into()) => {
                    let now = Instant::now();
                    for (s, d) in due.iter_mut().filter(|(_, d)| now >= *d) {
                        *d = now + s.spec.reload_interval;
                        // File reads are small and rare; doing them inline is simpler
                        // than a blocking pool and harmless for this background task.
                        s.poll();
                    }
                }
            }
        }
    }
}
