//! Data movement: broadcast, reshape, permute, slice, concat, full.

use tpc_ir::DType;

use crate::tensor::{numel, permute_vec, round_to, strided_offsets, strides, Data, Tensor};
use crate::Result;

fn map_data(
    x: &Tensor,
    shape: Vec<usize>,
    f: impl Fn(&[f32]) -> Vec<f32>,
    g: impl Fn(&[i64]) -> Vec<i64>,
    h: impl Fn(&[bool]) -> Vec<bool>,
) -> Tensor {
    let data = match x.data() {
        Data::Float(v) => Data::Float(f(v)),
        Data::I64(v) => Data::I64(g(v)),
        Data::Bool(v) => Data::Bool(h(v)),
    };
    Tensor {
        dtype: x.dtype(),
        shape,
        data,
    }
}

/// Source index of every destination element of a right-aligned numpy broadcast.
fn broadcast_index(src: &[usize], dst: &[usize]) -> Vec<usize> {
    let offset = dst.len() - src.len();
    let src_st = strides(src);
    // Stride 0 on broadcast dims.
    let st: Vec<usize> = (0..dst.len())
        .map(|d| {
            if d < offset || src[d - offset] == 1 {
                0
            } else {
                src_st[d - offset]
            }
        })
        .collect();
    strided_offsets(dst, &st)
}

pub fn broadcast(x: &Tensor, shape: &[usize]) -> Tensor {
    let idx = broadcast_index(x.shape(), shape);
    map_data(
        x,
        shape.to_vec(),
        |v| idx.iter().map(|&i| v[i]).collect(),
        |v| idx.iter().map(|&i| v[i]).collect(),
        |v| idx.iter().map(|&i| v[i]).collect(),
    )
}

pub fn reshape(x: &Tensor, shape: &[usize]) -> Tensor {
    x.reshaped(shape.to_vec())
}

pub fn permute(x: &Tensor, perm: &[usize]) -> Tensor {
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let s = x.shape();
    map_data(
        x,
        shape,
        |v| permute_vec(v, s, perm),
        |v| permute_vec(v, s, perm),
        |v| permute_vec(v, s, perm),
    )
}

/// Elements `start, start+step, …` (count `len`) of `dim`.
pub fn slice(x: &Tensor, dim: usize, start: usize, step: usize, len: usize) -> Tensor {
    let s = x.shape();
    let outer: usize = s[..dim].iter().product();
    let inner: usize = s[dim + 1..].iter().product();
    let n = s[dim];
    let mut shape = s.to_vec();
    shape[dim] = len;
    let pick = |total: usize| {
        let _ = total;
        let mut idx = Vec::with_capacity(outer * len * inner);
        for o in 0..outer {
            for k in 0..len {
                let base = (o * n + start + k * step) * inner;
                idx.extend(base..base + inner);
            }
        }
        idx
    };
    let idx = pick(0);
    map_data(
        x,
        shape,
        |v| idx.iter().map(|&i| v[i]).collect(),
        |v| idx.iter().map(|&i| v[i]).collect(),
        |v| idx.iter().map(|&i| v[i]).collect(),
    )
}

pub fn concat(xs: &[&Tensor], dim: usize) -> Result<Tensor> {
    let first = xs[0];
    let outer: usize = first.shape()[..dim].iter().product();
    let inner: usize = first.shape()[dim + 1..].iter().product();
    let mut shape = first.shape().to_vec();
    shape[dim] = xs.iter().map(|x| x.shape()[dim]).sum();
    macro_rules! join {
        ($get:ident, $ctor:expr) => {{
            let parts = xs.iter().map(|x| x.$get()).collect::<Result<Vec<_>>>()?;
            let mut out = Vec::with_capacity(numel(&shape));
            for o in 0..outer {
                for (p, x) in parts.iter().zip(xs) {
                    let chunk = x.shape()[dim] * inner;
                    out.extend_from_slice(&p[o * chunk..(o + 1) * chunk]);
                }
            }
            $ctor(out)
        }};
    }
    Ok(match first.data() {
        Data::Float(_) => join!(floats, |v| Tensor::float(first.dtype(), shape.clone(), v)),
        Data::I64(_) => join!(ints, |v| Tensor {
            dtype: DType::I64,
            shape: shape.clone(),
            data: Data::I64(v)
        }),
        Data::Bool(_) => join!(bools, |v| Tensor {
            dtype: DType::Bool,
            shape: shape.clone(),
            data: Data::Bool(v)
        }),
    })
}

pub fn full(shape: &[usize], value: f64, dtype: DType) -> Result<Tensor> {
    let n = numel(shape);
    let shape = shape.to_vec();
    match dtype {
        DType::I64 => Tensor::from_i64(shape, vec![value as i64; n]),
        DType::Bool => Tensor::from_bool(shape, vec![value != 0.0; n]),
        _ => Ok(Tensor::float(
            dtype,
            shape,
            vec![round_to(dtype, value as f32); n],
        )),
    }
}
