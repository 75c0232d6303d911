//! The examples: their printed forms (snapshots), fmt idempotence, runs on the reference
//! executor, determinism, and that sharding annotations never change what a program computes.
//! Each check of each example is a trial, `<check>::<example>`: `cargo test --test examples --
//! attention_glm` runs every check of examples/attention_glm.ir.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::harness;
use tpc::ir::{print, PrintMode};
use tpc::runtime::{random_inputs, run_reference, Tensor};

fn main() {
    let examples = common::ir_files("examples");
    let mut trials = vec![
        harness::trial("examples_exist", examples_exist),
        harness::trial(
            "examples_have_the_signatures_other_issues_rely_on",
            examples_have_the_signatures_other_issues_rely_on,
        ),
        harness::trial(
            "the_fused_qkv_reshape_makes_the_heads_a_factor",
            the_fused_qkv_reshape_makes_the_heads_a_factor,
        ),
        harness::trial(
            "generated_gpt_stacks_are_valid_programs",
            generated_gpt_stacks_are_valid_programs,
        ),
    ];
    trials.extend(harness::per_file(
        "examples_print_canonically_and_idempotently",
        &examples,
        examples_print_canonically_and_idempotently,
    ));
    trials.extend(harness::per_file(
        "examples_run_and_are_deterministic",
        &examples,
        examples_run_and_are_deterministic,
    ));
    trials.extend(harness::per_file(
        "annotations_never_change_results",
        &examples,
        annotations_never_change_results,
    ));
    trials.extend(harness::per_file(
        "factor_rules_fit_every_example",
        &examples,
        factor_rules_fit_every_example,
    ));
    harness::run(trials)
}

fn small() -> BTreeMap<String, i64> {
    [("B".to_string(), 2), ("S".to_string(), 8)]
        .into_iter()
        .collect()
}

fn run(g: &tpc::Graph, seed: u64) -> Vec<Tensor> {
    let inputs = random_inputs(g, &small(), seed).expect("inputs");
    run_reference(g, &inputs, &small()).expect("run")
}

fn bits(ts: &[Tensor]) -> Vec<Vec<u32>> {
    ts.iter()
        .map(|t| t.to_f32_vec().iter().map(|x| x.to_bits()).collect())
        .collect()
}

fn examples_exist() {
    let names: Vec<String> = common::ir_files("examples")
        .iter()
        .map(|p| common::stem(p))
        .collect();
    for want in ["mlp", "attention_glm", "block"] {
        assert!(
            names.iter().any(|n| n == want),
            "examples/{want}.ir is missing"
        );
    }
}

fn examples_print_canonically_and_idempotently(path: &Path) {
    let name = common::stem(path);
    let g = common::load(path);
    for (mode, tag) in [(PrintMode::Source, "source"), (PrintMode::Full, "full")] {
        let printed = print(&g, mode);
        let again = tpc::load("printed.ir", &printed)
            .unwrap_or_else(|e| panic!("{}\n{}", printed, e.render()));
        assert_eq!(
            print(&again, mode),
            printed,
            "{name}: printing is not idempotent ({tag})"
        );
        insta::assert_snapshot!(format!("{name}_{tag}"), printed);
    }
}

