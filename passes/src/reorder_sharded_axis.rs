//! `reorder-sharded-axis`: NCCL gathers and scatters along the outermost dim of a contiguous
//! buffer, so each rank's piece must be one contiguous block. Where an `allgather` or a
//! `reduce_scatter` splits a factor that is not outermost (`[B, S@tp, E]`: every rank holds B
//! blocks), the pass exposes the factor as a dim of its own, permutes it to the front, runs the
//! collective there, and permutes and reshapes back, all local ops:
//!
//! ```text
//! %x.major = permute(%x) {dims = [1, 0, 2]}        : [S@tp, B, E]
//! %y.major = allgather(%x.major) {axis = tp}      : [S, B, E]
//! %y = permute(%y.major) {dims = [1, 0, 2]}       : [B, S, E]
//! ```
//!
//! The value keeps its name, so its users read the same. An `all_to_all` sends each peer a
//! block of the result's split dim and receives the peer's block of the operand's split dim: with
//! the operand's split dim cut as `[n, size / n]` (one block per rank; this needs the axis size
//! `n`, from `--devices`) and put first, followed by the result's split dim, both sides chunk
//! along dim 0. Without the axis size, or with an uneven split, it is left for codegen to pack.

use std::collections::BTreeMap;
use tpc_ir::ops::{CollectiveOp, Permute, Reshape};

use tpc_ir::{Collective, Dim, DimSharding, Factor, Graph, Node, Op, TensorType, ValueId};

use crate::place::{places_of, Names, Place};
use crate::Result;

/// One part of a dim cut into parts: its extent, and whether it carries the split on the axis.
#[derive(Clone)]
struct Part {
    extent: Dim,
    split: bool,
}

fn whole(extent: &Dim) -> Part {
    Part {
        extent: extent.clone(),
        split: false,
    }
}

/// `ty` with the dims in `cuts` cut into their parts (parts of extent 1 that carry nothing are
/// dropped), the parts marked `split` carrying the split over `axis` and the others whole; for
/// each cut dim, the positions of its kept parts in the result.
fn cut(
    ty: &TensorType,
    cuts: &BTreeMap<usize, Vec<Part>>,
    axis: &str,
) -> (TensorType, BTreeMap<usize, Vec<Option<usize>>>) {
    let one = Dim::constant(1);
    let mut shape = Vec::new();
    let mut dims = Vec::new();
    let mut at = BTreeMap::new();
    for (d, extent) in ty.shape.iter().enumerate() {
        let Some(parts) = cuts.get(&d) else {
            shape.push(extent.clone());
            dims.push(ty.sharding.dims[d].clone());
            continue;
        };
        let mut positions = Vec::new();
        for p in parts {
            if p.extent == one && !p.split {
                positions.push(None);
                continue;
            }
            positions.push(Some(shape.len()));
            shape.push(p.extent.clone());
            dims.push(DimSharding {
                factors: if p.split {
                    vec![Factor {
                        extent: p.extent.clone(),
                        axes: vec![axis.to_string()],
                    }]
                } else {
                    vec![]
                },
                closed: false,
            });
        }
        at.insert(d, positions);
    }
    let mut out = ty.clone();
    out.shape = shape;
    out.sharding.dims = dims;
    (out, at)
}

/// Whether dim `d` of `ty` is split over some axis other than `axis`.
fn other_axis_on(ty: &TensorType, d: usize, axis: &str) -> bool {
    ty.sharding.dims[d]
        .factors
        .iter()
        .any(|f| f.axes.iter().any(|a| a != axis))
}

