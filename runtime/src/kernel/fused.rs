//! Fused kernels: pointwise chains, optionally around row reductions, with Philox draws by
//! global index.
//!
//! The body is evaluated value by value over a *tile* (never expression by expression per
//! element): a tile is `kl` consecutive positions of the dims after the row (`inner`) at one
//! position of the dims before it (`outer`), times the whole row, laid out row position major
//! (element `r * kl + kk`). Without a row the row is empty (one position) and a tile is a chunk
//! of consecutive elements. Each value of a tile is then a constant (computed once per launch),
//! a row-uniform value (one per row of the tile: a scalar when the tile holds one row) or a
//! per-element vector, and each op is one tight loop over its operands. A contiguous input is
//! read in place.
//!
//! Large launches run on several threads (at most `TPC_KERNEL_THREADS`, by default the
//! machine's parallelism), split over the outer dims (rows) or over chunks of elements; each
//! element is computed the same way whatever the split, so results do not depend on it.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::OnceLock;

use tpc_codegen::kir::{Expr, Fused, Value};
use tpc_ir::ops::{BinaryOp, UnaryOp};
use tpc_ir::{DType, ReduceOp};

use super::lut::{self, Func};
use super::{draw, Args, View, ViewMut};
use crate::ops::pointwise::{compare, float_binary};
use crate::tensor::round_to;
use crate::{Error, Result};

/// Elements per tile (fewer rows of a long row; one row however long).
const CHUNK: usize = 4096;
/// Elements per thread below which a launch does not start another thread.
const PARALLEL_MIN: usize = 1 << 16;
/// Elements from which a launch builds the lookup tables it can use (`lut`).
const LUT_MIN: usize = 1 << 14;

/// How a body value varies over a tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    /// The same for every element of the launch (constants, scalar arguments).
    Const,
    /// The same for every element of a row.
    Row,
    /// Per element.
    Elem,
}

/// An input of the launch, as f32, with its strides per iteration dim (0 where it broadcasts).
struct InPlan<'a> {
    data: Cow<'a, [f32]>,
    strides: Vec<usize>,
    /// The offset of each row position (over the row dims).
    rowoff: Vec<usize>,
    /// `rowoff[r] == r * step` for every `r`.
    row_step: Option<usize>,
    /// Whether the offset over the inner dims of inner position `i` is `i`.
    inner_contig: bool,
}

struct OutPlan {
    value: usize,
    per_row: bool,
    /// The dtype to round float stores to (None: the value is stored as it is, or as a bool).
    round: Option<DType>,
}

/// Everything a tile needs, computed once per launch.
struct Plan<'a> {
    body: &'a [(tpc_codegen::kir::Scalar, Expr)],
    n: Vec<usize>,
    /// The row dims `a..b` (`0..0` without a row).
    a: usize,
    b: usize,
    outer: usize,
    rlen: usize,
    inner: usize,
    /// Inner positions per tile.
    tile: usize,
    ins: Vec<InPlan<'a>>,
    level: Vec<Level>,
    /// The value of each `Const` value.
    cval: Vec<f32>,
    /// Per body value, the table it looks its function up in, with the dtype it indexes.
    lut: Vec<Option<(Func, &'static [f32], DType)>>,
    /// `g<d>` per dim, when the body draws random numbers.
    tables: Vec<&'a [i64]>,
    /// Σ over the row dims of `g<d>`, per row position.
    grow: Vec<i64>,
    outs: Vec<OutPlan>,
}

/// An output buffer (or a worker's part of it).
enum OutSlice<'o> {
    F(&'o mut [f32]),
    B(&'o mut [bool]),
}

impl OutSlice<'_> {
    fn len(&self) -> usize {
        match self {
            OutSlice::F(v) => v.len(),
            OutSlice::B(v) => v.len(),
        }
    }

    /// Splits off the first `n` elements.
    fn split(self, n: usize) -> (Self, Self) {
        match self {
            OutSlice::F(v) => {
                let (a, b) = v.split_at_mut(n);
                (OutSlice::F(a), OutSlice::F(b))
            }
            OutSlice::B(v) => {
                let (a, b) = v.split_at_mut(n);
                (OutSlice::B(a), OutSlice::B(b))
            }
        }
    }

    /// Stores `src` at `start`, rounded to `round` (or as bools).
    fn put(&mut self, round: Option<DType>, start: usize, src: &[f32]) {
        match self {
            OutSlice::F(d) => {
                let d = &mut d[start..start + src.len()];
                match round {
                    Some(DType::BF16) => {
                        d.iter_mut().zip(src).for_each(|(y, &x)| *y = round_bf16(x))
                    }
                    Some(DType::F16) => d
                        .iter_mut()
                        .zip(src)
                        .for_each(|(y, &x)| *y = round_to(DType::F16, x)),
                    _ => d.copy_from_slice(src),
                }
            }
            OutSlice::B(d) => d[start..start + src.len()]
                .iter_mut()
                .zip(src)
                .for_each(|(y, &x)| *y = x != 0.0),
        }
    }

    /// Stores `len` copies of `x` at `start`.
    fn fill(&mut self, round: Option<DType>, start: usize, len: usize, x: f32) {
        match self {
            OutSlice::F(d) => {
                let x = round.map_or(x, |dt| round_to(dt, x));
                d[start..start + len].fill(x);
            }
            OutSlice::B(d) => d[start..start + len].fill(x != 0.0),
        }
    }
}

