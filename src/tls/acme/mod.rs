//! Automatic certificates from an ACME CA (RFC 8555), HTTP-01 and TLS-ALPN-01 challenges.
//!
//! Design:
//! - Each `tls.acme` block gets a [`Slot`] inside its listener's certificate store. The
//!   store serves the slot's certificate for the slot's names (and for every name when the
//!   listener has no `certificates` of its own); until there is one it serves the
//!   listener's `certificates`, or a self-signed placeholder ([`placeholder`]) that no
//!   client trusts. A swap is one pointer store, like a reload.
//! - A stored, unexpired certificate covering the names is loaded at start, so a restart or
//!   an upgrade orders nothing. [`service`] runs one task per slot: it orders when there is
//!   no certificate or when the renewal time has come (`renew_before`, or one third of the
//!   lifetime left if that comes first), and retries failures with exponential backoff and
//!   jitter.
//! - The client ([`client`]) is our own small one over the `openssl` crate (JWS ES256,
//!   HTTP/1.1 over TLS): the proxy's TLS is OpenSSL everywhere, and no second TLS stack or
//!   HTTP client is linked for a handful of requests a month.
//! - HTTP-01 answers come from [`challenge`]'s token map, read by the policy on every
//!   HTTP listener before routing; TLS-ALPN-01 certificates from its name map, installed by
//!   the listener's certificate callback ([`alpn`]).

pub mod alpn;
pub mod challenge;
pub mod client;
pub mod http;
pub mod jws;
pub mod storage;

use crate::config::acme::AcmeSpec;
use crate::config::certs::LoadedCert;
use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use log::{info, warn};
use openssl::asn1::Asn1Time;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// After an issuance, the next order waits at least this long, whatever `renew_before`
/// says (a window that covers the whole lifetime would otherwise order without pause).
const MIN_GAP: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(3600);

/// The ACME certificate of one listener, and its counters for `/metrics`.
pub struct Slot {
    pub spec: AcmeSpec,
    /// The listener's tls key path, for log lines.
    pub key_path: String,
    /// The listener's name, the `listener` label of its metrics.
    pub listener: String,
    pub cert: ArcSwapOption<LoadedCert>,
    pub orders_ok: AtomicU64,
    pub orders_failed: AtomicU64,
    /// Unix seconds of the served certificate's notAfter and notBefore; 0: none yet.
    pub not_after: AtomicI64,
    pub not_before: AtomicI64,
    /// Seconds (up to an hour) by which this instance renews early, so that a fleet's
    /// instances, or listeners started together, do not all order in the same second.
    spread: i64,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn unix_of(t: &openssl::asn1::Asn1TimeRef) -> i64 {
    let Ok(now) = Asn1Time::days_from_now(0) else {
        return 0;
    };
    match now.diff(t) {
        Ok(d) => unix_now() + d.days as i64 * 86400 + d.secs as i64,
        Err(_) => 0,
    }
}

impl Slot {
    pub fn new(key_path: &str, listener: &str, spec: &AcmeSpec) -> Slot {
        let slot = Slot {
            spec: spec.clone(),
            key_path: format!("{key_path}.acme"),
            listener: listener.to_string(),
            cert: ArcSwapOption::empty(),
            orders_ok: AtomicU64::new(0),
            orders_failed: AtomicU64::new(0),
            not_after: AtomicI64::new(0),
            not_before: AtomicI64::new(0),
            spread: {
                use rand::Rng;
                rand::thread_rng().gen_range(0..=3600)
            },
        };
        match storage::load(spec) {
            Ok(Some(c)) => {
                info!(
                    "{}: serving the stored certificate {}",
                    slot.key_path,
                    crate::config::certs::describe(&c.leaf)
                );
                slot.set(c);
            }
            Ok(None) => info!(
                "{}: no stored certificate for {}; ordering one",
                slot.key_path,
                spec.names.join(", ")
            ),
            Err(e) => warn!(
                "{}: the stored certificate is unusable, ordering a new one: {e}",
                slot.key_path
            ),
        }
        slot
    }

    fn set(&self, c: LoadedCert) {
        self.not_after.store(unix_of(c.leaf.not_after()), Relaxed);
        self.not_before.store(unix_of(c.leaf.not_before()), Relaxed);
        self.cert.store(Some(Arc::new(c)));
    }

    /// The certificate to serve for `sni`, if the slot has one for it. `only`: the listener
    /// has no certificates of its own, so the slot's serves every name.
    pub fn serving(&self, sni: Option<&str>, only: bool) -> Option<Arc<LoadedCert>> {
        let c = self.cert.load_full()?;
        let named = sni.is_some_and(|s| {
            let s = s.trim_end_matches('.');
            self.spec.names.iter().any(|n| n.eq_ignore_ascii_case(s))
        });
        (named || only).then_some(c)
    }

    /// Seconds until the served certificate expires (negative once expired); None: none.
    pub fn expires_in(&self) -> Option<i64> {
        let na = self.not_after.load(Relaxed);
        (na != 0).then(|| na - unix_now())
    }

