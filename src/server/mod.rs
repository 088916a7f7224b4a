//! Wiring: turn a validated [`Config`] into Pingora services. Logic lives in the modules;
//! this file only connects them.

pub mod fleet;
pub mod reload;
pub mod upgrade;

use crate::config::file::ListenerProtocol;
use crate::config::{Config, ListenerSpec};
use crate::http::service::{EngineSwap, LeanHttp};
use crate::http::{HttpProxy, Listener};
use crate::policy::route::Router;
use crate::upstream::{discovery::DiscoveryService, health::HealthService, Pool, Upstreams};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::background::background_service;
use std::sync::Arc;

/// Command-line switches that Pingora itself acts on.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunFlags {
    pub daemon: bool,
    pub upgrade: bool,
}

pub fn server_conf(cfg: &Config) -> ServerConf {
    let p = &cfg.pingora;
    let mut c = ServerConf::default();
    if let Some(t) = p.threads {
        c.threads = t;
    } else {
        c.threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
    }
    if let Some(w) = p.work_stealing {
        c.work_stealing = w;
    }
    c.pid_file = p
        .pid_file
        .clone()
        .unwrap_or_else(|| "/tmp/stepstone.pid".into());
    c.upgrade_sock = p
        .upgrade_sock
        .clone()
        .unwrap_or_else(|| "/tmp/stepstone_upgrade.sock".into());
    c.grace_period_seconds = p.grace_period_seconds.or(Some(5));
    c.graceful_shutdown_timeout_seconds = p.graceful_shutdown_timeout_seconds.or(Some(5));
    c.daemon = p.daemon.unwrap_or(false);
    c.error_log = p.error_log.clone();
    c.user = p.user.clone();
    c.group = p.group.clone();
    c.upstream_keepalive_pool_size = p
        .upstream_keepalive_pool_size
        .unwrap_or(crate::config::DEFAULT_UPSTREAM_POOL_SIZE);
    if let Some(n) = p.listener_tasks_per_fd {
        c.listener_tasks_per_fd = n;
    }
    // Pingora's loop of tries must outlast the policy's retries (each may also take one
    // more on a stale pooled connection, and wait out connects this machine refused); the
    // policy is what stops them.
    let most = cfg.upstreams.iter().map(|u| u.retries).max().unwrap_or(0);
    let waits = crate::policy::shortage::MAX_WAITS as usize;
    c.max_retries = c.max_retries.max(2 * most as usize + 2 + waits);
    c
}

pub fn build(cfg: &Config, flags: RunFlags) -> Result<Server, String> {
    let opt = Opt {
        upgrade: flags.upgrade,
        daemon: flags.daemon,
        ..Default::default()
    };
    let conf = server_conf(cfg);
    if let (true, Some(p)) = (flags.daemon || conf.daemon, &conf.error_log) {
        // a daemon's stderr, reopened with the access log on SIGUSR1
        crate::observability::set_error_log(p);
    }
    crate::net::shard::per_thread(conf.threads, conf.work_stealing);
    // before any pool or route counter exists: they size their stripes by it
    crate::striped::init(conf.threads);
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    if let Err(e) = crate::net::fdlimit::raise(cfg.pingora.max_open_files) {
        log::warn!("open-file limit left as it was: {e}");
    }
    crate::cache::apply_config(cfg);
    crate::spin::configure(
        cfg.pingora
            .busy_poll
            .map_or(crate::config::DEFAULT_BUSY_POLL, |d| d.0),
        cfg.pingora
            .busy_poll_nap
            .map_or(crate::config::DEFAULT_BUSY_POLL_NAP, |d| d.0),
    );
    crate::observability::init(cfg)?;
    crate::observability::declare_fast_path_fallbacks(
        &crate::policy::engine::Fallback::ALL.map(|f| f.label()),
    );
    crate::upstream::sticky::load(cfg)?;
    crate::upstream::live::init_state_file(&server.configuration.pid_file);
    let upstreams = Upstreams::new(&cfg.upstreams);
    crate::upstream::live::set_pools(upstreams.pools.clone());
    server.add_service(background_service("health checks", HealthService));
    server.add_service(background_service("dns discovery", DiscoveryService));
    if cfg.config_source.is_some() {
        server.add_service(background_service("etcd watch", fleet::WatchService));
    }
    server.add_service(background_service(
        "drain flag",
        crate::lifecycle::DrainFlag::new(server.watch_execution_phase()),
    ));
    let admin = match &cfg.admin {
        Some(a) => {
            crate::admin::set_token(a.token.as_deref());
            let (remote, stop) = crate::net::control::pair();
            let mut start = crate::net::listen::Start::Service(&mut server);
            start_admin(a, &mut start, stop).map_err(|e| format!("admin: {e}"))?;
            Some(remote)
        }
        None => None,
    };

    let conf = server.configuration.clone();
    let mut listeners = Vec::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        let mut start = crate::net::listen::Start::Service(&mut server);
        listeners.push(start_listener(
            i,
            l,
            cfg,
            &upstreams.pools,
            &conf,
            &mut start,
            None,
        )?);
    }
    server.add_service(background_service(
        "tls reload",
        crate::tls::reload::service(),
    ));
    server.add_service(background_service("acme", crate::tls::acme::service()));
    reload::init(cfg, conf, upstreams.pools, listeners, admin);
    server.add_service(reload::ReloadService);
    let upgrader = upgrade::Upgrader::new(
        &cfg.file,
        server.configuration.daemon,
        &server.configuration.pid_file,
        &server.configuration.upgrade_sock,
    );
    server.add_service(background_service(
        "binary upgrade",
        upgrade::UpgradeService(Arc::new(upgrader)),
    ));
    Ok(server)
}