/// `round_to(DType::BF16, x)` (round to nearest even, NaN kept quiet), without branches so that
/// loops of it vectorize.
#[inline(always)]
pub(super) fn round_bf16(x: f32) -> f32 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000;
    let nan = (b | 0x0040_0000) & 0xFFFF_0000;
    f32::from_bits(if b & 0x7FFF_FFFF > 0x7F80_0000 {
        nan
    } else {
        rounded
    })
}

fn bit(b: bool) -> f32 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// A unary op on one register (bools as 0/1).
fn scalar_unary(op: UnaryOp, x: f32) -> f32 {
    match op {
        UnaryOp::Not => bit(x == 0.0),
        op => op.eval_f32(x),
    }
}

/// A binary op on two registers (bools as 0/1).
fn scalar_binary(op: BinaryOp, x: f32, y: f32) -> f32 {
    match op {
        BinaryOp::And => bit(x != 0.0 && y != 0.0),
        BinaryOp::Or => bit(x != 0.0 || y != 0.0),
        op if op.is_comparison() => bit(compare(op, x, y)),
        op => float_binary(op, x, y),
    }
}

/// Calls `$run(f, args…)` with `f` the scalar function of unary op `$op`, one instance per op
/// (so the inner loops do not dispatch on the op).
macro_rules! with_unary {
    ($op:expr, $run:ident($($arg:expr),*)) => {
        match $op {
            UnaryOp::Not => $run(|x: f32| bit(x == 0.0), $($arg),*),
            UnaryOp::Neg => $run(|x: f32| UnaryOp::Neg.eval_f32(x), $($arg),*),
            UnaryOp::Abs => $run(|x: f32| UnaryOp::Abs.eval_f32(x), $($arg),*),
            UnaryOp::Exp => $run(|x: f32| UnaryOp::Exp.eval_f32(x), $($arg),*),
            UnaryOp::Log => $run(|x: f32| UnaryOp::Log.eval_f32(x), $($arg),*),
            UnaryOp::Sqrt => $run(|x: f32| UnaryOp::Sqrt.eval_f32(x), $($arg),*),
            UnaryOp::Rsqrt => $run(|x: f32| UnaryOp::Rsqrt.eval_f32(x), $($arg),*),
            UnaryOp::Tanh => $run(|x: f32| UnaryOp::Tanh.eval_f32(x), $($arg),*),
            UnaryOp::Sigmoid => $run(|x: f32| UnaryOp::Sigmoid.eval_f32(x), $($arg),*),
            UnaryOp::Relu => $run(|x: f32| UnaryOp::Relu.eval_f32(x), $($arg),*),
            UnaryOp::Silu => $run(|x: f32| UnaryOp::Silu.eval_f32(x), $($arg),*),
            UnaryOp::Reciprocal => {
                $run(|x: f32| UnaryOp::Reciprocal.eval_f32(x), $($arg),*)
            }
            // The rest through the op's own definition (one dispatch per element).
            other => $run(move |x: f32| other.eval_f32(x), $($arg),*),
        }
    };
}

/// As `with_unary`, for binary ops.
macro_rules! with_binary {
    ($op:expr, $run:ident($($arg:expr),*)) => {
        match $op {
            BinaryOp::Add => $run(|x: f32, y: f32| x + y, $($arg),*),
            BinaryOp::Sub => $run(|x: f32, y: f32| x - y, $($arg),*),
            BinaryOp::Mul => $run(|x: f32, y: f32| x * y, $($arg),*),
            BinaryOp::Div => $run(|x: f32, y: f32| x / y, $($arg),*),
            BinaryOp::Maximum => {
                $run(|x: f32, y: f32| float_binary(BinaryOp::Maximum, x, y), $($arg),*)
            }
            BinaryOp::Minimum => {
                $run(|x: f32, y: f32| float_binary(BinaryOp::Minimum, x, y), $($arg),*)
            }
            BinaryOp::Pow => $run(|x: f32, y: f32| float_binary(BinaryOp::Pow, x, y), $($arg),*),
            BinaryOp::Eq => $run(|x: f32, y: f32| bit(compare(BinaryOp::Eq, x, y)), $($arg),*),
            BinaryOp::Ne => $run(|x: f32, y: f32| bit(compare(BinaryOp::Ne, x, y)), $($arg),*),
            BinaryOp::Lt => $run(|x: f32, y: f32| bit(compare(BinaryOp::Lt, x, y)), $($arg),*),
            BinaryOp::Le => $run(|x: f32, y: f32| bit(compare(BinaryOp::Le, x, y)), $($arg),*),
            BinaryOp::Gt => $run(|x: f32, y: f32| bit(compare(BinaryOp::Gt, x, y)), $($arg),*),
            BinaryOp::Ge => $run(|x: f32, y: f32| bit(compare(BinaryOp::Ge, x, y)), $($arg),*),
            BinaryOp::And => $run(|x: f32, y: f32| bit(x != 0.0 && y != 0.0), $($arg),*),
            BinaryOp::Or => $run(|x: f32, y: f32| bit(x != 0.0 || y != 0.0), $($arg),*),
        }
    };
}

/// An operand of an op in a tile.
#[derive(Clone, Copy)]
enum Opd<'r> {
    /// The same for the whole tile.
    S(f32),
    /// One per row of the tile (`kl` values; only when the tile holds several rows).
    U(&'r [f32]),
    /// One per element of the tile (`rlen * kl` values).
    E(&'r [f32]),
}

impl Opd<'_> {
    /// The value at element `t`, inner position `kk` of the tile.
    #[inline(always)]
    fn at(&self, t: usize, kk: usize) -> f32 {
        match self {
            Opd::S(x) => *x,
            Opd::U(u) => u[kk],
            Opd::E(e) => e[t],
        }
    }
}

