//! Fleet configuration from etcd (`config_source.etcd`): every instance takes `upstreams`
//! and `routes` from one key, merges them into its own file (listeners, admin, pingora,
//! access log) and applies each new revision like a reload ([`super::reload::apply`]: the
//! same validation and atomic swap). A revision that fails is refused by this instance, which
//! keeps the last good one and shows the refusal in `/status`.
//!
//! The last good document is written to `cache_file`. An instance that starts while etcd is
//! unreachable serves from that file and keeps trying; without it, it refuses to start. etcd
//! going away never stops serving: the watch reconnects with backoff and resumes from the
//! last revision seen, so no revision is missed.

use crate::config::source::{EtcdEndpoint, EtcdSpec, Routing};
use crate::config::{Config, ConfigError};
use crate::net::etcd::{Client, Kv, WatchEvent};
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::Mutex;
use std::time::Duration;

/// How long start-up waits for each endpoint before trying the next (then the cache file).
const START_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// First line of the cache file; the revision follows.
const CACHE_HEADER: &str = "# stepstone: etcd revision ";

#[derive(Default)]
struct State {
    spec: Option<EtcdSpec>,
    /// The local file the documents are merged into.
    file: String,
    /// The document in force and its revision.
    good: Option<Routing>,
    good_revision: i64,
    /// The newest revision of the key seen; the watch resumes after it.
    seen: i64,
    /// The last revision refused, and why.
    refused: Option<(i64, String)>,
    connected: bool,
    /// Why etcd cannot be reached, while it cannot.
    unreachable: Option<String>,
}

static STATE: Mutex<State> = Mutex::new(State {
    spec: None,
    file: String::new(),
    good: None,
    good_revision: 0,
    seen: 0,
    refused: None,
    connected: false,
    unreachable: None,
});

/// How etcd is reached, set at start-up.
static CLIENT: once_cell::sync::OnceCell<Client> = once_cell::sync::OnceCell::new();

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

fn origin(spec: &EtcdSpec, revision: i64) -> String {
    format!("etcd {} revision {revision}", spec.key)
}

/// The configuration to start with: `cfg` itself without a `config_source`; else merged with
/// the document from etcd, or from the cache file when etcd cannot give a good one.
pub fn start_config(cfg: Config) -> Result<Config, String> {
    let Some(spec) = cfg.config_source.clone() else {
        return Ok(cfg);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("config_source: {e}"))?;
    let client =
        CLIENT.get_or_try_init(|| Client::new(&spec).map_err(|e| format!("{}: {e}", cfg.file)))?;
    let mut why = Vec::new();
    for ep in &spec.endpoints {
        match rt.block_on(client.range(ep, &spec.key, START_TIMEOUT)) {
            Ok((Some(kv), store_rev)) => {
                let routing = Routing {
                    origin: origin(&spec, kv.mod_revision),
                    text: kv.value.clone(),
                };
                match Config::load_with_routing(&cfg.file, &routing) {
                    Ok(merged) => {
                        write_cache(&spec, kv.mod_revision, &kv.value);
                        let mut s = state();
                        s.spec = Some(spec.clone());
                        s.file = cfg.file.clone();
                        s.good = Some(routing);
                        s.good_revision = kv.mod_revision;
                        s.seen = store_rev;
                        log::info!("config_source: {} in force", origin(&spec, kv.mod_revision));
                        return Ok(merged);
                    }
                    Err(e) => {
                        log::error!("config_source: refused: {e}");
                        let mut s = state();
                        s.refused = Some((kv.mod_revision, e.to_string()));
                        s.seen = store_rev;
                        why.push(format!("revision {} refused: {e}", kv.mod_revision));
                        break;
                    }
                }
            }
            Ok((None, _)) => {
                why.push(format!("{ep}: the key {} does not exist", spec.key));
                break;
            }
            Err(e) => why.push(e),
        }
    }
    let why = why.join("; ");
    let Some(cache) = &spec.cache_file else {
        return Err(format!(
            "{}: config_source.etcd: no routing document from etcd ({why}) and no cache_file to start from; refusing to start",
            cfg.file
        ));
    };
    let (revision, text) = read_cache(cache).map_err(|e| {
        format!(
            "{}: config_source.etcd: no routing document from etcd ({why}) and the cache_file cannot be used ({cache}: {e}); refusing to start",
            cfg.file
        )
    })?;
    let routing = Routing {
        origin: format!("{cache} (cached etcd revision {revision})"),
        text,
    };
    let merged = Config::load_with_routing(&cfg.file, &routing).map_err(|e| e.to_string())?;
    log::warn!("config_source: etcd unavailable ({why}); serving revision {revision} from the cache file {cache}, retrying etcd");
    let mut s = state();
    s.spec = Some(spec);
    s.file = cfg.file.clone();
    s.good = Some(routing);
    s.good_revision = revision;
    s.seen = s.seen.max(revision);
    s.unreachable = Some(why);
    Ok(merged)
}

