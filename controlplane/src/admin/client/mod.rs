//! A client of the admin socket (what `sluicectl` uses): one HTTP/1.1 request per connection.
//! [`tables`] renders the documents it fetches as `sluicectl`'s human output.
pub mod tables;

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to {}: {source}; is sluiced running, and are you its user or root? (--socket chooses another socket)", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("admin socket {}: {message}", path.display())]
    Http {
        /// The socket.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// An answer: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body (JSON).
    pub body: String,
}

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Sends `method target` (with a JSON `body`, if any) to the admin socket at `socket`.
///
/// # Errors
/// [`ClientError`] when the socket cannot be reached or the exchange fails.
pub async fn request(
    socket: &Path,
    method: &str,
    target: &str,
    body: Option<String>,
) -> Result<Answer, ClientError> {
    let http = |message: String| ClientError::Http {
        path: socket.to_path_buf(),
        message,
    };
    let (mut send, driver, req) = open(socket, method, target, body.unwrap_or_default()).await?;
    let exchange = async {
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| http(format!("request failed: {e}")))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| http(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    };
    let out = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| http(format!("no answer within {TIMEOUT:?}")))?;
    driver.abort();
    out
}

/// How a streamed request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Streamed {
    /// The daemon streamed an answer (200) to its end.
    Done,
    /// The daemon refused: status and JSON error body.
    Refused(Answer),
}

/// Sends `method target` with a JSON `body` and hands each piece of a 200 answer's body to
/// `sink` as it arrives, with no time limit (a capture or trace runs until it ends or the
/// process is interrupted). A `sink` error ends the request (the connection closes, which
/// ends the capture on the daemon's side).
///
/// # Errors
/// [`ClientError`] when the socket cannot be reached, the exchange fails, or `sink` fails.
pub async fn stream(
    socket: &Path,
    method: &str,
    target: &str,
    body: String,
    mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<Streamed, ClientError> {
    let http = |message: String| ClientError::Http {
        path: socket.to_path_buf(),
        message,
    };
    let (mut send, driver, req) = open(socket, method, target, body).await?;
    let resp = tokio::time::timeout(TIMEOUT, send.send_request(req))
        .await
        .map_err(|_| http(format!("no answer within {TIMEOUT:?}")))?
        .map_err(|e| http(format!("request failed: {e}")))?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    if status != 200 {
        let bytes = body
            .collect()
            .await
            .map_err(|e| http(format!("reading the answer: {e}")))?
            .to_bytes();
        driver.abort();
        return Ok(Streamed::Refused(Answer {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }));
    }
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| http(format!("reading the stream: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if let Err(e) = sink(&data) {
                driver.abort();
                return Err(http(format!("cannot write the output: {e}")));
            }
        }
    }
    driver.abort();
    Ok(Streamed::Done)
}

/// Connects to the admin socket at `socket` and builds the request `method target` with
/// `body`: the sender, the task driving the connection (abort it when done) and the request.
async fn open(
    socket: &Path,
    method: &str,
    target: &str,
    body: String,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        tokio::task::JoinHandle<hyper::Result<()>>,
        Request<Full<Bytes>>,
    ),
    ClientError,
> {
    let http = |message: String| ClientError::Http {
        path: socket.to_path_buf(),
        message,
    };
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.to_path_buf(),
            source,
        })?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http(format!("handshake: {e}")))?;
    let driver = tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(target)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| http(format!("bad request: {e}")))?;
    Ok((send, driver, req))
}
