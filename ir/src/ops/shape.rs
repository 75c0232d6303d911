//! Ops that move elements without computing: `broadcast`, `reshape`, `permute`, `slice`,
//! `concat`, `split`, and the row gather `embedding`.

use super::{one, AttrValue, DimOf, GlobalContext, Op, OpDef, OpSpec, ResultType};
use crate::dim::Dim;
use crate::dtype::DType;
use crate::infer::{arity, broadcast_shapes, check_axis, resolve_reshape, same_dtype, InferError};
use crate::rule::{reshape_factors, FactorId, FactorKind, FactorRule, PartialFlow};
use crate::syntax::attrs::{AttrError, AttrReader};
use crate::types::{shape_string, ReduceOp, TensorType};

/// `broadcast(x) {shape = [...]}`: numpy rules, aligned from the right. `implicit` marks the
/// ones the parser made for a broadcasting operand; the source printer folds them back.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Broadcast {
    pub shape: Vec<Dim>,
    pub implicit: bool,
}

impl OpDef for Broadcast {
    fn name(&self) -> &'static str {
        "broadcast"
    }
    fn attrs(&self) -> Vec<(&'static str, AttrValue)> {
        vec![("shape", AttrValue::shape(&self.shape))]
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        arity("broadcast", xs, 1, 1)?;
        let x = xs[0];
        let ok = x.rank() <= self.shape.len()
            && broadcast_shapes(&[&x.shape, &self.shape])
                .map(|s| s == self.shape)
                .unwrap_or(false);
        if !ok {
            return Err(InferError::new(format!(
                "cannot broadcast {} to {}",
                x.shape_string(),
                shape_string(&self.shape)
            ))
            .at(0)
            .hint("dims are aligned from the right; each must equal the target's or be 1"));
        }
        one(x.dtype, self.shape.clone())
    }
    fn rule(&self, xs: &[&TensorType], out: &[Dim], _: usize) -> FactorRule {
        use FactorKind::*;
        let mut r = FactorRule::default();
        let x = xs[0];
        let offset = out.len() - x.rank();
        let mut operand = Vec::new();
        for (i, d) in out.iter().enumerate() {
            let kept = i >= offset && x.shape[i - offset] == *d;
            let f = r.dim_factor(d, if kept { Pass } else { New });
            if i >= offset {
                operand.push(if kept { f.clone() } else { Vec::new() });
            }
            r.result.push(f);
        }
        r.operands = vec![operand];
        r
    }
    fn for_rank(&self, local: &[Dim]) -> Option<Op> {
        Some(Op::Broadcast(Broadcast {
            shape: local.to_vec(),
            implicit: self.implicit,
        }))
    }
}

/// `reshape(x) {shape = [...]}`: row-major, same element count.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reshape {
    pub shape: Vec<Dim>,
}

impl OpDef for Reshape {
    fn name(&self) -> &'static str {
        "reshape"
    }
    fn attrs(&self) -> Vec<(&'static str, AttrValue)> {
        vec![("shape", AttrValue::shape(&self.shape))]
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        arity("reshape", xs, 1, 1)?;
        let resolved = resolve_reshape(&xs[0].shape, &self.shape)?;
        one(xs[0].dtype, resolved)
    }
    fn rule(&self, xs: &[&TensorType], out: &[Dim], _: usize) -> FactorRule {
        let mut r = FactorRule::default();
        let (operand, result) = reshape_factors(&mut r, &xs[0].shape, out);
        r.operands = vec![operand];
        r.result = result;
        r.carries_partial = PartialFlow::Moves;
        r
    }
    fn for_rank(&self, local: &[Dim]) -> Option<Op> {
        Some(Op::Reshape(Reshape {
            shape: local.to_vec(),
        }))
    }
}

/// `permute(x) {dims = [...]}`: result dim `i` is operand dim `perm[i]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Permute {
    pub perm: Vec<usize>,
}

