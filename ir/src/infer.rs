//! Shape and dtype inference for every op. The builder, the parser and the verifier all call
//! this one function, so a graph that passed the verifier has exactly these types.

use crate::dim::Dim;
use crate::dtype::DType;
use crate::op::{BinaryOp, Op, ReduceKind, UnaryOp};
use crate::types::{shape_string, TensorType};

/// Why an op's operands do not fit it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InferError {
    pub message: String,
    /// The operand the problem is with, when it is one operand.
    pub operand: Option<usize>,
    pub hint: Option<String>,
}

impl InferError {
    fn new(message: impl Into<String>) -> InferError {
        InferError {
            message: message.into(),
            operand: None,
            hint: None,
        }
    }
    fn at(mut self, operand: usize) -> InferError {
        self.operand = Some(operand);
        self
    }
    fn hint(mut self, hint: impl Into<String>) -> InferError {
        self.hint = Some(hint.into());
        self
    }
}

pub type InferResult = Result<(DType, Vec<Dim>), InferError>;

/// Largest extent any single dim, and any tensor's element count, may have where known at
/// compile time: 2^40. Larger values are almost surely typos and could not be allocated.
pub const MAX_ELEMENTS: i64 = 1 << 40;

fn arity(op: &Op, xs: &[&TensorType], min: usize, max: usize) -> Result<(), InferError> {
    if xs.len() < min || xs.len() > max {
        let want = if min == max {
            format!("{min}")
        } else {
            format!("{min} to {max}")
        };
        return Err(InferError::new(format!(
            "`{}` takes {want} operand{}, but {} {} given",
            op.name(),
            if max == 1 { "" } else { "s" },
            xs.len(),
            if xs.len() == 1 { "was" } else { "were" }
        )));
    }
    Ok(())
}

fn need_float(op: &Op, x: &TensorType, i: usize) -> Result<(), InferError> {
    if !x.dtype.is_float() {
        return Err(InferError::new(format!(
            "`{}` needs a floating-point operand, but this one is {}",
            op.name(),
            x.dtype
        ))
        .at(i)
        .hint("cast it first: `cast(…) {dtype = f32}`".to_string()));
    }
    Ok(())
}

fn same_dtype(op: &Op, xs: &[&TensorType], idx: &[usize]) -> Result<DType, InferError> {
    let first = xs[idx[0]].dtype;
    for &i in &idx[1..] {
        if xs[i].dtype != first {
            return Err(InferError::new(format!(
                "`{}` needs operands of one dtype, but got {} and {}",
                op.name(),
                first,
                xs[i].dtype
            ))
            .at(i)
            .hint("tpc never promotes dtypes implicitly; insert a `cast`"));
        }
    }
    Ok(first)
}

fn axis(op: &Op, x: &TensorType, d: usize, i: usize) -> Result<(), InferError> {
    if d >= x.rank() {
        return Err(InferError::new(format!(
            "`{}` names dim {d}, but its operand has rank {} ({})",
            op.name(),
            x.rank(),
            x.shape_string()
        ))
        .at(i));
    }
    Ok(())
}

/// Product of dims; `None` on overflow.
pub fn numel(shape: &[Dim]) -> Option<Dim> {
    let mut acc = Dim::constant(1);
    for d in shape {
        acc = acc.mul(d).ok()?;
    }
    Some(acc)
}

/// The numpy broadcast of several shapes, aligned from the right.
pub fn broadcast_shapes(shapes: &[&[Dim]]) -> Result<Vec<Dim>, String> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let one = Dim::constant(1);
    let mut out = Vec::with_capacity(rank);
    for k in 0..rank {
        let mut d = one.clone();
        for s in shapes {
            if k + s.len() < rank {
                continue;
            }
            let e = &s[k + s.len() - rank];
            if *e == one || *e == d {
                continue;
            }
            if d == one {
                d = e.clone();
            } else {
                let all: Vec<String> = shapes.iter().map(|s| shape_string(s)).collect();
                return Err(format!(
                    "shapes {} do not broadcast: dim {k} is {d} in one and {e} in another",
                    all.join(" and ")
                ));
            }
        }
        out.push(d);
    }
    Ok(out)
}

