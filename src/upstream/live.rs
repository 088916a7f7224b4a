//! The pools in force and the operator's runtime changes to their backends.
//!
//! A reload replaces pools, so what an operator changed through the runtime API (weight,
//! `drain`/`maint`, backends added or removed) cannot live in a pool: it is kept here, by
//! upstream name and backend address, and every membership a pool builds ([`super::Pool::new`],
//! [`super::Pool::set_backends`]) applies it. That way the changes carry over a reload for
//! the backends still present, and the state file (written on each change, read at start)
//! hands them to the process that replaces this one in an upgrade, as HAProxy's
//! server-state file does.

use super::Pool;
use crate::config::BackendSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// The pools of the configuration in force; background services follow it.
static POOLS: once_cell::sync::Lazy<tokio::sync::watch::Sender<Arc<Vec<Arc<Pool>>>>> =
    once_cell::sync::Lazy::new(|| tokio::sync::watch::channel(Arc::new(Vec::new())).0);

pub fn pools() -> Arc<Vec<Arc<Pool>>> {
    POOLS.borrow().clone()
}

pub fn set_pools(pools: Vec<Arc<Pool>>) {
    POOLS.send_replace(Arc::new(pools));
}

pub fn subscribe() -> tokio::sync::watch::Receiver<Arc<Vec<Arc<Pool>>>> {
    POOLS.subscribe()
}

/// What an operator set for one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    #[default]
    Ready,
    /// No new requests or connections; in-flight work finishes.
    Drain,
    /// As `Drain`, and health checks pause.
    Maint,
}

