//! Segmentation: a sharded program cut into what a GPU runs, in program order. It takes the
//! program after `decompose`, so it meets only primitive ops.
//!
//! - Maximal groups of pointwise ops (unary, binary, where, cast, broadcast, rand_like, full)
//!   and row reductions (sum/max/min over adjacent dims) become one [`Fused`] kernel each: the
//!   ops before a reduction are its prologue, the ops after it (on the full shape or on the
//!   reduced one) its epilogue, and a group may reduce its row several times (a softmax's max
//!   and sum, a norm's two means).
//! - Scalars with no operands (`full` of rank 0, `inv_count`) are computed where they are read;
//!   broadcasts and float upcasts that only feed fused ops are read in place, never stored.
//! - `linear`/`matmul` become GEMMs, with the bias and a following tanh-gelu in the epilogue
//!   (the gelu `decompose` keeps whole, [`gemm_epilogue_gelu`]).
//! - permute, slice, concat become strided copies; `reshape` is a view of its operand's buffer.
//! - `embedding`, `sdpa`, `pick` and `kept` get their own kernels; collectives stay alone.
//!
//! Segmentation reads the global (sharded) graph, so one set of kernels serves every rank: the
//! ranks differ only in the extents, offsets and tables they pass (see `build.rs`).

use std::collections::{BTreeMap, BTreeSet};
use tpc_ir::ops::{BinaryOp, Cast, Full, InvCount, Kept, Pick, RandLike, Reduce, Sdpa};
use tpc_ir::{DType, Dim, Graph, Op, ReduceKind, ReduceOp, ValueId};
use tpc_passes::decompose::gemm_epilogue_gelu;

use crate::kir::{self, Expr, Fused, Input, Kernel, Output, Scalar, Value};
use crate::{Error, Result};

/// A float the host computes per rank and passes to a fused kernel.
#[derive(Clone, Debug, PartialEq)]
pub enum ScalarSource {
    /// `1 / n` (`inv_count`: a mean divides by the global count, whatever the split).
    InverseCount(Dim),
}

/// How a fused kernel is called.
#[derive(Clone, Debug, PartialEq)]
pub struct FusedCall {
    /// The graph values read, in the kernel's input order.
    pub inputs: Vec<ValueId>,
    /// The graph values written, in the kernel's output order.
    pub outputs: Vec<ValueId>,
    /// A value whose shape is the iteration space (its local shape gives the extents, its
    /// index maps the global-offset tables).
    pub space: ValueId,
    pub args: Vec<ScalarSource>,
    /// The kernel's seeds `r<i>`, in order.
    pub seeds: Vec<u64>,
    /// Every op of the group, in program order.
    pub members: Vec<ValueId>,
}

/// A piece of the program that runs as one unit.
#[derive(Clone, Debug, PartialEq)]
pub enum Segment {
    /// A fused kernel (`kernel` indexes [`Plan::kernels`]).
    Fused {
        kernel: usize,
        call: FusedCall,
    },
    /// A GEMM computing `value` (a linear or matmul); with `gelu`, the gelu user fused into the
    /// epilogue, whose value the GEMM then writes.
    Gemm {
        value: ValueId,
        gelu: Option<ValueId>,
    },
    /// A strided-copy kernel computing `value` (permute, slice or concat).
    Copy {
        kernel: usize,
        value: ValueId,
    },
    Embedding {
        kernel: usize,
        value: ValueId,
    },
    Attention {
        kernel: usize,
        value: ValueId,
    },
    Pick {
        kernel: usize,
        value: ValueId,
    },
    Kept {
        kernel: usize,
        value: ValueId,
    },
    /// A collective.
    Collective(ValueId),
    /// A reshape: a view of its operand's buffer.
    View(ValueId),
}

/// The kernels of a program and the segments that call them.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub kernels: Vec<Kernel>,
    pub segments: Vec<Segment>,
}

fn is_float(d: DType) -> bool {
    matches!(d, DType::F32 | DType::BF16 | DType::F16)
}

fn scalar_ok(d: DType) -> bool {
    is_float(d) || d == DType::Bool
}

