//! rand_like and dropout, drawn with Philox by global element index: `index(i)` gives the global
//! row-major index of local element `i` (the identity on one device; an index map on a rank).

use crate::philox::uniform;
use crate::tensor::{round_to, Tensor};
use crate::Result;

pub fn rand_like(x: &Tensor, seed: u64, index: impl Fn(usize) -> u64) -> Result<Tensor> {
    let dt = x.dtype();
    let out = (0..x.numel())
        .map(|i| round_to(dt, uniform(seed, index(i))))
        .collect();
    Ok(Tensor::float(dt, x.shape().to_vec(), out))
}

/// Element `i` is kept iff `uniform(seed, i) < 1 - p`. Kept values are multiplied by the scale
/// `1/(1-p)` rounded to the dtype, then rounded: PyTorch builds the scaled mask in the input's
/// dtype and multiplies, and this reproduces it.
pub fn dropout(x: &Tensor, p: f64, seed: u64, index: impl Fn(usize) -> u64) -> Result<Tensor> {
    let dt = x.dtype();
    let v = x.floats()?;
    if p >= 1.0 {
        return Ok(Tensor::float(dt, x.shape().to_vec(), vec![0.0; v.len()]));
    }
    let keep = (1.0 - p) as f32;
    let scale = round_to(dt, (1.0 / (1.0 - p)) as f32);
    let out = v
        .iter()
        .enumerate()
        .map(|(i, &a)| {
            if uniform(seed, index(i)) < keep {
                round_to(dt, a * scale)
            } else {
                0.0
            }
        })
        .collect();
    Ok(Tensor::float(dt, x.shape().to_vec(), out))
}
