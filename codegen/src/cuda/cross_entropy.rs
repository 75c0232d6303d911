//! Mean cross-entropy: one block over every position `(o, i)` of logits laid out
//! `[outer, classes, inner]`; per position `logsumexp(logits[o, :, i]) - logits[o, t, i]` (a max
//! pass, then a pass summing `exp(x - max)`, in f32), skipping `ignore_index` targets; the total
//! (in f64, as the CPU executor) and the count are summed over the block and thread 0 stores
//! `total / count` (NaN when every target is ignored). A target outside `0..classes`, which the
//! CPU executor reports as an error, makes the result NaN.

use super::{load, store, Code};
use crate::kir::{CrossEntropy, Kernel};

/// An i64 as a C literal (`i64::MIN` has no literal of its own).
fn i64_literal(x: i64) -> String {
    if x == i64::MIN {
        "(-9223372036854775807LL - 1)".to_string()
    } else {
        format!("{x}LL")
    }
}

/// The lines that add position `p`'s term, with `m` and `s` (its max and sum of exponentials)
/// computed and `x` pointing at its class 0 (classes `stride` apart).
fn add_term(c: &mut Code, ce: &CrossEntropy, stride: &str) {
    let at = if stride == "1" {
        load(ce.dtype, "x[t]")
    } else {
        load(ce.dtype, &format!("x[t * {stride}]"))
    };
    c.line(format!(
        "total += (t >= 0 && t < classes) ? (double)(m + logf(s)) - (double){at} : (double)tpc_nan();"
    ));
    c.line("count += 1;");
}

pub(super) fn source(k: &Kernel, ce: &CrossEntropy) -> String {
    let dt = ce.dtype;
    let ignore = i64_literal(ce.ignore_index);
    let neg_inf = super::float_literal(f32::NEG_INFINITY);
    let mut c = Code::default();
    c.line(format!(
        "// {}: mean cross-entropy of {dt} logits, ignore_index {}; blocks' partials added up by the last block",
        ce.name, ce.ignore_index
    ));
    c.open(super::signature(k));
    c.line("__shared__ double tpc_total[32];");
    c.line("__shared__ long long tpc_count[32];");
    c.line("__shared__ bool tpc_last;");
    c.line("const long long positions = outer * inner;");
    c.line("double total = 0.0;");
    c.line("long long count = 0;");

    c.line("// Classes contiguous: a warp per position, its lanes over the classes.");
    c.open("if (inner == 1)");
    c.line("const int lane = threadIdx.x & 31;");
    c.line("const long long warps = ((long long)gridDim.x * blockDim.x) >> 5;");
    c.open(
        "for (long long p = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5; p < positions; p += warps)",
    );
    c.line("const long long t = target[p];");
    c.line(format!("if (t == {ignore}) continue;"));
    c.line(format!(
        "const {}* x = logits + p * classes;",
        super::storage(dt)
    ));
    c.line(format!("float m = {neg_inf};"));
    c.line(format!(
        "for (long long cl = lane; cl < classes; cl += 32) m = fmaxf(m, {});",
        load(dt, "x[cl]")
    ));
    c.line("m = tpc_warp_reduce(1, m);");
    c.line("float s = 0.0f;");
    c.line(format!(
        "for (long long cl = lane; cl < classes; cl += 32) s += expf({} - m);",
        load(dt, "x[cl]")
    ));
    c.line("s = tpc_warp_reduce(0, s);");
    c.open("if (lane == 0)");
    add_term(&mut c, ce, "1");
    c.close();
    c.close();
    c.close();

    c.open("else");
    c.line(
        "// Classes strided: a thread per position, neighbouring threads on neighbouring logits.",
    );
    c.open(
        "for (long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x; p < positions; p += (long long)gridDim.x * blockDim.x)",
    );
    c.line("const long long t = target[p];");
    c.line(format!("if (t == {ignore}) continue;"));
    c.line("const long long o = p / inner;");
    c.line(format!(
        "const {}* x = logits + o * classes * inner + (p - o * inner);",
        super::storage(dt)
    ));
    c.line(format!("float m = {neg_inf};"));
    c.line(format!(
        "for (long long cl = 0; cl < classes; ++cl) m = fmaxf(m, {});",
        load(dt, "x[cl * inner]")
    ));
    c.line("float s = 0.0f;");
    c.line(format!(
        "for (long long cl = 0; cl < classes; ++cl) s += expf({} - m);",
        load(dt, "x[cl * inner]")
    ));
    add_term(&mut c, ce, "inner");
    c.close();
    c.close();

    c.line("// The block's total and count: over each warp's lanes, then over the warps.");
    c.pragma("unroll");
    c.open("for (int lane_mask = 16; lane_mask > 0; lane_mask >>= 1)");
    c.line("total += __shfl_xor_sync(0xffffffffu, total, lane_mask);");
    c.line("count += __shfl_xor_sync(0xffffffffu, count, lane_mask);");
    c.close();
    c.open("if ((threadIdx.x & 31) == 0)");
    c.line("tpc_total[threadIdx.x >> 5] = total;");
    c.line("tpc_count[threadIdx.x >> 5] = count;");
    c.close();
    c.line("__syncthreads();");
    c.line("// partials: [0] blocks done, [1 + b] block b's total (f64 bits), [1 + grid + b] its count.");
    c.line("volatile long long* done = partials;");
    c.line("volatile long long* totals = partials + 1;");
    c.line("volatile long long* counts = partials + 1 + gridDim.x;");
    c.open("if (threadIdx.x == 0)");
    c.open("for (int w = 1; w < (int)(blockDim.x >> 5); ++w)");
    c.line("total += tpc_total[w];");
    c.line("count += tpc_count[w];");
    c.close();
    c.line("totals[blockIdx.x] = __double_as_longlong(total);");
    c.line("counts[blockIdx.x] = count;");
    c.line("__threadfence(); // the partials are visible before the count of blocks done grows");
    c.line("const unsigned long long before = atomicAdd((unsigned long long*)partials, 1ULL);");
    c.line("tpc_last = before == (unsigned long long)gridDim.x - 1;");
    c.close();
    c.line("__syncthreads();");
    c.line("// The last block adds up every block's partial, in block order.");
    c.open("if (tpc_last && threadIdx.x == 0)");
    c.line("__threadfence();");
    c.line("double sum = 0.0;");
    c.line("long long n = 0;");
    c.open("for (unsigned int b = 0; b < gridDim.x; ++b)");
    c.line("sum += __longlong_as_double(totals[b]);");
    c.line("n += counts[b];");
    c.close();
    c.line(format!(
        "out[0] = {};",
        store(dt, "(n == 0 ? tpc_nan() : (float)(sum / (double)n))")
    ));
    c.line("done[0] = 0; // ready for the next launch");
    c.close();
    c.close();
    c.finish()
}
