//! pcapng blocks (draft-ietf-opsawg-pcapng), written in the capture's host byte order: a
//! section header, one interface per captured port, an enhanced packet block per packet with
//! its direction and the pipeline's verdict as a comment, and interface statistics at the end.
//! Written here, in the control plane, from the workers' copies: five block layouts are
//! simpler than lending mbufs to `rte_pcapng` and a packet pool for its copies.

/// Option codes (section 3.5 and the block sections of the draft).
const OPT_ENDOFOPT: u16 = 0;
const OPT_COMMENT: u16 = 1;
const SHB_USERAPPL: u16 = 4;
const IF_NAME: u16 = 2;
const IF_DESCRIPTION: u16 = 3;
const IF_TSRESOL: u16 = 9;
const EPB_FLAGS: u16 = 2;
const ISB_STARTTIME: u16 = 2;
const ISB_ENDTIME: u16 = 3;
const ISB_FILTERACCEPT: u16 = 6;
const ISB_OSDROP: u16 = 7;
const ISB_USRDELIV: u16 = 8;

/// Block types.
const SHB: u32 = 0x0A0D_0D0A;
const IDB: u32 = 1;
const ISB: u32 = 5;
const EPB: u32 = 6;

/// `LINKTYPE_ETHERNET`.
const LINKTYPE_ETHERNET: u16 = 1;

/// Which way a packet went, for `epb_flags` (bits 0-1: 1 inbound, 2 outbound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Received by the port.
    Inbound,
    /// Sent by the port.
    Outbound,
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

fn opt(b: &mut Vec<u8>, code: u16, value: &[u8]) {
    // Option values are at most 65535 bytes; longer comments are cut.
    let v = &value[..value.len().min(usize::from(u16::MAX))];
    b.extend_from_slice(&code.to_ne_bytes());
    b.extend_from_slice(&(v.len() as u16).to_ne_bytes());
    b.extend_from_slice(v);
    b.resize(b.len() + pad4(v.len()), 0);
}

fn end_opts(b: &mut Vec<u8>) {
    b.extend_from_slice(&OPT_ENDOFOPT.to_ne_bytes());
    b.extend_from_slice(&0u16.to_ne_bytes());
}

/// Appends a block of type `ty` with `body` (already padded to 4 bytes) to `out`.
fn block(out: &mut Vec<u8>, ty: u32, body: &[u8]) {
    let total = (12 + body.len()) as u32;
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&total.to_ne_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&total.to_ne_bytes());
}

fn ts(out: &mut Vec<u8>, ns: u64) {
    out.extend_from_slice(&((ns >> 32) as u32).to_ne_bytes());
    out.extend_from_slice(&(ns as u32).to_ne_bytes());
}

/// Appends a section header block naming `application`.
pub fn section_header(out: &mut Vec<u8>, application: &str) {
    let mut b = Vec::new();
    b.extend_from_slice(&0x1A2B_3C4Du32.to_ne_bytes());
    b.extend_from_slice(&1u16.to_ne_bytes());
    b.extend_from_slice(&0u16.to_ne_bytes());
    b.extend_from_slice(&(-1i64).to_ne_bytes());
    opt(&mut b, SHB_USERAPPL, application.as_bytes());
    end_opts(&mut b);
    block(out, SHB, &b);
}

/// Appends an interface description block: an Ethernet port called `name`, packets cut at
/// `snaplen`, timestamps in nanoseconds.
pub fn interface(out: &mut Vec<u8>, name: &str, description: &str, snaplen: u32) {
    let mut b = Vec::new();
    b.extend_from_slice(&LINKTYPE_ETHERNET.to_ne_bytes());
    b.extend_from_slice(&0u16.to_ne_bytes());
    b.extend_from_slice(&snaplen.to_ne_bytes());
    opt(&mut b, IF_NAME, name.as_bytes());
    opt(&mut b, IF_DESCRIPTION, description.as_bytes());
    opt(&mut b, IF_TSRESOL, &[9]);
    end_opts(&mut b);
    block(out, IDB, &b);
}

/// Appends an enhanced packet block: `data` (the captured bytes of a frame of `orig_len`)
/// on interface `iface` at `ts_ns` (Unix nanoseconds), its direction and `comment`.
pub fn packet(
    out: &mut Vec<u8>,
    iface: u32,
    ts_ns: u64,
    data: &[u8],
    orig_len: u32,
    dir: Flow,
    comment: &str,
) {
    let mut b = Vec::with_capacity(data.len() + comment.len() + 48);
    b.extend_from_slice(&iface.to_ne_bytes());
    ts(&mut b, ts_ns);
    b.extend_from_slice(&(data.len() as u32).to_ne_bytes());
    b.extend_from_slice(&orig_len.to_ne_bytes());
    b.extend_from_slice(data);
    b.resize(b.len() + pad4(data.len()), 0);
    opt(&mut b, OPT_COMMENT, comment.as_bytes());
    let flags: u32 = match dir {
        Flow::Inbound => 1,
        Flow::Outbound => 2,
    };
    opt(&mut b, EPB_FLAGS, &flags.to_ne_bytes());
    end_opts(&mut b);
    block(out, EPB, &b);
}

/// What a capture counted, for [`statistics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Packets the filter accepted.
    pub accepted: u64,
    /// Of those, copies the workers could not make (the reader did not keep up).
    pub dropped: u64,
    /// Packets written.
    pub delivered: u64,
}

