//! One compile for every size: every example compiled once without binding its host programs
//! (`tpc::compile`'s default), then bound at several (B, S) and run on the CPU executor (and,
//! where a C++ compiler is present, as CUDA C on the emulator) against the unsharded
//! reference; ranks with even splits share one host template; a binding that breaks a split's
//! divisibility is an error naming the symbol.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::harness;
use tpc::ir::DType;

fn bindings(text: &str) -> BTreeMap<String, i64> {
    tpc::parse_bindings(text).expect("bindings")
}

use common::relative_error as rel_err;

fn main() {
    let mut trials = harness::trials![
        the_emulated_cuda_c_runs_one_compile_at_two_sizes,
        even_splits_share_one_template_and_uneven_ones_do_not,
        sizes_are_expressions_and_binding_gives_the_plan_at_that_size,
        a_binding_that_breaks_a_split_is_an_error_naming_the_symbol,
        a_binding_that_leaves_ranks_idle_is_an_error,
        a_stack_of_identical_layers_generates_each_kernel_once,
        a_symbol_without_a_value_still_compiles_to_templates_and_binds_later,
        the_blocks_of_the_examples_collectives_are_one_nccl_call_each
    ];
    trials.extend(harness::per_file(
        "every_example_compiled_once_runs_at_several_sizes",
        &common::ir_files("examples"),
        every_example_compiled_once_runs_at_several_sizes,
    ));
    harness::run(trials)
}

/// A few roundings of the loosest dtype the program computes in.
fn tolerance(g: &tpc::Graph) -> f64 {
    let low = g.values().iter().any(|&v| g.ty(v).dtype != DType::F32);
    if low {
        1.0 / 32.0
    } else {
        1e-4
    }
}

fn compile_once(path: &Path) -> (tpc::Graph, tpc::Artifacts) {
    let g = common::load(path);
    let text = std::fs::read_to_string(path).expect("readable");
    let devices = common::case_devices(&g).max(8);
    let fixed: i64 = g.mesh.axes.iter().filter_map(|a| a.size).product();
    let devices = if fixed > 1 { fixed } else { devices };
    let a = tpc::compile(
        &common::stem(path),
        &text,
        &tpc::CompileOptions::devices(devices),
    )
    .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.render()));
    (g, a)
}

fn every_example_compiled_once_runs_at_several_sizes(path: &Path) {
    let (g, a) = compile_once(path);
    assert!(!a.specialized);
    let steps: Vec<usize> = a.templates.programs.iter().map(|t| t.steps.len()).collect();
    for b in ["B=2,S=8", "B=4,S=24", "B=2,S=64"] {
        let b = bindings(b);
        let at = a
            .bind(&b)
            .unwrap_or_else(|e| panic!("{} at {b:?}: {e}", path.display()));
        // The same templates, bound: as many steps, sized anew.
        let bound: Vec<usize> = at
            .templates
            .programs
            .iter()
            .map(|t| t.steps.len())
            .collect();
        assert_eq!(bound, steps);
        for (r, h) in at.hosts().iter().enumerate() {
            let t = at.templates.program_of(r).expect("a template");
            assert_eq!(h.steps.len(), t.steps.len(), "{} rank {r}", path.display());
        }
        let inputs = tpc::runtime::random_inputs(&g, &b, 11).expect("inputs");
        let want = tpc::runtime::run_reference(&g, &inputs, &b).expect("reference");
        let got = tpc::run_on_cpu(&at, &inputs)
            .unwrap_or_else(|e| panic!("{} at {b:?}: {e}", path.display()));
        for (w, x) in want.iter().zip(&got) {
            let err = rel_err(w, x);
            assert!(
                err <= tolerance(&g),
                "{} at {b:?}: error {err:e}",
                path.display()
            );
        }
    }
}

fn the_emulated_cuda_c_runs_one_compile_at_two_sizes() {
    if !common::present_or_skip(common::cxx_missing(), "TPC_REQUIRE_CXX") {
        return;
    }
    for name in ["mlp.ir", "block_seqpar.ir", "attention_uneven.ir"] {
        let path = common::root().join("examples").join(name);
        let (g, a) = compile_once(&path);
        for b in ["B=2,S=16", "B=2,S=40"] {
            let b = bindings(b);
            let at = a
                .bind(&b)
                .unwrap_or_else(|e| panic!("{name} at {b:?}: {e}"));
            let inputs = tpc::runtime::random_inputs(&g, &b, 3).expect("inputs");
            let want = tpc::runtime::run_reference(&g, &inputs, &b).expect("reference");
            let got =
                tpc::run_emulated(&at, &inputs).unwrap_or_else(|e| panic!("{name} at {b:?}: {e}"));
            for (w, x) in want.iter().zip(&got) {
                let err = rel_err(w, x);
                assert!(err <= tolerance(&g), "{name} at {b:?}: error {err:e}");
            }
        }
    }
}

