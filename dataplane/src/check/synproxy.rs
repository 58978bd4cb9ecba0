//! The SYN proxy's part of the model (see the module docs of [`super`]): the cookie SYN-ACK,
//! the backend's handshake, and the sequence translation of a proxied flow both ways.
use super::*;

/// The SYN proxy's part of the model.
impl Model {
    /// The proxy's SYN-ACK to SYN `pi`: flags, acknowledgement, window, cookie, checksum (the
    /// addresses, ports and MACs were compared by the caller; the source MAC is ours).
    pub(super) fn syn_ack(
        &mut self,
        s: &Step<'_>,
        input: &[u8],
        pi: &Parsed,
        output: &[u8],
        po: &Parsed,
    ) -> Result<(), String> {
        let t = Tuple::of(pi);
        let (Some((isn, _, _)), Some((c, ack, win))) =
            (tcp_fields(input, pi), tcp_fields(output, po))
        else {
            return Err(format!("the answer to SYN {t:?} is no whole TCP segment"));
        };
        if !flags_are(po, 0x12) {
            return Err(format!(
                "the answer to SYN {t:?} has flags {:#04x}",
                po.tcp_flags
            ));
        }
        if ack != isn.wrapping_add(1) || win != 0 {
            return Err(format!(
                "the SYN-ACK to {t:?} acknowledges {ack} (ISN {isn}) with window {win}"
            ));
        }
        if l4_checksum_ok(output, po) != Some(true) {
            return Err(format!("the SYN-ACK to {t:?} has a wrong checksum"));
        }
        if !self.cookie_ok(&t, s.now_ms, isn, c) {
            return Err(format!(
                "the SYN-ACK to {t:?} carries no valid cookie: {c:#x}"
            ));
        }
        let key = (s.worker, t);
        if !self.flows.contains_key(&key) {
            self.no_entry.push(key);
        }
        Ok(())
    }