/// Appends an interface statistics block for `iface` covering `start_ns..end_ns`.
pub fn statistics(out: &mut Vec<u8>, iface: u32, start_ns: u64, end_ns: u64, c: Counts) {
    let mut b = Vec::new();
    b.extend_from_slice(&iface.to_ne_bytes());
    ts(&mut b, end_ns);
    let mut t = Vec::new();
    ts(&mut t, start_ns);
    opt(&mut b, ISB_STARTTIME, &t);
    t.clear();
    ts(&mut t, end_ns);
    opt(&mut b, ISB_ENDTIME, &t);
    opt(&mut b, ISB_FILTERACCEPT, &c.accepted.to_ne_bytes());
    opt(&mut b, ISB_OSDROP, &c.dropped.to_ne_bytes());
    opt(&mut b, ISB_USRDELIV, &c.delivered.to_ne_bytes());
    end_opts(&mut b);
    block(out, ISB, &b);
}

/// One block read back by [`blocks`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Block type.
    pub ty: u32,
    /// Body (between the length fields).
    pub body: Vec<u8>,
}

/// Splits a pcapng stream written in this host's byte order into blocks; `Err` with the
/// offset of the first malformed block. The complete blocks before a cut end are returned
/// by [`blocks_prefix`].
pub fn blocks(data: &[u8]) -> Result<Vec<Block>, usize> {
    let (v, used) = blocks_prefix(data);
    if used == data.len() {
        Ok(v)
    } else {
        Err(used)
    }
}

/// The complete blocks at the start of `data`, and how many bytes they take.
pub fn blocks_prefix(data: &[u8]) -> (Vec<Block>, usize) {
    let mut v = Vec::new();
    let mut at = 0;
    let u32_at = |i: usize| -> Option<u32> {
        data.get(i..i + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    while let (Some(ty), Some(len)) = (u32_at(at), u32_at(at + 4)) {
        let len = len as usize;
        if len < 12
            || !len.is_multiple_of(4)
            || at + len > data.len()
            || u32_at(at + len - 4) != Some(len as u32)
        {
            break;
        }
        v.push(Block {
            ty,
            body: data[at + 8..at + len - 4].to_vec(),
        });
        at += len;
    }
    (v, at)
}

/// The options of an option list (`(code, value)`), up to `opt_endofopt`.
pub fn options(mut b: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut v = Vec::new();
    while b.len() >= 4 {
        let code = u16::from_ne_bytes([b[0], b[1]]);
        let len = usize::from(u16::from_ne_bytes([b[2], b[3]]));
        if code == OPT_ENDOFOPT || b.len() < 4 + len {
            break;
        }
        v.push((code, b[4..4 + len].to_vec()));
        b = &b[(4 + len + pad4(len)).min(b.len())..];
    }
    v
}

/// An enhanced packet block's parts: interface, timestamp (ns), data, original length,
/// comment, flags.
pub type PacketParts = (u32, u64, Vec<u8>, u32, Option<String>, Option<u32>);

/// Reads an enhanced packet block's body ([`packet`]'s layout).
pub fn read_packet(body: &[u8]) -> Option<PacketParts> {
    let u = |i: usize| -> Option<u32> {
        body.get(i..i + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    let iface = u(0)?;
    let ts = (u64::from(u(4)?) << 32) | u64::from(u(8)?);
    let cap = u(12)? as usize;
    let orig = u(16)?;
    let data = body.get(20..20 + cap)?.to_vec();
    let opts = options(body.get(20 + cap + pad4(cap)..)?);
    let comment = opts
        .iter()
        .find(|(c, _)| *c == OPT_COMMENT)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
    let flags = opts
        .iter()
        .find(|(c, v)| *c == EPB_FLAGS && v.len() == 4)
        .map(|(_, v)| u32::from_ne_bytes([v[0], v[1], v[2], v[3]]));
    Some((iface, ts, data, orig, comment, flags))
}

/// Reads the dropped-copies count (`isb_osdrop`) of an interface statistics block's body.
pub fn read_dropped(body: &[u8]) -> Option<u64> {
    options(body.get(12..)?)
        .into_iter()
        .find(|(c, v)| *c == ISB_OSDROP && v.len() == 8)
        .map(|(_, v)| u64::from_ne_bytes(v.try_into().unwrap_or([0; 8])))
}

/// Block type of an enhanced packet block (for readers of [`blocks`]).
pub const ENHANCED_PACKET: u32 = EPB;
/// Block type of an interface statistics block.
pub const INTERFACE_STATISTICS: u32 = ISB;
/// Block type of a section header block.
pub const SECTION_HEADER: u32 = SHB;
/// Block type of an interface description block.
pub const INTERFACE_DESCRIPTION: u32 = IDB;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_with_options() {
        let mut out = Vec::new();
        section_header(&mut out, "sluiced test");
        interface(&mut out, "lb0", "net_ring0", 262_144);
        let frame: Vec<u8> = (0..61u8).collect();
        packet(
            &mut out,
            0,
            1_700_000_000_123_456_789,
            &frame,
            64,
            Flow::Outbound,
            "drop source_denied",
        );
        statistics(
            &mut out,
            0,
            1,
            2,
            Counts {
                accepted: 3,
                dropped: 2,
                delivered: 1,
            },
        );
        let b = blocks(&out).unwrap();
        let types: Vec<u32> = b.iter().map(|b| b.ty).collect();
        assert_eq!(types, [SHB, IDB, EPB, ISB]);
        let (iface, ts, data, orig, comment, flags) = read_packet(&b[2].body).unwrap();
        assert_eq!(
            (iface, ts, orig, flags),
            (0, 1_700_000_000_123_456_789, 64, Some(2))
        );
        assert_eq!(data, frame);
        assert_eq!(comment.as_deref(), Some("drop source_denied"));
        assert_eq!(read_dropped(&b[3].body), Some(2));
        // A stream cut inside a block: the complete blocks before it.
        let (v, used) = blocks_prefix(&out[..out.len() - 3]);
        assert_eq!((v.len(), used), (3, out.len() - b[3].body.len() - 12));
    }
}
