//! Symbolic host programs: what the ranks of one class run, with every size a dim expression
//! over the program's symbols (`B`, `S`, …), so that one compile serves every binding.
//!
//! A [`HostTemplate`] is built once per class of ranks that hold pieces of the same shapes
//! (one class where every split is even); [`HostTemplate::bind`] gives one rank's concrete
//! [`HostProgram`] for one binding, in time proportional to the number of steps (plus the
//! tables of global indices, which are as long as the dims they index): buffer sizes and the
//! memory plan's offsets, GEMM sizes and strides, launch geometry and kernel arguments, and
//! each collective's blocks from the layouts and the rank's coordinates. A binding that breaks
//! a divisibility the plan needs is an error naming the symbols and the expression.

use std::collections::BTreeMap;
use std::fmt;

use tpc_ir::layout::{piece_indices, rank_coords};
use tpc_ir::syntax::type_string;
use tpc_ir::{Collective, DType, Dim, ReduceOp, TensorType};
use tpc_passes::lower_to_local::axis_group;

use crate::host::{
    collective_text, dims, Arg, BufId, Buffer, Compiled, Exchange, Gemm, HostProgram, Step, ALIGN,
};
use crate::kir::Kernel;
use crate::{Error, Result};

/// A buffer of a template: its local shape as dim expressions.
#[derive(Clone, Debug, PartialEq)]
pub struct SymBuffer {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

/// A kernel argument of a template.
#[derive(Clone, Debug, PartialEq)]
pub enum SymArg {
    Buffer(BufId),
    Int(Dim),
    Float(f32),
    /// `1 / n` (a mean's divisor over the global count).
    InverseCount(Dim),
    /// `1 / sqrt(n)` (attention's default scale for head dim `n`).
    InverseSqrt(Dim),
    /// A random draw's seed, passed as an int (its 64 bits, as the kernel reads them).
    Seed(u64),
}

/// A table of i64 the host fills in at bind time.
#[derive(Clone, Debug, PartialEq)]
pub enum TableSpec {
    /// The global offset (index times the global row-major stride) of every local index of
    /// dim `dim` of this rank's piece of a value of type `ty`.
    GlobalOffsets { ty: TensorType, dim: usize },
    /// The global index of every local index of dim `dim` of this rank's piece.
    Positions { ty: TensorType, dim: usize },
}

impl TableSpec {
    /// Whether ranks of one class fill it differently: a table of a dim some rank splits (the
    /// others are the same on every rank).
    pub fn depends_on_rank(&self) -> bool {
        match self {
            TableSpec::GlobalOffsets { ty, dim } | TableSpec::Positions { ty, dim } => ty
                .sharding
                .dims
                .get(*dim)
                .is_some_and(|ds| ds.factors.iter().any(|f| !f.axes.is_empty())),
        }
    }
}

/// A GEMM of a template: its sizes are dim expressions.
pub type SymGemm = Gemm<Dim>;

/// A collective of a template: from a value of layout `from` to one of layout `to`, over the
/// rank's group on `axis` (its blocks are found at bind time).
#[derive(Clone, Debug, PartialEq)]
pub struct SymExchange {
    pub kind: Collective,
    pub axis: String,
    pub input: BufId,
    pub output: BufId,
    pub dtype: DType,
    pub reduce: Option<ReduceOp>,
    pub from: TensorType,
    pub to: TensorType,
}

/// A step of a template (see [`Step`]).
#[derive(Clone, Debug, PartialEq)]
pub enum SymStep {
    Input {
        buf: BufId,
        param: String,
    },
    Alloc {
        buf: BufId,
    },
    Table {
        buf: BufId,
        table: TableSpec,
    },
    Launch {
        kernel: usize,
        args: Vec<SymArg>,
    },
    Gemm(SymGemm),
    Exchange(SymExchange),
    Free {
        buf: BufId,
    },
    Output {
        buf: BufId,
        value: String,
        shape: Vec<Dim>,
    },
}

/// What every rank of `ranks` runs, for every binding of the symbols.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTemplate {
    pub ranks: Vec<usize>,
    pub world: usize,
    pub buffers: Vec<SymBuffer>,
    pub steps: Vec<SymStep>,
}

/// The kernels and the host templates of a program: every rank's program, for every binding.
#[derive(Clone, Debug, PartialEq)]
pub struct Templates {
    pub kernels: Vec<Kernel>,
    pub programs: Vec<HostTemplate>,
    /// Mesh axis sizes.
    pub mesh: Vec<(String, usize)>,
}

impl Templates {
    /// The template rank `rank` runs.
    pub fn program_of(&self, rank: usize) -> Option<&HostTemplate> {
        self.programs.iter().find(|p| p.ranks.contains(&rank))
    }

