//! `pick` and `kept`, the i64-indexed stages of cross-entropy. `pick`: a thread per position
//! `(o, i)` of `x` laid out `[outer, n, inner]` finds the local entry holding its target by
//! binary search in the increasing global indices `pos` and stores it in f32, or 0 for a target
//! this piece does not hold (another rank's classes, or outside the classes: the CPU executor
//! reports that as an error) and for `ignore_index`. `kept`: 1 or 0 per target.

use super::{load, Code};
use crate::kir::{Kept, Kernel, Pick};

/// An i64 as a C literal (`i64::MIN` has no literal of its own).
fn i64_literal(x: i64) -> String {
    if x == i64::MIN {
        "(-9223372036854775807LL - 1)".to_string()
    } else {
        format!("{x}LL")
    }
}

const GRID_STRIDE: &str = "(long long)blockIdx.x * blockDim.x + threadIdx.x";

pub(super) fn pick_source(k: &Kernel, p: &Pick) -> String {
    let mut c = Code::default();
    c.line(format!(
        "// {}: the target's entry of {} x along its dim, in f32; 0 where not held or ignored",
        p.name, p.dtype
    ));
    c.open(super::signature(k));
    c.line("const long long total = outer * inner;");
    c.open(format!(
        "for (long long q = {GRID_STRIDE}; q < total; q += (long long)gridDim.x * blockDim.x)"
    ));
    c.line("const long long o = q / inner;");
    c.line("const long long i = q - o * inner;");
    c.line("const long long t = target[q];");
    super::lower_bound(&mut c, "pos", "n", "t");
    c.line(format!(
        "const bool held = t != {} && lo < n && pos[lo] == t;",
        i64_literal(p.ignore_index)
    ));
    c.line(format!(
        "out[q] = held ? {} : 0.0f;",
        load(p.dtype, "x[(o * n + lo) * inner + i]")
    ));
    c.close();
    c.close();
    c.finish()
}

pub(super) fn kept_source(k: &Kernel, kept: &Kept) -> String {
    let mut c = Code::default();
    c.line(format!(
        "// {}: 1 for each target that is not {}",
        kept.name, kept.ignore_index
    ));
    c.open(super::signature(k));
    c.open(format!(
        "for (long long q = {GRID_STRIDE}; q < count; q += (long long)gridDim.x * blockDim.x)"
    ));
    c.line(format!(
        "out[q] = target[q] != {} ? 1.0f : 0.0f;",
        i64_literal(kept.ignore_index)
    ));
    c.close();
    c.close();
    c.finish()
}
