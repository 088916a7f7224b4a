//! `routes[].compression`: the file type, its validation and the runtime spec.

use super::units::Size;
use super::ConfigError;
use super::Errs;
use serde::Deserialize;

/// Algorithms tried, in this order of preference on equal q-values, when none are given.
pub const DEFAULT_ALGORITHMS: [Coding; 3] = [Coding::Br, Coding::Zstd, Coding::Gzip];
/// Bodies known to be smaller than this are sent as they are.
pub const DEFAULT_MIN_SIZE: u64 = 256;
/// Media types compressed when none are given; `type/*` matches every subtype.
pub const DEFAULT_CONTENT_TYPES: [&str; 5] = [
    "text/*",
    "application/json",
    "application/javascript",
    "application/xml",
    "image/svg+xml",
];
/// gzip 6 (zlib's and nginx's `gzip_comp_level` default is 1; 6 is what most sites use),
/// brotli 4 and zstd 3: each codec's usual speed/ratio balance for on-the-fly compression.
pub const DEFAULT_LEVEL_GZIP: u32 = 6;
pub const DEFAULT_LEVEL_BR: u32 = 4;
pub const DEFAULT_LEVEL_ZSTD: u32 = 3;

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct CompressionFile {
    /// Default: true (the block's presence turns compression on).
    pub enabled: Option<bool>,
    /// Any of br, zstd, gzip; the order breaks ties between equal q-values.
    /// Default: [br, zstd, gzip]
    pub algorithms: Option<Vec<String>>,
    /// Responses whose Content-Length is below this are not compressed. Default: 256
    pub min_size: Option<Size>,
    /// Media types compressed (`text/*` matches every text type). Default: text/*,
    /// application/json, application/javascript, application/xml, image/svg+xml
    pub content_types: Option<Vec<String>>,
    /// One level for every algorithm (gzip 1-9, br 0-11, zstd 1-19). Default: each
    /// codec's own (gzip 6, br 4, zstd 3)
    pub level: Option<u32>,
}

/// A content coding the proxy can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Br,
    Zstd,
    Gzip,
}

impl Coding {
    pub fn token(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
        }
    }

    fn parse(s: &str) -> Option<Coding> {
        match s.trim().to_ascii_lowercase().as_str() {
            "br" => Some(Coding::Br),
            "zstd" => Some(Coding::Zstd),
            "gzip" => Some(Coding::Gzip),
            _ => None,
        }
    }

    fn levels(self) -> std::ops::RangeInclusive<u32> {
        match self {
            Coding::Br => 0..=11,
            Coding::Zstd => 1..=19,
            Coding::Gzip => 1..=9,
        }
    }

    fn default_level(self) -> u32 {
        match self {
            Coding::Br => DEFAULT_LEVEL_BR,
            Coding::Zstd => DEFAULT_LEVEL_ZSTD,
            Coding::Gzip => DEFAULT_LEVEL_GZIP,
        }
    }
}

/// A media type pattern: `text/*` or an exact `type/subtype`, lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaPattern {
    AnySubtype(String),
    Exact(String),
}

