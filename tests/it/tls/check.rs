//! The `-t` check of certificate files and TLS settings.

use super::{p, Pki};
use crate::support::pki::EXPIRED;
use crate::support::proxy::run_cli;
use std::path::Path;

fn check(dir: &Path, yaml: &str) -> (i32, String) {
    let f = dir.join("check.yaml");
    std::fs::write(&f, yaml).expect("write");
    run_cli(&["-t", "-c", &p(&f)])
}

#[test]
fn check_names_bad_certificate_files() {
    let pki = Pki::new("tls-check");
    let (c, k) = pki.server("a", "a.test", &["a.test"], 70);
    let (_, k2) = pki.server("b", "b.test", &["b.test"], 71);
    let (ec, ek) = pki
        .ca
        .server_with("old.test", &["old.test"], 72, EXPIRED)
        .write(&pki.dir, "expired");
    let missing = pki.dir.join("missing.crt");
    let listener = |cert: &Path, key: &Path, extra: &str| {
        format!(
            "listeners:\n  - name: tls\n    address: 127.0.0.1:18443\n    protocol: https\n    tls:\n      certificates: [{{cert: {}, key: {}}}]\n{extra}",
            p(cert),
            p(key)
        )
    };
    let cases: Vec<(String, &str, String)> = vec![
        (
            listener(&missing, &k, ""),
            "listeners[0].tls.certificates[0].cert",
            p(&missing),
        ),
        (
            listener(&c, &k2, ""),
            "listeners[0].tls.certificates[0].key",
            "is not the private key".into(),
        ),
        (
            listener(&ec, &ek, ""),
            "listeners[0].tls.certificates[0].cert",
            "expired".into(),
        ),
        (
            listener(&k, &k, ""),
            "listeners[0].tls.certificates[0].cert",
            "PEM certificate".into(),
        ),
        (
            "listeners: [{name: s, address: 127.0.0.1:18443, protocol: https}]\n".into(),
            "listeners[0].tls",
            "needs a tls block".into(),
        ),
        (
            "listeners: [{name: s, address: 127.0.0.1:18443, protocol: http}]\nupstreams: [{name: a, backends: [{address: 127.0.0.1:1}], tls: true}]\n".into(),
            "upstreams[0].sni",
            "required".into(),
        ),
        (
            "listeners: [{name: s, address: 127.0.0.1:18443, protocol: http}]\nupstreams: [{name: a, backends: [{address: 127.0.0.1:1}], sni: x.test}]\n".into(),
            "upstreams[0].sni",
            "only valid with tls: true".into(),
        ),
        (
            format!("listeners: [{{name: s, address: 127.0.0.1:18443, protocol: http}}]\nupstreams: [{{name: a, backends: [{{address: 127.0.0.1:1}}], tls: true, sni: x.test, ca_file: {}}}]\n", p(&missing)),
            "upstreams[0].ca_file",
            p(&missing),
        ),
        (
            "listeners: [{name: s, address: 127.0.0.1:18443, protocol: https, redirect_https: true}]\n".into(),
            "listeners[0].redirect_https",
            "protocol: http".into(),
        ),
    ];
    for (yaml, path, needle) in cases {
        let (code, out) = check(&pki.dir, &yaml);
        assert_eq!(code, 1, "{yaml}\n{out}");
        assert!(out.contains(path), "want {path} in: {out}");
        assert!(out.contains(&needle), "want {needle} in: {out}");
    }
    // allow_expired turns the error into a warning.
    let (code, out) = check(&pki.dir, &listener(&ec, &ek, "      allow_expired: true\n"));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("expired") && out.contains("allow_expired"),
        "{out}"
    );
    // A good pair passes.
    let (code, out) = check(&pki.dir, &listener(&c, &k, ""));
    assert_eq!(code, 0, "{out}");
}