/// The row a reduction reduces over (dims `a..b` of its operand), if it is one a fused kernel
/// computes: a sum, max or min over adjacent dims.
fn row_of(g: &Graph, v: ValueId) -> Option<(usize, usize)> {
    match g.op(v) {
        Op::Reduce(Reduce { kind, dims, .. }) if *kind != ReduceKind::Mean => {
            let mut d = dims.clone();
            d.sort_unstable();
            let (first, last) = (*d.first()?, *d.last()?);
            // Only adjacent dims form a row.
            (last - first + 1 == d.len()).then_some((first, last + 1))
        }
        _ => None,
    }
}

/// Whether `v` is an op a fused kernel computes.
fn elementwise(g: &Graph, v: ValueId) -> bool {
    let ok = matches!(
        g.op(v),
        Op::Unary(_)
            | Op::Binary(_)
            | Op::Where(_)
            | Op::Cast { .. }
            | Op::Broadcast { .. }
            | Op::RandLike { .. }
            | Op::Full { .. }
            | Op::InvCount { .. }
    );
    ok && scalar_ok(g.ty(v).dtype) && g.operands(v).iter().all(|&o| scalar_ok(g.ty(o).dtype))
}

fn reduction(g: &Graph, v: ValueId) -> bool {
    row_of(g, v).is_some()
        && is_float(g.ty(v).dtype)
        && g.operands(v).iter().all(|&o| is_float(g.ty(o).dtype))
}

/// A scalar with no operands that a kernel computes where it reads it: `full` of rank 0 (a
/// constant) or `inv_count` (an argument).
fn inline_scalar(g: &Graph, v: ValueId) -> bool {
    match g.op(v) {
        Op::Full(Full { shape, dtype, .. }) => shape.is_empty() && scalar_ok(*dtype),
        Op::InvCount(_) => true,
        _ => false,
    }
}

/// Whether a kernel reads `u`'s operands where it computes `u`: a fused op, or a value read in
/// place (`absorbed`).
fn read_in_kernel(g: &Graph, absorbed: &BTreeSet<ValueId>, u: ValueId) -> bool {
    absorbed.contains(&u) || elementwise(g, u) || reduction(g, u)
}

/// What a read of `o` reads: through the values read in place (`absorbed`) to the value stored
/// or computed.
fn root_of(g: &Graph, absorbed: &BTreeSet<ValueId>, mut o: ValueId) -> ValueId {
    while absorbed.contains(&o) {
        o = g.operand_slice(o)[0];
    }
    o
}

/// Whether `v` may be read in place by fused users instead of stored: a broadcast, or a cast
/// to f32 of a float (a fused kernel computes in f32, and its loads convert).
fn readable_in_place(g: &Graph, v: ValueId) -> bool {
    match g.op(v) {
        Op::Broadcast { .. } => true,
        Op::Cast(Cast { to: DType::F32 }) => g
            .operand_slice(v)
            .first()
            .is_some_and(|&o| is_float(g.ty(o).dtype)),
        _ => false,
    }
}

/// The shape of a group's per-row values: the space with the row dims removed.
fn row_shape(space: &[Dim], row: (usize, usize)) -> Vec<Dim> {
    space[..row.0]
        .iter()
        .chain(&space[row.1..])
        .cloned()
        .collect()
}

/// The same shape with the row dims kept as 1.
fn row_shape_keep(space: &[Dim], row: (usize, usize)) -> Vec<Dim> {
    let mut s = space.to_vec();
    for d in &mut s[row.0..row.1] {
        *d = Dim::constant(1);
    }
    s
}

/// How a member of a group sees the iteration space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum View {
    /// One value per element.
    Full,
    /// One value per row.
    Row,
}

struct Group {
    members: Vec<ValueId>,
    /// Position (in program order) of the first member.
    first: usize,
    space: Vec<Dim>,
    /// The sharding of the space (members must agree, so local extents agree).
    space_value: ValueId,
    row: Option<(usize, usize)>,
    views: BTreeMap<ValueId, View>,
}

