//! The end of a request, whichever engine served it: the counters and the access-log line.

use super::*;
/// `logging`: the end of a request. `route` is the config position of its route; `tunnel`:
/// the bytes an established CONNECT tunnel relayed (up, down).
pub fn request_done(
    session: &Session,
    _e: Option<&Error>,
    route: Option<usize>,
    backend: Option<&crate::upstream::Slot>,
    obs: &RequestObs,
    tunnel: Option<(u64, u64)>,
) {
    let down = session.as_downstream();
    // An established CONNECT tunnel answered 200 itself, outside the session; its bytes are
    // the ones it relayed.
    let (status, bytes_in, bytes_out) = match tunnel {
        Some((up, down)) => (200, up as usize, down as usize),
        None => (
            session
                .response_written()
                .map(|r| r.status.as_u16())
                .unwrap_or(0),
            down.body_bytes_read(),
            down.body_bytes_sent(),
        ),
    };
    let cache = cache_status(session);
    let (m, took) = count_done(route, backend, obs, status, bytes_in, bytes_out);
    let sampled = obs.trace.is_some_and(|t| t.sampled);
    if access_log().is_some() || sampled {
        let req = session.req_header();
        let header = |n: http::header::HeaderName| {
            req.headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
        };
        let uri = req.uri.to_string();
        let view = ReqView {
            client: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            method: req.method.as_str(),
            uri: &uri,
            version: version_str(req.version),
            // the host as the policy's `forwarded::request_host` reads it (the authority,
            // then Host), on every engine and protocol; spelled out here because this layer
            // sits below the policy
            host: req
                .uri
                .authority()
                .map(|a| a.as_str())
                .filter(|a| !a.is_empty())
                .or_else(|| {
                    req.headers
                        .get(http::header::HOST)
                        .and_then(|v| v.to_str().ok())
                })
                .unwrap_or("-"),
            referer: header(http::header::REFERER),
            user_agent: header(http::header::USER_AGENT),
            bytes_in,
        };
        let backend = backend.map(|s| s.label.as_str());
        tracing::request_done(obs, &view, m, backend, status, cache);
        if let Some(log) = access_log() {
            log.write(&Line {
                req: view,
                m,
                backend,
                status,
                bytes_out,
                took,
                connect: obs.connect,
                cache,
                trace: obs.trace.as_ref(),
            });
        }
    }
}

/// The end of a request served by the HTTP/1 fast path (the lean engine), which has no
/// Pingora session: the same counters and the same access-log line. `cache_hit`: answered
/// from the cache (counted and logged as `hit`, like a general-path hit).
pub fn fast_request_done(
    req: &ReqView,
    route: Option<usize>,
    backend: Option<&crate::upstream::Slot>,
    obs: &RequestObs,
    status: u16,
    bytes_out: usize,
    cache_hit: bool,
) {
    if cache_hit {
        CACHE_PHASES[0].inc();
    }
    let (m, took) = count_done(route, backend, obs, status, req.bytes_in, bytes_out);
    let backend = backend.map(|s| s.label.as_str());
    let cache = if cache_hit { "hit" } else { "-" };
    tracing::request_done(obs, req, m, backend, status, cache);
    if let Some(log) = access_log() {
        log.write(&Line {
            req: *req,
            m,
            backend,
            status,
            bytes_out,
            took,
            connect: obs.connect,
            cache,
            trace: obs.trace.as_ref(),
        });
    }
}

/// Whether finished requests are logged: the fast path only gathers a log line's fields then.
#[inline]
pub fn access_log_on() -> bool {
    access_log().is_some()
}

/// Whether a request's text (URI, host, referer, user agent) is shown anywhere: in the access
/// log, or on its span when its trace is sampled.
#[inline]
pub fn text_shown(trace: Option<&super::tracing::TraceCtx>) -> bool {
    access_log_on() || trace.is_some_and(|t| t.sampled)
}

/// A request whose client reset its HTTP/2 stream before the response ended (a cancel):
/// counted once, besides its `err` class, whichever engine served it.
pub fn client_closed(route: Option<usize>) {
    route_metrics(route).client_closed();
}

pub(super) fn count_done(
    route: Option<usize>,
    backend: Option<&crate::upstream::Slot>,
    obs: &RequestObs,
    status: u16,
    bytes_in: usize,
    bytes_out: usize,
) -> (&'static RouteMetrics, Duration) {
    crate::spin::active();
    let m = route_metrics(route);
    let took = obs.start.elapsed();
    m.done(status, took, bytes_in, bytes_out);
    if let Some(slot) = backend {
        slot.completed(took);
    }
    (m, took)
}

pub(super) fn version_str(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        // as the HTTP/3 lean path logs it
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// What an access-log line says about the request, whichever path served it. Absent
/// headers are `-`.
#[derive(Clone, Copy)]
pub struct ReqView<'a> {
    pub client: Option<std::net::IpAddr>,
    pub method: &'a str,
    pub uri: &'a str,
    pub version: &'static str,
    pub host: &'a str,
    pub referer: &'a str,
    pub user_agent: &'a str,
    pub bytes_in: usize,
}

pub(super) fn cache_status(session: &Session) -> &'static str {
    use pingora_cache::CachePhase as P;
    let idx = match session.cache.phase() {
        P::Hit => 0,
        P::Miss => 1,
        P::Stale => 2,
        P::StaleUpdating => 3,
        P::Expired => 4,
        P::Revalidated => 5,
        P::RevalidatedNoCache(_) => 6,
        P::Bypass => 7,
        _ => return "-",
    };
    CACHE_PHASES[idx].inc();
    CACHE_PHASE_NAMES[idx]
}
