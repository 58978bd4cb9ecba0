//! Frames the fuzz world sends: transport headers built on the stack, the Ethernet/IP frame
//! around them with correct or deliberately damaged checksums, and the ARP and NDP frames.
use super::*;

/// A transport header built on the stack (at most 40 bytes: TCP with options).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hdr {
    pub(crate) b: [u8; 40],
    pub(crate) n: usize,
}

impl Default for Hdr {
    fn default() -> Self {
        Hdr { b: [0; 40], n: 0 }
    }
}

impl std::ops::Deref for Hdr {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.b[..self.n]
    }
}

impl std::ops::DerefMut for Hdr {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.b[..self.n]
    }
}

pub(crate) fn tcp_header(sport: u16, dport: u16, flags: u8, options: u8) -> Hdr {
    let opts: &[u8] = match options {
        1 => &[2, 4, 5, 0xb4],
        2 => &[
            2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ],
        3 => &[0xfe, 6, 1, 2, 3, 4, 0, 0],
        _ => &[],
    };
    let len = 20 + opts.len();
    let mut h = Hdr { b: [0; 40], n: len };
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..8].copy_from_slice(&1000u32.to_be_bytes());
    h[8..12].copy_from_slice(&(if flags & 0x10 != 0 { 5000u32 } else { 0 }).to_be_bytes());
    h[12] = ((len / 4) as u8) << 4;
    h[13] = flags;
    h[14..16].copy_from_slice(&65535u16.to_be_bytes());
    h[20..].copy_from_slice(opts);
    h
}

pub(crate) fn udp_header(sport: u16, dport: u16) -> Hdr {
    let mut h = Hdr { b: [0; 40], n: 8 };
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h
}

pub(crate) fn icmp_header(t: u8, code: u8, ident: u16) -> Hdr {
    let mut h = Hdr { b: [0; 40], n: 8 };
    h[..8].copy_from_slice(&[t, code, 0, 0, 0, 0, 0, 1]);
    h[4..6].copy_from_slice(&ident.to_be_bytes());
    h
}

pub(crate) fn sum(acc: u64, b: &[u8]) -> u64 {
    let mut words = b.chunks_exact(2);
    let mut a = (&mut words).fold(acc, |a, c| a + u64::from(u16::from_be_bytes([c[0], c[1]])));
    if let [last] = words.remainder() {
        a += u64::from(*last) << 8;
    }
    a
}

