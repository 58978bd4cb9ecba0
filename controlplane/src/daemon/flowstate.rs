//! # Flows kept across a planned restart: `<admin.state_dir>/flows.bin`
//!
//! At a clean stop, once the workers have stopped polling, each hands back its live flows
//! (`sluice_dataplane::pipeline::SavedFlow`, by address, never by id) and [`save`] writes them
//! with a [`Header`] (a temporary file, flushed, then renamed, so a crash leaves no half file).
//! At start, [`take`] reads the file and deletes it (it is single use), refuses it when it is
//! older than [`MAX_AGE`] or its header does not match this process (worker count, NAT
//! addresses and port range, hash seed: a flow's NAT port must still belong to the worker that
//! restores it), and resolves each flow against the first snapshot. The workers insert theirs
//! before they poll.
//!
//! ## Design: a file written at stop, not a live handover
//! A handover from the old process to a new one over a socket would also carry the flows that
//! change during the restart, but needs both processes at once: two EALs, the NIC's queues,
//! hugepages and the table memory twice. The file needs none of that, and what it loses is
//! small: flows born or ended in the seconds between the stop and the start (their packets
//! went nowhere meanwhile anyway), and the state of an unclean stop (a crash or SIGKILL writes
//! nothing). Only a restart under the same configuration restores.
//!
//! ## Format
//! Little-endian binary (JSON would take several times the bytes for a million flows):
//! the magic `SLUICEFL`, a `u16` version, the header, a `u64` flow count, then one record per
//! flow whose addresses take 4 or 16 bytes by family: 45 bytes per IPv4 NAT flow, 93 per IPv6
//! one. Version 2 adds the SYN proxy's state of the flows it opened: bit 1 of the record's
//! fourth byte (bit 0: NAT), then 5 bytes after the NAT part (the sequence offset or cookie,
//! and the backend's window scale with the handshake flag). A file without such a flow is
//! written as version 1, and both versions are read, so a restart across an upgrade or a
//! downgrade keeps the flows whenever the older process can read them.
use std::io::{BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_dataplane::conntrack::FlowState;
use sluice_dataplane::pipeline::{RestoreFlow, SavedFlow, SavedNat, SavedProxy, Unrestorable};
use sluice_dataplane::snapshot::{Local, Snapshot};
use tracing::{info, warn};

/// The file's name in `admin.state_dir`.
pub const FILE_NAME: &str = "flows.bin";

/// A file older than this is refused: its flows' clients have retransmitted into the void
/// for that long, and a long gap means this was not a planned restart.
pub const MAX_AGE: Duration = Duration::from_secs(60);

const MAGIC: &[u8; 8] = b"SLUICEFL";
/// The version written when a flow carries the SYN proxy's state, and the newest read.
const VERSION: u16 = 2;
/// The version without the SYN proxy's state.
const VERSION_1: u16 = 1;

/// The flows file in `state_dir`.
pub fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// What a saved flow needs of the process that restores it: the same as the one that saved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// When the file was written, in milliseconds since the Unix epoch.
    pub written_unix_ms: u64,
    /// Workers (each restores its own flows; NAT port slices depend on the count).
    pub workers: u16,
    /// `forwarding.hash_seed`.
    pub hash_seed: u64,
    /// NAT IPv4 addresses, in order (a flow's NAT address is an index).
    pub nat_ipv4: Vec<[u8; 4]>,
    /// NAT IPv6 addresses, in order.
    pub nat_ipv6: Vec<[u8; 16]>,
    /// NAT local port range.
    pub nat_ports: (u16, u16),
}

impl Header {
    /// The header of a process with `workers` workers, hash seed `hash_seed` and identity
    /// `local`, written now.
    pub fn new(workers: u16, hash_seed: u64, local: &Local) -> Header {
        Header {
            written_unix_ms: unix_ms(SystemTime::now()),
            workers,
            hash_seed,
            nat_ipv4: local.nat_ipv4.clone(),
            nat_ipv6: local.nat_ipv6.clone(),
            nat_ports: (local.nat_port_min, local.nat_port_max),
        }
    }

