//! Reload in place: re-read the file, validate it whole, build the new runtime beside the old
//! one and swap it in.
//!
//! What a reload replaces, per HTTP listener, is its policy (routes and the pools they lead to)
//! and the two engines built around it ([`EngineSwap`]); each request takes the engines in
//! force when it starts, so requests in flight finish on theirs and no connection is closed.
//! Pools of unchanged upstreams are the very same objects (connections, health, outlier
//! state and counters stay); a changed upstream gets a new pool that takes over the slots of
//! the backends it keeps ([`Pool::carry_over`]). The operator's runtime changes live outside
//! the pools ([`crate::upstream::live`]) and apply to whatever pool has the backend.
//!
//! Every listener, HTTP or L4, plaintext or TLS, runs our own accept loop
//! ([`crate::net::listen`]), so a reload adds and removes them (a new address is a removal
//! plus an addition; an L4 listener added takes the new pools), and replaces one whose
//! settings changed at the same address: the old accept loops hand their sockets to the new
//! ones ([`crate::net::control`]), so no queued connection is lost and the address is never
//! free. A TLS listener's certificates are watched from the moment it is added, and no longer
//! once it is removed or replaced, and so are its ACME orders. An HTTP/3 side starts and
//! drains with its listener, and a replacement keeps its QUIC endpoint (the connections
//! live in its socket) with new settings. The access log takes its new format and output
//! (opened before anything changes), tracing its ratio and collector, the admin API its
//! token, the cache store its size (made when a first cache is enabled, shrunk by evicting
//! at once); the admin listener moves (the new address listens before the old one stops).
//! What cannot change in place (the `pingora` block, `config_source`) is refused with an
//! error that says an upgrade (`-s upgrade`) is needed; nothing is applied then.
//!
//! [`apply`] is the one entry point for a new configuration, whatever its source (the file
//! here; a watcher of a configuration store would call it the same way).

use super::{http_listener, pool_max, HttpProxy};
use crate::config::file::ListenerProtocol;
use crate::config::{Config, ListenerSpec, UpstreamSpec};
use crate::http::fast::FastPath;
use crate::http::service::EngineSwap;
use crate::net::control::{Remote, Socket};
use crate::upstream::Pool;
use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::ShutdownWatch;
use std::sync::{Arc, Mutex};

/// A listener of the running configuration: what stops it, and for an HTTP listener the
/// handle to replace its engines.
pub struct ListenerHandle {
    spec: ListenerSpec,
    /// HTTP listeners only.
    swap: Option<EngineSwap<HttpProxy>>,
    /// Stops its accept loops, or takes their sockets.
    remote: Remote,
    /// Stops its HTTP/3 side (it drains), or takes its endpoint.
    quic: Option<Remote<quinn::Endpoint>>,
    /// A replacement's HTTP/3 side, built and waiting for the endpoint of the listener it
    /// replaces (or to bind its own, if that one had none).
    quic_pending: Option<crate::http::h3::H3Service>,
    /// A TLS listener's certificates, forgotten by the reload service when it is removed.
    store: Option<Arc<crate::tls::store::CertStore>>,
    /// An HTTP listener's open connections (TCP and QUIC), which a listener replacing it
    /// counts on.
    open: Option<Arc<std::sync::atomic::AtomicUsize>>,
}

/// How long a replaced listener's accept loops may take to hand their sockets over: they are
/// tasks that end at their next poll, so only a stalled runtime comes near it.
const HAND_OVER_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

impl ListenerHandle {
    pub fn new(
        spec: &ListenerSpec,
        swap: Option<EngineSwap<HttpProxy>>,
        remote: Remote,
        store: Option<Arc<crate::tls::store::CertStore>>,
    ) -> ListenerHandle {
        ListenerHandle {
            spec: spec.clone(),
            swap,
            remote,
            quic: None,
            quic_pending: None,
            store,
            open: None,
        }
    }

    /// With the open-connection count a replacement counts on.
    pub fn counting(mut self, open: Arc<std::sync::atomic::AtomicUsize>) -> ListenerHandle {
        self.open = Some(open);
        self
    }

