//! A classic BPF interpreter on byte slices: the capture filter the worker runs.
//!
//! libpcap compiles the tcpdump expression (`dpdk_sys::PcapProgram`); the instructions are
//! checked and decoded once here, into two forms that give the same answers:
//! - the **exact form**, flat operations with their operands resolved (one dispatch per
//!   instruction; a load followed by a conditional jump is one operation), every load
//!   bounds-checked as libpcap's `bpf_filter` does;
//! - the **fast form** ([`Node`]), which [`Program::run`] uses: libpcap's programs are mostly
//!   "load a field at a constant offset (or at X plus one), maybe mask it, compare it with a
//!   constant, jump", and each such group is one node of a single shape, tested without a
//!   branch on its kind (`(field & mask) - lo <= span`, the comparison turned into a range at
//!   decode time). A node reads a 4-byte window with one length check and shifts the field
//!   out of it. Anything else (arithmetic, scratch memory, a window past the frame's end)
//!   hands the registers over to the exact form at that instruction, so a frame near the
//!   end of a load, or an unusual program, gets the exact answer at the exact form's cost.
//!
//! Every frame a filter rejects takes the same short path through the program, so the
//! branches predict well. Semantics follow libpcap's `bpf_filter`: a load outside the frame,
//! or a division by zero, rejects the packet; `dataplane/tests/capture_bpf.rs` holds both forms
//! to libpcap's answers.

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

/// What a [`Node`] of the fast form does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Load a field at `off` (plus X where `xmask` is all ones) into A, then test A.
    Test,
    /// Test A as it is (a conditional jump the fast form did not fuse with its load; an
    /// unconditional jump is a test that always holds).
    TestA,
    /// X = 4 * (the low nibble of the byte at `off`): libpcap's IP header length.
    Msh,
    /// Return `lo`.
    Ret,
    /// Return A.
    RetA,
    /// Anything else: go on in the exact form at this instruction.
    Exact,
}

/// One instruction of the fast form (a decoded load-and-jump group, a return, or a hand-over
/// to the exact form), at the index of the group's first instruction.
///
/// A test loads the 32-bit big-endian window at `off` (+ X), shifts the field down by
/// `shift`, masks it with `amask` (the load's width, and an `and #k` folded in): that is A.
/// It holds when `(A & tmask) - lo <= span` (wrapping): `jeq k` is `lo = k, span = 0`, `jgt
/// k` is `lo = k + 1, span = MAX - k - 1`, `jge k` is `lo = k, span = MAX - k`, `jset k` is
/// `tmask = k, lo = 1, span = MAX - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Node {
    kind: Kind,
    shift: u8,
    jt: u16,
    jf: u16,
    off: u32,
    xmask: u32,
    amask: u32,
    tmask: u32,
    lo: u32,
    span: u32,
}

impl Node {
    const EXACT: Node = Node {
        kind: Kind::Exact,
        shift: 0,
        jt: 0,
        jf: 0,
        off: 0,
        xmask: 0,
        amask: 0,
        tmask: 0,
        lo: 0,
        span: 0,
    };

    /// A test of `cmp` (a jump operation) on A, or `None` if `cmp` is not a conditional jump
    /// on a constant.
    fn test_a(cmp: Op) -> Option<Node> {
        let (tmask, lo, span, jt, jf) = match cmp {
            Op::Jeq(k, t, f) => (u32::MAX, k, 0, t, f),
            // `A > MAX` never holds: a range that nothing masked to 0 falls in.
            Op::Jgt(u32::MAX, t, f) => (0, 1, 0, t, f),
            Op::Jgt(k, t, f) => (u32::MAX, k + 1, u32::MAX - k - 1, t, f),
            Op::Jge(k, t, f) => (u32::MAX, k, u32::MAX - k, t, f),
            Op::Jset(k, t, f) => (k, 1, u32::MAX - 1, t, f),
            Op::Ja(t) => (0, 0, 0, t, t),
            _ => return None,
        };
        Some(Node {
            kind: Kind::TestA,
            jt,
            jf,
            tmask,
            lo,
            span,
            ..Node::EXACT
        })
    }

