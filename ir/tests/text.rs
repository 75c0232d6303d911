//! The text form on small programs and on the examples: parse, print, round trip, errors.

use tpc_ir::{parse, print, PrintMode, SourceFile};

fn roundtrip(src: &str) -> String {
    let g = parse(&SourceFile::new("t.ir", src)).unwrap_or_else(|d| {
        panic!(
            "{}",
            tpc_ir::diag::render(&SourceFile::new("t.ir", src), &d)
        )
    });
    let once = print(&g, PrintMode::Source);
    let g2 = parse(&SourceFile::new("t2.ir", &once)).unwrap_or_else(|d| {
        panic!(
            "{once}\n{}",
            tpc_ir::diag::render(&SourceFile::new("t2.ir", &once), &d)
        )
    });
    assert_eq!(print(&g2, PrintMode::Source), once);
    let ops = |g: &tpc_ir::Graph| {
        g.values()
            .iter()
            .map(|&v| g.op(v).clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ops(&g2), ops(&g), "printing changed what an op means");
    let full = print(&g, PrintMode::Full);
    let g3 = parse(&SourceFile::new("t3.ir", &full)).unwrap_or_else(|d| {
        panic!(
            "{full}\n{}",
            tpc_ir::diag::render(&SourceFile::new("t3.ir", &full), &d)
        )
    });
    assert_eq!(print(&g3, PrintMode::Full), full);
    once
}

fn errors(src: &str) -> String {
    let f = SourceFile::new("t.ir", src);
    match parse(&f) {
        Ok(_) => panic!("expected errors for:\n{src}"),
        Err(d) => tpc_ir::diag::render(&f, &d),
    }
}

#[test]
fn examples_round_trip() {
    for name in ["mlp", "attention_glm", "block"] {
        let path = format!("{}/../examples/{name}.ir", env!("CARGO_MANIFEST_DIR"));
        let src = std::fs::read_to_string(&path).expect("example");
        roundtrip(&src);
    }
}

#[test]
fn canonical_form_normalizes_spacing_dims_and_defaults() {
    let out = roundtrip(
        "mesh dp=2,tp = 4\nfunc @f(%x:f32[S*3, 4@tp], %b: f32[4@tp]) -> f32[3*S, 4@tp] {\n%y=add(%x,%b)\n%z = softmax(%y) {dim=-1}\nreturn %z\n}\n",
    );
    assert_eq!(
        out,
        "mesh dp = 2, tp = 4\n\nfunc @f(%x: f32[3*S, 4@tp], %b: f32[4@tp]) -> f32[3*S, 4@tp] {\n  %y = add(%x, %b)\n  %z = softmax(%y) {dim = 1}\n  return %z\n}\n"
    );
}

#[test]
fn broadcasts_are_explicit_in_the_graph_and_folded_in_source() {
    let src = "func @f(%x: f32[B, 4], %b: f32[4]) {\n  %y = add(%x, %b)\n  return %y\n}\n";
    let g = parse(&SourceFile::new("t.ir", src)).expect("valid");
    let full = print(&g, PrintMode::Full);
    assert!(
        full.contains("%y.bcast1 = broadcast(%b) {shape = [B, 4]} : f32[B, 4]"),
        "{full}"
    );
    assert!(
        full.contains("%y = add(%x, %y.bcast1) : f32[B, 4]"),
        "{full}"
    );
    assert!(print(&g, PrintMode::Source).contains("%y = add(%x, %b)\n"));
    roundtrip(src);
    roundtrip("func @f(%c: bool[4], %a: f32[2, 1], %b: f32[4]) {\n  %y = where(%c, %a, %b)\n  return %y\n}\n");
}

#[test]
fn shardings_factors_partials_and_closed_dims_round_trip() {
    let out = roundtrip(
        "mesh dp = 2, tp\n\nfunc @f(%w: bf16[(3, 16@tp, 48)!, 768@dp], %p: f32[B, 8] partial(tp) partial.max(dp)) -> f32[B, 8] {\n  %y = exp(%p) : f32[B@dp, 8!]\n  return %y\n}\n",
    );
    assert!(out.contains("bf16[(3, 16@tp, 48)!, 768@dp]"), "{out}");
    assert!(
        out.contains("f32[B, 8] partial(tp) partial.max(dp)"),
        "{out}"
    );
    assert!(out.contains("%y = exp(%p) : f32[B@dp, 8!]"), "{out}");
}

#[test]
fn several_errors_are_reported_at_once_without_cascades() {
    let r = errors("func @f(%x: f32[4]) -> f32[4] {\n  %y = exp(%nope)\n  %z = neg(%y)\n  %w = frob(%x)\n  return %z\n}\n");
    assert!(r.contains("unknown value `%nope`"), "{r}");
    assert!(r.contains("unknown op `frob`"), "{r}");
    assert!(!r.contains("%y`"), "no cascade from the poisoned %y: {r}");
    assert!(r.contains("t.ir:2:12"), "{r}");
}

#[test]
fn comments_survive_formatting() {
    let src = "# header\nmesh tp # axis\n\nfunc @f(%x: f32[4], # the input\n        %w: f32[4]) {\n  # before y\n  %y = add(%x, %w)  # trailing y\n  # before return\n  return %y # done\n  # before close\n}\n# after\n";
    let out = roundtrip(src);
    assert_eq!(
        out,
        "# header\n# axis\n# the input\nmesh tp\n\nfunc @f(%x: f32[4], %w: f32[4]) {\n  # before y\n  %y = add(%x, %w)  # trailing y\n  # before return\n  return %y  # done\n  # before close\n  # after\n}\n"
    );
}

/// Every op written with its defaults left out means the same as with them written out.
#[test]
fn defaults_left_out_by_fmt_are_the_decoder_defaults() {
    let src = "func @f(%x: f32[2, 3], %w: f32[3], %i: i64[2]) {\n  %a = gelu(%x)\n  %b = sum(%a) {dims = [1]}\n  %c = layer_norm(%x, %w)\n  %c2 = layer_norm(%x)\n  %d = rms_norm(%x, %w)\n  %e = slice(%x) {dim = 1, end = 2}\n  %f = sdpa(%x, %x, %x)\n  %g = rand_like(%x)\n  %h = dropout(%x)\n  %k = full() {shape = [2], value = 1}\n  %l = cross_entropy(%x, %i)\n  return %b, %c, %c2, %d, %e, %f, %g, %h, %k, %l\n}\n";
    let written = "func @f(%x: f32[2, 3], %w: f32[3], %i: i64[2]) {\n  %a = gelu(%x) {approximate = none}\n  %b = sum(%a) {dims = [1], keepdim = false}\n  %c = layer_norm(%x, %w) {eps = 1e-5, normalized = 1}\n  %c2 = layer_norm(%x) {eps = 0.00001, normalized = 1}\n  %d = rms_norm(%x, %w) {normalized = 1}\n  %e = slice(%x) {dim = 1, start = 0, end = 2, step = 1}\n  %f = sdpa(%x, %x, %x) {causal = false}\n  %g = rand_like(%x) {seed = 0}\n  %h = dropout(%x) {p = 0.5, seed = 0}\n  %k = full() {shape = [2], value = 1.0, dtype = f32}\n  %l = cross_entropy(%x, %i) {ignore_index = -100}\n  return %b, %c, %c2, %d, %e, %f, %g, %h, %k, %l\n}\n";
    let a = parse(&SourceFile::new("a.ir", src)).expect("valid");
    let b = parse(&SourceFile::new("b.ir", written)).expect("valid");
    let ops = |g: &tpc_ir::Graph| {
        g.values()
            .iter()
            .map(|&v| g.op(v).clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ops(&a), ops(&b));
    assert_eq!(print(&a, PrintMode::Source), roundtrip(src));
    assert_eq!(print(&b, PrintMode::Source), print(&a, PrintMode::Source));
    assert!(
        !print(&a, PrintMode::Source).contains("= none"),
        "defaults are left out"
    );
}

/// Pathological inputs end in errors, quickly, without exhausting the stack.
#[test]
fn pathological_inputs_are_errors() {
    let minus = format!(
        "func @f(%x: f32[{}4]) {{\n  return %x\n}}\n",
        "- ".repeat(200_001)
    );
    assert!(errors(&minus).contains("error"));
    let power = format!(
        "func @f(%x: f32[{}S]) {{\n  return %x\n}}\n",
        "S*".repeat(10_000)
    );
    assert!(errors(&power).contains("overflow"), "{}", errors(&power));
    let nested = format!(
        "func @f(%x: f32[4]) {{\n  %y = exp(%x) {{a = {}}}\n  return %y\n}}\n",
        "[".repeat(100_000)
    );
    assert!(errors(&nested).contains("nest too deeply"));
}

/// The communication ops parse, print, verify against their types, and round-trip.
#[test]
fn collectives_round_trip_and_check_their_types() {
    let src = "mesh dp = 2, tp\n\nfunc @f(%y: f32[B, S, 768] partial(tp), %h: f32[B@dp, (3, 16@tp, 48)]) -> f32[B, S, 768] {\n  %y.sum = allreduce(%y) {axis = tp} : f32[B, S, 768]\n  %y.rs = reduce_scatter(%y) {axis = tp} : f32[B, S@tp, 768]\n  %y.back = allgather(%y.rs) {axis = tp} : f32[B, S, 768]\n  %h.a2a = all_to_all(%h) {axis = tp} : f32[B@dp@tp, 2304]\n  %s = shard(%y.sum) {axis = tp} : f32[B, S, 768@tp]\n  return %y.back\n}\n";
    let out = roundtrip(src);
    assert!(
        out.contains("%y.sum = allreduce(%y) {axis = tp} : f32[B, S, 768]"),
        "{out}"
    );
    let r = errors("mesh tp\n\nfunc @f(%y: f32[4] partial(tp)) {\n  %m = allreduce(%y) {axis = tp, op = max} : f32[4]\n  return %m\n}\n");
    assert!(r.contains("needs a partial (max) operand"), "{r}");
}

#[test]
fn ops_with_several_results_name_each_and_round_trip() {
    // Unequal widths (Qwen's q, k, v), a result left unused (`_`), declared types per result.
    let src = "func @f(%w: f32[2048, 64], %x: f32[4, 8]) {\n  %q, _, %v = split(%w) {dim = 0, sizes = [1024, 512, 512]}\n  %y, %mean, %rstd = layer_norm_stats(%x) : (f32[4, 8], f32[4], f32[4])\n  %z, %r = rms_norm_stats(%x)\n  %s = sin(%x)\n  %c = cos(%x)\n  return %q, %v, %y, %mean, %rstd, %z, %r, %s, %c\n}\n";
    let out = roundtrip(src);
    assert!(
        out.contains("%q, _, %v = split(%w) {dim = 0, sizes = [1024, 512, 512]}\n"),
        "{out}"
    );
    assert!(
        out.contains("%y, %mean, %rstd = layer_norm_stats(%x) : (f32[4, 8], f32[4], f32[4])"),
        "{out}"
    );
    let g = parse(&SourceFile::new("t.ir", src)).expect("parses");
    let v = g.find("v").expect("v");
    assert_eq!(g.node(v).result, 2);
    assert_eq!(g.ty(v).shape_string(), "[512, 64]");
    assert_eq!(g.statement_of(v).len(), 2, "%q and %v are one statement");
    let full = print(&g, PrintMode::Full);
    assert!(
        full.contains("%q, _, %v = split(%w) {dim = 0, sizes = [1024, 512, 512]} : (f32[1024, 64], f32[512, 64])"),
        "{full}"
    );
}

#[test]
fn several_results_are_checked() {
    let e = errors("func @f(%w: f32[6, 2]) {\n  %a, %b = split(%w) {dim = 0, sizes = [2, 2, 2]}\n  return %a\n}\n");
    assert!(
        e.contains("`split` gives 3 results, but 2 names are written"),
        "{e}"
    );
    let e = errors("func @f(%w: f32[6, 2]) {\n  %a, %b = split(%w) {dim = 0, sizes = [2, 3]}\n  return %a\n}\n");
    assert!(
        e.contains("`split` sizes add up to 5, but dim 0 of [6, 2] is 6"),
        "{e}"
    );
    let e = errors("func @f(%w: f32[6, 2]) {\n  %a, %b = split(%w) {dim = 0, sizes = [3, 3]} : (f32[3, 2])\n  return %a\n}\n");
    assert!(
        e.contains("1 types are declared for 2 named results"),
        "{e}"
    );
    let e = errors(
        "func @f(%w: f32[6, 2]) {\n  _, _ = split(%w) {dim = 0, sizes = [3, 3]}\n  return %w\n}\n",
    );
    assert!(e.contains("a statement that names no result"), "{e}");
    let e = errors("func @f(%w: f32[6, 2]) {\n  %a, %a = split(%w) {dim = 0, sizes = [3, 3]}\n  return %a\n}\n");
    assert!(e.contains("`%a` is defined twice"), "{e}");
    let e = errors("func @f(%w: f32[6, 2]) {\n  %a = split(%w) {dim = 0}\n  return %a\n}\n");
    assert!(e.contains("`split` needs the attribute `sizes`"), "{e}");
}

#[test]
fn ops_are_hashable_keys() {
    use std::collections::{BTreeSet, HashSet};
    let src = "func @f(%x: f32[4, 8]) {\n  %a = layer_norm(%x) {eps = 0.00001}\n  %b = layer_norm(%x) {eps = 0.00001}\n  %c = layer_norm(%x) {eps = 0.001}\n  %d = sdpa(%x, %x, %x) {scale = 0.5}\n  %e = sdpa(%x, %x, %x) {scale = 0.5}\n  return %a, %b, %c, %d, %e\n}\n";
    let g = parse(&SourceFile::new("t.ir", src)).expect("parses");
    let ops: Vec<tpc_ir::Op> = g.values().iter().map(|&v| g.op(v).clone()).collect();
    let hashed: HashSet<&tpc_ir::Op> = ops.iter().collect();
    let ordered: BTreeSet<&tpc_ir::Op> = ops.iter().collect();
    // The parameter, two distinct layer norms, one sdpa.
    assert_eq!(hashed.len(), 4);
    assert_eq!(ordered.len(), 4);
}

#[test]
fn subtracted_terms_print_after_added_ones_and_round_trip() {
    let src = "func @f(%x: f32[B, S, 64]) -> f32[B*S - B, 64] {\n  %y = slice(%x) {dim = 1, end = S - 1}\n  %z = reshape(%y) {shape = [S*B - B, 64]}\n  return %z\n}\n";
    let g = parse(&SourceFile::new("t.ir", src)).expect("parses");
    let full = print(&g, PrintMode::Full);
    assert!(full.contains("-> f32[B*S - B, 64]"), "{full}");
    assert!(full.contains("{shape = [B*S - B, 64]}"), "{full}");
    assert!(!full.contains("-1*"), "{full}");
    roundtrip(src);
}
