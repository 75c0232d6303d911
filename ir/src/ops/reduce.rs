//! Reductions over dims (`sum`, `mean`, `max`, `min`) and `softmax`.

use super::{one, AttrValue, BinaryOp, GlobalContext, Op, OpDef, OpSpec, ResultType, UnaryOp};
use crate::decompose::{count_of, Expander};
use crate::dim::Dim;
use crate::dtype::DType;
use crate::graph::ValueId;
use crate::infer::{arity, check_axis, need_float, InferError};
use crate::rule::{FactorKind, FactorRule};
use crate::syntax::attrs::{AttrError, AttrReader};
use crate::types::{ReduceOp, TensorType};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReduceKind {
    Sum,
    Mean,
    Max,
    Min,
}

pub const REDUCE_OPS: [(ReduceKind, &str); 4] = [
    (ReduceKind::Sum, "sum"),
    (ReduceKind::Mean, "mean"),
    (ReduceKind::Max, "max"),
    (ReduceKind::Min, "min"),
];

impl ReduceKind {
    /// The reduction a split of a reduced dim leaves pending (a mean is a sum, then a division
    /// by the global count).
    pub fn pending(self) -> ReduceOp {
        match self {
            ReduceKind::Sum | ReduceKind::Mean => ReduceOp::Sum,
            ReduceKind::Max => ReduceOp::Max,
            ReduceKind::Min => ReduceOp::Min,
        }
    }
}

/// `sum(x) {dims = [..], keepdim = false}`, also `mean`, `max`, `min`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reduce {
    pub kind: ReduceKind,
    pub dims: Vec<usize>,
    pub keepdim: bool,
}

impl OpDef for Reduce {
    fn name(&self) -> &'static str {
        REDUCE_OPS
            .iter()
            .find(|(k, _)| *k == self.kind)
            .map(|(_, n)| *n)
            .unwrap_or("?")
    }
    fn attrs(&self) -> Vec<(&'static str, AttrValue)> {
        let mut v = vec![("dims", AttrValue::dims(&self.dims))];
        if self.keepdim {
            v.push(("keepdim", AttrValue::Bool(true)));
        }
        v
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        let name = self.name();
        arity(name, xs, 1, 1)?;
        let x = xs[0];
        if x.dtype == DType::Bool || (self.kind == ReduceKind::Mean && !x.dtype.is_float()) {
            return Err(InferError::new(format!("`{name}` is not defined on {}", x.dtype)).at(0));
        }
        let mut seen = vec![false; x.rank()];
        for &d in &self.dims {
            check_axis(name, x, d, 0)?;
            if std::mem::replace(&mut seen[d], true) {
                return Err(InferError::new(format!("`{name}` names dim {d} twice")));
            }
        }
        let mut shape = Vec::new();
        for (i, e) in x.shape.iter().enumerate() {
            if !seen[i] {
                shape.push(e.clone());
            } else if self.keepdim {
                shape.push(Dim::constant(1));
            }
        }
        one(x.dtype, shape)
    }
    fn rule(&self, xs: &[&TensorType], _: &[Dim], _: usize) -> FactorRule {
        let mut r = FactorRule::default();
        let mut operand = Vec::new();
        for (i, d) in xs[0].shape.iter().enumerate() {
            if self.dims.contains(&i) {
                operand.push(r.dim_factor(d, FactorKind::Reduction(self.kind.pending())));
                if self.keepdim {
                    r.result.push(Vec::new());
                }
            } else {
                let f = r.dim_factor(d, FactorKind::Pass);
                r.result.push(f.clone());
                operand.push(f);
            }
        }
        r.operands = vec![operand];
        r
    }
    fn global_context(&self, _: usize) -> GlobalContext {
        GlobalContext {
            reduced_count: self.kind == ReduceKind::Mean,
            ..GlobalContext::default()
        }
    }
    /// A mean is the sum (in f32) times `1 / count`, the global count: where a reduced dim is
    /// split, the sum is pending and so is its product with the (whole) inverse count.
    fn decompose(&self, e: &mut Expander<'_>) -> Result<Option<Vec<ValueId>>, InferError> {
        let Some(x) = e.operand(0).filter(|_| self.kind == ReduceKind::Mean) else {
            return Ok(None);
        };
        let dtype = e.dtype(x);
        let count = count_of(&e.ty(x).shape, &self.dims)?;
        let xf = e.cast(x, DType::F32)?;
        let mean = e.result_layout(0, x);
        let sum = Op::Reduce(Reduce {
            kind: ReduceKind::Sum,
            ..self.clone()
        });
        let sum = e.add(sum, &[xf], mean.clone())?;
        let inv = e.inverse_count(count, sum)?;
        let y = e.add(Op::Binary(BinaryOp::Mul), &[sum, inv], mean)?;
        Ok(Some(vec![e.cast(y, dtype)?]))
    }
}