    /// What differs from `now`'s header that forbids a restore (`None`: nothing).
    fn mismatch(&self, now: &Header) -> Option<&'static str> {
        if self.workers != now.workers {
            Some("the worker count")
        } else if self.hash_seed != now.hash_seed {
            Some("forwarding.hash_seed")
        } else if self.nat_ipv4 != now.nat_ipv4 || self.nat_ipv6 != now.nat_ipv6 {
            Some("the NAT addresses")
        } else if self.nat_ports != now.nat_ports {
            Some("the NAT port range")
        } else {
            None
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why the flows file could not be written or used.
#[derive(Debug, thiserror::Error)]
pub enum FlowStateError {
    /// The file cannot be written.
    #[error(
        "cannot write {}: {source}; the flows are not kept across this restart \
         (check admin.state_dir and its permissions)",
        path.display()
    )]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file exists but cannot be read.
    #[error(
        "cannot read {}: {source}; starting without the previous process's flows \
         (check admin.state_dir and its permissions)",
        path.display()
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a flows file of this version.
    #[error("{} is invalid ({message}); starting without the previous process's flows", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The file is too old.
    #[error(
        "{} was written {age_s} s ago, more than {max_s} s: starting without the previous \
         process's flows (they are kept only across a quick, planned restart)",
        path.display()
    )]
    TooOld {
        /// The file.
        path: PathBuf,
        /// Its age in seconds.
        age_s: u64,
        /// The limit.
        max_s: u64,
    },
    /// The file was written under another configuration.
    #[error(
        "{} was written with another {what}: starting without the previous process's flows \
         (flows are restored only under the same configuration)",
        path.display()
    )]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// What differs.
        what: &'static str,
    },
}

