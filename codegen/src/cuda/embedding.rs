//! Embedding lookups: `out[r * width + c] = table[ids[r] * width + c]`, a row of zeros for an id
//! outside `0..vocab` (the CPU executor reports such an id as an error; a kernel cannot).

use super::{storage, Code};
use crate::kir::{Embedding, Kernel};

pub(super) fn source(k: &Kernel, e: &Embedding) -> String {
    let mut c = Code::default();
    c.line(format!(
        "// {}: embedding rows of {}; an id outside 0..vocab gives zeros",
        e.name, e.dtype
    ));
    c.open(super::signature(k));
    c.line("const long long total = rows * width;");
    c.open("for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x)");
    c.line("const long long r = i / width;");
    c.line("const long long col = i - r * width;");
    c.line("const long long id = ids[r];");
    c.line(format!(
        "out[i] = (id >= 0 && id < vocab) ? table[id * width + col] : ({})0;",
        storage(e.dtype)
    ));
    c.close();
    c.close();
    c.finish()
}
