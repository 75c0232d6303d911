//! The kernel IR: what a generated kernel computes, small and typed, printable, written to CUDA C
//! by `cuda.rs` and interpreted on the CPU by the runtime, so both executors run one meaning.
//!
//! Every kernel takes the extents of what it iterates over as arguments, so one compile serves
//! every batch and sequence length, and every rank of an uneven split. The parameter list of
//! each kernel kind is given once, by [`Kernel::params`]; the CUDA writer, the host-program
//! builder and both executors read it from there, and the launch geometry from
//! [`Kernel::launch`].
//!
//! Kernel kinds:
//! - [`Fused`]: a fused chain of pointwise ops, optionally around row reductions (softmax,
//!   layer norm, rms norm, sum/mean/max/min), with Philox draws by global index (dropout,
//!   rand_like). Values are computed in f32 (or bool) and rounded to the dtype each op stores,
//!   so a fused chain rounds exactly as the unfused ops do.
//! - [`Copy`]: a strided copy (permute, slice, concat, materialized broadcast).
//! - [`Embedding`]: rows of a table gathered by index.
//! - [`Attention`]: scaled dot-product attention, tiled with an online softmax.
//! - [`Pick`]: the entry of each target along a dim (cross-entropy's target logit), and
//!   [`Kept`]: the targets not ignored.

use std::fmt;

use tpc_ir::ops::{BinaryOp, UnaryOp};
use tpc_ir::{DType, ReduceOp};

/// A tensor a fused kernel reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    /// The graph value it holds (for diagnostics and the host program).
    pub name: String,
    pub dtype: DType,
    /// Per iteration dim: whether the input has extent 1 there (broadcast) instead of the
    /// iteration extent. Inputs of lower rank are aligned to the right and broadcast the rest.
    /// An input broadcast along every row dim is read once per row.
    pub broadcast: Vec<bool>,
}

/// A value computed by a fused kernel.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// Input `i` at the current element (at the current row, for an input broadcast along
    /// every row dim).
    Load(usize),
    Const(f32),
    /// Scalar argument `s<i>` (a float the host computes per rank, like `1/count` of a mean
    /// over a split dim).
    Arg(usize),
    Unary(UnaryOp, Value),
    Binary(BinaryOp, Value, Value),
    /// `where(c, a, b)`.
    Select(Value, Value, Value),
    /// The f32 value rounded to a storage dtype (bf16, f16) and back; identity for f32.
    Round(DType, Value),
    /// The uniform number in [0, 1) that Philox-4x32-10 draws for `seed` at the current
    /// element's *global* flat index (`tpc_runtime::philox::uniform`). Only in kernels with
    /// `global_index`; the index is the sum over dims of table `g<d>` at the element's index.
    Rand(u64),
    /// [`Expr::Rand`] for the seed passed as int argument `r<i>`: kernels that differ only in
    /// their seeds (every layer's dropout) are then one kernel.
    RandArg(usize),
    /// The reduction (sum, max or min, in f32) of the operand over the current row: the same for
    /// every element of a row. Only in kernels with a `row`; the operand is per-element.
    RowReduce(ReduceOp, Value),
}

/// An SSA value of the body, by position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Value(pub usize);

/// The register type of a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scalar {
    F32,
    Bool,
}

/// A tensor a fused kernel writes: a graph value (for diagnostics and the host program), its
/// dtype, and the body value stored to it.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub name: String,
    pub dtype: DType,
    pub value: Value,
    /// Stored once per row (a reduction's result: the iteration shape with the row dims of
    /// extent 1, row-major) instead of once per element.
    pub per_row: bool,
}

