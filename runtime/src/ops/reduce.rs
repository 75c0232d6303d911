//! Reductions (sum, mean, max, min) and the row-wise normalizations (softmax, layer_norm,
//! rms_norm). Sums accumulate in f64 and round once to the result dtype.

use tpc_ir::op::ReduceKind;
use tpc_ir::DType;

use crate::tensor::{permute_vec, round_to, Data, Tensor};
use crate::Result;

/// Moves the reduced dims last, so each output element reduces one contiguous row.
fn rows<T: Copy>(v: &[T], shape: &[usize], dims: &[usize]) -> (Vec<T>, usize) {
    let mut perm: Vec<usize> = (0..shape.len()).filter(|d| !dims.contains(d)).collect();
    perm.extend(dims.iter().copied());
    let row: usize = dims.iter().map(|&d| shape[d]).product();
    (permute_vec(v, shape, &perm), row)
}

pub fn reduce(x: &Tensor, kind: ReduceKind, dims: &[usize], out_shape: &[usize]) -> Result<Tensor> {
    let mut sorted = dims.to_vec();
    sorted.sort_unstable();
    let shape = out_shape.to_vec();
    match x.data() {
        Data::Float(v) => {
            let (p, row) = rows(v, x.shape(), &sorted);
            let dt = x.dtype();
            let out = if row == 0 {
                let n = shape.iter().product();
                let e = match kind {
                    ReduceKind::Sum => 0.0,
                    ReduceKind::Mean => f32::NAN,
                    ReduceKind::Max => f32::NEG_INFINITY,
                    ReduceKind::Min => f32::INFINITY,
                };
                vec![e; n]
            } else {
                p.chunks(row)
                    .map(|r| {
                        let y = match kind {
                            ReduceKind::Sum => r.iter().map(|&a| a as f64).sum::<f64>() as f32,
                            ReduceKind::Mean => {
                                (r.iter().map(|&a| a as f64).sum::<f64>() / row as f64) as f32
                            }
                            ReduceKind::Max => r.iter().copied().fold(f32::NEG_INFINITY, |m, a| {
                                if a.is_nan() || m.is_nan() {
                                    f32::NAN
                                } else {
                                    m.max(a)
                                }
                            }),
                            ReduceKind::Min => r.iter().copied().fold(f32::INFINITY, |m, a| {
                                if a.is_nan() || m.is_nan() {
                                    f32::NAN
                                } else {
                                    m.min(a)
                                }
                            }),
                        };
                        round_to(dt, y)
                    })
                    .collect()
            };
            Ok(Tensor::float(dt, shape, out))
        }
        Data::I64(v) => {
            let (p, row) = rows(v, x.shape(), &sorted);
            let out = if row == 0 {
                vec![if kind == ReduceKind::Sum { 0 } else { i64::MIN }; shape.iter().product()]
            } else {
                p.chunks(row)
                    .map(|r| match kind {
                        ReduceKind::Max => r.iter().copied().max().unwrap_or(i64::MIN),
                        ReduceKind::Min => r.iter().copied().min().unwrap_or(i64::MAX),
                        _ => r.iter().fold(0i64, |a, &b| a.wrapping_add(b)),
                    })
                    .collect()
            };
            Tensor::from_i64(shape, out)
        }
        Data::Bool(_) => Err(crate::Error::Internal("reduction of bool".into())),
    }
}

/// Calls `f` on each line along `dim` (as an index list into the flat data).
fn for_each_line(shape: &[usize], dim: usize, mut f: impl FnMut(&[usize])) {
    let outer: usize = shape[..dim].iter().product();
    let n = shape[dim];
    let inner: usize = shape[dim + 1..].iter().product();
    let mut idx = vec![0usize; n];
    for o in 0..outer {
        for i in 0..inner {
            for (k, slot) in idx.iter_mut().enumerate() {
                *slot = (o * n + k) * inner + i;
            }
            f(&idx);
        }
    }
}

pub fn softmax(x: &Tensor, dim: usize) -> Result<Tensor> {
    let v = x.floats()?;
    let dt = x.dtype();
    let mut out = vec![0f32; v.len()];
    for_each_line(x.shape(), dim, |idx| {
        let m = idx.iter().map(|&i| v[i]).fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = idx.iter().map(|&i| (v[i] - m).exp()).collect();
        let s: f32 = e.iter().map(|&a| a as f64).sum::<f64>() as f32;
        for (&i, &a) in idx.iter().zip(&e) {
            out[i] = round_to(dt, a / s);
        }
    });
    Ok(Tensor::float(dt, x.shape().to_vec(), out))
}

/// layer_norm over rows of `row` trailing elements: biased variance, then weight and bias.
pub fn layer_norm(
    x: &Tensor,
    w: Option<&Tensor>,
    b: Option<&Tensor>,
    eps: f64,
    row: usize,
) -> Result<Tensor> {
    let v = x.floats()?;
    let dt = x.dtype();
    let w = w.map(|t| t.floats()).transpose()?;
    let b = b.map(|t| t.floats()).transpose()?;
    let mut out = Vec::with_capacity(v.len());
    if row == 0 {
        return Ok(Tensor::float(dt, x.shape().to_vec(), Vec::new()));
    }
    for r in v.chunks(row) {
        let mean = r.iter().map(|&a| a as f64).sum::<f64>() / row as f64;
        let var = r.iter().map(|&a| (a as f64 - mean).powi(2)).sum::<f64>() / row as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for (k, &a) in r.iter().enumerate() {
            let mut y = ((a as f64 - mean) * inv) as f32;
            if let Some(w) = w {
                y *= w[k];
            }
            if let Some(b) = b {
                y += b[k];
            }
            out.push(round_to(dt, y));
        }
    }
    Ok(Tensor::float(dt, x.shape().to_vec(), out))
}

/// torch.finfo(dtype).eps, rms_norm's default.
pub fn machine_eps(dt: DType) -> f64 {
    match dt {
        DType::BF16 => 0.0078125,
        DType::F16 => 0.0009765625,
        _ => f32::EPSILON as f64,
    }
}

pub fn rms_norm(x: &Tensor, w: Option<&Tensor>, eps: Option<f64>, row: usize) -> Result<Tensor> {
    let v = x.floats()?;
    let dt = x.dtype();
    let eps = eps.unwrap_or_else(|| machine_eps(dt));
    let w = w.map(|t| t.floats()).transpose()?;
    let mut out = Vec::with_capacity(v.len());
    if row == 0 {
        return Ok(Tensor::float(dt, x.shape().to_vec(), Vec::new()));
    }
    for r in v.chunks(row) {
        let ms = r.iter().map(|&a| (a as f64).powi(2)).sum::<f64>() / row as f64;
        let inv = 1.0 / (ms + eps).sqrt();
        for (k, &a) in r.iter().enumerate() {
            let mut y = (a as f64 * inv) as f32;
            if let Some(w) = w {
                y *= w[k];
            }
            out.push(round_to(dt, y));
        }
    }
    Ok(Tensor::float(dt, x.shape().to_vec(), out))
}