    /// With the HTTP/3 side that `quic` stops; `pending`: built, not yet started (a
    /// replacement's, started by the reload once the listener it replaces is stopped).
    pub fn with_quic(
        mut self,
        quic: Remote<quinn::Endpoint>,
        pending: Option<crate::http::h3::H3Service>,
    ) -> ListenerHandle {
        self.quic = Some(quic);
        self.quic_pending = pending;
        self
    }

    /// Stop accepting; connections in progress finish on the engines they have.
    pub fn stop(&self) {
        self.remote.stop();
        if let Some(q) = &self.quic {
            q.stop();
        }
        self.forget_store();
    }

    /// Stop accepting and give the sockets (and the connections queued on them) to the
    /// listener that replaces this one; connections in progress finish on their engines.
    fn hand_over(&self) -> Result<Vec<Socket>, String> {
        self.forget_store();
        let mut socks = self.remote.hand_over(HAND_OVER_WITHIN)?;
        // the first socket of the address first, as a new listener binds them
        socks.sort_by(|a, b| (a.0.len(), &a.0).cmp(&(b.0.len(), &b.0)));
        Ok(socks)
    }

    fn forget_store(&self) {
        if let Some(store) = &self.store {
            crate::tls::forget(store);
        }
    }
}

struct Running {
    cfg: Config,
    pools: Vec<Arc<Pool>>,
    listeners: Vec<ListenerHandle>,
    /// Stops the admin listener's accept loop (moved or removed by a reload).
    admin: Option<Remote>,
}

struct Live {
    conf: Arc<ServerConf>,
    /// Held for the whole of a reload: one at a time.
    running: Mutex<Running>,
}

static LIVE: once_cell::sync::OnceCell<Live> = once_cell::sync::OnceCell::new();

/// What `/status` and `stepstone -s reload` read.
#[derive(Default, Clone)]
struct Outcome {
    revision: u64,
    /// Reloads tried so far; `-s reload` waits for it to move.
    attempts: u64,
    last_error: Option<String>,
    ok_total: u64,
    error_total: u64,
}

static OUTCOME: Mutex<Outcome> = Mutex::new(Outcome {
    revision: 0,
    attempts: 0,
    last_error: None,
    ok_total: 0,
    error_total: 0,
});

fn outcome() -> std::sync::MutexGuard<'static, Outcome> {
    OUTCOME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Record the running configuration (revision 1).
pub fn init(
    cfg: &Config,
    conf: Arc<ServerConf>,
    pools: Vec<Arc<Pool>>,
    listeners: Vec<ListenerHandle>,
    admin: Option<Remote>,
) {
    let running = Running {
        cfg: cfg.clone(),
        pools,
        listeners,
        admin,
    };
    let _ = LIVE.set(Live {
        conf,
        running: Mutex::new(running),
    });
    outcome().revision = 1;
    crate::observability::config_reloaded(None, 1);
    write_result();
}

/// Where `stepstone -s reload` reads the outcome: beside the pid file.
pub fn result_file(pid_file: &str) -> std::path::PathBuf {
    std::path::Path::new(pid_file).with_extension("reload.json")
}

fn write_result() {
    let Some(live) = LIVE.get() else { return };
    let path = result_file(&live.conf.pid_file);
    let o = outcome().clone();
    let text = serde_json::json!({
        "pid": std::process::id(),
        "attempts": o.attempts,
        "revision": o.revision,
        "last_error": o.last_error,
    })
    .to_string();
    let tmp = path.with_extension("reload.json.tmp");
    if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path)) {
        log::warn!("reload: cannot write {}: {e}", path.display());
    }
}

/// The reload part of `/status`.
pub fn status() -> serde_json::Value {
    let o = outcome().clone();
    let file = LIVE.get().map(|l| {
        l.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cfg
            .file
            .clone()
    });
    serde_json::json!({
        "file": file,
        "revision": o.revision,
        "reloads": {"ok": o.ok_total, "error": o.error_total},
        "last_error": o.last_error,
    })
}