impl OpDef for Permute {
    fn name(&self) -> &'static str {
        "permute"
    }
    fn attrs(&self) -> Vec<(&'static str, AttrValue)> {
        vec![("dims", AttrValue::dims(&self.perm))]
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        arity("permute", xs, 1, 1)?;
        let x = xs[0];
        let mut sorted = self.perm.clone();
        sorted.sort_unstable();
        if sorted != (0..x.rank()).collect::<Vec<_>>() {
            return Err(InferError::new(format!(
                "`permute` dims {:?} are not a permutation of the {} dims of {}",
                self.perm,
                x.rank(),
                x.shape_string()
            ))
            .at(0));
        }
        one(
            x.dtype,
            self.perm.iter().map(|&p| x.shape[p].clone()).collect(),
        )
    }
    fn rule(&self, xs: &[&TensorType], _: &[Dim], _: usize) -> FactorRule {
        let mut r = FactorRule::default();
        let operand: Vec<Vec<FactorId>> = xs[0]
            .shape
            .iter()
            .map(|d| r.dim_factor(d, FactorKind::Pass))
            .collect();
        r.result = self.perm.iter().map(|&p| operand[p].clone()).collect();
        r.operands = vec![operand];
        r.carries_partial = PartialFlow::Moves;
        r
    }
}

/// `slice(x) {dim, start, end, step}`: elements `start, start+step, … < end` of `dim`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slice {
    pub dim: usize,
    pub start: Dim,
    pub end: Dim,
    pub step: i64,
}

/// Dim `dim` is whole in the operand and the result (a piece would need its global offset);
/// every other dim passes.
fn whole_dim_rule(dim: usize, operand: &[Dim], out: &[Dim]) -> FactorRule {
    use FactorKind::*;
    let mut r = FactorRule::default();
    let mut dims = Vec::new();
    for (i, d) in operand.iter().enumerate() {
        if i == dim {
            dims.push(r.dim_factor(d, Replicated));
            let f = r.dim_factor(&out[i], Replicated);
            r.result.push(f);
        } else {
            let f = r.dim_factor(d, Pass);
            r.result.push(f.clone());
            dims.push(f);
        }
    }
    r.operands = vec![dims];
    r
}

impl OpDef for Slice {
    fn name(&self) -> &'static str {
        "slice"
    }
    fn attrs(&self) -> Vec<(&'static str, AttrValue)> {
        vec![
            ("dim", AttrValue::Int(self.dim as i64)),
            ("start", AttrValue::Dim(self.start.clone())),
            ("end", AttrValue::Dim(self.end.clone())),
            ("step", AttrValue::Int(self.step)),
        ]
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        let Slice {
            dim,
            start,
            end,
            step,
        } = self;
        arity("slice", xs, 1, 1)?;
        let x = xs[0];
        check_axis("slice", x, *dim, 0)?;
        if *step < 1 {
            return Err(InferError::new(format!(
                "`slice` step must be 1 or more, got {step}"
            )));
        }
        let extent = &x.shape[*dim];
        if let (Some(s), Some(e)) = (start.as_const(), end.as_const()) {
            if s < 0 || e < s {
                return Err(InferError::new(format!(
                    "`slice` needs 0 <= start <= end, got start {s}, end {e}"
                )));
            }
        }
        if let (Some(e), Some(n)) = (end.as_const(), extent.as_const()) {
            if e > n {
                return Err(InferError::new(format!(
                    "`slice` end {e} is past the dim's extent {n}"
                ))
                .at(0));
            }
        }
        let len = end.sub(start).map_err(|e| InferError::new(e.to_string()))?;
        let out = match len.as_const() {
            Some(n) => Dim::constant((n + step - 1) / step),
            None if *step == 1 => len,
            None => len
                .div(&Dim::constant(*step))
                .map_err(|e| InferError::new(e.to_string()))?,
        };
        let mut shape = x.shape.clone();
        shape[*dim] = out;
        one(x.dtype, shape)
    }
    fn rule(&self, xs: &[&TensorType], out: &[Dim], _: usize) -> FactorRule {
        whole_dim_rule(self.dim, &xs[0].shape, out)
    }
}

/// `concat(a, b, …) {dim}`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Concat {
    pub dim: usize,
}

