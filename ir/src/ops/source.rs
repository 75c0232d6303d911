//! Ops with no operands: parameters, `full` and `inv_count`. Any rank makes its part alone, so
//! every factor of their result is new.

use super::{float_key, keyed, one, AttrValue, Op, OpDef, OpSpec, ResultType};
use crate::dim::Dim;
use crate::dtype::DType;
use crate::infer::{arity, InferError};
use crate::rule::{FactorKind, FactorRule};
use crate::types::TensorType;

fn new_factors(out: &[Dim]) -> FactorRule {
    let mut r = FactorRule::default();
    r.result = out
        .iter()
        .map(|d| r.dim_factor(d, FactorKind::New))
        .collect();
    r
}

/// A function parameter: the `index`-th. Its type is declared, not inferred.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Param {
    pub index: usize,
}

impl OpDef for Param {
    fn name(&self) -> &'static str {
        "param"
    }
    fn infer(&self, _: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        Err(InferError::new(
            "parameters have declared types, not inferred ones",
        ))
    }
    fn rule(&self, _: &[&TensorType], out: &[Dim], _: usize) -> FactorRule {
        new_factors(out)
    }
}

/// `full() {shape, value, dtype}`
#[derive(Clone, Debug)]
pub struct Full {
    pub shape: Vec<Dim>,
    pub value: f64,
    pub dtype: DType,
}
keyed!(Full, |s| (s.shape.clone(), float_key(s.value), s.dtype));

impl OpDef for Full {
    fn name(&self) -> &'static str {
        "full"
    }
    fn attrs(&self) -> Vec<(&'static str, AttrValue)> {
        vec![
            ("shape", AttrValue::shape(&self.shape)),
            ("value", AttrValue::Float(self.value)),
            ("dtype", AttrValue::Ident(self.dtype.name().into())),
        ]
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        arity("full", xs, 0, 0)?;
        one(self.dtype, self.shape.clone())
    }
    fn rule(&self, _: &[&TensorType], out: &[Dim], _: usize) -> FactorRule {
        new_factors(out)
    }
    fn for_rank(&self, local: &[Dim]) -> Option<Op> {
        Some(Op::Full(Full {
            shape: local.to_vec(),
            ..self.clone()
        }))
    }
}

/// `inv_count() {count}`: `1 / count` as an f32 scalar, `count` a dim expression over the
/// program's symbols. A mean's decomposition divides by it: the count is the global one on every
/// rank, whatever the split, and is known only once the symbols are bound.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InvCount {
    pub count: Dim,
}

impl OpDef for InvCount {
    fn name(&self) -> &'static str {
        "inv_count"
    }
    fn attrs(&self) -> Vec<(&'static str, AttrValue)> {
        vec![("count", AttrValue::Dim(self.count.clone()))]
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        arity("inv_count", xs, 0, 0)?;
        if self.count.as_const().is_some_and(|n| n <= 0) {
            return Err(InferError::new(format!(
                "`inv_count` needs a positive count, got {}",
                self.count
            )));
        }
        one(DType::F32, Vec::new())
    }
    fn rule(&self, _: &[&TensorType], out: &[Dim], _: usize) -> FactorRule {
        new_factors(out)
    }
}

pub(super) fn specs() -> Vec<OpSpec> {
    vec![
        OpSpec {
            name: "inv_count",
            defaults: super::no_defaults,
            parse: |r, _| {
                let a = r.required("count", "count = S * 64")?;
                let count = r.dim_value(a, &a.value)?;
                Ok(Op::InvCount(InvCount { count }))
            },
        },
        OpSpec {
            name: "full",
            defaults: |_| vec![("dtype", AttrValue::Ident("f32".into()))],
            parse: |r, _| {
                let example = "shape = [B, S], value = 0.0";
                let a = r.required("shape", example)?;
                let shape = r.shape(a)?;
                let a = r.required("value", example)?;
                let value = r.float(a)?;
                let a = r.defaulted("dtype")?;
                let dtype = r.dtype(a)?;
                Ok(Op::Full(Full {
                    shape,
                    value,
                    dtype,
                }))
            },
        },
    ]
}