/// A fused kernel: it iterates over `rank` dims with extents `n0, n1, …`.
///
/// Without `row`, it computes each body value at every element (a grid-stride loop).
/// With `row = (a, b)`, dims `a..b` form a row (the elements that share every index outside
/// them); a block owns a row, `RowReduce` values are reduced over it (warp shuffles, then shared
/// memory), and per-element values are computed in passes over the row as the reductions they
/// feed need them.
#[derive(Clone, Debug, PartialEq)]
pub struct Fused {
    pub name: String,
    pub inputs: Vec<Input>,
    /// Every value of the fused group that is used outside it, in program order.
    pub outputs: Vec<Output>,
    pub rank: usize,
    pub row: Option<(usize, usize)>,
    /// Whether the kernel takes per-dim global-offset tables `g0, g1, …` (for `Rand`).
    pub global_index: bool,
    /// What each scalar argument `s<i>` is (for the printout).
    pub args: Vec<String>,
    /// How many seeds the kernel takes (int arguments `r0, r1, …`, for [`Expr::RandArg`]).
    pub seeds: usize,
    pub body: Vec<(Scalar, Expr)>,
}

impl Fused {
    /// The register type of `v`.
    pub fn scalar(&self, v: Value) -> Scalar {
        self.body[v.0].0
    }

    /// Per body value: whether it is the same for every element of a row (it depends on no
    /// per-element load and no `Rand`). Without a row, only constants and arguments are.
    pub fn uniform(&self) -> Vec<bool> {
        let row_uniform_input = |i: usize| match self.row {
            Some((a, b)) => self.inputs[i].broadcast[a..b].iter().all(|&x| x),
            None => false,
        };
        let mut out: Vec<bool> = Vec::with_capacity(self.body.len());
        for (_, e) in &self.body {
            let u = match e {
                Expr::Load(i) => row_uniform_input(*i),
                Expr::Const(_) | Expr::Arg(_) => true,
                Expr::Rand(_) | Expr::RandArg(_) => false,
                Expr::RowReduce(..) => true,
                Expr::Unary(_, a) | Expr::Round(_, a) => out[a.0],
                Expr::Binary(_, a, b) => out[a.0] && out[b.0],
                Expr::Select(c, a, b) => out[c.0] && out[a.0] && out[b.0],
            };
            out.push(u);
        }
        out
    }
}

/// A strided copy over `rank` dims of extents `n<d>`:
/// `out[out_base + Σ i_d·os_d] = in[in_base + Σ i_d·is_d]` (element offsets). Permute, slice,
/// one part of a concat and a materialized broadcast (stride 0) are all this kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct Copy {
    pub name: String,
    pub dtype: DType,
    pub rank: usize,
}

/// `out[r, :] = table[ids[r], :]` for `rows` ids and rows of `width` elements. The table holds
/// `vocab` rows whose global indices are the increasing `rowpos` (all of them, or a rank's
/// piece: vocabulary parallelism); an id it does not hold gives a row of zeros, so the ranks'
/// results sum to the lookup. An id outside `0..global_vocab` is an error on the CPU and gives
/// zeros on the GPU.
#[derive(Clone, Debug, PartialEq)]
pub struct Embedding {
    pub name: String,
    pub dtype: DType,
}

/// Scaled dot-product attention over `batch` independent (batch × head) slices:
/// `out[b, i, :] = Σ_j p_ij v[b, j, :]` with `p_i = softmax_j(scale · q[b, i, :]·k[b, j, :])`,
/// where, if `causal`, key `j` is masked out for query `i` when `j > qpos[i]` (the query's
/// global position: a rank holding part of the sequence masks by global positions).
/// q: `[batch, sq, d]`, k: `[batch, sk, d]`, v: `[batch, sk, dv]`, out `[batch, sq, dv]`; all in
/// `dtype`, accumulated in f32; as the reference, the unnormalized weights are rounded to the
/// storage dtype before they meet v and the row sum divides after.
#[derive(Clone, Debug, PartialEq)]
pub struct Attention {
    pub name: String,
    pub dtype: DType,
    pub causal: bool,
    /// Writes each query's log-sum-exp of its scaled, masked scores (`out` is then f32
    /// `[batch, sq]`) instead of the attention's output: `sdpa_stats`' second result.
    pub lse: bool,
}

/// `out[o, i] = x[o, l, i]` (in f32) for `x` laid out `[outer, n, inner]` and i64 targets
/// `[outer, inner]`, where `l` is the local entry whose global index (`pos`, increasing) is the
/// target; 0 for a target this piece does not hold (another rank's classes) and for
/// `ignore_index`. A target outside `0..global_n` is an error on the CPU and gives 0 on the GPU.
#[derive(Clone, Debug, PartialEq)]
pub struct Pick {
    pub name: String,
    pub dtype: DType,
    pub ignore_index: i64,
}

