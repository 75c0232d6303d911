//! Strided copies: `out[out_base + Σ i_d·os_d] = in[in_base + Σ i_d·is_d]` over extents `n<d>`,
//! a grid-stride loop over the copied elements, moving elements as stored (no conversion).

use super::Code;
use crate::kir::{Copy, Kernel};

pub(super) fn source(k: &Kernel, cp: &Copy) -> String {
    let rank = cp.rank;
    let mut c = Code::default();
    c.line(format!(
        "// {}: strided copy of {} over {rank} dims",
        cp.name, cp.dtype
    ));
    c.open(super::signature(k));
    let total: Vec<String> = (0..rank).map(|d| format!("n{d}")).collect();
    let total = if total.is_empty() {
        "1LL".to_string()
    } else {
        total.join(" * ")
    };
    c.line(format!("const long long total = {total};"));
    c.open("for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x)");
    let mut src = String::from("in_base");
    let mut dst = String::from("out_base");
    if rank > 0 {
        c.line("long long t = i;");
    }
    for d in (0..rank).rev() {
        if d == 0 {
            c.line("const long long i0 = t;");
        } else {
            c.line(format!("const long long i{d} = t % n{d}; t /= n{d};"));
        }
    }
    for d in 0..rank {
        src.push_str(&format!(" + i{d} * is{d}"));
        dst.push_str(&format!(" + i{d} * os{d}"));
    }
    c.line(format!("out[{dst}] = in[{src}];"));
    c.close();
    c.close();
    c.finish()
}