/// Start the admin listener (at start-up, or added or moved by a reload).
fn start_admin(
    a: &crate::config::AdminSpec,
    start: &mut crate::net::listen::Start<'_>,
    stop: crate::net::control::Control,
) -> std::io::Result<()> {
    let hooks = crate::admin::Hooks {
        reload: reload::reload_now,
        status: fleet::status,
    };
    crate::admin::start(a, hooks, start, stop)
}

/// Start listener `index` of `cfg` on `pools` (`start`: at start-up, added by a reload, or
/// replacing the listener at its address), and its HTTP/3 side if it has one. `counted`:
/// the open-connection count of the HTTP listener it replaces, counted on for
/// `max_connections`. The handle lets a reload swap its engines, stop it or take its
/// sockets.
fn start_listener(
    index: usize,
    l: &ListenerSpec,
    cfg: &Config,
    pools: &[Arc<Pool>],
    conf: &Arc<ServerConf>,
    start: &mut crate::net::listen::Start<'_>,
    counted: Option<Arc<std::sync::atomic::AtomicUsize>>,
) -> Result<reload::ListenerHandle, String> {
    let (remote, control) = crate::net::control::pair();
    if !matches!(l.protocol, ListenerProtocol::Http | ListenerProtocol::Https) {
        let store = crate::l4::start(l, pools, start, control)?;
        return Ok(reload::ListenerHandle::new(l, None, remote, store));
    }
    let listener = http_listener(index, l, cfg, pools);
    let h3_listener = listener.clone();
    let (app, swap, open, engines) = http_stack(l, listener, conf, counted);
    let general = swap.general_engine();
    let store = start_http(l, app, start, control)?;
    let handle =
        reload::ListenerHandle::new(l, Some(swap), remote, store.clone()).counting(open.clone());
    let Some(q) = &l.http3 else {
        return Ok(handle);
    };
    // Pingora tears service runtimes down when grace_period_seconds ends: the QUIC drain
    // must be done by then.
    let grace = std::time::Duration::from_secs(conf.grace_period_seconds.unwrap_or(5));
    let (quic, control) = crate::net::control::pair();
    let h3 = crate::http::h3::H3Service::new(h3_listener, l, q, store, open, pool_max(conf), grace)
        .map(|h3| {
            h3.following(engines)
                .with_general(general)
                .with_stop(control)
        });
    let started = match (h3, start) {
        (Ok(h3), crate::net::listen::Start::Service(server)) => {
            server.add_service(h3);
            Ok(None)
        }
        (Ok(h3), crate::net::listen::Start::Spawned) => h3.spawn().map(|()| None),
        // started once the listener it replaces has stopped
        (Ok(h3), crate::net::listen::Start::Later(_)) => Ok(Some(h3)),
        (Err(e), _) => Err(e),
    };
    match started {
        Ok(pending) => Ok(handle.with_quic(quic, pending)),
        Err(e) => {
            handle.stop();
            Err(e)
        }
    }
}

