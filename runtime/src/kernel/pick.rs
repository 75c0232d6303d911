//! `pick` and `kept` kernels, by the reference's own code (`ops::lookup`).

use tpc_codegen::kir::{Kept, Pick};

use super::Args;
use crate::ops::lookup::{kept_into, pick_into, PickLayout};
use crate::Result;

pub(super) fn run_pick(k: &Pick, args: &mut Args<'_>) -> Result<()> {
    let ext: Vec<usize> = (0..4).map(|i| args.extent(i)).collect::<Result<_>>()?;
    let l = PickLayout {
        outer: ext[0],
        n: ext[1],
        inner: ext[2],
        global_n: ext[3],
    };
    let size = |xs: &[usize]| {
        xs.iter()
            .try_fold(1usize, |a, &x| a.checked_mul(x))
            .ok_or_else(|| args.err("the extents overflow"))
    };
    let (x_len, t_len) = (size(&[l.outer, l.n, l.inner])?, size(&[l.outer, l.inner])?);
    let x = args.in_floats(0, x_len)?;
    let target = args.in_ints(1, t_len)?;
    let pos = args.in_ints(2, l.n)?;
    let find = |t: usize| pos.binary_search(&(t as i64)).ok();
    let out = args.out_floats(0, t_len)?;
    pick_into(x, target, l, k.ignore_index, find, out)
}

pub(super) fn run_kept(k: &Kept, args: &mut Args<'_>) -> Result<()> {
    let count = args.extent(0)?;
    let target = args.in_ints(0, count)?;
    let out = args.out_floats(0, count)?;
    kept_into(target, k.ignore_index, out);
    Ok(())
}
