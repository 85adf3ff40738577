//! Reading a request body whole during admission, for a stage that must see it before any
//! upstream is chosen (a script's `on_request_body`).

use crate::edge;
use crate::errors::GatewayError;
use bytes::{Bytes, BytesMut};
use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;
use std::time::Instant;

/// Reads the body up to `max` bytes by `deadline`. Pingora's retry buffer keeps what is read
/// (up to 64 KiB, the most `max` can be) and sends it upstream after the head, as it does on
/// a retry, so the body is neither lost nor read twice.
pub(super) async fn read_whole(
    session: &mut Session,
    max: usize,
    deadline: Option<Instant>,
) -> Result<Bytes, GatewayError> {
    edge::check_content_length(session.req_header(), max as u64)?;
    answer_expect_continue(session).await?;
    session.as_downstream_mut().enable_retry_buffering();
    let mut body = BytesMut::new();
    loop {
        let read = session.read_request_body();
        let chunk = match deadline {
            Some(at) => tokio::time::timeout_at(at.into(), read)
                .await
                .map_err(|_| GatewayError::RequestTimeout)?,
            None => read.await,
        };
        let chunk =
            chunk.map_err(|_| GatewayError::BadRequest("the request body could not be read"))?;
        let Some(chunk) = chunk else {
            return Ok(body.freeze());
        };
        if body.len() + chunk.len() > max {
            return Err(GatewayError::PayloadTooLarge);
        }
        body.extend_from_slice(&chunk);
    }
}

/// A client that sent `Expect: 100-continue` waits for the go-ahead before sending the body:
/// the gateway gives it, and the upstream is not asked again.
async fn answer_expect_continue(session: &mut Session) -> Result<(), GatewayError> {
    let expects = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !expects {
        return Ok(());
    }
    if let ServerSession::H1(h1) = session.as_downstream_mut() {
        h1.write_continue_response()
            .await
            .map_err(|_| GatewayError::BadRequest("the client went away"))?;
    }
    session
        .req_header_mut()
        .remove_header(&http::header::EXPECT);
    Ok(())
}
