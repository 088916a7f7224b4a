//! Command line: `stepstone [-c FILE] [-t] [-d] [-u]`.

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
    // Operators used to nginx send SIGHUP to reload. Its default action would kill the process;
    // ignore it until the TLS reload service installs its own handler (the documented way to
    // apply a new config is the graceful upgrade, see README).
    // SAFETY: setting a signal disposition to SIG_IGN before any thread is started.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
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
