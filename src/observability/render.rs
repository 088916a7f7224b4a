//! The `/metrics` page: the registry, plus series read from live state at scrape time.

use super::*;
pub(super) fn esc_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole `/metrics` page: the registry plus per-backend series read from the pools.
pub fn render(pools: &[Arc<Pool>]) -> String {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&REGISTRY.gather(), &mut buf) {
        log::error!("metrics encoding: {e}");
    }
    let mut out = String::from_utf8(buf).unwrap_or_default();
    type Getter = fn(&crate::upstream::Slot) -> String;
    let families: [(&str, &str, &str, Getter); 10] = [
        (
            "stepstone_backend_weight",
            "gauge",
            "The backend's weight in force (the file's, or the runtime API's)",
            |s| s.weight.to_string(),
        ),
        (
            "stepstone_backend_maint",
            "gauge",
            "1 while an operator has the backend in maintenance (drained, not probed)",
            |s| u8::from(s.maint.load(Relaxed)).to_string(),
        ),
        (
            "stepstone_backend_up",
            "gauge",
            "1 when the backend passes its health checks",
            |s| u8::from(s.healthy.load(Relaxed)).to_string(),
        ),
        (
            "stepstone_backend_ejected",
            "gauge",
            "1 while outlier detection has the backend out",
            |s| u8::from(s.ejected()).to_string(),
        ),
        (
            "stepstone_backend_ejections_total",
            "counter",
            "Times outlier detection ejected the backend",
            |s| s.ejections_total.load(Relaxed).to_string(),
        ),
        (
            "stepstone_backend_drained",
            "gauge",
            "1 when an operator drained the backend",
            |s| u8::from(s.drained.load(Relaxed)).to_string(),
        ),
        (
            "stepstone_backend_in_flight",
            "gauge",
            "Requests and connections in flight to the backend",
            |s| s.inflight.load(Relaxed).to_string(),
        ),
        (
            "stepstone_backend_requests_total",
            "counter",
            "Requests sent to the backend",
            |s| s.totals().requests.to_string(),
        ),
        (
            "stepstone_backend_response_seconds_sum",
            "counter",
            "Total response time of the backend's requests",
            |s| format!("{}", s.totals().latency_us as f64 / 1e6),
        ),
        (
            "stepstone_backend_response_seconds_count",
            "counter",
            "Requests counted in the response time sum",
            |s| s.totals().completed.to_string(),
        ),
    ];
    for (name, kind, help, get) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for p in pools {
            for s in p.members.load().slots.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{upstream=\"{}\",backend=\"{}\"}} {}",
                    esc_label(&p.name),
                    esc_label(&s.label),
                    get(s)
                );
            }
        }
    }
    retries(&mut out, pools);
    mirrors(&mut out, pools);
    tls_handshakes(&mut out);
    acme(&mut out);
    out
}

/// Retries per upstream by reason (a failure kind or the status retried), and the retries
/// the budget refused, counted by each pool's [`crate::upstream::budget::RetryBudget`].
fn retries(out: &mut String, pools: &[Arc<Pool>]) {
    let name = "stepstone_retries_total";
    let _ = writeln!(
        out,
        "# HELP {name} Tries sent to another backend, by the failure retried (connect_failure, reset, timeout, or the status)\n# TYPE {name} counter"
    );
    for p in pools {
        for (reason, n) in p.budget.counts() {
            let u = esc_label(&p.name);
            let _ = writeln!(out, "{name}{{upstream=\"{u}\",reason=\"{reason}\"}} {n}");
        }
    }
    let name = "stepstone_retry_budget_exhausted_total";
    let _ = writeln!(
        out,
        "# HELP {name} Retries not made because the upstream's retry budget was spent\n# TYPE {name} counter"
    );
    for p in pools {
        let n = p.budget.exhausted.load(Relaxed);
        let _ = writeln!(out, "{name}{{upstream=\"{}\"}} {n}", esc_label(&p.name));
    }
}

