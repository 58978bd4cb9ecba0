//! `POST /v1/capture` and `POST /v1/trace`: the requests, checked against this daemon's
//! ports and workers, then handed to [`crate::capture`], whose output the server streams.
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Bytes;
use tokio::sync::mpsc;

use super::{AdminState, ApiError};
use sluice_dataplane::capture::bpf::Program;

use crate::capture::{self, Names, Output, Spec, WorkerCommands, MAX_SNAPLEN};

/// The body of `POST /v1/capture`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// Port name from the configuration (default: the first port).
    #[serde(default)]
    pub port: Option<String>,
    /// `in`, `out` or `inout` (default), as tcpdump's `-Q`.
    #[serde(default)]
    pub direction: Option<String>,
    /// tcpdump filter expression (default: every packet).
    #[serde(default)]
    pub filter: Option<String>,
    /// Stop after this many packets.
    #[serde(default)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[serde(default)]
    pub duration_seconds: Option<f64>,
    /// Bytes kept per packet (default and maximum 262144).
    #[serde(default)]
    pub snaplen: Option<u32>,
}

/// The body of `POST /v1/trace`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
    /// The client's address.
    pub client: IpAddr,
    /// Only this client port.
    #[serde(default)]
    pub client_port: Option<u16>,
    /// Only packets to (and from) this VIP.
    #[serde(default)]
    pub vip: Option<IpAddr>,
    /// Only this VIP port.
    #[serde(default)]
    pub vip_port: Option<u16>,
    /// Port name (default: the first port).
    #[serde(default)]
    pub port: Option<String>,
    /// Stop after this many packets.
    #[serde(default)]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[serde(default)]
    pub duration_seconds: Option<f64>,
}

impl TraceRequest {
    /// The tcpdump expression that selects the client's packets.
    pub fn filter(&self) -> String {
        let mut f = format!("host {}", self.client);
        if let Some(p) = self.client_port {
            f.push_str(&format!(" and port {p}"));
        }
        if let Some(v) = self.vip {
            f.push_str(&format!(" and host {v}"));
        }
        if let Some(p) = self.vip_port {
            f.push_str(&format!(" and port {p}"));
        }
        f
    }
}

fn body<T: serde::de::DeserializeOwned>(b: &[u8], what: &str) -> Result<T, ApiError> {
    let b = if b.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        b
    };
    serde_json::from_slice(b)
        .map_err(|e| ApiError::bad_request(format!("invalid {what} request: {e}")))
}

fn duration(s: Option<f64>) -> Result<Option<Duration>, ApiError> {
    match s {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => {
            Ok(Some(Duration::from_secs_f64(s)))
        }
        Some(s) => Err(ApiError::bad_request(format!(
            "duration_seconds {s} is out of range (more than 0, at most 86400)"
        ))),
    }
}

/// Starts the capture `spec` (its port, filter and limits already set here) on every worker.
fn run(
    st: &Arc<AdminState>,
    mut spec: Spec,
    port: Option<&str>,
) -> Result<mpsc::Receiver<Bytes>, ApiError> {
    let (index, p) = match port {
        None => st
            .ports
            .first()
            .map(|p| (0, p))
            .ok_or_else(|| ApiError::not_found("this sluiced has no port to capture on"))?,
        Some(name) => st
            .ports
            .iter()
            .enumerate()
            .find(|(_, p)| p.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = st.ports.iter().map(|p| p.name.as_str()).collect();
                ApiError::not_found(format!(
                    "no port named {name:?}; the ports are: {}",
                    names.join(", ")
                ))
            })?,
    };
    spec.port = index;
    spec.port_name = p.name.clone();
    spec.device = p.device.clone();
    let filter = dpdk_sys::PcapProgram::compile(&spec.filter, spec.snaplen)
        .and_then(|p| Program::new(&p.instructions()))
        .map_err(|e| ApiError::bad_request(format!("invalid filter {:?}: {e}", spec.filter)))?;
    let guard = st.captures.try_enter().ok_or_else(|| {
        ApiError::conflict(
            "a capture or trace is already running on this sluiced; one runs at a time \
             (stop the other sluicectl capture/trace first)",
        )
    })?;
    let workers: Vec<WorkerCommands> = st
        .workers
        .iter()
        .map(|w| (w.index, w.commands.clone()))
        .collect();
    let names = Names::from_report(&st.live().report);
    tracing::info!(port = %spec.port_name, filter = %spec.filter, "capture started");
    Ok(capture::start(spec, filter, &workers, names, guard))
}

/// `POST /v1/capture`: the pcapng stream, or why not.
pub(crate) fn start_capture(
    st: &Arc<AdminState>,
    b: &[u8],
) -> Result<mpsc::Receiver<Bytes>, ApiError> {
    let r: CaptureRequest = body(b, "capture")?;
    let (rx, tx) = match r.direction.as_deref().unwrap_or("inout") {
        "in" => (true, false),
        "out" => (false, true),
        "inout" => (true, true),
        d => {
            return Err(ApiError::bad_request(format!(
                "direction {d:?}: use in, out or inout"
            )))
        }
    };
    let snaplen = r.snaplen.unwrap_or(MAX_SNAPLEN);
    if snaplen == 0 || snaplen > MAX_SNAPLEN {
        return Err(ApiError::bad_request(format!(
            "snaplen {snaplen}: use 1 to {MAX_SNAPLEN}"
        )));
    }
    let spec = Spec {
        port: 0,
        port_name: String::new(),
        device: String::new(),
        rx,
        tx,
        snaplen,
        filter: r.filter.unwrap_or_default(),
        count: r.count,
        duration: duration(r.duration_seconds)?,
        output: Output::Pcapng,
    };
    run(st, spec, r.port.as_deref())
}

/// `POST /v1/trace`: the trace lines (JSON, one a line), or why not.
pub(crate) fn start_trace(
    st: &Arc<AdminState>,
    b: &[u8],
) -> Result<mpsc::Receiver<Bytes>, ApiError> {
    let r: TraceRequest = body(b, "trace")?;
    let spec = Spec {
        port: 0,
        port_name: String::new(),
        device: String::new(),
        rx: true,
        tx: true,
        snaplen: MAX_SNAPLEN,
        filter: r.filter(),
        count: r.count,
        duration: duration(r.duration_seconds)?,
        output: Output::Trace { client: r.client },
    };
    run(st, spec, r.port.as_deref())
}
