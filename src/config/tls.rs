//! Validation of the TLS keys of listeners and upstreams, called from
//! [`crate::config::validate`]. It reads every file named, so `-t` fails on a missing,
//! unreadable, mismatched or expired certificate with the file and key path in the error.

use super::certs::{self, ClientCert, Trusted, Which};
use crate::config::file::{ListenerFile, ListenerProtocol, UpstreamFile};
use crate::config::{
    dur, valid_hostname, CertSpec, ConfigError, Errs, HostMatch, TlsSpec, UpstreamTlsSpec,
    DEFAULT_HTTPS_PORT, DEFAULT_TLS_HANDSHAKE_TIMEOUT, DEFAULT_TLS_RELOAD_INTERVAL,
};
use log::warn;
use pingora_core::utils::tls::CertKey;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Relative paths are taken from the config file's directory, so a config and its
/// certificates can move together and `-t` gives the same answer from any directory.
pub fn resolve(config_file: &str, p: &str) -> String {
    let path = Path::new(p);
    if path.is_absolute() {
        return p.to_string();
    }
    match Path::new(config_file).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(path).display().to_string(),
        _ => p.to_string(),
    }
}

/// Returns the listener's TLS spec, its https redirect port and whether h2c is on.
pub(crate) fn validate_listener(
    e: &Errs,
    p: &str,
    l: &ListenerFile,
) -> Result<(Option<TlsSpec>, Option<u16>, bool), ConfigError> {
    let http_only = |key: &str, set: bool| -> Result<(), ConfigError> {
        if set && l.protocol != ListenerProtocol::Http {
            return Err(e.err(
                format!("{p}.{key}"),
                format!("{:?}", l.protocol).to_lowercase(),
                "only valid on a listener with protocol: http",
            ));
        }
        Ok(())
    };
    http_only("redirect_https", l.redirect_https.is_some())?;
    http_only("https_port", l.https_port.is_some())?;
    http_only("h2c", l.h2c.is_some())?;
    let redirect = match (l.redirect_https.unwrap_or(false), l.https_port) {
        (false, Some(port)) => {
            return Err(e.err(
                format!("{p}.https_port"),
                port,
                "only valid with redirect_https: true",
            ))
        }
        (true, Some(0)) => return Err(e.err(format!("{p}.https_port"), 0, "must be a port")),
        (true, port) => Some(port.unwrap_or(DEFAULT_HTTPS_PORT)),
        (false, None) => None,
    };

    let tls = match (&l.tls, l.protocol) {
        (None, ListenerProtocol::Https) => {
            return Err(e.err(
                format!("{p}.tls"),
                "",
                "an https listener needs a tls block with at least one certificate",
            ))
        }
        (None, _) => None,
        (Some(_), ListenerProtocol::Http | ListenerProtocol::TlsPassthrough) => {
            return Err(e.err(
                format!("{p}.tls"),
                "",
                "a tls block needs protocol: https (or tcp for TLS-terminated TCP)",
            ))
        }
        (Some(t), _) => Some(validate_tls_block(e, &format!("{p}.tls"), &l.name, t)?),
    };
    Ok((tls, redirect, l.h2c.unwrap_or(false)))
}

