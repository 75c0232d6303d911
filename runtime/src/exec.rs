//! The interpreter: runs a verified graph op by op in program order, binding symbols, checking
//! memory before every allocation, and freeing each value after its last use.

use std::collections::BTreeMap;

use tpc_ir::{Graph, Op, ValueId};

use crate::ops::{linalg, lookup, pointwise, random, reduce, shape};
use crate::tensor::Tensor;
use crate::{Bindings, Error, Limits, Result};

/// Every value's concrete shape under `bindings`, checked against the memory limit.
fn concrete_shapes(
    g: &Graph,
    bindings: &Bindings,
    limits: &Limits,
) -> Result<BTreeMap<ValueId, Vec<usize>>> {
    let mut out = BTreeMap::new();
    for &v in g.values() {
        let ty = g.ty(v);
        let mut dims = Vec::with_capacity(ty.rank());
        let mut elems: u64 = 1;
        for d in &ty.shape {
            let n = d.eval(bindings).map_err(|e| Error::Dim {
                value: g.name(v).to_string(),
                source: e,
            })?;
            elems = elems
                .checked_mul(n as u64)
                .ok_or_else(|| too_large(g, v, u64::MAX, limits))?;
            dims.push(n as usize);
        }
        let bytes = elems.saturating_mul(ty.dtype.size_bytes());
        if bytes > limits.max_bytes || elems > isize::MAX as u64 / 8 {
            return Err(too_large(g, v, bytes, limits));
        }
        out.insert(v, dims);
    }
    Ok(out)
}

fn too_large(g: &Graph, v: ValueId, bytes: u64, limits: &Limits) -> Error {
    Error::TooLarge {
        value: g.name(v).to_string(),
        bytes,
        limit: limits.max_bytes,
    }
}

pub fn run(
    g: &Graph,
    inputs: &BTreeMap<String, Tensor>,
    bindings: &Bindings,
    limits: &Limits,
) -> Result<Vec<Tensor>> {
    let shapes = concrete_shapes(g, bindings, limits)?;
    let last_use = g.last_uses();
    let mut env: BTreeMap<ValueId, Tensor> = BTreeMap::new();
    let mut live: u64 = 0;
    for (pos, &v) in g.values().iter().enumerate() {
        let ty = g.ty(v);
        let want = &shapes[&v];
        let bytes = want.iter().product::<usize>() as u64 * ty.dtype.size_bytes();
        if live.saturating_add(bytes) > limits.max_bytes {
            return Err(Error::TooLarge {
                value: g.name(v).to_string(),
                bytes: live.saturating_add(bytes),
                limit: limits.max_bytes,
            });
        }
        let t = if let Op::Param { .. } = g.op(v) {
            let name = g.name(v);
            let t = inputs
                .get(name)
                .ok_or_else(|| Error::MissingInput(name.to_string()))?;
            if t.dtype() != ty.dtype || t.shape() != want.as_slice() {
                return Err(Error::InputMismatch {
                    name: name.to_string(),
                    expected: format!("{}{:?}", ty.dtype, want),
                    got: format!("{}{:?}", t.dtype(), t.shape()),
                });
            }
            t.clone()
        } else {
            let operands = g.operands(v);
            let args: Vec<&Tensor> = operands.iter().map(|o| &env[o]).collect();
            eval(g, v, &args, want, bindings)?
        };
        debug_assert_eq!(
            t.shape(),
            want.as_slice(),
            "%{} has the wrong shape",
            g.name(v)
        );
        live += t.size_bytes();
        env.insert(v, t);
        for o in g.operands(v) {
            if last_use.get(&o) == Some(&pos) && !g.outputs().contains(&o) {
                if let Some(dead) = env.remove(&o) {
                    live -= dead.size_bytes();
                }
            }
        }
    }
    g.outputs()
        .iter()
        .map(|o| {
            env.get(o)
                .cloned()
                .ok_or_else(|| Error::Internal("an output was freed".into()))
        })
        .collect()
}

pub(crate) fn eval(
    g: &Graph,
    v: ValueId,
    args: &[&Tensor],
    out_shape: &[usize],
    bindings: &Bindings,
) -> Result<Tensor> {
    let node = g.node(v);
    let dim_value = |d: &tpc_ir::Dim| -> Result<usize> {
        d.eval(bindings)
            .map(|n| n as usize)
            .map_err(|e| Error::Dim {
                value: node.name.clone(),
                source: e,
            })
    };
    Ok(match &node.op {
        Op::Param { .. } => return Err(Error::Internal("parameters are inputs".into())),
        Op::Unary(u) => pointwise::unary(*u, args[0])?,
        Op::Gelu { approximate } => pointwise::gelu_op(args[0], *approximate)?,
        Op::Binary(b) => pointwise::binary(*b, args[0], args[1])?,
        Op::Where => pointwise::where_op(args[0], args[1], args[2])?,
        Op::Cast { to } => pointwise::cast(args[0], *to, &node.name)?,
        Op::Broadcast { .. } => shape::broadcast(args[0], out_shape),
        Op::Reduce { kind, dims, .. } => reduce::reduce(args[0], *kind, dims, out_shape)?,
        Op::Softmax { dim } => reduce::softmax(args[0], *dim)?,
        Op::LayerNorm { eps, normalized } => {
            let row = args[0].shape()[args[0].shape().len() - normalized..]
                .iter()
                .product();
            reduce::layer_norm(
                args[0],
                args.get(1).copied(),
                args.get(2).copied(),
                *eps,
                row,
            )?
        }
        Op::RmsNorm { eps, normalized } => {
            let row = args[0].shape()[args[0].shape().len() - normalized..]
                .iter()
                .product();
            reduce::rms_norm(args[0], args.get(1).copied(), *eps, row)?
        }
        Op::Matmul => linalg::matmul(args[0], args[1], out_shape)?,
        Op::Linear => linalg::linear(args[0], args[1], args.get(2).copied(), out_shape)?,
        Op::Reshape { .. } => shape::reshape(args[0], out_shape),
        Op::Permute { perm } => shape::permute(args[0], perm),
        Op::Slice {
            dim,
            start,
            end,
            step,
        } => {
            let (s, e, n) = (dim_value(start)?, dim_value(end)?, args[0].shape()[*dim]);
            if s > e || e > n {
                return Err(Error::Value(format!(
                    "%{}: slice {s}..{e} of dim {dim} does not fit its extent {n}",
                    node.name
                )));
            }
            shape::slice(args[0], *dim, s, *step as usize, out_shape[*dim])
        }
        Op::Concat { dim } => shape::concat(args, *dim)?,
        Op::Embedding => {
            let w_name = g
                .operands(v)
                .get(1)
                .map(|&w| g.name(w).to_string())
                .unwrap_or_default();
            lookup::embedding(args[0], args[1], &w_name, out_shape)?
        }
        Op::Sdpa { causal, scale } => {
            linalg::sdpa(args[0], args[1], args[2], *causal, *scale, None, out_shape)?
        }
        Op::RandLike { seed } => random::rand_like(args[0], *seed, |i| i as u64)?,
        Op::Dropout { p, seed } => random::dropout(args[0], *p, *seed, |i| i as u64)?,
        Op::Full { value, dtype, .. } => shape::full(out_shape, *value, *dtype)?,
        // Collectives move data between ranks; on the global value they are the identity.
        Op::Collective { .. } => args[0].clone(),
        Op::CrossEntropy { ignore_index } => {
            lookup::cross_entropy(args[0], args[1], *ignore_index)?
        }
    })
}