impl OpDef for Concat {
    fn name(&self) -> &'static str {
        "concat"
    }
    fn attrs(&self) -> Vec<(&'static str, AttrValue)> {
        vec![("dim", AttrValue::Int(self.dim as i64))]
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        let dim = self.dim;
        arity("concat", xs, 1, usize::MAX)?;
        let idx: Vec<usize> = (0..xs.len()).collect();
        let dt = same_dtype("concat", xs, &idx)?;
        check_axis("concat", xs[0], dim, 0)?;
        let mut total = Dim::constant(0);
        for (i, x) in xs.iter().enumerate() {
            let mut same = x.rank() == xs[0].rank();
            for k in 0..x.rank().min(xs[0].rank()) {
                same &= k == dim || x.shape[k] == xs[0].shape[k];
            }
            if !same {
                return Err(InferError::new(format!(
                    "`concat` along dim {dim} needs shapes equal in every other dim, but got {} and {}",
                    xs[0].shape_string(),
                    x.shape_string()
                ))
                .at(i));
            }
            total = total
                .add(&x.shape[dim])
                .map_err(|e| InferError::new(e.to_string()))?;
        }
        let mut shape = xs[0].shape.clone();
        shape[dim] = total;
        one(dt, shape)
    }
    fn rule(&self, xs: &[&TensorType], out: &[Dim], _: usize) -> FactorRule {
        let mut r = FactorRule::default();
        let shared: Vec<Option<Vec<FactorId>>> = out
            .iter()
            .enumerate()
            .map(|(i, d)| (i != self.dim).then(|| r.dim_factor(d, FactorKind::Pass)))
            .collect();
        for x in xs {
            let dims = shared
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    s.clone()
                        .unwrap_or_else(|| r.dim_factor(&x.shape[i], FactorKind::Replicated))
                })
                .collect();
            r.operands.push(dims);
        }
        r.result = shared
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.clone()
                    .unwrap_or_else(|| r.dim_factor(&out[i], FactorKind::Replicated))
            })
            .collect();
        r
    }
}

/// `%a, %b, … = split(x) {dim, sizes}`: consecutive pieces of `dim` with the given extents
/// (which may differ: Qwen's q, k and v widths), one result each. Result `k` is
/// [`Split::piece`]`(k)`, a slice.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Split {
    pub dim: usize,
    pub sizes: Vec<Dim>,
}

impl Split {
    /// Result `k` as the slice it is.
    pub fn piece(&self, k: usize) -> Slice {
        let mut start = Dim::constant(0);
        for s in &self.sizes[..k.min(self.sizes.len())] {
            // Sums of extents that passed inference do not overflow.
            start = start.add(s).unwrap_or(start.clone());
        }
        let end = match self.sizes.get(k) {
            Some(s) => start.add(s).unwrap_or(start.clone()),
            None => start.clone(),
        };
        Slice {
            dim: self.dim,
            start,
            end,
            step: 1,
        }
    }
}

impl OpDef for Split {
    fn name(&self) -> &'static str {
        "split"
    }
    fn attrs(&self) -> Vec<(&'static str, AttrValue)> {
        vec![
            ("dim", AttrValue::Int(self.dim as i64)),
            ("sizes", AttrValue::shape(&self.sizes)),
        ]
    }
    fn num_results(&self) -> usize {
        self.sizes.len()
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        arity("split", xs, 1, 1)?;
        let x = xs[0];
        check_axis("split", x, self.dim, 0)?;
        if self.sizes.is_empty() {
            return Err(InferError::new("`split` needs at least one size"));
        }
        let mut total = Dim::constant(0);
        for s in &self.sizes {
            if s.as_const().is_some_and(|n| n < 1) {
                return Err(InferError::new(format!(
                    "`split` sizes must be 1 or more, got {s}"
                )));
            }
            total = total.add(s).map_err(|e| InferError::new(e.to_string()))?;
        }
        let extent = &x.shape[self.dim];
        if total != *extent {
            return Err(InferError::new(format!(
                "`split` sizes add up to {total}, but dim {} of {} is {extent}",
                self.dim,
                x.shape_string()
            ))
            .at(0)
            .hint("the sizes must cover the dim exactly"));
        }
        Ok(self
            .sizes
            .iter()
            .map(|s| {
                let mut shape = x.shape.clone();
                shape[self.dim] = s.clone();
                (x.dtype, shape)
            })
            .collect())
    }
    fn rule(&self, xs: &[&TensorType], out: &[Dim], _: usize) -> FactorRule {
        whole_dim_rule(self.dim, &xs[0].shape, out)
    }
}

/// `embedding(ids, weight)`: `weight[ids]`, `ids: i64[...]`, `weight: [V, D]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Embedding;