impl MediaPattern {
    /// `essence`: the type/subtype of a Content-Type, without parameters, lower case.
    pub fn matches(&self, essence: &str) -> bool {
        match self {
            MediaPattern::AnySubtype(t) => essence
                .split_once('/')
                .is_some_and(|(ty, sub)| ty == t && !sub.is_empty()),
            MediaPattern::Exact(e) => e == essence,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CompressionSpec {
    /// With the level of each.
    pub algorithms: Vec<(Coding, u32)>,
    pub min_size: u64,
    pub content_types: Vec<MediaPattern>,
}

fn media_pattern(s: &str) -> Option<MediaPattern> {
    let s = s.trim().to_ascii_lowercase();
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let (ty, sub) = s.split_once('/')?;
    if !token(ty) {
        return None;
    }
    if sub == "*" {
        return Some(MediaPattern::AnySubtype(ty.to_string()));
    }
    token(sub).then(|| MediaPattern::Exact(s.clone()))
}

/// `None` when the block turns compression off.
pub(crate) fn validate(
    e: &Errs,
    p: &str,
    c: &CompressionFile,
) -> Result<Option<CompressionSpec>, ConfigError> {
    if c.enabled == Some(false) {
        return Ok(None);
    }
    let mut algorithms: Vec<Coding> = Vec::new();
    match &c.algorithms {
        None => algorithms.extend(DEFAULT_ALGORITHMS),
        Some(list) => {
            if list.is_empty() {
                return Err(e.err(format!("{p}.algorithms"), "[]", "name at least one"));
            }
            for (i, a) in list.iter().enumerate() {
                let coding = Coding::parse(a).ok_or_else(|| {
                    e.err(
                        format!("{p}.algorithms[{i}]"),
                        a,
                        "expected br, zstd or gzip",
                    )
                })?;
                if algorithms.contains(&coding) {
                    return Err(e.err(format!("{p}.algorithms[{i}]"), a, "listed twice"));
                }
                algorithms.push(coding);
            }
        }
    }
    let mut leveled = Vec::with_capacity(algorithms.len());
    for a in algorithms {
        let level = match c.level {
            Some(l) if !a.levels().contains(&l) => {
                return Err(e.err(
                    format!("{p}.level"),
                    l,
                    format!(
                        "out of range for {} ({}..={})",
                        a.token(),
                        a.levels().start(),
                        a.levels().end()
                    ),
                ))
            }
            Some(l) => l,
            None => a.default_level(),
        };
        leveled.push((a, level));
    }
    let content_types = match &c.content_types {
        None => DEFAULT_CONTENT_TYPES
            .iter()
            .filter_map(|t| media_pattern(t))
            .collect(),
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (i, t) in list.iter().enumerate() {
                out.push(media_pattern(t).ok_or_else(|| {
                    e.err(
                        format!("{p}.content_types[{i}]"),
                        t,
                        "expected a media type (type/subtype or type/*)",
                    )
                })?);
            }
            out
        }
    };
    Ok(Some(CompressionSpec {
        algorithms: leveled,
        min_size: c.min_size.map_or(DEFAULT_MIN_SIZE, |s| s.0),
        content_types,
    }))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "listeners: [{name: web, address: 127.0.0.1:1, protocol: http}]\nupstreams: [{name: a, backends: [{address: 127.0.0.1:1}]}]\n";

    fn route(c: &str) -> String {
        format!("{BASE}routes: [{{listener: web, upstream: a, compression: {c}}}]\n")
    }

    #[test]
    fn defaults_and_bad_values() {
        let c = Config::from_yaml("x.yaml", &route("{}")).unwrap();
        let s = c.routes[0].compression.clone().expect("on");
        let names: Vec<&str> = s.algorithms.iter().map(|(a, _)| a.token()).collect();
        assert_eq!(names, ["br", "zstd", "gzip"]);
        assert_eq!(s.min_size, 256);
        assert_eq!(s.content_types.len(), 5);
        assert!(s.content_types[0].matches("text/css"));
        let c = Config::from_yaml("x.yaml", &route("{enabled: false}")).unwrap();
        assert!(c.routes[0].compression.is_none());
        for (v, path, value) in [
            ("{algorithms: [gzip, lz4]}", "algorithms[1]", "lz4"),
            ("{algorithms: [gzip, gzip]}", "algorithms[1]", "gzip"),
            ("{level: 12}", "level", "12"),
            ("{content_types: [text]}", "content_types[0]", "text"),
        ] {
            let err = Config::from_yaml("x.yaml", &route(v)).unwrap_err();
            assert_eq!(err.path, format!("routes[0].compression.{path}"), "{v}");
            assert_eq!(err.value, value, "{v}");
        }
        assert!(Config::from_yaml("x.yaml", &route("{levels: 1}")).is_err());
    }
}
