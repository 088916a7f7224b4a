//! The runtime API (token required):
//! - `POST /api/reload`: reload the certificates, re-read and apply the configuration file;
//!   200 with the revision now in force, or 422 with the error (nothing changed).
//! - `GET /api/upstreams`: every upstream with its backends (address, weight, state, health,
//!   outlier state, in-flight).
//! - `PUT /api/upstreams/{upstream}/backends/{address}` with `{"weight": N}` and/or
//!   `{"state": "ready" | "drain" | "maint"}`.
//! - `POST /api/upstreams/{upstream}/backends` with `{"address": "ip:port", "weight": N}`.
//! - `DELETE /api/upstreams/{upstream}/backends/{address}`: drain, then remove once its
//!   in-flight work is done.
//!
//! A call is checked whole before anything applies: a bad one is answered 400 with the
//! reason and changes nothing. Changes are kept by [`crate::upstream::live`].

use super::{error, json, AdminApp};
use crate::upstream::live::{self, AdminState, Override};
use crate::upstream::Pool;
use http::{Method, Response, StatusCode};
use pingora_core::protocols::http::ServerSession;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// Request bodies are a few fields.
const MAX_BODY: usize = 64 * 1024;
/// How long a removed backend may take to finish its in-flight work before it goes anyway.
const REMOVE_WAIT: Duration = Duration::from_secs(60);

type Answer = Response<Vec<u8>>;

fn bad(msg: impl AsRef<str>) -> Answer {
    error(StatusCode::BAD_REQUEST, msg.as_ref())
}

async fn body(session: &mut ServerSession) -> Result<Vec<u8>, Answer> {
    let mut out = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(b)) => {
                out.extend_from_slice(&b);
                if out.len() > MAX_BODY {
                    return Err(error(StatusCode::PAYLOAD_TOO_LARGE, "body too large"));
                }
            }
            Ok(None) => return Ok(out),
            Err(e) => return Err(bad(format!("cannot read the body: {e}"))),
        }
    }
}

pub(super) async fn route(
    app: &AdminApp,
    session: &mut ServerSession,
    method: Method,
    path: &str,
) -> Answer {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        (Method::POST, ["api", "reload"]) => {
            // as SIGHUP does: the certificates are reloaded too (their own files, whatever
            // becomes of the configuration)
            for store in crate::tls::stores() {
                store.reload("POST /api/reload");
            }
            // waits for the reload thread (a few ms); the admin listener's workers serve
            // nothing that could not wait that long
            match (app.hooks.reload)() {
                Ok(rev) => json(StatusCode::OK, serde_json::json!({ "revision": rev })),
                Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, &e),
            }
        }
        (Method::GET, ["api", "upstreams"]) => {
            let list: Vec<_> = live::pools().iter().map(|p| upstream_json(p)).collect();
            json(StatusCode::OK, serde_json::json!({ "upstreams": list }))
        }
        (Method::PUT, ["api", "upstreams", up, "backends", addr]) => {
            let b = match body(session).await {
                Ok(b) => b,
                Err(a) => return a,
            };
            set_backend(up, addr, &String::from_utf8_lossy(&b))
        }
        (Method::POST, ["api", "upstreams", up, "backends"]) => {
            let b = match body(session).await {
                Ok(b) => b,
                Err(a) => return a,
            };
            add_backend(up, &String::from_utf8_lossy(&b))
        }
        (Method::DELETE, ["api", "upstreams", up, "backends", addr]) => remove_backend(up, addr),
        (_, ["api", "reload"]) => error(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
        (_, ["api", "upstreams", ..]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

fn upstream_json(p: &Pool) -> serde_json::Value {
    let backends: Vec<_> = p
        .members
        .load()
        .slots
        .iter()
        .map(|s| super::backend_json(s))
        .collect();
    serde_json::json!({
        "name": p.name,
        "selection": super::selection_name(p.selection),
        "backends": backends,
    })
}

fn find_pool(name: &str) -> Result<Arc<Pool>, String> {
    live::pools()
        .iter()
        .find(|p| p.name == name)
        .cloned()
        .ok_or_else(|| format!("unknown upstream {name:?}"))
}

/// `ip:port`, with the brackets and colons of an IPv6 address percent-encoded or not.
fn parse_addr(raw: &str) -> Result<SocketAddr, String> {
    let decoded = raw
        .replace("%5B", "[")
        .replace("%5b", "[")
        .replace("%5D", "]")
        .replace("%5d", "]")
        .replace("%3A", ":")
        .replace("%3a", ":");
    decoded
        .parse()
        .map_err(|_| format!("malformed address {raw:?}: expected ip:port"))
}

/// The fields of a request body, each checked; unknown fields are refused.
#[derive(Default)]
struct Fields {
    address: Option<SocketAddr>,
    weight: Option<u32>,
    state: Option<AdminState>,
}

fn fields(text: &str, allowed: &[&str]) -> Result<Fields, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Some(obj) = v.as_object() else {
        return Err("the body must be a JSON object".into());
    };
    let mut f = Fields::default();
    for (k, v) in obj {
        if !allowed.contains(&k.as_str()) {
            return Err(format!(
                "unknown field {k:?}: expected {}",
                allowed.join(", ")
            ));
        }
        match k.as_str() {
            "weight" => {
                let w = v
                    .as_u64()
                    .filter(|w| (1..=u64::from(crate::config::MAX_WEIGHT)).contains(w))
                    .ok_or_else(|| {
                        format!(
                            "weight out of range: {v}: must be an integer between 1 and {}",
                            crate::config::MAX_WEIGHT
                        )
                    })?;
                f.weight = Some(w as u32);
            }
            "state" => {
                let s = v.as_str().unwrap_or_default();
                f.state = Some(AdminState::parse(s).ok_or_else(|| {
                    format!("unknown state {v}: expected \"ready\", \"drain\" or \"maint\"")
                })?);
            }
            "address" => {
                let s = v
                    .as_str()
                    .ok_or_else(|| format!("malformed address {v}: expected \"ip:port\""))?;
                f.address = Some(parse_addr(s)?);
            }
            _ => {}
        }
    }
    Ok(f)
}

pub(super) fn set_backend(upstream: &str, addr: &str, body: &str) -> Answer {
    let pool = match find_pool(upstream) {
        Ok(p) => p,
        Err(e) => return bad(e),
    };
    let addr = match parse_addr(addr) {
        Ok(a) => a,
        Err(e) => return bad(e),
    };
    let f = match fields(body, &["weight", "state"]) {
        Ok(f) => f,
        Err(e) => return bad(e),
    };
    if f.weight.is_none() && f.state.is_none() {
        return bad("nothing to change: give \"weight\" and/or \"state\"");
    }
    if !pool.slots().iter().any(|s| s.addr == addr) {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no backend {addr} in upstream {upstream:?}"),
        );
    }
    live::update(&pool, addr, |mut o| {
        if let Some(w) = f.weight {
            o.weight = Some(w);
        }
        if let Some(s) = f.state {
            o.state = (s != AdminState::Ready).then_some(s);
        }
        Some(o)
    });
    log::warn!(
        "admin: upstream {upstream}: backend {addr}: {}{}",
        f.weight.map(|w| format!("weight {w} ")).unwrap_or_default(),
        f.state
            .map(|s| format!("state {}", s.name()))
            .unwrap_or_default()
    );
    backend_answer(&pool, addr, StatusCode::OK)
}