    /// The load of `op` (constant offset, or X plus a constant) as a test's load part:
    /// (offset, X mask, shift, width mask).
    fn load(op: Op) -> Option<(u32, u32, u8, u32)> {
        Some(match op {
            Op::LdW(k) => (k, 0, 0, u32::MAX),
            Op::LdH(k) => (k, 0, 16, 0xffff),
            Op::LdB(k) => (k, 0, 24, 0xff),
            Op::LdIndW(k) => (k, u32::MAX, 0, u32::MAX),
            Op::LdIndH(k) => (k, u32::MAX, 16, 0xffff),
            Op::LdIndB(k) => (k, u32::MAX, 24, 0xff),
            _ => return None,
        })
    }
}

/// A checked classic BPF program, in both forms, with its pre-check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    ops: Box<[Op]>,
    fast: Box<[Node]>,
    pre: Precheck,
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
        let fast = fast_form(&ops);
        let pre = Precheck::of(&ops, &fast);
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
            fast,
            pre,
        })
    }

    /// Whether `frame` matches (the program returns a non-zero length). Never panics; no
    /// allocation.
    #[inline]
    pub fn matches(&self, frame: &[u8]) -> bool {
        self.run(frame) != 0
    }

    /// Runs the program on `frame`: its return value (0: reject). The pre-check, then the
    /// fast form, handing over to the exact form where it stops. Inlined in its caller's
    /// loop with the pre-check (the fast form is a call).
    #[inline(always)]
    pub fn run(&self, frame: &[u8]) -> u32 {
        if !self.pre.may_match(frame) {
            return 0;
        }
        self.run_fast(frame)
    }

    /// The pre-check's terms (a disjunction of conjunctions of field tests; none: every
    /// frame passes), for tests and `Debug`.
    pub fn precheck_terms(&self) -> usize {
        self.pre.terms.len()
    }

    /// Runs the fast form (without the pre-check) on `frame`: for tests and measurements.
    #[inline(never)]
    pub fn run_fast(&self, frame: &[u8]) -> u32 {
        let (mut a, mut x) = (0u32, 0u32);
        let mut pc = 0usize;
        loop {
            // Jumps were checked to land inside and the last node returns, so `pc` stays in
            // range; `get` keeps that a checked fact rather than an assumption.
            let Some(n) = self.fast.get(pc) else {
                return 0;
            };
            match n.kind {
                Kind::Test => {
                    // As libpcap: X + k is not wrapped (64-bit `usize`), so past the end.
                    let o = n.off as usize + (x & n.xmask) as usize;
                    let Some(w) = frame.get(o..).and_then(|s| s.first_chunk::<4>()) else {
                        // Fewer than 4 bytes from `o` on: the exact form loads just the field.
                        break;
                    };
                    a = (u32::from_be_bytes(*w) >> n.shift) & n.amask;
                }
                Kind::TestA => {}
                Kind::Msh => {
                    let Some(&v) = frame.get(n.off as usize) else {
                        break;
                    };
                    x = u32::from(v & 0x0f) << 2;
                    pc += 1;
                    continue;
                }
                Kind::Ret => return n.lo,
                Kind::RetA => return a,
                Kind::Exact => break,
            }
            // A branch, not a select: the next node is then known before the test is worked
            // out (the path of the frames a filter rejects repeats and predicts).
            if (a & n.tmask).wrapping_sub(n.lo) <= n.span {
                pc = usize::from(n.jt);
            } else {
                cold();
                pc = usize::from(n.jf);
            }
        }
        self.exact(pc, a, x, frame)
    }

    /// Runs the program on `frame` in the exact form alone (what [`Program::run`] hands
    /// over to): for tests and measurements.
    pub fn run_exact(&self, frame: &[u8]) -> u32 {
        self.exact(0, 0, 0, frame)
    }

    /// The exact form from instruction `pc` with registers `a` and `x` (scratch memory is
    /// zero: the fast form never writes it).
    fn exact(&self, mut pc: usize, mut a: u32, mut x: u32, frame: &[u8]) -> u32 {
        let mut m = [0u32; MEM];
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
                Op::LdIndW(k) => a = ld!(w(frame, ind(x, k))),
                Op::LdIndH(k) => a = ld!(h(frame, ind(x, k))),
                Op::LdIndB(k) => a = ld!(b(frame, ind(x, k))),
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
                    a = ld!(h(frame, ind(x, o)));
                    pc = usize::from(if a == k { t } else { f });
                }
                Op::LdIndBJset(o, k, t, f) => {
                    a = ld!(b(frame, ind(x, o)));
                    pc = usize::from(if a & k != 0 { t } else { f });
                }
            }
        }
    }
}

