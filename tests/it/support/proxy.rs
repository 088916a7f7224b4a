//! The real `stepstone` binary, started on a config written to a scratch directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A process's resident set in KiB (`VmRSS`); fails the test if it cannot be read.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Wait for a moment's quiet, then check that `n` connections opened since `rss0` (KiB) took
/// less than `bound` KiB of `pid`'s RSS each; `what` names them in the messages.
pub async fn assert_rss_per_conn(pid: u32, rss0: u64, n: usize, bound: f64, what: &str) {
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let rss1 = rss_kib(pid);
    let per_conn = rss1.saturating_sub(rss0) as f64 / n as f64;
    eprintln!("{n} {what}: {per_conn:.2} KiB of RSS each ({rss0} -> {rss1} KiB)");
    assert!(
        per_conn < bound,
        "{n} {what} took {per_conn:.2} KiB of the proxy's RSS each ({rss0} -> {rss1} KiB), not under {bound}"
    );
}

/// How many descriptors a process has open; fails the test if it cannot be read.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .count()
}

/// Open connections to `addr` and hold them until the proxy `pid` has at most `free` of its
/// `limit` descriptors left; after each, the proxy is given time to take its descriptors
/// (its socket, and a backend's where the proxy connects at once).
pub async fn fill_fds(
    pid: u32,
    limit: usize,
    addr: SocketAddr,
    free: usize,
) -> Vec<tokio::net::TcpStream> {
    // Only descriptors numbered below the limit count against it: one the process
    // inherited above it (from the test harness) takes no slot.
    let below = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<usize>().ok())
            .filter(|fd| *fd < limit)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    // first let the start-up's own connections (the readiness probe) settle
    let mut last = below();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = below();
        if now == last || Instant::now() > deadline {
            break;
        }
        last = now;
    }
    let mut held = Vec::new();
    loop {
        let used = below();
        if used + free >= limit {
            return held;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy's descriptors never filled: {used} of {limit} after {} connections",
            held.len()
        );
        let s = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connection {} to fill descriptors: {e}", held.len()));
        held.push(s);
        // Wait for the accept to show; if another descriptor closed meanwhile the count
        // does not move, and the next round counts again.
        let shown = Instant::now() + Duration::from_secs(1);
        while below() <= used && Instant::now() < shown {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // a backend connection, if the proxy makes one, follows its accept
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The binary under test: cargo's build of this checkout, or `STEPSTONE_IT_BIN` (the whole
/// suite against another build of the same code, such as `scripts/build-pgo`'s, which is the
/// one the image ships).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("STEPSTONE_IT_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_stepstone").to_string())
    })
}

pub struct Proxy {
    pub child: Child,
    pub dir: PathBuf,
    pub config: PathBuf,
    /// Address of the first listener, `{{port}}` in the template.
    pub addr: SocketAddr,
    /// Every `{{portN}}` placeholder, in order of N (port0 is the same as port).
    pub ports: Vec<u16>,
}

/// Fill `{{port}}`, `{{port1}}`..`{{port9}}` with free ports and `{{dir}}` with the scratch
/// dir, then add a `pingora:` section with a private pid file and upgrade socket unless the
/// template has one.
pub fn render(template: &str, dir: &std::path::Path) -> (String, Vec<u16>) {
    let mut text = template.replace("{{dir}}", &dir.display().to_string());
    let mut ports = Vec::new();
    for i in 0..10 {
        let p = super::free_port();
        ports.push(p);
        let key = format!("{{{{port{i}}}}}");
        text = text.replace(&key, &p.to_string());
        if i == 0 {
            text = text.replace("{{port}}", &p.to_string());
        }
    }
    if !text.contains("pingora:") {
        text = format!(
            "pingora:\n  threads: 2\n  pid_file: {d}/stepstone.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 1\n{text}",
            d = dir.display()
        );
    }
    (text, ports)
}