pub(crate) fn csum(s: u64) -> u16 {
    let mut s = s;
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// A frame under construction.
pub(crate) struct Frame {
    pub(crate) bytes: Vec<u8>,
    pub(crate) l3: usize,
    pub(crate) l4_csum: Option<usize>,
}

impl Frame {
    pub(crate) fn new(dst: [u8; 6], src: [u8; 6], vlan: u8) -> Frame {
        Frame::new_in(Vec::with_capacity(128), dst, src, vlan)
    }

    /// A frame written into `b` (cleared first; its allocation reused).
    pub(crate) fn new_in(mut b: Vec<u8>, dst: [u8; 6], src: [u8; 6], vlan: u8) -> Frame {
        b.clear();
        b.extend_from_slice(&dst);
        b.extend_from_slice(&src);
        match vlan % 3 {
            1 => b.extend_from_slice(&[0x81, 0, 0, 42]),
            2 => b.extend_from_slice(&[0x88, 0xa8, 0, 7, 0x81, 0, 0, 42]),
            _ => {}
        }
        Frame {
            l3: b.len() + 2,
            bytes: b,
            l4_csum: None,
        }
    }

    /// Appends an IP packet carrying `l4` (a transport header, its checksum field zero and
    /// filled here) and `payload`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn ip(
        &mut self,
        v6: bool,
        src: [u8; 16],
        dst: [u8; 16],
        proto: u8,
        l4: &[u8],
        payload: &[u8],
        fragment: u8,
        options: bool,
    ) {
        let seg_len = l4.len() + payload.len();
        let n = if v6 { 16 } else { 4 };
        let ck = match proto {
            6 => Some(16),
            17 => Some(6),
            1 | 58 if seg_len >= 4 => Some(2),
            _ => None,
        };
        let b = &mut self.bytes;
        if v6 {
            b.extend_from_slice(&[0x86, 0xdd]);
            // Extension headers: hop-by-hop (options) first, then the fragment header.
            let mut ext = [0u8; 16];
            let mut el = 0;
            let mut next = proto;
            if options {
                let after = if fragment != 0 { 44 } else { proto };
                ext[..8].copy_from_slice(&[after, 0, 1, 4, 0, 0, 0, 0]);
                el = 8;
                next = 0;
            }
            if fragment != 0 {
                let off: u16 = if fragment == 2 { 8 << 3 } else { 1 };
                let o = off.to_be_bytes();
                ext[el..el + 8].copy_from_slice(&[proto, 0, o[0], o[1], 0, 0, 0, 7]);
                el += 8;
                if !options {
                    next = 44;
                }
            }
            let plen = (el + seg_len) as u16;
            b.extend_from_slice(&[0x60, 0, 0, 0]);
            b.extend_from_slice(&plen.to_be_bytes());
            b.extend_from_slice(&[next, 64]);
            b.extend_from_slice(&src);
            b.extend_from_slice(&dst);
            b.extend_from_slice(&ext[..el]);
        } else {
            b.extend_from_slice(&[0x08, 0x00]);
            let ihl = if options { 24 } else { 20 };
            let total = (ihl + seg_len) as u16;
            let frag: u16 = match fragment {
                1 => 0x2000,
                2 => 8,
                _ => 0,
            };
            let l3 = b.len();
            b.push(0x40 | (ihl / 4) as u8);
            b.push(0);
            b.extend_from_slice(&total.to_be_bytes());
            b.extend_from_slice(&[0, 7]);
            b.extend_from_slice(&frag.to_be_bytes());
            b.extend_from_slice(&[64, proto, 0, 0]);
            b.extend_from_slice(&src[..4]);
            b.extend_from_slice(&dst[..4]);
            if options {
                b.extend_from_slice(&[1, 1, 1, 0]);
            }
            let c = csum(sum(0, &b[l3..]));
            b[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        }
        let at = b.len();
        b.extend_from_slice(l4);
        b.extend_from_slice(payload);
        if let Some(c) = ck {
            if proto == 17 {
                b[at + 4..at + 6].copy_from_slice(&(seg_len as u16).to_be_bytes());
            }
            let pseudo = if proto == 1 {
                0
            } else {
                sum(sum(0, &src[..n]), &dst[..n]) + u64::from(proto) + seg_len as u64
            };
            let mut x = csum(sum(pseudo, &b[at..]));
            if proto == 17 && x == 0 {
                x = 0xffff;
            }
            b[at + c..at + c + 2].copy_from_slice(&x.to_be_bytes());
        }
        self.l4_csum = ck.map(|c| at + c);
    }
}

/// An ARP frame (`op` 1 request, 2 reply) from `sha`/`spa` for `tpa`, broadcast for a request.
pub fn arp_frame(op: u16, sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut b = Vec::with_capacity(42);
    b.extend_from_slice(if op == 1 { &[0xff; 6] } else { &LB_MAC });
    b.extend_from_slice(&sha);
    b.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4]);
    b.extend_from_slice(&op.to_be_bytes());
    b.extend_from_slice(&sha);
    b.extend_from_slice(&spa);
    b.extend_from_slice(&[0; 6]);
    b.extend_from_slice(&tpa);
    b
}

/// A neighbour solicitation (`advert` false) or advertisement for `target` from `src`, with a
/// link-layer address option.
pub fn nd_frame(advert: bool, src: [u8; 16], target: [u8; 16], mac: [u8; 6]) -> Vec<u8> {
    let mut body = vec![if advert { 136 } else { 135 }, 0, 0, 0, 0, 0, 0, 0];
    if advert {
        body[4] = 0x60;
    }
    body.extend_from_slice(&target);
    body.extend_from_slice(&[if advert { 2 } else { 1 }, 1]);
    body.extend_from_slice(&mac);
    let mut dst = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0];
    dst[13..].copy_from_slice(&target[13..]);
    let mut f = Frame::new(
        [0x33, 0x33, 0xff, target[13], target[14], target[15]],
        mac,
        0,
    );
    f.ip(true, src, dst, 58, &body[..4], &body[4..], 0, false);
    let mut v = f.bytes;
    // The hop limit of neighbour discovery.
    v[21] = 255;
    v
}
