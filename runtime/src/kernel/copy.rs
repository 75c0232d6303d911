//! Strided copies: `out[out_base + Σ i_d·os_d] = in[in_base + Σ i_d·is_d]` over extents `n<d>`,
//! for buffers of any element type. Dims that are contiguous in both buffers are merged, and
//! innermost runs with unit strides are slice copies.

use tpc_codegen::kir::Copy as CopyKernel;

use super::{Args, View, ViewMut};
use crate::Result;

/// One dim of the copy: extent, input stride, output stride.
type Dim = (usize, i64, i64);

pub(super) fn run(k: &CopyKernel, args: &mut Args<'_>) -> Result<()> {
    let rank = k.rank;
    let n: Vec<usize> = (0..rank).map(|d| args.extent(d)).collect::<Result<_>>()?;
    let in_base = args.ints[rank].1;
    let is: Vec<i64> = (0..rank).map(|d| args.ints[rank + 1 + d].1).collect();
    let out_base = args.ints[2 * rank + 1].1;
    let os: Vec<i64> = (0..rank).map(|d| args.ints[2 * rank + 2 + d].1).collect();
    if n.contains(&0) {
        return Ok(());
    }
    let in_len = args.ins[0].1.len();
    let out_len = args.outs[0].1.len();
    // The lowest and highest offsets the copy addresses must lie inside each buffer.
    let check = |name: &str, base: i64, strides: &[i64], len: usize| -> Result<()> {
        let (mut lo, mut hi) = (base as i128, base as i128);
        for (&e, &s) in n.iter().zip(strides) {
            let reach = (e as i128 - 1) * s as i128;
            if reach < 0 {
                lo += reach;
            } else {
                hi += reach;
            }
        }
        if lo < 0 || hi >= len as i128 {
            return Err(args.err(format_args!(
                "{name} holds {len} elements, but the copy addresses offsets {lo}..={hi}"
            )));
        }
        Ok(())
    };
    check("in", in_base, &is, in_len)?;
    check("out", out_base, &os, out_len)?;

    // Drop dims of extent 1 and merge dims contiguous in both buffers.
    let mut dims: Vec<Dim> = Vec::new();
    for d in 0..rank {
        if n[d] == 1 {
            continue;
        }
        dims.push((n[d], is[d], os[d]));
    }
    let mut merged: Vec<Dim> = Vec::new();
    for &(e, si, so) in dims.iter().rev() {
        match merged.last_mut() {
            Some((e2, si2, so2)) if si == *si2 * *e2 as i64 && so == *so2 * *e2 as i64 => {
                *e2 *= e;
            }
            _ => merged.push((e, si, so)),
        }
    }
    merged.reverse();

    let src = args.ins[0].1;
    let (vi, vo) = (
        super::variant_of_in(&src),
        super::variant_of_out(&args.outs[0].1),
    );
    if vi != vo {
        return Err(args.err(format_args!(
            "copies {} into {}",
            super::variant_name(vi),
            super::variant_name(vo)
        )));
    }
    match (src, &mut args.outs[0].1) {
        (View::Float(x), ViewMut::Float(y)) => copy(x, y, in_base, out_base, &merged),
        (View::I64(x), ViewMut::I64(y)) => copy(x, y, in_base, out_base, &merged),
        (View::Bool(x), ViewMut::Bool(y)) => copy(x, y, in_base, out_base, &merged),
        _ => {}
    }
    Ok(())
}

/// The copy over `dims` (every offset checked to lie inside the buffers).
fn copy<T: Copy>(src: &[T], dst: &mut [T], in_base: i64, out_base: i64, dims: &[Dim]) {
    let Some((&(len, si, so), outer)) = dims.split_last() else {
        dst[out_base as usize] = src[in_base as usize];
        return;
    };
    let mut idx = vec![0usize; outer.len()];
    let (mut ib, mut ob) = (in_base, out_base);
    loop {
        let (i, o) = (ib as usize, ob as usize);
        if si == 1 && so == 1 {
            dst[o..o + len].copy_from_slice(&src[i..i + len]);
        } else if si == 0 && so == 1 {
            dst[o..o + len].fill(src[i]);
        } else {
            for k in 0..len as i64 {
                dst[(ob + k * so) as usize] = src[(ib + k * si) as usize];
            }
        }
        // The next run: carry through the outer dims.
        let mut d = outer.len();
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            let (e, si, so) = outer[d];
            idx[d] += 1;
            ib += si;
            ob += so;
            if idx[d] < e {
                break;
            }
            idx[d] = 0;
            ib -= si * e as i64;
            ob -= so * e as i64;
        }
    }
}
