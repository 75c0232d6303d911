//! Cutting global tensors into per-rank pieces and putting pieces back together, with the index
//! maps of `tpc_ir::layout`: how inputs and weights reach the ranks, and how the ranks' results
//! are compared with the reference.

use tpc_ir::layout::{flat_offsets, piece_indices, MeshCoords};
use tpc_ir::{ReduceOp, TensorType};

use crate::tensor::{round_to, Data, Tensor};
use crate::{Bindings, Error, Result};

/// Flat offsets into the global tensor (of shape `global`, which must be the type's) of this
/// rank's piece, and the piece's shape.
fn offsets(
    global: &[usize],
    ty: &TensorType,
    bindings: &Bindings,
    coords: &MeshCoords,
) -> Result<(Vec<usize>, Vec<usize>)> {
    let (shape, idx) =
        piece_indices(ty, bindings, coords).map_err(|e| Error::Shape(e.to_string()))?;
    if shape != global {
        return Err(Error::Shape(format!(
            "a global tensor is {global:?} but its type says {shape:?}"
        )));
    }
    let local_shape = idx.iter().map(Vec::len).collect();
    Ok((flat_offsets(&shape, &idx), local_shape))
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
    let (shape, idx) =
        piece_indices(ty, bindings, coords).map_err(|e| Error::Shape(e.to_string()))?;
    if shape != global.shape() {
        return Err(Error::Shape(format!(
            "a global tensor is {:?} but its type says {shape:?}",
            global.shape()
        )));
    }
    let local_shape: Vec<usize> = idx.iter().map(Vec::len).collect();
    let keep = holds_summand(ty, coords);
    fn go<T: Copy>(v: &[T], shape: &[usize], idx: &[Vec<usize>], zero: Option<T>) -> Vec<T> {
        let n: usize = idx.iter().map(Vec::len).product();
        if let Some(z) = zero {
            return vec![z; n];
        }
        let Some((last, outer)) = idx.split_last() else {
            return v.to_vec();
        };
        let w = shape[shape.len() - 1];
        let outer_offs = tpc_ir::layout::flat_offsets(&shape[..shape.len() - 1], outer);
        let contiguous = last.windows(2).all(|p| p[1] == p[0] + 1);
        let mut out = Vec::with_capacity(n);
        for o in outer_offs {
            let base = o * w;
            if contiguous {
                if let Some(&s) = last.first() {
                    out.extend_from_slice(&v[base + s..base + s + last.len()]);
                }
            } else {
                out.extend(last.iter().map(|&i| v[base + i]));
            }
        }
        out
    }
    let data = match global.data() {
        Data::Float(v) => Data::Float(go(v, &shape, &idx, (!keep).then_some(0.0))),
        Data::I64(v) => Data::I64(go(v, &shape, &idx, (!keep).then_some(0))),
        Data::Bool(v) => Data::Bool(go(v, &shape, &idx, None)),
    };
    Ok(Tensor {
        dtype: global.dtype(),
        shape: local_shape,
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
    let n: usize = global_shape.iter().product();
    let partial_op = ty.sharding.partial.first().map(|p| p.op);
    let mut acc: Vec<Option<f64>> = vec![None; n];
    for (coords, piece) in pieces {
        let (offs, shape) = offsets(global_shape, ty, bindings, coords)?;
        if shape != piece.shape() {
            return Err(Error::Shape(format!(
                "a rank's piece is {:?} but its layout says {shape:?}",
                piece.shape()
            )));
        }
        for (&o, x) in offs.iter().zip(piece.to_f32_vec()) {
            let x = x as f64;
            acc[o] = Some(match (acc[o], partial_op) {
                (None, _) => x,
                (Some(a), Some(ReduceOp::Sum)) => a + x,
                (Some(a), Some(ReduceOp::Max)) => a.max(x),
                (Some(a), Some(ReduceOp::Min)) => a.min(x),
                (Some(a), None) if a.to_bits() == x.to_bits() || (a.is_nan() && x.is_nan()) => a,
                (Some(a), None) => {
                    return Err(Error::Value(format!(
                        "replicas disagree at element {o}: {a} and {x}"
                    )));
                }
            });
        }
    }
    if let Some(o) = acc.iter().position(Option::is_none) {
        return Err(Error::Value(format!("no rank holds element {o}")));
    }
    let values = acc.into_iter().map(|v| v.unwrap_or(0.0));
    let dt = ty.dtype;
    match dt {
        d if d.is_float() => Ok(Tensor::float(
            dt,
            global_shape.to_vec(),
            values.map(|v| round_to(dt, v as f32)).collect(),
        )),
        tpc_ir::DType::I64 => {
            Tensor::from_i64(global_shape.to_vec(), values.map(|v| v as i64).collect())
        }
        _ => Tensor::from_bool(global_shape.to_vec(), values.map(|v| v != 0.0).collect()),
    }
}