/// `softmax(x) {dim = d}`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Softmax {
    pub dim: usize,
}

impl OpDef for Softmax {
    fn name(&self) -> &'static str {
        "softmax"
    }
    fn attrs(&self) -> Vec<(&'static str, AttrValue)> {
        vec![("dim", AttrValue::Int(self.dim as i64))]
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        arity("softmax", xs, 1, 1)?;
        need_float("softmax", xs[0], 0)?;
        check_axis("softmax", xs[0], self.dim, 0)?;
        one(xs[0].dtype, xs[0].shape.clone())
    }
    fn rule(&self, _: &[&TensorType], out: &[Dim], _: usize) -> FactorRule {
        let mut r = FactorRule::default();
        r.result = out
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let kind = if i == self.dim {
                    FactorKind::Replicated
                } else {
                    FactorKind::Pass
                };
                r.dim_factor(d, kind)
            })
            .collect();
        r.operands = vec![r.result.clone()];
        r
    }
    /// `exp(x - max(x)) / sum(exp(x - max(x)))` along the dim, in f32.
    fn decompose(&self, e: &mut Expander<'_>) -> Result<Option<Vec<ValueId>>, InferError> {
        let Some(x) = e.operand(0) else {
            return Ok(None);
        };
        let dtype = e.dtype(x);
        let xf = e.cast(x, DType::F32)?;
        let max = e.reduce_keep(ReduceKind::Max, xf, &[self.dim])?;
        let max = e.broadcast(max, xf)?;
        let shifted = e.binary(BinaryOp::Sub, xf, max)?;
        let exp = e.unary(UnaryOp::Exp, shifted)?;
        let sum = e.reduce_keep(ReduceKind::Sum, exp, &[self.dim])?;
        let sum = e.broadcast(sum, exp)?;
        let y = e.binary(BinaryOp::Div, exp, sum)?;
        Ok(Some(vec![e.cast(y, dtype)?]))
    }
}

fn parse_reduce(r: &mut AttrReader<'_>, xs: &[&TensorType]) -> Result<Op, AttrError> {
    let kind = REDUCE_OPS
        .iter()
        .find(|(_, n)| *n == r.op())
        .map(|(k, _)| *k)
        .ok_or_else(|| r.unknown())?;
    let rank = xs.first().map(|t| t.rank()).unwrap_or(0);
    let dims = r.required("dims", "dims = [-1]")?;
    let dims = r.axes(dims, rank)?;
    let a = r.defaulted("keepdim")?;
    let keepdim = r.bool(a)?;
    Ok(Op::Reduce(Reduce {
        kind,
        dims,
        keepdim,
    }))
}

pub(super) fn specs() -> Vec<OpSpec> {
    let mut out: Vec<OpSpec> = REDUCE_OPS
        .iter()
        .map(|&(_, name)| OpSpec {
            name,
            defaults: |_| vec![("keepdim", AttrValue::Bool(false))],
            parse: parse_reduce,
        })
        .collect();
    out.push(OpSpec {
        name: "softmax",
        defaults: super::no_defaults,
        parse: |r, xs| {
            let rank = xs.first().map(|t| t.rank()).unwrap_or(0);
            let a = r.required("dim", "dim = -1")?;
            Ok(Op::Softmax(Softmax {
                dim: r.axis(a, &a.value, rank)?,
            }))
        },
    });
    out
}
