//! Command line: `stepstone [-c FILE] [-t] [-d] [-u] [-s reload|upgrade|reopen]`.

use crate::config::Config;
use crate::server::{self, RunFlags};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "stepstone",
    version,
    about = "Edge reverse proxy, load balancer and forward proxy"
)]
pub struct Cli {
    /// Configuration file (YAML). Without it, a demo with two built-in origins runs on
    /// 127.0.0.1:8080.
    #[arg(short = 'c', long = "conf")]
    pub conf: Option<String>,
    /// Check the configuration and exit: 0 when it is valid, 1 with the error otherwise.
    #[arg(short = 't', long = "test")]
    pub test: bool,
    /// Run in the background.
    #[arg(short = 'd', long = "daemon")]
    pub daemon: bool,
    /// Take over the listening sockets of a running instance (graceful upgrade).
    #[arg(short = 'u', long = "upgrade")]
    pub upgrade: bool,
    /// Send a signal to the running instance (found through the pid file of the -c FILE):
    /// `reload` re-reads its configuration and waits for the outcome; the exit status is 1
    /// when the instance refused the new configuration. `upgrade` makes it start the binary
    /// at the path it was started from (`-u`), hand its sockets over and drain; it waits
    /// until a new pid serves (exit status 0) or the upgrade failed (1, the old one serves).
    /// `reopen` makes it open its log files anew (after logrotate moved them), as SIGUSR1.
    #[arg(short = 's', long = "signal", value_parser = ["reload", "upgrade", "reopen"])]
    pub signal: Option<String>,
}