/// What an op of a tile gave.
enum Res<'p> {
    S(f32),
    /// Written to the value's buffer.
    Buf,
    /// Read in place from an input.
    View(&'p [f32]),
}

#[inline(always)]
fn map1<F: Fn(f32) -> f32>(f: F, a: Opd<'_>, dst: &mut Vec<f32>) -> Res<'static> {
    match a {
        Opd::S(x) => Res::S(f(x)),
        Opd::U(s) | Opd::E(s) => {
            dst.clear();
            dst.extend(s.iter().map(|&x| f(x)));
            Res::Buf
        }
    }
}

#[inline(always)]
fn map2<F: Fn(f32, f32) -> f32>(
    f: F,
    a: Opd<'_>,
    b: Opd<'_>,
    kl: usize,
    dst: &mut Vec<f32>,
) -> Res<'static> {
    dst.clear();
    match (a, b) {
        (Opd::S(x), Opd::S(y)) => return Res::S(f(x, y)),
        (Opd::S(x), Opd::U(s) | Opd::E(s)) => dst.extend(s.iter().map(|&y| f(x, y))),
        (Opd::U(s) | Opd::E(s), Opd::S(y)) => dst.extend(s.iter().map(|&x| f(x, y))),
        (Opd::U(p), Opd::U(q)) | (Opd::E(p), Opd::E(q)) => {
            dst.extend(p.iter().zip(q).map(|(&x, &y)| f(x, y)))
        }
        (Opd::E(p), Opd::U(q)) => {
            for row in p.chunks_exact(kl) {
                dst.extend(row.iter().zip(q).map(|(&x, &y)| f(x, y)));
            }
        }
        (Opd::U(p), Opd::E(q)) => {
            for row in q.chunks_exact(kl) {
                dst.extend(p.iter().zip(row).map(|(&x, &y)| f(x, y)));
            }
        }
    }
    Res::Buf
}

fn select(c: Opd<'_>, a: Opd<'_>, b: Opd<'_>, kl: usize, dst: &mut Vec<f32>) -> Res<'static> {
    let pick = |c: f32, x: f32, y: f32| if c != 0.0 { x } else { y };
    dst.clear();
    match (c, a, b) {
        (Opd::S(c), Opd::S(x), Opd::S(y)) => return Res::S(pick(c, x, y)),
        (Opd::E(c), Opd::E(x), Opd::E(y)) | (Opd::U(c), Opd::U(x), Opd::U(y)) => dst.extend(
            c.iter()
                .zip(x.iter().zip(y))
                .map(|(&c, (&x, &y))| pick(c, x, y)),
        ),
        (Opd::E(c), Opd::E(x), Opd::S(y)) => {
            dst.extend(c.iter().zip(x).map(|(&c, &x)| pick(c, x, y)))
        }
        (Opd::E(c), Opd::S(x), Opd::E(y)) => {
            dst.extend(c.iter().zip(y).map(|(&c, &y)| pick(c, x, y)))
        }
        _ => {
            let len = [c, a, b]
                .iter()
                .map(|o| match o {
                    Opd::S(_) => 0,
                    Opd::U(u) => u.len(),
                    Opd::E(e) => e.len(),
                })
                .max()
                .unwrap_or(0);
            for r in 0..len / kl {
                for kk in 0..kl {
                    let t = r * kl + kk;
                    dst.push(pick(c.at(t, kk), a.at(t, kk), b.at(t, kk)));
                }
            }
        }
    }
    Res::Buf
}

/// Max or min of `acc` and `x`, NaN propagating (as `float_binary(Maximum/Minimum)`).
#[inline(always)]
fn fold_extreme(op: ReduceOp, acc: f32, x: f32) -> f32 {
    match op {
        ReduceOp::Max => float_binary(BinaryOp::Maximum, acc, x),
        _ => float_binary(BinaryOp::Minimum, acc, x),
    }
}

fn identity(op: ReduceOp) -> f32 {
    match op {
        ReduceOp::Sum => 0.0,
        ReduceOp::Max => f32::NEG_INFINITY,
        ReduceOp::Min => f32::INFINITY,
    }
}

/// The reduction of `a` over the `rlen` row positions of a tile of `kl` rows: sums in f64 in
/// row order (then to f32), max and min propagating NaN.
fn reduce(
    op: ReduceOp,
    a: Opd<'_>,
    rlen: usize,
    kl: usize,
    acc: &mut Vec<f64>,
    dst: &mut Vec<f32>,
) -> Res<'static> {
    // The start of std's f64 sum (the reference's), so an all -0.0 row sums alike; an empty
    // row sums to +0.0 as the reference's reductions give.
    let zero: f64 = std::iter::empty::<f64>().sum();
    if rlen == 0 {
        let x = identity(op);
        return if kl == 1 {
            Res::S(x)
        } else {
            dst.clear();
            dst.resize(kl, x);
            Res::Buf
        };
    }
    match a {
        Opd::E(e) if kl == 1 => Res::S(match op {
            ReduceOp::Sum => e.iter().map(|&x| x as f64).sum::<f64>() as f32,
            op => e.iter().fold(identity(op), |m, &x| fold_extreme(op, m, x)),
        }),
        Opd::E(e) => {
            match op {
                ReduceOp::Sum => {
                    acc.clear();
                    acc.resize(kl, zero);
                    for row in e.chunks_exact(kl) {
                        acc.iter_mut().zip(row).for_each(|(s, &x)| *s += x as f64);
                    }
                    dst.clear();
                    dst.extend(acc.iter().map(|&s| s as f32));
                }
                op => {
                    dst.clear();
                    dst.resize(kl, identity(op));
                    for row in e.chunks_exact(kl) {
                        dst.iter_mut()
                            .zip(row)
                            .for_each(|(m, &x)| *m = fold_extreme(op, *m, x));
                    }
                }
            }
            Res::Buf
        }
        // A uniform operand: `rlen` copies of it.
        Opd::S(x) => Res::S(match op {
            ReduceOp::Sum => (0..rlen).map(|_| x as f64).sum::<f64>() as f32,
            op => (0..rlen).fold(identity(op), |m, _| fold_extreme(op, m, x)),
        }),
        Opd::U(u) => {
            dst.clear();
            dst.extend(u.iter().map(|&x| match op {
                ReduceOp::Sum => (0..rlen).map(|_| x as f64).sum::<f64>() as f32,
                op => (0..rlen).fold(identity(op), |m, _| fold_extreme(op, m, x)),
            }));
            Res::Buf
        }
    }
}