impl OpDef for Embedding {
    fn name(&self) -> &'static str {
        "embedding"
    }
    fn infer(&self, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
        arity("embedding", xs, 2, 2)?;
        let (ids, w) = (xs[0], xs[1]);
        if ids.dtype != DType::I64 {
            return Err(InferError::new(format!(
                "`embedding` indices must be i64, but got {}",
                ids.dtype
            ))
            .at(0));
        }
        if w.rank() != 2 {
            return Err(InferError::new(format!(
                "`embedding` weight must be [num, dim], but got {}",
                w.shape_string()
            ))
            .at(1));
        }
        let mut shape = ids.shape.clone();
        shape.push(w.shape[1].clone());
        one(w.dtype, shape)
    }
    fn rule(&self, xs: &[&TensorType], _: &[Dim], _: usize) -> FactorRule {
        use FactorKind::*;
        let mut r = FactorRule::default();
        // A rank holding some of the table's rows looks up the ids it holds and writes zeros for
        // the others (vocabulary parallelism): the rows are a sum over the ranks.
        let ids: Vec<Vec<FactorId>> = xs[0].shape.iter().map(|d| r.dim_factor(d, Pass)).collect();
        let rows = r.dim_factor(&xs[1].shape[0], Reduction(ReduceOp::Sum));
        let cols = r.dim_factor(&xs[1].shape[1], Pass);
        r.operands = vec![ids.clone(), vec![rows, cols.clone()]];
        r.result = ids;
        r.result.push(cols);
        r
    }
    fn global_context(&self, _: usize) -> GlobalContext {
        // The global index of each table row the rank holds: the ids it looks up.
        GlobalContext {
            positions: Some((1, DimOf::FromStart(0))),
            ..GlobalContext::default()
        }
    }
}

fn rank_of(xs: &[&TensorType]) -> usize {
    xs.first().map(|t| t.rank()).unwrap_or(0)
}

fn parse_slice(r: &mut AttrReader<'_>, xs: &[&TensorType]) -> Result<Op, AttrError> {
    let dim_attr = r.required("dim", "dim = 2, start = 0, end = 1")?;
    let dim = r.axis(dim_attr, &dim_attr.value, rank_of(xs))?;
    let extent = xs
        .first()
        .and_then(|t| t.shape.get(dim).cloned())
        .unwrap_or_default();
    let a = r.defaulted("start")?;
    let start = r.dim_value(a, &a.value)?;
    let end = match r.get("end") {
        Some(a) => r.dim_value(a, &a.value)?,
        None => extent,
    };
    let a = r.defaulted("step")?;
    let step = r.int(a)?;
    Ok(Op::Slice(Slice {
        dim,
        start,
        end,
        step,
    }))
}

pub(super) fn specs() -> Vec<OpSpec> {
    vec![
        OpSpec {
            name: "broadcast",
            defaults: super::no_defaults,
            parse: |r, _| {
                let a = r.required("shape", "shape = [B, S, 768]")?;
                Ok(Op::Broadcast(Broadcast {
                    shape: r.shape(a)?,
                    implicit: false,
                }))
            },
        },
        OpSpec {
            name: "reshape",
            defaults: super::no_defaults,
            parse: |r, _| {
                let a = r.required("shape", "shape = [B, S, 16, 48]")?;
                Ok(Op::Reshape(Reshape { shape: r.shape(a)? }))
            },
        },
        OpSpec {
            name: "permute",
            defaults: super::no_defaults,
            parse: |r, xs| {
                let a = r.required("dims", "dims = [0, 2, 1, 3]")?;
                Ok(Op::Permute(Permute {
                    perm: r.axes(a, rank_of(xs))?,
                }))
            },
        },
        OpSpec {
            name: "slice",
            // `end` is always written: a slice reads better with both bounds in sight.
            defaults: |_| {
                vec![
                    ("start", AttrValue::Dim(Dim::constant(0))),
                    ("step", AttrValue::Int(1)),
                ]
            },
            parse: parse_slice,
        },
        OpSpec {
            name: "concat",
            defaults: super::no_defaults,
            parse: |r, xs| {
                let a = r.required("dim", "dim = 0")?;
                Ok(Op::Concat(Concat {
                    dim: r.axis(a, &a.value, rank_of(xs))?,
                }))
            },
        },
        OpSpec {
            name: "split",
            defaults: super::no_defaults,
            parse: |r, xs| {
                let example = "dim = -1, sizes = [768, 256, 256]";
                let a = r.required("dim", example)?;
                let dim = r.axis(a, &a.value, rank_of(xs))?;
                let a = r.required("sizes", example)?;
                Ok(Op::Split(Split {
                    dim,
                    sizes: r.shape(a)?,
                }))
            },
        },
        OpSpec {
            name: "embedding",
            defaults: super::no_defaults,
            parse: |_, _| Ok(Op::Embedding(Embedding)),
        },
    ]
}
