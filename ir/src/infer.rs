//! Shape and dtype inference: each op's definition (`ops/`) infers its results; this module has
//! the error type and the checks those definitions share. The builder, the parser and the
//! verifier all call [`infer`], so a graph that passed the verifier has exactly these types.

use crate::dim::Dim;
use crate::dtype::DType;
use crate::ops::{Op, ResultType};
use crate::types::{shape_string, TensorType};

/// Why an op's operands do not fit it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InferError {
    pub message: String,
    /// The operand the problem is with, when it is one operand.
    pub operand: Option<usize>,
    pub hint: Option<String>,
}

impl InferError {
    pub fn new(message: impl Into<String>) -> InferError {
        InferError {
            message: message.into(),
            operand: None,
            hint: None,
        }
    }
    pub fn at(mut self, operand: usize) -> InferError {
        self.operand = Some(operand);
        self
    }
    pub fn hint(mut self, hint: impl Into<String>) -> InferError {
        self.hint = Some(hint.into());
        self
    }
}

pub type InferResult = Result<(DType, Vec<Dim>), InferError>;

/// Largest extent any single dim, and any tensor's element count, may have where known at
/// compile time: 2^40. Larger values are almost surely typos and could not be allocated.
pub const MAX_ELEMENTS: i64 = 1 << 40;

pub(crate) fn arity(
    name: &str,
    xs: &[&TensorType],
    min: usize,
    max: usize,
) -> Result<(), InferError> {
    if xs.len() < min || xs.len() > max {
        let want = if min == max {
            format!("{min}")
        } else {
            format!("{min} to {max}")
        };
        return Err(InferError::new(format!(
            "`{name}` takes {want} operand{}, but {} {} given",
            if max == 1 { "" } else { "s" },
            xs.len(),
            if xs.len() == 1 { "was" } else { "were" }
        )));
    }
    Ok(())
}

pub(crate) fn need_float(name: &str, x: &TensorType, i: usize) -> Result<(), InferError> {
    if !x.dtype.is_float() {
        return Err(InferError::new(format!(
            "`{name}` needs a floating-point operand, but this one is {}",
            x.dtype
        ))
        .at(i)
        .hint("cast it first: `cast(…) {dtype = f32}`".to_string()));
    }
    Ok(())
}

pub(crate) fn same_dtype(
    name: &str,
    xs: &[&TensorType],
    idx: &[usize],
) -> Result<DType, InferError> {
    let first = xs[idx[0]].dtype;
    for &i in &idx[1..] {
        if xs[i].dtype != first {
            return Err(InferError::new(format!(
                "`{name}` needs operands of one dtype, but got {} and {}",
                first, xs[i].dtype
            ))
            .at(i)
            .hint("tpc never promotes dtypes implicitly; insert a `cast`"));
        }
    }
    Ok(first)
}

pub(crate) fn check_axis(name: &str, x: &TensorType, d: usize, i: usize) -> Result<(), InferError> {
    if d >= x.rank() {
        return Err(InferError::new(format!(
            "`{name}` names dim {d}, but its operand has rank {} ({})",
            x.rank(),
            x.shape_string()
        ))
        .at(i));
    }
    Ok(())
}

/// Product of dims; `None` on overflow.
pub fn numel(shape: &[Dim]) -> Option<Dim> {
    let mut acc = Dim::constant(1);
    for d in shape {
        acc = acc.mul(d).ok()?;
    }
    Some(acc)
}

/// The numpy broadcast of several shapes, aligned from the right.
pub fn broadcast_shapes(shapes: &[&[Dim]]) -> Result<Vec<Dim>, String> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let one = Dim::constant(1);
    let mut out = Vec::with_capacity(rank);
    for k in 0..rank {
        let mut d = one.clone();
        for s in shapes {
            if k + s.len() < rank {
                continue;
            }
            let e = &s[k + s.len() - rank];
            if *e == one || *e == d {
                continue;
            }
            if d == one {
                d = e.clone();
            } else {
                let all: Vec<String> = shapes.iter().map(|s| shape_string(s)).collect();
                return Err(format!(
                    "shapes {} do not broadcast: dim {k} is {d} in one and {e} in another",
                    all.join(" and ")
                ));
            }
        }
        out.push(d);
    }
    Ok(out)
}

pub(crate) fn same_shapes(name: &str, xs: &[&TensorType]) -> Result<(), InferError> {
    for (i, x) in xs.iter().enumerate().skip(1) {
        if x.shape != xs[0].shape {
            return Err(InferError::new(format!(
                "`{name}` needs equal shapes in the graph, but got {} and {}",
                xs[0].shape_string(),
                x.shape_string()
            ))
            .at(i)
            .hint("insert an explicit `broadcast`"));
        }
    }
    Ok(())
}

/// The dtype and shape of every result of `op` applied to operands of types `xs` (the op's own
/// definition answers: [`crate::ops::OpDef::infer`]).
pub fn infer_results(op: &Op, xs: &[&TensorType]) -> Result<Vec<ResultType>, InferError> {
    op.def().infer(xs)
}

/// The dtype and shape of result `result` of `op` applied to operands of types `xs`.
pub fn infer(op: &Op, xs: &[&TensorType], result: usize) -> InferResult {
    let mut all = infer_results(op, xs)?;
    if result >= all.len() {
        return Err(InferError::new(format!(
            "`{}` has {} result{}, not {}",
            op.name(),
            all.len(),
            if all.len() == 1 { "" } else { "s" },
            result + 1
        )));
    }
    Ok(all.swap_remove(result))
}

/// The reshape's target with one `-1` resolved, checked to hold as many elements as `from`.
pub fn resolve_reshape(from: &[Dim], to: &[Dim]) -> Result<Vec<Dim>, InferError> {
    let minus_one = Dim::constant(-1);
    let holes = to.iter().filter(|d| **d == minus_one).count();
    if holes > 1 {
        return Err(InferError::new("`reshape` may infer at most one dim (-1)"));
    }
    let total = numel(from).ok_or_else(|| InferError::new("element count overflows"))?;
    let mut out = to.to_vec();
    if holes == 1 {
        let known: Vec<Dim> = to.iter().filter(|d| **d != minus_one).cloned().collect();
        let rest = numel(&known).ok_or_else(|| InferError::new("element count overflows"))?;
        let inferred = total
            .div(&rest)
            .map_err(|e| InferError::new(format!("`reshape` cannot infer -1: {e}")))?;
        for d in out.iter_mut() {
            if *d == minus_one {
                *d = inferred.clone();
            }
        }
    }
    let got = numel(&out).ok_or_else(|| InferError::new("element count overflows"))?;
    if got != total {
        return Err(InferError::new(format!(
            "`reshape` from {} ({total} elements) to {} ({got} elements)",
            shape_string(from),
            shape_string(&out)
        ))
        .at(0));
    }
    Ok(out)
}