/// The mirror upstreams' copies, from their pools.
fn mirrors(out: &mut String, pools: &[Arc<Pool>]) {
    let used: Vec<&Arc<Pool>> = pools
        .iter()
        .filter(|p| p.shadow.used.load(Relaxed))
        .collect();
    let name = "stepstone_mirror_requests_total";
    let _ = writeln!(
        out,
        "# HELP {name} Request copies sent to a mirror upstream\n# TYPE {name} counter"
    );
    for p in &used {
        let n = p.shadow.requests.load(Relaxed);
        let _ = writeln!(out, "{name}{{upstream=\"{}\"}} {n}", esc_label(&p.name));
    }
    let name = "stepstone_mirror_dropped_total";
    let _ = writeln!(
        out,
        "# HELP {name} Sampled requests not copied to a mirror upstream: body_too_large (over the 64 KiB replay bound), concurrency (its copies in flight at their bound), no_backend\n# TYPE {name} counter"
    );
    for p in &used {
        let s = &p.shadow;
        for (reason, n) in [
            ("body_too_large", &s.too_large),
            ("concurrency", &s.concurrency),
            ("no_backend", &s.no_backend),
        ] {
            let _ = writeln!(
                out,
                "{name}{{upstream=\"{}\",reason=\"{reason}\"}} {}",
                esc_label(&p.name),
                n.load(Relaxed)
            );
        }
    }
    let name = "stepstone_mirror_errors_total";
    let _ = writeln!(
        out,
        "# HELP {name} Request copies that failed (connect, write, read, timeout); clients never see them\n# TYPE {name} counter"
    );
    for p in &used {
        let n = p.shadow.errors.load(Relaxed);
        let _ = writeln!(out, "{name}{{upstream=\"{}\"}} {n}", esc_label(&p.name));
    }
}

/// TLS handshakes per listener, counted by the certificate stores.
fn tls_handshakes(out: &mut String) {
    let name = "stepstone_tls_handshakes_total";
    let _ = writeln!(
        out,
        "# HELP {name} TLS handshakes completed on the listeners (result ok), and those refused for lack of a certificate (no_certificate), by listener name\n# TYPE {name} counter"
    );
    for s in crate::tls::stores() {
        let l = esc_label(&s.spec.listener);
        let ok = s.handshakes_ok.load(Relaxed);
        let none = s.handshakes_no_cert.load(Relaxed);
        let _ = writeln!(out, "{name}{{listener=\"{l}\",result=\"ok\"}} {ok}");
        let _ = writeln!(
            out,
            "{name}{{listener=\"{l}\",result=\"no_certificate\"}} {none}"
        );
    }
    let (waiting, waited) = crate::tls::pace::waiting();
    let name = "stepstone_tls_handshakes_waiting";
    let _ = writeln!(
        out,
        "# HELP {name} TLS handshakes whose ClientHello is in, waiting for their turn (one starts per event-loop turn on each thread)\n# TYPE {name} gauge\n{name} {waiting}"
    );
    let name = "stepstone_tls_handshake_wait_seconds_total";
    let _ = writeln!(
        out,
        "# HELP {name} Time TLS handshakes spent waiting for their turn, summed; over stepstone_tls_handshakes_total, the mean wait\n# TYPE {name} counter\n{name} {waited}"
    );
}

/// ACME orders by result and the days left on each ordered certificate.
fn acme(out: &mut String) {
    let slots: Vec<_> = crate::tls::stores()
        .iter()
        .filter_map(|s| s.acme.clone())
        .collect();
    if slots.is_empty() {
        return;
    }
    let name = "stepstone_acme_orders_total";
    let _ = writeln!(
        out,
        "# HELP {name} ACME orders by result (ok: a certificate was issued; error: the attempt failed and is retried with backoff), by listener name\n# TYPE {name} counter"
    );
    for s in &slots {
        let l = esc_label(&s.listener);
        let ok = s.orders_ok.load(Relaxed);
        let err = s.orders_failed.load(Relaxed);
        let _ = writeln!(out, "{name}{{listener=\"{l}\",result=\"ok\"}} {ok}");
        let _ = writeln!(out, "{name}{{listener=\"{l}\",result=\"error\"}} {err}");
    }
    let name = "stepstone_acme_certificate_expiry_days";
    let _ = writeln!(
        out,
        "# HELP {name} Days until the ACME certificate served expires, by listener name and the certificate's first name (absent until one is issued)\n# TYPE {name} gauge"
    );
    for s in &slots {
        if let Some(secs) = s.expires_in() {
            let _ = writeln!(
                out,
                "{name}{{listener=\"{}\",name=\"{}\"}} {:.3}",
                esc_label(&s.listener),
                esc_label(s.spec.names.first().map_or("", |n| n.as_str())),
                secs as f64 / 86400.0
            );
        }
    }
}
