//! A classic BPF interpreter on byte slices: the capture filter the worker runs.
//!
//! libpcap compiles the tcpdump expression (`dpdk_sys::PcapProgram`); the instructions are
//! checked and decoded once here into flat operations with their operands resolved (one
//! dispatch per instruction: size, condition and operand are part of the operation; a load
//! followed by a conditional jump is one operation), and run on each frame's bytes. Every frame a filter rejects takes the same short path through the
//! program, so the dispatch predicts well. Semantics follow libpcap's `bpf_filter`: a load
//! outside the frame, or a division by zero, rejects the packet; `dataplane/tests/capture_bpf.rs`
//! holds the two to the same answers.

/// Classic BPF instruction fields, as libpcap's `struct bpf_insn`: (code, jt, jf, k).
pub type Insn = (u16, u8, u8, u32);

/// A decoded instruction; jump targets are absolute indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    LdW(u32),
    LdH(u32),
    LdB(u32),
    LdIndW(u32),
    LdIndH(u32),
    LdIndB(u32),
    LdImm(u32),
    LdLen,
    LdMem(u8),
    LdxImm(u32),
    LdxLen,
    LdxMem(u8),
    LdxMsh(u32),
    St(u8),
    Stx(u8),
    Add(u32),
    Sub(u32),
    Mul(u32),
    Div(u32),
    Mod(u32),
    Or(u32),
    And(u32),
    Lsh(u32),
    Rsh(u32),
    Xor(u32),
    AddX,
    SubX,
    MulX,
    DivX,
    ModX,
    OrX,
    AndX,
    LshX,
    RshX,
    XorX,
    Neg,
    Ja(u16),
    Jeq(u32, u16, u16),
    Jgt(u32, u16, u16),
    Jge(u32, u16, u16),
    Jset(u32, u16, u16),
    JeqX(u16, u16),
    JgtX(u16, u16),
    JgeX(u16, u16),
    JsetX(u16, u16),
    Ret(u32),
    RetA,
    Tax,
    Txa,
    // A load and the conditional jump after it, as one operation (libpcap's programs are
    // mostly such pairs): (load offset, constant, true target, false target). The jump stays
    // in the program at its own index too, for the jumps that land on it.
    LdWJeq(u32, u32, u16, u16),
    LdHJeq(u32, u32, u16, u16),
    LdBJeq(u32, u32, u16, u16),
    LdHJge(u32, u32, u16, u16),
    LdHJgt(u32, u32, u16, u16),
    LdBJset(u32, u32, u16, u16),
    LdHJset(u32, u32, u16, u16),
    LdIndHJeq(u32, u32, u16, u16),
    LdIndBJset(u32, u32, u16, u16),
}

/// A checked classic BPF program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    ops: Box<[Op]>,
}

/// Memory words of a classic BPF machine.
const MEM: usize = 16;

/// Longest program (`BPF_MAXINSNS` of Linux and libpcap).
const MAX_INSNS: usize = 4096;