/// The views that make a collective act on its outermost dim: the operand's and the result's
/// types cut into parts, and the permutation (applied to both) that brings the parts NCCL
/// chunks along to the front. `None` when the collective already is contiguous or this pass
/// cannot make it so.
fn plan(
    g: &Graph,
    c: ValueId,
    kind: Collective,
    axis: &str,
    cx: &crate::PassContext,
) -> Option<(TensorType, TensorType, Vec<usize>)> {
    let x = g.operands(c)[0];
    let (x_ty, y_ty) = (g.ty(x), g.ty(c));
    let one = Dim::constant(1);
    let split_of = |ty: &TensorType| match places_of(ty).get(axis).cloned() {
        Some(Place::Split {
            dim,
            outer,
            size,
            inner,
        }) => Some((dim, outer, size, inner)),
        _ => None,
    };
    match kind {
        Collective::AllGather | Collective::ReduceScatter(_) => {
            // The split side: the operand of a gather, the result of a scatter.
            let split_ty = if kind == Collective::AllGather {
                x_ty
            } else {
                y_ty
            };
            let (dim, outer, size, inner) = split_of(split_ty)?;
            let leading_ones = split_ty.shape[..dim].iter().all(|d| *d == one);
            if (leading_ones && outer == one) || other_axis_on(split_ty, dim, axis) {
                return None;
            }
            let parts = |split| {
                vec![
                    whole(&outer),
                    Part {
                        extent: size.clone(),
                        split,
                    },
                    whole(&inner),
                ]
            };
            let gather = kind == Collective::AllGather;
            let (x_cut, at) = cut(x_ty, &BTreeMap::from([(dim, parts(gather))]), axis);
            let (y_cut, _) = cut(y_ty, &BTreeMap::from([(dim, parts(!gather))]), axis);
            let k = at[&dim][1]?;
            let perm = std::iter::once(k)
                .chain((0..x_cut.shape.len()).filter(|&d| d != k))
                .collect();
            Some((x_cut, y_cut, perm))
        }
        Collective::AllToAll => {
            // Each rank sends the j-th block of the result's split dim to rank j and receives
            // into the place of the sender's block of the operand's split dim. With the
            // operand's split dim cut as [n, size / n] (n ranks, one block each) and brought to
            // the front, followed by the result's split dim, both sides chunk along dim 0.
            let n = Dim::constant(*cx.axis_sizes.get(axis)?);
            let (i, oi, si, ii) = split_of(x_ty)?;
            let (j, oj, sj, ij) = split_of(y_ty)?;
            let per_rank = si.exact_div(&n)?;
            if i == j || other_axis_on(x_ty, i, axis) || other_axis_on(y_ty, j, axis) {
                return None;
            }
            let i_parts = |split| {
                vec![
                    whole(&oi),
                    Part {
                        extent: n.clone(),
                        split,
                    },
                    whole(&per_rank),
                    whole(&ii),
                ]
            };
            let j_parts = |split| {
                vec![
                    whole(&oj),
                    Part {
                        extent: sj.clone(),
                        split,
                    },
                    whole(&ij),
                ]
            };
            let (x_cut, at) = cut(
                x_ty,
                &BTreeMap::from([(i, i_parts(true)), (j, j_parts(false))]),
                axis,
            );
            let (y_cut, _) = cut(
                y_ty,
                &BTreeMap::from([(i, i_parts(false)), (j, j_parts(true))]),
                axis,
            );
            let (p, q) = (at[&i][1]?, at[&j][1]?);
            let perm: Vec<usize> = [p, q]
                .into_iter()
                .chain((0..x_cut.shape.len()).filter(|&d| d != p && d != q))
                .collect();
            let identity = perm.iter().enumerate().all(|(a, &b)| a == b);
            if identity && x_cut.shape == x_ty.shape {
                return None;
            }
            Some((x_cut, y_cut, perm))
        }
        _ => None,
    }
}

fn permuted(ty: &TensorType, perm: &[usize]) -> TensorType {
    let mut out = ty.clone();
    out.shape = perm.iter().map(|&p| ty.shape[p].clone()).collect();
    out.sharding.dims = perm.iter().map(|&p| ty.sharding.dims[p].clone()).collect();
    out
}

fn node(name: String, op: Op, ty: TensorType, span: tpc_ir::Span) -> Node {
    Node {
        name,
        op,
        result: 0,
        ty,
        span,
        explicit_type: true,
    }
}

