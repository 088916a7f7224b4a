//! Graceful upgrades: five under load, the documented upgrade script with a slow new process,
//! and `-u` with no instance running.

use super::{base, load_task, pingora_block, spawn_upgrade, wait_exit, Tally};
use crate::support::proxy::{bin, render, send_signal};
use crate::support::{client, scratch_dir, OriginBuilder, Proxy};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_graceful_upgrades_under_load_drop_nothing() {
    let origin = OriginBuilder::new("a").run().await;
    let dir = scratch_dir("upgrade");
    let (text, ports) = render(&base(&[&origin], "", Some(&pingora_block(&dir, 2))), &dir);
    let first = Proxy::start_in(dir, &text, ports, &[]).expect("start");
    let addr = first.addr;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for i in 0..6 {
        tasks.push(tokio::spawn(load_task(
            addr,
            i % 2 == 0,
            stop.clone(),
            tally.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut procs = vec![first];
    for n in 1..=5 {
        let before = tally.ok.load(SeqCst);
        let new = spawn_upgrade(&procs[0], n);
        // The new process waits on the upgrade socket; Pingora's sender retries until it
        // exists, so SIGQUIT may follow at once.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let old_pid = procs[0].child.id();
        send_signal(old_pid, libc::SIGQUIT);
        let st = wait_exit(&mut procs[0], Duration::from_secs(60)).await;
        assert!(
            st.is_some_and(|s| s.success()),
            "upgrade {n}: old process did not exit cleanly: {st:?}\n{}",
            procs[0].log()
        );
        let new_log = std::fs::read_to_string(procs[0].dir.join(format!("stderr-{n}.log")))
            .unwrap_or_default();
        assert!(
            new_log.contains("Bootstrap done") && !new_log.contains("starting normally"),
            "upgrade {n}: the new process did not take the sockets over:\n{new_log}"
        );
        procs.insert(0, new);
        assert!(
            tally.ok.load(SeqCst) > before,
            "upgrade {n}: no request succeeded during the upgrade"
        );
        eprintln!(
            "upgrade {n} done: ok={} failed={} reset={}",
            tally.ok.load(SeqCst),
            tally.failed.load(SeqCst),
            tally.reset.load(SeqCst)
        );
    }
    // The last new process serves on its own.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, SeqCst);
    for t in tasks {
        t.await.expect("load task");
    }
    let (ok, failed, reset, rec) = (
        tally.ok.load(SeqCst),
        tally.failed.load(SeqCst),
        tally.reset.load(SeqCst),
        tally.reconnects.load(SeqCst),
    );
    eprintln!("five upgrades: {ok} requests ok, {failed} failed, {reset} reset, {rec} keep-alive reconnects on Connection: close");
    assert_eq!((failed, reset), (0, 0), "requests failed during upgrades");
    assert!(ok > 500, "too little load to prove anything: {ok}");
    assert!(rec > 0, "keep-alive clients were never asked to reconnect");
    assert!(
        procs[0].child.try_wait().ok().flatten().is_none(),
        "newest process died"
    );
    let r = client::get(addr, "/", &[])
        .await
        .expect("served after upgrades");
    assert_eq!(r.status, 200);
}

/// The documented upgrade command (`scripts/upgrade`) against a new process that takes longer
/// to start (6 s) than Pingora's socket handover waits (5 tries, 1 s apart): the old process
/// is told to hand over only once the new one waits for the sockets, so nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_script_waits_for_a_slow_new_process_and_drops_nothing() {
    let origin = OriginBuilder::new("a").run().await;
    let dir = scratch_dir("upgrade-slow");
    let (text, ports) = render(&base(&[&origin], "", Some(&pingora_block(&dir, 2))), &dir);
    let mut first = Proxy::start_in(dir, &text, ports, &[]).expect("start");
    let addr = first.addr;
    let pidfile = first.dir.join("stepstone.pid");
    let old_pid = first.child.id();
    // The pid file is written in the foreground too: the script finds the instance there.
    assert_eq!(
        std::fs::read_to_string(&pidfile).expect("pid file").trim(),
        old_pid.to_string()
    );
    // A new binary that starts slowly (the config check stays fast).
    let slow = first.dir.join("slow-stepstone");
    std::fs::write(
        &slow,
        format!(
            "#!/bin/sh\ncase \"$1\" in -t) ;; *) sleep 6 ;; esac\nexec {} \"$@\"\n",
            bin()
        ),
    )
    .expect("write wrapper");
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for i in 0..4 {
        tasks.push(tokio::spawn(load_task(
            addr,
            i % 2 == 0,
            stop.clone(),
            tally.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = std::fs::File::create(first.dir.join("upgrade.log")).expect("log");
    let mut script = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/upgrade"))
        .arg(&first.config)
        .arg(&slow)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("scripts/upgrade");
    // Whatever happens below, the new process does not outlive the test.
    struct KillNew(std::path::PathBuf, u32);
    impl Drop for KillNew {
        fn drop(&mut self) {
            if let Some(pid) = std::fs::read_to_string(&self.0)
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
                .filter(|p| *p != self.1)
                .and_then(|p| libc::pid_t::try_from(p).ok())
            {
                // SAFETY: kill(2) takes two integers; the process may be gone already.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let _kill_new = KillNew(pidfile.clone(), old_pid);

    let st = wait_exit(&mut first, Duration::from_secs(60)).await;
    let script_log = || std::fs::read_to_string(first.dir.join("upgrade.log")).unwrap_or_default();
    assert!(
        st.is_some_and(|s| s.success()),
        "old process: {st:?}\n{}",
        script_log()
    );
    let new_pid: u32 = std::fs::read_to_string(&pidfile)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert_ne!(new_pid, old_pid, "{}", script_log());
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, SeqCst);
    for t in tasks {
        t.await.expect("load task");
    }
    let r = client::get(addr, "/", &[]).await;
    send_signal(new_pid, libc::SIGTERM);
    let _ = script.wait();
    let log = script_log();
    assert!(log.contains("sent SIGQUIT"), "{log}");
    let (ok, failed, reset) = (
        tally.ok.load(SeqCst),
        tally.failed.load(SeqCst),
        tally.reset.load(SeqCst),
    );
    eprintln!("slow upgrade: {ok} ok, {failed} failed, {reset} reset");
    assert_eq!(
        (failed, reset),
        (0, 0),
        "requests failed during the upgrade\n{log}"
    );
    assert!(ok > 100, "too little load to prove anything: {ok}");
    assert_eq!(r.expect("served by the new process").status, 200);
}

#[tokio::test]
async fn upgrade_flag_without_a_running_instance_starts_normally() {
    let origin = OriginBuilder::new("a").run().await;
    let dir = scratch_dir("upgrade-alone");
    let (text, ports) = render(&base(&[&origin], "", Some(&pingora_block(&dir, 0))), &dir);
    let p = Proxy::start_in(dir, &text, ports, &["-u"]).expect("-u alone starts");
    let r = client::get(p.addr, "/", &[]).await.expect("serves");
    assert_eq!(r.status, 200);
    assert!(p.log().contains("starting normally"), "{}", p.log());
}