/// A field test of the pre-check: the 32-bit big-endian window at `off` (plus the IP header
/// length libpcap's `ldxb 4*([msh]&0xf)` loads, where `msh` is set), shifted down by `shift`,
/// masked with `mask`, falls in `[lo, lo + span]` (wrapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Atom {
    off: u32,
    msh: Option<u32>,
    shift: u8,
    mask: u32,
    lo: u32,
    span: u32,
}

impl Atom {
    /// Whether the test may hold: it does, or it cannot be worked out on the frame (a window
    /// past its end: the program itself decides).
    #[inline(always)]
    fn may_hold(&self, frame: &[u8]) -> bool {
        let base = match self.msh {
            None => 0,
            Some(m) => match frame.get(m as usize) {
                Some(&v) => usize::from(v & 0x0f) << 2,
                None => return true,
            },
        };
        let o = self.off as usize + base;
        let Some(w) = frame.get(o..).and_then(|s| s.first_chunk::<4>()) else {
            return true;
        };
        ((u32::from_be_bytes(*w) >> self.shift) & self.mask).wrapping_sub(self.lo) <= self.span
    }

    /// The opposite test (`None`: it never holds, its range covers everything).
    fn not(self) -> Option<Atom> {
        (self.span != u32::MAX).then(|| Atom {
            lo: self.lo.wrapping_add(self.span).wrapping_add(1),
            span: u32::MAX - self.span - 1,
            ..self
        })
    }

    /// How likely the test is to hold on random bytes, as log2 (the most selective first).
    fn odds(&self) -> i32 {
        let width = (u64::from(self.span) + 1).ilog2() as i32;
        width - self.mask.count_ones() as i32
    }
}

/// A necessary condition for a program to accept a frame, in disjunctive normal form:
/// `terms[i]` are ranges of `atoms`, each a conjunction. No term: no frame is accepted.
/// `all`: the condition is trivial (every frame passes) and is not evaluated.
///
/// Derived once from the program ([`Precheck::of`]), by walking it backwards from its
/// returns, following what A and X hold on each path (a field at a constant offset, or
/// after the IP header): a field test on the way to an accepting return adds itself (or
/// its opposite) to the condition, anything else (arithmetic, scratch memory, a length)
/// only joins its successors' conditions. To stay cheap the condition is weakened (never
/// strengthened): at most [`PRE_ATOMS`] tests per term, the most selective kept, and at most
/// [`PRE_TERMS`] terms, or the tests they share.
///
/// Frames of the same kind take the same path through it, and its loads do not depend on
/// each other, so a frame it rejects costs a few nanoseconds, whatever the program's length.
/// It is used only when it is worth it ([`worth`]).
///
/// The first (most selective) test of every term, deduplicated, is `heads` (a term is its
/// head's index and the range of its other tests in `atoms`): one of them holds if the
/// condition does, so they are tried first, and most frames stop there.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Precheck {
    all: bool,
    heads: Box<[Atom]>,
    atoms: Box<[Atom]>,
    terms: Box<[(u8, u16, u16)]>,
}

