//! Validation of the operator-facing sections, `admin:` and `access_log:`. The admin token
//! file is read here so that `stepstone -t` catches a missing or empty one.

use super::file::{AccessLogFile, AdminFile};
use super::{parse_addr, AccessLogSpec, AdminSpec, ConfigError, Errs, ListenerSpec};

pub(super) fn admin(
    e: &Errs,
    raw: Option<&AdminFile>,
    listeners: &[ListenerSpec],
) -> Result<Option<AdminSpec>, ConfigError> {
    let admin = match raw {
        None => None,
        Some(a) => {
            let addr = parse_addr(e, "admin.address", &a.address)?;
            if listeners.iter().any(|l| l.addr == addr) {
                return Err(e.err("admin.address", &a.address, "address used by a listener"));
            }
            let given = [&a.token, &a.token_file, &a.token_env];
            if given.iter().filter(|t| t.is_some()).count() > 1 {
                let v = a
                    .token_file
                    .as_deref()
                    .or(a.token_env.as_deref())
                    .unwrap_or("");
                return Err(e.err(
                    "admin.token",
                    v,
                    "give only one of token, token_file and token_env",
                ));
            }
            let token = if let Some(t) = &a.token {
                Some(t.trim().to_string())
            } else if let Some(f) = &a.token_file {
                Some(
                    std::fs::read_to_string(f)
                        .map_err(|err| {
                            e.err(
                                "admin.token_file",
                                f,
                                format!("cannot read the file: {err}"),
                            )
                        })?
                        .trim()
                        .to_string(),
                )
            } else if let Some(var) = &a.token_env {
                // Unset is allowed: the image's config names the variable for every user,
                // and without it the token calls are refused rather than opened.
                std::env::var(var)
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
            } else {
                None
            };
            if token.as_deref() == Some("") {
                return Err(e.err("admin.token", "", "must not be empty"));
            }
            Some(AdminSpec { addr, token })
        }
    };
    Ok(admin)
}

pub(super) fn access_log(
    e: &Errs,
    raw: Option<&AccessLogFile>,
) -> Result<Option<AccessLogSpec>, ConfigError> {
    let access_log = raw.map(|a| AccessLogSpec {
        format: a.format,
        path: a.path.clone().filter(|p| p != "stdout"),
    });
    if let Some(Some(p)) = access_log.as_ref().map(|a| a.path.as_ref()) {
        if p.trim().is_empty() {
            return Err(e.err("access_log.path", p, "must be stdout or a file path"));
        }
    }
    Ok(access_log)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "listeners: [{name: web, address: 127.0.0.1:8080, protocol: http}]\n";

    #[test]
    fn admin_token_sources() {
        let y = format!("{BASE}admin: {{address: 127.0.0.1:9900, token: ' s3cret '}}\n");
        let c = Config::from_yaml("x.yaml", &y).unwrap();
        assert_eq!(c.admin.unwrap().token.as_deref(), Some("s3cret"));
        let y = format!("{BASE}admin: {{address: 127.0.0.1:9900, token_file: /nonexistent/tok}}\n");
        let err = Config::from_yaml("x.yaml", &y).unwrap_err();
        assert_eq!(err.path, "admin.token_file");
        let y = format!("{BASE}admin: {{address: 127.0.0.1:9900, token: a, token_env: B}}\n");
        assert_eq!(
            Config::from_yaml("t.yaml", &y).unwrap_err().path,
            "admin.token"
        );
        let y = format!("{BASE}admin: {{address: 127.0.0.1:8080}}\n");
        let err = Config::from_yaml("x.yaml", &y).unwrap_err();
        assert_eq!(err.path, "admin.address");
    }
}
