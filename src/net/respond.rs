//! The proxy's own answers ([`crate::policy::answer::Answer`]) written on a Pingora session,
//! for the engines that hold one (Pingora's phases, the forward proxy).

use crate::policy::answer::Answer;
use bytes::Bytes;
use pingora_core::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// Answer from the proxy itself, with a body and a content length.
pub async fn respond(session: &mut Session, code: u16, close: bool) -> Result<()> {
    let a = if close {
        Answer::closing(code)
    } else {
        Answer::new(code)
    };
    respond_answer(session, &a).await
}

/// Write one of the policy's answers on a Pingora session.
pub async fn respond_answer(session: &mut Session, a: &Answer) -> Result<()> {
    let body = a.body();
    let fields = a.fields(body.len());
    write_page(session, a.status, body, &fields, a.close).await
}

async fn write_page(
    session: &mut Session,
    code: u16,
    body: Bytes,
    fields: &[(&'static str, String)],
    close: bool,
) -> Result<()> {
    let mut resp = ResponseHeader::build(code, Some(fields.len() + 1))?;
    for (k, v) in fields {
        resp.insert_header(*k, v.as_str())?;
    }
    if close {
        resp.insert_header(http::header::CONNECTION, "close")?;
        session.set_keepalive(None);
    } else if !session.is_http2() && !session.is_body_empty() {
        // An HTTP/1 connection stays usable after an answer of our own only once the request
        // body is read (else its bytes would be taken for the next request). The body that
        // is already here is read and dropped, as the lean engine does; nothing is waited
        // for, so a body still on its way leaves it unread and Pingora closes the connection.
        let drain = session.drain_request_body();
        let _ = tokio::time::timeout(std::time::Duration::ZERO, drain).await;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    // The end is always written, for HEAD too: Pingora's session does not pass a header's
    // end-of-stream on, and an HTTP/2 stream left open is reset (CANCEL) after an error.
    let body = (!head_only).then_some(body);
    session.write_response_body(body, true).await?;
    Ok(())
}