fn validate_tls_block(
    e: &Errs,
    p: &str,
    listener: &str,
    t: &crate::config::file::TlsFile,
) -> Result<TlsSpec, ConfigError> {
    if t.certificates.is_empty() && t.acme.is_none() {
        return Err(e.err(
            format!("{p}.certificates"),
            "[]",
            "at least one certificate is required (or an acme block)",
        ));
    }
    let acme = match &t.acme {
        Some(a) => Some(super::acme::validate(e, &format!("{p}.acme"), a)?),
        None => None,
    };
    let allow_expired = t.allow_expired.unwrap_or(false);
    let mut certificates: Vec<CertSpec> = Vec::with_capacity(t.certificates.len());
    for (i, c) in t.certificates.iter().enumerate() {
        let cp = format!("{p}.certificates[{i}]");
        if i > 0 && c.server_names.is_empty() {
            return Err(e.err(
                format!("{cp}.server_names"),
                "[]",
                "only the first (default) certificate may have no server_names",
            ));
        }
        let mut names = Vec::with_capacity(c.server_names.len());
        for (j, n) in c.server_names.iter().enumerate() {
            let np = format!("{cp}.server_names[{j}]");
            let m = match HostMatch::parse(n) {
                Ok(HostMatch::Any) => Err(
                    "a server name must not be a catch-all; the first certificate is the default"
                        .to_string(),
                ),
                other => other,
            }
            .map_err(|msg| e.err(&np, n, msg))?;
            let taken =
                names.contains(&m) || certificates.iter().any(|c| c.server_names.contains(&m));
            if taken {
                return Err(e.err(&np, n, "server name listed twice"));
            }
            names.push(m);
        }
        let cert = resolve(e.file, &c.cert);
        let key = resolve(e.file, &c.key);
        match certs::load_pair(&cert, &key, allow_expired) {
            Ok((_, Some(w))) => warn!("{}: {cp}.cert: {w}", e.file),
            Ok((_, None)) => {}
            Err(err) => {
                let (k, v) = match err.which {
                    Which::Cert => ("cert", &c.cert),
                    Which::Key => ("key", &c.key),
                };
                return Err(e.err(format!("{cp}.{k}"), v, err.msg));
            }
        }
        certificates.push(CertSpec {
            cert,
            key,
            server_names: names,
        });
    }
    let client_ca = match &t.client_ca {
        None => None,
        Some(ca) => {
            let path = resolve(e.file, ca);
            certs::load_ca(&path).map_err(|m| e.err(format!("{p}.client_ca"), ca, m))?;
            Some(path)
        }
    };
    let handshake_timeout = dur(t.handshake_timeout, DEFAULT_TLS_HANDSHAKE_TIMEOUT);
    if handshake_timeout < Duration::from_secs(1) || handshake_timeout > Duration::from_secs(60) {
        return Err(e.err(
            format!("{p}.handshake_timeout"),
            format!("{handshake_timeout:?}"),
            "must be between 1s and 60s",
        ));
    }
    Ok(TlsSpec {
        key_path: p.to_string(),
        listener: listener.to_string(),
        certificates,
        client_ca,
        allow_expired,
        reload_interval: dur(t.reload_interval, DEFAULT_TLS_RELOAD_INTERVAL),
        handshake_timeout,
        acme,
    })
}

