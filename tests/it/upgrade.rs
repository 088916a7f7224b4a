//! `stepstone -s upgrade`: the running instance starts the binary now at the path it was
//! started from, hands its sockets over once the new process waits for them, and drains;
//! failures leave the old instance serving and make the command exit non-zero.

use crate::ops::{base, load_task, pingora_block, wait_exit, Tally};
use crate::support::proxy::{bin, render, send_signal};
use crate::support::{client, scratch_dir, OriginBuilder, Proxy};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `stepstone -s upgrade -c CONFIG`: (exit code, stdout, stderr). Blocks up to a minute.
async fn upgrade_cli(config: &Path) -> (i32, String, String) {
    let config = config.to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin())
            .arg("-s")
            .arg("upgrade")
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .output()
            .expect("run stepstone -s upgrade")
    })
    .await
    .expect("join");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read_pid(pidfile: &Path) -> Option<u32> {
    std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()
}

fn alive(pid: u32) -> bool {
    // a zombie (exited, not yet reaped by the test) has no cmdline
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

/// Whatever happens in a test, the processes it started last do not outlive it.
struct KillNew(PathBuf, Vec<u32>);

impl Drop for KillNew {
    fn drop(&mut self) {
        if let Some(pid) = read_pid(&self.0).filter(|p| !self.1.contains(p)) {
            send_signal(pid, libc::SIGKILL);
        }
        for &pid in &self.1 {
            if alive(pid) {
                send_signal(pid, libc::SIGKILL);
            }
        }
    }
}

/// An executable file written by rename, as a package manager installs a new binary.
fn install(path: &Path, content: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).expect("write binary");
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    std::fs::rename(&tmp, path).expect("install binary");
}

/// The proxy started from its own copy of the binary, at `dir/bin/stepstone`.
fn start_from_copy(dir: PathBuf, text: &str, ports: Vec<u16>) -> (Proxy, PathBuf) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let exe = bin.join("stepstone");
    install(
        &exe,
        &std::fs::read(crate::support::proxy::bin()).expect("read the binary"),
    );
    let config = dir.join("stepstone.yaml");
    std::fs::write(&config, text).expect("config");
    let child = Command::new(&exe)
        .arg("-c")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout.log")).expect("log"))
        .stderr(std::fs::File::create(dir.join("stderr.log")).expect("log"))
        .spawn()
        .expect("start the proxy");
    let addr: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
    let mut p = Proxy {
        child,
        dir,
        config,
        addr,
        ports,
    };
    p.wait_ready(addr).expect("proxy listens");
    (p, exe)
}

fn start_load(
    addr: SocketAddr,
    n: usize,
) -> (
    Arc<AtomicBool>,
    Arc<Tally>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let tasks = (0..n)
        .map(|i| tokio::spawn(load_task(addr, i % 2 == 0, stop.clone(), tally.clone())))
        .collect();
    (stop, tally, tasks)
}

async fn stop_load(stop: Arc<AtomicBool>, tasks: Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, SeqCst);
    for t in tasks {
        t.await.expect("load task");
    }
}

