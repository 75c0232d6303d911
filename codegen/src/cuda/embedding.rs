//! Embedding lookups: `out[r * width + c] = table[l * width + c]` where `l` is the local row
//! holding global row `ids[r]` (found by binary search in the increasing `rowpos`), a row of
//! zeros for an id the table does not hold: another rank's rows (vocabulary parallelism), or one
//! outside the vocabulary (the CPU executor reports that as an error; a kernel cannot).

use super::{storage, Code};
use crate::kir::{Embedding, Kernel};

pub(super) fn source(k: &Kernel, e: &Embedding) -> String {
    let mut c = Code::default();
    c.line(format!(
        "// {}: embedding rows of {}; an id this table does not hold gives zeros",
        e.name, e.dtype
    ));
    c.open(super::signature(k));
    c.line("const long long total = rows * width;");
    c.open("for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x)");
    c.line("const long long r = i / width;");
    c.line("const long long col = i - r * width;");
    c.line("const long long id = ids[r];");
    super::lower_bound(&mut c, "rowpos", "vocab", "id");
    c.line(format!(
        "out[i] = (lo < vocab && rowpos[lo] == id) ? table[lo * width + col] : ({})0;",
        storage(e.dtype)
    ));
    c.close();
    c.close();
    c.finish()
}