/// Returns the upstream's TLS spec and whether it speaks HTTP/2 to its backends.
pub(crate) fn validate_upstream(
    e: &Errs,
    p: &str,
    u: &UpstreamFile,
) -> Result<(Option<UpstreamTlsSpec>, bool), ConfigError> {
    let http2 = u.http2.unwrap_or(false);
    if !u.tls.unwrap_or(false) {
        let stray = [
            ("sni", u.sni.is_some()),
            ("verify", u.verify.is_some()),
            ("ca_file", u.ca_file.is_some()),
            ("client_cert", u.client_cert.is_some()),
            ("client_key", u.client_key.is_some()),
        ];
        if let Some((k, _)) = stray.iter().find(|(_, set)| *set) {
            return Err(e.err(format!("{p}.{k}"), "", "only valid with tls: true"));
        }
        return Ok((None, http2));
    }
    let verify = u.verify.unwrap_or(true);
    let sni = match &u.sni {
        Some(s) if valid_hostname(s) => s.to_ascii_lowercase(),
        Some(s) => return Err(e.err(format!("{p}.sni"), s, "expected a host name")),
        None if verify => {
            return Err(e.err(
                format!("{p}.sni"),
                "",
                "required with tls: the backends' certificates are checked against this name (or set verify: false)",
            ))
        }
        None => String::new(),
    };
    let ca = match &u.ca_file {
        None => None,
        Some(f) => {
            let certs = certs::load_ca(&resolve(e.file, f))
                .map_err(|m| e.err(format!("{p}.ca_file"), f, m))?;
            Some(Trusted(Arc::new(certs.into_boxed_slice())))
        }
    };
    let client = match (&u.client_cert, &u.client_key) {
        (None, None) => None,
        (Some(c), None) => {
            return Err(e.err(
                format!("{p}.client_key"),
                "",
                format!("client_cert {c} needs its client_key"),
            ))
        }
        (None, Some(k)) => {
            return Err(e.err(
                format!("{p}.client_cert"),
                "",
                format!("client_key {k} needs its client_cert"),
            ))
        }
        (Some(c), Some(k)) => {
            let (loaded, _) = certs::load_pair(&resolve(e.file, c), &resolve(e.file, k), false)
                .map_err(|err| match err.which {
                    Which::Cert => e.err(format!("{p}.client_cert"), c, err.msg),
                    Which::Key => e.err(format!("{p}.client_key"), k, err.msg),
                })?;
            let mut chain = vec![loaded.leaf];
            chain.extend(loaded.chain);
            Some(ClientCert(Arc::new(CertKey::new(chain, loaded.key))))
        }
    };
    Ok((
        Some(UpstreamTlsSpec {
            sni,
            verify,
            ca,
            client,
            http2,
        }),
        http2,
    ))
}

#[cfg(test)]
mod tests {
    use super::resolve;
    use crate::config::Config;

    fn err(y: &str) -> crate::config::ConfigError {
        Config::from_yaml("/etc/x.yaml", y).unwrap_err()
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        assert_eq!(resolve("/etc/s/x.yaml", "a.crt"), "/etc/s/a.crt");
        assert_eq!(resolve("/etc/s/x.yaml", "/k/a.crt"), "/k/a.crt");
        assert_eq!(resolve("x.yaml", "a.crt"), "a.crt");
    }

    #[test]
    fn listener_and_upstream_keys_are_checked() {
        let e = err("listeners: [{name: s, address: 127.0.0.1:1, protocol: https}]\n");
        assert_eq!(e.path, "listeners[0].tls");
        let e =
            err("listeners: [{name: s, address: 127.0.0.1:1, protocol: http, https_port: 8443}]\n");
        assert_eq!(e.path, "listeners[0].https_port");
        let e = err("listeners: [{name: s, address: 127.0.0.1:1, protocol: http, tls: {certificates: []}}]\n");
        assert_eq!(e.path, "listeners[0].tls");
        let e = err("listeners: [{name: s, address: 127.0.0.1:1, protocol: https, tls: {certificates: []}}]\n");
        assert_eq!(e.path, "listeners[0].tls.certificates");
        let l = "listeners: [{name: s, address: 127.0.0.1:1, protocol: http}]\n";
        let e = err(&format!(
            "{l}upstreams: [{{name: a, backends: [{{address: 127.0.0.1:2}}], tls: true}}]\n"
        ));
        assert_eq!(e.path, "upstreams[0].sni");
        let e = err(&format!(
            "{l}upstreams: [{{name: a, backends: [{{address: 127.0.0.1:2}}], verify: false}}]\n"
        ));
        assert_eq!(e.path, "upstreams[0].verify");
        let e = err(&format!("{l}upstreams: [{{name: a, backends: [{{address: 127.0.0.1:2}}], tls: true, sni: a.test, client_cert: c.pem}}]\n"));
        assert_eq!(e.path, "upstreams[0].client_key");
        let ok = Config::from_yaml(
            "x.yaml",
            &format!("{l}upstreams: [{{name: a, backends: [{{address: 127.0.0.1:2}}], tls: true, verify: false, http2: true}}]\n"),
        )
        .expect("valid");
        let t = ok.upstreams[0].tls.as_ref().expect("tls");
        assert!(!t.verify && t.http2 && t.sni.is_empty());
    }
}
