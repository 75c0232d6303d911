//! Random ops. Each draws by Philox keyed by its seed and the element's *global* index, so any
//! split draws the same numbers as one device: their rule is elementwise, and they ask for the
//! global index ([`GlobalContext::element_index`]).

use super::{
    float_key, keyed, one, AttrValue, BinaryOp, GlobalContext, Op, OpDef, OpSpec, ResultType, Where,
};
use crate::decompose::Expander;
use crate::dim::Dim;
use crate::dtype::DType;
use crate::graph::ValueId;
use crate::infer::{arity, need_float, InferError};
use crate::rule::FactorRule;
use crate::syntax::attrs::{AttrError, AttrReader};
use crate::types::TensorType;

use super::pointwise::elementwise_rule;

/// `rand_like(x) {seed}`: uniform in [0, 1), x's shape and dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RandLike {
    pub seed: u64,
}

/// `dropout(x) {p, seed}`: keeps each element with probability `1 - p`, scaled by `1/(1-p)`.
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    pub p: f64,
    pub seed: u64,
}
keyed!(Dropout, |s| (float_key(s.p), s.seed));

fn global_index() -> GlobalContext {
    GlobalContext {
        element_index: true,
        ..GlobalContext::default()
    }
}

impl OpDef for RandLike {
    fn name(&self) -> &'static str {
        "rand_like"
    }
    fn attrs(&self) -> Vec<(&'static str, AttrValue)> {
        vec![("seed", AttrValue::Int(self.seed as i64))]
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        arity("rand_like", xs, 1, 1)?;
        need_float("rand_like", xs[0], 0)?;
        one(xs[0].dtype, xs[0].shape.clone())
    }
    fn rule(&self, xs: &[&TensorType], out: &[Dim], _: usize) -> FactorRule {
        elementwise_rule(xs.len(), out)
    }
    fn global_context(&self, _: usize) -> GlobalContext {
        global_index()
    }
}

impl OpDef for Dropout {
    fn name(&self) -> &'static str {
        "dropout"
    }
    fn attrs(&self) -> Vec<(&'static str, AttrValue)> {
        vec![
            ("p", AttrValue::Float(self.p)),
            ("seed", AttrValue::Int(self.seed as i64)),
        ]
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        arity("dropout", xs, 1, 1)?;
        need_float("dropout", xs[0], 0)?;
        if !(0.0..=1.0).contains(&self.p) {
            return Err(InferError::new(format!(
                "dropout probability must lie in [0, 1], got {}",
                self.p
            )));
        }
        one(xs[0].dtype, xs[0].shape.clone())
    }
    fn rule(&self, xs: &[&TensorType], out: &[Dim], _: usize) -> FactorRule {
        elementwise_rule(xs.len(), out)
    }
    fn global_context(&self, _: usize) -> GlobalContext {
        global_index()
    }
    /// `where(rand_like(x) < 1 - p, x * (1 / (1 - p)), 0)`, the draws in f32 (as the reference
    /// draws) and the scale rounded to x's dtype (as PyTorch builds it); all zeros at `p = 1`.
    fn decompose(&self, e: &mut Expander<'_>) -> Result<Option<Vec<ValueId>>, InferError> {
        let Some(x) = e.operand(0) else {
            return Ok(None);
        };
        let dtype = e.dtype(x);
        if self.p >= 1.0 {
            return Ok(Some(vec![e.constant(0.0, dtype, x)?]));
        }
        let scale = e.constant((1.0 / (1.0 - self.p)) as f32 as f64, dtype, x)?;
        let scaled = e.binary(BinaryOp::Mul, x, scale)?;
        // Drawn in the shape of the scaled values (a draw reads only its operand's shape), so
        // that each op reads one made before it and a kernel computes the whole chain.
        let shape = e.cast(scaled, DType::F32)?;
        let layout = e.like(x);
        let draw = e.add(Op::RandLike(RandLike { seed: self.seed }), &[shape], layout)?;
        let keep = e.constant((1.0 - self.p) as f32 as f64, DType::F32, draw)?;
        let kept = e.binary(BinaryOp::Lt, draw, keep)?;
        let zero = e.constant(0.0, dtype, x)?;
        let layout = e.like(x);
        let y = e.add(Op::Where(Where), &[kept, scaled, zero], layout)?;
        Ok(Some(vec![y]))
    }
}

fn seed(r: &mut AttrReader<'_>) -> Result<u64, AttrError> {
    let a = r.defaulted("seed")?;
    r.seed(a)
}

pub(super) fn specs() -> Vec<OpSpec> {
    vec![
        OpSpec {
            name: "rand_like",
            defaults: |_| vec![("seed", AttrValue::Int(0))],
            parse: |r, _| Ok(Op::RandLike(RandLike { seed: seed(r)? })),
        },
        OpSpec {
            name: "dropout",
            defaults: |_| vec![("p", AttrValue::Float(0.5)), ("seed", AttrValue::Int(0))],
            parse: |r, _| {
                let a = r.defaulted("p")?;
                let p = r.float(a)?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(r.err(
                        a.value_span,
                        format!("dropout probability {p} is not in [0, 1]"),
                        "out of range",
                        None,
                    ));
                }
                Ok(Op::Dropout(Dropout { p, seed: seed(r)? }))
            },
        },
    ]
}
