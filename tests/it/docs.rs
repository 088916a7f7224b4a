//! Documentation that matches the code: `conf/stepstone.yaml` claims to list every key with
//! its default, so every field of every config file type (`src/config/file.rs`, the serde
//! types that `deny_unknown_fields` enforces) must appear there as `key:`.

use std::collections::BTreeSet;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The YAML keys the serde structs of `file.rs` accept: each `pub name:` field of a struct
/// deriving `Deserialize`, renamed by a preceding `#[serde(rename = "...")]`.
fn config_keys(src: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut deserialize = false;
    let mut in_struct = false;
    let mut rename: Option<String> = None;
    for line in src.lines().map(str::trim) {
        if line.starts_with("#[derive(") {
            deserialize = line.contains("Deserialize");
        } else if line.starts_with("pub struct ") && line.ends_with('{') {
            in_struct = deserialize;
        } else if line.starts_with("pub enum ") || line == "}" {
            in_struct = false;
        } else if in_struct {
            if let Some(r) = line
                .strip_prefix("#[serde(rename = \"")
                .and_then(|r| r.split('"').next())
            {
                rename = Some(r.to_string());
            } else if let Some(field) = line.strip_prefix("pub ") {
                if let Some((name, _)) = field.split_once(':') {
                    keys.insert(rename.take().unwrap_or_else(|| name.trim().to_string()));
                }
            }
        }
    }
    keys
}

/// Whether `key:` appears in the YAML text as a key (in block or flow style, or commented).
fn documented(yaml: &str, key: &str) -> bool {
    let pat = format!("{key}:");
    yaml.match_indices(&pat).any(|(i, _)| {
        yaml[..i]
            .chars()
            .last()
            .is_none_or(|c| c.is_whitespace() || matches!(c, '{' | ',' | '#' | '-'))
    })
}

#[test]
fn every_config_key_is_in_the_documented_file() {
    let src = std::fs::read_to_string(format!("{ROOT}/src/config/file.rs")).expect("file.rs");
    let keys = config_keys(&src);
    // The parser sees the file's well-known keys (guards against it silently finding none).
    for k in [
        "listeners",
        "upstreams",
        "routes",
        "grace_period_seconds",
        "type",
        "match",
    ] {
        assert!(keys.contains(k), "parser missed {k}: {keys:?}");
    }
    assert!(keys.len() > 100, "only {} keys found", keys.len());
    let yaml =
        std::fs::read_to_string(format!("{ROOT}/conf/stepstone.yaml")).expect("stepstone.yaml");
    let missing: Vec<&String> = keys.iter().filter(|k| !documented(&yaml, k)).collect();
    assert!(
        missing.is_empty(),
        "conf/stepstone.yaml lacks these config keys (document each with its default): {missing:?}"
    );
}
