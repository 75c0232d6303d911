//! Contractions: `matmul`, `linear`, and scaled dot-product attention (`sdpa`).

use super::{
    float_key, keyed, one, AttrValue, DimOf, GlobalContext, Op, OpDef, OpSpec, ResultType,
};
use crate::dim::Dim;
use crate::dtype::DType;
use crate::infer::{arity, need_float, same_dtype, InferError};
use crate::rule::{FactorId, FactorKind, FactorRule};
use crate::syntax::attrs::{AttrError, AttrReader};
use crate::types::{shape_string, ReduceOp, TensorType};

/// `matmul(a, b)`: `[..., m, k] x [..., k, n]`, or `[..., m, k] x [k, n]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Matmul;

impl OpDef for Matmul {
    fn name(&self) -> &'static str {
        "matmul"
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        arity("matmul", xs, 2, 2)?;
        let (a, b) = (xs[0], xs[1]);
        let dt = same_dtype("matmul", xs, &[0, 1])?;
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
        one(dt, shape)
    }
    fn rule(&self, xs: &[&TensorType], out: &[Dim], _: usize) -> FactorRule {
        use FactorKind::*;
        let mut r = FactorRule::default();
        let (a, b) = (xs[0], xs[1]);
        let (ra, rb) = (a.rank(), b.rank());
        let batch: Vec<Vec<FactorId>> = out[..out.len() - 2]
            .iter()
            .map(|d| r.dim_factor(d, Pass))
            .collect();
        let m = r.dim_factor(&a.shape[ra - 2], Pass);
        let k = r.dim_factor(&a.shape[ra - 1], Reduction(ReduceOp::Sum));
        let n = r.dim_factor(&b.shape[rb - 1], Pass);
        let side = |rank: usize, last: [Vec<FactorId>; 2]| {
            let mut v: Vec<Vec<FactorId>> = if rank == 2 { Vec::new() } else { batch.clone() };
            v.extend(last);
            v
        };
        r.operands = vec![side(ra, [m.clone(), k.clone()]), side(rb, [k, n.clone()])];
        r.result = batch.clone();
        r.result.extend([m, n]);
        r
    }
}

/// `linear(x, w[, b])`: `x @ w^T + b`, `w: [out, in]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Linear;

impl OpDef for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        arity("linear", xs, 2, 3)?;
        let (x, w) = (xs[0], xs[1]);
        need_float("linear", x, 0)?;
        let idx: Vec<usize> = (0..xs.len()).collect();
        let dt = same_dtype("linear", xs, &idx)?;
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
        one(dt, shape)
    }
    fn rule(&self, xs: &[&TensorType], _: &[Dim], _: usize) -> FactorRule {
        use FactorKind::*;
        let mut r = FactorRule::default();
        let x = xs[0];
        let lead: Vec<Vec<FactorId>> = x.shape[..x.rank() - 1]
            .iter()
            .map(|d| r.dim_factor(d, Pass))
            .collect();
        let k = r.dim_factor(&x.shape[x.rank() - 1], Reduction(ReduceOp::Sum));
        let n = r.dim_factor(&xs[1].shape[0], Pass);
        let mut xo = lead.clone();
        xo.push(k.clone());
        r.operands = vec![xo, vec![n.clone(), k]];
        if xs.len() == 3 {
            r.operands.push(vec![n.clone()]);
        }
        r.result = lead;
        r.result.push(n);
        r
    }
}

/// `sdpa(q, k, v) {causal, scale}`: softmax(q k^T * scale [+ causal mask]) v. With `stats`,
/// `%out, %lse = sdpa_stats(…)` also returns each query's log-sum-exp of its scaled, masked
/// scores (f32, `[..., L]`): what a flash-attention backward reuses.
#[derive(Clone, Copy, Debug)]
pub struct Sdpa {
    pub causal: bool,
    pub scale: Option<f64>,
    pub stats: bool,
}
keyed!(Sdpa, |s| (s.causal, s.scale.map(float_key), s.stats));

/// The scale of the scores, as [`Sdpa::scale`] resolves it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SdpaScale {
    /// The `scale` attribute.
    Given(f64),
    /// The default, 1/sqrt(E) for a head dim E (as torch's scaled_dot_product_attention).
    InverseSqrtHeadDim,
}

