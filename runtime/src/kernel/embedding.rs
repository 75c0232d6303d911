//! Embedding lookups: `out[r, :] = table[ids[r], :]`.

use tpc_codegen::kir::Embedding;

use super::Args;
use crate::{Error, Result};

pub(super) fn run(k: &Embedding, args: &mut Args<'_>) -> Result<()> {
    let (rows, width, vocab) = (args.extent(0)?, args.extent(1)?, args.extent(2)?);
    let size = |a: usize, b: usize| {
        a.checked_mul(b)
            .ok_or_else(|| args.err("the extents overflow"))
    };
    let (table_len, out_len) = (size(vocab, width)?, size(rows, width)?);
    let ids = args.in_ints(0, rows)?;
    let table = args.in_floats(1, table_len)?;
    // Checked before anything is written.
    for (pos, &id) in ids.iter().enumerate() {
        if id < 0 || id as u64 >= vocab as u64 {
            return Err(Error::Value(format!(
                "embedding index {id} at position {pos} is out of range for the table of kernel @{} with {vocab} rows",
                k.name
            )));
        }
    }
    let ids: Vec<usize> = ids.iter().map(|&id| id as usize).collect();
    let out = args.out_floats(0, out_len)?;
    if width == 0 {
        return Ok(());
    }
    for (row, &id) in out.chunks_exact_mut(width).zip(&ids) {
        row.copy_from_slice(&table[id * width..(id + 1) * width]);
    }
    Ok(())
}
