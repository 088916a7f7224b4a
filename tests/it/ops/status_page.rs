//! The status page, rendered in a real headless browser.

use super::{admin_block, admin_post, base, TOKEN};
use crate::support::{Conn, OriginBuilder, Proxy};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

// ---- status page in a real browser ----

/// The headless browser the status-page test drives. Missing is a failure, not a skip: a
/// test that passes without a browser would pass with a broken status page too.
fn chromium() -> String {
    const CANDIDATES: [&str; 3] = ["chromium", "chromium-browser", "google-chrome"];
    CANDIDATES
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(String::from)
        .unwrap_or_else(|| {
            panic!(
                "chromium is missing: none of {CANDIDATES:?} runs; `scripts/setup --test` installs chromium"
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_in_headless_chromium() {
    let browser = chromium();
    let a = OriginBuilder::new("a").run().await;
    let b = OriginBuilder::new("b").run().await;
    let p = Proxy::start(&base(&[&a, &b], &admin_block(), None));
    let addr = p.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let load = tokio::spawn(async move {
        let mut c = Conn::connect(addr).await.expect("connect");
        while !s2.load(SeqCst) {
            let _ = c.get("/", &[]).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let r = admin_post(
        &p,
        &format!("/upstreams/app/backends/{}/drain", b.addr),
        Some(TOKEN),
    )
    .await;
    assert_eq!(r.status, 200);

    let url = format!("http://127.0.0.1:{}/?token={TOKEN}", p.port(1));
    let shot = p.dir.join("status.png");
    let profile = p.dir.join("chromium-profile");
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1000,420",
        "--virtual-time-budget=4000",
    ];
    let run = |extra: &str, out_dom: bool| {
        let mut c = Command::new(&browser);
        c.args(common)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(extra)
            .arg(&url)
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        if !out_dom {
            c.stdout(Stdio::null());
        }
        c.output()
    };
    // Blocking is fine here: the load task has the runtime's other worker.
    let dom = run("--dump-dom", true).expect("run chromium");
    let html = String::from_utf8_lossy(&dom.stdout).into_owned();
    let out = run(&format!("--screenshot={}", shot.display()), false).expect("screenshot");
    stop.store(true, SeqCst);
    let _ = load.await;
    assert!(out.status.success(), "chromium --screenshot failed");
    assert!(
        html.contains(&a.addr.to_string()),
        "backend a missing:\n{html}"
    );
    assert!(
        html.contains(&b.addr.to_string()),
        "backend b missing:\n{html}"
    );
    assert!(html.contains("● up"), "health not shown:\n{html}");
    assert!(html.contains(">drained<"), "drain not shown:\n{html}");
    assert!(html.contains("upstream app"), "{html}");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    if let Ok(keep) = std::env::var("STEPSTONE_KEEP_SCREENSHOT") {
        let _ = std::fs::copy(&shot, keep);
    }
}