/// Re-read the file the process runs on and apply it: the revision now in force, or the
/// error (which also goes to the log, `/status` and the metrics).
pub fn reload_now() -> Result<u64, String> {
    on_worker(Box::new(|| {
        let Some(live) = LIVE.get() else {
            return Err("not running yet".into());
        };
        let file = live
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cfg
            .file
            .clone();
        // with a config_source, the file merged with the routing document in force
        match super::fleet::load(&file) {
            Ok(cfg) => apply_here(cfg),
            Err(e) => {
                let e = e.to_string();
                record(Err(e.clone()));
                Err(e)
            }
        }
    }))
}

type Job = Box<dyn FnOnce() -> Result<u64, String> + Send>;

/// Reloads run one at a time on a thread of their own: the file read and any DNS lookup
/// block no async worker, and the runtime a reload builds is always allocated by the same
/// thread, whose allocator heap then reuses what the previous runtime freed (reloads spread
/// over the admin workers made each of them keep its own copy).
fn on_worker(job: Job) -> Result<u64, String> {
    type Queue = std::sync::mpsc::Sender<(Job, std::sync::mpsc::Sender<Result<u64, String>>)>;
    static WORKER: once_cell::sync::OnceCell<Mutex<Queue>> = once_cell::sync::OnceCell::new();
    let queue = WORKER.get_or_try_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<(Job, std::sync::mpsc::Sender<_>)>();
        std::thread::Builder::new()
            .name("reload".into())
            .spawn(move || {
                for (job, done) in rx {
                    let _ = done.send(job());
                }
            })
            .map(|_| Mutex::new(tx))
            .map_err(|e| format!("cannot start the reload thread: {e}"))
    })?;
    let (done, result) = std::sync::mpsc::channel();
    queue
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((job, done))
        .map_err(|_| "the reload thread is gone".to_string())?;
    result
        .recv()
        .map_err(|_| "the reload thread is gone".to_string())?
}

fn record(res: Result<u64, String>) {
    {
        let mut o = outcome();
        o.attempts += 1;
        match &res {
            Ok(rev) => {
                o.revision = *rev;
                o.ok_total += 1;
                o.last_error = None;
                log::info!("reload: configuration revision {rev} in force");
            }
            Err(e) => {
                o.error_total += 1;
                o.last_error = Some(e.clone());
                log::error!(
                    "reload refused, revision {} stays in force: {e}",
                    o.revision
                );
            }
        }
        crate::observability::config_reloaded(Some(res.is_ok()), o.revision);
    }
    write_result();
}

/// Validate `cfg` against the running configuration, build its runtime and swap it in.
/// Nothing changes when it fails. The one entry point for a new configuration, whatever its
/// source.
pub fn apply(cfg: Config) -> Result<u64, String> {
    on_worker(Box::new(move || apply_here(cfg)))
}

fn apply_here(cfg: Config) -> Result<u64, String> {
    let Some(live) = LIVE.get() else {
        return Err("not running yet".into());
    };
    let mut running = live.running.lock().unwrap_or_else(|e| e.into_inner());
    let res = swap(live, &mut running, cfg);
    record(res.clone());
    res
}

fn dbg<T: std::fmt::Debug>(v: &T) -> String {
    format!("{v:?}")
}

fn only_backends_differ(old: &UpstreamSpec, new: &UpstreamSpec) -> bool {
    if !old.dns_backends.is_empty() || !new.dns_backends.is_empty() {
        return false;
    }
    let mut same = new.clone();
    same.backends = old.backends.clone();
    dbg(old) == dbg(&same)
}

/// Whether a reload keeps the running listener `old` for `new` (same address): the same name
/// and settings. The key path of its TLS block (`listeners[N].tls`, for log lines) is where
/// it sits in the file, not a setting: removing a listener before it moves it. Its store
/// keeps the old path (its metrics are labelled by the name, which stays).
fn kept(old: &ListenerSpec, new: &ListenerSpec) -> bool {
    let mut moved = new.clone();
    if let (Some(o), Some(n)) = (&old.tls, &mut moved.tls) {
        n.key_path.clone_from(&o.key_path);
    }
    dbg(old) == dbg(&moved)
}

