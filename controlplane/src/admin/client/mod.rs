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
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.to_path_buf(),
            source,
        })?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http(format!("handshake: {e}")))?;
    let driver = tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(target)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| http(format!("bad request: {e}")))?;
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