impl Sdpa {
    /// The scale, with its default stated here once.
    pub fn scale(&self) -> SdpaScale {
        match self.scale {
            Some(s) => SdpaScale::Given(s),
            None => SdpaScale::InverseSqrtHeadDim,
        }
    }
    /// The scale for a head dim of `head_dim` elements.
    pub fn scale_at(&self, head_dim: usize) -> f64 {
        match self.scale() {
            SdpaScale::Given(s) => s,
            SdpaScale::InverseSqrtHeadDim => 1.0 / (head_dim as f64).sqrt(),
        }
    }
}

impl OpDef for Sdpa {
    fn name(&self) -> &'static str {
        if self.stats {
            "sdpa_stats"
        } else {
            "sdpa"
        }
    }
    fn num_results(&self) -> usize {
        1 + self.stats as usize
    }
    fn result_names(&self) -> &'static [&'static str] {
        if self.stats {
            &["out", "lse"]
        } else {
            &[]
        }
    }
    fn attrs(&self) -> Vec<(&'static str, AttrValue)> {
        let mut v = vec![("causal", AttrValue::Bool(self.causal))];
        if let Some(s) = self.scale {
            v.push(("scale", AttrValue::Float(s)));
        }
        v
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        let name = self.name();
        arity(name, xs, 3, 3)?;
        let dt = same_dtype(name, xs, &[0, 1, 2])?;
        need_float(name, xs[0], 0)?;
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
                "`{name}` needs q [..., L, E], k [..., S, E], v [..., S, Ev] with equal batch dims, but got {}, {}, {}",
                q.shape_string(),
                k.shape_string(),
                v.shape_string()
            )));
        }
        let mut shape = q.shape.clone();
        shape[r - 1] = v.shape[r - 1].clone();
        let mut out = vec![(dt, shape)];
        if self.stats {
            out.push((DType::F32, q.shape[..r - 1].to_vec()));
        }
        Ok(out)
    }
    fn rule(&self, xs: &[&TensorType], _: &[Dim], result: usize) -> FactorRule {
        use FactorKind::*;
        let mut r = FactorRule::default();
        let q = xs[0];
        let rank = q.rank();
        let batch: Vec<Vec<FactorId>> = q.shape[..rank - 2]
            .iter()
            .map(|d| r.dim_factor(d, Pass))
            .collect();
        let l = r.dim_factor(&q.shape[rank - 2], Pass);
        // The head dim is contracted inside the softmax and the key sequence is normalized
        // over: both stay whole.
        let e = r.dim_factor(&q.shape[rank - 1], Replicated);
        let s = r.dim_factor(&xs[1].shape[rank - 2], Replicated);
        let ev = r.dim_factor(&xs[2].shape[rank - 1], Pass);
        let with = |a: &Vec<FactorId>, b: &Vec<FactorId>| {
            let mut v = batch.clone();
            v.push(a.clone());
            v.push(b.clone());
            v
        };
        r.operands = vec![with(&l, &e), with(&s, &e), with(&s, &ev)];
        r.result = if result == 1 {
            // The log-sum-exp: one per query.
            let mut v = batch.clone();
            v.push(l.clone());
            v
        } else {
            with(&l, &ev)
        };
        r
    }
    fn global_context(&self, _: usize) -> GlobalContext {
        // A rank holding some of the queries masks by their global positions.
        GlobalContext {
            // Dim 2 from the end of q: its sequence.
            positions: self.causal.then_some((0, DimOf::FromEnd(2))),
            ..GlobalContext::default()
        }
    }
}

fn parse_sdpa(r: &mut AttrReader<'_>, _: &[&TensorType]) -> Result<Op, AttrError> {
    let a = r.defaulted("causal")?;
    let causal = r.bool(a)?;
    let scale = match r.get("scale") {
        Some(a) => Some(r.float(a)?),
        None => None,
    };
    let stats = r.op() == "sdpa_stats";
    Ok(Op::Sdpa(Sdpa {
        causal,
        scale,
        stats,
    }))
}

pub(super) fn specs() -> Vec<OpSpec> {
    vec![
        OpSpec {
            name: "matmul",
            defaults: super::no_defaults,
            parse: |_, _| Ok(Op::Matmul(Matmul)),
        },
        OpSpec {
            name: "linear",
            defaults: super::no_defaults,
            parse: |_, _| Ok(Op::Linear(Linear)),
        },
        OpSpec {
            name: "sdpa",
            defaults: |_| vec![("causal", AttrValue::Bool(false))],
            parse: parse_sdpa,
        },
        OpSpec {
            name: "sdpa_stats",
            defaults: |_| vec![("causal", AttrValue::Bool(false))],
            parse: parse_sdpa,
        },
    ]
}
