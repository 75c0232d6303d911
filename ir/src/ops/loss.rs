//! Losses: `cross_entropy`, and the primitives it is written with for sharding: `pick` (the
//! target's logit) and `kept` (the targets not ignored).

use super::{
    one, AttrValue, BinaryOp, DimOf, GlobalContext, Op, OpDef, OpSpec, ReduceKind, ResultType,
    UnaryOp,
};
use crate::decompose::Expander;
use crate::dim::Dim;
use crate::dtype::DType;
use crate::graph::ValueId;
use crate::infer::{arity, need_float, InferError};
use crate::rule::{FactorId, FactorKind, FactorRule};
use crate::types::{shape_string, ReduceOp, TensorType};

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
        // Whole as one op: the compile pipeline writes it as its decomposition before sharding
        // (`decompose-before-sharding`), whose stages shard on their own.
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
    fn decompose_before_sharding(&self) -> bool {
        true
    }
    /// In f32: the row max `m`, `s = Σ exp(x - m)` over the classes, the target's logit `t`
    /// (`pick`, 0 where ignored) and the kept mask `k`; the loss is
    /// `Σ k·(log s + m) - Σ t` over `Σ k`. With the classes split each stage is a partial max
    /// or sum of one value per position (vocabulary parallelism): the logits are never gathered.
    fn decompose(&self, e: &mut Expander<'_>) -> Result<Option<Vec<ValueId>>, InferError> {
        let (Some(logits), Some(target)) = (e.operand(0), e.operand(1)) else {
            return Ok(None);
        };
        let c = CrossEntropy::class_dim(e.ty(logits).rank());
        let dtype = e.dtype(logits);
        let per_position = e.ty(target).shape.clone();
        let x = e.cast(logits, DType::F32)?;
        let m = e.reduce_keep(ReduceKind::Max, x, &[c])?;
        let spread = e.broadcast(m, x)?;
        let z = e.binary(BinaryOp::Sub, x, spread)?;
        let ez = e.unary(UnaryOp::Exp, z)?;
        let s = e.reduce_keep(ReduceKind::Sum, ez, &[c])?;
        let at = e.like(target);
        let s = e.reshape(s, per_position.clone(), at.clone())?;
        let m = e.reshape(m, per_position, at.clone())?;
        let lse = e.unary(UnaryOp::Log, s)?;
        let lse = e.binary(BinaryOp::Add, lse, m)?;
        let ignore_index = self.ignore_index;
        let t = e.add(
            Op::Pick(Pick {
                dim: c,
                ignore_index,
            }),
            &[logits, target],
            at.clone(),
        )?;
        let k = e.add(Op::Kept(Kept { ignore_index }), &[target], at)?;
        let kept_lse = e.binary(BinaryOp::Mul, lse, k)?;
        let per = e.binary(BinaryOp::Sub, kept_lse, t)?;
        let all: Vec<usize> = (0..e.ty(per).rank()).collect();
        let (total, count) = if all.is_empty() {
            (per, k)
        } else {
            (
                e.reduce(ReduceKind::Sum, per, &all)?,
                e.reduce(ReduceKind::Sum, k, &all)?,
            )
        };
        let mean = e.binary(BinaryOp::Div, total, count)?;
        Ok(Some(vec![e.cast(mean, dtype)?]))
    }
}

/// `pick(x, target) {dim, ignore_index}`: `x` at the target's index along `dim`, in f32, for
/// each position of `target` (`x`'s shape without `dim`): `torch.gather(x, dim,
/// target.unsqueeze(dim)).squeeze(dim)`, with 0 where the target is `ignore_index`. `x`'s `dim`
/// split makes a pending sum (a rank holding the target's index gives its value, the others 0):
/// vocabulary-parallel cross-entropy's target logit. A target outside `0..x.shape[dim]` (other
/// than `ignore_index`) is an error when it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pick {
    pub dim: usize,
    pub ignore_index: i64,
}