/// Whether L4 listener `l` (kept by its settings) uses an upstream whose pool this reload
/// replaces: its accept loop holds the pools it started with, so it starts anew. A pool that
/// only took a new backends list is the same pool. The upstream indices are the same in
/// both files' lists, since the listener's settings (which hold them) did not change.
fn uses_new_pools(l: &ListenerSpec, old: &[Arc<Pool>], new: &[Arc<Pool>]) -> bool {
    let Some(s) = &l.l4 else { return false };
    let uses = s
        .upstream
        .iter()
        .chain(s.sni_routes.iter().map(|(_, u)| u))
        .chain(s.default_upstream.iter());
    uses.copied().any(|u| match (old.get(u), new.get(u)) {
        (Some(o), Some(n)) => !Arc::ptr_eq(o, n),
        _ => true,
    })
}

fn needs_upgrade(file: &str, what: &str) -> String {
    format!("{file}: {what}: this change cannot be applied by a reload; an upgrade (stepstone -s upgrade) is needed")
}

/// Refuse what a reload cannot change.
fn check(old: &Config, new: &Config) -> Result<(), String> {
    let f = &new.file;
    if dbg(&old.pingora) != dbg(&new.pingora) {
        return Err(needs_upgrade(f, "pingora"));
    }
    if old.config_source != new.config_source {
        return Err(needs_upgrade(f, "config_source"));
    }
    Ok(())
}