/// Tests per term of a [`Precheck`].
const PRE_ATOMS: usize = 4;
/// Terms of a [`Precheck`].
const PRE_TERMS: usize = 8;
/// How deep the walk of [`Precheck::of`] follows a path before it gives up on it (taking
/// it as accepting).
const PRE_DEPTH: usize = 256;

/// What a register holds on a path, as far as the pre-check knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Held {
    Unknown,
    /// A holds a field: (offset, IP header length offset, shift, mask).
    Field(u32, Option<u32>, u8, u32),
    /// X holds 4 * (the low nibble of the byte at this offset).
    Msh(u32),
}

type Dnf = Vec<Vec<Atom>>;

impl Precheck {
    /// The pre-check of the program whose plain operations are `ops` and fast form `fast`.
    fn of(ops: &[Op], fast: &[Node]) -> Precheck {
        let mut memo = std::collections::HashMap::new();
        let dnf = nc(ops, fast, 0, Held::Unknown, Held::Unknown, 0, &mut memo);
        let all = dnf.iter().any(|t| t.is_empty()) || !worth(&dnf);
        let mut atoms = Vec::new();
        let mut terms = Vec::new();
        let mut heads: Vec<Atom> = Vec::new();
        if !all {
            for t in &dnf {
                let head = heads.iter().position(|h| *h == t[0]).unwrap_or_else(|| {
                    heads.push(t[0]);
                    heads.len() - 1
                });
                let start = atoms.len() as u16;
                atoms.extend_from_slice(&t[1..]);
                terms.push((head as u8, start, atoms.len() as u16));
            }
        }
        Precheck {
            all,
            heads: heads.into_boxed_slice(),
            atoms: atoms.into_boxed_slice(),
            terms: terms.into_boxed_slice(),
        }
    }

    /// Whether `frame` may match (false: the program rejects it): the heads up to the first
    /// that holds (a frame the pre-check rejects usually stops there), the others as a bit
    /// set, then the terms whose head held.
    #[inline(always)]
    fn may_match(&self, frame: &[u8]) -> bool {
        if self.all {
            return true;
        }
        let Some(first) = self.heads.iter().position(|h| h.may_hold(frame)) else {
            return false;
        };
        let mut held = 1u32 << first;
        for (i, h) in self.heads.iter().enumerate().skip(first + 1) {
            held |= u32::from(h.may_hold(frame)) << i;
        }
        self.terms.iter().any(|&(h, s, e)| {
            held >> h & 1 != 0
                && self
                    .atoms
                    .get(usize::from(s)..usize::from(e))
                    .is_none_or(|t| t.iter().all(|a| a.may_hold(frame)))
        })
    }
}

/// Whether the pre-check `dnf` is worth running before the program: it has a selective test
/// (more than 16 bits: an address, a prefix longer than /16), or its terms (the heads once)
/// take fewer tests than the program's own path. A condition of EtherTypes and protocols
/// alone passes most traffic and would only add to the program's cost.
fn worth(dnf: &Dnf) -> bool {
    let selective = dnf.iter().flatten().any(|a| a.odds() < -16);
    let tests: usize = dnf.iter().map(|t| t.len()).sum();
    selective || tests <= 2 * PRE_ATOMS
}

/// `c` and `d`: `c` added to every term of `d` (the most selective [`PRE_ATOMS`] kept).
fn and(c: Atom, d: &Dnf) -> Dnf {
    d.iter()
        .map(|t| {
            let mut t = t.clone();
            if !t.contains(&c) {
                t.push(c);
                t.sort_by_key(Atom::odds);
                t.truncate(PRE_ATOMS);
            }
            t
        })
        .collect()
}