fn examples_have_the_signatures_other_issues_rely_on() {
    let sig = |file: &str| {
        let g = common::load(&common::root().join("examples").join(file));
        g.params()
            .iter()
            .map(|&p| {
                format!(
                    "%{}: {}{}",
                    g.name(p),
                    g.ty(p).dtype,
                    g.ty(p).shape_string()
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        sig("mlp.ir"),
        [
            "%x: bf16[B, S, 768]",
            "%w0: bf16[3072, 768]",
            "%b0: bf16[3072]",
            "%w1: bf16[768, 3072]",
            "%b1: bf16[768]"
        ]
    );
    assert_eq!(
        sig("attention_glm.ir"),
        [
            "%x: bf16[B, S, 768]",
            "%wqkv: bf16[2304, 768]",
            "%bqkv: bf16[2304]",
            "%wo: bf16[768, 768]",
            "%bo: bf16[768]"
        ]
    );
}

fn examples_run_and_are_deterministic(path: &Path) {
    let g = common::load(path);
    let first = run(&g, 1);
    let second = run(&g, 1);
    assert_eq!(
        bits(&first),
        bits(&second),
        "{}: two runs differ",
        path.display()
    );
    for t in &first {
        assert!(
            t.to_f32_vec().iter().all(|x| x.is_finite()),
            "{}: non-finite output",
            path.display()
        );
        assert!(t.max_abs() > 0.0, "{}: all-zero output", path.display());
    }
    let other_seed = run(&g, 2);
    assert_ne!(
        bits(&first),
        bits(&other_seed),
        "{}: the seed changes nothing",
        path.display()
    );
}

/// Removing every sharding annotation must not change any output bit.
fn annotations_never_change_results(path: &Path) {
    let text = std::fs::read_to_string(path).expect("readable");
    let plain_text = text.replace("@tp", "").replace("@dp", "");
    assert_ne!(
        text,
        plain_text,
        "{} carries no annotation to strip",
        path.display()
    );
    let sharded = tpc::load("sharded.ir", &text).expect("valid");
    let plain = tpc::load("plain.ir", &plain_text).unwrap_or_else(|e| panic!("{}", e.render()));
    assert_eq!(
        bits(&run(&sharded, 5)),
        bits(&run(&plain, 5)),
        "{}",
        path.display()
    );
}

/// Every op of every example has a factor rule that fits its shapes.
fn factor_rules_fit_every_example(path: &Path) {
    let g = common::load(path);
    for &v in g.values() {
        let tys: Vec<&tpc::ir::TensorType> = g.operands(v).into_iter().map(|o| g.ty(o)).collect();
        let rule = tpc::ir::rule_of(&g, v);
        if let Err(e) = tpc::ir::check_rule(&rule, &tys, &g.ty(v).shape) {
            panic!("{} %{}: {e}", path.display(), g.name(v));
        }
    }
}

/// The fused QKV reshape makes the heads a factor of the fused dim.
fn the_fused_qkv_reshape_makes_the_heads_a_factor() {
    let g = common::load(&common::root().join("examples/attention_glm.ir"));
    let heads = g.find("qkv.heads").expect("the reshape");
    let rule = tpc::ir::rule_of(&g, heads);
    let fused: Vec<String> = rule
        .operand_dim(0, 2)
        .iter()
        .map(|&f| rule.factors[f].extent.to_string())
        .collect();
    assert_eq!(fused, ["3", "16", "48"]);
}

/// The generated GPT stacks parse, verify, round-trip, have fitting factor rules, and run.
fn generated_gpt_stacks_are_valid_programs() {
    use tpc::gen::{gpt_stack, Annotate};
    for (layers, annotate) in [(1, Annotate::Megatron), (3, Annotate::None)] {
        let text = gpt_stack(layers, 4, 32, annotate);
        let g = tpc::load("gen.ir", &text).unwrap_or_else(|e| panic!("{text}\n{}", e.render()));
        assert_eq!(g.params().len(), 1 + 12 * layers);
        assert_eq!(g.len() - g.params().len(), 21 * layers);
        let printed = print(&g, PrintMode::Source);
        assert_eq!(
            print(
                &tpc::load("p.ir", &printed).expect("reparses"),
                PrintMode::Source
            ),
            printed
        );
        for &v in g.values() {
            let tys: Vec<&tpc::ir::TensorType> =
                g.operands(v).into_iter().map(|o| g.ty(o)).collect();
            tpc::ir::check_rule(&tpc::ir::rule_of(&g, v), &tys, &g.ty(v).shape).expect("rule fits");
        }
        let out = run(&g, 3);
        assert_eq!(out[0].shape(), &[2, 8, 32]);
        assert!(out[0].to_f32_vec().iter().all(|x| x.is_finite()));
        assert_eq!(text.contains("@tp"), annotate == Annotate::Megatron);
    }
}