fn swap(live: &Live, running: &mut Running, cfg: Config) -> Result<u64, String> {
    check(&running.cfg, &cfg)?;
    let old_cache = running.cfg.cache_store_size;
    // opened now: a path that cannot be opened fails the reload before anything changed
    let access_log = crate::observability::prepare_access_log(
        &cfg.file,
        running.cfg.access_log.as_ref(),
        cfg.access_log.as_ref(),
    )?;
    // an upstream made sticky by this reload gets its key file now, as at start-up
    crate::upstream::sticky::load(&cfg)?;
    // The new pools: unchanged upstreams keep theirs; a changed one takes over the backends
    // it keeps from the old pool (when their TLS settings are the same).
    let pools: Vec<Arc<Pool>> = cfg
        .upstreams
        .iter()
        .map(|u| match running.pools.iter().find(|p| p.name == u.name) {
            Some(p) if dbg(&p.spec) == dbg(u) => p.clone(),
            // only the static backends changed: the same pool takes the new list, so the
            // backends it keeps keep their slots and their health checks run on
            Some(p) if only_backends_differ(&p.spec, u) => {
                p.set_backends(&u.backends);
                p.clone()
            }
            Some(p) => {
                let n = Arc::new(Pool::new(u));
                if dbg(&p.spec.tls) == dbg(&u.tls) {
                    n.carry_over(p);
                }
                n
            }
            None => Arc::new(Pool::new(u)),
        })
        .collect();
    let pool_max = pool_max(&live.conf);
    // Each listener of the new file is kept (the listener at its address, same name and
    // settings: its engines take the new routes below), replaces the one at its address (its
    // settings changed, or, for L4, the pools it uses: it starts anew on that listener's
    // sockets), or is added (a new address). Whatever can fail (binding a new address,
    // reading certificates) is done for all of them before any running listener changes.
    let mut added: Vec<ListenerHandle> = Vec::new();
    let mut replacing: Vec<(ListenerHandle, crate::net::listen::Pending)> = Vec::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        let old = running.listeners.iter().find(|h| h.spec.addr == l.addr);
        let res = match old {
            Some(h) if kept(&h.spec, l) && !uses_new_pools(l, &running.pools, &pools) => continue,
            Some(h) => {
                let mut later = crate::net::listen::Start::Later(None);
                // its connections still open count against the new one's max_connections
                let counted = h.open.clone();
                let (conf, start) = (&live.conf, &mut later);
                super::start_listener(i, l, &cfg, &pools, conf, start, counted).and_then(|h| {
                    let crate::net::listen::Start::Later(Some(p)) = later else {
                        h.forget_store();
                        return Err("not built".to_string());
                    };
                    replacing.push((h, p));
                    Ok(())
                })
            }
            None => {
                let mut now = crate::net::listen::Start::Spawned;
                super::start_listener(i, l, &cfg, &pools, &live.conf, &mut now, None).map(|h| {
                    log::info!("reload: listener {} ({}) added", l.name, l.addr);
                    added.push(h)
                })
            }
        };
        if let Err(e) = res {
            undo(&added, &replacing);
            return Err(format!("{}: listeners[{i}] ({}): {e}", cfg.file, l.name));
        }
    }
    // The admin listener at a new address (or added) listens now, beside the old one; the
    // old one stops below, once nothing can fail. Its connections, the one that asked for
    // this reload among them, finish.
    let old_admin = running.cfg.admin.as_ref().map(|a| a.addr);
    let admin_moved = cfg.admin.as_ref().map(|a| a.addr) != old_admin;
    let mut new_admin = None;
    if let (true, Some(a)) = (admin_moved, &cfg.admin) {
        let (remote, stop) = crate::net::control::pair();
        let mut now = crate::net::listen::Start::Spawned;
        if let Err(e) = super::start_admin(a, &mut now, stop) {
            undo(&added, &replacing);
            return Err(format!("{}: admin.address ({}): {e}", cfg.file, a.addr));
        }
        new_admin = Some(remote);
    }
    // Nothing fails from here on. The cache store first: routes the new engines cache on
    // find it at its new size.
    let evicted = crate::cache::apply_config(&cfg);
    if old_cache != cfg.cache_store_size {
        let size = |s: Option<u64>| s.map_or("none".into(), |n| n.to_string());
        log::info!(
            "reload: cache store size {} (was {}), {evicted} entries evicted",
            size(cfg.cache_store_size),
            size(old_cache),
        );
    }
    if admin_moved {
        if let Some(old) = running.admin.take() {
            old.stop();
        }
        running.admin = new_admin;
        log::info!(
            "reload: admin listener {} (was {})",
            cfg.admin
                .as_ref()
                .map_or("removed".into(), |a| a.addr.to_string()),
            old_admin.map_or("none".into(), |a| a.to_string()),
        );
    }
    // Removed listeners (no listener of the new file at their address) stop accepting;
    // their connections finish on the engines they have.
    running.listeners.retain(|h| {
        let stays = cfg.listeners.iter().any(|l| l.addr == h.spec.addr);
        if !stays {
            log::info!("reload: listener {} ({}) removed", h.spec.name, h.spec.addr);
            h.stop();
        }
        stays
    });
    // Replaced listeners hand their sockets to their successors; their connections too
    // finish on the engines they have.
    // (built from the new file already: the routes below are for the listeners kept)
    let replaced: Vec<std::net::SocketAddr> = replacing.iter().map(|(h, _)| h.spec.addr).collect();
    for (mut new, start) in replacing {
        let Some(k) = running
            .listeners
            .iter()
            .position(|h| h.spec.addr == new.spec.addr)
        else {
            continue;
        };
        let old = running.listeners.swap_remove(k);
        let (name, addr) = (new.spec.name.clone(), new.spec.addr);
        match old
            .hand_over()
            .and_then(|socks| start.run(socks).map_err(|e| e.to_string()))
        {
            Ok(()) => {
                log::info!("reload: listener {name} ({addr}) changed: started anew on its sockets")
            }
            // Not seen: the old loops are tasks that end at once, the new ones are spawned.
            Err(e) => log::error!(
                "reload: listener {name} ({addr}): could not take over its sockets: {e}"
            ),
        }
        // Its HTTP/3 side: the endpoint goes on under the new settings; turned off, the old
        // side drains; turned on, a new endpoint binds the UDP port.
        let quic = match (&old.quic, new.quic_pending.take()) {
            (Some(q), Some(h3)) => q
                .hand_over(HAND_OVER_WITHIN)
                .and_then(|mut e| e.pop().ok_or_else(|| "no QUIC endpoint".to_string()))
                .and_then(|e| h3.adopt(e)),
            (Some(q), None) => {
                q.stop();
                Ok(())
            }
            (None, Some(h3)) => h3.spawn(),
            (None, None) => Ok(()),
        };
        if let Err(e) = quic {
            log::error!("reload: listener {name} ({addr}): its HTTP/3 side: {e}");
        }
        running.listeners.push(new);
    }
    for (i, l) in cfg.listeners.iter().enumerate() {
        // a forward proxy has no routes; L4 listeners use pools that did not change
        if l.forward.is_some()
            || !matches!(l.protocol, ListenerProtocol::Http | ListenerProtocol::Https)
            || replaced.contains(&l.addr)
        {
            continue;
        }
        let Some(h) = running.listeners.iter_mut().find(|h| h.spec.addr == l.addr) else {
            continue;
        };
        let Some(swap) = &h.swap else { continue };
        let listener = http_listener(i, l, &cfg, &pools);
        let fast = Arc::new(FastPath::new(listener.clone(), pool_max));
        swap.install(HttpProxy { listener }, Some(fast));
        h.spec = l.clone();
    }
    running.listeners.extend(added);
    access_log.apply();
    if let Some(a) = &cfg.admin {
        crate::admin::set_token(a.token.as_deref());
    }
    crate::observability::tracing::set(cfg.tracing.as_ref());
    crate::observability::set_routes(&cfg);
    crate::upstream::live::prune(&cfg.upstreams);
    crate::upstream::live::set_pools(pools.clone());
    running.pools = pools;
    running.cfg = cfg;
    Ok(outcome().revision + 1)
}

