//! Validation of `cache:` blocks into [`CacheSpec`], and the rule that sizes the one store
//! all caches share.
//!
//! The store is a single LRU-bounded memory pool, so `max_size` is a property of the store,
//! not of a route. Rather than silently picking one of several differing values, every cache
//! that states `max_size` must state the same value ([`StoreSize`]); caches that omit it use
//! whatever the store is. An operator reading any one route's block therefore sees the real
//! bound, or nothing. Everything else (`max_object_size`, `default_ttl`, `status_header`,
//! `purge_from`, `targeted_header`) is per cache.
//!
//! The forward proxy enables its cache with the same block: call [`validate_cache`] on it and
//! feed its `max_size` to the same [`StoreSize`] as the routes.

use super::cidr::Cidr;
use super::file::CacheFile;
use super::ConfigError;
use std::time::Duration;

pub const DEFAULT_CACHE_MAX_SIZE: u64 = 256 << 20;
pub const DEFAULT_CACHE_MAX_OBJECT_SIZE: u64 = 8 << 20;
pub const DEFAULT_CACHE_DEFAULT_TTL: Duration = Duration::ZERO;
pub const DEFAULT_CACHE_STATUS_HEADER: &str = "X-Cache-Status";
/// Smallest store worth having; below this the LRU would evict on nearly every admission.
pub const MIN_CACHE_MAX_SIZE: u64 = 64 << 10;

#[derive(Debug, Clone)]
pub struct CacheSpec {
    pub max_object_size: u64,
    pub default_ttl: Duration,
    pub status_header: http::HeaderName,
    pub purge_from: Vec<Cidr>,
    /// The route's own targeted cache-control field (RFC 9213), ahead of CDN-Cache-Control.
    pub targeted_header: Option<http::HeaderName>,
}

/// The shared store's bound: the `max_size` the caches agree on, or the default.
#[derive(Debug, Default, Clone)]
pub struct StoreSize {
    first: Option<(String, u64)>,
    any_enabled: bool,
}

impl StoreSize {
    /// Record one enabled cache's `max_size` (given at `path`).
    pub fn add(&mut self, file: &str, path: &str, size: Option<u64>) -> Result<(), ConfigError> {
        self.any_enabled = true;
        let Some(size) = size else { return Ok(()) };
        match &self.first {
            Some((p, s)) if *s != size => Err(ConfigError {
                file: file.to_string(),
                path: path.to_string(),
                value: size.to_string(),
                msg: format!(
                    "all caches share one store, so max_size must be the same wherever it is given ({p} says {s})"
                ),
            }),
            Some(_) => Ok(()),
            None => {
                self.first = Some((path.to_string(), size));
                Ok(())
            }
        }
    }

    /// The store bound in bytes, or `None` when no cache is enabled.
    pub fn resolve(&self) -> Option<u64> {
        self.any_enabled.then(|| {
            self.first
                .as_ref()
                .map(|(_, s)| *s)
                .unwrap_or(DEFAULT_CACHE_MAX_SIZE)
        })
    }
}

