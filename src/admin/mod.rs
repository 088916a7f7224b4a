//! The admin listener: a small Pingora HTTP service beside the proxy listeners.
//!
//! - `GET /healthz`: 200 while serving, 503 once draining (no token: load balancers and
//!   container health checks call it).
//! - `GET /metrics`: Prometheus text (no token: scrapers rarely carry one, and the admin
//!   address is meant to be private).
//! - `GET /status`: JSON of every upstream and backend (token).
//! - `POST /upstreams/{name}/backends/{addr}/drain` and `.../undrain` (token): a drained
//!   backend gets no new requests and finishes the ones it has (the runtime API's `drain` and
//!   `ready`).
//! - `POST /api/reload` and the runtime API under `/api/upstreams` (token), see [`api`].
//! - `GET /`: the status page, static HTML whose script polls `/status` (token, which a
//!   browser passes as `?token=`; the script then sends it as a bearer header).
//!
//! The token is compared in constant time. Without a configured token, every call that needs
//! one is refused: a forgotten token locks the API rather than opening it.

mod api;

use crate::config::AdminSpec;
use crate::net::control::Control;
use crate::net::listen::Start;
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use std::sync::atomic::Ordering::Relaxed;

const STATUS_PAGE: &str = include_str!("status.html");

pub struct AdminApp {
    hooks: Hooks,
}

/// The admin token in force: set at start and by every reload (a rotated token applies to
/// the next request; a request in progress was checked with the old one).
static TOKEN: std::sync::RwLock<Option<String>> = std::sync::RwLock::new(None);

/// Set the admin token (`admin.token`; `None` locks every call that needs one).
pub fn set_token(token: Option<&str>) {
    let mut t = TOKEN.write().unwrap_or_else(|e| e.into_inner());
    *t = token.map(str::to_string);
}

/// What the admin listener asks of the wiring above it: reload the configuration (the
/// revision now in force, or the error), and the reload state for `/status`.
#[derive(Clone, Copy)]
pub struct Hooks {
    pub reload: fn() -> Result<u64, String>,
    pub status: fn() -> serde_json::Value,
}

/// Start the admin listener on `start` (at start-up, or added or moved by a reload; the
/// token is [`set_token`]'s, set by the caller once nothing can fail). It serves until the
/// process exits after a stop, so `/healthz` answers 503 through the drain (see
/// `lifecycle`), or until `stop` (a reload removed or moved it).
pub fn start(
    spec: &AdminSpec,
    hooks: Hooks,
    start: &mut Start<'_>,
    stop: Control,
) -> std::io::Result<()> {
    let app = AdminApp { hooks };
    start.accept_through_drain("admin".to_string(), spec.addr, app, stop)
}

