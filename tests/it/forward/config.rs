//! The `-t` check of forward proxy settings: each error names its key.

use crate::support::proxy::run_cli;
use crate::support::scratch_dir;

#[test]
fn forward_config_errors_name_the_key() {
    let dir = scratch_dir("fwd-cfg");
    let cases = [
        (
            "forward_proxy: {cache: {enabled: true, max_object_size: 0}}",
            "listeners[0].forward_proxy.cache.max_object_size",
            "greater than zero",
        ),
        (
            "forward_proxy: {cache: {enabled: true, max_sise: 1MiB}}",
            "listeners[0].forward_proxy.cache",
            "max_sise",
        ),
        (
            "forward_proxy: {access: [{action: allow, clients: [10.0.0.0/40]}]}",
            "listeners[0].forward_proxy.access[0].clients[0]",
            "10.0.0.0/40",
        ),
        (
            "forward_proxy: {auth: {users_file: plain}}",
            "listeners[0].forward_proxy.auth.users_file",
            "bcrypt",
        ),
        (
            "forward_proxy: {filter: {block_body_patterns: [x], hold_head_bytes: 2MiB}}",
            "listeners[0].forward_proxy.filter.hold_head_bytes",
            "2097152",
        ),
        (
            "forward_proxy: {anonymity: paranoid}",
            "listeners[0].forward_proxy.anonymity",
            "paranoid",
        ),
    ];
    std::fs::write(dir.join("plain"), "bob:secret\n").expect("users");
    for (i, (block, path, word)) in cases.iter().enumerate() {
        let f = dir.join(format!("c{i}.yaml"));
        std::fs::write(
            &f,
            format!(
                "listeners:\n  - {{name: f, address: 127.0.0.1:18181, protocol: http, {block}}}\n"
            ),
        )
        .expect("write");
        let (code, out) = run_cli(&["-t", "-c", f.to_str().expect("path")]);
        assert_ne!(code, 0, "{block}");
        assert!(out.contains(path) && out.contains(word), "{block}: {out}");
    }
}