impl Group {
    /// How `v` (of shape `shape`) would sit in this group, if it fits.
    fn view_for(&self, g: &Graph, v: ValueId) -> Option<View> {
        let shape = &g.ty(v).shape;
        let same_layout = |u: ValueId| {
            let (a, b) = (g.ty(u), g.ty(self.space_value));
            a.shape == b.shape && a.sharding.dims == b.sharding.dims
        };
        if *shape == self.space && same_layout(v) {
            return Some(View::Full);
        }
        let row = self.row?;
        (*shape == row_shape(&self.space, row) || *shape == row_shape_keep(&self.space, row))
            .then_some(View::Row)
    }
}

/// The program's segments and kernels, in program order (parameters are not segments).
pub fn segment(g: &Graph) -> Result<Plan> {
    let position: BTreeMap<ValueId, usize> = g
        .values()
        .iter()
        .enumerate()
        .map(|(i, &v)| (v, i))
        .collect();
    let mut users: BTreeMap<ValueId, Vec<ValueId>> = BTreeMap::new();
    for &v in g.values() {
        for o in g.operands(v) {
            users.entry(o).or_default().push(v);
        }
    }
    let is_output = |v: ValueId| g.outputs().contains(&v);
    // GEMMs that take a following tanh-gelu into their epilogue.
    let gelu_of: BTreeMap<ValueId, ValueId> = g
        .values()
        .iter()
        .filter_map(|&v| gemm_epilogue_gelu(g, v).map(|u| (v, u)))
        .collect();
    let fused_gelus: BTreeSet<ValueId> = gelu_of.values().copied().collect();
    // Broadcasts and upcasts that only feed fused ops (or other such values) are read in place
    // by them, never materialized. Users come after their operands: one sweep from the end.
    let mut absorbed: BTreeSet<ValueId> = BTreeSet::new();
    for &v in g.values().iter().rev() {
        // (A broadcast member reads its operand with its own mask: not through another.)
        let fused_users = users.get(&v).is_some_and(|us| {
            us.iter().all(|&u| {
                read_in_kernel(g, &absorbed, u) && !matches!(g.op(u), Op::Broadcast { .. })
                    || absorbed.contains(&u)
            })
        });
        if readable_in_place(g, v) && !is_output(v) && fused_users {
            absorbed.insert(v);
        }
    }
    let root = |o: ValueId| root_of(g, &absorbed, o);

    let mut groups: Vec<Group> = Vec::new();
    let mut group_of: BTreeMap<ValueId, usize> = BTreeMap::new();
    // Either a group (by index) or a single op, in program order.
    let mut order: Vec<std::result::Result<usize, ValueId>> = Vec::new();
    for &v in g.values() {
        // A scalar with no operands is computed where it is read, unless something outside a
        // kernel reads it (a result): then it is a kernel's member like any pointwise op.
        let inlined = inline_scalar(g, v)
            && !is_output(v)
            && users
                .get(&v)
                .is_some_and(|us| us.iter().all(|&u| read_in_kernel(g, &absorbed, u)));
        if matches!(g.op(v), Op::Param { .. })
            || fused_gelus.contains(&v)
            || absorbed.contains(&v)
            || inlined
        {
            continue;
        }
        let is_row_op = reduction(g, v);
        let operands = g.operands(v);
        let roots: Vec<ValueId> = operands.iter().map(|&o| root(o)).collect();
        // A reshape of a per-row value that only drops or keeps the row's dims (a norm's
        // statistics) is that value.
        let row_reshape = matches!(g.op(v), Op::Reshape { .. })
            && roots.first().is_some_and(|r| {
                group_of.get(r).is_some_and(|&gi| {
                    let group = &groups[gi];
                    group.views.get(r) == Some(&View::Row)
                        && group.view_for(g, v) == Some(View::Row)
                })
            });
        if !elementwise(g, v) && !is_row_op && !row_reshape {
            order.push(Err(v));
            continue;
        }
        let join = roots.iter().find_map(|u| {
            let gi = *group_of.get(u)?;
            let group = &groups[gi];
            // Nothing outside the group that was computed after it began may feed it (no
            // cycles through other segments).
            let before = roots.iter().all(|&r| {
                inline_scalar(g, r) || group_of.get(&r) == Some(&gi) || position[&r] < group.first
            });
            if !before {
                return None;
            }
            // A member read through absorbed values: a per-row value spread along the row, or
            // a value of the group's shape converted.
            for (&o, &r) in operands.iter().zip(&roots) {
                if o == r || group_of.get(&r) != Some(&gi) {
                    continue;
                }
                let fits = match group.views[&r] {
                    View::Row => group.row.is_some_and(|row| {
                        let mask = broadcast_mask(&g.ty(r).shape, &group.space);
                        g.ty(o).shape == group.space
                            && (0..mask.len()).all(|d| mask[d] == (row.0..row.1).contains(&d))
                    }),
                    View::Full => g.ty(o).shape == g.ty(r).shape,
                };
                if !fits {
                    return None;
                }
            }
            if is_row_op {
                let row = row_of(g, v)?;
                let input = roots[0];
                let fits = g.ty(operands[0]).shape == group.space
                    && group.views.get(&input) == Some(&View::Full)
                    && group.row.is_none_or(|r| r == row);
                return fits.then_some(gi);
            }
            let view = group.view_for(g, v)?;
            // A broadcast inside a group only spreads a per-row value along the row.
            if let Op::Broadcast { .. } = g.op(v) {
                let src = roots[0];
                if group_of.get(&src) == Some(&gi) {
                    let row = group.row?;
                    let mask = broadcast_mask(&g.ty(src).shape, &group.space);
                    let along_row = (0..mask.len()).all(|d| mask[d] == (row.0..row.1).contains(&d));
                    if !(view == View::Full && group.views[&src] == View::Row && along_row) {
                        return None;
                    }
                }
            }
            // A draw by global index needs one element per draw.
            if view == View::Row && matches!(g.op(v), Op::RandLike { .. }) {
                return None;
            }
            if view == View::Row {
                for (&o, &r) in operands.iter().zip(&roots) {
                    // Per-element operands of a per-row op would be a reduction: not this op.
                    if group.views.get(&r) == Some(&View::Full) {
                        return None;
                    }
                    // A value from outside read through a broadcast has no per-row reading.
                    if o != r && !inline_scalar(g, r) && group_of.get(&r) != Some(&gi) {
                        return None;
                    }
                }
            }
            Some(gi)
        });
        match join {
            Some(gi) => {
                let group = &mut groups[gi];
                if is_row_op {
                    group.row = row_of(g, v);
                    group.views.insert(v, View::Row);
                } else {
                    let view = group.view_for(g, v).unwrap_or(View::Full);
                    group.views.insert(v, view);
                }
                group.members.push(v);
                group_of.insert(v, gi);
            }
            None => {
                let (space, space_value, row, view) = if is_row_op {
                    let input = operands[0];
                    (g.ty(input).shape.clone(), input, row_of(g, v), View::Row)
                } else if row_reshape {
                    // Not joined (it always joins its operand's group): keep it a view.
                    order.push(Err(v));
                    continue;
                } else {
                    (g.ty(v).shape.clone(), v, None, View::Full)
                };
                group_of.insert(v, groups.len());
                order.push(Ok(groups.len()));
                groups.push(Group {
                    members: vec![v],
                    first: position[&v],
                    space,
                    space_value,
                    row,
                    views: [(v, view)].into_iter().collect(),
                });
            }
        }
    }

    let mut kernels: Vec<Kernel> = Vec::new();
    // Kernels by body: a stack of identical layers generates each kernel once.
    let mut by_body: BTreeMap<String, usize> = BTreeMap::new();
    let mut add = |kernels: &mut Vec<Kernel>, k: Kernel| -> usize {
        *by_body.entry(k.body()).or_insert_with(|| {
            kernels.push(k);
            kernels.len() - 1
        })
    };
    let mut segments = Vec::new();
    // Copy kernels are shared by dtype and rank.
    let mut copy_kernels: BTreeMap<(String, usize), usize> = BTreeMap::new();
    for item in order {
        let v = match item {
            Ok(gi) => {
                let (kernel, call) = build(g, &groups[gi], &users, &absorbed, kernels.len())?;
                let index = add(&mut kernels, Kernel::Fused(kernel));
                segments.push(Segment::Fused {
                    kernel: index,
                    call,
                });
                continue;
            }
            Err(v) => v,
        };
        let dtype = g.ty(v).dtype;
        let name = |what: &str| format!("k{}_{what}_{}", kernels.len(), clean(g.name(v)));
        let segment = match g.op(v) {
            Op::Linear(_) | Op::Matmul(_) => {
                if !is_float(dtype) {
                    return Err(unsupported(g, v, "a GEMM of non-float values"));
                }
                Segment::Gemm {
                    value: v,
                    gelu: gelu_of.get(&v).copied(),
                }
            }
            Op::Reshape { .. } => Segment::View(v),
            Op::Collective { .. } => Segment::Collective(v),
            Op::Permute { .. } | Op::Slice { .. } | Op::Split { .. } | Op::Concat { .. } => {
                let rank = g.ty(v).shape.len();
                let key = (dtype.to_string(), rank);
                let kernel = match copy_kernels.get(&key) {
                    Some(&k) => k,
                    None => {
                        kernels.push(Kernel::Copy(kir::Copy {
                            name: format!("copy_{dtype}_r{rank}"),
                            dtype,
                            rank,
                        }));
                        copy_kernels.insert(key, kernels.len() - 1);
                        kernels.len() - 1
                    }
                };
                Segment::Copy { kernel, value: v }
            }
            Op::Embedding(_) => {
                let k = Kernel::Embedding(kir::Embedding {
                    name: name("embedding"),
                    dtype,
                });
                Segment::Embedding {
                    kernel: add(&mut kernels, k),
                    value: v,
                }
            }
            Op::Sdpa(Sdpa { causal, .. }) => {
                // `sdpa_stats`' second result is its own launch, writing the log-sum-exp.
                let lse = g.node(v).result == 1;
                let k = Kernel::Attention(kir::Attention {
                    name: name(if lse { "attention_lse" } else { "attention" }),
                    dtype: g.ty(g.operand_slice(v)[0]).dtype,
                    causal: *causal,
                    lse,
                });
                Segment::Attention {
                    kernel: add(&mut kernels, k),
                    value: v,
                }
            }
            Op::Pick(Pick { ignore_index, .. }) => {
                let k = Kernel::Pick(kir::Pick {
                    name: name("pick"),
                    dtype: g.ty(g.operand_slice(v)[0]).dtype,
                    ignore_index: *ignore_index,
                });
                Segment::Pick {
                    kernel: add(&mut kernels, k),
                    value: v,
                }
            }
            Op::Kept(Kept { ignore_index }) => {
                let k = Kernel::Kept(kir::Kept {
                    name: name("kept"),
                    ignore_index: *ignore_index,
                });
                Segment::Kept {
                    kernel: add(&mut kernels, k),
                    value: v,
                }
            }
            Op::Reduce(Reduce {
                kind: ReduceKind::Mean,
                ..
            })
            | Op::Softmax(_)
            | Op::LayerNorm(_)
            | Op::RmsNorm(_)
            | Op::Dropout(_)
            | Op::Gelu(_)
            | Op::CrossEntropy(_) => {
                return Err(unsupported(
                    g,
                    v,
                    &format!(
                        "the composite `{}`: code generation takes the program after the `decompose` pass",
                        g.op(v).name()
                    ),
                ))
            }
            Op::Reduce(Reduce { dims, .. }) if row_of(g, v).is_none() => {
                return Err(unsupported(
                    g,
                    v,
                    &format!(
                        "a reduction over dims {dims:?}, which are not adjacent (reduce one run of adjacent dims at a time, or permute first)"
                    ),
                ))
            }
            other => {
                return Err(unsupported(
                    g,
                    v,
                    &format!("`{}` on {} values", other.name(), dtype),
                ))
            }
        };
        segments.push(segment);
    }
    Ok(Plan { kernels, segments })
}