impl AdminState {
    pub fn parse(s: &str) -> Option<AdminState> {
        match s {
            "ready" => Some(AdminState::Ready),
            "drain" => Some(AdminState::Drain),
            "maint" => Some(AdminState::Maint),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<AdminState>,
    /// Added through the API: a member even when the file does not list it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub added: bool,
    /// Removed through the API: not a member even when the file lists it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
}

type Table = BTreeMap<String, BTreeMap<SocketAddr, Override>>;

static OVERRIDES: Mutex<Table> = Mutex::new(BTreeMap::new());
static STATE_FILE: Mutex<Option<std::path::PathBuf>> = Mutex::new(None);

fn table() -> std::sync::MutexGuard<'static, Table> {
    OVERRIDES.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn get(upstream: &str, addr: &SocketAddr) -> Option<Override> {
    table().get(upstream)?.get(addr).cloned()
}

/// Change one backend's override with `f`, then rebuild the pool's membership and write the
/// state file. `f` returns the override to keep (`None` forgets it).
pub fn update(pool: &Pool, addr: SocketAddr, f: impl FnOnce(Override) -> Option<Override>) {
    {
        let mut t = table();
        let per = t.entry(pool.name.clone()).or_default();
        let cur = per.remove(&addr).unwrap_or_default();
        if let Some(o) = f(cur) {
            if o != Override::default() {
                per.insert(addr, o);
            }
        }
    }
    pool.refresh();
    save();
}

/// The membership of `upstream` from its base list (the file, or DNS discovery): removed
/// backends left out, weights replaced, added backends appended.
pub fn apply(upstream: &str, base: &[BackendSpec]) -> Vec<BackendSpec> {
    let t = table();
    let Some(per) = t.get(upstream) else {
        return base.to_vec();
    };
    let mut out: Vec<BackendSpec> = base
        .iter()
        .filter(|b| !per.get(&b.addr).is_some_and(|o| o.removed))
        .map(|b| {
            let mut b = b.clone();
            if let Some(w) = per.get(&b.addr).and_then(|o| o.weight) {
                b.weight = w;
            }
            b
        })
        .collect();
    for (addr, o) in per {
        if o.added && !o.removed && !out.iter().any(|b| b.addr == *addr) {
            out.push(BackendSpec {
                addr: *addr,
                weight: o.weight.unwrap_or(1),
                max_connections: None,
            });
        }
    }
    out
}

/// After a reload: forget the changes of backends the file no longer lists (those added
/// through the API stay) and of upstreams it no longer has, as HAProxy ignores the state of
/// servers gone from its configuration. Upstreams with DNS backends keep theirs: their
/// membership is not the file's to say.
pub fn prune(upstreams: &[crate::config::UpstreamSpec]) {
    let changed = {
        let mut t = table();
        let before = t.clone();
        prune_table(&mut t, upstreams);
        *t != before
    };
    if changed {
        save();
    }
}

fn prune_table(t: &mut Table, upstreams: &[crate::config::UpstreamSpec]) {
    t.retain(|name, per| {
        let Some(u) = upstreams.iter().find(|u| u.name == *name) else {
            return false;
        };
        if u.dns_backends.is_empty() {
            per.retain(|addr, o| o.added || u.backends.iter().any(|b| b.addr == *addr));
        }
        !per.is_empty()
    });
}

/// The state an operator set for a backend (`Ready` without one).
pub fn state_of(upstream: &str, addr: &SocketAddr) -> AdminState {
    get(upstream, addr)
        .and_then(|o| o.state)
        .unwrap_or_default()
}

/// Where the runtime state is kept: beside the pid file (`stepstone.pid` →
/// `stepstone.state.json`). Reads the file if it exists.
pub fn init_state_file(pid_file: &str) {
    let path = std::path::Path::new(pid_file).with_extension("state.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => match serde_json::from_str::<Table>(&text) {
            Ok(t) => {
                let n: usize = t.values().map(|m| m.len()).sum();
                log::info!(
                    "runtime state: {n} backend change(s) from {}",
                    path.display()
                );
                *table() = t;
            }
            Err(e) => log::warn!(
                "runtime state: ignoring {}: not valid JSON: {e}",
                path.display()
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("runtime state: cannot read {}: {e}", path.display()),
    }
    *STATE_FILE.lock().unwrap_or_else(|e| e.into_inner()) = Some(path);
}

/// Write the table (to a temporary file renamed over the old one: a reader never sees half).
fn save() {
    let Some(path) = STATE_FILE.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
        return;
    };
    let text = match serde_json::to_string_pretty(&*table()) {
        Ok(t) => t,
        Err(e) => {
            log::error!("runtime state: cannot encode: {e}");
            return;
        }
    };
    let tmp = path.with_extension("state.json.tmp");
    let res = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = res {
        log::error!("runtime state: cannot write {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(addr: &str, weight: u32) -> BackendSpec {
        BackendSpec {
            addr: addr.parse().expect("addr"),
            weight,
            max_connections: None,
        }
    }

    #[test]
    fn overrides_replace_weights_drop_removed_and_append_added() {
        let up = "live-test-apply";
        let base = [
            b("10.0.0.1:80", 1),
            b("10.0.0.2:80", 1),
            b("10.0.0.3:80", 1),
        ];
        {
            let mut t = table();
            let per = t.entry(up.to_string()).or_default();
            per.insert(
                base[0].addr,
                Override {
                    weight: Some(3),
                    ..Default::default()
                },
            );
            per.insert(
                base[1].addr,
                Override {
                    removed: true,
                    ..Default::default()
                },
            );
            per.insert(
                "10.0.0.9:80".parse().expect("addr"),
                Override {
                    added: true,
                    weight: Some(2),
                    ..Default::default()
                },
            );
        }
        let got: Vec<(String, u32)> = apply(up, &base)
            .iter()
            .map(|b| (b.addr.to_string(), b.weight))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1:80".to_string(), 3),
                ("10.0.0.3:80".to_string(), 1),
                ("10.0.0.9:80".to_string(), 2)
            ]
        );
        // an upstream without changes is its base list
        assert_eq!(apply("live-test-none", &base).len(), 3);
    }

    #[test]
    fn a_reload_forgets_the_changes_of_backends_gone_from_the_file() {
        let y = "listeners: [{name: web, address: 127.0.0.1:1, protocol: http}]\nupstreams: [{name: app, backends: [{address: 10.1.0.1:80}]}]\n";
        let cfg = crate::config::Config::from_yaml("t.yaml", y).expect("valid");
        let mut t = Table::new();
        let per = t.entry("app".to_string()).or_default();
        for (a, added) in [
            ("10.1.0.1:80", false),
            ("10.1.0.2:80", false),
            ("10.1.0.3:80", true),
        ] {
            per.insert(
                a.parse().expect("addr"),
                Override {
                    weight: Some(5),
                    added,
                    ..Default::default()
                },
            );
        }
        t.entry("gone".to_string()).or_default().insert(
            "10.1.0.9:80".parse().expect("addr"),
            Override {
                weight: Some(5),
                ..Default::default()
            },
        );
        prune_table(&mut t, &cfg.upstreams);
        let kept: Vec<String> = t["app"].keys().map(|a| a.to_string()).collect();
        assert_eq!(kept, ["10.1.0.1:80", "10.1.0.3:80"]);
        assert!(!t.contains_key("gone"));
    }

    #[test]
    fn states_parse_and_the_table_round_trips_through_json() {
        assert_eq!(AdminState::parse("maint"), Some(AdminState::Maint));
        assert_eq!(AdminState::parse("asleep"), None);
        let mut t = Table::new();
        t.entry("app".into()).or_default().insert(
            "[::1]:8080".parse().expect("addr"),
            Override {
                state: Some(AdminState::Drain),
                ..Default::default()
            },
        );
        let text = serde_json::to_string(&t).expect("encode");
        assert!(text.contains("\"drain\""), "{text}");
        let back: Table = serde_json::from_str(&text).expect("decode");
        assert_eq!(back, t);
    }
}