/// Row-major offsets (`base + Σ idx_d·strides_d`) of positions `start..start + count` of the
/// space `dims`, appended to `out`.
fn offsets_into(
    dims: &[usize],
    strides: &[usize],
    start: usize,
    count: usize,
    out: &mut Vec<usize>,
) {
    out.clear();
    if count == 0 {
        return;
    }
    let Some(last) = dims.len().checked_sub(1) else {
        out.push(0);
        return;
    };
    let mut idx = vec![0usize; dims.len()];
    let mut rem = start;
    for d in (0..dims.len()).rev() {
        idx[d] = rem % dims[d];
        rem /= dims[d];
    }
    let mut off: usize = idx.iter().zip(strides).map(|(i, s)| i * s).sum();
    let s = strides[last];
    let mut left = count;
    loop {
        let run = left.min(dims[last] - idx[last]);
        out.extend((0..run).map(|k| off + k * s));
        left -= run;
        if left == 0 {
            return;
        }
        // To the start of the next run: carry into the outer dims.
        off += run * s;
        idx[last] += run;
        let mut d = last;
        while idx[d] == dims[d] && d > 0 {
            off -= dims[d] * strides[d];
            idx[d] = 0;
            d -= 1;
            idx[d] += 1;
            off += strides[d];
        }
    }
}

/// `Σ_d tables[d][idx_d]` for positions `start..start + count` of the space `dims`.
fn table_sums_into(
    dims: &[usize],
    tables: &[&[i64]],
    start: usize,
    count: usize,
    out: &mut Vec<i64>,
) {
    out.clear();
    if count == 0 {
        return;
    }
    let Some(last) = dims.len().checked_sub(1) else {
        out.push(0);
        return;
    };
    let mut idx = vec![0usize; dims.len()];
    let mut rem = start;
    for d in (0..dims.len()).rev() {
        idx[d] = rem % dims[d];
        rem /= dims[d];
    }
    let mut left = count;
    loop {
        let base = (0..last).fold(0i64, |a, d| a.wrapping_add(tables[d][idx[d]]));
        let run = left.min(dims[last] - idx[last]);
        let g = &tables[last][idx[last]..idx[last] + run];
        out.extend(g.iter().map(|&x| base.wrapping_add(x)));
        left -= run;
        if left == 0 {
            return;
        }
        idx[last] += run;
        let mut d = last;
        while idx[d] == dims[d] && d > 0 {
            idx[d] = 0;
            d -= 1;
            idx[d] += 1;
        }
    }
}

/// Scratch registers of one worker.
struct Regs<'p> {
    bufs: Vec<Vec<f32>>,
    views: Vec<Option<&'p [f32]>>,
    scal: Vec<f32>,
    offs: Vec<usize>,
    gin: Vec<i64>,
    gidx: Vec<u64>,
    acc: Vec<f64>,
}

