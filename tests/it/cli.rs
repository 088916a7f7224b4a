//! The command line: `-t`, config errors, the embedded demo.

use crate::support::proxy::run_cli;
use crate::support::{client, scratch_dir, Proxy};

#[test]
fn every_shipped_config_passes_check() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/conf");
    let mut n = 0;
    for e in std::fs::read_dir(dir).expect("conf/") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            let (code, out) = run_cli(&["-t", "-c", p.to_str().expect("utf8 path")]);
            assert_eq!(code, 0, "{} failed -t: {out}", p.display());
            n += 1;
        }
    }
    assert!(n >= 1, "no configs checked");
}

fn check(yaml: &str) -> (i32, String, String) {
    let d = scratch_dir("cfg");
    let f = d.join("bad.yaml");
    std::fs::write(&f, yaml).expect("write");
    let fs = f.to_str().expect("utf8").to_string();
    let (code, out) = run_cli(&["-t", "-c", &fs]);
    (code, out, fs)
}

const L: &str = "listeners: [{name: web, address: 127.0.0.1:18080, protocol: http}]\n";

#[test]
fn bad_configs_name_file_key_path_and_value() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "upstreams: [{name: a, backends: [{address: 127.0.0.1:1}, {address: 127.0.0.1:2, weight: 0}]}]\n",
            "upstreams[0].backends[1].weight",
            "0",
        ),
        (
            "upstreams: [{name: a, backends: [{address: '127.0.0.1:99999'}]}]\n",
            "upstreams[0].backends[0].address",
            "127.0.0.1:99999",
        ),
        (
            "upstreams: [{name: a, backends: [{address: 127.0.0.1:1}]}]\nroutes: [{listener: web, upstream: nope}]\n",
            "routes[0].upstream",
            "nope",
        ),
        (
            "upstreams: [{name: a, backends: [{address: 127.0.0.1:1}]}]\nroutes: [{listener: webz, upstream: a}]\n",
            "routes[0].listener",
            "webz",
        ),
        (
            "upstreams: [{name: a, backends: [{address: 127.0.0.1:1}], colour: red}]\n",
            "upstreams[0].colour",
            "unknown field",
        ),
        (
            "upstreams: [{name: a, read_timeout: 10parsecs, backends: [{address: 127.0.0.1:1}]}]\n",
            "upstreams[0].read_timeout",
            "10parsecs",
        ),
        (
            "upstreams: [{name: a, selection: fastest, backends: [{address: 127.0.0.1:1}]}]\n",
            "upstreams[0].selection",
            "fastest",
        ),
        (
            "pingora: {busy_poll: 20ms}\nupstreams: [{name: a, backends: [{address: 127.0.0.1:1}]}]\n",
            "pingora.busy_poll",
            "20ms",
        ),
        (
            "pingora: {busy_poll: 50ns}\nupstreams: [{name: a, backends: [{address: 127.0.0.1:1}]}]\n",
            "pingora.busy_poll",
            "50ns",
        ),
        (
            "upstreams: [{name: a, health_check: {type: tcp, reuse_connection: true}, backends: [{address: 127.0.0.1:1}]}]\n",
            "upstreams[0].health_check.type",
            "reuse_connection need type: http",
        ),
        (
            "upstreams: [{name: a, health_check: {type: http, host: 'a b'}, backends: [{address: 127.0.0.1:1}]}]\n",
            "upstreams[0].health_check.host",
            "a b",
        ),
        (
            "upstreams: [{name: a, health_check: {type: http, host: 'a/b'}, backends: [{address: 127.0.0.1:1}]}]\n",
            "upstreams[0].health_check.host",
            "a/b",
        ),
        (
            "pingora: {work_stealing: false, busy_poll: 100us, busy_poll_nap: 5ms}\nupstreams: [{name: a, backends: [{address: 127.0.0.1:1}]}]\n",
            "pingora.busy_poll_nap",
            "5ms",
        ),
        (
            "pingora: {busy_poll_nap: 30us}\nupstreams: [{name: a, backends: [{address: 127.0.0.1:1}]}]\n",
            "pingora.busy_poll_nap",
            "set pingora.busy_poll too",
        ),
        (
            "pingora: {busy_poll: 100us}\nupstreams: [{name: a, backends: [{address: 127.0.0.1:1}]}]\n",
            "pingora.busy_poll",
            "set pingora.work_stealing: false",
        ),
        (
            "pingora: {max_open_files: 10}\nupstreams: [{name: a, backends: [{address: 127.0.0.1:1}]}]\n",
            "pingora.max_open_files",
            "10",
        ),
    ];
    for (body, path, value) in cases {
        let (code, out, file) = check(&format!("{L}{body}"));
        assert_ne!(code, 0, "accepted: {body}");
        assert!(out.contains(&file), "file not named: {out}");
        assert!(out.contains(path), "key path {path} not named: {out}");
        assert!(out.contains(value), "value {value} not named: {out}");
    }
}

#[test]
fn missing_file_is_a_clear_error() {
    let (code, out) = run_cli(&["-t", "-c", "/nonexistent/stepstone.yaml"]);
    assert_ne!(code, 0);
    assert!(out.contains("/nonexistent/stepstone.yaml"), "{out}");
}

#[test]
fn bad_config_refuses_to_start() {
    let (code, out) = run_cli(&["-c", "/nonexistent/stepstone.yaml"]);
    assert_ne!(code, 0);
    assert!(out.contains("cannot read"), "{out}");
}

#[tokio::test]
async fn demo_runs_without_config_and_alternates_origins() {
    use std::process::{Command, Stdio};
    let port = crate::support::free_port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let dir = scratch_dir("demo");
    let child = Command::new(crate::support::proxy::bin())
        .env("STEPSTONE_DEMO_ADDR", addr.to_string())
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn demo");
    let mut p = Proxy {
        child,
        dir,
        config: Default::default(),
        addr,
        ports: vec![port],
    };
    p.wait_ready(addr).expect("demo listens");
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = client::get(addr, "/", &[]).await.expect("demo answers");
        assert_eq!(r.status, 200);
        assert!(r.text().starts_with("Hello from origin-"), "{}", r.text());
        seen.push(r.header("x-origin").unwrap_or_default().to_string());
    }
    assert_ne!(seen[0], seen[1], "origins should alternate: {seen:?}");
    assert_eq!(seen[0], seen[2]);
}
