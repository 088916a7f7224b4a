//! Failures that are this machine's, not a backend's: a connect refused for want of a
//! descriptor, a local port or memory. Nothing here blames a backend for them: not passive
//! health, not outlier detection, not the health checks (the policy's `shortage` step says
//! what a request does instead).

/// Whether a failed connect was refused by this machine: this process's open-file limit
/// (EMFILE), the system's (ENFILE), socket buffers (ENOBUFS), memory (ENOMEM) or local ports
/// (EADDRNOTAVAIL).
pub fn refused(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

/// The system error at the root of a Pingora error, if there is one.
pub fn io_cause(e: &pingora_core::Error) -> Option<&std::io::Error> {
    use pingora_core::Error;
    let mut c: &(dyn std::error::Error + 'static) = e.cause.as_deref()?;
    loop {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        // Pingora boxes a cause that is itself a Pingora error as given: `Box<Error>` or not
        let inner = c
            .downcast_ref::<Error>()
            .or_else(|| c.downcast_ref::<Box<Error>>().map(|b| &**b));
        c = match inner {
            Some(pe) => pe.cause.as_deref()?,
            None => c.source()?,
        };
    }
}

/// Whether a Pingora error is a connect this machine refused.
pub fn refused_in(e: &pingora_core::Error) -> bool {
    io_cause(e).is_some_and(refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_core::{Error, ErrorType};

    #[test]
    fn only_local_shortages_are_local() {
        for code in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::EADDRNOTAVAIL,
        ] {
            assert!(refused(&std::io::Error::from_raw_os_error(code)), "{code}");
        }
        for code in [libc::ECONNREFUSED, libc::EHOSTUNREACH, libc::ETIMEDOUT] {
            assert!(!refused(&std::io::Error::from_raw_os_error(code)), "{code}");
        }
        assert!(!refused(&std::io::ErrorKind::TimedOut.into()));
    }

    /// As Pingora's connector reports a socket it could not open: the system error two
    /// Pingora errors down, the inner one boxed.
    #[test]
    fn the_system_error_is_found_under_nested_pingora_errors() {
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        let socket = Error::because(ErrorType::SocketError, "failed to create socket", emfile);
        let outer = Error::because(ErrorType::InternalError, "Fail to connect", socket);
        assert!(refused_in(&outer));
        let refused_conn = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        let plain = Error::because(ErrorType::ConnectRefused, "connect", refused_conn);
        assert!(!refused_in(&plain));
        assert!(!refused_in(&Error::new(ErrorType::ConnectTimedout)));
    }
}
