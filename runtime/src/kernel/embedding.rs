//! Embedding lookups: `out[r, :]` is the row of `table` whose global index (`rowpos`) is
//! `ids[r]`, zeros where the table does not hold it (another rank's rows).

use tpc_codegen::kir::Embedding;

use super::Args;
use crate::{Error, Result};

pub(super) fn run(k: &Embedding, args: &mut Args<'_>) -> Result<()> {
    let ext: Vec<usize> = (0..4).map(|i| args.extent(i)).collect::<Result<_>>()?;
    let (rows, width, vocab, global_vocab) = (ext[0], ext[1], ext[2], ext[3]);
    let size = |a: usize, b: usize| {
        a.checked_mul(b)
            .ok_or_else(|| args.err("the extents overflow"))
    };
    let (table_len, out_len) = (size(vocab, width)?, size(rows, width)?);
    let ids = args.in_ints(0, rows)?;
    let table = args.in_floats(1, table_len)?;
    let rowpos = args.in_ints(2, vocab)?;
    // Checked before anything is written.
    for (pos, &id) in ids.iter().enumerate() {
        if id < 0 || id as u64 >= global_vocab as u64 {
            return Err(Error::Value(format!(
                "embedding index {id} at position {pos} is out of range for the table of kernel @{} with {global_vocab} rows",
                k.name
            )));
        }
    }
    let local: Vec<Option<usize>> = ids.iter().map(|id| rowpos.binary_search(id).ok()).collect();
    let out = args.out_floats(0, out_len)?;
    if width == 0 {
        return Ok(());
    }
    for (row, l) in out.chunks_exact_mut(width).zip(&local) {
        match l {
            Some(l) => row.copy_from_slice(&table[l * width..(l + 1) * width]),
            None => row.fill(0.0),
        }
    }
    Ok(())
}