/// A foreground instance; a new binary is installed at the path it was started from (one
/// that takes 2 s to start, longer than Pingora's first socket-handover try), and
/// `-s upgrade` under load switches to it with no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_command_starts_the_new_binary_at_the_same_path_and_drops_nothing() {
    let origin = OriginBuilder::new("a").run().await;
    let dir = scratch_dir("upgrade-cmd");
    let (text, ports) = render(&base(&[&origin], "", Some(&pingora_block(&dir, 2))), &dir);
    let (mut first, exe) = start_from_copy(dir, &text, ports);
    let addr = first.addr;
    let pidfile = first.dir.join("stepstone.pid");
    let old_pid = first.child.id();
    let _kill = KillNew(pidfile.clone(), vec![]);
    let marker = first.dir.join("new-binary-ran");
    install(
        &exe,
        format!(
            "#!/bin/sh\ncase \"$1\" in -t) ;; *) touch {m}; sleep 2 ;; esac\nexec {b} \"$@\"\n",
            m = marker.display(),
            b = bin()
        )
        .as_bytes(),
    );

    let (stop, tally, tasks) = start_load(addr, 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let (code, out, err) = upgrade_cli(&first.config).await;
    let took = t0.elapsed();
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}\n{}", first.log());
    let new_pid = read_pid(&pidfile).expect("pid file");
    assert_ne!(new_pid, old_pid);
    assert!(out.contains(&format!("pid {new_pid} serves")), "{out}");
    assert!(
        marker.exists(),
        "the new process was not the file now at the path"
    );
    assert!(alive(new_pid), "the new process is not running");
    let st = wait_exit(&mut first, Duration::from_secs(30)).await;
    assert!(
        st.is_some_and(|s| s.success()),
        "old process: {st:?}\n{}",
        first.log()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_load(stop, tasks).await;
    let r = client::get(addr, "/", &[]).await;
    let (ok, failed, reset) = (
        tally.ok.load(SeqCst),
        tally.failed.load(SeqCst),
        tally.reset.load(SeqCst),
    );
    eprintln!("-s upgrade (foreground, slow new binary): {took:?}; {ok} ok, {failed} failed, {reset} reset");
    assert_eq!(
        (failed, reset),
        (0, 0),
        "requests failed during the upgrade\n{}",
        first.log()
    );
    assert!(ok > 100, "too little load to prove anything: {ok}");
    assert_eq!(r.expect("served by the new process").status, 200);
    assert!(first.log().contains("handing them over"), "{}", first.log());
}

