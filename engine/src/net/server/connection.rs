//! Serving: the accept loop, one task per admitted connection (first-request and idle
//! timeouts, graceful drain) and per request (read the header, answer from the callbacks).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use iroh::endpoint::{Connection, RecvStream, SendStream, VarInt};
use iroh::Endpoint;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::limits::{admit, Handshakes, PeerCounts, Place, Places};
use super::{Inner, Loader, Resolver};
use crate::net::protocol::{
    encode_frame, read_frame, ErrorCode, FrameError, NetError, ReadRangeOk, ReadRangeRequest, Request,
    ResponseHeader, CLOSE_IDLE, CLOSE_SHUTDOWN, MAX_REQUEST_HEADER,
};

async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    // An error means the handle is gone without shutdown: keep serving until the runtime ends.
    if rx.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

pub(super) async fn accept_loop<R: Resolver, L: Loader>(
    endpoint: Endpoint,
    inner: Arc<Inner<R, L>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut handshakes = Handshakes::new(inner.max_handshakes);
    let places = Places::new(inner.max_connections);
    let per_peer: PeerCounts = Arc::default();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = wait_shutdown(&mut shutdown) => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                handshakes.start(incoming, inner.handshake_timeout);
            }
            Some(done) = handshakes.next_done() => {
                let Some(conn) = done else { continue };
                let Some((place, peer_share)) = admit(&conn, &inner, &places, &per_peer) else { continue };
                let (inner, shutdown) = (inner.clone(), shutdown.clone());
                connections.spawn(async move {
                    serve_connection(conn, place, inner, shutdown).await;
                    drop(peer_share);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    handshakes.abort_all();
    // Each connection task saw the same signal and is draining its requests.
    let grace = inner.shutdown_timeout.saturating_add(Duration::from_secs(1));
    let _ = tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} }).await;
    connections.abort_all();
}

async fn serve_connection<R: Resolver, L: Loader>(
    conn: Connection,
    place: Place,
    inner: Arc<Inner<R, L>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let place = Arc::new(place);
    let slots = Arc::new(Semaphore::new(inner.max_requests));
    let mut requests = JoinSet::new();
    let idle = tokio::time::sleep(inner.idle_timeout);
    tokio::pin!(idle);
    let first_request = tokio::time::sleep(inner.first_request_timeout);
    tokio::pin!(first_request);
    let mut first_request_checked = false;
    let (mut code, mut reason): (u32, &[u8]) = (CLOSE_SHUTDOWN, b"server shutting down");
    loop {
        tokio::select! {
            _ = wait_shutdown(&mut shutdown) => break,
            accepted = conn.accept_bi() => {
                let Ok((send, recv)) = accepted else { break };
                let (inner, place) = (inner.clone(), place.clone());
                let slot = slots.clone().try_acquire_owned().ok();
                requests.spawn(async move { serve_request(&inner, &place, send, recv, slot).await });
            }
            _ = &mut first_request, if !first_request_checked => {
                first_request_checked = true;
                if !place.asked() {
                    // Nothing to drain: no header has arrived on it.
                    requests.abort_all();
                    (code, reason) = (CLOSE_IDLE, b"no request");
                    break;
                }
            }
            Some(_) = requests.join_next(), if !requests.is_empty() => {
                if requests.is_empty() {
                    idle.as_mut().reset(tokio::time::Instant::now() + inner.idle_timeout);
                }
            }
            _ = &mut idle, if requests.is_empty() => {
                (code, reason) = (CLOSE_IDLE, b"idle");
                break;
            }
        }
    }
    let _ =
        tokio::time::timeout(inner.shutdown_timeout, async { while requests.join_next().await.is_some() {} })
            .await;
    requests.abort_all();
    conn.close(VarInt::from_u32(code), reason);
}

