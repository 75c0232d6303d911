//! Scaled dot-product attention, by the reference's own code (`ops::linalg::sdpa_into`), so a
//! kernel's result is the reference's bit for bit.

use tpc_codegen::kir::Attention;

use super::Args;
use crate::ops::linalg::{sdpa_into, SdpaDims};
use crate::Result;

pub(super) fn run(k: &Attention, args: &mut Args<'_>) -> Result<()> {
    let ext: Vec<usize> = (0..5).map(|i| args.extent(i)).collect::<Result<_>>()?;
    let (batch, l, s, e, ev) = (ext[0], ext[1], ext[2], ext[3], ext[4]);
    let size = |xs: &[usize]| {
        xs.iter()
            .try_fold(1usize, |a, &x| a.checked_mul(x))
            .ok_or_else(|| args.err("the extents overflow"))
    };
    let (q_len, k_len, v_len, o_len) = (
        size(&[batch, l, e])?,
        size(&[batch, s, e])?,
        size(&[batch, s, ev])?,
        size(&[batch, l, ev])?,
    );
    // The scores of one slice.
    size(&[l, s])?;
    let q = args.in_floats(0, q_len)?;
    let kv = args.in_floats(1, k_len)?;
    let v = args.in_floats(2, v_len)?;
    let qpos = args.in_ints(3, l)?;
    let scale = args.floats[0];
    let position = |i: usize| qpos[i];
    let dims = SdpaDims { batch, l, s, e, ev };
    let causal = k.causal.then_some(&position as &dyn Fn(usize) -> i64);
    if k.lse {
        let lse = args.out_floats(0, size(&[batch, l])?)?;
        sdpa_into(dims, (q, kv, v), scale, causal, k.dtype, &mut [], Some(lse));
    } else {
        let out = args.out_floats(0, o_len)?;
        sdpa_into(dims, (q, kv, v), scale, causal, k.dtype, out, None);
    }
    Ok(())
}
