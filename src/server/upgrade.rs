//! Binary upgrade from inside the running instance (SIGUSR2, `stepstone -s upgrade`).
//!
//! The running process starts its successor itself, so that under systemd the new daemon is
//! in the unit's cgroup (a process started by a shell outside the unit would not be) and the
//! unit's `ExecReload` stays free for the config reload in place. The order is the one of
//! `scripts/upgrade`: check the config with the new binary (`-t`), start it with `-u`, and
//! only once it listens on `pingora.upgrade_sock` send ourselves SIGQUIT (Pingora's socket
//! handover); a new process that starts slowly (config, DNS) costs nothing, the old one
//! serves meanwhile. One that fails or exits early is logged and recorded beside the pid file
//! (`stepstone.upgrade.json`, which `-s upgrade` reads), and this instance goes on serving.
//!
//! The binary is the file at the path this process was started from, resolved at start-up:
//! after a package update that path holds the new binary (`/proc/self/exe` would then name
//! the deleted old one). The config path is made absolute at start-up too, as a daemon runs
//! in `/`.
//!
//! A daemonized instance starts the new one with `-d`: its launcher forks the daemon once it
//! holds the sockets and exits (reaped here); the daemon writes the pid file, which a
//! `Type=forking` unit follows. A foreground instance starts it in the foreground, with the
//! same stdout and stderr and in the same process group (a terminal's Ctrl-C reaches it).
//! When the old process exits, the new one is re-parented, so a supervisor that watches the
//! pid it started (systemd `Type=simple`, runit, a container's PID 1) would see the service
//! end: under such a supervisor, restart or replace the instance instead.

use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the new process may take to wait on the upgrade socket (config, DNS lookups)
/// before the upgrade is given up and the new process killed. `-s upgrade` waits longer.
const START_WITHIN: Duration = Duration::from_secs(50);

/// What an upgrade needs, resolved at start-up.
pub struct Upgrader {
    exe: Result<PathBuf, String>,
    config: Result<PathBuf, String>,
    daemon: bool,
    pid_file: String,
    upgrade_sock: String,
}

impl Upgrader {
    pub fn new(config_file: &str, daemon: bool, pid_file: &str, upgrade_sock: &str) -> Upgrader {
        Upgrader {
            exe: std::env::current_exe()
                .map_err(|e| format!("cannot tell which binary this process runs: {e}")),
            config: std::fs::canonicalize(config_file)
                .map_err(|e| format!("the configuration {config_file}: {e}")),
            daemon,
            pid_file: pid_file.to_string(),
            upgrade_sock: upgrade_sock.to_string(),
        }
    }
}

/// Where `stepstone -s upgrade` reads the outcome: beside the pid file.
pub fn result_file(pid_file: &str) -> PathBuf {
    Path::new(pid_file).with_extension("upgrade.json")
}

/// Upgrades tried by this process, for `-s upgrade` to tell its own from an earlier one.
static ATTEMPTS: Mutex<u64> = Mutex::new(0);
/// One upgrade at a time; set for good once the handover has started.
static BUSY: AtomicBool = AtomicBool::new(false);

fn record(u: &Upgrader, res: &Result<u32, String>) {
    let attempts = {
        let mut a = ATTEMPTS.lock().unwrap_or_else(|e| e.into_inner());
        *a += 1;
        *a
    };
    let (started, error) = match res {
        Ok(p) => (Some(*p), None),
        Err(e) => (None, Some(e.as_str())),
    };
    let text = serde_json::json!({
        "pid": std::process::id(),
        "attempts": attempts,
        "started_pid": started,
        "last_error": error,
    })
    .to_string();
    let path = result_file(&u.pid_file);
    let tmp = path.with_extension("upgrade.json.tmp");
    if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path)) {
        log::warn!("upgrade: cannot write {}: {e}", path.display());
    }
}

/// Whether a socket listens at `path` (flag `__SO_ACCEPTCON` in `/proc/net/unix`). Connecting
/// instead would take the one connection the new process accepts for the sockets.
fn listening_at(path: &str) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 8 && f[3] == "00010000" && f[7] == path
    })
}

/// Start the new process and wait until it waits for the sockets: its pid, or why not.
fn start_new(u: &Upgrader) -> Result<(u32, Child), String> {
    let exe = u.exe.as_ref().map_err(Clone::clone)?;
    let config = u.config.as_ref().map_err(Clone::clone)?;
    if crate::lifecycle::draining() {
        return Err("this instance is already shutting down".into());
    }
    if listening_at(&u.upgrade_sock) {
        return Err(format!(
            "another process already waits on the upgrade socket {}",
            u.upgrade_sock
        ));
    }
    let check = Command::new(exe)
        .arg("-t")
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    if !check.status.success() {
        let why = String::from_utf8_lossy(&check.stderr);
        return Err(format!(
            "{} -t refused the configuration ({}): {}",
            exe.display(),
            check.status,
            why.trim()
        ));
    }
    let mut cmd = Command::new(exe);
    if u.daemon {
        cmd.arg("-d");
    }
    let mut child = cmd
        .arg("-u")
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let pid = child.id();
    log::info!(
        "upgrade: started {} (pid {pid}); serving until it waits on {}",
        exe.display(),
        u.upgrade_sock
    );
    let deadline = Instant::now() + START_WITHIN;
    while !listening_at(&u.upgrade_sock) {
        match child.try_wait() {
            Ok(Some(st)) => {
                return Err(format!(
                    "the new process (pid {pid}) exited before taking over: {st}"
                ))
            }
            Ok(None) => {}
            Err(e) => return Err(format!("the new process (pid {pid}): {e}")),
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the new process (pid {pid}) did not wait on {} within {} s; killed it",
                u.upgrade_sock,
                START_WITHIN.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((pid, child))
}

fn upgrade(u: &Upgrader) {
    if BUSY.swap(true, Ordering::SeqCst) {
        log::warn!("upgrade: SIGUSR2 ignored, an upgrade is already under way");
        return;
    }
    match start_new(u) {
        Ok((pid, mut child)) => {
            record(u, &Ok(pid));
            log::info!("upgrade: pid {pid} waits for the sockets; handing them over (SIGQUIT)");
            // SAFETY: kill(2) on our own pid with a signal Pingora handles.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGQUIT);
            }
            // The launcher of a daemon exits once it has forked; a foreground child runs on
            // after we exit. Either way it is reaped while we live.
            match child.wait() {
                Ok(st) if st.success() => {}
                Ok(st) => log::error!("upgrade: the new process (pid {pid}) exited: {st}"),
                Err(e) => log::error!("upgrade: the new process (pid {pid}): {e}"),
            }
        }
        Err(e) => {
            log::error!("upgrade failed, this instance goes on serving: {e}");
            record(u, &Err(e));
            BUSY.store(false, Ordering::SeqCst);
        }
    }
}

/// SIGUSR2: upgrade to the binary at the path this process was started from.
pub struct UpgradeService(pub std::sync::Arc<Upgrader>);

#[async_trait::async_trait]
impl BackgroundService for UpgradeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut usr2 = match signal(SignalKind::user_defined2()) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("upgrade: cannot listen for SIGUSR2: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = usr2.recv() => {
                    log::info!("upgrade: SIGUSR2: starting the new binary");
                    let u = self.0.clone();
                    // spawning and waiting block; no async worker is held
                    if let Err(e) = std::thread::Builder::new()
                        .name("upgrade".into())
                        .spawn(move || upgrade(&u))
                    {
                        log::error!("upgrade: cannot start its thread: {e}");
                    }
                }
            }
        }
    }
}