impl Program {
    /// Checks and decodes `insns` (as `bpf_validate` does: known opcodes, jumps forward and
    /// inside the program, memory indices below 16, no constant division by zero, a return
    /// at the end).
    ///
    /// # Errors
    /// What is wrong, with the instruction's index.
    pub fn new(insns: &[Insn]) -> Result<Program, String> {
        let n = insns.len();
        if n == 0 || n > MAX_INSNS {
            return Err(format!(
                "a filter program has 1 to {MAX_INSNS} instructions, not {n}"
            ));
        }
        let mut ops = Vec::with_capacity(n);
        for (pc, &(code, jt, jf, k)) in insns.iter().enumerate() {
            let bad = || format!("filter instruction {pc}: invalid (code {code:#06x}, k {k})");
            let mem = |k: u32| -> Result<u8, String> {
                if (k as usize) < MEM {
                    Ok(k as u8)
                } else {
                    Err(bad())
                }
            };
            let to = |off: u32| -> Result<u16, String> {
                let t = pc + 1 + off as usize;
                if t < n {
                    Ok(t as u16)
                } else {
                    Err(format!("filter instruction {pc}: jump out of the program"))
                }
            };
            let op = match code {
                0x20 => Op::LdW(k),
                0x28 => Op::LdH(k),
                0x30 => Op::LdB(k),
                0x40 => Op::LdIndW(k),
                0x48 => Op::LdIndH(k),
                0x50 => Op::LdIndB(k),
                0x00 => Op::LdImm(k),
                0x80 => Op::LdLen,
                0x60 => Op::LdMem(mem(k)?),
                0x01 => Op::LdxImm(k),
                0x81 => Op::LdxLen,
                0x61 => Op::LdxMem(mem(k)?),
                0xb1 => Op::LdxMsh(k),
                0x02 => Op::St(mem(k)?),
                0x03 => Op::Stx(mem(k)?),
                0x04 => Op::Add(k),
                0x14 => Op::Sub(k),
                0x24 => Op::Mul(k),
                0x34 | 0x94 if k == 0 => {
                    return Err(format!("filter instruction {pc}: division by zero"))
                }
                0x34 => Op::Div(k),
                0x94 => Op::Mod(k),
                0x44 => Op::Or(k),
                0x54 => Op::And(k),
                0x64 => Op::Lsh(k),
                0x74 => Op::Rsh(k),
                0xa4 => Op::Xor(k),
                0x0c => Op::AddX,
                0x1c => Op::SubX,
                0x2c => Op::MulX,
                0x3c => Op::DivX,
                0x9c => Op::ModX,
                0x4c => Op::OrX,
                0x5c => Op::AndX,
                0x6c => Op::LshX,
                0x7c => Op::RshX,
                0xac => Op::XorX,
                0x84 => Op::Neg,
                0x05 => Op::Ja(to(k)?),
                0x15 => Op::Jeq(k, to(jt.into())?, to(jf.into())?),
                0x25 => Op::Jgt(k, to(jt.into())?, to(jf.into())?),
                0x35 => Op::Jge(k, to(jt.into())?, to(jf.into())?),
                0x45 => Op::Jset(k, to(jt.into())?, to(jf.into())?),
                0x1d => Op::JeqX(to(jt.into())?, to(jf.into())?),
                0x2d => Op::JgtX(to(jt.into())?, to(jf.into())?),
                0x3d => Op::JgeX(to(jt.into())?, to(jf.into())?),
                0x4d => Op::JsetX(to(jt.into())?, to(jf.into())?),
                0x06 => Op::Ret(k),
                0x16 => Op::RetA,
                0x07 => Op::Tax,
                0x87 => Op::Txa,
                _ => return Err(bad()),
            };
            ops.push(op);
        }
        if !matches!(ops[n - 1], Op::Ret(_) | Op::RetA) {
            return Err("filter program does not end with a return".into());
        }
        for i in 0..n - 1 {
            ops[i] = match (ops[i], ops[i + 1]) {
                (Op::LdW(o), Op::Jeq(k, t, f)) => Op::LdWJeq(o, k, t, f),
                (Op::LdH(o), Op::Jeq(k, t, f)) => Op::LdHJeq(o, k, t, f),
                (Op::LdB(o), Op::Jeq(k, t, f)) => Op::LdBJeq(o, k, t, f),
                (Op::LdH(o), Op::Jge(k, t, f)) => Op::LdHJge(o, k, t, f),
                (Op::LdH(o), Op::Jgt(k, t, f)) => Op::LdHJgt(o, k, t, f),
                (Op::LdB(o), Op::Jset(k, t, f)) => Op::LdBJset(o, k, t, f),
                (Op::LdH(o), Op::Jset(k, t, f)) => Op::LdHJset(o, k, t, f),
                (Op::LdIndH(o), Op::Jeq(k, t, f)) => Op::LdIndHJeq(o, k, t, f),
                (Op::LdIndB(o), Op::Jset(k, t, f)) => Op::LdIndBJset(o, k, t, f),
                (op, _) => op,
            };
        }
        Ok(Program {
            ops: ops.into_boxed_slice(),
        })
    }