/// A reload that fails after starting listeners: the added ones stop, the replacements
/// built (not started) forget their certificate stores.
fn undo(added: &[ListenerHandle], replacing: &[(ListenerHandle, crate::net::listen::Pending)]) {
    for h in added {
        h.stop();
    }
    for (h, _) in replacing {
        h.forget_store();
    }
}

/// SIGHUP: reload the configuration (the TLS service reloads the certificates on the same
/// signal). Its runtime (a worker per configured thread) also runs the listeners that reloads
/// add, and it keeps the fd table for them, so an upgrade hands them over too.
pub struct ReloadService;

#[async_trait]
impl pingora_core::services::Service for ReloadService {
    async fn start_service(
        &mut self,
        fds: Option<pingora_core::server::ListenFds>,
        mut shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        crate::net::listen::adopt_runtime(fds);
        crate::net::listen::adopt_shutdown(&shutdown);
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("reload: cannot listen for SIGHUP: {e}");
                let _ = shutdown.changed().await;
                return;
            }
        };
        // SIGUSR1: reopen the log files (logrotate), as nginx does
        let mut usr1 = signal(SignalKind::user_defined1())
            .map_err(|e| log::warn!("logs: cannot listen for SIGUSR1: {e}"))
            .ok();
        loop {
            let reopen = async {
                match usr1.as_mut() {
                    Some(u) => u.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = reopen => {
                    match crate::observability::reopen_logs() {
                        Ok(()) => log::info!("logs: SIGUSR1: reopened"),
                        Err(e) => log::error!("logs: SIGUSR1: cannot reopen: {e}"),
                    }
                }
                _ = hup.recv() => {
                    log::info!("reload: SIGHUP: re-reading the configuration");
                    // waits a few ms for the reload thread; this runtime's other work
                    // (listeners added by reloads) has the other workers
                    let _ = reload_now();
                }
            }
        }
    }

    fn name(&self) -> &str {
        "config reload"
    }

    /// No socket of its own at start: the listeners that reloads add are in the configuration
    /// a new process starts with, and their services claim them there.
    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(Vec::new())
    }
}