fn read_cache(path: &str) -> Result<(i64, String), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let revision = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix(CACHE_HEADER))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("its first line is not {CACHE_HEADER:?} and a revision"))?;
    Ok((revision, text))
}

/// Write the document beside the cache file and rename it over, so a crash never leaves half.
fn write_cache(spec: &EtcdSpec, revision: i64, text: &str) {
    let Some(path) = &spec.cache_file else { return };
    let tmp = format!("{path}.tmp");
    let body = format!("{CACHE_HEADER}{revision} of {}\n{text}", spec.key);
    if let Err(e) = std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, path)) {
        log::warn!("config_source: cannot write the cache file {path}: {e}");
    }
}

/// The file at `path` merged with the document in force (what a reload re-reads).
pub fn load(path: &str) -> Result<Config, ConfigError> {
    let good = state().good.clone();
    match good {
        Some(routing) => Config::load_with_routing(path, &routing),
        None => Config::load(path),
    }
}

/// Apply a revision of the key: merged, validated and swapped in as a reload, or refused.
fn apply_revision(spec: &EtcdSpec, kv: Kv) {
    let file = {
        let mut s = state();
        s.seen = s.seen.max(kv.mod_revision);
        if kv.mod_revision <= s.good_revision {
            return;
        }
        s.file.clone()
    };
    let routing = Routing {
        origin: origin(spec, kv.mod_revision),
        text: kv.value,
    };
    let res = Config::load_with_routing(&file, &routing)
        .map_err(|e| e.to_string())
        .and_then(super::reload::apply);
    let mut s = state();
    match res {
        Ok(_) => {
            log::info!("config_source: {} in force", routing.origin);
            write_cache(spec, kv.mod_revision, &routing.text);
            s.good_revision = kv.mod_revision;
            s.good = Some(routing);
            s.refused = None;
        }
        Err(e) => {
            log::error!(
                "config_source: revision {} refused, revision {} stays in force: {e}",
                kv.mod_revision,
                s.good_revision
            );
            s.refused = Some((kv.mod_revision, e));
        }
    }
}

/// The `/status` part: the reload's, and the fleet source's when there is one.
pub fn status() -> serde_json::Value {
    let mut v = super::reload::status();
    let s = state();
    if let Some(spec) = &s.spec {
        v["config_source"] = serde_json::json!({
            "etcd": {
                "endpoints": spec.endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                "key": spec.key,
                "connected": s.connected,
                "unreachable": s.unreachable,
                "revision": s.good_revision,
                "refused_revision": s.refused.as_ref().map(|r| r.0),
                "last_error": s.refused.as_ref().map(|r| r.1.clone()),
            }
        });
    }
    v
}

/// Watches the key for as long as the process runs.
pub struct WatchService;

#[async_trait]
impl BackgroundService for WatchService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (Some(spec), Some(client)) = (state().spec.clone(), CLIENT.get()) else {
            return;
        };
        let mut backoff = BACKOFF_MIN;
        let mut next = 0usize;
        loop {
            let ep = &spec.endpoints[next % spec.endpoints.len()];
            let res = tokio::select! {
                r = watch(client, &spec, ep) => r,
                _ = shutdown.changed() => return,
            };
            {
                let mut s = state();
                if s.connected {
                    backoff = BACKOFF_MIN;
                }
                s.connected = false;
                if let Err(e) = res {
                    client.forget_token();
                    if s.unreachable.is_none() {
                        log::warn!("config_source: etcd unavailable ({e}); the revision in force keeps serving, retrying");
                    }
                    s.unreachable = Some(e);
                }
            }
            next += 1;
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// One watch, until the connection fails.
async fn watch(client: &Client, spec: &EtcdSpec, ep: &EtcdEndpoint) -> Result<(), String> {
    let from = state().seen + 1;
    let mut w = client.watch(ep, &spec.key, from).await?;
    loop {
        for ev in w.next().await? {
            match ev {
                WatchEvent::Created => {
                    let mut s = state();
                    s.connected = true;
                    if s.unreachable.take().is_some() {
                        log::info!(
                            "config_source: watching {} again from revision {from}",
                            spec.key
                        );
                    }
                }
                WatchEvent::Put(kv) => apply_revision(spec, kv),
                WatchEvent::Deleted(rev) => {
                    let mut s = state();
                    s.seen = s.seen.max(rev);
                    let e = format!(
                        "the key {} was deleted; the last good revision stays",
                        spec.key
                    );
                    log::error!("config_source: {e}");
                    s.refused = Some((rev, e));
                }
                // The history from `from` is gone: start again from the value now.
                WatchEvent::Canceled(why) => {
                    log::warn!("config_source: watch canceled: {why}; reading the key again");
                    let (kv, store_rev) = client.range(ep, &spec.key, START_TIMEOUT).await?;
                    if let Some(kv) = kv {
                        apply_revision(spec, kv);
                    }
                    let mut s = state();
                    s.seen = s.seen.max(store_rev);
                    return Err(format!("watch canceled: {why}"));
                }
                WatchEvent::Other => {}
            }
        }
    }
}