pub fn run(g: &mut Graph, cx: &crate::PassContext) -> Result<bool> {
    let collectives: Vec<ValueId> = g
        .values()
        .iter()
        .copied()
        .filter(|&v| {
            matches!(
                g.op(v),
                Op::Collective(CollectiveOp {
                    kind: Collective::AllGather
                        | Collective::ReduceScatter(_)
                        | Collective::AllToAll,
                    ..
                })
            )
        })
        .collect();
    let mut changed = false;
    let mut names = Names::of(g);
    for c in collectives {
        let Op::Collective(CollectiveOp { kind, axis }) = g.op(c).clone() else {
            continue;
        };
        let Some((x_exp, y_exp, perm)) = plan(g, c, kind, &axis, cx) else {
            continue;
        };
        let x = g.operands(c)[0];
        let (x_ty, y_ty) = (g.ty(x).clone(), g.ty(c).clone());
        let rank = x_exp.shape.len();
        let mut inverse = vec![0; rank];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i;
        }
        let reshaped = x_exp.shape != x_ty.shape;
        let span = g.node(c).span;
        let (x_name, c_name) = (g.name(x).to_string(), g.name(c).to_string());
        // Before the collective: expose the factor, move it to the front.
        let mut src = x;
        if reshaped {
            let name = names.fresh(&format!("{x_name}.split"));
            let op = Op::Reshape(Reshape {
                shape: x_exp.shape.clone(),
            });
            src = g.insert_before(c, node(name, op, x_exp.clone(), span), &[src]);
        }
        let name = names.fresh(&format!("{x_name}.major"));
        let op = Op::Permute(Permute { perm: perm.clone() });
        let major = g.insert_before(c, node(name, op, permuted(&x_exp, &perm), span), &[src]);
        g.set_operand(c, 0, major);
        // The collective itself, on the permuted buffer, under a new name.
        let users = g.users(c);
        let outputs: Vec<usize> = (0..g.outputs().len())
            .filter(|&i| g.outputs()[i] == c)
            .collect();
        let major_name = names.fresh(&format!("{c_name}.major"));
        let cn = g.node_mut(c);
        cn.name = major_name;
        cn.ty = permuted(&y_exp, &perm);
        // After: permute back, then merge the dim again; the last keeps the collective's name.
        let next = g
            .values()
            .iter()
            .position(|&v| v == c)
            .and_then(|i| g.values().get(i + 1).copied());
        let add = |g: &mut Graph, n: Node, operand: ValueId| match next {
            Some(b) => g.insert_before(b, n, &[operand]),
            None => g.add_node(n, &[operand]),
        };
        let back_name = if reshaped {
            names.fresh(&format!("{c_name}.minor"))
        } else {
            c_name.clone()
        };
        let back_ty = if reshaped {
            y_exp.clone()
        } else {
            y_ty.clone()
        };
        let mut out = add(
            g,
            node(
                back_name,
                Op::Permute(Permute { perm: inverse }),
                back_ty,
                span,
            ),
            c,
        );
        if reshaped {
            let op = Op::Reshape(Reshape {
                shape: y_ty.shape.clone(),
            });
            out = add(g, node(c_name, op, y_ty, span), out);
        }
        for u in users {
            for (i, o) in g.operands(u).into_iter().enumerate() {
                if o == c {
                    g.set_operand(u, i, out);
                }
            }
        }
        for i in outputs {
            g.set_output(i, out);
        }
        changed = true;
    }
    Ok(changed)
}

use crate::pass::{OptionKind, OptionSpec, Options, Outcome, Pass, Phase};
use crate::PassContext;

/// `reorder-sharded-axis` as a [`Pass`]: runs on the resharded phase and keeps it.
#[derive(Clone, Copy, Debug)]
pub struct ReorderShardedAxis {
    /// Whether `all_to_all`s are reordered too (they need the axis sizes).
    all_to_all: bool,
}

impl Default for ReorderShardedAxis {
    fn default() -> ReorderShardedAxis {
        ReorderShardedAxis { all_to_all: true }
    }
}

impl Pass for ReorderShardedAxis {
    fn name(&self) -> &'static str {
        "reorder-sharded-axis"
    }

    fn description(&self) -> &'static str {
        "move the split factor of every gather and scatter to the outermost dim, with local permutes around it"
    }

    fn requires(&self) -> Phase {
        Phase::Resharded
    }

    fn produces(&self) -> Option<Phase> {
        Some(Phase::Resharded)
    }

    fn options(&self) -> &'static [OptionSpec] {
        &[OptionSpec {
            name: "all-to-all",
            kind: OptionKind::Bool,
            default: "true",
            help: "also cut and reorder every `all_to_all` (with the mesh's axis sizes known); \
                   `false` leaves them for codegen to pack per peer",
        }]
    }

    fn configure(&mut self, options: &Options) -> Result<()> {
        self.all_to_all = options.bool("all-to-all")?;
        Ok(())
    }

    fn run(&self, g: &mut Graph, cx: &PassContext) -> Result<Outcome> {
        if self.all_to_all {
            return run(g, cx).map(Outcome::changed);
        }
        // The axis sizes serve only the all_to_alls: without them those are left as they are.
        let cx = PassContext {
            axis_sizes: BTreeMap::new(),
            ..cx.clone()
        };
        run(g, &cx).map(Outcome::changed)
    }
}
