//! Host programs: what one rank runs, as an ordered list of steps over buffers.
//!
//! Every buffer lives at a fixed offset of the rank's one device arena (the memory plan: offsets
//! are reused once a buffer is dead), so a host program says exactly how much memory the rank
//! needs (`peak_bytes`). Both executors run the same steps: the CPU executor on a byte arena (so
//! a wrong plan corrupts its results and the check against the reference catches it), the CUDA
//! executor with kernels from the module, cuBLASLt GEMMs and NCCL calls.

use std::fmt;
use std::ops::Range;

use tpc_ir::{Collective, DType, ReduceOp};

use crate::kir::Kernel;

/// A buffer of the host program, by position in [`HostProgram::buffers`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BufId(pub usize);

impl fmt::Display for BufId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{}", self.0)
    }
}

/// A buffer: one tensor (the graph value it holds) or a table of i64.
#[derive(Clone, Debug, PartialEq)]
pub struct Buffer {
    /// The graph value it holds (`%name`), or what a table is.
    pub name: String,
    pub dtype: DType,
    /// The rank's local shape.
    pub shape: Vec<usize>,
    /// Offset in the rank's arena, in bytes (aligned to [`ALIGN`]).
    pub offset: u64,
}

/// Alignment of every buffer in the arena, in bytes.
pub const ALIGN: u64 = 256;

impl Buffer {
    pub fn elems(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn bytes(&self) -> u64 {
        self.elems() as u64 * self.dtype.size_bytes()
    }
}

/// A kernel argument.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    Buffer(BufId),
    Int(i64),
    Float(f32),
}

/// What a GEMM adds after the product, before its one rounding (cuBLASLt's epilogues).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    None,
    /// `+ bias[n]`.
    Bias,
    /// `gelu.tanh(acc + bias[n])` (cuBLASLt's GELU_BIAS: the tanh approximation).
    BiasGelu,
    /// `gelu.tanh(acc)`.
    Gelu,
}

/// `c[b] = epilogue(a[b] · op(b[b]))` for `batch` row-major matrices: a is `m×k`, b is `k×n`
/// (or `n×k` when `b_transposed`: torch's linear weight), c is `m×n`. Batch strides are in
/// elements; a stride of 0 reuses one matrix for every batch. Products accumulate in f32; the
/// result is rounded once to `dtype` (the CPU executor also rounds the biased sum before gelu, as
/// the unfused ops do; cuBLASLt does not).
///
/// `D` is the sizes' type: whole numbers in a bound program, dim expressions in a template
/// (`Gemm<Dim>`).
#[derive(Clone, Debug, PartialEq)]
pub struct Gemm<D = usize> {
    pub a: BufId,
    pub b: BufId,
    pub c: BufId,
    pub bias: Option<BufId>,
    pub epilogue: Epilogue,
    pub dtype: DType,
    pub batch: D,
    pub m: D,
    pub n: D,
    pub k: D,
    pub stride_a: D,
    pub stride_b: D,
    pub stride_c: D,
    pub b_transposed: bool,
}

impl<D> Gemm<D> {
    /// The same GEMM with every size mapped by `f` (given the size's name), or its first error.
    pub fn try_map<E, T>(&self, mut f: impl FnMut(&D, &str) -> Result<T, E>) -> Result<Gemm<T>, E> {
        Ok(Gemm {
            a: self.a,
            b: self.b,
            c: self.c,
            bias: self.bias,
            epilogue: self.epilogue,
            dtype: self.dtype,
            batch: f(&self.batch, "batch")?,
            m: f(&self.m, "m")?,
            n: f(&self.n, "n")?,
            k: f(&self.k, "k")?,
            stride_a: f(&self.stride_a, "stride of a")?,
            stride_b: f(&self.stride_b, "stride of b")?,
            stride_c: f(&self.stride_c, "stride of c")?,
            b_transposed: self.b_transposed,
        })
    }
}