    /// Whether `frame` matches (the program returns a non-zero length). Never panics; no
    /// allocation.
    #[inline]
    pub fn matches(&self, frame: &[u8]) -> bool {
        self.run(frame) != 0
    }

    /// Runs the program on `frame`: its return value (0: reject).
    pub fn run(&self, frame: &[u8]) -> u32 {
        let (mut a, mut x) = (0u32, 0u32);
        let mut m = [0u32; MEM];
        let mut pc = 0usize;
        let len = frame.len() as u32;
        macro_rules! ld {
            ($v:expr) => {
                match $v {
                    Some(v) => v,
                    None => return 0,
                }
            };
        }
        loop {
            // Jumps were checked to land inside and the last operation returns, so `pc` stays
            // in range; `get` keeps that a checked fact rather than an assumption.
            let Some(&op) = self.ops.get(pc) else {
                return 0;
            };
            pc += 1;
            match op {
                Op::LdW(k) => a = ld!(w(frame, k)),
                Op::LdH(k) => a = ld!(h(frame, k)),
                Op::LdB(k) => a = ld!(b(frame, k)),
                Op::LdIndW(k) => a = ld!(w(frame, x.wrapping_add(k))),
                Op::LdIndH(k) => a = ld!(h(frame, x.wrapping_add(k))),
                Op::LdIndB(k) => a = ld!(b(frame, x.wrapping_add(k))),
                Op::LdImm(k) => a = k,
                Op::LdLen => a = len,
                Op::LdMem(i) => a = m[usize::from(i) % MEM],
                Op::LdxImm(k) => x = k,
                Op::LdxLen => x = len,
                Op::LdxMem(i) => x = m[usize::from(i) % MEM],
                Op::LdxMsh(k) => x = (ld!(b(frame, k)) & 0x0f) << 2,
                Op::St(i) => m[usize::from(i) % MEM] = a,
                Op::Stx(i) => m[usize::from(i) % MEM] = x,
                Op::Add(k) => a = a.wrapping_add(k),
                Op::Sub(k) => a = a.wrapping_sub(k),
                Op::Mul(k) => a = a.wrapping_mul(k),
                Op::Div(k) => a = ld!(a.checked_div(k)),
                Op::Mod(k) => a = ld!(a.checked_rem(k)),
                Op::Or(k) => a |= k,
                Op::And(k) => a &= k,
                Op::Lsh(k) => a = a.checked_shl(k).unwrap_or(0),
                Op::Rsh(k) => a = a.checked_shr(k).unwrap_or(0),
                Op::Xor(k) => a ^= k,
                Op::AddX => a = a.wrapping_add(x),
                Op::SubX => a = a.wrapping_sub(x),
                Op::MulX => a = a.wrapping_mul(x),
                Op::DivX => a = ld!(a.checked_div(x)),
                Op::ModX => a = ld!(a.checked_rem(x)),
                Op::OrX => a |= x,
                Op::AndX => a &= x,
                Op::LshX => a = a.checked_shl(x).unwrap_or(0),
                Op::RshX => a = a.checked_shr(x).unwrap_or(0),
                Op::XorX => a ^= x,
                Op::Neg => a = a.wrapping_neg(),
                Op::Ja(t) => pc = usize::from(t),
                Op::Jeq(k, t, f) => pc = usize::from(if a == k { t } else { f }),
                Op::Jgt(k, t, f) => pc = usize::from(if a > k { t } else { f }),
                Op::Jge(k, t, f) => pc = usize::from(if a >= k { t } else { f }),
                Op::Jset(k, t, f) => pc = usize::from(if a & k != 0 { t } else { f }),
                Op::JeqX(t, f) => pc = usize::from(if a == x { t } else { f }),
                Op::JgtX(t, f) => pc = usize::from(if a > x { t } else { f }),
                Op::JgeX(t, f) => pc = usize::from(if a >= x { t } else { f }),
                Op::JsetX(t, f) => pc = usize::from(if a & x != 0 { t } else { f }),
                Op::Ret(k) => return k,
                Op::RetA => return a,
                Op::Tax => x = a,
                Op::Txa => a = x,
                Op::LdWJeq(o, k, t, f) => {
                    a = ld!(w(frame, o));
                    pc = usize::from(if a == k { t } else { f });
                }
                Op::LdHJeq(o, k, t, f) => {
                    a = ld!(h(frame, o));
                    pc = usize::from(if a == k { t } else { f });
                }
                Op::LdBJeq(o, k, t, f) => {
                    a = ld!(b(frame, o));
                    pc = usize::from(if a == k { t } else { f });
                }
                Op::LdHJge(o, k, t, f) => {
                    a = ld!(h(frame, o));
                    pc = usize::from(if a >= k { t } else { f });
                }
                Op::LdHJgt(o, k, t, f) => {
                    a = ld!(h(frame, o));
                    pc = usize::from(if a > k { t } else { f });
                }
                Op::LdBJset(o, k, t, f) => {
                    a = ld!(b(frame, o));
                    pc = usize::from(if a & k != 0 { t } else { f });
                }
                Op::LdHJset(o, k, t, f) => {
                    a = ld!(h(frame, o));
                    pc = usize::from(if a & k != 0 { t } else { f });
                }
                Op::LdIndHJeq(o, k, t, f) => {
                    a = ld!(h(frame, x.wrapping_add(o)));
                    pc = usize::from(if a == k { t } else { f });
                }
                Op::LdIndBJset(o, k, t, f) => {
                    a = ld!(b(frame, x.wrapping_add(o)));
                    pc = usize::from(if a & k != 0 { t } else { f });
                }
            }
        }
    }
}