fn unsupported(g: &Graph, v: ValueId, what: &str) -> Error {
    Error::Unsupported {
        value: g.name(v).to_string(),
        what: what.to_string(),
    }
}

/// A name C accepts: other characters as `_`.
fn clean(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Per space dim, whether a tensor of shape `from` is broadcast along it (right-aligned).
fn broadcast_mask(from: &[Dim], to: &[Dim]) -> Vec<bool> {
    let offset = to.len().saturating_sub(from.len());
    let one = Dim::constant(1);
    (0..to.len())
        .map(|d| d < offset || (from[d - offset] == one && to[d] != one))
        .collect()
}

struct Builder<'g> {
    g: &'g Graph,
    group: &'g Group,
    absorbed: &'g BTreeSet<ValueId>,
    inputs: Vec<Input>,
    input_of: BTreeMap<(ValueId, bool), usize>,
    input_values: Vec<ValueId>,
    body: Vec<(Scalar, Expr)>,
    value_of: BTreeMap<ValueId, Value>,
    /// The body value of each scalar computed in place, by its op.
    scalars: BTreeMap<Op, Value>,
    /// The body value of each input's load.
    loaded: BTreeMap<usize, Value>,
    args: Vec<ScalarSource>,
    arg_text: Vec<String>,
    /// The seeds the kernel's random draws use, in argument order.
    seeds: Vec<u64>,
    global_index: bool,
}

