//! Fused kernels: pointwise chains (a grid-stride loop, with a vectorized fast path) and row
//! kernels (one block per row, a pass over the row per group of row reductions).
//!
//! Index names in the C source: `i<d>` is the element's index along dim `d`; without a row, `i`
//! is the flat element index; with a row `(a, b)`, `r` is the row (the flat index over the dims
//! outside `a..b`), `o` and `ii` its flat indices over the dims before `a` and after `b`, and
//! `j` the element's flat index inside the row.

use std::ops::Range;

use tpc_ir::DType;

use super::{
    reduce_code, reduce_identity, scalar_type, store, stored_value, value_stmt, Code, Site,
};
use crate::kir::{Expr, Fused, Kernel, Scalar};

pub(super) fn source(k: &Fused) -> String {
    let mut c = Code::default();
    let stored: Vec<String> = k.outputs.iter().map(|o| format!("%{}", o.name)).collect();
    c.line(format!("// {}: {}", k.name, stored.join(", ")));
    c.open(super::signature(&Kernel::Fused(k.clone())));
    match k.row {
        None => pointwise(k, &mut c),
        Some((a, b)) => row_kernel(k, a, b, &mut c),
    }
    c.close();
    c.finish()
}

/// The operands of body value `v`.
fn operands(k: &Fused, v: usize) -> Vec<usize> {
    match &k.body[v].1 {
        Expr::Load(_) | Expr::Const(_) | Expr::Arg(_) | Expr::Rand(_) | Expr::RandArg(_) => {
            vec![]
        }
        Expr::Unary(_, a) | Expr::Round(_, a) | Expr::RowReduce(_, a) => {
            vec![a.0]
        }
        Expr::Binary(_, a, b) => vec![a.0, b.0],
        Expr::Select(c, a, b) => vec![c.0, a.0, b.0],
    }
}

/// `n<lo> * … * n<hi-1>`, or `1LL` for no dims.
fn extent_product(dims: Range<usize>) -> String {
    let f: Vec<String> = dims.map(|d| format!("n{d}")).collect();
    if f.is_empty() {
        "1LL".to_string()
    } else {
        f.join(" * ")
    }
}

/// Statements defining `i<d>` for every dim `d` of `dims` with `needed[d]`, from `flat`, the
/// row-major flat index over `dims` (through the temporary `tmp`).
fn decompose(c: &mut Code, flat: &str, dims: Range<usize>, needed: &[bool], tmp: &str) {
    let Some(first) = dims.clone().find(|&d| needed[d]) else {
        return;
    };
    let lo = dims.start;
    if dims.len() == 1 {
        c.line(format!("const long long i{lo} = {flat};"));
        return;
    }
    c.line(format!("long long {tmp} = {flat};"));
    for d in (first..dims.end).rev() {
        if d == lo {
            c.line(format!("const long long i{d} = {tmp};"));
            continue;
        }
        if needed[d] {
            c.line(format!("const long long i{d} = {tmp} % n{d};"));
        }
        if d > first {
            c.line(format!("{tmp} /= n{d};"));
        }
    }
}

/// Input `j`'s offset terms (`i<d> * stride`) for its dims in `dims`: row-major over the dims
/// it does not broadcast.
fn offset_terms(k: &Fused, j: usize, dims: Range<usize>) -> Vec<String> {
    let bc = &k.inputs[j].broadcast;
    dims.filter(|&d| !bc[d])
        .map(|d| {
            let st: Vec<String> = (d + 1..k.rank)
                .filter(|&e| !bc[e])
                .map(|e| format!("n{e}"))
                .collect();
            if st.is_empty() {
                format!("i{d}")
            } else {
                format!("i{d} * {}", st.join(" * "))
            }
        })
        .collect()
}

fn sum_or_zero(terms: &[String]) -> String {
    if terms.is_empty() {
        "0".to_string()
    } else {
        terms.join(" + ")
    }
}

/// Per body value: whether an output needs it (the others are not written).
fn live(k: &Fused) -> Vec<bool> {
    let mut mark = vec![false; k.body.len()];
    let mut stack: Vec<usize> = (0..k.outputs.len()).map(|o| stored_value(k, o)).collect();
    while let Some(v) = stack.pop() {
        if !mark[v] {
            mark[v] = true;
            stack.extend(operands(k, v));
        }
    }
    mark
}