    pub fn world(&self) -> usize {
        self.mesh.iter().map(|(_, n)| (*n).max(1)).product()
    }

    /// Every rank's concrete host program at `bindings`: each template bound once, for the
    /// first rank of its class, then instantiated for the others.
    pub fn bind(&self, bindings: &BTreeMap<String, i64>) -> Result<Compiled> {
        let mut hosts: Vec<Option<HostProgram>> = vec![None; self.world()];
        for t in &self.programs {
            let Some(&first) = t.ranks.first() else {
                continue;
            };
            // One group's blocks serve all its members.
            let mut cache = GroupCache::default();
            let bound = t.bind_cached(&self.kernels, &self.mesh, bindings, first, &mut cache)?;
            for &r in &t.ranks[1..] {
                hosts[r] = Some(t.instantiate(&bound, &self.mesh, bindings, r, &mut cache)?);
            }
            hosts[first] = Some(bound);
        }
        let hosts = hosts
            .into_iter()
            .enumerate()
            .map(|(r, h)| {
                h.ok_or_else(|| Error::Build {
                    value: "host program".into(),
                    rank: r,
                    message: "no host program runs on this rank (a bug in tpc)".into(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Compiled {
            kernels: self.kernels.clone(),
            hosts,
        })
    }
}

/// The error of a dim that does not bind, naming its symbols and their values.
fn bind_error(what: &str, d: &Dim, bindings: &BTreeMap<String, i64>, e: tpc_ir::DimError) -> Error {
    let symbols: Vec<String> = d
        .symbols()
        .iter()
        .map(|s| match bindings.get(s) {
            Some(v) => format!("{s}={v}"),
            None => s.clone(),
        })
        .collect();
    Error::Binding {
        symbols: d.symbols(),
        message: match e {
            tpc_ir::DimError::Unbound(s) => {
                format!("{what} needs symbol `{s}`; bind it (e.g. `--bind {s}=128`)")
            }
            tpc_ir::DimError::NotInteger { .. } => format!(
                "{what} is `{d}`, which is not a whole number at {}: the plan splits it evenly, so \
                 bind {} to a value the split divides",
                symbols.join(", "),
                d.symbols().join(", ")
            ),
            other => format!("{what} is `{d}`: {other}"),
        },
    }
}

/// The blocks of collectives already found at one binding, by (step, group).
pub type GroupCache = BTreeMap<(usize, Vec<usize>), crate::exchange::GroupBlocks>;

/// A table that depends on the rank: the global offsets or positions of one dim of its piece.
fn rank_table(
    table: &TableSpec,
    name: &str,
    bindings: &BTreeMap<String, i64>,
    coords: &tpc_ir::layout::MeshCoords,
    rank: usize,
) -> Result<Vec<i64>> {
    let fail = |message: String| Error::Build {
        value: name.to_string(),
        rank,
        message,
    };
    let (ty, dim, global_offsets) = match table {
        TableSpec::GlobalOffsets { ty, dim } => (ty, *dim, true),
        TableSpec::Positions { ty, dim } => (ty, *dim, false),
    };
    let (global, idx) = piece_indices(ty, bindings, coords).map_err(|e| fail(e.to_string()))?;
    let stride: usize = if global_offsets {
        global.get(dim + 1..).map_or(1, |g| g.iter().product())
    } else {
        1
    };
    Ok(idx
        .get(dim)
        .ok_or_else(|| fail(format!("has no dim {dim}")))?
        .iter()
        .map(|&i| (i * stride) as i64)
        .collect())
}

struct Binder<'a> {
    bindings: &'a BTreeMap<String, i64>,
    rank: usize,
}

impl Binder<'_> {
    fn eval(&self, d: &Dim, what: impl FnOnce() -> String) -> Result<i64> {
        d.eval(self.bindings).map_err(|e| {
            bind_error(
                &format!("{} on rank {}", what(), self.rank),
                d,
                self.bindings,
                e,
            )
        })
    }

    fn size(&self, d: &Dim, what: impl FnOnce() -> String) -> Result<usize> {
        self.eval(d, what).map(|n| n as usize)
    }
}

impl HostTemplate {
    /// Rank `rank`'s program at `bindings` (`mesh`: the axis sizes; `kernels`: the module's).
    pub fn bind(
        &self,
        kernels: &[Kernel],
        mesh: &[(String, usize)],
        bindings: &BTreeMap<String, i64>,
        rank: usize,
    ) -> Result<HostProgram> {
        self.bind_cached(kernels, mesh, bindings, rank, &mut GroupCache::default())
    }

    /// [`HostTemplate::bind`], with the collectives' blocks of groups already seen in `cache`.
    fn bind_cached(
        &self,
        kernels: &[Kernel],
        mesh: &[(String, usize)],
        bindings: &BTreeMap<String, i64>,
        rank: usize,
        cache: &mut GroupCache,
    ) -> Result<HostProgram> {
        let b = Binder { bindings, rank };
        let coords = rank_coords(mesh, rank);
        let mut buffers: Vec<Buffer> = self
            .buffers
            .iter()
            .map(|x| {
                let shape = x
                    .shape
                    .iter()
                    .enumerate()
                    .map(|(d, n)| b.size(n, || format!("dim {d} of %{}", x.name)))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Buffer {
                    name: x.name.clone(),
                    dtype: x.dtype,
                    shape,
                    offset: 0,
                })
            })
            .collect::<Result<_>>()?;
        let mut steps = Vec::with_capacity(self.steps.len());
        for (i, s) in self.steps.iter().enumerate() {
            steps.push(match s {
                SymStep::Input { buf, param } => Step::Input {
                    buf: *buf,
                    param: param.clone(),
                },
                SymStep::Alloc { buf } => Step::Alloc { buf: *buf },
                SymStep::Free { buf } => Step::Free { buf: *buf },
                SymStep::Table { buf, table } => {
                    let name = &self.buffers[buf.0].name;
                    let values = rank_table(table, name, bindings, &coords, rank)?;
                    buffers[buf.0].shape = vec![values.len()];
                    Step::Table {
                        buf: *buf,
                        values: std::sync::Arc::new(values),
                    }
                }
                SymStep::Launch { kernel, args } => {
                    let k = &kernels[*kernel];
                    let args = args
                        .iter()
                        .enumerate()
                        .map(|(i, a)| {
                            Ok(match a {
                                SymArg::Buffer(x) => Arg::Buffer(*x),
                                SymArg::Int(d) => Arg::Int(
                                    b.eval(d, || format!("argument {i} of @{}", k.name()))?,
                                ),
                                SymArg::Float(x) => Arg::Float(*x),
                                SymArg::InverseCount(d) => {
                                    let n = b.eval(d, || format!("the count of @{}", k.name()))?;
                                    Arg::Float((1.0 / n as f64) as f32)
                                }
                                SymArg::Seed(seed) => Arg::Int(*seed as i64),
                                SymArg::InverseSqrt(d) => {
                                    let n =
                                        b.eval(d, || format!("the head dim of @{}", k.name()))?;
                                    Arg::Float((1.0 / (n as f64).sqrt()) as f32)
                                }
                            })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let ints: Vec<i64> = args
                        .iter()
                        .filter_map(|a| match a {
                            Arg::Int(i) => Some(*i),
                            _ => None,
                        })
                        .collect();
                    let dims = k.launch(&ints);
                    Step::Launch {
                        kernel: *kernel,
                        grid: dims.grid,
                        block: dims.block,
                        shared_bytes: dims.shared_bytes,
                        args,
                    }
                }
                SymStep::Gemm(g) => {
                    let name = &self.buffers[g.c.0].name;
                    Step::Gemm(g.try_map(|d, field| {
                        b.size(d, || format!("the GEMM's {field} into %{name}"))
                    })?)
                }
                SymStep::Exchange(x) => {
                    Step::Exchange(self.exchange(i, x, mesh, bindings, rank, cache)?)
                }
                SymStep::Output { buf, value, shape } => Step::Output {
                    buf: *buf,
                    value: value.clone(),
                    shape: shape
                        .iter()
                        .enumerate()
                        .map(|(d, n)| b.size(n, || format!("dim {d} of result %{value}")))
                        .collect::<Result<_>>()?,
                },
            });
        }
        let peak_bytes = crate::memory::place(&mut buffers, &steps);
        Ok(HostProgram {
            rank,
            world: self.world,
            buffers: std::sync::Arc::new(buffers),
            steps,
            peak_bytes,
        })
    }

    /// Rank `rank`'s program, from `bound`, this template bound for another rank of its class
    /// at the same binding: only what depends on the rank's coordinates is found again (its
    /// tables of global indices and its collectives' groups and blocks); sizes, arguments and
    /// the memory plan are the class's.
    pub fn instantiate(
        &self,
        bound: &HostProgram,
        mesh: &[(String, usize)],
        bindings: &BTreeMap<String, i64>,
        rank: usize,
        cache: &mut GroupCache,
    ) -> Result<HostProgram> {
        let coords = rank_coords(mesh, rank);
        let mut out = bound.clone();
        out.rank = rank;
        // Steps correspond one to one (binding adds and removes none).
        for (i, (s, step)) in self.steps.iter().zip(out.steps.iter_mut()).enumerate() {
            match (s, step) {
                (SymStep::Table { buf, table }, Step::Table { values, .. })
                    if table.depends_on_rank() =>
                {
                    *values = std::sync::Arc::new(rank_table(
                        table,
                        &self.buffers[buf.0].name,
                        bindings,
                        &coords,
                        rank,
                    )?);
                }
                (SymStep::Exchange(x), Step::Exchange(e)) => {
                    *e = self.exchange(i, x, mesh, bindings, rank, cache)?;
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// A collective of rank `rank`: its group on the axis and the blocks it moves.
    fn exchange(
        &self,
        step: usize,
        x: &SymExchange,
        mesh: &[(String, usize)],
        bindings: &BTreeMap<String, i64>,
        rank: usize,
        cache: &mut GroupCache,
    ) -> Result<Exchange> {
        let name = &self.buffers[x.output.0].name;
        let fail = |message: String| Error::Build {
            value: name.clone(),
            rank,
            message,
        };
        let group = axis_group(mesh, &rank_coords(mesh, rank), &x.axis);
        let me = group
            .iter()
            .position(|&r| r == rank)
            .ok_or_else(|| fail("this rank is not in its own group".into()))?;
        let key = (step, group.clone());
        let all = match cache.get(&key) {
            Some(all) => all,
            None => {
                let all = crate::exchange::group_blocks(
                    &x.from,
                    &x.to,
                    bindings,
                    mesh,
                    &group,
                    x.reduce.is_some(),
                )
                .map_err(fail)?;
                cache.entry(key).or_insert(all)
            }
        };
        let blocks = all.member(me);
        Ok(Exchange {
            kind: x.kind,
            axis: x.axis.clone(),
            group,
            input: x.input,
            output: x.output,
            dtype: x.dtype,
            reduce: x.reduce,
            view: blocks.view,
            inputs: blocks.inputs,
            outputs: blocks.outputs,
            recv: blocks.recv,
            send: blocks.send,
            me,
        })
    }

    /// The template as text; `kernels` names the launched kernels.
    pub fn display<'a>(&'a self, kernels: &'a [Kernel]) -> impl fmt::Display + 'a {
        Printed {
            host: self,
            kernels,
        }
    }
}

/// `0-7` for a run of ranks, `0, 2, 5` otherwise.
fn ranks_text(ranks: &[usize]) -> String {
    match (ranks.first(), ranks.last()) {
        (Some(a), Some(b)) if ranks.len() > 2 && b - a + 1 == ranks.len() => format!("{a}-{b}"),
        _ => ranks
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

struct Printed<'a> {
    host: &'a HostTemplate,
    kernels: &'a [Kernel],
}

impl fmt::Display for Printed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = self.host;
        writeln!(
            f,
            "host ranks {} of {} (every binding; offsets and arena at bind, {} bytes aligned) {{",
            ranks_text(&h.ranks),
            h.world,
            ALIGN
        )?;
        let buf = |b: &BufId| {
            let x = &h.buffers[b.0];
            format!("{b} %{}: {}[{}]", x.name, x.dtype, dims(&x.shape))
        };
        for s in &h.steps {
            match s {
                SymStep::Input { buf: b, param } => writeln!(f, "  input {} <- %{param}", buf(b))?,
                SymStep::Alloc { buf: b } => writeln!(f, "  alloc {}", buf(b))?,
                SymStep::Table { buf: b, .. } => {
                    let x = &h.buffers[b.0];
                    writeln!(f, "  table {b}: i64[{}] ({})", dims(&x.shape), x.name)?;
                }
                SymStep::Launch { kernel, args } => {
                    let k = &self.kernels[*kernel];
                    let params = k.params();
                    let args: Vec<String> = args
                        .iter()
                        .zip(&params)
                        .map(|(a, p)| match a {
                            SymArg::Buffer(b) => format!("{}={b}", p.name),
                            SymArg::Int(i) => format!("{}={i}", p.name),
                            SymArg::Float(x) => format!("{}={x:?}", p.name),
                            SymArg::InverseCount(n) => format!("{}=1/({n})", p.name),
                            SymArg::InverseSqrt(n) => format!("{}=1/sqrt({n})", p.name),
                            SymArg::Seed(seed) => format!("{}={seed}", p.name),
                        })
                        .collect();
                    writeln!(f, "  launch @{} ({})", k.name(), args.join(", "))?
                }
                SymStep::Gemm(g) => g.write(f)?,
                SymStep::Exchange(x) => {
                    let op = collective_text(x.kind, x.reduce);
                    writeln!(
                        f,
                        "  {op} {} -> {} over {} ({} -> {})",
                        x.input,
                        x.output,
                        x.axis,
                        type_string(&x.from),
                        type_string(&x.to)
                    )?
                }
                SymStep::Free { buf: b } => writeln!(f, "  free {b}")?,
                SymStep::Output {
                    buf: b,
                    value,
                    shape,
                } => writeln!(f, "  output %{value}: [{}] <- {b}", dims(shape))?,
            }
        }
        write!(f, "}}")
    }
}