impl<D: fmt::Display> Gemm<D> {
    /// The step as a line of a printed program (numbers or expressions alike).
    pub(crate) fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let epi = match self.epilogue {
            Epilogue::None => "",
            Epilogue::Bias => " +bias",
            Epilogue::BiasGelu => " +bias gelu.tanh",
            Epilogue::Gelu => " gelu.tanh",
        };
        write!(
            f,
            "  gemm {} {} = {} x {}{}",
            self.dtype,
            self.c,
            self.a,
            self.b,
            if self.b_transposed { "^T" } else { "" }
        )?;
        if let Some(b) = self.bias {
            write!(f, " + {b}")?;
        }
        writeln!(
            f,
            "{epi} (batch {} m {} n {} k {}, strides {}/{}/{})",
            self.batch, self.m, self.n, self.k, self.stride_a, self.stride_b, self.stride_c
        )
    }
}

/// A run of consecutive elements: `len` elements from `src` in the sender's input to `dst` in
/// the receiver's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub src: usize,
    pub dst: usize,
    pub len: usize,
}

/// A box of an exchange's view: per view dim, a range of global positions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block(pub Vec<Range<usize>>);

impl Block {
    /// Elements in the box.
    pub fn elems(&self) -> usize {
        self.0.iter().map(|r| r.len()).product()
    }

    pub fn is_empty(&self) -> bool {
        self.elems() == 0
    }

    /// The box both hold, if any element.
    pub fn intersect(&self, other: &Block) -> Option<Block> {
        let b = Block(
            self.0
                .iter()
                .zip(&other.0)
                .map(|(a, b)| a.start.max(b.start)..a.end.min(b.end).max(a.start.max(b.start)))
                .collect(),
        );
        (!b.is_empty()).then_some(b)
    }

    /// Whether every element of `other` is in this box.
    pub fn contains(&self, other: &Block) -> bool {
        other.is_empty()
            || self
                .0
                .iter()
                .zip(&other.0)
                .all(|(a, b)| a.start <= b.start && b.end <= a.end)
    }

    /// The contiguous runs that copy this box from a piece holding box `src` (row-major) into
    /// a piece holding box `dst`: one run per position of the dims outside the longest suffix
    /// that both pieces hold whole, so a block of outer dims is one run.
    pub fn runs(&self, src: &Block, dst: &Block) -> Vec<Run> {
        let r = self.0.len();
        if self.is_empty() {
            return Vec::new();
        }
        if r == 0 {
            return vec![Run {
                src: 0,
                dst: 0,
                len: 1,
            }];
        }
        let lens = |b: &Block| b.0.iter().map(|x| x.len()).collect::<Vec<_>>();
        let (ss, ds) = (row_major(&lens(src)), row_major(&lens(dst)));
        // Dims k.. form one run when every dim after k is whole in the box and both pieces.
        let mut k = r - 1;
        while k > 0 && self.0[k] == src.0[k] && self.0[k] == dst.0[k] {
            k -= 1;
        }
        let len: usize = self.0[k..].iter().map(|x| x.len()).product();
        let base = |strides: &[usize], piece: &Block, at: &[usize]| -> usize {
            (0..=k)
                .map(|j| (at[j] - piece.0[j].start) * strides[j])
                .sum()
        };
        let mut at: Vec<usize> = self.0.iter().map(|x| x.start).collect();
        let mut out = Vec::new();
        loop {
            out.push(Run {
                src: base(&ss, src, &at),
                dst: base(&ds, dst, &at),
                len,
            });
            // The next position of dims 0..k (dim k is inside the run).
            let mut j = k;
            loop {
                if j == 0 {
                    return out;
                }
                j -= 1;
                at[j] += 1;
                if at[j] < self.0[j].end {
                    break;
                }
                at[j] = self.0[j].start;
            }
        }
    }
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|r| format!("{}:{}", r.start, r.end))
            .collect();
        write!(f, "[{}]", parts.join(", "))
    }
}

