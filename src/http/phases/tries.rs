//! What a failed try means for the general engine: a Pingora error in the policy's terms
//! ([`failure`], [`failed_try`]), and the policy's retry decision on it.

use super::super::{content_length, Ctx, HttpProxy};
use crate::policy;
use crate::policy::answer::Failure;
use crate::upstream::bit;
use log::warn;
use pingora_core::{Error, ErrorSource, ErrorType};
use pingora_proxy::Session;

/// What a Pingora error means, in the policy's terms.
pub(super) fn failure(e: &Error) -> Result<Failure, u16> {
    let timeout = matches!(
        e.etype(),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
    );
    Ok(match (e.etype(), e.esource()) {
        (ErrorType::HTTPStatus(c), _) => return Err(*c),
        (ErrorType::ConnectTimedout, ErrorSource::Upstream) => Failure::ConnectTimeout,
        (_, ErrorSource::Upstream) if timeout => Failure::ResponseTimeout,
        (
            ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::TLSHandshakeFailure
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::InvalidCert,
            ErrorSource::Upstream,
        ) => Failure::ConnectFailed,
        (_, ErrorSource::Upstream) => Failure::BadResponse,
        (
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
            ErrorSource::Downstream,
        ) => Failure::ClientGone,
        // The client reset its HTTP/2 stream (a cancel) or the connection went away.
        (ErrorType::H2Error, ErrorSource::Downstream) => Failure::ClientGone,
        (ErrorType::ReadTimedout, ErrorSource::Downstream) => Failure::ClientTimeout,
        (_, ErrorSource::Downstream) => Failure::BadRequest,
        _ => Failure::Internal,
    })
}

/// What a failed try was, for [`policy::retry`]: a reset or a timeout of the backend's
/// side; anything else is not retried.
pub(super) fn failed_try(e: &Error) -> Option<policy::retry::Cause> {
    if e.esource() != &ErrorSource::Upstream {
        return None;
    }
    match e.etype() {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => Some(policy::retry::Cause::Timeout),
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => {
            Some(policy::retry::Cause::Reset)
        }
        _ => None,
    }
}

impl HttpProxy {
    /// The policy's retry decision for the try that just failed with `cause`.
    pub(super) fn retry(
        &self,
        session: &Session,
        ctx: &Ctx,
        pool: &crate::upstream::Pool,
        cause: policy::retry::Cause,
    ) -> bool {
        let req = session.req_header();
        policy::retry::retry(
            pool,
            policy::retry::Try {
                method: req.method.as_str(),
                cause,
                attempts: ctx.attempts,
                body_replayable: policy::retry::body_replayable(
                    content_length(req),
                    session.as_ref().retry_buffer_truncated(),
                ),
                // a forwarded 1xx is not the response: the final one may still come from
                // another backend
                response_started: ctx.head_seen
                    || session
                        .response_written()
                        .is_some_and(|h| !h.status.is_informational()),
                started: ctx.started.unwrap_or_else(std::time::Instant::now),
            },
        )
    }

    /// A try after which the request goes to another backend (not after connect failures,
    /// which `fail_to_connect` counts): told to outlier detection, and logged.
    pub(super) fn retried(&self, session: &Session, ctx: &mut Ctx, cause: policy::retry::Cause) {
        let Some(slot) = ctx.pick.as_ref().map(|p| p.slot.clone()) else {
            return;
        };
        ctx.tried |= bit(slot.index);
        if let Some(r) = self.route(ctx) {
            policy::outlier::observe(&r.pool, &slot, true);
        }
        warn!(
            "{}: backend {} failed {} {} ({cause:?}): retrying on another backend",
            self.listener.name,
            slot.label,
            session.req_header().method,
            session.req_header().uri
        );
    }
}