/// The pid file a configuration names, even when the rest of the file does not validate
/// (the running instance will say what is wrong with it).
fn pid_file_of(path: &str) -> Result<String, String> {
    if let Ok(c) = Config::load(path) {
        return Ok(crate::server::server_conf(&c).pid_file);
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let v: serde_yaml::Value = serde_yaml::from_str(&text)
        .map_err(|e| format!("{path}: cannot find pingora.pid_file in it: {e}"))?;
    Ok(v.get("pingora")
        .and_then(|p| p.get("pid_file"))
        .and_then(|f| f.as_str())
        .unwrap_or("/tmp/stepstone.pid")
        .to_string())
}

/// The running instance's last reload outcome: (pid, attempts, revision, error).
fn reload_result(pid_file: &str) -> Option<(u32, u64, u64, Option<String>)> {
    let text = std::fs::read_to_string(crate::server::reload::result_file(pid_file)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some((
        u32::try_from(v.get("pid")?.as_u64()?).ok()?,
        v.get("attempts")?.as_u64()?,
        v.get("revision")?.as_u64()?,
        v.get("last_error")
            .and_then(|e| e.as_str())
            .map(str::to_string),
    ))
}

/// The running instance of the configuration at `conf`: its pid file and pid, or the exit
/// status after saying why there is none.
fn running_instance(conf: Option<&str>, action: &str) -> Result<(String, libc::pid_t), i32> {
    let Some(path) = conf else {
        eprintln!("stepstone: -s {action} needs the configuration file: -s {action} -c FILE");
        return Err(2);
    };
    let pid_file = pid_file_of(path).map_err(|e| {
        eprintln!("stepstone: {e}");
        1
    })?;
    let pid: Option<libc::pid_t> = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| t.trim().parse().ok());
    let Some(pid) = pid.filter(|p| *p > 0) else {
        eprintln!("stepstone: no running instance: cannot read a pid from {pid_file}");
        return Err(1);
    };
    if !alive(pid) {
        eprintln!("stepstone: no running instance: pid {pid} (from {pid_file}) is not running");
        return Err(1);
    }
    Ok((pid_file, pid))
}

fn alive(pid: libc::pid_t) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn send(pid: libc::pid_t, sig: libc::c_int, pid_file: &str) -> Result<(), i32> {
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    if unsafe { libc::kill(pid, sig) } != 0 {
        eprintln!(
            "stepstone: cannot signal pid {pid} (from {pid_file}): {}",
            std::io::Error::last_os_error()
        );
        return Err(1);
    }
    Ok(())
}

/// `-s reopen`: SIGUSR1 to the instance of the pid file (the outcome is in its log).
fn signal_reopen(conf: Option<&str>) -> i32 {
    let (pid_file, pid) = match running_instance(conf, "reopen") {
        Ok(r) => r,
        Err(code) => return code,
    };
    match send(pid, libc::SIGUSR1, &pid_file) {
        Ok(()) => {
            println!("stepstone: pid {pid} told to reopen its log files");
            0
        }
        Err(code) => code,
    }
}

/// `-s reload`: SIGHUP to the instance of the pid file, then wait for its verdict.
fn signal_reload(conf: Option<&str>) -> i32 {
    let (pid_file, pid) = match running_instance(conf, "reload") {
        Ok(r) => r,
        Err(code) => return code,
    };
    let before = reload_result(&pid_file)
        .filter(|r| r.0 as libc::pid_t == pid)
        .map_or(0, |r| r.1);
    if let Err(code) = send(pid, libc::SIGHUP, &pid_file) {
        return code;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Some((p, attempts, revision, err)) = reload_result(&pid_file) {
            if p as libc::pid_t == pid && attempts > before {
                return match err {
                    None => {
                        println!("stepstone: reloaded: revision {revision} in force");
                        0
                    }
                    Some(e) => {
                        eprintln!(
                            "stepstone: reload refused, revision {revision} stays in force: {e}"
                        );
                        1
                    }
                };
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    eprintln!("stepstone: pid {pid} did not report the reload's outcome within 30 s");
    1
}

/// The running instance's last upgrade outcome: (pid, attempts, error).
fn upgrade_result(pid_file: &str) -> Option<(u32, u64, Option<String>)> {
    let text = std::fs::read_to_string(crate::server::upgrade::result_file(pid_file)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some((
        u32::try_from(v.get("pid")?.as_u64()?).ok()?,
        v.get("attempts")?.as_u64()?,
        v.get("last_error")
            .and_then(|e| e.as_str())
            .map(str::to_string),
    ))
}

/// How long `-s upgrade` waits: longer than the instance gives the new process to start.
const UPGRADE_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

/// `-s upgrade`: SIGUSR2 to the instance of the pid file, then wait until the pid file names
/// a new live process (it writes it once it holds the sockets) or the instance reports why not.
fn signal_upgrade(conf: Option<&str>) -> i32 {
    let (pid_file, pid) = match running_instance(conf, "upgrade") {
        Ok(r) => r,
        Err(code) => return code,
    };
    let before = upgrade_result(&pid_file)
        .filter(|r| r.0 as libc::pid_t == pid)
        .map_or(0, |r| r.1);
    if let Err(code) = send(pid, libc::SIGUSR2, &pid_file) {
        return code;
    }
    let start = std::time::Instant::now();
    let mut gone_since: Option<std::time::Instant> = None;
    while start.elapsed() < UPGRADE_WITHIN {
        let now: Option<libc::pid_t> = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        if let Some(new) = now.filter(|p| *p > 0 && *p != pid && alive(*p)) {
            println!("stepstone: upgraded: pid {new} serves, pid {pid} hands over and drains");
            return 0;
        }
        if let Some((p, attempts, Some(e))) = upgrade_result(&pid_file) {
            if p as libc::pid_t == pid && attempts > before {
                eprintln!("stepstone: upgrade failed, pid {pid} still serves: {e}");
                return 1;
            }
        }
        // the old process exits only after the new one wrote the pid file; a second is
        // left for a slow file system before calling it a failure
        if !alive(pid)
            && gone_since
                .get_or_insert_with(std::time::Instant::now)
                .elapsed()
                > std::time::Duration::from_secs(1)
        {
            eprintln!("stepstone: pid {pid} exited and no new instance wrote {pid_file}");
            return 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    eprintln!(
        "stepstone: no new instance in {pid_file} within {} s (see the log of pid {pid})",
        UPGRADE_WITHIN.as_secs()
    );
    1
}

fn demo_config() -> Result<Config, String> {
    let origins = crate::demo::start_origins(2).map_err(|e| format!("demo origins: {e}"))?;
    // STEPSTONE_DEMO_ADDR moves the demo off 127.0.0.1:8080 (tests use an ephemeral port).
    let listen = std::env::var("STEPSTONE_DEMO_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let text = crate::demo::DEMO_CONFIG
        .replace("127.0.0.1:8080", &listen)
        .replace("${ORIGIN1}", &origins[0].to_string())
        .replace("${ORIGIN2}", &origins[1].to_string());
    Config::from_yaml("<embedded demo>", &text).map_err(|e| e.to_string())
}

/// Returns the process exit status.
pub fn main() -> i32 {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    crate::observability::deps_log::install();
    match cli.signal.as_deref() {
        Some("upgrade") => return signal_upgrade(cli.conf.as_deref()),
        Some("reopen") => return signal_reopen(cli.conf.as_deref()),
        Some(_) => return signal_reload(cli.conf.as_deref()),
        None => {}
    }

    let cfg = match &cli.conf {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("stepstone: configuration error: {e}");
                return 1;
            }
        },
        None if cli.test => {
            eprintln!("stepstone: -t needs a configuration file: -t -c FILE");
            return 2;
        }
        None => match demo_config() {
            Ok(c) => {
                eprintln!(
                    "stepstone: no -c given, running the demo: try curl -i http://{}/",
                    c.listeners[0].addr
                );
                c
            }
            Err(e) => {
                eprintln!("stepstone: {e}");
                return 1;
            }
        },
    };
    if cli.test {
        println!(
            "stepstone: configuration file {} test is successful",
            cfg.file
        );
        return 0;
    }
    // the routing document from etcd (or its cache file) before anything is built
    let cfg = match server::fleet::start_config(cfg) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stepstone: {e}");
            return 1;
        }
    };
    let mut upgrade = cli.upgrade;
    if upgrade {
        let mut addrs: Vec<_> = cfg.listeners.iter().map(|l| l.addr).collect();
        addrs.extend(cfg.admin.as_ref().map(|a| a.addr));
        if !crate::lifecycle::has_running_instance(&addrs) {
            log::warn!("-u: no running instance holds the listening sockets; starting normally");
            upgrade = false;
        }
    }
    let flags = RunFlags {
        daemon: cli.daemon,
        upgrade,
    };
    // SIGHUP reloads (see `server::reload`); its default action would kill the process, so it
    // is ignored until the reload service installs its handler.
    // SIGUSR2 (binary upgrade, `server::upgrade`) likewise.
    // SAFETY: setting a signal disposition to SIG_IGN before any thread is started.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGUSR2, libc::SIG_IGN);
    }
    match server::build(&cfg, flags) {
        Ok(s) => {
            // Pingora writes the pid file only when it daemonizes; upgrades and units find the
            // running instance through it in either mode. Written once the sockets are held.
            if !s.configuration.daemon {
                crate::lifecycle::write_pid_file(&s.configuration.pid_file);
            }
            s.run_forever()
        }
        Err(e) => {
            eprintln!("stepstone: {e}");
            1
        }
    }
}
