//! embedding and cross_entropy: the ops that index with i64 tensors.

use crate::tensor::{round_to, Tensor};
use crate::{Error, Result};

pub fn embedding(ids: &Tensor, w: &Tensor, w_name: &str, out_shape: &[usize]) -> Result<Tensor> {
    let (rows, d) = (w.shape()[0], w.shape()[1]);
    let wv = w.floats()?;
    let mut out = Vec::with_capacity(ids.numel() * d);
    for (pos, &id) in ids.ints()?.iter().enumerate() {
        if id < 0 || id as u64 >= rows as u64 {
            return Err(Error::Value(format!(
                "embedding index {id} at position {pos} is out of range for %{w_name} with {rows} rows"
            )));
        }
        let r = id as usize;
        out.extend_from_slice(&wv[r * d..(r + 1) * d]);
    }
    Ok(Tensor::float(w.dtype(), out_shape.to_vec(), out))
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
