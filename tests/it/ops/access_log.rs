//! The access log: JSON to a file, combined to stdout, reopened after logrotate, and changed
//! by a reload.

use super::base;
use crate::support::{client, OriginBuilder, Proxy};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[tokio::test]
async fn access_log_json_to_a_file() {
    let a = OriginBuilder::new("a").body("hello").run().await;
    let p = Proxy::start(&base(
        &[&a],
        "access_log: {format: json, path: '{{dir}}/access.log'}\n",
        None,
    ));
    let r = client::get(p.addr, "/x?y=1", &[("User-Agent", "ops-test")])
        .await
        .expect("resp");
    assert_eq!(r.status, 200);
    let file = p.dir.join("access.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let t = std::fs::read_to_string(&file).unwrap_or_default();
        if let Some(l) = t.lines().next() {
            break l.to_string();
        }
        assert!(Instant::now() < deadline, "no access log line");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(v["status"], 200);
    assert_eq!(v["uri"], "/x?y=1");
    assert_eq!(v["route"], "routes[0]");
    assert_eq!(v["upstream"], "app");
    assert_eq!(v["backend"], a.addr.to_string());
    assert_eq!(v["bytes_sent"], 5);
    assert_eq!(v["user_agent"], "ops-test");
    assert_eq!(v["cache"], "-");
    assert!(v["duration"].as_f64().is_some_and(|d| d > 0.0));
    assert!(v["upstream_connect"].as_f64().is_some());
}

/// GET `path`, asserting a 200.
async fn get_ok(addr: SocketAddr, path: &str) {
    let r = client::get(addr, path, &[]).await.expect("resp");
    assert_eq!(r.status, 200, "{path}");
}

/// Wait until the log file `f` has a line containing `what`.
async fn wait_logged(f: &std::path::Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(f)
        .unwrap_or_default()
        .contains(what)
    {
        assert!(Instant::now() < deadline, "{what} not in {}", f.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Log rotation: once logrotate has moved the access log away, `stepstone -s reopen` (SIGUSR1)
/// makes the proxy write the next lines to a new file at the configured path, while the moved
/// file keeps every line from before (none lost, none split between the two).
#[tokio::test]
async fn reopen_writes_the_access_log_to_a_new_file_after_logrotate_moved_it() {
    let a = OriginBuilder::new("a").body("hello").run().await;
    let p = Proxy::start(&base(
        &[&a],
        "access_log: {format: json, path: '{{dir}}/access.log'}\n",
        None,
    ));
    let (file, moved) = (p.dir.join("access.log"), p.dir.join("access.log.1"));
    get_ok(p.addr, "/before").await;
    wait_logged(&file, "\"uri\":\"/before\"").await;
    // logrotate's rename: the proxy's open file goes with it
    std::fs::rename(&file, &moved).expect("rotate");
    get_ok(p.addr, "/moved").await;
    wait_logged(&moved, "\"uri\":\"/moved\"").await;

    let config = p.config.display().to_string();
    let (code, out) = crate::support::proxy::run_cli(&["-s", "reopen", "-c", &config]);
    assert_eq!(code, 0, "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.log().contains("access log: reopened") {
        assert!(Instant::now() < deadline, "not reopened:\n{}", p.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    get_ok(p.addr, "/after").await;
    wait_logged(&file, "\"uri\":\"/after\"").await;
    let count = |f: &std::path::Path| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert_eq!(
        (count(&file), count(&moved)),
        (1, 2),
        "lines in the new and the moved file"
    );
}

/// A reload applies the access log's settings: it turns it on (JSON to a file), moves it to
/// another file in another format, and turns it off; a path that cannot be opened refuses
/// the reload, naming it, and the log goes on as it was; a reload that fails after opening
/// a new file removes the file it made.
#[tokio::test]
async fn a_reload_turns_the_access_log_on_changes_it_and_turns_it_off() {
    let a = OriginBuilder::new("a").body("hello").run().await;
    let p = Proxy::start(&base(&[&a], "", None));
    let first = std::fs::read_to_string(&p.config).expect("read the config");
    let config = p.config.display().to_string();
    let reload_with = |extra: String| {
        std::fs::write(&p.config, format!("{first}{extra}")).expect("write");
        crate::support::proxy::run_cli(&["-s", "reload", "-c", &config])
    };
    let (json, combined) = (p.dir.join("access.log"), p.dir.join("other.log"));
    let read = |f: &std::path::Path| std::fs::read_to_string(f).unwrap_or_default();

    get_ok(p.addr, "/off").await;
    let (code, out) = reload_with(format!(
        "access_log: {{format: json, path: '{}'}}\n",
        json.display()
    ));
    assert_eq!(code, 0, "{out}");
    get_ok(p.addr, "/json").await;
    wait_logged(&json, "\"uri\":\"/json\"").await;

    let (code, out) = reload_with(format!(
        "access_log: {{format: combined, path: '{}'}}\n",
        combined.display()
    ));
    assert_eq!(code, 0, "{out}");
    get_ok(p.addr, "/combined").await;
    wait_logged(&combined, "\"GET /combined HTTP/1.1\" 200").await;

    let (code, out) = reload_with("access_log: {path: /nonexistent-dir/x.log}\n".into());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("access_log.path") && out.contains("/nonexistent-dir/x.log"),
        "{out}"
    );
    get_ok(p.addr, "/still").await;
    wait_logged(&combined, "\"GET /still HTTP/1.1\" 200").await;

    // a reload that fails after opening a new file (here at an admin address in use)
    // leaves no file behind
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let third = p.dir.join("third.log");
    let (code, out) = reload_with(format!(
        "access_log: {{path: '{}'}}\nadmin: {{address: '{}'}}\n",
        third.display(),
        taken.local_addr().expect("addr")
    ));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("admin.address"), "{out}");
    assert!(
        !third.exists(),
        "the failed reload left {} behind",
        third.display()
    );

    let (code, out) = reload_with(String::new());
    assert_eq!(code, 0, "{out}");
    get_ok(p.addr, "/quiet").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (j, c) = (read(&json), read(&combined));
    assert!(
        !j.contains("/off") && !c.contains("/off"),
        "logged while off"
    );
    assert!(
        !j.contains("/quiet") && !c.contains("/quiet"),
        "logged after off"
    );
    assert_eq!((j.lines().count(), c.lines().count()), (1, 2), "{j}\n{c}");
}

#[tokio::test]
async fn access_log_combined_to_stdout() {
    let a = OriginBuilder::new("a").body("hello").run().await;
    let p = Proxy::start(&base(&[&a], "access_log: {format: combined}\n", None));
    assert_eq!(
        client::get(p.addr, "/c", &[]).await.expect("resp").status,
        200
    );
    assert_eq!(
        client::get(p.addr, "/nope", &[("Host", "h")])
            .await
            .expect("resp")
            .status,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.stdout().lines().count() < 2 {
        assert!(
            Instant::now() < deadline,
            "no access log lines:\n{}",
            p.stdout()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = p.stdout();
    // Each request logs when it is done, from the thread that served it: on a busy machine
    // the second request can be logged before the first, so the line is found by content.
    let l = out
        .lines()
        .find(|l| l.contains("\"GET /c "))
        .expect("a line for /c");
    assert!(l.starts_with("127.0.0.1 - - ["), "{l}");
    assert!(l.contains("\"GET /c HTTP/1.1\" 200 5 "), "{l}");
    for field in [
        "route=routes[0]",
        "upstream=app",
        &format!("backend={}", a.addr),
        "duration=",
        "upstream_connect=",
        "cache=-",
    ] {
        assert!(l.contains(field), "{field} missing in {l}");
    }
}
