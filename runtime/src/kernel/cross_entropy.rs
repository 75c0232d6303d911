//! Mean cross-entropy, computed as the reference's `cross_entropy` computes it (f64 logsumexp
//! per target, f64 mean, one rounding), with the same errors.

use tpc_codegen::kir::CrossEntropy;

use super::Args;
use crate::tensor::round_to;
use crate::{Error, Result};

pub(super) fn run(k: &CrossEntropy, args: &mut Args<'_>) -> Result<()> {
    let (outer, c, inner) = (args.extent(0)?, args.extent(1)?, args.extent(2)?);
    let size = |a: usize, b: usize| {
        a.checked_mul(b)
            .ok_or_else(|| args.err("the extents overflow"))
    };
    let logits_len = size(size(outer, c)?, inner)?;
    let lv = args.in_floats(0, logits_len)?;
    let tv = args.in_ints(1, size(outer, inner)?)?;
    let mut total = 0f64;
    let mut count = 0u64;
    for o in 0..outer {
        for i in 0..inner {
            let t = tv[o * inner + i];
            if t == k.ignore_index {
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
    // The scratch the GPU's blocks add their partials up in ends zeroed, as the kernel leaves it.
    let want = tpc_codegen::kir::cross_entropy_partials(tpc_codegen::kir::cross_entropy_blocks(
        (outer * inner) as u64,
        inner == 1,
    ));
    match &mut args.outs[1].1 {
        super::ViewMut::I64(v) if v.len() == want => v.iter_mut().for_each(|x| *x = 0),
        other => {
            let got = other.len();
            return Err(args.err(format_args!(
                "partials holds {got} elements, but the launch needs {want} i64"
            )));
        }
    }
    let out = &mut args.outs[0].1;
    let got = out.len();
    match out {
        super::ViewMut::Float(v) if !v.is_empty() => v[0] = round_to(k.dtype, mean),
        _ => {
            return Err(args.err(format_args!(
                "out holds {got} elements, but the result needs 1"
            )))
        }
    }
    Ok(())
}
