//! Cutting global tensors into per-rank pieces and putting pieces back together, with the index
//! maps of `tpc_ir::layout`: how inputs and weights reach the ranks, and how the ranks' results
//! are compared with the reference.

use tpc_ir::layout::{piece_indices, MeshCoords};
use tpc_ir::{ReduceOp, TensorType};

use crate::tensor::{round_to, Data, Tensor};
use crate::{Bindings, Error, Result};

/// Where a rank's piece of a global tensor lies in it.
pub(crate) struct Piece {
    /// The piece's shape.
    pub(crate) shape: Vec<usize>,
    /// Whether the rank holds the values: false where it holds zeros instead (the summand of a
    /// sum-partial tensor on a rank other than the first of its axis).
    pub(crate) keep: bool,
    /// Runs of consecutive global elements, `(offset, length)`, which together are the piece in
    /// its row-major order (adjacent runs merged).
    pub(crate) runs: Vec<(usize, usize)>,
}

/// This rank's piece of a global tensor of shape `global` (which must be the type's).
pub(crate) fn piece(
    global: &[usize],
    ty: &TensorType,
    bindings: &Bindings,
    coords: &MeshCoords,
) -> Result<Piece> {
    let (shape, idx) =
        piece_indices(ty, bindings, coords).map_err(|e| Error::Shape(e.to_string()))?;
    if shape != global {
        return Err(Error::Shape(format!(
            "a global tensor is {global:?} but its type says {shape:?}"
        )));
    }
    let local_shape: Vec<usize> = idx.iter().map(Vec::len).collect();
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut push = |s: usize, l: usize| {
        if l == 0 {
            return;
        }
        match runs.last_mut() {
            Some((s0, l0)) if *s0 + *l0 == s => *l0 += l,
            _ => runs.push((s, l)),
        }
    };
    match idx.split_last() {
        None => push(0, shape.iter().product()),
        Some((last, outer)) => {
            let w = shape[shape.len() - 1];
            let outer_offs = tpc_ir::layout::flat_offsets(&shape[..shape.len() - 1], outer);
            let contiguous = last.windows(2).all(|p| p[1] == p[0] + 1);
            for o in outer_offs {
                let base = o * w;
                if contiguous {
                    if let Some(&s) = last.first() {
                        push(base + s, last.len());
                    }
                } else {
                    last.iter().for_each(|&i| push(base + i, 1));
                }
            }
        }
    }
    Ok(Piece {
        shape: local_shape,
        keep: holds_summand(ty, coords),
        runs,
    })
}

/// Whether this rank holds the summand of a partial tensor (the value itself on the first rank of
/// every sum-partial axis, zeros elsewhere; max/min partials hold the value everywhere).
fn holds_summand(ty: &TensorType, coords: &MeshCoords) -> bool {
    ty.sharding
        .partial
        .iter()
        .all(|p| p.op != ReduceOp::Sum || coords.get(&p.axis).is_none_or(|&(i, _)| i == 0))
}

/// This rank's piece of `global`, laid out as `ty` says.
pub fn cut(
    global: &Tensor,
    ty: &TensorType,
    bindings: &Bindings,
    coords: &MeshCoords,
) -> Result<Tensor> {
    let p = piece(global.shape(), ty, bindings, coords)?;
    fn go<T: Copy>(v: &[T], p: &Piece, zero: Option<T>) -> Vec<T> {
        let n: usize = p.shape.iter().product();
        if let Some(z) = zero {
            return vec![z; n];
        }
        let mut out = Vec::with_capacity(n);
        for &(s, l) in &p.runs {
            out.extend_from_slice(&v[s..s + l]);
        }
        out
    }
    let data = match global.data() {
        Data::Float(v) => Data::Float(go(v, &p, (!p.keep).then_some(0.0))),
        Data::I64(v) => Data::I64(go(v, &p, (!p.keep).then_some(0))),
        Data::Bool(v) => Data::Bool(go(v, &p, None)),
    };
    Ok(Tensor {
        dtype: global.dtype(),
        shape: p.shape,
        data,
    })
}

/// The global tensor from every rank's piece: split pieces are placed, replicated copies must
/// agree bit for bit, partial pieces are reduced (in rank order, rounding once to the dtype).
pub fn assemble(
    global_shape: &[usize],
    ty: &TensorType,
    bindings: &Bindings,
    pieces: &[(MeshCoords, Tensor)],
) -> Result<Tensor> {
    let refs: Vec<(MeshCoords, &Tensor)> = pieces.iter().map(|(c, t)| (c.clone(), t)).collect();
    assemble_refs(global_shape, ty, bindings, &refs)
}