impl<'p> Regs<'p> {
    fn new(plan: &Plan<'_>) -> Regs<'p> {
        let n = plan.body.len();
        Regs {
            bufs: vec![Vec::new(); n],
            views: vec![None; n],
            scal: plan.cval.clone(),
            offs: Vec::new(),
            gin: Vec::new(),
            gidx: Vec::new(),
            acc: Vec::new(),
        }
    }

    /// Evaluates the body over the tile of inner positions `i0..i0 + kl` at outer position
    /// `o` (whose multi-index is `oidx`).
    fn tile(&mut self, plan: &'p Plan<'_>, oidx: &[usize], i0: usize, kl: usize) {
        let rlen = plan.rlen;
        let t = rlen * kl;
        let inner_dims = &plan.n[plan.b..];
        if !plan.tables.is_empty() {
            let gout = oidx
                .iter()
                .enumerate()
                .fold(0i64, |a, (d, &i)| a.wrapping_add(plan.tables[d][i]));
            table_sums_into(inner_dims, &plan.tables[plan.b..], i0, kl, &mut self.gin);
            self.gidx.clear();
            for &gr in &plan.grow {
                let g = gout.wrapping_add(gr);
                self.gidx
                    .extend(self.gin.iter().map(|&gi| g.wrapping_add(gi) as u64));
            }
        }
        for v in 0..plan.body.len() {
            let level = plan.level[v];
            if level == Level::Const {
                continue;
            }
            let (done, rest) = self.bufs.split_at_mut(v);
            let dst = &mut rest[0];
            let res = {
                let views = &self.views;
                let scal = &self.scal;
                let opd = |x: &Value| -> Opd<'_> {
                    let x = x.0;
                    match plan.level[x] {
                        Level::Const => Opd::S(scal[x]),
                        Level::Row if kl == 1 => Opd::S(scal[x]),
                        Level::Row => Opd::U(views[x].unwrap_or_else(|| &done[x][..kl])),
                        Level::Elem => Opd::E(views[x].unwrap_or_else(|| &done[x][..t])),
                    }
                };
                match &plan.body[v].1 {
                    Expr::Load(j) => {
                        let inp = &plan.ins[*j];
                        let data: &'p [f32] = &inp.data;
                        let base: usize = oidx.iter().zip(&inp.strides).map(|(i, s)| i * s).sum();
                        let strides = &inp.strides[plan.b..];
                        if level == Level::Row {
                            if inp.inner_contig {
                                if kl == 1 {
                                    Res::S(data[base + i0])
                                } else {
                                    Res::View(&data[base + i0..base + i0 + kl])
                                }
                            } else {
                                offsets_into(inner_dims, strides, i0, kl, &mut self.offs);
                                if kl == 1 {
                                    Res::S(data[base + self.offs[0]])
                                } else {
                                    dst.clear();
                                    dst.extend(self.offs.iter().map(|&q| data[base + q]));
                                    Res::Buf
                                }
                            }
                        } else if t == 0 {
                            dst.clear();
                            Res::Buf
                        } else if inp.inner_contig && (rlen <= 1 || inp.row_step == Some(kl)) {
                            let at = base + i0 + inp.rowoff.first().copied().unwrap_or(0);
                            Res::View(&data[at..at + t])
                        } else if inp.inner_contig {
                            dst.clear();
                            for &ro in &inp.rowoff {
                                let at = base + ro + i0;
                                dst.extend_from_slice(&data[at..at + kl]);
                            }
                            Res::Buf
                        } else {
                            offsets_into(inner_dims, strides, i0, kl, &mut self.offs);
                            dst.clear();
                            if kl == 1 {
                                let q = base + self.offs[0];
                                dst.extend(inp.rowoff.iter().map(|&ro| data[q + ro]));
                            } else {
                                for &ro in &inp.rowoff {
                                    let rb = base + ro;
                                    dst.extend(self.offs.iter().map(|&q| data[rb + q]));
                                }
                            }
                            Res::Buf
                        }
                    }
                    // Constants are computed once per launch.
                    Expr::Const(_) | Expr::Arg(_) => Res::S(scal[v]),
                    Expr::Unary(_, a) if plan.lut[v].is_some() => {
                        let Some((f, t, dt)) = plan.lut[v] else {
                            unreachable!()
                        };
                        if dt == DType::BF16 {
                            map1(|x: f32| lut::bf16(t, f, x), opd(a), dst)
                        } else {
                            map1(|x: f32| lut::f16(t, f, x), opd(a), dst)
                        }
                    }
                    Expr::Unary(op, a) => with_unary!(*op, map1(opd(a), dst)),
                    Expr::Binary(op, a, b) => with_binary!(*op, map2(opd(a), opd(b), kl, dst)),
                    Expr::Select(c, a, b) => select(opd(c), opd(a), opd(b), kl, dst),
                    Expr::Round(DType::BF16, a) => map1(|x: f32| round_bf16(x), opd(a), dst),
                    Expr::Round(DType::F16, a) => {
                        map1(|x: f32| round_to(DType::F16, x), opd(a), dst)
                    }
                    Expr::Round(_, a) => map1(|x: f32| x, opd(a), dst),
                    Expr::Rand(seed) => {
                        draw::uniforms(*seed, &self.gidx, dst);
                        Res::Buf
                    }
                    Expr::RandArg(_) => unreachable!("`levels` refuses seeds not put in place"),
                    Expr::RowReduce(op, a) => reduce(*op, opd(a), rlen, kl, &mut self.acc, dst),
                }
            };
            match res {
                Res::S(x) => {
                    self.scal[v] = x;
                    self.views[v] = None;
                }
                Res::Buf => self.views[v] = None,
                Res::View(s) => self.views[v] = Some(s),
            }
        }
    }

    /// Stores the tile's outputs; `elem_base` and `row_base` are where the worker's parts of
    /// the per-element and per-row outputs begin.
    fn store(
        &self,
        plan: &Plan<'_>,
        outs: &mut [OutSlice<'_>],
        o: usize,
        i0: usize,
        kl: usize,
        (elem_base, row_base): (usize, usize),
    ) {
        let (rlen, inner) = (plan.rlen, plan.inner);
        let t = rlen * kl;
        for (spec, out) in plan.outs.iter().zip(outs.iter_mut()) {
            let v = spec.value;
            let src = match plan.level[v] {
                Level::Const => Opd::S(plan.cval[v]),
                Level::Row if kl == 1 => Opd::S(self.scal[v]),
                Level::Row => Opd::U(self.views[v].unwrap_or_else(|| &self.bufs[v][..kl])),
                Level::Elem => Opd::E(self.views[v].unwrap_or_else(|| &self.bufs[v][..t])),
            };
            if spec.per_row {
                let start = o * inner + i0 - row_base;
                match src {
                    Opd::S(x) => out.fill(spec.round, start, kl, x),
                    Opd::U(u) | Opd::E(u) => out.put(spec.round, start, u),
                }
                continue;
            }
            if t == 0 {
                continue;
            }
            let start = o * rlen * inner + i0 - elem_base;
            match src {
                Opd::S(x) if rlen <= 1 || kl == inner => out.fill(spec.round, start, t, x),
                Opd::E(e) if rlen <= 1 || kl == inner => out.put(spec.round, start, e),
                _ => {
                    for r in 0..rlen {
                        let at = start + r * inner;
                        match src {
                            Opd::S(x) => out.fill(spec.round, at, kl, x),
                            Opd::U(u) => out.put(spec.round, at, u),
                            Opd::E(e) => out.put(spec.round, at, &e[r * kl..(r + 1) * kl]),
                        }
                    }
                }
            }
        }
    }
}

/// Runs the tiles of outer positions `os` × inner positions `is` into `outs`.
fn work(
    plan: &Plan<'_>,
    os: Range<usize>,
    is: Range<usize>,
    outs: &mut [OutSlice<'_>],
    bases: (usize, usize),
) {
    let mut regs = Regs::new(plan);
    let outer_dims = &plan.n[..plan.a];
    let mut oidx = vec![0usize; outer_dims.len()];
    for o in os {
        let mut rem = o;
        for d in (0..outer_dims.len()).rev() {
            oidx[d] = rem % outer_dims[d];
            rem /= outer_dims[d];
        }
        let mut i0 = is.start;
        while i0 < is.end {
            let kl = plan.tile.min(is.end - i0);
            regs.tile(plan, &oidx, i0, kl);
            regs.store(plan, outs, o, i0, kl, bases);
            i0 += kl;
        }
    }
}

fn max_threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        let machine = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::var("TPC_KERNEL_THREADS")
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(machine)
            .clamp(1, 64)
    })
}

