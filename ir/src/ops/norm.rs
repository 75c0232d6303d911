//! Normalizations over the trailing dims: `layer_norm` and `rms_norm`, and their `_stats`
//! variants, which also return the statistics a backward pass reuses (layer norm's mean and
//! reciprocal standard deviation, rms norm's reciprocal root mean square), in f32, one per row.

use super::{
    float_key, keyed, AttrValue, BinaryOp, Op, OpDef, OpSpec, ReduceKind, ResultType, UnaryOp,
};
use crate::decompose::Expander;
use crate::dim::Dim;
use crate::dtype::DType;
use crate::graph::ValueId;
use crate::infer::{arity, need_float, same_dtype, InferError};
use crate::rule::{FactorId, FactorKind, FactorRule};
use crate::syntax::attrs::{AttrError, AttrReader};
use crate::types::{shape_string, TensorType};

/// `layer_norm(x[, weight[, bias]]) {eps, normalized}`: over the last `normalized` dims.
/// With `stats`, `%y, %mean, %rstd = layer_norm_stats(…)`.
#[derive(Clone, Copy, Debug)]
pub struct LayerNorm {
    pub eps: f64,
    pub normalized: usize,
    pub stats: bool,
}
keyed!(LayerNorm, |s| (float_key(s.eps), s.normalized, s.stats));

/// `rms_norm(x[, weight]) {eps, normalized}`; `eps = None` is the dtype's machine epsilon
/// ([`RmsNorm::eps_for`]). With `stats`, `%y, %rstd = rms_norm_stats(…)`.
#[derive(Clone, Copy, Debug)]
pub struct RmsNorm {
    pub eps: Option<f64>,
    pub normalized: usize,
    pub stats: bool,
}
keyed!(RmsNorm, |s| (s.eps.map(float_key), s.normalized, s.stats));

impl RmsNorm {
    /// The epsilon for inputs of `dtype`: the given one, else the dtype's machine epsilon (as
    /// torch.nn.RMSNorm with `eps=None`).
    pub fn eps_for(&self, dtype: DType) -> f64 {
        self.eps.unwrap_or(match dtype {
            DType::BF16 => 0.0078125,
            DType::F16 => 0.0009765625,
            _ => f32::EPSILON as f64,
        })
    }
}

/// Shared checks and types of both norms: `max` operands (x and its affine parameters).
fn infer_norm(
    name: &'static str,
    normalized: usize,
    stats: usize,
    max: usize,
    xs: &[&TensorType],
) -> Result<Vec<ResultType>, InferError> {
    arity(name, xs, 1, max)?;
    let x = xs[0];
    need_float(name, x, 0)?;
    if normalized == 0 || normalized > x.rank() {
        return Err(InferError::new(format!(
            "`{name}` normalizes the last {normalized} dims, but its input has rank {}",
            x.rank()
        ))
        .at(0));
    }
    let lead = x.rank() - normalized;
    let tail = &x.shape[lead..];
    for (i, p) in xs.iter().enumerate().skip(1) {
        if p.shape != tail {
            return Err(InferError::new(format!(
                "`{name}` needs its {} of shape {} (the normalized dims), but got {}",
                if i == 1 { "weight" } else { "bias" },
                shape_string(tail),
                p.shape_string()
            ))
            .at(i));
        }
    }
    let idx: Vec<usize> = (0..xs.len()).collect();
    same_dtype(name, xs, &idx)?;
    let mut out = vec![(x.dtype, x.shape.clone())];
    out.extend((0..stats).map(|_| (DType::F32, x.shape[..lead].to_vec())));
    Ok(out)
}

/// The normalized dims are whole; the leading dims pass (to the statistics too).
fn norm_rule(normalized: usize, xs: &[&TensorType], result: usize) -> FactorRule {
    let shape = &xs[0].shape;
    let first = shape.len() - normalized;
    let mut r = FactorRule::default();
    let dims: Vec<Vec<FactorId>> = shape
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let kind = if i >= first {
                FactorKind::Replicated
            } else {
                FactorKind::Pass
            };
            r.dim_factor(d, kind)
        })
        .collect();
    let tail = dims[first..].to_vec();
    r.result = if result == 0 {
        dims.clone()
    } else {
        dims[..first].to_vec()
    };
    r.operands = vec![dims];
    r.operands.extend(xs.iter().skip(1).map(|_| tail.clone()));
    r
}