/// Start the accept loop of HTTP listener `l` with its engines `app` (`start`: at start or
/// by a reload); `stop` ends it. A TLS listener's certificate store is returned, for the
/// reload to forget when it removes the listener.
fn start_http(
    l: &ListenerSpec,
    app: HttpApp,
    start: &mut crate::net::listen::Start<'_>,
    stop: crate::net::control::Control,
) -> Result<Option<Arc<crate::tls::store::CertStore>>, String> {
    let name = format!("http {}", l.name);
    let listen = |e: std::io::Error| format!("cannot listen on {}: {e}", l.addr);
    let Some(t) = &l.tls else {
        // Plaintext: our own accept loop (see `crate::net::listen`); a PROXY header, if
        // trusted, is read by the app before the first request.
        match &l.proxy_protocol {
            Some(trusted) => {
                let accept = crate::l4::accept::ProxyAccept::new(&l.name, trusted);
                let app = crate::l4::accept::AcceptProxyApp::new(app, accept);
                start.accept(name, l.addr, app, false, l.defer_accept, stop)
            }
            None => start.accept(name, l.addr, app, true, l.defer_accept, stop),
        }
        .map_err(listen)?;
        return Ok(None);
    };
    // TLS reads a PROXY header before the handshake (a pre-TLS step).
    let tls = crate::tls::listener_tls(t, crate::tls::Alpn::Http)?;
    let store = tls.store.clone();
    // Our own plaintext socket under OpenSSL, unless a PROXY header needs Pingora's stream.
    let pre = crate::l4::accept::pre_tls(l);
    let lean = pre.is_none();
    let app = crate::net::tls::TlsConn::new(&name, app, tls, pre);
    if let Err(e) = start.accept(name, l.addr, app, lean, l.defer_accept, stop) {
        crate::tls::forget(&store);
        return Err(listen(e));
    }
    Ok(Some(store))
}

/// The policy of HTTP listener `index` of `cfg`.
fn http_listener(
    index: usize,
    l: &ListenerSpec,
    cfg: &Config,
    pools: &[Arc<Pool>],
) -> Arc<Listener> {
    let router = Router::new(index, &cfg.routes, pools);
    Arc::new(Listener::new(
        l,
        router,
        l.protocol == ListenerProtocol::Https,
    ))
}

/// Idle upstream connections per thread for each lean engine: Pingora's
/// `upstream_keepalive_pool_size` is one total, the lean engine's pools are per thread.
fn pool_max(conf: &ServerConf) -> usize {
    conf.upstream_keepalive_pool_size
        .div_ceil(conf.threads.max(1))
}

type HttpApp = crate::http::service::H1First<crate::lifecycle::Draining<LeanHttp<HttpProxy>>>;

/// The engines of an HTTP listener, and the handle a reload swaps them with.
fn http_stack(
    l: &ListenerSpec,
    listener: Arc<Listener>,
    conf: &Arc<ServerConf>,
    counted: Option<Arc<std::sync::atomic::AtomicUsize>>,
) -> (
    HttpApp,
    EngineSwap<HttpProxy>,
    Arc<std::sync::atomic::AtomicUsize>,
    crate::http::service::FastSwap,
) {
    let proxy = HttpProxy {
        listener: listener.clone(),
    };
    // forward listeners need CONNECT to reach the proxy phases
    let options = match &l.forward {
        Some(_) => Some(crate::forward::Forward::server_options(l.h2c)),
        None => crate::tls::http_server_options(l),
    };
    let fast = Some(Arc::new(crate::http::fast::FastPath::new(
        listener,
        pool_max(conf),
    )));
    let limits = l.limits.clone();
    let open = counted.unwrap_or_default();
    let mut app = LeanHttp::new(&l.name, proxy, conf, options, limits, open);
    app.set_fast(fast);
    let admission = app.admission();
    let open = admission.open_connections();
    let (fast, swap) = (app.fast(), app.swap());
    let engines = fast.clone();
    let app = crate::lifecycle::Draining::new(app, conf);
    let app = crate::http::service::H1First::new(app, &l.limits, admission, fast);
    (app, swap, open, engines)
}