/// The level of every body value, checking the body against the kernel.
fn levels(k: &Fused, nargs: usize) -> Result<Vec<Level>> {
    let err = |v: usize, what: String| {
        Err(Error::Internal(format!(
            "kernel {}: body value v{v}: {what}",
            k.name
        )))
    };
    let mut level: Vec<Level> = Vec::with_capacity(k.body.len());
    for (v, (_, e)) in k.body.iter().enumerate() {
        let operands: Vec<Value> = match e {
            Expr::Unary(_, a) | Expr::Round(_, a) | Expr::RowReduce(_, a) => {
                vec![*a]
            }
            Expr::Binary(_, a, b) => vec![*a, *b],
            Expr::Select(c, a, b) => vec![*c, *a, *b],
            _ => Vec::new(),
        };
        if let Some(x) = operands.iter().find(|x| x.0 >= v) {
            return err(v, format!("uses {x}, which is not computed before it"));
        }
        let of = |x: &Value| level[x.0];
        let l = match e {
            Expr::Load(i) => {
                let Some(input) = k.inputs.get(*i) else {
                    return err(
                        v,
                        format!("loads in{i}, but there are {} inputs", k.inputs.len()),
                    );
                };
                match k.row {
                    Some((a, b)) if input.broadcast[a..b].iter().all(|&x| x) => Level::Row,
                    _ => Level::Elem,
                }
            }
            Expr::Const(_) => Level::Const,
            Expr::Arg(i) => {
                if *i >= nargs {
                    return err(
                        v,
                        format!("reads s{i}, but there are {nargs} scalar arguments"),
                    );
                }
                Level::Const
            }
            Expr::RandArg(i) => {
                return err(
                    v,
                    format!("draws with seed r{i}, which `run` did not put in place"),
                );
            }
            Expr::Rand(_) => {
                if !k.global_index {
                    return err(
                        v,
                        "draws a random number without global-index tables".into(),
                    );
                }
                Level::Elem
            }
            Expr::RowReduce(_, _) => {
                if k.row.is_none() {
                    return err(v, "reduces over a row in a kernel without rows".into());
                }
                Level::Row
            }
            _ => operands.iter().map(of).max().unwrap_or(Level::Const),
        };
        level.push(l);
    }
    Ok(level)
}

/// The value of a `Const` body value.
fn constant(e: &Expr, cval: &[f32], floats: &[f32]) -> f32 {
    let c = |x: &Value| cval[x.0];
    match e {
        Expr::Const(x) => *x,
        Expr::Arg(i) => floats[*i],
        Expr::Unary(op, a) => scalar_unary(*op, c(a)),
        Expr::Binary(op, a, b) => scalar_binary(*op, c(a), c(b)),
        Expr::Select(s, a, b) => {
            if c(s) != 0.0 {
                c(a)
            } else {
                c(b)
            }
        }
        Expr::Round(dt, a) => round_to(*dt, c(a)),
        // Never constant.
        Expr::Load(_) | Expr::Rand(_) | Expr::RandArg(_) | Expr::RowReduce(..) => f32::NAN,
    }
}

fn checked_product(k: &Fused, xs: impl IntoIterator<Item = usize>) -> Result<usize> {
    xs.into_iter()
        .try_fold(1usize, |a, x| a.checked_mul(x))
        .ok_or_else(|| Error::Internal(format!("kernel {}: the extents overflow", k.name)))
}

pub(super) fn run(k: &Fused, args: &mut Args<'_>) -> Result<()> {
    if k.seeds == 0 {
        return run_resolved(k, args);
    }
    // Seeds passed as arguments: the kernel as it runs, with them in place.
    if args.ints.len() < k.rank + k.seeds {
        return Err(args.err(format_args!(
            "takes {} seeds after its {} extents, but {} int arguments came",
            k.seeds,
            k.rank,
            args.ints.len()
        )));
    }
    let seeds: Vec<u64> = (0..k.seeds)
        .map(|i| args.ints[k.rank + i].1 as u64)
        .collect();
    let mut resolved = k.clone();
    for (_, e) in &mut resolved.body {
        if let Expr::RandArg(i) = *e {
            let seed = *seeds.get(i).ok_or_else(|| {
                Error::Internal(format!("kernel {}: reads seed r{i} of {}", k.name, k.seeds))
            })?;
            *e = Expr::Rand(seed);
        }
    }
    resolved.seeds = 0;
    run_resolved(&resolved, args)
}