/// Row-major strides of `shape`, in elements.
pub fn row_major(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// A collective between the ranks of `group` (in their order on `axis`), this rank among them.
///
/// Its meaning is given by blocks of the tensor's *view*: its dims cut into the factors that
/// every member's pieces are boxes of (a fused `(3, 16@tp, 64)` dim is three view dims).
/// `inputs[s]` and `outputs[s]` are the boxes member `s` holds of the input and the output;
/// this rank's output receives the box `recv[s]` from member `s`'s input; with `reduce`, what
/// all members send for one output element is combined in group order, else each element is
/// received once. `send[t]` is what this rank's input gives member `t` (the mirror of `t`'s
/// `recv`), which point-to-point NCCL calls need. All of it is derived from the layouts in
/// time proportional to the view's rank times the group's size, never by elements. `kind`
/// names the NCCL call the blocks have the shape of, where they do.
#[derive(Clone, Debug, PartialEq)]
pub struct Exchange {
    pub kind: Collective,
    pub axis: String,
    pub group: Vec<usize>,
    pub input: BufId,
    pub output: BufId,
    pub dtype: DType,
    pub reduce: Option<ReduceOp>,
    /// The view's global extents.
    pub view: Vec<usize>,
    pub inputs: Vec<Block>,
    pub outputs: Vec<Block>,
    pub recv: Vec<Option<Block>>,
    pub send: Vec<Option<Block>>,
    /// This rank's position in `group`.
    pub me: usize,
}

impl Exchange {
    /// Per member, the runs this rank's output receives from its input.
    pub fn recv_runs(&self) -> Vec<Vec<Run>> {
        self.recv
            .iter()
            .enumerate()
            .map(|(s, b)| match b {
                Some(b) => b.runs(&self.inputs[s], &self.outputs[self.me]),
                None => Vec::new(),
            })
            .collect()
    }

    /// Per member, the runs this rank's input gives its output.
    pub fn send_runs(&self) -> Vec<Vec<Run>> {
        self.send
            .iter()
            .enumerate()
            .map(|(t, b)| match b {
                Some(b) => b.runs(&self.inputs[self.me], &self.outputs[t]),
                None => Vec::new(),
            })
            .collect()
    }
}

/// One step of a host program, run in order on the rank's stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// The caller's tensor for parameter `%param`, cut to this rank's piece, is copied in.
    Input {
        buf: BufId,
        param: String,
    },
    /// The buffer's arena range is now in use (no work: the plan placed it).
    Alloc {
        buf: BufId,
    },
    /// A table of i64 the host computes (global offsets, positions), copied in. Shared
    /// between the ranks whose tables are equal (a dim no rank splits).
    Table {
        buf: BufId,
        values: std::sync::Arc<Vec<i64>>,
    },
    /// A kernel of the module.
    Launch {
        kernel: usize,
        grid: [u32; 3],
        block: u32,
        shared_bytes: u32,
        args: Vec<Arg>,
    },
    Gemm(Gemm),
    Exchange(Exchange),
    /// The buffer's range may be reused by later allocations.
    Free {
        buf: BufId,
    },
    /// The buffer holds this rank's piece of result `%value`, of `shape` (a reshaped result
    /// is a view of a buffer of another shape).
    Output {
        buf: BufId,
        value: String,
        shape: Vec<usize>,
    },
}

/// What one rank runs.
#[derive(Clone, Debug, PartialEq)]
pub struct HostProgram {
    pub rank: usize,
    pub world: usize,
    /// Shared by the ranks of a class (their buffers have the same shapes and offsets).
    pub buffers: std::sync::Arc<Vec<Buffer>>,
    pub steps: Vec<Step>,
    /// The arena's size: the most bytes the plan has in use at once (with alignment).
    pub peak_bytes: u64,
}

/// The kernels of a program and each rank's host program.
#[derive(Clone, Debug, PartialEq)]
pub struct Compiled {
    pub kernels: Vec<Kernel>,
    pub hosts: Vec<HostProgram>,
}

