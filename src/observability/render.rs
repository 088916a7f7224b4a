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
            |s| s.requests.load(Relaxed).to_string(),
        ),
        (
            "stepstone_backend_response_seconds_sum",
            "counter",
            "Total response time of the backend's requests",
            |s| format!("{}", s.latency_us.load(Relaxed) as f64 / 1e6),
        ),
        (
            "stepstone_backend_response_seconds_count",
            "counter",
            "Requests counted in the response time sum",
            |s| s.completed.load(Relaxed).to_string(),
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
    tls_handshakes(&mut out);
    out
}

/// TLS handshakes per listener, counted by the certificate stores.
fn tls_handshakes(out: &mut String) {
    let name = "stepstone_tls_handshakes_total";
    let _ = writeln!(
        out,
        "# HELP {name} TLS handshakes completed on the listeners (result ok), and those refused for lack of a certificate (no_certificate), by the listener's tls key path\n# TYPE {name} counter"
    );
    for s in crate::tls::stores() {
        let l = esc_label(&s.spec.key_path);
        let ok = s.handshakes_ok.load(Relaxed);
        let none = s.handshakes_no_cert.load(Relaxed);
        let _ = writeln!(out, "{name}{{listener=\"{l}\",result=\"ok\"}} {ok}");
        let _ = writeln!(
            out,
            "{name}{{listener=\"{l}\",result=\"no_certificate\"}} {none}"
        );
    }
}