/// Writes `flows` under `header` to `path` atomically, creating the directory if needed.
///
/// # Errors
/// [`FlowStateError::Write`].
pub fn save(path: &Path, header: &Header, flows: &[SavedFlow]) -> Result<(), FlowStateError> {
    let err = |source| FlowStateError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("bin.tmp");
    let write = || -> std::io::Result<()> {
        let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        encode(&mut w, header, flows)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

/// The header and flows in `path`, and deletes the file (single use, also when invalid);
/// `None` if there is no file.
///
/// # Errors
/// [`FlowStateError::Read`] or [`FlowStateError::Invalid`].
pub fn load(path: &Path) -> Result<Option<(Header, Vec<SavedFlow>)>, FlowStateError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(FlowStateError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let _ = std::fs::remove_file(path);
    decode(&bytes)
        .map(Some)
        .map_err(|message| FlowStateError::Invalid {
            path: path.to_path_buf(),
            message,
        })
}

/// What [`take`] made of the file.
#[derive(Debug, Default)]
pub struct Restored {
    /// Per worker, its flows resolved against the snapshot.
    pub per_worker: Vec<Vec<RestoreFlow>>,
    /// Flows in the file.
    pub saved: usize,
    /// Flows that could not be restored, per [`Unrestorable::ALL`] reason.
    pub skipped: [usize; Unrestorable::ALL.len()],
    /// Flows of a worker this process does not have (a corrupt file).
    pub bad_worker: usize,
}

impl Restored {
    /// Flows handed to the workers.
    pub fn restored(&self) -> usize {
        self.per_worker.iter().map(Vec::len).sum()
    }
}

/// Reads and deletes the flows file at `path` and resolves its flows against `snap`, the
/// first snapshot of a process whose header is `now` (`written_unix_ms`: the time of the
/// start); `Ok(None)` if there is no file. The time since the file was written counts against
/// each flow's remaining lifetime.
///
/// # Errors
/// A [`FlowStateError`] when the file cannot be used at all (none of its flows restored).
pub fn take(
    path: &Path,
    now: &Header,
    snap: &Snapshot,
) -> Result<Option<Restored>, FlowStateError> {
    let Some((h, flows)) = load(path)? else {
        return Ok(None);
    };
    let age_ms = now.written_unix_ms.saturating_sub(h.written_unix_ms);
    if age_ms > MAX_AGE.as_millis() as u64 {
        return Err(FlowStateError::TooOld {
            path: path.to_path_buf(),
            age_s: age_ms / 1000,
            max_s: MAX_AGE.as_secs(),
        });
    }
    if let Some(what) = h.mismatch(now) {
        return Err(FlowStateError::Mismatch {
            path: path.to_path_buf(),
            what,
        });
    }
    let gap = u32::try_from(age_ms).unwrap_or(u32::MAX);
    let mut r = Restored {
        per_worker: vec![Vec::new(); usize::from(now.workers.max(1))],
        saved: flows.len(),
        ..Restored::default()
    };
    for mut f in flows {
        f.remaining_ms = f.remaining_ms.saturating_sub(gap);
        if let Some(n) = &mut f.nat {
            n.remaining_ms = n.remaining_ms.saturating_sub(gap);
        }
        let Some(list) = r.per_worker.get_mut(usize::from(f.worker)) else {
            r.bad_worker += 1;
            continue;
        };
        match f.resolve(snap) {
            Ok(x) => list.push(x),
            Err(why) => {
                if let Some(i) = Unrestorable::ALL.iter().position(|w| *w == why) {
                    r.skipped[i] += 1;
                }
            }
        }
    }
    Ok(Some(r))
}

/// Start-up: the previous process's flows from `state_dir`, per worker, resolved against the
/// first snapshot `snap`, with what was saved, restored and skipped logged. Never fails: a
/// missing file is nothing to restore, an unusable one is logged and ignored.
pub(super) fn restore_at_start(
    state_dir: &Path,
    workers: u16,
    hash_seed: u64,
    snap: &Snapshot,
) -> Vec<Vec<RestoreFlow>> {
    let path = path_in(state_dir);
    let now = Header::new(workers, hash_seed, &snap.local);
    match take(&path, &now, snap) {
        Ok(None) => Vec::new(),
        Ok(Some(r)) => {
            let [frontend_gone, backend_gone, nat_address_gone, expired] = r.skipped;
            info!(
                file = %path.display(),
                saved = r.saved,
                restored = r.restored(),
                frontend_gone,
                backend_gone,
                nat_address_gone,
                expired,
                unknown_worker = r.bad_worker,
                "flows of the previous process restored"
            );
            r.per_worker
        }
        Err(e) => {
            warn!(error = %e, "flows of the previous process not restored");
            Vec::new()
        }
    }
}

/// Clean stop: writes the flows the stopped workers exported to `state_dir`, logged.
pub(super) fn save_at_stop(
    state_dir: &Path,
    workers: u16,
    hash_seed: u64,
    local: &Local,
    flows: &[SavedFlow],
) {
    let path = path_in(state_dir);
    let t = std::time::Instant::now();
    match save(&path, &Header::new(workers, hash_seed, local), flows) {
        Ok(()) => info!(
            file = %path.display(),
            flows = flows.len(),
            ms = t.elapsed().as_millis() as u64,
            "flows saved for the next start"
        ),
        Err(e) => warn!(error = %e, "flows not saved"),
    }
}

fn encode(w: &mut impl Write, h: &Header, flows: &[SavedFlow]) -> std::io::Result<()> {
    w.write_all(MAGIC)?;
    let version = if flows.iter().any(|f| f.proxy.is_some()) {
        VERSION
    } else {
        VERSION_1
    };
    w.write_all(&version.to_le_bytes())?;
    w.write_all(&h.written_unix_ms.to_le_bytes())?;
    w.write_all(&h.workers.to_le_bytes())?;
    w.write_all(&h.hash_seed.to_le_bytes())?;
    w.write_all(&h.nat_ports.0.to_le_bytes())?;
    w.write_all(&h.nat_ports.1.to_le_bytes())?;
    w.write_all(&(h.nat_ipv4.len() as u16).to_le_bytes())?;
    for a in &h.nat_ipv4 {
        w.write_all(a)?;
    }
    w.write_all(&(h.nat_ipv6.len() as u16).to_le_bytes())?;
    for a in &h.nat_ipv6 {
        w.write_all(a)?;
    }
    w.write_all(&(flows.len() as u64).to_le_bytes())?;
    let mut rec = Vec::with_capacity(128);
    for f in flows {
        rec.clear();
        let v6 = f.client.is_ipv6();
        rec.extend_from_slice(&[
            if v6 { 6 } else { 4 },
            f.proto,
            f.state as u8,
            u8::from(f.nat.is_some()) | (u8::from(f.proxy.is_some()) << 1),
        ]);
        rec.extend_from_slice(&f.worker.to_le_bytes());
        for (a, p) in [
            (f.client, f.client_port),
            (f.vip, f.vip_port),
            (f.backend, f.backend_port),
        ] {
            put_addr(&mut rec, a, v6);
            rec.extend_from_slice(&p.to_le_bytes());
        }
        rec.extend_from_slice(&f.remaining_ms.to_le_bytes());
        if let Some(n) = &f.nat {
            put_addr(&mut rec, n.addr, v6);
            rec.extend_from_slice(&n.port.to_le_bytes());
            rec.extend_from_slice(&n.client_mac);
            rec.push(n.state as u8);
            rec.extend_from_slice(&n.remaining_ms.to_le_bytes());
        }
        if let Some(p) = &f.proxy {
            rec.extend_from_slice(&p.seq.to_le_bytes());
            rec.push(p.flags_byte());
        }
        w.write_all(&rec)?;
    }
    w.flush()
}

/// An address in the record's family width (a flow's addresses are all of one family; a
/// backend of the other family cannot occur, and is written as unspecified).
fn put_addr(out: &mut Vec<u8>, a: IpAddr, v6: bool) {
    match (a, v6) {
        (IpAddr::V4(a), false) => out.extend_from_slice(&a.octets()),
        (IpAddr::V6(a), true) => out.extend_from_slice(&a.octets()),
        (_, false) => out.extend_from_slice(&[0; 4]),
        (_, true) => out.extend_from_slice(&[0; 16]),
    }
}

/// A reader over the file's bytes.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.b.len() < n {
            return Err("truncated".into());
        }
        let (x, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(x)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.arr::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn addr(&mut self, v6: bool) -> Result<IpAddr, String> {
        Ok(if v6 {
            IpAddr::from(Ipv6Addr::from(self.arr::<16>()?))
        } else {
            IpAddr::from(Ipv4Addr::from(self.arr::<4>()?))
        })
    }
    fn state(&mut self) -> Result<FlowState, String> {
        let s = self.u8()?;
        FlowState::ALL
            .get(usize::from(s))
            .copied()
            .ok_or_else(|| format!("unknown flow state {s}"))
    }
}

fn decode(bytes: &[u8]) -> Result<(Header, Vec<SavedFlow>), String> {
    let mut r = Reader { b: bytes };
    if r.take(MAGIC.len())? != MAGIC {
        return Err("not a sluice flows file".into());
    }
    let version = r.u16()?;
    if version != VERSION && version != VERSION_1 {
        return Err(format!(
            "format version {version}, this sluiced reads {VERSION_1} and {VERSION}"
        ));
    }
    let written_unix_ms = r.u64()?;
    let workers = r.u16()?;
    let hash_seed = r.u64()?;
    let nat_ports = (r.u16()?, r.u16()?);
    let n4 = r.u16()?;
    let nat_ipv4 = (0..n4).map(|_| r.arr::<4>()).collect::<Result<_, _>>()?;
    let n6 = r.u16()?;
    let nat_ipv6 = (0..n6).map(|_| r.arr::<16>()).collect::<Result<_, _>>()?;
    let n = r.u64()?;
    let header = Header {
        written_unix_ms,
        workers,
        hash_seed,
        nat_ipv4,
        nat_ipv6,
        nat_ports,
    };
    // The smallest record is 28 bytes: a count beyond the file's size is corrupt.
    let n = usize::try_from(n)
        .ok()
        .filter(|n| *n <= r.b.len() / 28)
        .ok_or("flow count larger than the file")?;
    let mut flows = Vec::with_capacity(n);
    for _ in 0..n {
        let v6 = match r.u8()? {
            4 => false,
            6 => true,
            x => return Err(format!("unknown address family {x}")),
        };
        let proto = r.u8()?;
        let state = r.state()?;
        let parts = r.u8()?;
        let (has_nat, has_proxy) = if version == VERSION_1 {
            (parts != 0, false)
        } else if parts & !3 != 0 {
            return Err(format!("unknown record parts {parts:#x}"));
        } else {
            (parts & 1 != 0, parts & 2 != 0)
        };
        let worker = r.u16()?;
        let (client, client_port) = (r.addr(v6)?, r.u16()?);
        let (vip, vip_port) = (r.addr(v6)?, r.u16()?);
        let (backend, backend_port) = (r.addr(v6)?, r.u16()?);
        let remaining_ms = r.u32()?;
        let nat = if has_nat {
            Some(SavedNat {
                addr: r.addr(v6)?,
                port: r.u16()?,
                client_mac: r.arr()?,
                state: r.state()?,
                remaining_ms: r.u32()?,
            })
        } else {
            None
        };
        let proxy = if has_proxy {
            let seq = r.u32()?;
            Some(SavedProxy::from_parts(seq, r.u8()?))
        } else {
            None
        };
        flows.push(SavedFlow {
            worker,
            client,
            client_port,
            vip,
            vip_port,
            proto,
            backend,
            backend_port,
            state,
            remaining_ms,
            nat,
            proxy,
        });
    }
    if !r.b.is_empty() {
        return Err("bytes after the last flow".into());
    }
    Ok((header, flows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            written_unix_ms: unix_ms(SystemTime::now()),
            workers: 2,
            hash_seed: 42,
            nat_ipv4: vec![[10, 0, 0, 3]],
            nat_ipv6: vec![[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]],
            nat_ports: (20000, 29999),
        }
    }

    fn flows() -> Vec<SavedFlow> {
        let v4 = SavedFlow {
            worker: 1,
            client: "10.9.9.9".parse().unwrap(),
            client_port: 40000,
            vip: "192.0.2.1".parse().unwrap(),
            vip_port: 80,
            proto: 6,
            backend: "10.0.1.1".parse().unwrap(),
            backend_port: 8080,
            state: FlowState::TcpEstablished,
            remaining_ms: 299_000,
            nat: Some(SavedNat {
                addr: "10.0.0.3".parse().unwrap(),
                port: 25001,
                client_mac: [2, 0, 0, 0, 0, 0xaa],
                state: FlowState::TcpClosing,
                remaining_ms: 9_000,
            }),
            proxy: None,
        };
        let v6 = SavedFlow {
            worker: 0,
            client: "fd00::9".parse().unwrap(),
            vip: "2001:db8::2".parse().unwrap(),
            backend: "fd00:1::1".parse().unwrap(),
            proto: 17,
            state: FlowState::Udp,
            nat: None,
            ..v4
        };
        vec![v4, v6]
    }

    /// Written, read back equal, and gone after the read.
    #[test]
    fn round_trip_is_single_use() {
        let dir = std::env::temp_dir().join(format!("sluice-flowstate-{}", std::process::id()));
        let path = path_in(&dir);
        let (h, f) = (header(), flows());
        save(&path, &h, &f).unwrap();
        let (h2, f2) = load(&path).unwrap().expect("the file");
        assert_eq!((h2, f2), (h, f));
        assert!(!path.exists(), "deleted once read");
        assert!(load(&path).unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A file with a SYN-proxied flow is version 2 and carries the flow's offset, window
    /// scale and handshake flag; one without is version 1, the format the previous version
    /// wrote and reads, and its records load as before (no proxy state).
    #[test]
    fn proxied_flows_need_version_2_and_old_files_load() {
        let mut old = Vec::new();
        encode(&mut old, &header(), &flows()).unwrap();
        assert_eq!(u16::from_le_bytes([old[8], old[9]]), 1);
        let (_, f) = decode(&old).unwrap();
        assert_eq!(f, flows());
        assert!(f.iter().all(|f| f.proxy.is_none()));
        let mut with = flows();
        with[0].proxy = Some(SavedProxy {
            seq: 0x8000_0001,
            backend_wscale: 14,
            handshake: false,
        });
        with[1].proxy = Some(SavedProxy {
            seq: 5,
            backend_wscale: 0,
            handshake: true,
        });
        let mut b = Vec::new();
        encode(&mut b, &header(), &with).unwrap();
        assert_eq!(u16::from_le_bytes([b[8], b[9]]), 2);
        assert_eq!(b.len(), old.len() + 10, "5 bytes per proxied flow");
        assert_eq!(decode(&b).unwrap().1, with);
        let mut future = b.clone();
        future[8] = 3;
        assert!(decode(&future).unwrap_err().contains("format version 3"));
    }

    /// A truncated or foreign file is invalid, never a panic.
    #[test]
    fn corrupt_files_are_invalid() {
        let mut b = Vec::new();
        encode(&mut b, &header(), &flows()).unwrap();
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_err(), "{n} bytes");
        }
        assert!(decode(&b).is_ok());
        let mut other = b.clone();
        other[0] = b'X';
        assert_eq!(decode(&other).unwrap_err(), "not a sluice flows file");
        let mut bad_state = b.clone();
        let state_at = b.len() - f_len_tail();
        bad_state[state_at] = 9;
        assert!(decode(&bad_state).unwrap_err().contains("flow state"));
    }

    /// Offset from the end of the encoded [`flows`] to the second (IPv6, no NAT) record's
    /// state byte: the record is 4 + 2 + 3 * 18 + 4 bytes, the state its third.
    fn f_len_tail() -> usize {
        4 + 2 + 3 * 18 + 4 - 2
    }

    /// A header that differs from this process's, or an old file, is refused with the reason.
    #[test]
    fn mismatched_or_old_files_are_refused() {
        let now = header();
        let cases: Vec<(Header, &str)> = vec![
            (
                Header {
                    workers: 3,
                    ..now.clone()
                },
                "worker count",
            ),
            (
                Header {
                    hash_seed: 7,
                    ..now.clone()
                },
                "hash_seed",
            ),
            (
                Header {
                    nat_ipv4: vec![[10, 0, 0, 4]],
                    ..now.clone()
                },
                "NAT addresses",
            ),
            (
                Header {
                    nat_ports: (20000, 30000),
                    ..now.clone()
                },
                "NAT port range",
            ),
        ];
        for (h, what) in cases {
            assert!(h.mismatch(&now).unwrap().contains(what), "{what}");
        }
        assert_eq!(now.mismatch(&now), None);

        let dir = std::env::temp_dir().join(format!("sluice-flowstate-old-{}", std::process::id()));
        let path = path_in(&dir);
        let old = Header {
            written_unix_ms: now.written_unix_ms - MAX_AGE.as_millis() as u64 - 1000,
            ..now.clone()
        };
        save(&path, &old, &flows()).unwrap();
        let snap = Snapshot::empty(Local::default());
        let e = take(&path, &now, &snap).unwrap_err();
        assert!(matches!(e, FlowStateError::TooOld { age_s: 61, .. }), "{e}");
        assert!(!path.exists(), "a refused file is deleted too");
        save(
            &path,
            &Header {
                workers: 1,
                ..now.clone()
            },
            &flows(),
        )
        .unwrap();
        let e = take(&path, &now, &snap).unwrap_err();
        assert!(e.to_string().contains("worker count"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Flows whose frontend is gone are counted by reason; the gap since the file was written
    /// counts against the lifetimes.
    #[test]
    fn take_counts_what_it_cannot_restore() {
        let dir =
            std::env::temp_dir().join(format!("sluice-flowstate-take-{}", std::process::id()));
        let path = path_in(&dir);
        let now = header();
        let mut f = flows();
        f[1].remaining_ms = 10;
        let written = Header {
            written_unix_ms: now.written_unix_ms - 20,
            ..now.clone()
        };
        save(&path, &written, &f).unwrap();
        let snap = Snapshot::empty(Local::default());
        let r = take(&path, &now, &snap).unwrap().expect("a file");
        assert_eq!(r.saved, 2);
        assert_eq!(r.restored(), 0);
        let expired = Unrestorable::ALL
            .iter()
            .position(|w| *w == Unrestorable::Expired)
            .unwrap();
        let gone = Unrestorable::ALL
            .iter()
            .position(|w| *w == Unrestorable::FrontendGone)
            .unwrap();
        assert_eq!((r.skipped[gone], r.skipped[expired]), (1, 1));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