/// `out[i] = target[i] != ignore_index` as f32 1 or 0.
#[derive(Clone, Debug, PartialEq)]
pub struct Kept {
    pub name: String,
    pub ignore_index: i64,
}

/// A generated kernel.
#[derive(Clone, Debug, PartialEq)]
pub enum Kernel {
    Fused(Fused),
    Copy(Copy),
    Embedding(Embedding),
    Attention(Attention),
    Pick(Pick),
    Kept(Kept),
}

/// What a kernel parameter is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// A buffer the kernel reads (`const T*`).
    Input(DType),
    /// A buffer the kernel writes (`T*`); a `Copy` writes only part of it.
    Output(DType),
    /// A table of i64 the host fills (`const long long*`).
    Table,
    /// An extent, offset or stride (`long long`).
    Int,
    /// A float (`float`).
    Float,
}

/// One kernel parameter: its name in the CUDA source and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub kind: ParamKind,
}

fn param(name: impl Into<String>, kind: ParamKind) -> Param {
    Param {
        name: name.into(),
        kind,
    }
}

/// A launch's geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchDims {
    pub grid: [u32; 3],
    pub block: u32,
    /// Dynamic shared memory, in bytes.
    pub shared_bytes: u32,
}

/// Threads per block of the grid-stride and copy kernels.
pub const BLOCK: u32 = 256;
/// Longest row a row kernel gives one warp (the launch then has a block per `BLOCK / 32`
/// rows); longer rows get a block each.
pub const ROW_WARP_MAX: u64 = 512;
/// Most blocks of a grid-stride loop (each thread then loops).
pub const MAX_GRID: u64 = 4096;
/// Queries per block of the attention kernel, keys per tile.
pub const ATTENTION_TILE: u32 = 32;

fn blocks_for(total: u64) -> u32 {
    total.div_ceil(BLOCK as u64).clamp(1, MAX_GRID) as u32
}

impl Kernel {
    /// What the kernel computes, without its name and the value names it prints in comments:
    /// two kernels with the same body are one kernel (segmentation launches the first again,
    /// for every layer of a stack, instead of generating a copy).
    pub fn body(&self) -> String {
        let mut k = self.clone();
        match &mut k {
            Kernel::Fused(k) => {
                k.name.clear();
                k.inputs.iter_mut().for_each(|i| i.name.clear());
                k.outputs.iter_mut().for_each(|o| o.name.clear());
                k.args.iter_mut().for_each(String::clear);
            }
            Kernel::Copy(k) => k.name.clear(),
            Kernel::Embedding(k) => k.name.clear(),
            Kernel::Attention(k) => k.name.clear(),
            Kernel::Pick(k) => k.name.clear(),
            Kernel::Kept(k) => k.name.clear(),
        }
        format!("{k:?}")
    }

    pub fn name(&self) -> &str {
        match self {
            Kernel::Fused(k) => &k.name,
            Kernel::Copy(k) => &k.name,
            Kernel::Embedding(k) => &k.name,
            Kernel::Attention(k) => &k.name,
            Kernel::Pick(k) => &k.name,
            Kernel::Kept(k) => &k.name,
        }
    }

