//! Losses: `cross_entropy`.

use super::{one, AttrValue, Op, OpDef, OpSpec, ResultType};
use crate::dim::Dim;
use crate::dtype::DType;
use crate::infer::{arity, need_float, InferError};
use crate::rule::{FactorId, FactorKind, FactorRule};
use crate::types::{shape_string, TensorType};

/// `cross_entropy(logits, target) {ignore_index}`: mean over non-ignored targets; classes on
/// dim 1 (dim 0 for rank-1 logits), as torch.nn.functional.cross_entropy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CrossEntropy {
    pub ignore_index: i64,
}

impl CrossEntropy {
    /// The class dim of logits of rank `rank`.
    pub fn class_dim(rank: usize) -> usize {
        if rank == 1 {
            0
        } else {
            1
        }
    }
}

impl OpDef for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross_entropy"
    }
    fn attrs(&self) -> Vec<(&'static str, AttrValue)> {
        vec![("ignore_index", AttrValue::Int(self.ignore_index))]
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        arity("cross_entropy", xs, 2, 2)?;
        let (logits, target) = (xs[0], xs[1]);
        need_float("cross_entropy", logits, 0)?;
        if logits.rank() == 0 {
            return Err(InferError::new("`cross_entropy` needs logits of rank 1 or more").at(0));
        }
        let class_dim = CrossEntropy::class_dim(logits.rank());
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
        one(logits.dtype, Vec::new())
    }
    fn rule(&self, xs: &[&TensorType], _: &[Dim], _: usize) -> FactorRule {
        // The mean over kept targets divides by a global count; vocab- and token-parallel
        // losses need their own lowering, so every factor stays whole for now.
        let mut r = FactorRule::default();
        let logits: Vec<Vec<FactorId>> = xs[0]
            .shape
            .iter()
            .map(|d| r.dim_factor(d, FactorKind::Replicated))
            .collect();
        let mut target = logits.clone();
        target.remove(CrossEntropy::class_dim(xs[0].rank()));
        r.operands = vec![logits, target];
        r
    }
}

pub(super) fn specs() -> Vec<OpSpec> {
    vec![OpSpec {
        name: "cross_entropy",
        defaults: |_| vec![("ignore_index", AttrValue::Int(-100))],
        parse: |r, _| {
            let a = r.defaulted("ignore_index")?;
            Ok(Op::CrossEntropy(CrossEntropy {
                ignore_index: r.int(a)?,
            }))
        },
    }]
}
