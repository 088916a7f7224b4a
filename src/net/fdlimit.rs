//! The open-file limit: every connection, client or backend, holds a descriptor.
//!
//! A service manager commonly starts a process with a soft limit of 1,024 (systemd's default
//! `LimitNOFILE=1024:524288`), which would make a proxy refuse connections at about 500
//! clients with an upstream connection each, while the hard limit allows hundreds of
//! thousands. So at start the soft limit is raised, as HAProxy does for itself and as nginx's
//! `worker_rlimit_nofile` does on request: to `pingora.max_open_files`, or by default to the
//! hard limit. A value above the hard limit raises that too where the process may
//! (CAP_SYS_RESOURCE), and otherwise stops at the hard limit with a warning.

/// The soft and hard limit to ask for, given the current ones and the configured wish.
/// Never lowers a limit: a wish below the current soft limit leaves both as they are.
pub fn plan(soft: u64, hard: u64, want: Option<u64>) -> (u64, u64) {
    let want = want.unwrap_or(hard);
    if want <= soft {
        return (soft, hard);
    }
    (want, hard.max(want))
}

fn get() -> std::io::Result<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((r.rlim_cur, r.rlim_max))
}

fn set(soft: u64, hard: u64) -> std::io::Result<()> {
    let r = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct it is given; a refused change is an error return.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Raise this process's open-file limit as [`plan`] says; the soft limit in force after.
/// Failing to raise the hard limit falls back to the hard limit there is, with a warning.
pub fn raise(want: Option<u64>) -> std::io::Result<u64> {
    let (soft, hard) = get()?;
    let (s, h) = plan(soft, hard, want);
    if (s, h) == (soft, hard) {
        return Ok(soft);
    }
    match set(s, h) {
        Ok(()) => {
            log::info!("open-file limit raised from {soft} to {s}");
            Ok(s)
        }
        Err(e) if h > hard => {
            log::warn!(
                "open-file limit: cannot raise the hard limit from {hard} to {h} ({e}); \
                 using {hard}"
            );
            let (s, _) = plan(soft, hard, Some(hard));
            if s > soft {
                set(s, hard)?;
                log::info!("open-file limit raised from {soft} to {s}");
            }
            Ok(s)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::plan;

    #[test]
    fn the_default_is_the_hard_limit() {
        assert_eq!(plan(1024, 524_288, None), (524_288, 524_288));
    }

    #[test]
    fn a_wish_between_the_limits_is_the_soft_limit() {
        assert_eq!(plan(1024, 524_288, Some(65_536)), (65_536, 524_288));
    }

    #[test]
    fn a_wish_above_the_hard_limit_raises_both() {
        assert_eq!(plan(1024, 20_000, Some(200_000)), (200_000, 200_000));
    }

    #[test]
    fn nothing_is_lowered() {
        assert_eq!(plan(65_536, 524_288, Some(4096)), (65_536, 524_288));
        assert_eq!(plan(20_000, 20_000, None), (20_000, 20_000));
    }
}