impl Builder<'_> {
    fn push(&mut self, ty: Scalar, e: Expr) -> Value {
        self.body.push((ty, e));
        Value(self.body.len() - 1)
    }

    /// The uniform draw for `seed` at the element's global index, the seed an argument.
    fn rand(&mut self, seed: u64) -> Value {
        let i = match self.seeds.iter().position(|&s| s == seed) {
            Some(i) => i,
            None => {
                self.seeds.push(seed);
                self.seeds.len() - 1
            }
        };
        self.f32(Expr::RandArg(i))
    }

    fn f32(&mut self, e: Expr) -> Value {
        self.push(Scalar::F32, e)
    }

    fn constant(&mut self, c: f32) -> Value {
        self.f32(Expr::Const(c))
    }

    fn scalar_of(d: DType) -> Scalar {
        if d == DType::Bool {
            Scalar::Bool
        } else {
            Scalar::F32
        }
    }

    /// The mask an operand of shape `shape` is read with by a member seen as `view`.
    fn mask(&self, o: ValueId, view: View) -> Vec<bool> {
        let space = &self.group.space;
        match (view, self.group.row) {
            (View::Row, Some(row)) => {
                // A per-row operand: its dims are the space's outside the row (kept as 1, or
                // removed).
                let shape = &self.g.ty(o).shape;
                if *shape == row_shape_keep(space, row) {
                    broadcast_mask(shape, space)
                        .iter()
                        .enumerate()
                        .map(|(d, &b)| b || (row.0..row.1).contains(&d))
                        .collect()
                } else {
                    (0..space.len())
                        .map(|d| (row.0..row.1).contains(&d))
                        .collect()
                }
            }
            _ => broadcast_mask(&self.g.ty(o).shape, space),
        }
    }

    fn root(&self, o: ValueId) -> ValueId {
        root_of(self.g, self.absorbed, o)
    }

    /// The value of operand `o` of a member seen as `view`: computed in the kernel (a member,
    /// also spread or converted in place; a scalar with no operands), or loaded.
    fn operand(&mut self, o: ValueId, view: View) -> Result<Value> {
        if let Some(&v) = self.value_of.get(&o) {
            return Ok(v);
        }
        let r = self.root(o);
        if let Some(&v) = self.value_of.get(&r) {
            return Ok(v);
        }
        if inline_scalar(self.g, r) {
            // One value per distinct scalar (a norm's two means share their inverse count).
            let op = self.g.op(r).clone();
            if let Some(&v) = self.scalars.get(&op) {
                return Ok(v);
            }
            let v = self.inline_scalar(r)?;
            self.scalars.insert(op, v);
            return Ok(v);
        }
        // Read through absorbed values: the root, with the broadcast dims dropped.
        let mask = if o != r {
            if view == View::Row {
                return Err(unsupported(self.g, o, "a broadcast read by a per-row op"));
            }
            broadcast_mask(&self.g.ty(r).shape, &self.group.space)
        } else {
            self.mask(o, view)
        };
        let key = (r, view == View::Row && o == r);
        let k = match self.input_of.get(&key) {
            Some(&k) => k,
            None => {
                self.inputs.push(Input {
                    name: self.g.name(r).to_string(),
                    dtype: self.g.ty(r).dtype,
                    broadcast: mask,
                });
                self.input_values.push(r);
                self.input_of.insert(key, self.inputs.len() - 1);
                self.inputs.len() - 1
            }
        };
        if let Some(&v) = self.loaded.get(&k) {
            return Ok(v);
        }
        let v = self.push(Self::scalar_of(self.g.ty(r).dtype), Expr::Load(k));
        self.loaded.insert(k, v);
        Ok(v)
    }

    /// A constant (rounded to its dtype at compile time) or an inverse count (an argument).
    fn inline_scalar(&mut self, v: ValueId) -> Result<Value> {
        Ok(match self.g.op(v) {
            Op::Full(Full {
                value,
                dtype: DType::Bool,
                ..
            }) => self.push(
                Scalar::Bool,
                Expr::Const(if *value != 0.0 { 1.0 } else { 0.0 }),
            ),
            Op::Full(Full { value, dtype, .. }) => {
                self.constant(round_scalar(*dtype, *value as f32))
            }
            Op::InvCount(InvCount { count }) => {
                let text = format!("1 / {count}");
                self.arg(ScalarSource::InverseCount(count.clone()), text)
            }
            other => {
                let what = format!("`{}` as a scalar computed in place", other.name());
                return Err(unsupported(self.g, v, &what));
            }
        })
    }

    /// `x` (computed in f32) rounded to what `dtype` stores.
    fn round(&mut self, dtype: DType, x: Value) -> Value {
        match dtype {
            DType::BF16 | DType::F16 => self.f32(Expr::Round(dtype, x)),
            _ => x,
        }
    }

    fn arg(&mut self, source: ScalarSource, text: String) -> Value {
        let i = match self.args.iter().position(|a| *a == source) {
            Some(i) => i,
            None => {
                self.args.push(source);
                self.arg_text.push(text);
                self.args.len() - 1
            }
        };
        self.f32(Expr::Arg(i))
    }

    fn member(&mut self, v: ValueId) -> Result<()> {
        let g = self.g;
        let view = self.group.views[&v];
        let operand_ids = g.operands(v);
        let dtype = g.ty(v).dtype;
        let out = match g.op(v) {
            Op::Broadcast { .. } => {
                // Read in place: a load with the broadcast dims dropped, or, inside the group,
                // the per-row value itself (uniform along the row).
                self.operand(operand_ids[0], view_of_source(self, operand_ids[0]))?
            }
            Op::InvCount(_) => self.inline_scalar(v)?,
            Op::Full(Full { value, dtype, .. }) => {
                if *dtype == DType::Bool {
                    self.push(
                        Scalar::Bool,
                        Expr::Const(if *value != 0.0 { 1.0 } else { 0.0 }),
                    )
                } else {
                    let c = self.constant(*value as f32);
                    self.round(*dtype, c)
                }
            }
            Op::RandLike(RandLike { seed }) => {
                self.global_index = true;
                let r = self.rand(*seed);
                self.round(dtype, r)
            }
            Op::Unary(op) => {
                let a = self.operand(operand_ids[0], view)?;
                if dtype == DType::Bool {
                    self.push(Scalar::Bool, Expr::Unary(*op, a))
                } else {
                    let x = self.f32(Expr::Unary(*op, a));
                    self.round(dtype, x)
                }
            }
            Op::Binary(op) => {
                let a = self.operand(operand_ids[0], view)?;
                let b = self.operand(operand_ids[1], view)?;
                if op.is_comparison() || op.is_logical() {
                    self.push(Scalar::Bool, Expr::Binary(*op, a, b))
                } else {
                    let x = self.f32(Expr::Binary(*op, a, b));
                    self.round(dtype, x)
                }
            }
            Op::Where(_) => {
                let c = self.operand(operand_ids[0], view)?;
                let a = self.operand(operand_ids[1], view)?;
                let b = self.operand(operand_ids[2], view)?;
                self.push(Self::scalar_of(dtype), Expr::Select(c, a, b))
            }
            Op::Cast(Cast { to }) => {
                let a = self.operand(operand_ids[0], view)?;
                let from = g.ty(operand_ids[0]).dtype;
                match (from == DType::Bool, *to == DType::Bool) {
                    (false, true) => {
                        let zero = self.constant(0.0);
                        self.push(Scalar::Bool, Expr::Binary(BinaryOp::Ne, a, zero))
                    }
                    (true, false) => {
                        let one = self.constant(1.0);
                        let zero = self.constant(0.0);
                        self.f32(Expr::Select(a, one, zero))
                    }
                    (true, true) => a,
                    (false, false) => self.round(*to, a),
                }
            }
            Op::Reduce(Reduce { kind, .. }) => {
                let x = self.operand(operand_ids[0], View::Full)?;
                let op = match kind {
                    ReduceKind::Max => ReduceOp::Max,
                    ReduceKind::Min => ReduceOp::Min,
                    _ => ReduceOp::Sum,
                };
                let y = self.f32(Expr::RowReduce(op, x));
                self.round(dtype, y)
            }
            // A per-row value reshaped to the row's dims kept or dropped: the same values.
            Op::Reshape(_) => self.operand(operand_ids[0], view)?,
            other => {
                return Err(unsupported(
                    g,
                    v,
                    &format!("`{}` in a fused kernel", other.name()),
                ))
            }
        };
        self.value_of.insert(v, out);
        Ok(())
    }
}

