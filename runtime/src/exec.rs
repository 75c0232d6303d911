//! The interpreter: runs a verified graph op by op in program order, binding symbols, checking
//! memory before every allocation, and freeing each value after its last use.

use std::collections::BTreeMap;

use tpc_ir::ops::{
    Cast, Concat, CrossEntropy, Dropout, Full, Gelu, InvCount, Kept, Permute, RandLike, Reduce,
    Slice, Softmax,
};
use tpc_ir::{DType, Graph, Op, ReduceKind, ValueId, ValueMap};

use crate::ops::reduce::NormResult;
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
    let mut env: ValueMap<Tensor> = ValueMap::new();
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
            eval(g, v, &args, want, bindings, &Globals::default())?
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

/// What a rank knows beyond its own pieces, filled in as the op's
/// [`tpc_ir::ops::GlobalContext`] asks; the reference executor, which holds whole values, passes
/// the default (local indices are global there).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Globals<'a> {
    /// The global flat index of each element of the result piece.
    pub offsets: Option<&'a [usize]>,
    /// The global index of each of the piece's entries along the dim the op asks for, and that
    /// dim's global extent (sdpa's query positions, the table rows an embedding holds).
    pub positions: Option<(&'a [usize], usize)>,
    /// The global count of the reduced elements (a mean's divisor).
    pub reduced_count: Option<usize>,
}

pub(crate) fn eval(
    g: &Graph,
    v: ValueId,
    args: &[&Tensor],
    out_shape: &[usize],
    bindings: &Bindings,
    globals: &Globals,
) -> Result<Tensor> {
    let offset = |i: usize| globals.offsets.map_or(i, |o| o[i]) as u64;
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
        Op::Gelu(Gelu { approximate }) => pointwise::gelu_op(args[0], *approximate)?,
        Op::Binary(b) => pointwise::binary(*b, args[0], args[1])?,
        Op::Where(_) => pointwise::where_op(args[0], args[1], args[2])?,
        Op::Cast(Cast { to }) => pointwise::cast(args[0], *to, &node.name)?,
        Op::Broadcast { .. } => shape::broadcast(args[0], out_shape),
        Op::Reduce(Reduce { kind, dims, .. }) => match (kind, globals.reduced_count) {
            (ReduceKind::Mean, Some(count)) => reduce::mean_of(args[0], dims, out_shape, count)?,
            _ => reduce::reduce(args[0], *kind, dims, out_shape)?,
        },
        Op::Softmax(Softmax { dim }) => reduce::softmax(args[0], *dim)?,
        Op::LayerNorm(n) => {
            let result = [NormResult::Y, NormResult::Mean, NormResult::Rstd][node.result.min(2)];
            let (w, b) = (args.get(1).copied(), args.get(2).copied());
            reduce::layer_norm(args[0], w, b, n.eps, n.normalized, result)?
        }
        Op::RmsNorm(n) => {
            let result = [NormResult::Y, NormResult::Rstd][node.result.min(1)];
            let eps = n.eps_for(args[0].dtype());
            reduce::rms_norm(args[0], args.get(1).copied(), eps, n.normalized, result)?
        }
        Op::Matmul(_) => linalg::matmul(args[0], args[1], out_shape)?,
        Op::Linear(_) => linalg::linear(args[0], args[1], args.get(2).copied(), out_shape)?,
        Op::Reshape { .. } => shape::reshape(args[0], out_shape),
        Op::Permute(Permute { perm }) => shape::permute(args[0], perm),
        Op::Slice(sl) => slice(args[0], sl, &node.name, out_shape, &dim_value)?,
        // Result `k` of a split is the slice it covers.
        Op::Split(sp) => slice(
            args[0],
            &sp.piece(node.result),
            &node.name,
            out_shape,
            &dim_value,
        )?,
        Op::Concat(Concat { dim }) => shape::concat(args, *dim)?,
        Op::Embedding(_) => {
            let w_name = g
                .operands(v)
                .get(1)
                .map(|&w| g.name(w).to_string())
                .unwrap_or_default();
            lookup::embedding(args[0], args[1], &w_name, out_shape, globals.positions)?
        }
        Op::Sdpa(sdpa) => linalg::sdpa(
            args[0],
            args[1],
            args[2],
            sdpa,
            node.result,
            globals.positions.map(|(p, _)| p),
            out_shape,
        )?,
        Op::RandLike(RandLike { seed }) => random::rand_like(args[0], *seed, offset)?,
        Op::Dropout(Dropout { p, seed }) => random::dropout(args[0], *p, *seed, offset)?,
        Op::Full(Full { value, dtype, .. }) => shape::full(out_shape, *value, *dtype)?,
        // As the kernels' argument: 1/n in f64, rounded to f32.
        Op::InvCount(InvCount { count }) => {
            shape::full(out_shape, 1.0 / dim_value(count)? as f64, DType::F32)?
        }
        // Collectives move data between ranks; on the global value they are the identity.
        Op::Collective { .. } => args[0].clone(),
        Op::Pick(pick) => lookup::pick(args[0], args[1], *pick, globals.positions, out_shape)?,
        Op::Kept(Kept { ignore_index }) => lookup::kept(args[0], *ignore_index)?,
        Op::CrossEntropy(CrossEntropy { ignore_index }) => {
            lookup::cross_entropy(args[0], args[1], *ignore_index)?
        }
    })
}

/// A slice of `x` (the `slice` op, or one result of a `split`).
fn slice(
    x: &Tensor,
    sl: &Slice,
    name: &str,
    out_shape: &[usize],
    dim_value: &dyn Fn(&tpc_ir::Dim) -> Result<usize>,
) -> Result<Tensor> {
    let dim = sl.dim;
    let (s, e, n) = (dim_value(&sl.start)?, dim_value(&sl.end)?, x.shape()[dim]);
    if s > e || e > n {
        return Err(Error::Value(format!(
            "%{name}: slice {s}..{e} of dim {dim} does not fit its extent {n}"
        )));
    }
    Ok(shape::slice(x, dim, s, sl.step as usize, out_shape[dim]))
}