fn respond(code: StatusCode, ctype: &str, body: impl Into<Vec<u8>>) -> Response<Vec<u8>> {
    let body = body.into();
    let len = body.len();
    let mut r = Response::new(body);
    *r.status_mut() = code;
    let h = r.headers_mut();
    if let Ok(v) = http::HeaderValue::from_str(ctype) {
        h.insert(http::header::CONTENT_TYPE, v);
    }
    h.insert(http::header::CONTENT_LENGTH, len.into());
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

fn json(code: StatusCode, v: serde_json::Value) -> Response<Vec<u8>> {
    respond(code, "application/json", format!("{v}\n"))
}

fn error(code: StatusCode, msg: &str) -> Response<Vec<u8>> {
    json(code, serde_json::json!({ "error": msg }))
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AdminApp {
    fn authorized(&self, req: &pingora_http::RequestHeader, allow_query: bool) -> bool {
        let token = TOKEN.read().unwrap_or_else(|e| e.into_inner());
        let Some(token) = token.as_deref() else {
            return false;
        };
        let bearer = req
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").map(str::trim));
        if let Some(b) = bearer {
            return ct_eq(b.as_bytes(), token.as_bytes());
        }
        allow_query
            && req.uri.query().is_some_and(|q| {
                q.split('&')
                    .filter_map(|kv| kv.strip_prefix("token="))
                    .any(|t| ct_eq(t.as_bytes(), token.as_bytes()))
            })
    }

    fn status(&self) -> serde_json::Value {
        let upstreams: Vec<_> = crate::upstream::live::pools()
            .iter()
            .map(|p| {
                let backends: Vec<_> = p
                    .members
                    .load()
                    .slots
                    .iter()
                    .map(|s| backend_json(s))
                    .collect();
                serde_json::json!({
                    "name": p.name,
                    "selection": selection_name(p.selection),
                    "backends": backends,
                })
            })
            .collect();
        serde_json::json!({
            "config": (self.hooks.status)(),
            "draining": crate::lifecycle::draining(),
            "in_flight": crate::observability::in_flight(),
            "upstreams": upstreams,
        })
    }

    fn set_drained(&self, upstream: &str, backend: &str, drained: bool) -> Response<Vec<u8>> {
        let state = if drained { "drain" } else { "ready" };
        let body = serde_json::json!({ "state": state });
        let pools = crate::upstream::live::pools();
        let Some(pool) = pools.iter().find(|p| p.name == upstream) else {
            return error(StatusCode::NOT_FOUND, "no such upstream");
        };
        if pool.slot_by_label(backend).is_none() {
            return error(StatusCode::NOT_FOUND, "no such backend in this upstream");
        }
        api::set_backend(upstream, backend, &body.to_string())
    }
}

fn selection_name(s: crate::config::Selection) -> &'static str {
    use crate::config::Selection::*;
    match s {
        RoundRobin => "round_robin",
        Random => "random",
        LeastConnections => "least_connections",
        PowerOfTwo => "power_of_two",
        ConsistentHash => "consistent_hash",
    }
}

fn backend_json(s: &crate::upstream::Slot) -> serde_json::Value {
    let state = if s.maint.load(Relaxed) {
        "maint"
    } else if s.drained.load(Relaxed) {
        "drain"
    } else {
        "ready"
    };
    let ejected = s.ejected();
    let t = s.totals();
    serde_json::json!({
        "address": s.label,
        "weight": s.weight,
        "state": state,
        "health": if s.healthy.load(Relaxed) { "up" } else { "down" },
        "outlier": if ejected { "ejected" } else { "ok" },
        "healthy": s.healthy.load(Relaxed),
        "drained": s.drained.load(Relaxed),
        "ejected": ejected,
        "ejections": s.ejections_total.load(Relaxed),
        "in_flight": s.inflight.load(Relaxed),
        "requests": t.requests,
        "failures": s.failures.load(Relaxed),
        "completed": t.completed,
        "latency_us_total": t.latency_us,
    })
}

impl crate::net::listen::ConnApp for AdminApp {}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        match (method.clone(), path.as_str()) {
            (Method::GET | Method::HEAD, "/healthz") => {
                if crate::lifecycle::draining() {
                    return respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n");
                }
                return respond(StatusCode::OK, "text/plain", "ok\n");
            }
            (Method::GET, "/metrics") => {
                return respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    crate::observability::render(&crate::upstream::live::pools()),
                )
            }
            _ => {}
        }
        if !self.authorized(req, method == Method::GET && path == "/") {
            log::warn!(
                "admin: refused {method} {path} from {}: missing or wrong token",
                session
                    .client_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "-".into())
            );
            let mut r = error(StatusCode::UNAUTHORIZED, "a bearer token is required");
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
        if path == "/api/reload" || path.starts_with("/api/") {
            return api::route(self, session, method, &path).await;
        }
        match (method, path.as_str()) {
            (Method::GET, "/") => respond(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE),
            (Method::GET, "/status") => json(StatusCode::OK, self.status()),
            (m, p) if p.starts_with("/upstreams/") => {
                let parts: Vec<&str> = p.trim_start_matches('/').split('/').collect();
                match parts.as_slice() {
                    ["upstreams", up, "backends", addr, action @ ("drain" | "undrain")] => {
                        if m != Method::POST {
                            return error(StatusCode::METHOD_NOT_ALLOWED, "use POST");
                        }
                        self.set_drained(up, addr, *action == "drain")
                    }
                    _ => error(StatusCode::NOT_FOUND, "not found"),
                }
            }
            _ => error(StatusCode::NOT_FOUND, "not found"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
    }
}