/// [`assemble`] of borrowed pieces.
pub(crate) fn assemble_refs(
    global_shape: &[usize],
    ty: &TensorType,
    bindings: &Bindings,
    pieces: &[(MeshCoords, &Tensor)],
) -> Result<Tensor> {
    let n: usize = global_shape.iter().product();
    let partial_op = ty.sharding.partial.first().map(|p| p.op);
    if let Some(t) = replicated_copies(global_shape, ty, pieces)? {
        return Ok(t);
    }
    // Each element's value so far (in f64) and whether a piece has given it one.
    let mut acc: Vec<f64> = vec![0.0; n];
    let mut seen: Vec<bool> = vec![false; n];
    for (coords, piece) in pieces {
        let p = self::piece(global_shape, ty, bindings, coords)?;
        if p.shape != piece.shape() {
            return Err(Error::Shape(format!(
                "a rank's piece is {:?} but its layout says {:?}",
                piece.shape(),
                p.shape
            )));
        }
        match piece.data() {
            Data::Float(v) => place(&mut acc, &mut seen, &p.runs, v, partial_op, |&x| x as f64)?,
            Data::I64(v) => place(&mut acc, &mut seen, &p.runs, v, partial_op, |&x| {
                x as f32 as f64
            })?,
            Data::Bool(v) => place(&mut acc, &mut seen, &p.runs, v, partial_op, |&x| {
                x as u8 as f32 as f64
            })?,
        }
    }
    if let Some(o) = seen.iter().position(|&s| !s) {
        return Err(Error::Value(format!("no rank holds element {o}")));
    }
    let dt = ty.dtype;
    match dt {
        tpc_ir::DType::F32 => Ok(Tensor::float(
            dt,
            global_shape.to_vec(),
            acc.into_iter().map(|v| v as f32).collect(),
        )),
        d if d.is_float() => Ok(Tensor::float(
            dt,
            global_shape.to_vec(),
            acc.into_iter().map(|v| round_to(dt, v as f32)).collect(),
        )),
        tpc_ir::DType::I64 => Tensor::from_i64(
            global_shape.to_vec(),
            acc.into_iter().map(|v| v as i64).collect(),
        ),
        _ => Tensor::from_bool(
            global_shape.to_vec(),
            acc.into_iter().map(|v| v != 0.0).collect(),
        ),
    }
}

/// A replicated float tensor's copies, where every rank holds all of it: the first copy,
/// after checking that every other agrees with it bit for bit (any NaN with any NaN), without
/// the element-by-element placing of the general case. `None` for any other layout.
fn replicated_copies(
    global_shape: &[usize],
    ty: &TensorType,
    pieces: &[(MeshCoords, &Tensor)],
) -> Result<Option<Tensor>> {
    let n: usize = global_shape.iter().product();
    let whole = ty.sharding.partial.is_empty()
        && ty
            .sharding
            .dims
            .iter()
            .all(|d| d.factors.iter().all(|f| f.axes.is_empty()));
    let Some((_, first)) = pieces.first() else {
        return Ok(None);
    };
    let Data::Float(v0) = first.data() else {
        return Ok(None);
    };
    if !whole || first.shape() != global_shape || v0.len() != n {
        return Ok(None);
    }
    for (_, piece) in &pieces[1..] {
        let Data::Float(v) = piece.data() else {
            return Ok(None);
        };
        if piece.shape() != global_shape || v.len() != n {
            return Ok(None);
        }
        // Equal bytes first (a memory comparison); element by element only where they differ.
        if crate::bytes::f32_bytes(v0).is_some_and(|a| crate::bytes::f32_bytes(v) == Some(a)) {
            continue;
        }
        let same = |a: &f32, b: &f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        if let Some(i) = v0.iter().zip(v).position(|(a, b)| !same(a, b)) {
            return Err(Error::Value(format!(
                "replicas disagree at element {i}: {} and {}",
                v0[i], v[i]
            )));
        }
    }
    Ok(Some(Tensor {
        dtype: first.dtype(),
        shape: global_shape.to_vec(),
        data: Data::Float(v0.clone()),
    }))
}

/// Places one piece's values `v` (as f64 by `value`, in the piece's order) at the global
/// elements of `runs`: the first value an element gets is kept, later ones are reduced by
/// `op`, or, for a replicated tensor, must agree bit for bit (any NaN with any NaN).
fn place<T>(
    acc: &mut [f64],
    seen: &mut [bool],
    runs: &[(usize, usize)],
    v: &[T],
    op: Option<ReduceOp>,
    value: impl Fn(&T) -> f64,
) -> Result<()> {
    let mut at = 0;
    for &(start, len) in runs {
        // A piece shorter than its layout ends the placing where it ends (as a zip would).
        let take = len.min(v.len().saturating_sub(at));
        let src = &v[at..at + take];
        at += take;
        let dst = &mut acc[start..start + take];
        let seen = &mut seen[start..start + take];
        // Whole runs first: all new (placed), or, for a replicated tensor, all agreeing.
        if !seen.iter().any(|&s| s) {
            dst.iter_mut().zip(src).for_each(|(a, x)| *a = value(x));
            seen.fill(true);
            continue;
        }
        let same = |a: f64, x: f64| a.to_bits() == x.to_bits() || (a.is_nan() && x.is_nan());
        if op.is_none()
            && seen.iter().all(|&s| s)
            && dst.iter().zip(src).all(|(&a, x)| same(a, value(x)))
        {
            continue;
        }
        for (i, ((a, s), x)) in dst.iter_mut().zip(seen.iter_mut()).zip(src).enumerate() {
            let x = value(x);
            if !*s {
                *a = x;
                *s = true;
                continue;
            }
            *a = match op {
                Some(ReduceOp::Sum) => *a + x,
                Some(ReduceOp::Max) => a.max(x),
                Some(ReduceOp::Min) => a.min(x),
                None if same(*a, x) => *a,
                None => {
                    return Err(Error::Value(format!(
                        "replicas disagree at element {}: {} and {x}",
                        start + i,
                        *a
                    )));
                }
            };
        }
        if take < len {
            break;
        }
    }
    Ok(())
}