    /// The kernel's parameters, in order.
    ///
    /// - Fused: `in<i>` per input, `out<i>` per output, `n<d>` per dim, then `g<d>` per dim
    ///   if `global_index`, then `s<i>` per scalar argument, then `r<i>` per seed.
    /// - Copy: `in`, `out`, `n<d>` per dim, `in_base`, `is<d>` per dim, `out_base`, `os<d>` per
    ///   dim.
    /// - Embedding: `ids` (i64 input), `table`, `out`, `rows`, `width`, `vocab`, `global_vocab`,
    ///   `rowpos` (table of the `vocab` rows' global indices).
    /// - Attention: `q`, `k`, `v`, `out` (f32 `[batch, sq]` for the log-sum-exp), `batch`, `sq`,
    ///   `sk`, `d`, `dv`, `scale` (float),
    ///   `qpos` (table of `sq` global query positions).
    /// - Pick: `x`, `target` (i64 input), `out` (f32), `outer`, `n`, `inner`, `global_n`,
    ///   `pos` (table of the `n` entries' global indices).
    /// - Kept: `target` (i64 input), `out` (f32), `count`.
    pub fn params(&self) -> Vec<Param> {
        use ParamKind::*;
        match self {
            Kernel::Fused(k) => {
                let mut p: Vec<Param> = k
                    .inputs
                    .iter()
                    .enumerate()
                    .map(|(i, x)| param(format!("in{i}"), Input(x.dtype)))
                    .collect();
                p.extend(
                    k.outputs
                        .iter()
                        .enumerate()
                        .map(|(i, o)| param(format!("out{i}"), Output(o.dtype))),
                );
                p.extend((0..k.rank).map(|d| param(format!("n{d}"), Int)));
                if k.global_index {
                    p.extend((0..k.rank).map(|d| param(format!("g{d}"), Table)));
                }
                p.extend((0..k.args.len()).map(|i| param(format!("s{i}"), Float)));
                p.extend((0..k.seeds).map(|i| param(format!("r{i}"), Int)));
                p
            }
            Kernel::Copy(k) => {
                let mut p = vec![param("in", Input(k.dtype)), param("out", Output(k.dtype))];
                p.extend((0..k.rank).map(|d| param(format!("n{d}"), Int)));
                p.push(param("in_base", Int));
                p.extend((0..k.rank).map(|d| param(format!("is{d}"), Int)));
                p.push(param("out_base", Int));
                p.extend((0..k.rank).map(|d| param(format!("os{d}"), Int)));
                p
            }
            Kernel::Embedding(k) => vec![
                param("ids", Input(DType::I64)),
                param("table", Input(k.dtype)),
                param("out", Output(k.dtype)),
                param("rows", Int),
                param("width", Int),
                param("vocab", Int),
                param("global_vocab", Int),
                param("rowpos", Table),
            ],
            Kernel::Attention(k) => vec![
                param("q", Input(k.dtype)),
                param("k", Input(k.dtype)),
                param("v", Input(k.dtype)),
                param("out", Output(if k.lse { DType::F32 } else { k.dtype })),
                param("batch", Int),
                param("sq", Int),
                param("sk", Int),
                param("d", Int),
                param("dv", Int),
                param("scale", Float),
                param("qpos", Table),
            ],
            Kernel::Pick(k) => vec![
                param("x", Input(k.dtype)),
                param("target", Input(DType::I64)),
                param("out", Output(DType::F32)),
                param("outer", Int),
                param("n", Int),
                param("inner", Int),
                param("global_n", Int),
                param("pos", Table),
            ],
            Kernel::Kept(_) => vec![
                param("target", Input(DType::I64)),
                param("out", Output(DType::F32)),
                param("count", Int),
            ],
        }
    }