/// Reads one request, answers it, and waits until the client has the whole answer (so a
/// shutdown right after does not cut it off).
async fn serve_request<R: Resolver, L: Loader>(
    inner: &Inner<R, L>,
    place: &Place,
    mut send: SendStream,
    mut recv: RecvStream,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let header = tokio::time::timeout(inner.header_timeout, read_frame(&mut recv, MAX_REQUEST_HEADER)).await;
    // A whole header makes the connection busy (not to be evicted) until it is answered.
    let answering = matches!(header, Ok(Ok(_))).then(|| place.answering());
    let result = match header {
        Err(_) => {
            let _ = recv.stop(VarInt::from_u32(1));
            Err(NetError::status(
                ErrorCode::BadRequest,
                format!("the request header did not arrive within {:?}", inner.header_timeout),
            ))
        }
        Ok(Err(FrameError::TooLarge { len, limit })) => {
            let _ = recv.stop(VarInt::from_u32(1));
            Err(NetError::status(
                ErrorCode::HeaderTooLarge,
                format!("request header of {len} bytes exceeds {limit}"),
            ))
        }
        Ok(Err(FrameError::Io(e))) => {
            Err(NetError::status(ErrorCode::BadRequest, format!("incomplete header: {e}")))
        }
        Ok(Ok(_)) if slot.is_none() => {
            Err(NetError::status(ErrorCode::Busy, "too many requests on this connection"))
        }
        Ok(Ok(header)) => match Request::decode(&header) {
            Ok(request) => {
                if let Request::ReadRange(ReadRangeRequest { priority: Some(priority), .. }) = &request {
                    // Among this connection's answers only: one client cannot push others back.
                    let _ = send.set_priority(*priority);
                }
                answer(inner, request).await
            }
            Err(e) => Err(e),
        },
    };
    let (header, data) = match result {
        Ok((header, data)) => (header, data),
        Err(e) => (ResponseHeader::error(&e), None),
    };
    let frame = match encode_frame(&header) {
        Ok(f) => f,
        Err(e) => return tracing::warn!("encoding a response: {e}"),
    };
    if send.write_chunk(frame).await.is_err() {
        return;
    }
    if let Some(data) = data {
        if send.write_chunk(data).await.is_err() {
            return;
        }
    }
    drop(slot);
    drop(answering);
    if send.finish().is_ok() {
        let _ = tokio::time::timeout(ACK_WAIT, send.stopped()).await;
    }
}

async fn answer<R: Resolver, L: Loader>(
    inner: &Inner<R, L>,
    request: Request,
) -> Result<(ResponseHeader, Option<Bytes>), NetError> {
    match request {
        Request::Get(get) => {
            let mut info = inner
                .resolver
                .resolve(get.stream.clone())
                .await?
                .ok_or_else(|| unknown_stream(&get.stream))?;
            info.read_window = inner.window;
            Ok((ResponseHeader::ok(&info)?, None))
        }
        Request::ReadRange(read) => {
            let info = inner
                .resolver
                .resolve(read.stream.clone())
                .await?
                .ok_or_else(|| unknown_stream(&read.stream))?;
            let track = info.track(&read.track).ok_or_else(|| {
                NetError::status(
                    ErrorCode::UnknownTrack,
                    format!("no track {:?} in {:?}", read.track, read.stream),
                )
            })?;
            let size = track.size(read.file).ok_or_else(|| {
                NetError::status(
                    ErrorCode::OutOfRange,
                    format!(
                        "track {:?} of {:?} has {} file(s), no file {}",
                        read.track,
                        read.stream,
                        track.sizes.len(),
                        read.file
                    ),
                )
            })?;
            inner.window.check(read.start, read.len, size)?;
            let data = inner.loader.load(read.stream, read.track, read.file, read.start, read.len).await?;
            if data.len() as u64 != read.len {
                return Err(NetError::status(
                    ErrorCode::Internal,
                    format!("loader returned {} bytes for a read of {}", data.len(), read.len),
                ));
            }
            Ok((ResponseHeader::ok(&ReadRangeOk { len: read.len })?, Some(data)))
        }
    }
}

/// How long a finished response may wait for the client's acknowledgement.
const ACK_WAIT: Duration = Duration::from_secs(30);

fn unknown_stream(name: &str) -> NetError {
    NetError::status(ErrorCode::UnknownStream, format!("no stream {name:?}"))
}