/// The live values, in body order.
fn live_values(k: &Fused) -> Vec<usize> {
    let l = live(k);
    (0..k.body.len()).filter(|&v| l[v]).collect()
}

/// Inputs the live values load.
fn loaded(k: &Fused) -> Vec<bool> {
    let mut l = vec![false; k.inputs.len()];
    for v in live_values(k) {
        if let Expr::Load(j) = k.body[v].1 {
            l[j] = true;
        }
    }
    l
}

/// Whether a live value draws random numbers.
fn draws(k: &Fused) -> bool {
    live_values(k)
        .into_iter()
        .any(|v| matches!(k.body[v].1, Expr::Rand(_) | Expr::RandArg(_)))
}

/// `Σ_d (unsigned long long)g<d>[i<d>]` over `dims`.
fn table_sum(dims: Range<usize>) -> Vec<String> {
    dims.map(|d| format!("(unsigned long long)g{d}[i{d}]"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Pointwise: a grid-stride loop.

/// The vector C type, its element union in the prelude, and its alignment in bytes, of `width`
/// elements of `d`.
fn vector_type(d: DType, width: usize) -> (&'static str, &'static str, u32) {
    match (d, width) {
        (DType::F32, _) => ("float4", "tpc_f32x4", 16),
        (DType::BF16 | DType::F16, 4) => ("uint2", "tpc_u16x4", 8),
        (DType::BF16 | DType::F16, _) => ("uint4", "tpc_u16x8", 16),
        (_, 4) => ("unsigned int", "tpc_u8x4", 4),
        _ => ("uint2", "tpc_u8x8", 8),
    }
}

/// Elements per thread of the vectorized fast path, if the kernel has one: every loaded input
/// at the element's own flat index (no broadcast), no row, no global index, no i64 buffer. Four
/// elements (a 128-bit float4) when an f32 buffer takes part, else eight (a 128-bit uint4 of
/// 16-bit elements, 64 bits of bools).
fn vector_width(k: &Fused) -> Option<usize> {
    if k.row.is_some() || k.global_index || draws(k) || k.rank == 0 || k.outputs.is_empty() {
        return None;
    }
    let used = loaded(k);
    let ins = k
        .inputs
        .iter()
        .zip(&used)
        .filter(|(_, &u)| u)
        .map(|(x, _)| x);
    if ins.clone().any(|x| x.broadcast.iter().any(|&b| b)) {
        return None;
    }
    let dtypes: Vec<DType> = ins
        .map(|x| x.dtype)
        .chain(k.outputs.iter().map(|o| o.dtype))
        .collect();
    if dtypes.contains(&DType::I64) {
        return None;
    }
    Some(if dtypes.contains(&DType::F32) { 4 } else { 8 })
}

fn pointwise(k: &Fused, c: &mut Code) {
    c.line(format!(
        "const long long total = {};",
        extent_product(0..k.rank)
    ));
    c.line("const long long stride = (long long)gridDim.x * blockDim.x;");
    c.line("const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;");
    let start = match vector_width(k) {
        Some(w) => {
            vector_loop(k, w, c);
            "done + tid"
        }
        None => "tid",
    };
    c.open(format!(
        "for (long long i = {start}; i < total; i += stride)"
    ));
    // The per-dim indices that broadcast loads and global indices need.
    let used = loaded(k);
    let mut needed = vec![draws(k); k.rank];
    for (j, x) in k.inputs.iter().enumerate() {
        if used[j] && x.broadcast.iter().any(|&b| b) {
            for d in (0..k.rank).filter(|&d| !x.broadcast[d]) {
                needed[d] = true;
            }
        }
    }
    decompose(c, "i", 0..k.rank, &needed, "t");
    if draws(k) {
        c.line(format!(
            "const unsigned long long gi = {};",
            table_sum(0..k.rank).join(" + ")
        ));
    }
    let load = |j: usize| {
        if k.inputs[j].broadcast.iter().any(|&b| b) {
            format!("in{j}[{}]", sum_or_zero(&offset_terms(k, j, 0..k.rank)))
        } else {
            format!("in{j}[i]")
        }
    };
    let site = Site {
        load: &load,
        global_index: "gi",
    };
    for v in live_values(k) {
        c.line(value_stmt(k, v, &site));
    }
    for (o, out) in k.outputs.iter().enumerate() {
        let from = stored_value(k, o);
        c.line(format!(
            "out{o}[i] = {};",
            store(out.dtype, &format!("v{from}"))
        ));
    }
    c.close();
}

/// The fast path: `width` consecutive elements per thread and iteration, every buffer read and
/// written as one vector, when every buffer is aligned to its vector. It covers the first
/// `total / width * width` elements and sets `done` to that; the scalar loop does the rest.
fn vector_loop(k: &Fused, width: usize, c: &mut Code) {
    let used = loaded(k);
    let ins: Vec<usize> = (0..k.inputs.len()).filter(|&j| used[j]).collect();
    let mut aligned: Vec<String> = Vec::new();
    for &j in &ins {
        let (_, _, bytes) = vector_type(k.inputs[j].dtype, width);
        aligned.push(format!("((unsigned long long)in{j} & {}) == 0", bytes - 1));
    }
    for (o, out) in k.outputs.iter().enumerate() {
        let (_, _, bytes) = vector_type(out.dtype, width);
        aligned.push(format!("((unsigned long long)out{o} & {}) == 0", bytes - 1));
    }
    c.line("long long done = 0;");
    c.line(format!(
        "// {width} elements per thread as vectors, where every buffer is aligned to them."
    ));
    c.open(format!("if ({})", aligned.join(" && ")));
    c.line(format!("const long long nvec = total / {width};"));
    c.open("for (long long q = tid; q < nvec; q += stride)");
    for &j in &ins {
        let (vty, uty, _) = vector_type(k.inputs[j].dtype, width);
        c.line(format!("{uty} x{j}; x{j}.v = ((const {vty}*)in{j})[q];"));
    }
    for (o, out) in k.outputs.iter().enumerate() {
        let (_, uty, _) = vector_type(out.dtype, width);
        c.line(format!("{uty} y{o};"));
    }
    c.pragma("unroll");
    c.open(format!("for (int e = 0; e < {width}; ++e)"));
    let load = |j: usize| format!("x{j}.e[e]");
    let site = Site {
        load: &load,
        global_index: "0ULL",
    };
    for v in live_values(k) {
        c.line(value_stmt(k, v, &site));
    }
    for (o, out) in k.outputs.iter().enumerate() {
        let from = stored_value(k, o);
        c.line(format!(
            "y{o}.e[e] = {};",
            store(out.dtype, &format!("v{from}"))
        ));
    }
    c.close();
    for (o, out) in k.outputs.iter().enumerate() {
        let (vty, _, _) = vector_type(out.dtype, width);
        c.line(format!("(({vty}*)out{o})[q] = y{o}.v;"));
    }
    c.close();
    c.line(format!("done = nvec * {width};"));
    c.close();
}

// ---------------------------------------------------------------------------------------------
// Row kernels: one block per row.
//
// The row's per-element values are computed in passes over the row: each pass takes every row
// reduction whose operand depends on no reduction still pending (accumulated per thread, then
// reduced over the block), and stores every per-element output that needs no reduction still
// pending; a last pass stores the rest. Uniform values (`Fused::uniform`) are computed once per
// row, in every thread, between the passes.
//
// Two ways to run the passes, chosen per launch: when the row has at most `cache` elements per
// thread, each thread keeps the per-element values that a later pass needs in registers
// (`cv<n>[c]`, the loops over a thread's elements unrolled), so every value is computed once;
// longer rows recompute the per-element values a pass needs from the loads.

/// Registers per thread for per-element values kept across passes (so rows of up to
/// `ROW_CACHE_REGISTERS / values × 256` elements keep them, at most `MAX_CACHE × 256`).
const ROW_CACHE_REGISTERS: usize = 64;
/// Most elements per thread a row kernel keeps in registers.
const MAX_CACHE: usize = 16;
/// Fewest elements per thread worth keeping in registers.
const MIN_CACHE: usize = 4;

/// What a row kernel's generator knows about the kernel.
struct Rows<'k> {
    k: &'k Fused,
    a: usize,
    b: usize,
    uniform: Vec<bool>,
    /// Row-scope (uniform) values already written.
    written: Vec<bool>,
}

/// One pass over a row: the reductions it accumulates and the outputs it stores.
struct Pass {
    reductions: Vec<usize>,
    stores: Vec<usize>,
}

/// Per pass: the per-element values it computes and the ones it reads from the registers of an
/// earlier pass (in body order), and which values are kept for later passes.
struct Schedule {
    compute: Vec<Vec<usize>>,
    reads: Vec<Vec<usize>>,
    kept: Vec<bool>,
}

impl Rows<'_> {
    /// The row reductions that `v` depends on (through any values), `v` included.
    fn reductions_under(&self, v: usize) -> Vec<usize> {
        let mut mark = vec![false; self.k.body.len()];
        let mut stack = vec![v];
        let mut out = Vec::new();
        while let Some(x) = stack.pop() {
            if mark[x] {
                continue;
            }
            mark[x] = true;
            if matches!(self.k.body[x].1, Expr::RowReduce(..)) {
                out.push(x);
            }
            stack.extend(operands(self.k, x));
        }
        out
    }

    /// Whether `v` can be computed once the reductions `done` are.
    fn ready(&self, v: usize, done: &[usize]) -> bool {
        self.reductions_under(v).iter().all(|x| done.contains(x))
    }

    /// Outputs stored at each element (a per-row output of a per-element value is stored at the
    /// row's first element).
    fn element_outputs(&self) -> Vec<usize> {
        (0..self.k.outputs.len())
            .filter(|&o| !self.k.outputs[o].per_row || !self.uniform[stored_value(self.k, o)])
            .collect()
    }

    /// The passes over the row.
    fn passes(&self, reductions: &[usize]) -> Vec<Pass> {
        let mut done: Vec<usize> = Vec::new();
        let mut pending = reductions.to_vec();
        let mut outputs = self.element_outputs();
        let mut passes = Vec::new();
        while !pending.is_empty() {
            let pass: Vec<usize> = pending
                .iter()
                .copied()
                .filter(|&v| {
                    operands(self.k, v)
                        .into_iter()
                        .all(|x| self.ready(x, &done))
                })
                .collect();
            pending.retain(|v| !pass.contains(v));
            let stores: Vec<usize> = outputs
                .iter()
                .copied()
                .filter(|&o| self.ready(stored_value(self.k, o), &done))
                .collect();
            outputs.retain(|o| !stores.contains(o));
            passes.push(Pass {
                reductions: pass.clone(),
                stores,
            });
            done.extend(pass);
        }
        if !outputs.is_empty() {
            passes.push(Pass {
                reductions: vec![],
                stores: outputs,
            });
        }
        passes
    }

    /// The values a pass starts from: its reductions' operands and its stored values.
    fn roots(&self, pass: &Pass) -> Vec<usize> {
        pass.reductions
            .iter()
            .map(|&v| operands(self.k, v)[0])
            .chain(pass.stores.iter().map(|&o| stored_value(self.k, o)))
            .collect()
    }

    /// Which per-element values each pass computes: every one its roots need (`keep` false), or,
    /// with `keep`, only those no earlier pass computed (the others are kept in registers).
    fn schedule(&self, passes: &[Pass], keep: bool) -> Schedule {
        let n = self.k.body.len();
        let mut computed: Vec<bool> = vec![false; n];
        let mut kept = vec![false; n];
        let (mut compute, mut reads) = (Vec::new(), Vec::new());
        for pass in passes {
            let mut mark = vec![false; n];
            let mut read = vec![false; n];
            let mut stack: Vec<usize> = self.roots(pass);
            while let Some(v) = stack.pop() {
                if self.uniform[v] || mark[v] || read[v] {
                    continue;
                }
                if keep && computed[v] {
                    read[v] = true;
                    kept[v] = true;
                    continue;
                }
                mark[v] = true;
                stack.extend(operands(self.k, v));
            }
            compute.push((0..n).filter(|&v| mark[v]).collect::<Vec<_>>());
            reads.push((0..n).filter(|&v| read[v]).collect::<Vec<_>>());
            (0..n).filter(|&v| mark[v]).for_each(|v| computed[v] = true);
        }
        Schedule {
            compute,
            reads,
            kept,
        }
    }

    /// Writes uniform value `v` (and the uniform values it needs) at row scope, once. A row
    /// reduction must have been written by its pass.
    fn write_uniform(&mut self, v: usize, c: &mut Code) {
        if self.written[v] {
            return;
        }
        assert!(
            !matches!(self.k.body[v].1, Expr::RowReduce(..)),
            "{}: v{v} is read before its row pass",
            self.k.name
        );
        for x in operands(self.k, v) {
            self.write_uniform(x, c);
        }
        let k = self.k;
        let load = |j: usize| format!("in{j}[{}]", self.row_base(j));
        let site = Site {
            load: &load,
            global_index: "0ULL",
        };
        c.line(value_stmt(k, v, &site));
        self.written[v] = true;
    }

    /// Input `j`'s offset at the row's first element (its dims outside the row).
    fn row_base(&self, j: usize) -> String {
        let mut t = offset_terms(self.k, j, 0..self.a);
        t.extend(offset_terms(self.k, j, self.b..self.k.rank));
        if t.is_empty() {
            "0".to_string()
        } else {
            format!("b{j}")
        }
    }

    /// Input `j`'s offset at element `j` of the row.
    fn elem_offset(&self, j: usize) -> String {
        let base = self.row_base(j);
        let row = offset_terms(self.k, j, self.a..self.b);
        match (base.as_str(), row.is_empty()) {
            (_, true) => base,
            ("0", false) => row.join(" + "),
            _ => format!("{base} + {}", row.join(" + ")),
        }
    }

    /// One loop over the row's elements `j`: `reads` from the registers of slot `c`, then
    /// `compute` (keeping the `kept` ones in slot `c`), then the `tail` lines. With `cache`,
    /// a thread's elements are `cache` unrolled slots. With `vec` (the elements per vector), a
    /// thread takes `vec` consecutive elements at a time: the per-element inputs are loaded, and
    /// the outputs in `stores` stored, as one vector each (`x<j>`, `y<o>`).
    #[allow(clippy::too_many_arguments)]
    fn element_loop(
        &self,
        compute: &[usize],
        reads: &[usize],
        kept: &[bool],
        tail: &[String],
        cache: Option<usize>,
        vec: Option<usize>,
        stores: &[usize],
        c: &mut Code,
    ) {
        let k = self.k;
        let (a, b) = (self.a, self.b);
        match (cache, vec) {
            (None, None) => c.open("for (long long j = lane; j < rowlen; j += lanes)"),
            (Some(n), None) => {
                c.pragma("unroll");
                c.open(format!("for (int c = 0; c < {n}; ++c)"));
                c.line("const long long j = lane + c * lanes;");
                c.line("if (j >= rowlen) break;");
            }
            (None, Some(w)) => c.open(format!(
                "for (long long j0 = lane * {w}; j0 < rowlen; j0 += lanes * {w})"
            )),
            (Some(n), Some(w)) => {
                c.pragma("unroll");
                c.open(format!("for (int s = 0; s < {}; ++s)", n / w));
                c.line(format!("const long long j0 = (lane + s * lanes) * {w};"));
                c.line("if (j0 >= rowlen) break;");
            }
        }
        let loads: Vec<usize> = {
            let mut l: Vec<usize> = compute
                .iter()
                .filter_map(|&v| match k.body[v].1 {
                    Expr::Load(j) => Some(j),
                    _ => None,
                })
                .collect();
            l.sort_unstable();
            l.dedup();
            l
        };
        if let Some(w) = vec {
            for &j in &loads {
                let (vty, uty, _) = vector_type(k.inputs[j].dtype, w);
                let at = match self.row_base(j).as_str() {
                    "0" => "j0".to_string(),
                    base => format!("{base} + j0"),
                };
                c.line(format!("{uty} x{j}; x{j}.v = *(const {vty}*)&in{j}[{at}];"));
            }
            for &o in stores {
                let (_, uty, _) = vector_type(k.outputs[o].dtype, w);
                c.line(format!("{uty} y{o};"));
            }
            c.pragma("unroll");
            c.open(format!("for (int u = 0; u < {w}; ++u)"));
            c.line("const long long j = j0 + u;");
            if cache.is_some() {
                c.line(format!("const int c = s * {w} + u;"));
            }
        }
        let mut needed = vec![false; k.rank];
        let mut rand = false;
        for &v in compute {
            match k.body[v].1 {
                Expr::Load(j) if vec.is_none() => {
                    for d in (a..b).filter(|&d| !k.inputs[j].broadcast[d]) {
                        needed[d] = true;
                    }
                }
                Expr::Rand(_) | Expr::RandArg(_) => rand = true,
                _ => {}
            }
        }
        if rand {
            needed[a..b].iter_mut().for_each(|x| *x = true);
        }
        decompose(c, "j", a..b, &needed, "tj");
        if rand {
            let mut parts = table_sum(a..b);
            if a > 0 || b < k.rank {
                parts.insert(0, "grow".to_string());
            }
            let sum = if parts.is_empty() {
                "0ULL".to_string()
            } else {
                parts.join(" + ")
            };
            c.line(format!("const unsigned long long gi = {sum};"));
        }
        for &v in reads {
            c.line(format!(
                "const {} v{v} = cv{v}[c];",
                scalar_type(k.body[v].0)
            ));
        }
        let load = |j: usize| match vec {
            Some(_) => format!("x{j}.e[u]"),
            None => format!("in{j}[{}]", self.elem_offset(j)),
        };
        let site = Site {
            load: &load,
            global_index: "gi",
        };
        for &v in compute {
            c.line(value_stmt(k, v, &site));
            if cache.is_some() && kept[v] {
                c.line(format!("cv{v}[c] = v{v};"));
            }
        }
        for t in tail {
            c.line(t);
        }
        if let Some(w) = vec {
            c.close();
            for &o in stores {
                let (vty, _, _) = vector_type(k.outputs[o].dtype, w);
                c.line(format!("*({vty}*)&out{o}[e + j0] = y{o}.v;"));
            }
        }
        c.close();
    }

    /// The passes over one row, then the per-row stores. With `cache`, the values a later pass
    /// needs are kept in registers (`cache` elements per thread).
    fn write_passes(
        &mut self,
        passes: &[Pass],
        cache: Option<usize>,
        vec: Option<usize>,
        c: &mut Code,
    ) {
        let k = self.k;
        let s = self.schedule(passes, cache.is_some());
        if cache.is_some() {
            for v in (0..k.body.len()).filter(|&v| s.kept[v]) {
                c.line(format!(
                    "{} cv{v}[{}];",
                    scalar_type(k.body[v].0),
                    cache.unwrap_or(0)
                ));
            }
        }
        let elem_at = if self.b < k.rank {
            "e + j * inner"
        } else {
            "e + j"
        };
        for (p, pass) in passes.iter().enumerate() {
            let roots = self.roots(pass);
            // The uniform values the pass reads.
            let mut uniforms: Vec<usize> = s.compute[p]
                .iter()
                .flat_map(|&v| operands(k, v))
                .chain(roots.iter().copied())
                .filter(|&x| self.uniform[x])
                .collect();
            uniforms.sort_unstable();
            uniforms.dedup();
            for u in uniforms {
                self.write_uniform(u, c);
            }
            let mut what: Vec<String> = pass
                .reductions
                .iter()
                .map(|&v| format!("v{v} = {}", reduction_name(k, v)))
                .collect();
            what.extend(
                pass.stores
                    .iter()
                    .map(|&o| format!("store %{}", k.outputs[o].name)),
            );
            c.line(format!("// Pass: {}.", what.join(", ")));
            let mut tail = Vec::new();
            for &v in &pass.reductions {
                let Expr::RowReduce(op, x) = k.body[v].1 else {
                    unreachable!()
                };
                c.line(format!(
                    "float acc{v} = {};",
                    super::float_literal(reduce_identity(op))
                ));
                let operand = match k.body[x.0].0 {
                    Scalar::F32 => format!("v{}", x.0),
                    Scalar::Bool => format!("(float)v{}", x.0),
                };
                tail.push(format!(
                    "acc{v} = tpc_combine({}, acc{v}, {operand});",
                    reduce_code(op)
                ));
            }
            for &o in &pass.stores {
                let out = &k.outputs[o];
                let x = store(out.dtype, &format!("v{}", stored_value(k, o)));
                tail.push(match (out.per_row, vec) {
                    (true, _) => format!("if (j == 0) out{o}[r] = {x};"),
                    (false, None) => format!("out{o}[{elem_at}] = {x};"),
                    (false, Some(_)) => format!("y{o}.e[u] = {x};"),
                });
            }
            let stores: Vec<usize> = pass
                .stores
                .iter()
                .copied()
                .filter(|&o| !k.outputs[o].per_row)
                .collect();
            self.element_loop(
                &s.compute[p],
                &s.reads[p],
                &s.kept,
                &tail,
                cache,
                vec,
                &stores,
                c,
            );
            for &v in &pass.reductions {
                let Expr::RowReduce(op, _) = k.body[v].1 else {
                    unreachable!()
                };
                c.line(format!(
                    "const float v{v} = tpc_row_reduce({}, acc{v}, {}, tpc_scratch, by_warp);",
                    reduce_code(op),
                    super::float_literal(reduce_identity(op))
                ));
                self.written[v] = true;
            }
        }
        // Per-row outputs of uniform values: by thread 0.
        for (o, out) in k.outputs.iter().enumerate() {
            let from = stored_value(k, o);
            if out.per_row && self.uniform[from] {
                self.write_uniform(from, c);
                c.line(format!(
                    "if (lane == 0) out{o}[r] = {};",
                    store(out.dtype, &format!("v{from}"))
                ));
            }
        }
    }
}

fn row_kernel(k: &Fused, a: usize, b: usize, c: &mut Code) {
    let uniform = k.uniform();
    let mut g = Rows {
        k,
        a,
        b,
        uniform,
        written: vec![false; k.body.len()],
    };
    let reductions: Vec<usize> = live_values(k)
        .into_iter()
        .filter(|&v| matches!(k.body[v].1, Expr::RowReduce(..)))
        .collect();
    let passes = g.passes(&reductions);
    let (has_outer, has_inner) = (a > 0, b < k.rank);
    if !reductions.is_empty() {
        c.line("__shared__ float tpc_scratch[32];");
    }
    c.line(format!(
        "const long long rowlen = {};",
        extent_product(a..b)
    ));
    if has_inner {
        c.line(format!(
            "const long long inner = {};",
            extent_product(b..k.rank)
        ));
    }
    let rows = match (has_outer, has_inner) {
        (false, false) => "1LL".to_string(),
        (true, false) => extent_product(0..a),
        (false, true) => "inner".to_string(),
        (true, true) => format!("{} * inner", extent_product(0..a)),
    };
    c.line(format!("const long long rows = {rows};"));
    c.line(format!(
        "// Rows of at most {} elements take a warp each (the launch has a block per {} rows), longer ones a block.",
        crate::kir::ROW_WARP_MAX,
        crate::kir::BLOCK / 32
    ));
    c.line(format!(
        "const bool by_warp = rowlen <= {};",
        crate::kir::ROW_WARP_MAX
    ));
    c.line("const int lane = by_warp ? (int)(threadIdx.x & 31) : (int)threadIdx.x;");
    c.line("const long long lanes = by_warp ? 32 : (long long)blockDim.x;");
    c.line(
        "const long long first = by_warp ? (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5) : (long long)blockIdx.x;",
    );
    c.line(
        "const long long step = by_warp ? (long long)gridDim.x * (blockDim.x >> 5) : (long long)gridDim.x;",
    );
    // Elements per thread kept in registers across passes, if any value is kept.
    let kept = g
        .schedule(&passes, true)
        .kept
        .iter()
        .filter(|&&x| x)
        .count();
    let cache = (kept > 0).then(|| {
        let per_value = ROW_CACHE_REGISTERS / kept;
        let mut n = MAX_CACHE;
        while n > per_value && n > MIN_CACHE {
            n /= 2;
        }
        n
    });
    let vec = row_vector_width(k, a, b);
    if let Some(w) = vec {
        let mut tests = vec![format!("rowlen % {w} == 0")];
        for j in row_elementwise_inputs(k, a, b) {
            let (_, _, bytes) = vector_type(k.inputs[j].dtype, w);
            tests.push(format!("((unsigned long long)in{j} & {}) == 0", bytes - 1));
        }
        for (o, out) in k.outputs.iter().enumerate() {
            if !out.per_row {
                let (_, _, bytes) = vector_type(out.dtype, w);
                tests.push(format!("((unsigned long long)out{o} & {}) == 0", bytes - 1));
            }
        }
        c.line(format!(
            "// {w} consecutive elements a thread as vectors, where the row length and every buffer allow."
        ));
        c.line(format!("const bool vec = {};", tests.join(" && ")));
    }
    c.line(format!(
        "// One block per row of the dims {a}..{b}; rowlen elements {}.",
        if has_inner {
            "inner apart"
        } else {
            "apart by 1"
        }
    ));
    c.open("for (long long r = first; r < rows; r += step)");

    // The row's indices outside a..b that loads and global indices need.
    let used = loaded(k);
    let rand = draws(k);
    let mut needed = vec![rand; k.rank];
    for (j, x) in k.inputs.iter().enumerate() {
        if used[j] {
            for d in (0..a).chain(b..k.rank).filter(|&d| !x.broadcast[d]) {
                needed[d] = true;
            }
        }
    }
    let elem_outputs = !g.element_outputs().is_empty();
    let need_o = has_outer && (needed[..a].iter().any(|&x| x) || elem_outputs);
    let need_ii = has_inner && (needed[b..].iter().any(|&x| x) || elem_outputs);
    if need_o {
        c.line(if has_inner {
            "const long long o = r / inner;"
        } else {
            "const long long o = r;"
        });
    }
    if need_ii {
        c.line(if has_outer {
            "const long long ii = r % inner;"
        } else {
            "const long long ii = r;"
        });
    }
    decompose(c, "o", 0..a, &needed, "to");
    decompose(c, "ii", b..k.rank, &needed, "ti");
    for j in (0..k.inputs.len()).filter(|&j| used[j]) {
        let mut t = offset_terms(k, j, 0..a);
        t.extend(offset_terms(k, j, b..k.rank));
        if !t.is_empty() {
            c.line(format!("const long long b{j} = {};", t.join(" + ")));
        }
    }
    if rand && (has_outer || has_inner) {
        let mut t = table_sum(0..a);
        t.extend(table_sum(b..k.rank));
        c.line(format!(
            "const unsigned long long grow = {};",
            t.join(" + ")
        ));
    }
    if elem_outputs {
        // The flat offset of element j of the row is e + j * inner.
        let base = match (has_outer, has_inner) {
            (false, false) => "0".to_string(),
            (true, false) => "o * rowlen".to_string(),
            (false, true) => "ii".to_string(),
            (true, true) => "o * rowlen * inner + ii".to_string(),
        };
        c.line(format!("const long long e = {base};"));
    }
    // Per way of reading the row (as vectors or not): rows of at most `m` elements a thread
    // keep what later passes need in registers, longer ones recompute it.
    let ways: Vec<Option<usize>> = match vec {
        Some(w) => vec![Some(w), None],
        None => vec![None],
    };
    for (i, &way) in ways.iter().enumerate() {
        if ways.len() > 1 {
            c.open(if i == 0 { "if (vec)" } else { "else" });
        }
        let written = g.written.clone();
        match cache {
            None => g.write_passes(&passes, None, way, c),
            Some(n) => {
                let m = way.map_or(n, |w| (n / w).max(1) * w);
                c.open(format!("if (rowlen <= {m} * lanes)"));
                g.write_passes(&passes, Some(m), way, c);
                c.close();
                g.written = written.clone();
                c.open("else");
                g.write_passes(&passes, None, way, c);
                c.close();
            }
        }
        g.written = written;
        if ways.len() > 1 {
            c.close();
        }
    }
    c.close();
}

/// Elements per vector of a row kernel's vectorized path, if it has one: the row is the
/// innermost dims, and every per-element input reads the row contiguously (it broadcasts none
/// of the row dims; one that broadcasts all of them is read once per row). Four elements when
/// an f32 buffer takes part, else eight; none with an i64 buffer.
fn row_vector_width(k: &Fused, a: usize, b: usize) -> Option<usize> {
    if b != k.rank || a == b {
        return None;
    }
    let ins = row_elementwise_inputs(k, a, b);
    if ins
        .iter()
        .any(|&j| k.inputs[j].broadcast[a..b].iter().any(|&y| y))
    {
        return None;
    }
    let mut dtypes: Vec<DType> = ins.iter().map(|&j| k.inputs[j].dtype).collect();
    dtypes.extend(k.outputs.iter().filter(|o| !o.per_row).map(|o| o.dtype));
    if dtypes.is_empty() || dtypes.contains(&DType::I64) {
        return None;
    }
    Some(if dtypes.contains(&DType::F32) { 4 } else { 8 })
}

/// The loaded inputs a row kernel reads per element: those that do not broadcast over the whole
/// row (one that does is read once per row).
fn row_elementwise_inputs(k: &Fused, a: usize, b: usize) -> Vec<usize> {
    let used = loaded(k);
    (0..k.inputs.len())
        .filter(|&j| used[j] && !k.inputs[j].broadcast[a..b].iter().all(|&y| y))
        .collect()
}

fn reduction_name(k: &Fused, v: usize) -> String {
    match &k.body[v].1 {
        Expr::RowReduce(op, x) => format!("row {:?} of {x}", op).to_lowercase(),
        _ => String::new(),
    }
}