/// `y * p` (`combine` = mul) or `y + p` for an affine parameter `p` of the normalized dims,
/// broadcast to `y` and read in f32.
fn affine(
    e: &mut Expander<'_>,
    y: ValueId,
    p: Option<ValueId>,
    combine: BinaryOp,
) -> Result<ValueId, InferError> {
    let Some(p) = p else {
        return Ok(y);
    };
    let p = e.broadcast(p, y)?;
    let p = e.cast(p, DType::F32)?;
    e.binary(combine, y, p)
}

/// The statistics results of a `_stats` norm: each per-row statistic (kept as 1 in the
/// normalized dims) reshaped to the leading dims.
fn stats(
    e: &mut Expander<'_>,
    x: ValueId,
    normalized: usize,
    per_row: &[ValueId],
) -> Result<Vec<ValueId>, InferError> {
    let shape = e.ty(x).shape.clone();
    let lead = shape[..shape.len() - normalized].to_vec();
    per_row
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let layout = e.result_layout(i + 1, x);
            e.reshape(s, lead.clone(), layout)
        })
        .collect()
}

/// The normalized dims of `x` and `x` in f32.
fn prologue(
    e: &mut Expander<'_>,
    normalized: usize,
) -> Result<Option<(ValueId, Vec<usize>, ValueId)>, InferError> {
    let Some(x) = e.operand(0) else {
        return Ok(None);
    };
    let rank = e.ty(x).rank();
    let dims: Vec<usize> = (rank.saturating_sub(normalized)..rank).collect();
    let xf = e.cast(x, DType::F32)?;
    Ok(Some((x, dims, xf)))
}

impl OpDef for LayerNorm {
    fn name(&self) -> &'static str {
        if self.stats {
            "layer_norm_stats"
        } else {
            "layer_norm"
        }
    }
    fn attrs(&self) -> Vec<(&'static str, AttrValue)> {
        vec![
            ("eps", AttrValue::Float(self.eps)),
            ("normalized", AttrValue::Int(self.normalized as i64)),
        ]
    }
    fn num_results(&self) -> usize {
        if self.stats {
            3
        } else {
            1
        }
    }
    fn result_names(&self) -> &'static [&'static str] {
        if self.stats {
            &["y", "mean", "rstd"]
        } else {
            &[]
        }
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        infer_norm(self.name(), self.normalized, 2 * self.stats as usize, 3, xs)
    }
    fn rule(&self, xs: &[&TensorType], _: &[Dim], result: usize) -> FactorRule {
        norm_rule(self.normalized, xs, result)
    }
    /// In f32: `c = x - mean(x)`, `rstd = rsqrt(mean(c * c) + eps)`, `y = c * rstd * w + b`;
    /// the statistics are `mean(x)` and `rstd` per row.
    fn decompose(&self, e: &mut Expander<'_>) -> Result<Option<Vec<ValueId>>, InferError> {
        let Some((x, dims, xf)) = prologue(e, self.normalized)? else {
            return Ok(None);
        };
        let mean = e.reduce_keep(ReduceKind::Mean, xf, &dims)?;
        let spread = e.broadcast(mean, xf)?;
        let centered = e.binary(BinaryOp::Sub, xf, spread)?;
        let square = e.binary(BinaryOp::Mul, centered, centered)?;
        let var = e.reduce_keep(ReduceKind::Mean, square, &dims)?;
        let eps = e.constant(self.eps, DType::F32, var)?;
        let var = e.binary(BinaryOp::Add, var, eps)?;
        let rstd = e.unary(UnaryOp::Rsqrt, var)?;
        let spread = e.broadcast(rstd, centered)?;
        let y = e.binary(BinaryOp::Mul, centered, spread)?;
        let y = affine(e, y, e.operand(1), BinaryOp::Mul)?;
        let y = affine(e, y, e.operand(2), BinaryOp::Add)?;
        let mut out = vec![e.cast(y, e.dtype(x))?];
        if self.stats {
            out.extend(stats(e, x, self.normalized, &[mean, rstd])?);
        }
        Ok(Some(out))
    }
}