/// How a broadcast's operand is read: a group member keeps its own view; an outside value is
/// loaded per element (with the broadcast's mask).
fn view_of_source(b: &Builder<'_>, o: ValueId) -> View {
    b.group.views.get(&o).copied().unwrap_or(View::Full)
}

/// `x` rounded to `d` (bf16, f16) and back, as the storage would.
fn round_scalar(d: DType, x: f32) -> f32 {
    match d {
        DType::BF16 => half::bf16::from_f32(x).to_f32(),
        DType::F16 => half::f16::from_f32(x).to_f32(),
        _ => x,
    }
}

/// Whether something outside `group` reads `v`: a user that is not a member, looking through
/// the absorbed values members read it by.
fn read_outside(
    v: ValueId,
    group: &Group,
    users: &BTreeMap<ValueId, Vec<ValueId>>,
    absorbed: &BTreeSet<ValueId>,
) -> bool {
    users.get(&v).is_some_and(|us| {
        us.iter().any(|&u| {
            if absorbed.contains(&u) {
                read_outside(u, group, users, absorbed)
            } else {
                !group.members.contains(&u)
            }
        })
    })
}

/// The kernel computing group `group` and how to call it; it stores every member used outside
/// the group or returned.
fn build(
    g: &Graph,
    group: &Group,
    users: &BTreeMap<ValueId, Vec<ValueId>>,
    absorbed: &BTreeSet<ValueId>,
    index: usize,
) -> Result<(Fused, FusedCall)> {
    let mut b = Builder {
        g,
        group,
        absorbed,
        inputs: Vec::new(),
        input_of: BTreeMap::new(),
        input_values: Vec::new(),
        body: Vec::new(),
        value_of: BTreeMap::new(),
        scalars: BTreeMap::new(),
        loaded: BTreeMap::new(),
        args: Vec::new(),
        arg_text: Vec::new(),
        seeds: Vec::new(),
        global_index: false,
    };
    for &m in &group.members {
        b.member(m)?;
    }
    let stored: Vec<ValueId> = group
        .members
        .iter()
        .copied()
        .filter(|&m| g.outputs().contains(&m) || read_outside(m, group, users, absorbed))
        .collect();
    let outputs: Vec<Output> = stored
        .iter()
        .map(|&m| Output {
            name: g.name(m).to_string(),
            dtype: g.ty(m).dtype,
            value: b.value_of[&m],
            per_row: group.views[&m] == View::Row,
        })
        .collect();
    let named = stored.last().copied().unwrap_or(group.members[0]);
    let kernel = Fused {
        name: format!("k{index}_{}", clean(g.name(named))),
        inputs: b.inputs,
        outputs,
        rank: group.space.len(),
        row: group.row,
        global_index: b.global_index,
        args: b.arg_text,
        seeds: b.seeds.len(),
        body: b.body,
    };
    let call = FusedCall {
        inputs: b.input_values,
        outputs: stored,
        space: group.space_value,
        args: b.args,
        seeds: b.seeds,
        members: group.members.clone(),
    };
    Ok((kernel, call))
}