/// A daemon (`-d`, as the systemd unit runs it) upgraded twice in a row under load: each time a
/// new daemon (started with `-d`) writes the pid file and the old one exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_command_replaces_a_daemon_twice_and_drops_nothing() {
    let origin = OriginBuilder::new("a").run().await;
    let dir = scratch_dir("upgrade-daemon");
    let (text, ports) = render(&base(&[&origin], "", Some(&pingora_block(&dir, 2))), &dir);
    let config = dir.join("stepstone.yaml");
    std::fs::write(&config, &text).expect("config");
    let pidfile = dir.join("stepstone.pid");
    let addr: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
    let st = Command::new(bin())
        .arg("-d")
        .arg("-c")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log")).expect("log"))
        .status()
        .expect("start the daemon");
    // kills whatever the pid file names at the end, whatever happens first
    let mut kill = KillNew(pidfile.clone(), vec![]);
    assert!(st.success(), "the launcher failed: {st}");
    let log = || std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    // the launcher exits once it has forked; the daemon writes the pid file
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let Some(p) = read_pid(&pidfile) {
            break p;
        }
        assert!(Instant::now() < deadline, "no pid file\n{}", log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut pids = vec![first];
    kill.1 = pids.clone();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the daemon never listened\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (stop, tally, tasks) = start_load(addr, 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 1..=2 {
        let old = *pids.last().expect("pid");
        let (code, out, err) = upgrade_cli(&config).await;
        assert_eq!(code, 0, "upgrade {n}: {out}\n{err}\n{}", log());
        let new = read_pid(&pidfile).expect("pid file");
        assert_ne!(new, old, "upgrade {n}");
        let cmdline = std::fs::read(format!("/proc/{new}/cmdline")).expect("new daemon runs");
        assert!(
            cmdline.split(|b| *b == 0).any(|a| a == b"-d"),
            "upgrade {n}: the new process is not a daemon: {}",
            String::from_utf8_lossy(&cmdline)
        );
        pids.push(new);
        kill.1 = pids.clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        while alive(old) {
            assert!(
                Instant::now() < deadline,
                "upgrade {n}: old pid {old} never exited"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_load(stop, tasks).await;
    let (ok, failed, reset) = (
        tally.ok.load(SeqCst),
        tally.failed.load(SeqCst),
        tally.reset.load(SeqCst),
    );
    eprintln!("-s upgrade (daemon, twice): {ok} ok, {failed} failed, {reset} reset");
    assert_eq!(
        (failed, reset),
        (0, 0),
        "requests failed during the upgrades\n{}",
        log()
    );
    assert!(ok > 100, "too little load to prove anything: {ok}");
    let r = client::get(addr, "/", &[]).await;
    assert_eq!(r.expect("served by the last daemon").status, 200);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A config the new binary refuses: `-s upgrade` exits non-zero with the reason, nothing new
/// runs, and the old process serves on.
#[tokio::test]
async fn upgrade_command_with_a_bad_config_fails_and_the_old_instance_serves() {
    let origin = OriginBuilder::new("a").run().await;
    let dir = scratch_dir("upgrade-bad");
    let (text, ports) = render(&base(&[&origin], "", Some(&pingora_block(&dir, 1))), &dir);
    let mut p = Proxy::start_in(dir, &text, ports, &[]).expect("start");
    let pidfile = p.dir.join("stepstone.pid");
    let _kill = KillNew(pidfile.clone(), vec![]);
    std::fs::write(&p.config, format!("{text}no_such_key: 1\n")).expect("config");
    let (code, out, err) = upgrade_cli(&p.config).await;
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains("upgrade failed")
            && err.contains("still serves")
            && err.contains("no_such_key"),
        "{err}"
    );
    assert_eq!(read_pid(&pidfile), Some(p.child.id()));
    assert!(
        p.child.try_wait().expect("wait").is_none(),
        "the old process exited"
    );
    let r = client::get(p.addr, "/", &[])
        .await
        .expect("old instance serves");
    assert_eq!(r.status, 200);
}

/// A new binary that passes `-t` but exits at start: the failure is reported and the old
/// process serves on (and can still be upgraded later).
#[tokio::test]
async fn upgrade_command_reports_a_new_process_that_exits_early() {
    let origin = OriginBuilder::new("a").run().await;
    let dir = scratch_dir("upgrade-early");
    let (text, ports) = render(&base(&[&origin], "", Some(&pingora_block(&dir, 1))), &dir);
    let (mut p, exe) = start_from_copy(dir, &text, ports);
    let pidfile = p.dir.join("stepstone.pid");
    let _kill = KillNew(pidfile.clone(), vec![]);
    install(
        &exe,
        format!(
            "#!/bin/sh\ncase \"$1\" in -t) exec {} \"$@\" ;; esac\necho broken >&2\nexit 3\n",
            bin()
        )
        .as_bytes(),
    );
    let (code, out, err) = upgrade_cli(&p.config).await;
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("exited before taking over"), "{err}");
    assert_eq!(read_pid(&pidfile), Some(p.child.id()));
    assert!(
        p.child.try_wait().expect("wait").is_none(),
        "the old process exited"
    );
    let r = client::get(p.addr, "/", &[])
        .await
        .expect("old instance serves");
    assert_eq!(r.status, 200);
    // a fixed binary at the same path: the next upgrade goes through
    install(&exe, &std::fs::read(bin()).expect("read the binary"));
    let (code, out, err) = upgrade_cli(&p.config).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}\n{}", p.log());
    assert_ne!(read_pid(&pidfile), Some(p.child.id()));
}

/// No instance: no pid file, or one naming a process that is gone.
#[tokio::test]
async fn upgrade_command_without_a_running_instance_says_so() {
    let dir = scratch_dir("upgrade-none");
    let (text, _) = render(
        &base(&[], "", Some(&pingora_block(&dir, 1))).replace(
            "    backends:\n",
            "    backends:\n      - {address: 127.0.0.1:9}\n",
        ),
        &dir,
    );
    let config = dir.join("stepstone.yaml");
    std::fs::write(&config, text).expect("config");
    let (code, _, err) = upgrade_cli(&config).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no running instance"), "{err}");

    let mut gone = Command::new("true").spawn().expect("spawn true");
    let gone_pid = gone.id();
    gone.wait().expect("wait");
    std::fs::write(dir.join("stepstone.pid"), format!("{gone_pid}\n")).expect("pid file");
    let (code, _, err) = upgrade_cli(&config).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no running instance") && err.contains(&gone_pid.to_string()),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
