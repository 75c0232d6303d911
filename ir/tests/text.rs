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
