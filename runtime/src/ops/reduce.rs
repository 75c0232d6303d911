//! Reductions (sum, mean, max, min) and the row-wise normalizations (softmax, layer_norm,
//! rms_norm). Sums accumulate in f64 and round once to the result dtype.

use tpc_ir::ops::ReduceKind;
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

/// A mean over `dims` dividing by `count`, the global number of reduced elements (a rank's
/// piece holds only some of them).
pub fn mean_of(x: &Tensor, dims: &[usize], out_shape: &[usize], count: usize) -> Result<Tensor> {
    let sum = reduce(x, ReduceKind::Sum, dims, out_shape)?;
    let dt = sum.dtype();
    let v: Vec<f32> = sum
        .floats()?
        .iter()
        .map(|&s| round_to(dt, s / count as f32))
        .collect();
    Ok(Tensor::float(dt, out_shape.to_vec(), v))
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

/// Which result of a norm to compute: the normalized values, or one of the per-row statistics
/// (in f32, one per row) that the `_stats` variants also return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormResult {
    Y,
    Mean,
    Rstd,
}

/// layer_norm over the last `normalized` dims: biased variance, then weight and bias.
pub fn layer_norm(
    x: &Tensor,
    w: Option<&Tensor>,
    b: Option<&Tensor>,
    eps: f64,
    normalized: usize,
    result: NormResult,
) -> Result<Tensor> {
    norm(x, w, b, eps, normalized, true, result)
}

/// rms_norm over the last `normalized` dims (`eps` resolved by the op: `RmsNorm::eps_for`):
/// layer_norm without centering and without a bias.
pub fn rms_norm(
    x: &Tensor,
    w: Option<&Tensor>,
    eps: f64,
    normalized: usize,
    result: NormResult,
) -> Result<Tensor> {
    norm(x, w, None, eps, normalized, false, result)
}

/// `(x - mean) / sqrt(mean((x - mean)²) + eps) * w + b` by rows, with `mean = 0` unless
/// `centered`; all in f64, rounded once.
fn norm(
    x: &Tensor,
    w: Option<&Tensor>,
    b: Option<&Tensor>,
    eps: f64,
    normalized: usize,
    centered: bool,
    result: NormResult,
) -> Result<Tensor> {
    let row = row_len(x, normalized);
    let v = x.floats()?;
    let w = w.map(|t| t.floats()).transpose()?;
    let b = b.map(|t| t.floats()).transpose()?;
    norm_rows(
        x,
        normalized,
        result,
        |r| {
            let mean = if centered {
                r.iter().map(|&a| a as f64).sum::<f64>() / row as f64
            } else {
                0.0
            };
            let var = r.iter().map(|&a| (a as f64 - mean).powi(2)).sum::<f64>() / row as f64;
            (mean, 1.0 / (var + eps).sqrt())
        },
        |k, a, (mean, inv)| {
            let mut y = ((a as f64 - mean) * inv) as f32;
            if let Some(w) = w {
                y *= w[k];
            }
            if let Some(b) = b {
                y += b[k];
            }
            y
        },
        v,
    )
}

/// The elements in a row of the last `normalized` dims.
fn row_len(x: &Tensor, normalized: usize) -> usize {
    let s = x.shape();
    s[s.len().saturating_sub(normalized)..].iter().product()
}

/// A norm's `result` over rows of the last `normalized` dims of `x`: `stats` gives a row's
/// (mean, rstd), `y` an element's normalized value from its index in the row, itself and the
/// row's stats.
fn norm_rows(
    x: &Tensor,
    normalized: usize,
    result: NormResult,
    stats: impl Fn(&[f32]) -> (f64, f64),
    y: impl Fn(usize, f32, (f64, f64)) -> f32,
    v: &[f32],
) -> Result<Tensor> {
    let dt = x.dtype();
    let row = row_len(x, normalized);
    let lead = x.shape().len().saturating_sub(normalized);
    if result != NormResult::Y {
        let shape = x.shape()[..lead].to_vec();
        let out: Vec<f32> = if row == 0 {
            vec![f32::NAN; shape.iter().product()]
        } else {
            v.chunks(row)
                .map(|r| {
                    let (mean, rstd) = stats(r);
                    (if result == NormResult::Mean {
                        mean
                    } else {
                        rstd
                    }) as f32
                })
                .collect()
        };
        return Ok(Tensor::float(DType::F32, shape, out));
    }
    if row == 0 {
        return Ok(Tensor::float(dt, x.shape().to_vec(), Vec::new()));
    }
    let mut out = Vec::with_capacity(v.len());
    for r in v.chunks(row) {
        let st = stats(r);
        out.extend(
            r.iter()
                .enumerate()
                .map(|(k, &a)| round_to(dt, y(k, a, st))),
        );
    }
    Ok(Tensor::float(dt, x.shape().to_vec(), out))
}