fn same_shapes(op: &Op, xs: &[&TensorType]) -> Result<(), InferError> {
    for (i, x) in xs.iter().enumerate().skip(1) {
        if x.shape != xs[0].shape {
            return Err(InferError::new(format!(
                "`{}` needs equal shapes in the graph, but got {} and {}",
                op.name(),
                xs[0].shape_string(),
                x.shape_string()
            ))
            .at(i)
            .hint("insert an explicit `broadcast`"));
        }
    }
    Ok(())
}

/// The result dtype and shape of `op` applied to operands of types `xs`.
pub fn infer(op: &Op, xs: &[&TensorType]) -> InferResult {
    match op {
        Op::Param { .. } => Err(InferError::new(
            "parameters have declared types, not inferred ones",
        )),
        Op::Unary(u) => {
            arity(op, xs, 1, 1)?;
            let x = xs[0];
            match u {
                UnaryOp::Not => {
                    if x.dtype != DType::Bool {
                        return Err(InferError::new(format!(
                            "`not` needs a bool operand, but this one is {}",
                            x.dtype
                        ))
                        .at(0));
                    }
                }
                UnaryOp::Neg | UnaryOp::Abs => {
                    if x.dtype == DType::Bool {
                        return Err(InferError::new(format!(
                            "`{}` is not defined on bool",
                            op.name()
                        ))
                        .at(0));
                    }
                }
                _ => need_float(op, x, 0)?,
            }
            Ok((x.dtype, x.shape.clone()))
        }
        Op::Gelu { .. } | Op::RandLike { .. } | Op::Softmax { .. } | Op::Dropout { .. } => {
            arity(op, xs, 1, 1)?;
            need_float(op, xs[0], 0)?;
            if let Op::Softmax { dim } = op {
                axis(op, xs[0], *dim, 0)?;
            }
            if let Op::Dropout { p, .. } = op {
                if !(0.0..=1.0).contains(p) {
                    return Err(InferError::new(format!(
                        "dropout probability must lie in [0, 1], got {p}"
                    )));
                }
            }
            Ok((xs[0].dtype, xs[0].shape.clone()))
        }
        Op::Binary(b) => {
            arity(op, xs, 2, 2)?;
            let dt = same_dtype(op, xs, &[0, 1])?;
            same_shapes(op, xs)?;
            if b.is_logical() {
                if dt != DType::Bool {
                    return Err(InferError::new(format!(
                        "`{}` needs bool operands, but got {dt}",
                        op.name()
                    )));
                }
            } else if dt == DType::Bool && !matches!(b, BinaryOp::Eq | BinaryOp::Ne) {
                return Err(
                    InferError::new(format!("`{}` is not defined on bool", op.name()))
                        .hint("use `and`/`or` for logic, or cast to a number"),
                );
            }
            if *b == BinaryOp::Pow {
                need_float(op, xs[0], 0)?;
            }
            let out = if b.is_comparison() { DType::Bool } else { dt };
            Ok((out, xs[0].shape.clone()))
        }
        Op::Where => {
            arity(op, xs, 3, 3)?;
            if xs[0].dtype != DType::Bool {
                return Err(InferError::new(format!(
                    "`where` needs a bool condition, but got {}",
                    xs[0].dtype
                ))
                .at(0));
            }
            let dt = same_dtype(op, xs, &[1, 2])?;
            same_shapes(op, xs)?;
            Ok((dt, xs[1].shape.clone()))
        }
        Op::Cast { to } => {
            arity(op, xs, 1, 1)?;
            Ok((*to, xs[0].shape.clone()))
        }
        Op::Broadcast { shape, .. } => {
            arity(op, xs, 1, 1)?;
            let x = xs[0];
            let ok = x.rank() <= shape.len()
                && broadcast_shapes(&[&x.shape, shape])
                    .map(|s| s == *shape)
                    .unwrap_or(false);
            if !ok {
                return Err(InferError::new(format!(
                    "cannot broadcast {} to {}",
                    x.shape_string(),
                    shape_string(shape)
                ))
                .at(0)
                .hint("dims are aligned from the right; each must equal the target's or be 1"));
            }
            Ok((x.dtype, shape.clone()))
        }
        Op::Reduce {
            kind,
            dims,
            keepdim,
        } => {
            arity(op, xs, 1, 1)?;
            let x = xs[0];
            if x.dtype == DType::Bool || (*kind == ReduceKind::Mean && !x.dtype.is_float()) {
                return Err(InferError::new(format!(
                    "`{}` is not defined on {}",
                    op.name(),
                    x.dtype
                ))
                .at(0));
            }
            let mut seen = vec![false; x.rank()];
            for &d in dims {
                axis(op, x, d, 0)?;
                if std::mem::replace(&mut seen[d], true) {
                    return Err(InferError::new(format!(
                        "`{}` names dim {d} twice",
                        op.name()
                    )));
                }
            }
            let mut shape = Vec::new();
            for (i, e) in x.shape.iter().enumerate() {
                if !seen[i] {
                    shape.push(e.clone());
                } else if *keepdim {
                    shape.push(Dim::constant(1));
                }
            }
            Ok((x.dtype, shape))
        }
        Op::LayerNorm { normalized, .. } | Op::RmsNorm { normalized, .. } => {
            let max = if matches!(op, Op::LayerNorm { .. }) {
                3
            } else {
                2
            };
            arity(op, xs, 1, max)?;
            let x = xs[0];
            need_float(op, x, 0)?;
            if *normalized == 0 || *normalized > x.rank() {
                return Err(InferError::new(format!(
                    "`{}` normalizes the last {normalized} dims, but its input has rank {}",
                    op.name(),
                    x.rank()
                ))
                .at(0));
            }
            let tail = &x.shape[x.rank() - normalized..];
            for (i, p) in xs.iter().enumerate().skip(1) {
                if p.shape != tail {
                    return Err(InferError::new(format!(
                        "`{}` needs its {} of shape {} (the normalized dims), but got {}",
                        op.name(),
                        if i == 1 { "weight" } else { "bias" },
                        shape_string(tail),
                        p.shape_string()
                    ))
                    .at(i));
                }
            }
            let idx: Vec<usize> = (0..xs.len()).collect();
            same_dtype(op, xs, &idx)?;
            Ok((x.dtype, x.shape.clone()))
        }
        Op::Matmul => {
            arity(op, xs, 2, 2)?;
            let (a, b) = (xs[0], xs[1]);
            let dt = same_dtype(op, xs, &[0, 1])?;
            if a.rank() < 2 || b.rank() < 2 {
                return Err(InferError::new(format!(
                    "`matmul` needs operands of rank 2 or more, but got {} and {}",
                    a.shape_string(),
                    b.shape_string()
                ))
                .hint("reshape a vector to a [1, n] or [n, 1] matrix"));
            }
            let (ra, rb) = (a.rank(), b.rank());
            if a.shape[ra - 1] != b.shape[rb - 2] {
                return Err(InferError::new(format!(
                    "`matmul` contracts {} with {}: inner dims {} and {} differ",
                    a.shape_string(),
                    b.shape_string(),
                    a.shape[ra - 1],
                    b.shape[rb - 2]
                ))
                .at(1));
            }
            let batch = if rb == 2 {
                a.shape[..ra - 2].to_vec()
            } else if ra == 2 {
                b.shape[..rb - 2].to_vec()
            } else if a.shape[..ra - 2] == b.shape[..rb - 2] {
                a.shape[..ra - 2].to_vec()
            } else {
                return Err(InferError::new(format!(
                    "`matmul` batch dims differ: {} and {}",
                    shape_string(&a.shape[..ra - 2]),
                    shape_string(&b.shape[..rb - 2])
                ))
                .hint("broadcast the batch dims explicitly"));
            };
            let mut shape = batch;
            shape.push(a.shape[ra - 2].clone());
            shape.push(b.shape[rb - 1].clone());
            Ok((dt, shape))
        }
        Op::Linear => {
            arity(op, xs, 2, 3)?;
            let (x, w) = (xs[0], xs[1]);
            need_float(op, x, 0)?;
            let idx: Vec<usize> = (0..xs.len()).collect();
            let dt = same_dtype(op, xs, &idx)?;
            if x.rank() < 1 || w.rank() != 2 {
                return Err(InferError::new(format!(
                    "`linear` needs an input of rank 1 or more and a weight [out, in], but got {} and {}",
                    x.shape_string(),
                    w.shape_string()
                ))
                .at(1));
            }
            if x.shape[x.rank() - 1] != w.shape[1] {
                return Err(InferError::new(format!(
                    "`linear` input's last dim is {} but the weight {} takes {} (torch layout: [out, in])",
                    x.shape[x.rank() - 1],
                    w.shape_string(),
                    w.shape[1]
                ))
                .at(1)
                .hint("if the weight is stored [in, out], use `matmul`, or `permute` it"));
            }
            if let Some(b) = xs.get(2) {
                if b.shape != [w.shape[0].clone()] {
                    return Err(InferError::new(format!(
                        "`linear` bias must be [{}], but got {}",
                        w.shape[0],
                        b.shape_string()
                    ))
                    .at(2));
                }
            }
            let mut shape = x.shape[..x.rank() - 1].to_vec();
            shape.push(w.shape[0].clone());
            Ok((dt, shape))
        }
        Op::Reshape { shape } => {
            arity(op, xs, 1, 1)?;
            let x = xs[0];
            let resolved = resolve_reshape(&x.shape, shape)?;
            Ok((x.dtype, resolved))
        }
        Op::Permute { perm } => {
            arity(op, xs, 1, 1)?;
            let x = xs[0];
            let mut sorted = perm.clone();
            sorted.sort_unstable();
            if sorted != (0..x.rank()).collect::<Vec<_>>() {
                return Err(InferError::new(format!(
                    "`permute` dims {perm:?} are not a permutation of the {} dims of {}",
                    x.rank(),
                    x.shape_string()
                ))
                .at(0));
            }
            Ok((x.dtype, perm.iter().map(|&p| x.shape[p].clone()).collect()))
        }
        Op::Slice {
            dim,
            start,
            end,
            step,
        } => {
            arity(op, xs, 1, 1)?;
            let x = xs[0];
            axis(op, x, *dim, 0)?;
            if *step < 1 {
                return Err(InferError::new(format!(
                    "`slice` step must be 1 or more, got {step}"
                )));
            }
            let extent = &x.shape[*dim];
            if let (Some(s), Some(e)) = (start.as_const(), end.as_const()) {
                if s < 0 || e < s {
                    return Err(InferError::new(format!(
                        "`slice` needs 0 <= start <= end, got start {s}, end {e}"
                    )));
                }
            }
            if let (Some(e), Some(n)) = (end.as_const(), extent.as_const()) {
                if e > n {
                    return Err(InferError::new(format!(
                        "`slice` end {e} is past the dim's extent {n}"
                    ))
                    .at(0));
                }
            }
            let len = end.sub(start).map_err(|e| InferError::new(e.to_string()))?;
            let out = match len.as_const() {
                Some(n) => Dim::constant((n + step - 1) / step),
                None if *step == 1 => len,
                None => len
                    .div(&Dim::constant(*step))
                    .map_err(|e| InferError::new(e.to_string()))?,
            };
            let mut shape = x.shape.clone();
            shape[*dim] = out;
            Ok((x.dtype, shape))
        }
        Op::Concat { dim } => {
            arity(op, xs, 1, usize::MAX)?;
            let idx: Vec<usize> = (0..xs.len()).collect();
            let dt = same_dtype(op, xs, &idx)?;
            axis(op, xs[0], *dim, 0)?;
            let mut total = Dim::constant(0);
            for (i, x) in xs.iter().enumerate() {
                let mut same = x.rank() == xs[0].rank();
                for k in 0..x.rank().min(xs[0].rank()) {
                    same &= k == *dim || x.shape[k] == xs[0].shape[k];
                }
                if !same {
                    return Err(InferError::new(format!(
                        "`concat` along dim {dim} needs shapes equal in every other dim, but got {} and {}",
                        xs[0].shape_string(),
                        x.shape_string()
                    ))
                    .at(i));
                }
                total = total
                    .add(&x.shape[*dim])
                    .map_err(|e| InferError::new(e.to_string()))?;
            }
            let mut shape = xs[0].shape.clone();
            shape[*dim] = total;
            Ok((dt, shape))
        }
        Op::Embedding => {
            arity(op, xs, 2, 2)?;
            let (ids, w) = (xs[0], xs[1]);
            if ids.dtype != DType::I64 {
                return Err(InferError::new(format!(
                    "`embedding` indices must be i64, but got {}",
                    ids.dtype
                ))
                .at(0));
            }
            if w.rank() != 2 {
                return Err(InferError::new(format!(
                    "`embedding` weight must be [num, dim], but got {}",
                    w.shape_string()
                ))
                .at(1));
            }
            let mut shape = ids.shape.clone();
            shape.push(w.shape[1].clone());
            Ok((w.dtype, shape))
        }
        Op::Sdpa { .. } => {
            arity(op, xs, 3, 3)?;
            let dt = same_dtype(op, xs, &[0, 1, 2])?;
            need_float(op, xs[0], 0)?;
            let (q, k, v) = (xs[0], xs[1], xs[2]);
            let r = q.rank();
            let bad = r < 2
                || k.rank() != r
                || v.rank() != r
                || q.shape[..r - 2] != k.shape[..r - 2]
                || q.shape[..r - 2] != v.shape[..r - 2]
                || q.shape[r - 1] != k.shape[r - 1]
                || k.shape[r - 2] != v.shape[r - 2];
            if bad {
                return Err(InferError::new(format!(
                    "`sdpa` needs q [..., L, E], k [..., S, E], v [..., S, Ev] with equal batch dims, but got {}, {}, {}",
                    q.shape_string(),
                    k.shape_string(),
                    v.shape_string()
                )));
            }
            let mut shape = q.shape.clone();
            shape[r - 1] = v.shape[r - 1].clone();
            Ok((dt, shape))
        }
        Op::Full { shape, dtype, .. } => {
            arity(op, xs, 0, 0)?;
            Ok((*dtype, shape.clone()))
        }
        Op::Collective { .. } => {
            arity(op, xs, 1, 1)?;
            Ok((xs[0].dtype, xs[0].shape.clone()))
        }
        Op::CrossEntropy { .. } => {
            arity(op, xs, 2, 2)?;
            let (logits, target) = (xs[0], xs[1]);
            need_float(op, logits, 0)?;
            if logits.rank() == 0 {
                return Err(
                    InferError::new("`cross_entropy` needs logits of rank 1 or more").at(0),
                );
            }
            let class_dim = if logits.rank() == 1 { 0 } else { 1 };
            let mut want = logits.shape.clone();
            want.remove(class_dim);
            if target.dtype != DType::I64 || target.shape != want {
                return Err(InferError::new(format!(
                    "`cross_entropy` needs i64 targets of shape {} (the logits {} without the class dim {class_dim}), but got {}{}",
                    shape_string(&want),
                    logits.shape_string(),
                    target.dtype,
                    target.shape_string()
                ))
                .at(1)
                .hint("classes are on dim 1, as in torch; for [B, S, V] logits reshape to [B*S, V] first"));
            }
            Ok((logits.dtype, Vec::new()))
        }
    }
}

