//! The shared count behind `rate_limit_per_ip` with a `rate_limit_store`: every instance
//! that names the same Redis counts a client's requests in one key per second, so a fleet
//! lets a client through as often as one instance would.
//!
//! One round trip per request: a Lua script (by its SHA1, `EVALSHA`; loaded by `EVAL` the
//! first time a server does not know it) that increments the key of this second and sets
//! its expiry when it creates it. The whole exchange, waiting for a pooled connection and
//! connecting included, has the store's `timeout`; a store that is down, slow or answers
//! with an error is left alone for a short pause and the request is counted locally
//! (`None`), so a request never fails because of the store.

use crate::config::RateStoreSpec;
use once_cell::sync::Lazy;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Increments the key of this second; the expiry outlives the second so that instances
/// whose clocks differ a little still find it.
const SCRIPT: &str =
    "local n = redis.call('INCR', KEYS[1]) if n == 1 then redis.call('PEXPIRE', KEYS[1], 2000) end return n";

/// After a failure the store is not asked for this long: a store that is down costs one
/// probe per pause, not one per request.
const PAUSE: Duration = Duration::from_millis(250);

static START: Lazy<Instant> = Lazy::new(Instant::now);

fn now_ms() -> u64 {
    START.elapsed().as_millis() as u64
}

/// One Redis server's connections, shared by every listener that names it (and kept over
/// reloads that keep it).
pub struct Store {
    spec: RateStoreSpec,
    idle: Mutex<Vec<Conn>>,
    slots: tokio::sync::Semaphore,
    /// [`now_ms`] before which the store is not asked.
    pause_until: AtomicU64,
    /// An outage was logged and has not ended: its end is logged too.
    down: AtomicBool,
    /// [`now_ms`] of the last outage logged: a store that flaps is logged once a minute.
    logged_at: AtomicU64,
    sha: String,
}

static STORES: Lazy<Mutex<Vec<Arc<Store>>>> = Lazy::new(|| Mutex::new(Vec::new()));

impl Store {
    /// The store for `spec`, the same one for every listener and reload that names it.
    pub fn shared(spec: &RateStoreSpec) -> Arc<Store> {
        let mut all = STORES.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = all.iter().find(|s| s.spec == *spec) {
            return s.clone();
        }
        let sha = openssl::sha::sha1(SCRIPT.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let s = Arc::new(Store {
            spec: spec.clone(),
            idle: Mutex::new(Vec::with_capacity(spec.pool_size)),
            slots: tokio::sync::Semaphore::new(spec.pool_size),
            pause_until: AtomicU64::new(0),
            down: AtomicBool::new(false),
            logged_at: AtomicU64::new(0),
            sha,
        });
        all.push(s.clone());
        s
    }

    /// This client's requests in the current second across the fleet, this one included;
    /// `None` when the store did not answer in time (count locally then).
    pub async fn count(&self, scope: &str, ip: IpAddr) -> Option<u64> {
        if now_ms() < self.pause_until.load(Ordering::Relaxed) {
            return None;
        }
        let second = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let key = format!("{}{scope}:{ip}:{second}", self.spec.key_prefix);
        let res = match tokio::time::timeout(self.spec.timeout, self.ask(&key)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.spec.timeout)),
        };
        match res {
            Ok(n) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    log::info!(
                        "rate_limit_store {}: answering again; counting with the fleet",
                        self.spec.addr
                    );
                }
                Some(n)
            }
            Err(e) => {
                crate::observability::RATE_STORE_ERRORS.inc();
                // the other idle connections most likely went the same way
                self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
                self.pause_until
                    .store(now_ms() + PAUSE.as_millis() as u64, Ordering::Relaxed);
                // `+ 1`: zero is "never logged"
                let now = now_ms() + 1;
                let last = self.logged_at.load(Ordering::Relaxed);
                let due = last == 0 || now > last + 60_000;
                if due && !self.down.swap(true, Ordering::Relaxed) {
                    self.logged_at.store(now, Ordering::Relaxed);
                    log::warn!(
                        "rate_limit_store {}: {e}; counting in this instance until it answers",
                        self.spec.addr
                    );
                }
                None
            }
        }
    }

    async fn ask(&self, key: &str) -> Result<u64, String> {
        let _slot = self.slots.acquire().await.map_err(|e| e.to_string())?;
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => Conn::connect(self.spec.addr)
                .await
                .map_err(|e| format!("cannot connect: {e}"))?,
        };
        // A connection that failed or timed out mid-exchange is dropped, never reused: its
        // next answer would be this one's.
        let n = conn.count(&self.sha, key).await?;
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
        Ok(n)
    }
}

struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

enum Reply {
    Int(i64),
    Error(String),
}

impl Conn {
    async fn connect(addr: std::net::SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Conn {
            s,
            buf: Vec::with_capacity(64),
        })
    }

    async fn count(&mut self, sha: &str, key: &str) -> Result<u64, String> {
        match self
            .call(&[b"EVALSHA", sha.as_bytes(), b"1", key.as_bytes()])
            .await?
        {
            Reply::Error(e) if e.starts_with("NOSCRIPT") => {
                match self
                    .call(&[b"EVAL", SCRIPT.as_bytes(), b"1", key.as_bytes()])
                    .await?
                {
                    Reply::Int(n) => Ok(n.max(0) as u64),
                    Reply::Error(e) => Err(format!("answered {e}")),
                }
            }
            Reply::Int(n) => Ok(n.max(0) as u64),
            Reply::Error(e) => Err(format!("answered {e}")),
        }
    }

    async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, String> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.s.write_all(&out).await.map_err(|e| e.to_string())?;
        self.buf.clear();
        let line = loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                break &self.buf[..end];
            }
            if self.buf.len() > 4096 {
                return Err("an answer too long for a count".into());
            }
            let n = self
                .s
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed the connection".into());
            }
        };
        let text = String::from_utf8_lossy(line.get(1..).unwrap_or_default()).into_owned();
        match line.first() {
            Some(b':') => text
                .parse()
                .map(Reply::Int)
                .map_err(|_| format!("answered {text:?} for a count")),
            Some(b'-') => Ok(Reply::Error(text)),
            _ => Err(format!(
                "answered {:?} for a count",
                String::from_utf8_lossy(line)
            )),
        }
    }
}