fn backend_answer(pool: &Pool, addr: SocketAddr, code: StatusCode) -> Answer {
    match pool.slots().iter().find(|s| s.addr == addr) {
        Some(s) => json(code, super::backend_json(s)),
        None => json(code, serde_json::json!({ "address": addr.to_string() })),
    }
}

fn add_backend(upstream: &str, body: &str) -> Answer {
    let pool = match find_pool(upstream) {
        Ok(p) => p,
        Err(e) => return bad(e),
    };
    let f = match fields(body, &["address", "weight", "state"]) {
        Ok(f) => f,
        Err(e) => return bad(e),
    };
    let Some(addr) = f.address else {
        return bad("missing field \"address\"");
    };
    if pool.slots().iter().any(|s| s.addr == addr) {
        return error(
            StatusCode::CONFLICT,
            &format!("backend {addr} is already in upstream {upstream:?}"),
        );
    }
    live::update(&pool, addr, |o| {
        Some(Override {
            weight: f.weight.or(o.weight),
            state: f.state.filter(|s| *s != AdminState::Ready),
            added: true,
            removed: false,
        })
    });
    log::warn!("admin: upstream {upstream}: backend {addr} added");
    backend_answer(&pool, addr, StatusCode::CREATED)
}

fn remove_backend(upstream: &str, addr: &str) -> Answer {
    let pool = match find_pool(upstream) {
        Ok(p) => p,
        Err(e) => return bad(e),
    };
    let addr = match parse_addr(addr) {
        Ok(a) => a,
        Err(e) => return bad(e),
    };
    let Some(slot) = pool.slots().into_iter().find(|s| s.addr == addr) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no backend {addr} in upstream {upstream:?}"),
        );
    };
    live::update(&pool, addr, |mut o| {
        o.state = Some(AdminState::Drain);
        Some(o)
    });
    log::warn!("admin: upstream {upstream}: backend {addr} draining, then removed");
    let name = upstream.to_string();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + REMOVE_WAIT;
        while slot.inflight.load(Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // the pool in force now (a reload may have replaced it meanwhile)
        let pools = live::pools();
        let Some(pool) = pools.iter().find(|p| p.name == name) else {
            return;
        };
        live::update(pool, addr, |o| {
            // an added backend is simply forgotten; one of the file stays out
            (!o.added).then_some(Override {
                removed: true,
                state: None,
                ..o
            })
        });
        log::warn!("admin: upstream {name}: backend {addr} removed");
    });
    json(
        StatusCode::ACCEPTED,
        serde_json::json!({ "address": addr.to_string(), "state": "drain", "removing": true }),
    )
}