impl OpDef for Pick {
    fn name(&self) -> &'static str {
        "pick"
    }
    fn attrs(&self) -> Vec<(&'static str, AttrValue)> {
        vec![
            ("dim", AttrValue::Int(self.dim as i64)),
            ("ignore_index", AttrValue::Int(self.ignore_index)),
        ]
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        arity("pick", xs, 2, 2)?;
        let (x, target) = (xs[0], xs[1]);
        need_float("pick", x, 0)?;
        if self.dim >= x.rank() {
            return Err(InferError::new(format!(
                "`pick` along dim {} of a rank-{} tensor",
                self.dim,
                x.rank()
            ))
            .at(0));
        }
        let mut want = x.shape.clone();
        want.remove(self.dim);
        if target.dtype != DType::I64 || target.shape != want {
            return Err(InferError::new(format!(
                "`pick` needs i64 targets of shape {} ({} without dim {}), but got {}{}",
                shape_string(&want),
                x.shape_string(),
                self.dim,
                target.dtype,
                target.shape_string()
            ))
            .at(1));
        }
        one(DType::F32, want)
    }
    fn rule(&self, xs: &[&TensorType], _: &[Dim], _: usize) -> FactorRule {
        let mut r = FactorRule::default();
        let x: Vec<Vec<FactorId>> = xs[0]
            .shape
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let kind = if i == self.dim {
                    FactorKind::Reduction(ReduceOp::Sum)
                } else {
                    FactorKind::Pass
                };
                r.dim_factor(d, kind)
            })
            .collect();
        let mut target = x.clone();
        target.remove(self.dim);
        r.operands = vec![x, target.clone()];
        r.result = target;
        r
    }
    fn global_context(&self, _: usize) -> GlobalContext {
        // The global index of each of x's `dim` entries the rank holds.
        GlobalContext {
            positions: Some((0, DimOf::FromStart(self.dim))),
            ..GlobalContext::default()
        }
    }
}

/// `kept(target) {ignore_index}`: f32 1 where the target is not `ignore_index`, else 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kept {
    pub ignore_index: i64,
}

impl OpDef for Kept {
    fn name(&self) -> &'static str {
        "kept"
    }
    fn attrs(&self) -> Vec<(&'static str, AttrValue)> {
        vec![("ignore_index", AttrValue::Int(self.ignore_index))]
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        arity("kept", xs, 1, 1)?;
        if xs[0].dtype != DType::I64 {
            return Err(InferError::new(format!(
                "`kept` needs i64 targets, but got {}",
                xs[0].dtype
            ))
            .at(0));
        }
        one(DType::F32, xs[0].shape.clone())
    }
    fn rule(&self, xs: &[&TensorType], _: &[Dim], _: usize) -> FactorRule {
        let mut r = FactorRule::default();
        let dims: Vec<Vec<FactorId>> = xs[0]
            .shape
            .iter()
            .map(|d| r.dim_factor(d, FactorKind::Pass))
            .collect();
        r.operands = vec![dims.clone()];
        r.result = dims;
        r
    }
}

fn ignore_default(_: &[&TensorType]) -> Vec<(&'static str, AttrValue)> {
    vec![("ignore_index", AttrValue::Int(-100))]
}

pub(super) fn specs() -> Vec<OpSpec> {
    vec![
        OpSpec {
            name: "cross_entropy",
            defaults: ignore_default,
            parse: |r, _| {
                let a = r.defaulted("ignore_index")?;
                Ok(Op::CrossEntropy(CrossEntropy {
                    ignore_index: r.int(a)?,
                }))
            },
        },
        OpSpec {
            name: "pick",
            defaults: ignore_default,
            parse: |r, xs| {
                let rank = xs.first().map(|t| t.rank()).unwrap_or(0);
                let a = r.required("dim", "dim = 1")?;
                let dim = r.axis(a, &a.value, rank)?;
                let a = r.defaulted("ignore_index")?;
                Ok(Op::Pick(Pick {
                    dim,
                    ignore_index: r.int(a)?,
                }))
            },
        },
        OpSpec {
            name: "kept",
            defaults: ignore_default,
            parse: |r, _| {
                let a = r.defaulted("ignore_index")?;
                Ok(Op::Kept(Kept {
                    ignore_index: r.int(a)?,
                }))
            },
        },
    ]
}