fn run_resolved(k: &Fused, args: &mut Args<'_>) -> Result<()> {
    let rank = k.rank;
    let n: Vec<usize> = (0..rank).map(|d| args.extent(d)).collect::<Result<_>>()?;
    let (a, b) = k.row.unwrap_or((0, 0));
    if a > b || b > rank {
        return Err(args.err(format_args!("row dims {a}..{b} outside rank {rank}")));
    }
    let total = checked_product(k, n.iter().copied())?;
    let outer = checked_product(k, n[..a].iter().copied())?;
    let rlen = checked_product(k, n[a..b].iter().copied())?;
    let inner = checked_product(k, n[b..].iter().copied())?;
    if let Some(spec) = k.inputs.iter().find(|i| i.broadcast.len() != rank) {
        return Err(args.err(format_args!(
            "input %{} has a broadcast mask of {} dims, not {rank}",
            spec.name,
            spec.broadcast.len()
        )));
    }
    let level = levels(k, args.floats.len())?;

    // Inputs.
    let mut ins = Vec::with_capacity(k.inputs.len());
    for (j, spec) in k.inputs.iter().enumerate() {
        let (name, data) = &args.ins[j];
        let mut strides = vec![0usize; rank];
        let mut step = 1usize;
        for d in (0..rank).rev() {
            if !spec.broadcast[d] {
                strides[d] = step;
                step *= n[d];
            }
        }
        let len = data.len();
        args.check_len(&format!("{name} (%{})", spec.name), len, step)?;
        let data: Cow<'_, [f32]> = match data {
            View::Float(v) => Cow::Borrowed(v),
            View::I64(v) => Cow::Owned(v.iter().map(|&x| x as f32).collect()),
            View::Bool(v) => Cow::Owned(v.iter().map(|&x| bit(x)).collect()),
        };
        let mut rowoff = Vec::new();
        offsets_into(&n[a..b], &strides[a..b], 0, rlen, &mut rowoff);
        let row_step = match rowoff.get(1) {
            None => Some(0),
            Some(&s) => rowoff
                .iter()
                .enumerate()
                .all(|(r, &x)| x == r * s)
                .then_some(s),
        };
        let inner_contig = spec.broadcast[b..].iter().all(|&x| !x);
        ins.push(InPlan {
            data,
            strides,
            rowoff,
            row_step,
            inner_contig,
        });
    }

    // Global-index tables.
    let nin = k.inputs.len();
    let mut tables: Vec<&[i64]> = Vec::new();
    let mut grow = vec![0i64];
    if k.global_index {
        for (d, &extent) in n.iter().enumerate() {
            tables.push(args.in_ints(nin + d, extent)?);
        }
        let has_rand = k.body.iter().any(|(_, e)| matches!(e, Expr::Rand(_)));
        if has_rand {
            table_sums_into(&n[a..b], &tables[a..b], 0, rlen, &mut grow);
        } else {
            tables.clear();
        }
    }
    if tables.is_empty() {
        grow = Vec::new();
    }

    // Constants.
    let mut cval = vec![0f32; k.body.len()];
    for (v, (_, e)) in k.body.iter().enumerate() {
        if level[v] == Level::Const {
            cval[v] = constant(e, &cval, &args.floats);
        }
    }

    // Outputs.
    let per_row_len = outer * inner;
    let mut outs = Vec::with_capacity(k.outputs.len());
    for (i, o) in k.outputs.iter().enumerate() {
        let v = o.value.0;
        if v >= k.body.len() {
            return Err(args.err(format_args!(
                "output %{} stores v{v}, but the body has {} values",
                o.name,
                k.body.len()
            )));
        }
        if o.per_row && (k.row.is_none() || level[v] == Level::Elem) {
            return Err(args.err(format_args!(
                "output %{} is stored once per row, but v{v} is not the same along a row",
                o.name
            )));
        }
        if !matches!(o.dtype, DType::F32 | DType::BF16 | DType::F16 | DType::Bool) {
            return Err(args.err(format_args!("output %{} is {}", o.name, o.dtype)));
        }
        let rounded = match k.body[v].1 {
            Expr::Round(d, _) => d == o.dtype,
            _ => false,
        };
        let round = match o.dtype {
            DType::BF16 | DType::F16 if !rounded => Some(o.dtype),
            _ => None,
        };
        let want = if o.per_row { per_row_len } else { total };
        let (name, d) = &args.outs[i];
        args.check_len(&format!("{name} (%{})", o.name), d.len(), want)?;
        outs.push(OutPlan {
            value: v,
            per_row: o.per_row,
            round,
        });
    }

    // Unary functions of values known to be bf16 or f16 look their results up.
    let mut exact: Vec<Option<DType>> = Vec::with_capacity(k.body.len());
    let mut lut_of = Vec::with_capacity(k.body.len());
    for (_, e) in &k.body {
        let x = match e {
            Expr::Load(j) => {
                Some(k.inputs[*j].dtype).filter(|_| matches!(args.ins[*j].1, View::Float(_)))
            }
            Expr::Round(dt, _) => Some(*dt),
            Expr::Select(_, a, b) if exact[a.0] == exact[b.0] => exact[a.0],
            _ => None,
        };
        exact.push(x.filter(|d| matches!(d, DType::BF16 | DType::F16)));
        let operand = match e {
            Expr::Unary(_, a) => exact[a.0],
            _ => None,
        };
        lut_of.push(match (Func::of(e), operand) {
            (Some(f), Some(dt)) => lut::table(f, dt, total >= LUT_MIN).map(|t| (f, t, dt)),
            _ => None,
        });
    }

    let tile = CHUNK
        .checked_div(rlen)
        .map_or(CHUNK, |t| t.max(1))
        .min(inner.max(1));
    let plan = Plan {
        body: &k.body,
        n,
        a,
        b,
        outer,
        rlen,
        inner,
        tile,
        ins,
        level,
        cval,
        lut: lut_of,
        tables,
        grow,
        outs,
    };

    let slices: Vec<OutSlice<'_>> = args
        .outs
        .iter_mut()
        .map(|(_, d)| match d {
            ViewMut::Float(v) => OutSlice::F(v),
            ViewMut::Bool(v) => OutSlice::B(v),
            // Rejected above.
            ViewMut::I64(_) => OutSlice::F(&mut []),
        })
        .collect();
    run_parallel(&plan, slices, total.max(per_row_len));
    Ok(())
}