/// A shape as printed: `2, 128, 768` or `B, S/8, 768`.
pub(crate) fn dims<T: fmt::Display>(shape: &[T]) -> String {
    shape
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A collective's name as printed: `allreduce.sum`, `allgather`.
pub(crate) fn collective_text(kind: Collective, reduce: Option<ReduceOp>) -> String {
    match reduce {
        Some(r) => format!("{}.{}", kind.name(), r.name()),
        None => kind.name().to_string(),
    }
}

impl HostProgram {
    /// The program as text; `kernels` names the launched kernels.
    pub fn display<'a>(&'a self, kernels: &'a [Kernel]) -> impl fmt::Display + 'a {
        Printed {
            host: self,
            kernels,
        }
    }
}

struct Printed<'a> {
    host: &'a HostProgram,
    kernels: &'a [Kernel],
}

impl fmt::Display for Printed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = self.host;
        writeln!(
            f,
            "host rank {} of {} (arena {} bytes) {{",
            h.rank, h.world, h.peak_bytes
        )?;
        let buf = |b: &BufId| {
            let x = &h.buffers[b.0];
            format!("{b}")
                + &format!(
                    " %{}: {}[{}] @{}",
                    x.name,
                    x.dtype,
                    dims(&x.shape),
                    x.offset
                )
        };
        for s in &h.steps {
            match s {
                Step::Input { buf: b, param } => writeln!(f, "  input {} <- %{param}", buf(b))?,
                Step::Alloc { buf: b } => writeln!(f, "  alloc {}", buf(b))?,
                Step::Table { buf: b, values } => {
                    let x = &h.buffers[b.0];
                    writeln!(
                        f,
                        "  table {b}: i64[{}] @{} ({})",
                        values.len(),
                        x.offset,
                        x.name
                    )?
                }
                Step::Launch {
                    kernel,
                    grid,
                    block,
                    shared_bytes,
                    args,
                } => {
                    let k = &self.kernels[*kernel];
                    let params = k.params();
                    let args: Vec<String> = args
                        .iter()
                        .zip(&params)
                        .map(|(a, p)| match a {
                            Arg::Buffer(b) => format!("{}={b}", p.name),
                            Arg::Int(i) => format!("{}={i}", p.name),
                            Arg::Float(x) => format!("{}={x:?}", p.name),
                        })
                        .collect();
                    write!(
                        f,
                        "  launch @{} grid [{}, {}, {}] block {}",
                        k.name(),
                        grid[0],
                        grid[1],
                        grid[2],
                        block
                    )?;
                    if *shared_bytes > 0 {
                        write!(f, " shared {shared_bytes}")?;
                    }
                    writeln!(f, " ({})", args.join(", "))?
                }
                Step::Gemm(g) => g.write(f)?,
                Step::Exchange(x) => {
                    let op = collective_text(x.kind, x.reduce);
                    let group: Vec<String> = x.group.iter().map(|r| r.to_string()).collect();
                    let from: Vec<String> = match x.recv.first() {
                        // Every member sends the same block (an allreduce).
                        Some(Some(b))
                            if x.recv.len() > 1 && x.recv.iter().all(|r| r.as_ref() == Some(b)) =>
                        {
                            vec![format!("{b} from each")]
                        }
                        _ => x
                            .recv
                            .iter()
                            .zip(&x.group)
                            .filter_map(|(b, r)| b.as_ref().map(|b| format!("{b} from r{r}")))
                            .collect(),
                    };
                    writeln!(
                        f,
                        "  {op} {} -> {} over {} [{}] view [{}] receives {}",
                        x.input,
                        x.output,
                        x.axis,
                        group.join(", "),
                        dims(&x.view),
                        if from.is_empty() {
                            "nothing".to_string()
                        } else {
                            from.join(", ")
                        }
                    )?
                }
                Step::Free { buf: b } => writeln!(f, "  free {b}")?,
                Step::Output {
                    buf: b,
                    value,
                    shape,
                } => writeln!(f, "  output %{value}: [{}] <- {b}", dims(shape))?,
            }
        }
        write!(f, "}}")
    }
}