impl Proxy {
    /// Start the proxy and wait until every listener accepts connections.
    pub fn start(template: &str) -> Proxy {
        Self::try_start(template).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start(template: &str) -> Result<Proxy, String> {
        let dir = super::scratch_dir("proxy");
        let (text, ports) = render(template, &dir);
        Self::start_in(dir, &text, ports, &[])
    }

    /// Start with `RUST_LOG` set to `filter` (e.g. to see a debug line a test checks for).
    pub fn start_logging(template: &str, filter: &str) -> Proxy {
        let dir = super::scratch_dir("proxy");
        let (text, ports) = render(template, &dir);
        Self::start_with(dir, &text, ports, &[], Some(filter), None)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Start with the open-file limit's soft value set to `soft` (the hard one kept), as a
    /// service manager may start it.
    pub fn start_with_nofile(template: &str, soft: u64) -> Proxy {
        let dir = super::scratch_dir("proxy");
        let (text, ports) = render(template, &dir);
        Self::start_with(dir, &text, ports, &[], None, Some(soft)).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn start_in(
        dir: PathBuf,
        text: &str,
        ports: Vec<u16>,
        extra_args: &[&str],
    ) -> Result<Proxy, String> {
        Self::start_with(dir, text, ports, extra_args, None, None)
    }

    fn start_with(
        dir: PathBuf,
        text: &str,
        ports: Vec<u16>,
        extra_args: &[&str],
        rust_log: Option<&str>,
        soft_nofile: Option<u64>,
    ) -> Result<Proxy, String> {
        let config = dir.join("stepstone.yaml");
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("stderr.log")).map_err(|e| e.to_string())?;
        let out = std::fs::File::create(dir.join("stdout.log")).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(bin());
        if let Some(soft) = soft_nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: getrlimit and setrlimit are async-signal-safe and touch only the
            // child's own limits, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let mut r = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    r.rlim_cur = soft;
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .arg("-c")
            .arg(&config)
            .args(extra_args)
            .env(
                "RUST_LOG",
                rust_log.map(str::to_string).unwrap_or_else(|| {
                    std::env::var("STEPSTONE_TEST_LOG").unwrap_or_else(|_| "info".into())
                }),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin()))?;
        let addr: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
        let mut p = Proxy {
            child,
            dir,
            config,
            addr,
            ports,
        };
        // Pingora starts each listener's service on its own: the first one listening says
        // nothing of the others, which a loaded machine may open a little later.
        let mut all = listener_addrs(text);
        if all.is_empty() {
            all.push(addr);
        }
        for a in all {
            p.wait_ready(a)?;
        }
        // the admin listener is a service of its own, started beside the first listener
        if let Some(admin) = admin_addr(text) {
            p.wait_ready(admin)?;
        }
        Ok(p)
    }

    /// Wait until `addr` accepts TCP connections, or the process exits.
    pub fn wait_ready(&mut self, addr: SocketAddr) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!(
                    "stepstone exited with {st} before listening:\n{}",
                    self.log()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "stepstone did not listen on {addr}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self, i: usize) -> u16 {
        self.ports[i]
    }

    pub fn addr_of(&self, i: usize) -> SocketAddr {
        ([127, 0, 0, 1], self.ports[i]).into()
    }

    /// What the proxy wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default()
    }

    /// Send `sig` (e.g. `libc::SIGTERM`) to the proxy process; panics if it cannot be sent.
    pub fn signal(&self, sig: libc::c_int) {
        send_signal(self.child.id(), sig);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            // No panic in the proxy, whatever the test did to it (a task's panic is caught by
            // its runtime and would go unseen otherwise).
            let log = self.log();
            if let Some(at) = log.find("panicked at") {
                let from = log[..at].rfind('\n').map_or(0, |i| i + 1);
                let excerpt: String = log[from..].lines().take(12).collect::<Vec<_>>().join("\n");
                panic!("the proxy panicked ({}):\n{excerpt}", self.dir.display());
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!(
                "--- stepstone stderr ({}) ---\n{}",
                self.dir.display(),
                self.log()
            );
        }
    }
}

/// Send `sig` to process `pid`, and panic with the OS error if it was not delivered (no such
/// process, no permission, a bad signal number): a test that signals a process and then checks
/// what the signal did must not go on as if it had been sent.
pub fn send_signal(pid: u32, sig: libc::c_int) {
    let target = libc::pid_t::try_from(pid).unwrap_or_else(|_| panic!("pid {pid} out of range"));
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    let rc = unsafe { libc::kill(target, sig) };
    assert_eq!(
        rc,
        0,
        "kill(pid {pid}, signal {sig}) failed: {}",
        std::io::Error::last_os_error()
    );
}

/// The admin listener's address in a config, if it has one on loopback.
/// The TCP addresses of the config's listeners (an HTTP/3 listener also listens on TCP).
fn listener_addrs(text: &str) -> Vec<SocketAddr> {
    let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(text) else {
        return Vec::new();
    };
    let Some(listeners) = doc.get("listeners").and_then(|l| l.as_sequence()) else {
        return Vec::new();
    };
    listeners
        .iter()
        .filter_map(|l| l.get("address")?.as_str()?.parse::<SocketAddr>().ok())
        .map(|a| match a.ip().is_unspecified() {
            true => ([127, 0, 0, 1], a.port()).into(),
            false => a,
        })
        .collect()
}

fn admin_addr(text: &str) -> Option<SocketAddr> {
    let at = text.find("admin:")?;
    let rest = &text[at..];
    let a = rest.find("127.0.0.1:")?;
    let digits: String = rest[a + 10..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    format!("127.0.0.1:{digits}").parse().ok()
}

/// Run `stepstone` with arguments and return (exit code, stdout + stderr).
pub fn run_cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run stepstone");
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), s)
}
