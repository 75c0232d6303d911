//! embedding and cross_entropy: the ops that index with i64 tensors.

use tpc_ir::ops::Pick;
use tpc_ir::DType;

use crate::tensor::{round_to, Tensor};
use crate::{Error, Result};

/// `w[ids]`. `rows`, on a rank holding part of the table: the global index of each row it holds
/// and the global row count; an id it does not hold gives zeros there (the ranks' rows sum to
/// the lookup).
pub fn embedding(
    ids: &Tensor,
    w: &Tensor,
    w_name: &str,
    out_shape: &[usize],
    rows: Option<(&[usize], usize)>,
) -> Result<Tensor> {
    let (local_rows, d) = (w.shape()[0], w.shape()[1]);
    let global_rows = rows.map_or(local_rows, |(_, n)| n);
    let wv = w.floats()?;
    let mut out = Vec::with_capacity(ids.numel() * d);
    for (pos, &id) in ids.ints()?.iter().enumerate() {
        if id < 0 || id as u64 >= global_rows as u64 {
            return Err(Error::Value(format!(
                "embedding index {id} at position {pos} is out of range for %{w_name} with {global_rows} rows"
            )));
        }
        // A piece's rows are increasing global indices.
        let local = match rows {
            None => Some(id as usize),
            Some((held, _)) => held.binary_search(&(id as usize)).ok(),
        };
        match local {
            Some(r) => out.extend_from_slice(&wv[r * d..(r + 1) * d]),
            None => out.resize(out.len() + d, 0.0),
        }
    }
    Ok(Tensor::float(w.dtype(), out_shape.to_vec(), out))
}

/// `x` at each target's index along `pick.dim`, in f32; 0 for an ignored target. `held`, on a
/// rank holding part of that dim: the global index of each entry it holds and the global
/// extent; a target it does not hold gives 0 there (the ranks' results sum to the pick).
pub fn pick(
    x: &Tensor,
    target: &Tensor,
    pick: Pick,
    held: Option<(&[usize], usize)>,
    out_shape: &[usize],
) -> Result<Tensor> {
    let s = x.shape();
    let dim = pick.dim;
    let layout = PickLayout {
        outer: s[..dim].iter().product(),
        n: s[dim],
        inner: s[dim + 1..].iter().product(),
        global_n: held.map_or(s[dim], |(_, g)| g),
    };
    let mut out = vec![0.0; layout.outer * layout.inner];
    let find = |t: usize| match held {
        None => Some(t),
        Some((ix, _)) => ix.binary_search(&t).ok(),
    };
    pick_into(
        x.floats()?,
        target.ints()?,
        layout,
        pick.ignore_index,
        find,
        &mut out,
    )?;
    Ok(Tensor::float(DType::F32, out_shape.to_vec(), out))
}

/// `x` seen as `[outer, n, inner]`, the `n` entries a piece of `global_n`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PickLayout {
    pub outer: usize,
    pub n: usize,
    pub inner: usize,
    pub global_n: usize,
}

/// [`pick`] on flat slices, `find` giving the local entry of a global index this piece holds:
/// shared by the reference and the kernel interpreter. Checks every target before writing.
pub(crate) fn pick_into(
    xv: &[f32],
    tv: &[i64],
    l: PickLayout,
    ignore_index: i64,
    find: impl Fn(usize) -> Option<usize>,
    out: &mut [f32],
) -> Result<()> {
    for (pos, &t) in tv.iter().enumerate() {
        if t != ignore_index && (t < 0 || t as u64 >= l.global_n as u64) {
            return Err(Error::Value(format!(
                "`pick` target {t} at position {pos} is out of range for {} entries",
                l.global_n
            )));
        }
    }
    for o in 0..l.outer {
        for i in 0..l.inner {
            let pos = o * l.inner + i;
            let t = tv[pos];
            let local = if t == ignore_index {
                None
            } else {
                find(t as usize)
            };
            out[pos] = local.map_or(0.0, |k| xv[(o * l.n + k) * l.inner + i]);
        }
    }
    Ok(())
}

/// 1 where `target` is not `ignore_index`, else 0, in f32.
pub fn kept(target: &Tensor, ignore_index: i64) -> Result<Tensor> {
    let tv = target.ints()?;
    let mut out = vec![0.0; tv.len()];
    kept_into(tv, ignore_index, &mut out);
    Ok(Tensor::float(DType::F32, target.shape().to_vec(), out))
}

/// [`kept`] on flat slices.
pub(crate) fn kept_into(tv: &[i64], ignore_index: i64, out: &mut [f32]) {
    for (o, &t) in out.iter_mut().zip(tv) {
        *o = if t == ignore_index { 0.0 } else { 1.0 };
    }
}

/// Mean over non-ignored targets of `-log_softmax(logits)[target]`; classes on dim 1 (dim 0 for
/// rank-1 logits). All targets ignored gives NaN, as torch.
pub fn cross_entropy(logits: &Tensor, target: &Tensor, ignore_index: i64) -> Result<Tensor> {
    let s = logits.shape();
    let class_dim = if s.len() == 1 { 0 } else { 1 };
    let outer: usize = s[..class_dim].iter().product();
    let c = s[class_dim];
    let inner: usize = s[class_dim + 1..].iter().product();
    let lv = logits.floats()?;
    let tv = target.ints()?;
    let mut total = 0f64;
    let mut count = 0u64;
    for o in 0..outer {
        for i in 0..inner {
            let t = tv[o * inner + i];
            if t == ignore_index {
                continue;
            }
            if t < 0 || t as u64 >= c as u64 {
                return Err(Error::Value(format!(
                    "cross_entropy target {t} at position {} is out of range for {c} classes",
                    o * inner + i
                )));
            }
            let at = |k: usize| lv[(o * c + k) * inner + i] as f64;
            let m = (0..c).map(at).fold(f64::NEG_INFINITY, f64::max);
            let lse = m + (0..c).map(|k| (at(k) - m).exp()).sum::<f64>().ln();
            total += lse - at(t as usize);
            count += 1;
        }
    }
    let mean = if count == 0 {
        f32::NAN
    } else {
        (total / count as f64) as f32
    };
    let dt = logits.dtype();
    Ok(Tensor::float(dt, Vec::new(), vec![round_to(dt, mean)]))
}
