//! Symbol binding from input shapes, and inputs drawn from a seed.

use std::collections::BTreeMap;

use tpc_ir::{DType, Graph, Op};

use crate::philox::uniform;
use crate::tensor::Tensor;
use crate::{Bindings, Error, Result};

/// Explicit bindings win; other symbols are read off input tensors whose declared dim is exactly
/// that symbol. Every symbol the parameters need must end up bound.
pub fn bind_symbols(
    g: &Graph,
    inputs: &BTreeMap<String, Tensor>,
    explicit: &Bindings,
) -> Result<Bindings> {
    let mut out = explicit.clone();
    let mut source: BTreeMap<String, String> = BTreeMap::new();
    for &p in g.params() {
        let name = g.name(p);
        let Some(t) = inputs.get(name) else { continue };
        let ty = g.ty(p);
        if t.shape().len() != ty.rank() {
            return Err(Error::InputMismatch {
                name: name.to_string(),
                expected: format!("{}{}", ty.dtype, ty.shape_string()),
                got: format!("{}{:?}", t.dtype(), t.shape()),
            });
        }
        for (i, d) in ty.shape.iter().enumerate() {
            let Some(sym) = d.as_symbol() else { continue };
            let n = t.shape()[i] as i64;
            match out.get(sym) {
                Some(&m) if m != n => {
                    let was = source
                        .get(sym)
                        .map(|s| format!("%{s}"))
                        .unwrap_or_else(|| "--bind".to_string());
                    return Err(Error::Binding(format!(
                        "symbol {sym} is {m} (from {was}) but input %{name} has {n} in dim {i}"
                    )));
                }
                Some(_) => {}
                None => {
                    out.insert(sym.to_string(), n);
                    source.insert(sym.to_string(), name.to_string());
                }
            }
        }
    }
    for &v in g.values() {
        for d in &g.ty(v).shape {
            for s in d.symbols() {
                if !out.contains_key(&s) {
                    return Err(Error::Binding(format!(
                        "symbol {s} has no value (in %{}); bind it, for example `--bind {s}=2`, or pass inputs whose shapes give it",
                        g.name(v)
                    )));
                }
            }
        }
    }
    Ok(out)
}

/// The range an i64 parameter is drawn from: valid indices for its first embedding,
/// cross-entropy or pick use, else [0, 2).
fn int_range(g: &Graph, p: tpc_ir::ValueId, bindings: &Bindings) -> i64 {
    index_range(g, p, bindings, 0).unwrap_or(2)
}

/// The range of valid indices for the first use of `p` as indices, looking through the ops that
/// only move elements (the shifted labels of a causal-LM loss are a slice, then a reshape).
fn index_range(g: &Graph, p: tpc_ir::ValueId, bindings: &Bindings, depth: usize) -> Option<i64> {
    const MAX_DEPTH: usize = 8;
    for u in g.users(p) {
        let ops = g.operands(u);
        match g.op(u) {
            Op::Embedding(_) if ops.first() == Some(&p) => {
                if let Some(w) = ops.get(1) {
                    return Some(g.ty(*w).shape[0].eval(bindings).unwrap_or(2).max(1));
                }
            }
            Op::CrossEntropy { .. } if ops.get(1) == Some(&p) => {
                if let Some(l) = ops.first() {
                    let lt = g.ty(*l);
                    let c = if lt.rank() == 1 { 0 } else { 1 };
                    return Some(lt.shape[c].eval(bindings).unwrap_or(2).max(1));
                }
            }
            Op::Pick(pick) if ops.get(1) == Some(&p) => {
                if let Some(x) = ops.first() {
                    return Some(g.ty(*x).shape[pick.dim].eval(bindings).unwrap_or(2).max(1));
                }
            }
            Op::Slice(_) | Op::Reshape(_) | Op::Permute(_) | Op::Split(_) if depth < MAX_DEPTH => {
                if let Some(n) = index_range(g, u, bindings, depth + 1) {
                    return Some(n);
                }
            }
            _ => {}
        }
    }
    None
}

/// Inputs for every parameter, drawn deterministically from `seed` with one Philox stream per
/// parameter (by its index): floats uniform in [-1, 1), scaled by 1/sqrt(last dim) for rank >= 2.
pub fn random_inputs(
    g: &Graph,
    bindings: &Bindings,
    seed: u64,
) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    draw_missing_inputs(g, bindings, seed, &mut out)?;
    Ok(out)
}

/// Draws, as `random_inputs` would, only the parameters that `inputs` lacks.
pub fn draw_missing_inputs(
    g: &Graph,
    bindings: &Bindings,
    seed: u64,
    out: &mut BTreeMap<String, Tensor>,
) -> Result<()> {
    for (k, &p) in g.params().iter().enumerate() {
        if out.contains_key(g.name(p)) {
            continue;
        }
        let ty = g.ty(p);
        let shape: Vec<usize> = ty
            .shape
            .iter()
            .map(|d| {
                d.eval(bindings)
                    .map(|n| n as usize)
                    .map_err(|e| Error::Dim {
                        value: g.name(p).to_string(),
                        source: e,
                    })
            })
            .collect::<Result<_>>()?;
        let n: usize = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or(Error::Overflow)?;
        let bytes = (n as u64).saturating_mul(ty.dtype.size_bytes());
        let limit = crate::Limits::default().max_bytes;
        if bytes > limit {
            return Err(Error::TooLarge {
                value: g.name(p).to_string(),
                bytes,
                limit,
            });
        }
        // Stream k: the seed's key, counters offset by k * 2^40 (no tensor has more elements).
        let stream = (k as u64) << 40;
        let draw = |i: usize| uniform(seed, stream + i as u64);
        let t = match ty.dtype {
            DType::I64 => {
                let hi = int_range(g, p, bindings);
                Tensor::from_i64(
                    shape,
                    (0..n)
                        .map(|i| ((draw(i) as f64 * hi as f64) as i64).min(hi - 1))
                        .collect(),
                )?
            }
            DType::Bool => Tensor::from_bool(shape, (0..n).map(|i| draw(i) < 0.5).collect())?,
            dt => {
                let scale = if shape.len() >= 2 {
                    1.0 / (*shape.last().unwrap_or(&1) as f32).max(1.0).sqrt()
                } else {
                    1.0
                };
                Tensor::from_f32(
                    dt,
                    shape,
                    (0..n).map(|i| (draw(i) * 2.0 - 1.0) * scale).collect(),
                )?
            }
        };
        out.insert(g.name(p).to_string(), t);
    }
    Ok(())
}
