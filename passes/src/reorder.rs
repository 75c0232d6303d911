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
//! The value keeps its name, so its users read the same. `all_to_all` is left as it is: it
//! sends to each peer a block of one dim and receives blocks of another, which no single
//! permutation makes contiguous on both sides; its per-peer packing belongs to codegen.

use tpc_ir::{Collective, Dim, DimSharding, Factor, Graph, Node, Op, TensorType, ValueId};

use crate::place::{places_of, Names, Place};
use crate::Result;

/// `ty` with dim `dim` cut into `[outer, size, inner]` (ones dropped), the `size` part carrying
/// the split over `axis` when `ty` has it; and the index of the `size` dim.
fn expand(
    ty: &TensorType,
    dim: usize,
    outer: &Dim,
    size: &Dim,
    inner: &Dim,
) -> (TensorType, usize) {
    let one = Dim::constant(1);
    let mut shape = ty.shape[..dim].to_vec();
    let mut dims = ty.sharding.dims[..dim].to_vec();
    let old = &ty.sharding.dims[dim];
    let split_axes: Vec<String> = old
        .factors
        .iter()
        .find(|f| !f.axes.is_empty())
        .map(|f| f.axes.clone())
        .unwrap_or_default();
    if *outer != one {
        shape.push(outer.clone());
        dims.push(DimSharding::default());
    }
    let k = shape.len();
    shape.push(size.clone());
    dims.push(DimSharding {
        factors: if split_axes.is_empty() {
            vec![]
        } else {
            vec![Factor {
                extent: size.clone(),
                axes: split_axes,
            }]
        },
        closed: false,
    });
    if *inner != one {
        shape.push(inner.clone());
        dims.push(DimSharding::default());
    }
    shape.extend(ty.shape[dim + 1..].iter().cloned());
    dims.extend(ty.sharding.dims[dim + 1..].iter().cloned());
    let mut out = ty.clone();
    out.shape = shape;
    out.sharding.dims = dims;
    (out, k)
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
        ty,
        span,
        explicit_type: true,
    }
}

pub fn run(g: &mut Graph, _cx: &crate::PassContext) -> Result<bool> {
    let collectives: Vec<ValueId> = g
        .values()
        .iter()
        .copied()
        .filter(|&v| {
            matches!(
                g.op(v),
                Op::Collective {
                    kind: Collective::AllGather | Collective::ReduceScatter(_),
                    ..
                }
            )
        })
        .collect();
    let mut changed = false;
    let mut names = Names::of(g);
    for c in collectives {
        let Op::Collective { kind, axis } = g.op(c).clone() else {
            continue;
        };
        let x = g.operands(c)[0];
        // The split side: the operand of a gather, the result of a scatter.
        let split_ty = match kind {
            Collective::AllGather => g.ty(x).clone(),
            _ => g.ty(c).clone(),
        };
        let Some(Place::Split {
            dim,
            outer,
            size,
            inner,
        }) = places_of(&split_ty).get(&axis).cloned()
        else {
            continue;
        };
        let one = Dim::constant(1);
        let leading_ones = split_ty.shape[..dim].iter().all(|d| *d == one);
        if leading_ones && outer == one {
            continue;
        }
        // Another axis splitting the same dim would need both kept in order: leave it be.
        if split_ty.sharding.dims[dim]
            .factors
            .iter()
            .any(|f| !f.axes.is_empty() && f.axes != [axis.clone()])
        {
            continue;
        }
        let (x_ty, y_ty) = (g.ty(x).clone(), g.ty(c).clone());
        let (x_exp, k) = expand(&x_ty, dim, &outer, &size, &inner);
        let (y_exp, _) = expand(&y_ty, dim, &outer, &size, &inner);
        let rank = x_exp.shape.len();
        let perm: Vec<usize> = std::iter::once(k)
            .chain((0..rank).filter(|&d| d != k))
            .collect();
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
            let op = Op::Reshape {
                shape: x_exp.shape.clone(),
            };
            src = g.insert_before(c, node(name, op, x_exp.clone(), span), &[src]);
        }
        let name = names.fresh(&format!("{x_name}.major"));
        let op = Op::Permute { perm: perm.clone() };
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
            node(back_name, Op::Permute { perm: inverse }, back_ty, span),
            c,
        );
        if reshaped {
            let op = Op::Reshape {
                shape: y_ty.shape.clone(),
            };
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
