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

pub struct ReloadService {
    stores: Vec<Arc<CertStore>>,
}

/// The reload service for every store registered so far, if there is any. Add it after all
/// listeners are built.
pub fn service() -> Option<ReloadService> {
    let stores = super::stores();
    (!stores.is_empty()).then_some(ReloadService { stores })
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
        let polled: Vec<_> = self
            .stores
            .iter()
            .filter(|s| !s.spec.reload_interval.is_zero())
            .collect();
        let step = polled
            .iter()
            .map(|s| s.spec.reload_interval)
            .min()
            .unwrap_or(Duration::from_secs(3600));
        let mut due: Vec<Instant> = polled
            .iter()
            .map(|s| Instant::now() + s.spec.reload_interval)
            .collect();
        let mut tick = tokio::time::interval(step);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        info!(
            "tls: certificate reload ready for {} listener(s): SIGHUP, or file changes",
            self.stores.len()
        );
        loop {
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
                    for s in &self.stores {
                        s.reload("SIGHUP");
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    for (s, d) in polled.iter().zip(due.iter_mut()) {
                        if now >= *d {
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
}