    /// The launch geometry for the given `Int` arguments (in parameter order, as the host
    /// passes them).
    pub fn launch(&self, ints: &[i64]) -> LaunchDims {
        let at = |i: usize| ints.get(i).copied().unwrap_or(0).max(0) as u64;
        let plain = |total: u64| LaunchDims {
            grid: [blocks_for(total), 1, 1],
            block: BLOCK,
            shared_bytes: 0,
        };
        match self {
            Kernel::Fused(k) => {
                let extents: Vec<u64> = (0..k.rank).map(at).collect();
                match k.row {
                    None => plain(extents.iter().product()),
                    Some((a, b)) => {
                        let mut rows: u64 = extents[..a].iter().chain(&extents[b..]).product();
                        let rowlen: u64 = extents[a..b].iter().product();
                        if rowlen <= ROW_WARP_MAX {
                            rows = rows.div_ceil(BLOCK as u64 / 32);
                        }
                        LaunchDims {
                            grid: [rows.clamp(1, i32::MAX as u64) as u32, 1, 1],
                            block: BLOCK,
                            shared_bytes: 0,
                        }
                    }
                }
            }
            Kernel::Copy(k) => plain((0..k.rank).map(at).product()),
            // rows, width
            Kernel::Embedding(_) => plain(at(0) * at(1)),
            // batch, sq, sk, d, dv
            Kernel::Attention(_) => LaunchDims {
                grid: [
                    (at(1).div_ceil(ATTENTION_TILE as u64)).max(1) as u32,
                    at(0).clamp(1, 65535) as u32,
                    1,
                ],
                block: 128,
                shared_bytes: 0,
            },
            // outer, n, inner
            Kernel::Pick(_) => plain(at(0) * at(2)),
            // count
            Kernel::Kept(_) => plain(at(0)),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

fn reduce_name(op: ReduceOp) -> &'static str {
    match op {
        ReduceOp::Sum => "sum",
        ReduceOp::Max => "max",
        ReduceOp::Min => "min",
    }
}

impl fmt::Display for Fused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let extents: Vec<String> = (0..self.rank).map(|d| format!("n{d}")).collect();
        write!(f, "kernel @{}[{}]", self.name, extents.join(", "))?;
        if let Some((a, b)) = self.row {
            write!(f, " rows over [{}]", extents[a..b].join(", "))?;
        }
        if self.global_index {
            write!(f, " global-index")?;
        }
        writeln!(f, " {{")?;
        for (i, input) in self.inputs.iter().enumerate() {
            let dims: Vec<String> = input
                .broadcast
                .iter()
                .enumerate()
                .map(|(d, &b)| if b { "1".to_string() } else { format!("n{d}") })
                .collect();
            writeln!(
                f,
                "  in{i} %{}: {}[{}]",
                input.name,
                input.dtype,
                dims.join(", ")
            )?;
        }
        for (i, a) in self.args.iter().enumerate() {
            writeln!(f, "  s{i}: f32 = {a}")?;
        }
        for (i, (ty, e)) in self.body.iter().enumerate() {
            let ty = match ty {
                Scalar::F32 => "f32",
                Scalar::Bool => "bool",
            };
            let rhs = match e {
                Expr::Load(k) => format!("load in{k}"),
                Expr::Const(c) => format!("const {c:?}"),
                Expr::Arg(k) => format!("arg s{k}"),
                Expr::Unary(op, a) => format!("{} {a}", format!("{op:?}").to_lowercase()),
                Expr::Binary(op, a, b) => format!("{} {a}, {b}", format!("{op:?}").to_lowercase()),
                Expr::Select(c, a, b) => format!("select {c}, {a}, {b}"),
                Expr::Round(d, a) => format!("round.{d} {a}"),
                Expr::Rand(seed) => format!("rand seed={seed}"),
                Expr::RandArg(i) => format!("rand seed=r{i}"),
                Expr::RowReduce(op, a) => format!("row.{} {a}", reduce_name(*op)),
            };
            writeln!(f, "  v{i}: {ty} = {rhs}")?;
        }
        for o in &self.outputs {
            let dims: Vec<String> = (0..self.rank)
                .map(|d| match self.row {
                    Some((a, b)) if o.per_row && (a..b).contains(&d) => "1".to_string(),
                    _ => format!("n{d}"),
                })
                .collect();
            writeln!(
                f,
                "  store %{}: {}[{}] = {}",
                o.name,
                o.dtype,
                dims.join(", "),
                o.value
            )?;
        }
        write!(f, "}}")
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kernel::Fused(k) => write!(f, "{k}"),
            Kernel::Copy(k) => write!(
                f,
                "kernel @{} copy {}[rank {}] (strided, offsets and strides as arguments)",
                k.name, k.dtype, k.rank
            ),
            Kernel::Embedding(k) => write!(f, "kernel @{} embedding {}", k.name, k.dtype),
            Kernel::Attention(k) => write!(
                f,
                "kernel @{} attention {}{}{} (tiles of {ATTENTION_TILE} queries, online softmax, f32 accumulation)",
                k.name,
                k.dtype,
                if k.causal { " causal" } else { "" },
                if k.lse { " log-sum-exp" } else { "" }
            ),
            Kernel::Pick(k) => write!(
                f,
                "kernel @{} pick {} ignore_index={}",
                k.name, k.dtype, k.ignore_index
            ),
            Kernel::Kept(k) => write!(f, "kernel @{} kept ignore_index={}", k.name, k.ignore_index),
        }
    }
}