/// `a` or `b`, weakened to the tests all terms share past [`PRE_TERMS`] terms.
fn or(mut a: Dnf, b: Dnf) -> Dnf {
    for t in b {
        if !a.contains(&t) {
            a.push(t);
        }
    }
    if a.len() > PRE_TERMS {
        let first = a[0].clone();
        let common = first
            .into_iter()
            .filter(|c| a.iter().all(|t| t.contains(c)))
            .collect();
        a = vec![common];
    }
    a
}

/// The necessary condition for the program to accept from instruction `pc`, with A and X
/// holding `a` and `x`.
fn nc(
    ops: &[Op],
    fast: &[Node],
    pc: usize,
    a: Held,
    x: Held,
    depth: usize,
    memo: &mut std::collections::HashMap<(usize, Held, Held), Dnf>,
) -> Dnf {
    let (Some(&op), Some(&node)) = (ops.get(pc), fast.get(pc)) else {
        return vec![vec![]];
    };
    if depth > PRE_DEPTH {
        return vec![vec![]];
    }
    if let Some(d) = memo.get(&(pc, a, x)) {
        return d.clone();
    }
    let mut go = |to: u16, a: Held, x: Held| nc(ops, fast, usize::from(to), a, x, depth + 1, memo);
    let d = match node.kind {
        Kind::Ret => {
            if node.lo == 0 {
                vec![]
            } else {
                vec![vec![]]
            }
        }
        Kind::RetA => vec![vec![]],
        Kind::Msh => go(pc as u16 + 1, a, Held::Msh(node.off)),
        Kind::Test | Kind::TestA => {
            let held = if node.kind == Kind::TestA {
                a
            } else if node.xmask == 0 {
                Held::Field(node.off, None, node.shift, node.amask)
            } else if let Held::Msh(m) = x {
                Held::Field(node.off, Some(m), node.shift, node.amask)
            } else {
                Held::Unknown
            };
            let t = go(node.jt, held, x);
            let f = go(node.jf, held, x);
            match held {
                // A test of no bits (an unconditional jump): no field test.
                Held::Field(_, _, _, amask) if amask & node.tmask == 0 => {
                    if 0u32.wrapping_sub(node.lo) <= node.span {
                        t
                    } else {
                        f
                    }
                }
                Held::Field(off, msh, shift, amask) => {
                    let c = Atom {
                        off,
                        msh,
                        shift,
                        mask: amask & node.tmask,
                        lo: node.lo,
                        span: node.span,
                    };
                    let f = match c.not() {
                        Some(n) => and(n, &f),
                        None => vec![],
                    };
                    or(and(c, &t), f)
                }
                _ => or(t, f),
            }
        }
        Kind::Exact => match op {
            Op::Ja(t) => go(t, a, x),
            Op::Jeq(_, t, f)
            | Op::Jgt(_, t, f)
            | Op::Jge(_, t, f)
            | Op::Jset(_, t, f)
            | Op::JeqX(t, f)
            | Op::JgtX(t, f)
            | Op::JgeX(t, f)
            | Op::JsetX(t, f) => {
                let t = go(t, Held::Unknown, Held::Unknown);
                let f = go(f, Held::Unknown, Held::Unknown);
                or(t, f)
            }
            // Returns are not `Exact`; anything else goes on to the next instruction (or
            // rejects).
            _ => go(pc as u16 + 1, Held::Unknown, Held::Unknown),
        },
    };
    memo.insert((pc, a, x), d.clone());
    d
}

/// A call that marks its branch as the less likely one (what `std::hint::cold_path` does from
/// Rust 1.95; the workspace supports 1.89): enough for the compiler to keep a branch.
#[cold]
#[inline(always)]
fn cold() {}

/// The offset of an X-indexed load: X + k, not wrapped (as libpcap, which rejects a sum past
/// the frame, however large).
#[inline(always)]
fn ind(x: u32, k: u32) -> u64 {
    u64::from(x) + u64::from(k)
}