    /// Seconds until the renewal is due (zero or less: now).
    fn renew_in(&self) -> i64 {
        let (na, nb) = (self.not_after.load(Relaxed), self.not_before.load(Relaxed));
        if na == 0 {
            return 0;
        }
        let window = (self.spec.renew_before.as_secs() as i64).max((na - nb) / 3);
        na - window - self.spread - unix_now()
    }
}

/// A self-signed certificate for the names, served until the CA's arrives on a listener
/// with no `certificates`: clients refuse it, as they would a refused handshake, but the
/// listener is up and says why in its subject.
pub fn placeholder(names: &[String]) -> Result<LoadedCert, String> {
    use openssl::x509::extension::SubjectAlternativeName;
    let e = |e: openssl::error::ErrorStack| e.to_string();
    let key = jws::new_key()?;
    let mut name = openssl::x509::X509NameBuilder::new().map_err(e)?;
    name.append_entry_by_nid(
        openssl::nid::Nid::COMMONNAME,
        "stepstone placeholder: ACME certificate pending",
    )
    .map_err(e)?;
    let name = name.build();
    let mut b = openssl::x509::X509Builder::new().map_err(e)?;
    b.set_version(2).map_err(e)?;
    b.set_subject_name(&name).map_err(e)?;
    b.set_issuer_name(&name).map_err(e)?;
    b.set_pubkey(&key).map_err(e)?;
    b.set_not_before(&*Asn1Time::days_from_now(0).map_err(e)?)
        .map_err(e)?;
    b.set_not_after(&*Asn1Time::days_from_now(7).map_err(e)?)
        .map_err(e)?;
    let mut san = SubjectAlternativeName::new();
    for n in names {
        san.dns(n);
    }
    let ext = san.build(&b.x509v3_context(None, None)).map_err(e)?;
    b.append_extension(ext).map_err(e)?;
    b.sign(&key, openssl::hash::MessageDigest::sha256())
        .map_err(e)?;
    Ok(LoadedCert {
        leaf: b.build(),
        chain: Vec::new(),
        key,
    })
}

/// One order, start to stored certificate.
async fn issue(spec: &AcmeSpec) -> Result<LoadedCert, String> {
    let tls = http::connector(spec.directory_ca_file.as_deref())?;
    let key = storage::account_key(spec)?;
    let mut c = client::Client::login(tls, &spec.directory, key, spec.contact.as_deref()).await?;
    let (chain, key) = c.order(&spec.names, spec.challenge).await?;
    storage::save(spec, &chain, &key)
}

fn jitter(d: Duration) -> Duration {
    use rand::Rng;
    // ±20%, so that a fleet that failed together does not retry together.
    d.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
}

async fn run(slot: Arc<Slot>) {
    let mut failures: u32 = 0;
    let mut gap = Duration::ZERO;
    loop {
        if !gap.is_zero() {
            tokio::time::sleep(jitter(gap)).await;
            gap = Duration::ZERO;
        }
        let due = slot.renew_in();
        if due > 0 {
            // Re-checked at least daily, so that a clock step is noticed.
            tokio::time::sleep(Duration::from_secs(due.min(86400) as u64)).await;
            continue;
        }
        let start = std::time::Instant::now();
        match issue(&slot.spec).await {
            Ok(c) => {
                info!(
                    "{}: certificate issued in {:?}: {}",
                    slot.key_path,
                    start.elapsed(),
                    crate::config::certs::describe(&c.leaf)
                );
                slot.set(c);
                slot.orders_ok.fetch_add(1, Relaxed);
                failures = 0;
                gap = MIN_GAP;
            }
            Err(e) => {
                slot.orders_failed.fetch_add(1, Relaxed);
                failures = failures.saturating_add(1);
                let wait = BACKOFF_FIRST
                    .saturating_mul(1u32 << failures.min(12).saturating_sub(1))
                    .min(BACKOFF_MAX);
                warn!(
                    "{}: order for {} failed (attempt {failures}), retrying in about {wait:?}: {e}",
                    slot.key_path,
                    slot.spec.names.join(", ")
                );
                gap = wait;
            }
        }
    }
}

/// How often the service looks for slots that reloads added or removed.
const WATCH_STEP: Duration = Duration::from_secs(1);

/// The order tasks of the ACME slots of the running listeners: those a reload adds get one
/// within [`WATCH_STEP`], those it removes (or replaces) have theirs stopped.
pub struct AcmeService;

/// Runs only when some listener has `tls.acme`, at start or later: the reload that adds the
/// first one also adds this service's work, which is why it always runs (idle, it wakes once
/// a second to look at the list of stores).
pub fn service() -> AcmeService {
    AcmeService
}

fn slots() -> Vec<Arc<Slot>> {
    super::stores()
        .iter()
        .filter_map(|s| s.acme.clone())
        .collect()
}

#[async_trait]
impl BackgroundService for AcmeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tasks: Vec<(Arc<Slot>, tokio::task::JoinHandle<()>)> = Vec::new();
        loop {
            let now = slots();
            tasks.retain(|(s, t)| {
                let keep = now.iter().any(|n| Arc::ptr_eq(s, n));
                if !keep {
                    info!("{}: listener gone, no more orders for it", s.key_path);
                    t.abort();
                }
                keep
            });
            for s in now {
                if !tasks.iter().any(|(t, _)| Arc::ptr_eq(t, &s)) {
                    let task = tokio::spawn(run(s.clone()));
                    tasks.push((s, task));
                }
            }
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(WATCH_STEP) => {}
            }
        }
        for (_, t) in tasks {
            t.abort();
        }
    }
}
