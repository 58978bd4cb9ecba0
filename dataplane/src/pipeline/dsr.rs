//! # `dsr-l2` and `dsr-ipip`: direct server return
//!
//! The client's packet goes to the backend unchanged but for the destination MAC
//! (`dsr-l2`), or inside an IP-in-IP (IPv6-in-IPv6) tunnel from our first address of the
//! family (`dsr-ipip`); the backend answers the client directly.
use super::{Family, PacketBuf, Verdict};
use crate::snapshot::{Backend, Method, Snapshot};
use crate::stats::DropReason;
use crate::wire::parse::Parsed;

/// Sends a client's packet to backend `b` by method `m` (a `dsr-*` method).
#[inline(always)]
pub(super) fn send<F: Family, P: PacketBuf>(
    snap: &Snapshot,
    pkt: &mut P,
    p: &Parsed,
    m: Method,
    b: &Backend,
) -> Verdict {
    let l = &snap.local;
    let Some(mac) = b.mac else {
        return Verdict::Drop(DropReason::NextHopUnresolved);
    };
    if m == Method::DsrIpip {
        let l3 = usize::from(p.l3_off);
        let inner = usize::from(p.l3_end) - l3;
        let outer = F::HEADER_LEN;
        if l.mtu != 0 && inner + outer > usize::from(l.mtu) {
            return Verdict::Drop(DropReason::TooBig);
        }
        let (Some(&src), Some(dst)) = (F::own(l).first(), F::of_ip(b.addr)) else {
            return Verdict::Drop(DropReason::NoNatAddress);
        };
        let pad = pkt.data().len() - usize::from(p.l3_end);
        if !pkt.prepend(outer) {
            return Verdict::Drop(DropReason::NoHeadroom);
        }
        if pad > 0 {
            pkt.trim(pad);
        }
        let d = pkt.data_mut();
        d.copy_within(outer..outer + l3, 0);
        F::emit_ip(&mut d[l3..], src, dst, F::TUNNEL, inner as u16);
    }
    let d = pkt.data_mut();
    d[0..6].copy_from_slice(&mac);
    d[6..12].copy_from_slice(&l.mac);
    Verdict::Tx
}