/// A big-endian 32-bit load at `off`, if inside the frame.
#[inline(always)]
fn w(frame: &[u8], off: u32) -> Option<u32> {
    let o = off as usize;
    let s = frame.get(o..o.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// A big-endian 16-bit load at `off`, if inside the frame.
#[inline(always)]
fn h(frame: &[u8], off: u32) -> Option<u32> {
    let o = off as usize;
    let s = frame.get(o..o.checked_add(2)?)?;
    Some(u32::from(u16::from_be_bytes([s[0], s[1]])))
}

/// The byte at `off`, if inside the frame.
#[inline(always)]
fn b(frame: &[u8], off: u32) -> Option<u32> {
    frame.get(off as usize).map(|&v| u32::from(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ldh [12]; jeq #0x800, 0, 1; ret #65535; ret #0` ("ip").
    fn ip() -> Vec<Insn> {
        vec![
            (0x28, 0, 0, 12),
            (0x15, 0, 1, 0x800),
            (0x06, 0, 0, 65535),
            (0x06, 0, 0, 0),
        ]
    }

    #[test]
    fn runs_and_rejects_out_of_frame_loads() {
        let p = Program::new(&ip()).unwrap();
        let mut f = vec![0u8; 14];
        f[12] = 8;
        assert!(p.matches(&f));
        f[13] = 0xdd;
        assert!(!p.matches(&f));
        assert!(!p.matches(&f[..13]), "a load past the end rejects");
    }

    #[test]
    fn refuses_invalid_programs() {
        assert!(Program::new(&[]).is_err());
        assert!(
            Program::new(&[(0x15, 5, 0, 1), (0x06, 0, 0, 0)]).is_err(),
            "jump out"
        );
        assert!(Program::new(&[(0x28, 0, 0, 12)]).is_err(), "no return");
        assert!(
            Program::new(&[(0x60, 0, 0, 16), (0x06, 0, 0, 0)]).is_err(),
            "memory"
        );
        assert!(
            Program::new(&[(0x34, 0, 0, 0), (0x06, 0, 0, 0)]).is_err(),
            "div 0"
        );
        assert!(
            Program::new(&[(0xff, 0, 0, 0), (0x06, 0, 0, 0)]).is_err(),
            "opcode"
        );
    }
}