/// The reshape's target with one `-1` resolved, checked to hold as many elements as `from`.
pub fn resolve_reshape(from: &[Dim], to: &[Dim]) -> Result<Vec<Dim>, InferError> {
    let minus_one = Dim::constant(-1);
    let holes = to.iter().filter(|d| **d == minus_one).count();
    if holes > 1 {
        return Err(InferError::new("`reshape` may infer at most one dim (-1)"));
    }
    let total = numel(from).ok_or_else(|| InferError::new("element count overflows"))?;
    let mut out = to.to_vec();
    if holes == 1 {
        let known: Vec<Dim> = to.iter().filter(|d| **d != minus_one).cloned().collect();
        let rest = numel(&known).ok_or_else(|| InferError::new("element count overflows"))?;
        let inferred = total
            .div(&rest)
            .map_err(|e| InferError::new(format!("`reshape` cannot infer -1: {e}")))?;
        for d in out.iter_mut() {
            if *d == minus_one {
                *d = inferred.clone();
            }
        }
    }
    let got = numel(&out).ok_or_else(|| InferError::new("element count overflows"))?;
    if got != total {
        return Err(InferError::new(format!(
            "`reshape` from {} ({total} elements) to {} ({got} elements)",
            shape_string(from),
            shape_string(&out)
        ))
        .at(0));
    }
    Ok(out)
}