/// Splits the launch over threads (outer positions with a row, chunks of elements without)
/// when it is large enough, and runs it.
fn run_parallel(plan: &Plan<'_>, mut slices: Vec<OutSlice<'_>>, work_size: usize) {
    let (outer, inner, rlen) = (plan.outer, plan.inner, plan.rlen);
    let threads = max_threads().min(work_size / PARALLEL_MIN).max(1);
    // Parts as (outer range, inner range), adjacent in output order.
    let parts: Vec<(Range<usize>, Range<usize>)> = if threads <= 1 {
        vec![(0..outer, 0..inner)]
    } else if outer >= 2 {
        let p = threads.min(outer);
        (0..p)
            .map(|i| (outer * i / p..outer * (i + 1) / p, 0..inner))
            .collect()
    } else if outer == 1 && rlen == 1 {
        let chunks = inner.div_ceil(CHUNK);
        let p = threads.min(chunks);
        (0..p)
            .map(|i| {
                let lo = (chunks * i / p * CHUNK).min(inner);
                let hi = (chunks * (i + 1) / p * CHUNK).min(inner);
                (0..1, lo..hi)
            })
            .collect()
    } else {
        vec![(0..outer, 0..inner)]
    };
    if parts.len() <= 1 {
        work(plan, 0..outer, 0..inner, &mut slices, (0, 0));
        return;
    }
    // Each part's share of every output.
    let mut shares: Vec<Vec<OutSlice<'_>>> = (0..parts.len()).map(|_| Vec::new()).collect();
    for (spec, slice) in plan.outs.iter().zip(slices) {
        let mut rest = slice;
        for (p, (os, is)) in parts.iter().enumerate() {
            let (lo, hi) = bounds(spec.per_row, os, is, rlen, inner);
            let len = (hi - lo).min(rest.len());
            let (head, tail) = rest.split(len);
            shares[p].push(head);
            rest = tail;
        }
    }
    let run = move |(os, is): (Range<usize>, Range<usize>), mut share: Vec<OutSlice<'_>>| {
        let per_row = bounds(true, &os, &is, rlen, inner).0;
        let per_elem = bounds(false, &os, &is, rlen, inner).0;
        work(plan, os, is, &mut share, (per_elem, per_row));
    };
    std::thread::scope(|s| {
        let mut jobs = parts.into_iter().zip(shares);
        let first = jobs.next();
        for (part, share) in jobs {
            s.spawn(move || run(part, share));
        }
        // The calling thread runs the first part.
        if let Some((part, share)) = first {
            run(part, share);
        }
    });
}

/// The range of a per-row (or per-element) output that the tiles `os` × `is` write, where `is`
/// is every inner position or `os` is one outer position.
fn bounds(
    per_row: bool,
    os: &Range<usize>,
    is: &Range<usize>,
    rlen: usize,
    inner: usize,
) -> (usize, usize) {
    let (block, span) = if per_row {
        (inner, inner)
    } else {
        (rlen * inner, (rlen.max(1) - 1) * inner + inner)
    };
    if os.is_empty() {
        return (os.start * block, os.start * block);
    }
    let lo = os.start * block + is.start;
    let hi = (os.end - 1) * block + (span - inner) + is.end;
    (lo, hi.max(lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_bf16_equals_round_to() {
        let edges = [
            0u32,
            0x8000,
            0x8001,
            0x1_8000,
            0x7F7F_8000,
            0x7F7F_FFFF,
            0x7F80_0000,
            0x7F80_0001,
            0x7FC0_0000,
            0xFF7F_FFFF,
            0xFF80_0000,
            0xFFFF_FFFF,
            0x8000_0000,
            0x0000_7FFF,
        ];
        let patterns = (0..=u32::MAX)
            .step_by(65_521)
            .chain(
                (0..=u32::MAX)
                    .step_by(1 << 16)
                    .flat_map(|b| [b | 0x7FFF, b | 0x8000, b | 0x8001]),
            )
            .chain(edges);
        for b in patterns {
            let x = f32::from_bits(b);
            assert_eq!(
                round_bf16(x).to_bits(),
                round_to(DType::BF16, x).to_bits(),
                "{b:#x}"
            );
        }
    }

    #[test]
    fn offsets_follow_row_major_order() {
        let mut out = Vec::new();
        offsets_into(&[2, 3], &[1, 0], 1, 4, &mut out);
        assert_eq!(out, vec![0, 0, 1, 1]);
        offsets_into(&[2, 3], &[3, 1], 2, 3, &mut out);
        assert_eq!(out, vec![2, 3, 4]);
        offsets_into(&[], &[], 0, 1, &mut out);
        assert_eq!(out, vec![0]);
        let mut g = Vec::new();
        table_sums_into(&[2, 2], &[&[0, 10], &[0, 1]], 1, 3, &mut g);
        assert_eq!(g, vec![1, 10, 11]);
    }
}