impl OpDef for RmsNorm {
    fn name(&self) -> &'static str {
        if self.stats {
            "rms_norm_stats"
        } else {
            "rms_norm"
        }
    }
    fn attrs(&self) -> Vec<(&'static str, AttrValue)> {
        let mut v = Vec::new();
        if let Some(e) = self.eps {
            v.push(("eps", AttrValue::Float(e)));
        }
        v.push(("normalized", AttrValue::Int(self.normalized as i64)));
        v
    }
    fn num_results(&self) -> usize {
        1 + self.stats as usize
    }
    fn result_names(&self) -> &'static [&'static str] {
        if self.stats {
            &["y", "rstd"]
        } else {
            &[]
        }
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        infer_norm(self.name(), self.normalized, self.stats as usize, 2, xs)
    }
    fn rule(&self, xs: &[&TensorType], _: &[Dim], result: usize) -> FactorRule {
        norm_rule(self.normalized, xs, result)
    }
    /// In f32: `rstd = rsqrt(mean(x * x) + eps)`, `y = x * rstd * w`; the statistic is `rstd`
    /// per row.
    fn decompose(&self, e: &mut Expander<'_>) -> Result<Option<Vec<ValueId>>, InferError> {
        let Some((x, dims, xf)) = prologue(e, self.normalized)? else {
            return Ok(None);
        };
        let square = e.binary(BinaryOp::Mul, xf, xf)?;
        let ms = e.reduce_keep(ReduceKind::Mean, square, &dims)?;
        let eps = e.constant(self.eps_for(e.dtype(x)), DType::F32, ms)?;
        let ms = e.binary(BinaryOp::Add, ms, eps)?;
        let rstd = e.unary(UnaryOp::Rsqrt, ms)?;
        let spread = e.broadcast(rstd, xf)?;
        let y = e.binary(BinaryOp::Mul, xf, spread)?;
        let y = affine(e, y, e.operand(1), BinaryOp::Mul)?;
        let mut out = vec![e.cast(y, e.dtype(x))?];
        if self.stats {
            out.extend(stats(e, x, self.normalized, &[rstd])?);
        }
        Ok(Some(out))
    }
}

/// `normalized` defaults to the weight's rank (1 without a weight).
fn norm_defaults(xs: &[&TensorType], layer: bool) -> Vec<(&'static str, AttrValue)> {
    let normalized = AttrValue::Int(xs.get(1).map(|w| w.rank()).unwrap_or(1) as i64);
    if layer {
        vec![("eps", AttrValue::Float(1e-5)), ("normalized", normalized)]
    } else {
        vec![("normalized", normalized)]
    }
}

fn parse_norm(r: &mut AttrReader<'_>, _: &[&TensorType]) -> Result<Op, AttrError> {
    let eps = match r.get("eps") {
        Some(a) => Some(r.float(a)?),
        None => None,
    };
    let a = r.defaulted("normalized")?;
    let n = r.int(a)?;
    let normalized =
        usize::try_from(n).map_err(|_| r.kind_err(a, "a positive count of trailing dims"))?;
    let stats = r.op().ends_with("_stats");
    Ok(if r.op().starts_with("layer_norm") {
        Op::LayerNorm(LayerNorm {
            // The default is in `norm_defaults`, so `eps` is always there.
            eps: eps.unwrap_or(1e-5),
            normalized,
            stats,
        })
    } else {
        Op::RmsNorm(RmsNorm {
            eps,
            normalized,
            stats,
        })
    })
}

pub(super) fn specs() -> Vec<OpSpec> {
    let layer = |name| OpSpec {
        name,
        defaults: |xs| norm_defaults(xs, true),
        parse: parse_norm,
    };
    let rms = |name| OpSpec {
        name,
        defaults: |xs| norm_defaults(xs, false),
        parse: parse_norm,
    };
    vec![
        layer("layer_norm"),
        layer("layer_norm_stats"),
        rms("rms_norm"),
        rms("rms_norm_stats"),
    ]
}