/// The fast form of the (unfused) operations `ops`: a node per instruction.
fn fast_form(ops: &[Op]) -> Box<[Node]> {
    let n = ops.len();
    (0..n)
        .map(|i| {
            let next = |d: usize| ops.get(i + d).copied();
            match ops[i] {
                Op::Ret(k) => Node {
                    kind: Kind::Ret,
                    lo: k,
                    ..Node::EXACT
                },
                Op::RetA => Node {
                    kind: Kind::RetA,
                    ..Node::EXACT
                },
                Op::LdxMsh(k) => Node {
                    kind: Kind::Msh,
                    off: k,
                    ..Node::EXACT
                },
                op => {
                    let Some((off, xmask, shift, width)) = Node::load(op) else {
                        return Node::test_a(op).unwrap_or(Node::EXACT);
                    };
                    // `ld; jcc` or `ld; and #m; jcc`.
                    let (amask, jump) = match (next(1), next(2)) {
                        (Some(Op::And(m)), Some(j)) => (width & m, j),
                        (Some(j), _) => (width, j),
                        (None, _) => return Node::EXACT,
                    };
                    match Node::test_a(jump) {
                        Some(t) => Node {
                            kind: Kind::Test,
                            shift,
                            off,
                            xmask,
                            amask,
                            ..t
                        },
                        None => Node::EXACT,
                    }
                }
            }
        })
        .collect()
}

/// A big-endian 32-bit load at `off`, if inside the frame.
#[inline(always)]
fn w(frame: &[u8], off: impl Into<u64>) -> Option<u32> {
    let o = usize::try_from(off.into()).ok()?;
    let s = frame.get(o..o.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// A big-endian 16-bit load at `off`, if inside the frame.
#[inline(always)]
fn h(frame: &[u8], off: impl Into<u64>) -> Option<u32> {
    let o = usize::try_from(off.into()).ok()?;
    let s = frame.get(o..o.checked_add(2)?)?;
    Some(u32::from(u16::from_be_bytes([s[0], s[1]])))
}

/// The byte at `off`, if inside the frame.
#[inline(always)]
fn b(frame: &[u8], off: impl Into<u64>) -> Option<u32> {
    let o = usize::try_from(off.into()).ok()?;
    frame.get(o).map(|&v| u32::from(v))
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

    /// Opcodes the random programs are made of: loads (absolute, indexed, `ldxb msh`),
    /// `and`, `add x`, `tax`, the conditional jumps on constants and on X, `ja`, returns.
    const CODES: &[u16] = &[
        0x20, 0x28, 0x30, 0x40, 0x48, 0x50, 0xb1, 0x54, 0x0c, 0x07, 0x15, 0x25, 0x35, 0x45, 0x1d,
        0x05, 0x06, 0x16, 0x80, 0x02, 0x60,
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        /// The pre-check and the fast form give the exact form's answer on random programs
        /// and frames (libpcap's answers for real filters: `tests/capture_bpf.rs`).
        #[test]
        fn forms_agree_on_random_programs(
            body in proptest::collection::vec(
                (0..CODES.len(), 0u8..4, 0u8..4, proptest::prop_oneof![0u32..70, proptest::prelude::any::<u32>()]),
                1..14,
            ),
            frame in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
            small in proptest::collection::vec(0u8..4, 80),
        ) {
            let mut insns: Vec<Insn> = body.iter().map(|&(c, t, f, k)| (CODES[c], t, f, k)).collect();
            insns.push((0x06, 0, 0, 1));
            insns.push((0x06, 0, 0, 0));
            let Ok(p) = Program::new(&insns) else {
                return Ok(());
            };
            // Frames of few byte values, so that equality tests hold now and then.
            let low: Vec<u8> = frame.iter().zip(&small).map(|(_, &v)| v).collect();
            for f in [&frame, &low] {
                let want = p.run_exact(f);
                proptest::prop_assert_eq!(p.run_fast(f), want, "{:?}", insns);
                proptest::prop_assert_eq!(p.run(f) != 0, want != 0, "{:?}", insns);
            }
        }
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
