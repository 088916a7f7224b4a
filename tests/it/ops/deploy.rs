//! What ships beside the binary: the systemd unit with conf/ops.yaml, and the container
//! image's build command, configuration and healthcheck.

use crate::support::proxy::bin;
use crate::support::{client, free_port, scratch_dir, OriginBuilder, Proxy};
use std::process::Command;

/// The systemd unit and the config it expects (conf/ops.yaml) agree: the unit finds the main
/// process through the pid file the config writes, and both paths are in the unit's
/// RuntimeDirectory (the only writable run directory under ProtectSystem=strict). Its reload
/// is the config reload in place, and it documents `-s upgrade` for a new binary.
#[test]
fn systemd_unit_and_ops_config_agree_on_paths() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("conf/stepstone.service")).expect("unit");
    let ops = std::fs::read_to_string(root.join("conf/ops.yaml")).expect("ops.yaml");
    let directive = |k: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k}= in the unit"))
            .to_string()
    };
    let key = |k: &str| {
        ops.lines()
            .find_map(|l| l.trim_start().strip_prefix(&format!("{k}:")))
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {k} in conf/ops.yaml"))
            .to_string()
    };
    assert_eq!(key("pid_file"), directive("PIDFile"));
    let run_dir = format!("/run/{}/", directive("RuntimeDirectory"));
    assert!(key("pid_file").starts_with(&run_dir), "{run_dir}");
    assert!(key("upgrade_sock").starts_with(&run_dir), "{run_dir}");
    // reload = config reload in place, on the file the service runs; the binary upgrade is
    // the documented command of its own, on the same file
    let conf = directive("ExecStart")
        .split_once(" -c ")
        .map(|(_, c)| c.trim().to_string())
        .expect("ExecStart has -c CONFIG");
    assert_eq!(
        directive("ExecReload"),
        format!("/usr/local/bin/stepstone -s reload -c {conf}")
    );
    assert!(
        unit.contains(&format!("#   stepstone -s upgrade -c {conf}\n")),
        "the unit's header documents the binary upgrade"
    );
}

// ---- container ----

fn dockerfile() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).expect("Dockerfile")
}

/// The JSON-array argument of an instruction, e.g. `CMD ["-c", "x"]`.
fn exec_form(df: &str, instr: &str) -> Vec<String> {
    let line = df
        .lines()
        .rev()
        .find(|l| l.starts_with(&format!("{instr} ")))
        .unwrap_or_else(|| panic!("no {instr} in the Dockerfile"));
    serde_json::from_str(line[instr.len()..].trim()).expect("exec form")
}

#[test]
fn dockerfile_build_command_is_valid_for_this_tree() {
    let df = dockerfile();
    // The final build step: scripts/build-pgo by default, a plain cargo build with PGO=0; both
    // leave the binary where the runtime stage copies it from.
    let pgo = df
        .lines()
        .find(|l| l.contains("scripts/build-pgo --out "))
        .expect("a scripts/build-pgo step");
    let out = pgo
        .split_whitespace()
        .skip_while(|a| *a != "--out")
        .nth(1)
        .expect("--out PATH")
        .trim_end_matches(';');
    assert!(
        df.contains(&format!("COPY --from=build {out} ")),
        "the runtime stage does not copy {out}"
    );
    let script = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-pgo"),
    )
    .expect("read scripts/build-pgo");
    assert!(
        script.contains("cargo build --release --locked --bin stepstone"),
        "scripts/build-pgo builds without --locked --bin stepstone"
    );
    let run = df
        .lines()
        .find(|l| l.contains("else cargo build"))
        .expect("the PGO=0 cargo build step");
    assert!(
        run.contains(out),
        "the PGO=0 build does not leave {out}: {run}"
    );
    let args: Vec<&str> = run
        .split_whitespace()
        .skip_while(|a| *a != "cargo")
        .collect();
    assert_eq!(args[..2], ["cargo", "build"]);
    assert!(args.contains(&"--locked"), "{run}");
    let bin = args
        .iter()
        .position(|a| *a == "--bin")
        .map(|i| args[i + 1])
        .expect("--bin");
    // What `--locked --bin X` needs, without a release build on this shared machine: the lock
    // file is current and the binary target exists.
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--locked",
            "--offline",
            "--format-version",
            "1",
            "--no-deps",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata --locked: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata json");
    let bins: Vec<&str> = meta["packages"][0]["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(bins.contains(&bin), "--bin {bin} not among {bins:?}");
    // Everything the build stage copies exists.
    // (A source named by a build argument, the host-built binary, is not in the tree.)
    for l in df
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from") && !l.contains('$'))
    {
        let parts: Vec<&str> = l.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(src);
            assert!(p.exists(), "COPY source {src} missing");
        }
    }
}