fn even_splits_share_one_template_and_uneven_ones_do_not() {
    let (_, a) = compile_once(&common::root().join("examples/block.ir"));
    assert_eq!(a.templates.programs.len(), 1);
    assert_eq!(a.templates.programs[0].ranks, (0..8).collect::<Vec<_>>());
    assert_eq!(a.report["host_programs"], 1);
    // 12 heads over 8 devices: ranks 0-3 hold two heads, 4-7 one.
    let (_, a) = compile_once(&common::root().join("examples/attention_uneven.ir"));
    let classes: Vec<Vec<usize>> = a
        .templates
        .programs
        .iter()
        .map(|t| t.ranks.clone())
        .collect();
    assert_eq!(classes, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
    let of_rank = a.report["host_program_of_rank"].clone();
    assert_eq!(of_rank, serde_json::json!([0, 0, 0, 0, 1, 1, 1, 1]));
}

fn sizes_are_expressions_and_binding_gives_the_plan_at_that_size() {
    let (_, a) = compile_once(&common::root().join("examples/block_seqpar.ir"));
    let text = a.template_text(0).expect("rank 0");
    // The sequence is split over 8 ranks: each holds S/8 positions, whatever S is.
    assert!(text.contains("bf16[B, S/8, 768]"), "{text}");
    let small = a.bind(&bindings("B=2,S=16")).expect("binds");
    let large = a.bind(&bindings("B=4,S=512")).expect("binds");
    let (p0, p1) = (small.hosts()[0].peak_bytes, large.hosts()[0].peak_bytes);
    // The weights are the same at both sizes; the activations are 64 times larger.
    assert!(p1 > 4 * p0, "arena {p0} at B=2,S=16 and {p1} at B=4,S=512");
    assert_eq!(
        large.report["peak_bytes_per_device"].as_u64(),
        Some(
            large
                .hosts()
                .iter()
                .map(|h| h.peak_bytes)
                .max()
                .unwrap_or(0)
        )
    );
}

fn a_binding_that_breaks_a_split_is_an_error_naming_the_symbol() {
    let (_, a) = compile_once(&common::root().join("examples/block_seqpar.ir"));
    let e = a
        .bind(&bindings("B=2,S=12"))
        .expect_err("12 positions over 8 ranks");
    let m = e.to_string();
    assert!(m.contains("S=12") && m.contains("S/8"), "{m}");
    assert!(
        matches!(
            e,
            tpc::Error::Codegen(tpc::codegen::Error::Binding { ref symbols, .. }) if symbols == &["S"]
        ),
        "{e:?}"
    );
    // Specialized to that binding, the uneven split is cut as the executors cut it.
    let path = common::root().join("examples/block_seqpar.ir");
    let text = std::fs::read_to_string(&path).expect("readable");
    let options = tpc::CompileOptions {
        devices: Some(8),
        bindings: bindings("B=2,S=12"),
        specialize: true,
        ..tpc::CompileOptions::default()
    };
    let g = common::load(&path);
    let s = tpc::compile("block_seqpar", &text, &options).expect("compiles for S=12");
    assert!(s.templates.programs.len() > 1, "uneven: several classes");
    let inputs = tpc::runtime::random_inputs(&g, &s.bindings, 2).expect("inputs");
    let want = tpc::runtime::run_reference(&g, &inputs, &s.bindings).expect("reference");
    let got = tpc::run_on_cpu(&s, &inputs).expect("runs");
    assert!(rel_err(&want[0], &got[0]) <= tolerance(&g));
}

/// Binding artifacts compiled for every B at a B that leaves ranks without rows is an error
/// saying so, not host programs with empty pieces.
fn a_binding_that_leaves_ranks_idle_is_an_error() {
    let src = "mesh dp\n\nfunc @f(%x: f32[B@dp, 64]) -> f32[B@dp, 64] {\n  %y = exp(%x)\n  return %y\n}\n";
    let options = tpc::CompileOptions {
        devices: Some(4),
        bindings: bindings("B=8"),
        ..tpc::CompileOptions::default()
    };
    let a = tpc::compile("idle.ir", src, &options).expect("compiles");
    let e = a.bind(&bindings("B=2")).expect_err("2 rows over 4 ranks");
    let m = e.to_string();
    assert!(
        m.contains("splits a factor of B = 2") && m.contains("2 of them would hold none"),
        "{m}"
    );
    assert!(a.bind(&bindings("B=12")).is_ok());
}

fn a_stack_of_identical_layers_generates_each_kernel_once() {
    let kernels = |layers: usize| {
        let config = tpc::gen::Llama {
            layers,
            heads: 8,
            kv_heads: 4,
            embed: 128,
            ffn: 256,
            vocab: None,
            split_kv: true,
            eps: 1e-5,
        };
        let text = tpc::gen::llama_stack(&config, tpc::gen::Annotate::Megatron);
        let a = tpc::compile("llama.ir", &text, &tpc::CompileOptions::devices(4))
            .unwrap_or_else(|e| panic!("{}", e.render()));
        assert_eq!(a.templates.programs.len(), 1);
        (a.kernels().len(), a.cuda.len())
    };
    let (two, four) = (kernels(2), kernels(4));
    assert_eq!(two, four, "kernels (count, CUDA bytes) at 2 and 4 layers");
}

fn a_symbol_without_a_value_still_compiles_to_templates_and_binds_later() {
    let text = "mesh tp\nfunc @f(%x: f32[T, 64], %w0: f32[96@tp, 64], %w1: f32[64, 96@tp]) -> f32[T, 64] {\n  %h = linear(%x, %w0)\n  %y = linear(%h, %w1)\n  return %y\n}\n";
    let a = tpc::compile("t.ir", text, &tpc::CompileOptions::devices(4)).expect("compiles");
    assert_eq!(a.report["unbound_symbols"], serde_json::json!(["T"]));
    assert_eq!(a.report["collectives"][0]["kind"], "allreduce");
    assert!(a.hosts().is_empty());
    assert!(a.template_text(3).expect("rank 3").contains("f32[T, 24]"));
    let inputs =
        tpc::runtime::random_inputs(&tpc::load("t.ir", text).unwrap(), &bindings("T=5"), 1)
            .expect("inputs");
    let e = tpc::run_on_cpu(&a, &inputs).expect_err("not bound");
    assert!(e.to_string().contains("bind T"), "{e}");
    let at = a.bind(&bindings("T=5")).expect("binds");
    let g = tpc::load("t.ir", text).expect("parses");
    let want = tpc::runtime::run_reference(&g, &inputs, &bindings("T=5")).expect("reference");
    let got = tpc::run_on_cpu(&at, &inputs).expect("runs");
    assert!(rel_err(&want[0], &got[0]) <= 1e-5);
    assert!(at.report["peak_bytes_per_device"].as_u64().unwrap_or(0) > 0);
}

/// The CUDA executor's plan of each collective of a bound program, as `plan::describe` says.
fn nccl_calls(a: &tpc::Artifacts) -> Vec<String> {
    tpc::runtime::cuda::plan::describe(&a.compiled)
        .expect("a valid plan")
        .into_iter()
        .next()
        .unwrap_or_default()
}

fn the_blocks_of_the_examples_collectives_are_one_nccl_call_each() {
    // Sequence parallelism: allgathers and reduce-scatters of the outer (sequence) dim.
    let (_, a) = compile_once(&common::root().join("examples/block_seqpar.ir"));
    let a = a.bind(&bindings("B=2,S=64")).expect("binds");
    let calls = nccl_calls(&a);
    assert_eq!(calls.len(), 4, "{calls:#?}");
    for c in &calls {
        let one = c.matches("nccl").count() == 1;
        assert!(
            one && (c.contains("ncclAllGather(") || c.contains("ncclReduceScatter(")),
            "{c}"
        );
    }
    // The MLP's allreduce, at a size the compile never saw.
    let (_, a) = compile_once(&common::root().join("examples/mlp.ir"));
    let a = a.bind(&bindings("B=3,S=40")).expect("binds");
    let calls = nccl_calls(&a);
    assert_eq!(calls.len(), 1);
    assert!(
        calls[0].contains("ncclAllReduce(sum, in+0 -> out+0, 92160)"),
        "{}",
        calls[0]
    );
}