    /// A client's segment to proxied frontend `t`, NAT'd to `to` and transmitted: the
    /// backend's SYN if it returned a valid cookie and is one, else a segment of a flow past
    /// its handshake (or of a flow the proxy never saw: an `auto` frontend's SYN before it
    /// engaged, and that flow's segments) rewritten with its acknowledgement raised by the
    /// offset.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn proxied_forward(
        &mut self,
        s: &Step<'_>,
        (t, to): (&Tuple, &Tuple),
        input: &[u8],
        pi: &Parsed,
        output: &[u8],
        po: &Parsed,
        bmac: [u8; 6],
    ) -> Result<(), String> {
        let key = (s.worker, *t);
        let lb = s.snap.local.mac;
        if pi.tcp_flags & 0x02 == 0 && flags_are(po, 0x02) {
            let Some(isn) = self.cookie_isn(t, s.now_ms, input, pi) else {
                return Err(format!(
                    "{t:?} became the backend's SYN without a valid cookie"
                ));
            };
            let (Some((_, ack, _)), Some((seq, back, _))) =
                (tcp_fields(input, pi), tcp_fields(output, po))
            else {
                return Err(format!(
                    "the backend's SYN of {t:?} is no whole TCP segment"
                ));
            };
            if seq != isn || back != 0 {
                return Err(format!(
                    "the backend's SYN of {t:?}: sequence {seq} (client ISN {isn}), ack {back}"
                ));
            }
            if l4_checksum_ok(output, po) != Some(true) {
                return Err(format!("the backend's SYN of {t:?} has a wrong checksum"));
            }
            if Tuple::of(po) != *to || mac(output, 0) != bmac || mac(output, 6) != lb {
                return Err(format!(
                    "the backend's SYN of {t:?} is not its NAT rewrite to {to:?}"
                ));
            }
            self.proxied.insert(
                key,
                Proxied {
                    cookie: ack.wrapping_sub(1),
                    offset: None,
                },
            );
            return Ok(());
        }
        let px = if pi.tcp_flags & 0x12 == 0x02 {
            // A SYN forwarded (an `auto` frontend not engaged): a flow of its own.
            self.proxied.remove(&key);
            None
        } else {
            self.proxied.get(&key).copied()
        };
        let want = rewritten(&mut self.scratch.0, input, pi, output, bmac, lb, to);
        let Some(px) = px else {
            return if want == output {
                Ok(())
            } else {
                Err(format!("nat: not the rewrite {t:?} -> {to:?}"))
            };
        };
        let Some((off, _)) = px.offset else {
            return Err(format!(
                "a segment of {t:?} was forwarded while its backend's SYN-ACK is awaited"
            ));
        };
        let mut e = std::mem::take(&mut self.scratch.0);
        let l4 = usize::from(pi.l4_off);
        if pi.tcp_flags & 0x10 != 0 && e.len() >= l4 + 12 {
            let a = be32_at(&e, l4 + 8).wrapping_add(off);
            e[l4 + 8..l4 + 12].copy_from_slice(&a.to_be_bytes());
        }
        for (at, kind, len) in tcp_options(&e, pi) {
            if kind == 5 {
                let mut b = at + 2;
                while b + 8 <= at + len {
                    for edge in [b, b + 4] {
                        let v = be32_at(&e, edge).wrapping_add(off);
                        e[edge..edge + 4].copy_from_slice(&v.to_be_bytes());
                    }
                    b += 8;
                }
            }
        }
        let same = e == output;
        self.scratch.0 = e;
        if !same {
            return Err(format!(
                "a proxied segment {t:?} -> {to:?} is not the rewrite with its ACK raised by {off}"
            ));
        }
        Ok(())
    }

    /// A backend's segment `t` of proxied flow `c`, transmitted: the client's window update
    /// made of its first SYN-ACK, the ACK to a repeated one, or the segment translated.
    pub(super) fn proxied_reply(
        &mut self,
        s: &Step<'_>,
        (t, c, px): (&Tuple, &Tuple, Proxied),
        input: &[u8],
        pi: &Parsed,
        output: &[u8],
        po: &Parsed,
    ) -> Result<(), String> {
        let lb = s.snap.local.mac;
        let key = (s.worker, *c);
        let macs = self
            .nat
            .get(&(s.worker, *t))
            .map(|r| r.macs.clone())
            .unwrap_or_default();
        let to_mac = mac(output, 0);
        let (Some((seq, ack, win)), Some((oseq, oack, owin))) =
            (tcp_fields(input, pi), tcp_fields(output, po))
        else {
            return Err(format!("a proxied reply {t:?} is no whole TCP segment"));
        };
        let synack = flags_are(pi, 0x12) || flags_are(pi, 0x13);
        let generated = |what: &str, to: Tuple, flags: u8| -> Result<(), String> {
            if Tuple::of(po) != to || !flags_are(po, flags) || po.l3_end != po.l4_off + 20 {
                return Err(format!("{what} of {t:?} is not a bare segment {to:?}"));
            }
            if l4_checksum_ok(output, po) != Some(true) {
                return Err(format!("{what} of {t:?} has a wrong checksum"));
            }
            Ok(())
        };
        match px.offset {
            None if synack && pi.tcp_flags & 0x04 == 0 => {
                generated("the window update", c.reversed(), 0x10)?;
                if !macs.contains(&to_mac) || mac(output, 6) != lb {
                    return Err(format!("the window update of {t:?} is not to its client"));
                }
                if oseq != px.cookie.wrapping_add(1) || oack != ack {
                    return Err(format!(
                        "the window update of {t:?}: seq {oseq} ack {oack}, cookie {} ack {ack}",
                        px.cookie
                    ));
                }
                let data = CookieData::of_cookie(px.cookie);
                let theirs = tcp_options(input, pi)
                    .into_iter()
                    .find(|&(_, k, len)| k == 3 && len == 3)
                    .map(|(at, _, _)| input[at + 2]);
                let ws = match data.wscale {
                    Some(_) => theirs.unwrap_or(0),
                    None => SYN_PROXY_WSCALE,
                };
                let shift = if data.wscale.is_some() {
                    SYN_PROXY_WSCALE
                } else {
                    0
                };
                let w = (u32::from(win) >> shift).max(1) as u16;
                if owin != w {
                    return Err(format!(
                        "the window update of {t:?}: window {owin}, not {w}"
                    ));
                }
                let off = seq.wrapping_sub(px.cookie);
                self.proxied.insert(
                    key,
                    Proxied {
                        offset: Some((off, ws)),
                        ..px
                    },
                );
                Ok(())
            }
            Some(_) if synack && pi.tcp_flags & 0x04 == 0 => {
                generated("the ACK to a repeated SYN-ACK", t.reversed(), 0x10)?;
                if to_mac != mac(input, 6) || oseq != ack || oack != seq.wrapping_add(1) {
                    return Err(format!(
                        "the ACK to repeated SYN-ACK {t:?} is not its answer"
                    ));
                }
                Ok(())
            }
            None if pi.tcp_flags & 0x04 == 0 => Err(format!(
                "a backend segment of {t:?} was sent while the handshake is not complete"
            )),
            offset => {
                if !macs.contains(&to_mac) {
                    return Err(format!("proxied reply {t:?} sent to MAC {to_mac:02x?}"));
                }
                let want_seq = match offset {
                    Some((off, _)) => seq.wrapping_sub(off),
                    None => px.cookie.wrapping_add(1),
                };
                let mut want_win = win;
                if let Some((_, ws)) = offset {
                    if ws != SYN_PROXY_WSCALE && pi.tcp_flags & 0x02 == 0 {
                        want_win = ((u32::from(win) << ws) >> SYN_PROXY_WSCALE).min(65_535) as u16;
                    }
                }
                let mut e = std::mem::take(&mut self.scratch.0);
                rewritten(&mut e, input, pi, output, to_mac, lb, &c.reversed());
                let l4 = usize::from(pi.l4_off);
                e[l4 + 4..l4 + 8].copy_from_slice(&want_seq.to_be_bytes());
                e[l4 + 14..l4 + 16].copy_from_slice(&want_win.to_be_bytes());
                let same = e == output;
                self.scratch.0 = e;
                if !same {
                    return Err(format!(
                        "proxied reply {t:?}: not the inverse of {c:?} with sequence {want_seq} \
                         and window {want_win} (got {oseq}, {owin})"
                    ));
                }
                Ok(())
            }
        }
    }
}