#[tokio::test]
async fn container_image_config_starts_and_passes_its_healthcheck() {
    let df = dockerfile();
    let entry = exec_form(&df, "ENTRYPOINT");
    assert_eq!(entry, ["/usr/local/bin/stepstone"]);
    let cmd = exec_form(&df, "CMD");
    let conf_in_image = cmd
        .iter()
        .position(|a| a == "-c")
        .map(|i| cmd[i + 1].clone())
        .expect("CMD -c");
    // COPY conf/container.yaml <conf_in_image>
    let copy = df
        .lines()
        .find(|l| l.starts_with("COPY conf/") && l.trim_end().ends_with(&conf_in_image))
        .expect("the image config is copied from conf/");
    let src = copy.split_whitespace().nth(1).expect("source");
    let conf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(src);
    assert!(df.contains("USER stepstone"), "runs as non-root");
    let hc = df
        .lines()
        .find(|l| l.starts_with("HEALTHCHECK"))
        .expect("a HEALTHCHECK");
    assert!(hc.contains("$STEPSTONE_HEALTH_URL"), "{hc}");
    assert!(
        df.contains("ENV STEPSTONE_HEALTH_URL=http://127.0.0.1:9900/healthz"),
        "the health check's default URL is the admin /healthz"
    );

    // The image's command line, on the image's config: -t first.
    let mut args: Vec<String> = cmd.clone();
    let ci = args.iter().position(|a| a == "-c").expect("-c") + 1;
    args[ci] = conf.display().to_string();
    let mut t_args = vec!["-t".to_string()];
    t_args.extend(args.iter().cloned());
    let out = Command::new(bin()).args(&t_args).output().expect("run -t");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Then a real start of a copy with loopback ports and a scratch run dir, and the
    // HEALTHCHECK's own command against it.
    let text = std::fs::read_to_string(&conf).expect("read container.yaml");
    let origin = OriginBuilder::new("app").run().await;
    let web = free_port();
    let admin = free_port();
    let dir = scratch_dir("container");
    let rendered = text
        .replace("0.0.0.0:8080", &format!("127.0.0.1:{web}"))
        .replace("0.0.0.0:9900", &format!("127.0.0.1:{admin}"))
        .replace("127.0.0.1:9001", &origin.addr.to_string())
        .replace("/run/stepstone", &dir.display().to_string());
    assert_ne!(rendered, text);
    let p = Proxy::start_in(dir, &rendered, vec![web, admin], &[]).expect("the image config runs");
    assert_eq!(
        client::get(p.addr, "/", &[]).await.expect("proxied").status,
        200
    );
    let check = hc
        .split_once("CMD")
        .map(|(_, c)| c.trim().to_string())
        .expect("HEALTHCHECK CMD");
    // The image's ENV default, with the test's admin port.
    let url = df
        .lines()
        .find_map(|l| l.strip_prefix("ENV STEPSTONE_HEALTH_URL="))
        .expect("ENV STEPSTONE_HEALTH_URL")
        .replace("9900", &admin.to_string());
    let st = Command::new("sh")
        .arg("-c")
        .arg(&check)
        .env("STEPSTONE_HEALTH_URL", url)
        .status()
        .expect("sh");
    assert!(st.success(), "HEALTHCHECK failed: {check}");
}
