//! The admin socket: HTTP/1.1 on a Unix socket, mode 0600, peers checked by credentials.
//!
//! The socket is bound under a temporary name, made 0600, then renamed into place, so it is
//! never reachable with wider permissions. A connection whose peer (`SO_PEERCRED`) is neither
//! the socket's owner (the daemon's user) nor root gets `403` and nothing else, even if
//! someone loosened the file's mode.
use std::convert::Infallible;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{handle, AdminState, Reply};

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024;

/// A running admin socket; dropping it stops serving and removes the socket file.
#[derive(Debug)]
pub struct AdminServer {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Binds `path` (creating its directory) and serves `state` on it from the current tokio
    /// runtime.
    ///
    /// # Errors
    /// The directory cannot be created, another process answers on `path`, or binding fails.
    pub fn start(state: Arc<AdminState>, path: &Path) -> io::Result<AdminServer> {
        let listener = bind_private(path)?;
        let owner = std::fs::metadata(path)?.uid();
        info!(socket = %path.display(), owner, "admin socket listening");
        let task = tokio::spawn(serve(listener, state, owner));
        Ok(AdminServer {
            path: path.to_path_buf(),
            task,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds a Unix socket at `path` with mode 0600: under a temporary name first, then renamed.
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    let ctx = |what: &str, e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("admin socket {}: {what}: {e}", path.display()),
        )
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| ctx("cannot create its directory", e))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| ctx("cannot set its directory's mode", e))?;
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "admin socket {}: another process (a running sluiced?) answers on it; stop \
                     it or set [admin] socket to another path",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path).map_err(|e| ctx("cannot remove the stale socket", e))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(|e| ctx("cannot bind", e))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(ctx(
            "cannot make it private (0600) and move it into place",
            e,
        ));
    }
    Ok(listener)
}

async fn serve(listener: UnixListener, state: Arc<AdminState>, owner: u32) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "admin socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let uid = stream.peer_cred().ok().map(|c| c.uid());
        let allowed = matches!(uid, Some(u) if u == owner || u == 0);
        if !allowed {
            warn!(
                peer_uid = uid.map(i64::from).unwrap_or(-1),
                "admin connection refused: peer is neither the daemon's user nor root"
            );
        }
        let st = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let st = st.clone();
                async move { Ok::<_, Infallible>(respond(&st, allowed, uid, owner, req).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

/// A response body streamed from a channel (a capture's pcapng or trace lines); it ends
/// when the sender does. Dropped when the client goes away, which ends the capture.
#[derive(Debug)]
pub(crate) struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// A response: a whole JSON document, or a stream.
type AnyBody = Either<Full<Bytes>, ChannelBody>;

/// Turns a [`Reply`] into an HTTP response.
pub(crate) fn to_response(r: Reply) -> Response<Full<Bytes>> {
    let mut body = r.body;
    body.push('\n');
    Response::builder()
        .status(r.status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"{}\n"))))
}

fn refused(status: u16, message: String) -> Response<Full<Bytes>> {
    let body = serde_json::to_string_pretty(&super::api::ErrorBody {
        status,
        error: message,
    })
    .unwrap_or_default();
    to_response(Reply { status, body })
}

async fn respond(
    st: &Arc<AdminState>,
    allowed: bool,
    uid: Option<u32>,
    owner: u32,
    req: Request<Incoming>,
) -> Response<AnyBody> {
    if !allowed {
        let who = uid.map_or("an unknown user".to_owned(), |u| format!("uid {u}"));
        return refused(
            403,
            format!(
                "connections from {who} are refused: the admin socket serves uid {owner} \
                 (sluiced's user) and root only; run sluicectl as that user or with sudo"
            ),
        )
        .map(Either::Left);
    }
    let method = req.method().as_str().to_owned();
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return refused(
                413,
                format!("cannot read the request body (at most {MAX_BODY} bytes): {e}"),
            )
            .map(Either::Left)
        }
    };
    // Captures stream their answer; everything else is one JSON document.
    let stream = match (method.as_str(), target.as_str()) {
        ("POST", "/v1/capture") => Some((
            "application/vnd.tcpdump.pcap",
            super::capture::start_capture(st, &body),
        )),
        ("POST", "/v1/trace") => Some((
            "application/x-ndjson",
            super::capture::start_trace(st, &body),
        )),
        _ => None,
    };
    match stream {
        Some((kind, Ok(rx))) => Response::builder()
            .status(200)
            .header("content-type", kind)
            .body(Either::Right(ChannelBody(rx)))
            .unwrap_or_else(|_| refused(500, "cannot build the response".into()).map(Either::Left)),
        Some((_, Err(e))) => refused(e.status, e.message).map(Either::Left),
        None => to_response(handle(st, &method, &target, &body).await).map(Either::Left),
    }
}
