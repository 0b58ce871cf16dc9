//! gRPC unary calls over bare HTTP/2 (the `h2` crate, without tonic or hyper), for measuring:
//!
//! - [`LeanClient`]: one connection that sends the headers grpc-go (the kubelet's gRPC) sends,
//!   `:authority localhost`, `content-type: application/grpc`, `te: trailers`, and the message
//!   in gRPC's 5-byte framing; it checks `grpc-status` and returns the answer's message bytes.
//!   It costs the measuring side less than tonic's client, so the figures are more nodeprep's.
//! - [`serve_fixed`]: a bare server that answers every call with one fixed message and
//!   `grpc-status: 0`, with no gRPC stack and no work: the floor any gRPC server over h2 sits on
//!   on this machine.

use std::path::Path;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

/// grpc-go's user agent, as the kubelet sends it.
pub const GRPC_GO_USER_AGENT: &str = "grpc-go/1.72.1";

/// A message in gRPC's framing: uncompressed flag, 4-byte big-endian length, the bytes.
pub fn frame(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).expect("message under 4 GiB"));
    message.encode(&mut buf).expect("capacity reserved");
    buf.freeze()
}

/// One HTTP/2 connection to a gRPC server on a unix socket.
#[derive(Clone)]
pub struct LeanClient {
    send: h2::client::SendRequest<Bytes>,
}

impl LeanClient {
    /// Dials `socket`; the connection is driven by a task on the current runtime.
    pub async fn connect(socket: &Path) -> LeanClient {
        let io = UnixStream::connect(socket).await.expect("dial the plugin");
        let (send, conn) = h2::client::handshake(io).await.expect("HTTP/2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        LeanClient { send }
    }

    /// Calls `path` with an already framed request ([`frame`]); the answer's message bytes, or the
    /// `grpc-status` and `grpc-message` the server sent.
    pub async fn unary(&self, path: &str, framed: Bytes) -> Result<Bytes, String> {
        let mut send = self.send.clone().ready().await.map_err(|e| format!("connection: {e}"))?;
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://localhost{path}"))
            .header("content-type", "application/grpc")
            .header("user-agent", GRPC_GO_USER_AGENT)
            .header("te", "trailers")
            .body(())
            .expect("request");
        let (resp, mut stream) = send.send_request(req, false).map_err(|e| format!("send: {e}"))?;
        stream.send_data(framed, true).map_err(|e| format!("send data: {e}"))?;
        let (parts, mut body) = resp.await.map_err(|e| format!("response: {e}"))?.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(format!("HTTP status {}", parts.status));
        }
        if let Some(status) = grpc_error(&parts.headers) {
            return Err(status); // trailers-only answer
        }
        let mut data = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| format!("body: {e}"))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.map_err(|e| format!("trailers: {e}"))?.unwrap_or_default();
        if let Some(status) = grpc_error(&trailers) {
            return Err(status);
        }
        if trailers.get("grpc-status").is_none() {
            return Err("no grpc-status".into());
        }
        if data.len() < 5 || data[0] != 0 {
            return Err(format!("not one uncompressed gRPC message: {} bytes", data.len()));
        }
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        if data.len() != 5 + len {
            return Err(format!("message of {} bytes framed as {len}", data.len() - 5));
        }
        Ok(data.freeze().slice(5..))
    }
}

/// `grpc-status` other than 0, with its message.
fn grpc_error(headers: &http::HeaderMap) -> Option<String> {
    let status = headers.get("grpc-status")?.to_str().unwrap_or("?");
    (status != "0").then(|| {
        let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or("");
        format!("grpc-status {status}: {message}")
    })
}

/// Serves every call on `listener` with `answer` (framed) and `grpc-status: 0`, each stream on a
/// task of its own (as hyper does), on the current runtime.
pub fn serve_fixed(listener: UnixListener, answer: Bytes) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(io).await else { return };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let answer = answer.clone();
                    tokio::spawn(async move {
                        let mut body = req.into_body();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                        }
                        let head = http::Response::builder().header("content-type", "application/grpc").body(());
                        let Ok(mut stream) = respond.send_response(head.expect("response"), false) else { return };
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let _ = stream.send_data(answer, false).and_then(|()| stream.send_trailers(trailers));
                    });
                }
            });
        }
    })
}