/// Validate a `cache:` block at `path` (for example `routes[2].cache`). Returns `None` when
/// the block says `enabled: false`; its other keys are still checked so a typo never hides.
pub fn validate_cache(
    file: &str,
    path: &str,
    c: &CacheFile,
    store: &mut StoreSize,
) -> Result<Option<CacheSpec>, ConfigError> {
    let err = |key: &str, value: String, msg: String| ConfigError {
        file: file.to_string(),
        path: format!("{path}.{key}"),
        value,
        msg,
    };
    let max_size = c.max_size.map(|s| s.0);
    if let Some(s) = max_size {
        if s < MIN_CACHE_MAX_SIZE {
            return Err(err(
                "max_size",
                s.to_string(),
                format!("must be at least {MIN_CACHE_MAX_SIZE} bytes (64KiB)"),
            ));
        }
    }
    let max_object_size = c
        .max_object_size
        .map(|s| s.0)
        .unwrap_or(DEFAULT_CACHE_MAX_OBJECT_SIZE);
    if max_object_size == 0 {
        return Err(err(
            "max_object_size",
            "0".into(),
            "must be greater than zero".into(),
        ));
    }
    let bound = max_size.unwrap_or(DEFAULT_CACHE_MAX_SIZE);
    if max_object_size > bound {
        return Err(err(
            "max_object_size",
            max_object_size.to_string(),
            format!("must not exceed the store's max_size ({bound} bytes)"),
        ));
    }
    let name = c
        .status_header
        .as_deref()
        .unwrap_or(DEFAULT_CACHE_STATUS_HEADER);
    let status_header = http::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
        err(
            "status_header",
            name.to_string(),
            "must be a valid header name".into(),
        )
    })?;
    let targeted_header = match c.targeted_header.as_deref() {
        None => None,
        Some(name) => {
            let bad = |msg: &str| err("targeted_header", name.to_string(), msg.into());
            let h = http::HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| bad("must be a valid header name"))?;
            if h == http::header::CACHE_CONTROL {
                return Err(bad(
                    "must name a field other than Cache-Control (which applies anyway)",
                ));
            }
            Some(h)
        }
    };
    let mut purge_from = Vec::with_capacity(c.purge_from.len());
    for (i, s) in c.purge_from.iter().enumerate() {
        purge_from.push(
            s.parse::<Cidr>()
                .map_err(|m| err(&format!("purge_from[{i}]"), s.clone(), m))?,
        );
    }
    if !c.enabled {
        return Ok(None);
    }
    store.add(file, &format!("{path}.max_size"), max_size)?;
    Ok(Some(CacheSpec {
        max_object_size,
        default_ttl: c
            .default_ttl
            .map(|d| d.0)
            .unwrap_or(DEFAULT_CACHE_DEFAULT_TTL),
        status_header,
        purge_from,
        targeted_header,
    }))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn cfg(routes: &str) -> String {
        format!(
            "listeners: [{{name: web, address: 127.0.0.1:8080, protocol: http}}]\nupstreams: [{{name: a, backends: [{{address: 127.0.0.1:1}}]}}]\nroutes:\n{routes}"
        )
    }

    #[test]
    fn defaults_and_store_size() {
        let c = Config::from_yaml(
            "x.yaml",
            &cfg("  - {listener: web, upstream: a, cache: {enabled: true}}\n  - {listener: web, path_prefix: /b, upstream: a}\n"),
        )
        .unwrap();
        let spec = c.routes[0].cache.as_ref().unwrap();
        assert_eq!(spec.max_object_size, 8 << 20);
        assert_eq!(spec.status_header.as_str(), "x-cache-status");
        assert!(spec.purge_from.is_empty());
        assert!(spec.targeted_header.is_none());
        assert!(c.routes[1].cache.is_none());
        assert_eq!(c.cache_store_size, Some(256 << 20));

        let c = Config::from_yaml(
            "x.yaml",
            &cfg("  - {listener: web, upstream: a, cache: {enabled: false, max_size: 1GiB}}\n"),
        )
        .unwrap();
        assert!(c.routes[0].cache.is_none());
        assert_eq!(
            c.cache_store_size, None,
            "a disabled cache creates no store"
        );
    }

    #[test]
    fn differing_max_sizes_are_an_error_naming_both() {
        let err = Config::from_yaml(
            "x.yaml",
            &cfg("  - {listener: web, upstream: a, cache: {enabled: true, max_size: 64MiB}}\n  - {listener: web, path_prefix: /b, upstream: a, cache: {enabled: true}}\n  - {listener: web, path_prefix: /c, upstream: a, cache: {enabled: true, max_size: 128MiB}}\n"),
        )
        .unwrap_err();
        assert_eq!(err.path, "routes[2].cache.max_size");
        assert!(err.msg.contains("routes[0].cache.max_size"), "{err}");
    }

    #[test]
    fn bad_values_name_their_path() {
        for (block, path) in [
            (
                "{enabled: true, purge_from: [10.0.0.0/33]}",
                "routes[0].cache.purge_from[0]",
            ),
            (
                "{enabled: true, status_header: 'X Bad'}",
                "routes[0].cache.status_header",
            ),
            (
                "{enabled: true, max_size: 1MiB, max_object_size: 2MiB}",
                "routes[0].cache.max_object_size",
            ),
            (
                "{enabled: true, max_size: 1KiB}",
                "routes[0].cache.max_size",
            ),
            (
                "{enabled: true, default_ttl: 5x}",
                "routes[0].cache.default_ttl",
            ),
            (
                "{enabled: true, targeted_header: 'Bad Name'}",
                "routes[0].cache.targeted_header",
            ),
            (
                "{enabled: true, targeted_header: cache-control}",
                "routes[0].cache.targeted_header",
            ),
        ] {
            let err = Config::from_yaml(
                "x.yaml",
                &cfg(&format!(
                    "  - {{listener: web, upstream: a, cache: {block}}}\n"
                )),
            )
            .unwrap_err();
            assert_eq!(err.path, path, "{err}");
        }
        let err = Config::from_yaml(
            "x.yaml",
            &cfg("  - {listener: web, upstream: a, cache: {enabled: true, max_sise: 1MiB}}\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("max_sise"), "{err}");
    }

    #[test]
    fn object_limit_is_checked_against_the_shared_store() {
        let err = Config::from_yaml(
            "x.yaml",
            &cfg("  - {listener: web, upstream: a, cache: {enabled: true, max_size: 1MiB, max_object_size: 512KiB}}\n  - {listener: web, path_prefix: /b, upstream: a, cache: {enabled: true}}\n"),
        )
        .unwrap_err();
        assert_eq!(err.path, "routes[1].cache.max_object_size");
    }

    #[test]
    fn forward_proxy_cache_shares_the_store_rules() {
        let fwd = |cache: &str, routes: &str| {
            Config::from_yaml(
                "x.yaml",
                &format!(
                    "listeners:\n  - {{name: f, address: 127.0.0.1:3128, protocol: http, forward_proxy: {{cache: {cache}}}}}\n  - {{name: web, address: 127.0.0.1:8080, protocol: http}}\nupstreams: [{{name: a, backends: [{{address: 127.0.0.1:1}}]}}]\nroutes:\n{routes}"
                ),
            )
        };
        let c = fwd(
            "{enabled: true, max_size: 64MiB}",
            "  - {listener: web, upstream: a}\n",
        )
        .unwrap();
        let spec = c.listeners[0]
            .forward
            .as_ref()
            .unwrap()
            .cache
            .as_ref()
            .unwrap();
        assert_eq!(spec.max_object_size, 8 << 20);
        assert_eq!(
            c.cache_store_size,
            Some(64 << 20),
            "a forward cache alone sizes the store"
        );
        let c = fwd("{enabled: false}", "  - {listener: web, upstream: a}\n").unwrap();
        assert_eq!(c.cache_store_size, None);

        let err = fwd(
            "{enabled: true, max_size: 64MiB}",
            "  - {listener: web, upstream: a, cache: {enabled: true, max_size: 128MiB}}\n",
        )
        .unwrap_err();
        assert_eq!(err.path, "routes[0].cache.max_size");
        assert!(
            err.msg
                .contains("listeners[0].forward_proxy.cache.max_size"),
            "{err}"
        );

        let err = fwd(
            "{enabled: true, max_object_size: 2MiB}",
            "  - {listener: web, upstream: a, cache: {enabled: true, max_size: 1MiB, max_object_size: 512KiB}}\n",
        )
        .unwrap_err();
        assert_eq!(err.path, "listeners[0].forward_proxy.cache.max_object_size");
    }
}
