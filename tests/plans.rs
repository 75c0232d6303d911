//! The plans the examples compile to at 8 devices (B = 2, S = 128): which collectives, over
//! which axes, and how many bytes each moves per device.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::harness;
use tpc::passes::PassManager;

fn main() {
    let mut trials = harness::trials![
        megatron_mlp_needs_one_allreduce_whether_annotated_fully_or_once,
        attention_in_every_fused_layout_needs_one_allreduce_and_nothing_else,
        split_qkv_of_unequal_widths_needs_one_allreduce_and_no_gather,
        block_needs_two_allreduces,
        sequence_parallel_block_scatters_and_gathers_instead_of_allreducing,
        sequence_parallel_block_gathers_weights_when_activations_are_larger,
        dp_tp_mlp_reduces_over_tp_only,
        dropout_on_a_broadcast_needs_no_collective,
        llama_block_with_grouped_query_heads_needs_two_allreduces,
        vocabulary_parallel_embedding_head_and_loss_never_gather_the_vocabulary
    ];
    let mut files = common::ir_files("examples");
    for dir in common::PASS_DIRS {
        files.extend(common::ir_files(dir));
    }
    trials.extend(harness::per_file(
        "compiled_programs_compile_to_themselves",
        &files,
        compiled_programs_compile_to_themselves,
    ));
    harness::run(trials)
}

/// (kind, axis) -> count, and the report itself.
fn plan(file: &str) -> (BTreeMap<(String, String), usize>, serde_json::Value) {
    let mut g = common::load(&common::root().join("examples").join(file));
    let b: BTreeMap<String, i64> = [("B".to_string(), 2), ("S".to_string(), 128)]
        .into_iter()
        .collect();
    let mut pm = PassManager::parse(tpc::passes::DEFAULT_PIPELINE).expect("pipeline");
    pm.verify_each = true;
    pm.context.symbols = b.clone();
    // As `tpc compile --devices 8` runs the passes.
    pm.context.axis_sizes = g
        .mesh
        .resolve(Some(8))
        .map(|s| s.into_iter().collect())
        .unwrap_or_default();
    pm.run(&mut g).expect("passes");
    let report = tpc::report::report(&g, 8, &b).expect("report");
    let mut counts = BTreeMap::new();
    let slices = report["local_slices"].as_array().expect("list");
    for c in report["collectives"]
        .as_array()
        .expect("list")
        .iter()
        .chain(slices)
    {
        let key = (
            c["kind"].as_str().unwrap_or("").to_string(),
            c["axis"].as_str().unwrap_or("").to_string(),
        );
        *counts.entry(key).or_insert(0) += 1;
    }
    (counts, report)
}

fn only(kind: &str, axis: &str, n: usize) -> BTreeMap<(String, String), usize> {
    [((kind.to_string(), axis.to_string()), n)]
        .into_iter()
        .collect()
}

fn megatron_mlp_needs_one_allreduce_whether_annotated_fully_or_once() {
    for file in ["mlp.ir", "mlp_auto.ir"] {
        let (counts, report) = plan(file);
        assert_eq!(counts, only("allreduce", "tp", 1), "{file}");
        // [2, 128, 768] in bf16 on every device.
        assert_eq!(
            report["totals"]["allreduce"]["bytes_per_device"],
            2 * 128 * 768 * 2,
            "{file}"
        );
        assert_eq!(report["mesh"]["tp"], 8);
    }
}

fn attention_in_every_fused_layout_needs_one_allreduce_and_nothing_else() {
    for file in [
        "attention_glm.ir",
        "attention_bloom.ir",
        "attention_codegen.ir",
        "attention_uneven.ir",
    ] {
        let (counts, _) = plan(file);
        assert_eq!(counts, only("allreduce", "tp", 1), "{file}");
    }
}

/// Qwen's fused QKV weight has parts of unequal widths (q 1024 rows, k and v 512): `split` cuts
/// it, each part is sharded on its heads where it is cut (a `shard`: each rank keeps its rows,
/// no traffic), and with grouped-query heads and rotary embeddings the attention still needs one
/// allreduce and no gather.
fn split_qkv_of_unequal_widths_needs_one_allreduce_and_no_gather() {
    let (counts, report) = plan("attention_qwen.ir");
    let want: BTreeMap<(String, String), usize> = [
        (("allreduce".to_string(), "tp".to_string()), 1),
        (("shard".to_string(), "tp".to_string()), 6),
    ]
    .into_iter()
    .collect();
    assert_eq!(counts, want);
    assert_eq!(
        report["totals"]["allreduce"]["bytes_per_device"],
        2 * 128 * 1024 * 2
    );
    // The shards move nothing: listed apart, with the piece each device keeps, in no total.
    assert!(report["totals"].get("shard").is_none(), "{report}");
    let slices = report["local_slices"].as_array().expect("list");
    assert_eq!(slices.len(), 6);
    assert!(slices
        .iter()
        .all(|s| s["kind"] == "shard" && s["bytes_per_device"].as_u64().unwrap_or(0) > 0));
    assert!(report["collectives"]
        .as_array()
        .expect("list")
        .iter()
        .all(|c| c["kind"] != "shard"));
}

fn block_needs_two_allreduces() {
    assert_eq!(plan("block.ir").0, only("allreduce", "tp", 2));
}

/// A Llama layer: rotary embeddings, 8 kv heads repeated for 16 query heads, SwiGLU. With one kv
/// head per device, repeat_kv's reshape back to 16 heads is the same layout written two ways:
/// nothing is gathered, and the layer moves Megatron's two allreduces of [2, 128, 1024] bf16.
fn llama_block_with_grouped_query_heads_needs_two_allreduces() {
    let (counts, report) = plan("llama_block.ir");
    assert_eq!(counts, only("allreduce", "tp", 2));
    assert_eq!(
        report["totals"]["allreduce"]["bytes_per_device"],
        2 * (2 * 128 * 1024 * 2)
    );
}

/// GPT-2's embedding, tied head and shifted loss with the table split on the vocabulary (50257
/// rows, unevenly over 8): one allreduce of the looked-up [2, 128, 768] bf16, and three of one f32
/// per predicted position (2 × 127: the max, the sum of exponentials, the target's logit), where
/// gathering the table or the logits would move megabytes.
fn vocabulary_parallel_embedding_head_and_loss_never_gather_the_vocabulary() {
    let (counts, report) = plan("lm_head_loss.ir");
    assert_eq!(counts, only("allreduce", "tp", 4));
    let bytes: Vec<u64> = report["collectives"]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| c["bytes_per_device"].as_u64().unwrap_or(0))
        .collect();
    let position = 2 * 127 * 4;
    assert_eq!(bytes, [2 * 128 * 768 * 2, position, position, position]);
}

fn sequence_parallel_block_scatters_and_gathers_instead_of_allreducing() {
    let (counts, report) = plan("block_seqpar.ir");
    let want: BTreeMap<(String, String), usize> = [
        (("allgather".to_string(), "tp".to_string()), 2),
        (("reduce_scatter".to_string(), "tp".to_string()), 2),
    ]
    .into_iter()
    .collect();
    assert_eq!(counts, want);
    // Each allgather yields the whole [2, 128, 768] on every device; each reduce_scatter 1/8.
    let whole = 2 * 128 * 768 * 2;
    assert_eq!(report["totals"]["allgather"]["bytes_per_device"], 2 * whole);
    assert_eq!(
        report["totals"]["reduce_scatter"]["bytes_per_device"],
        2 * whole / 8
    );
}

/// With a batch of 64 sequences of 1024 the activations outweigh the weights, and the same
/// annotations make the plan gather the weights instead (the QKV projection on the local
/// sequence, then an all_to_all to heads; the MLP FSDP-like): the choice is by bytes at the bound
/// sizes, not by a fixed preference.
fn sequence_parallel_block_gathers_weights_when_activations_are_larger() {
    let mut g = common::load(&common::root().join("examples/block_seqpar.ir"));
    let mut pm = PassManager::parse(tpc::passes::DEFAULT_PIPELINE).expect("pipeline");
    pm.context.symbols = tpc::parse_bindings("B=64,S=1024").expect("bindings");
    // As `tpc compile --devices 8` runs the passes: an all_to_all's bytes depend on the ranks.
    pm.context.axis_sizes = [("tp".to_string(), 8)].into_iter().collect();
    pm.run(&mut g).expect("passes");
    let gathered: Vec<String> = g
        .values()
        .iter()
        .filter(|&&v| g.op(v).name() == "allgather")
        .map(|&v| g.name(g.operands(v)[0]).to_string())
        .collect();
    // (The fused weight's heads are not its outermost factor: reordered before the gather.)
    for w in ["attn.c_attn.weight", "mlp.c_fc.weight"] {
        assert!(gathered.iter().any(|g| g.starts_with(w)), "{gathered:?}");
    }
}

fn dp_tp_mlp_reduces_over_tp_only() {
    let (counts, report) = plan("mlp_dp_tp.ir");
    assert_eq!(counts, only("allreduce", "tp", 1));
    // The batch is split over dp, so each device reduces half of [2, 128, 768].
    assert_eq!(
        report["totals"]["allreduce"]["bytes_per_device"],
        128 * 768 * 2
    );
}

fn dropout_on_a_broadcast_needs_no_collective() {
    let (counts, _) = plan("dropout_broadcast.ir");
    assert!(counts.is_empty(), "{counts:?}");
    // Peak memory comes from the memory plan of the compiled host programs.
    let path = common::root().join("examples").join("dropout_broadcast.ir");
    let text = std::fs::read_to_string(path).expect("readable");
    let a = tpc::compile(
        "dropout_broadcast.ir",
        &text,
        &tpc::CompileOptions::devices(8),
    )
    .expect("compiles");
    let peak = a.report["peak_bytes_per_device"].as_u64().unwrap_or(0);
    assert!(peak > 0);
    let per_rank = a.report["peak_bytes_per_rank"]
        .as_array()
        .expect("per rank");
    assert_eq!(per_rank.iter().filter_map(|x| x.as_u64()).max(), Some(peak));
}

/// What `tpc compile` prints is itself a program: compiling it again at the same size changes
/// nothing (no collective is added twice, propagation leaves collectives alone, partial sums
/// may pass through the permutes around a reduce_scatter, `(4@tp, 32)` after a reshape is seen
/// to be the `128@tp` it came from). Every example at 8 devices, every pass case at 4 (8 on a
/// dp × tp mesh).
fn compiled_programs_compile_to_themselves(path: &Path) {
    let b = tpc::parse_bindings("B=2,S=128").expect("bindings");
    let compile = |g: &mut tpc::Graph, devices: i64| {
        let mut pm = PassManager::parse(tpc::passes::DEFAULT_PIPELINE).expect("pipeline");
        pm.verify_each = true;
        pm.context.symbols = b.clone();
        pm.context.axis_sizes = g
            .mesh
            .resolve(Some(devices))
            .expect("mesh")
            .into_iter()
            .collect();
        pm.run(g).expect("passes");
        tpc::ir::print(g, tpc::ir::PrintMode::Full)
    };
    let mut g = common::load(path);
    let devices = if path.starts_with(common::root().join("examples")) {
        8
    } else {
        common::case_devices(&g)
    };
    let once = compile(&mut g, devices);
    let mut again = tpc::load("once.ir", &once)
        .unwrap_or_else(|e| panic!("{}\n{}", path.display(), e.render()));
    tpc::resolve_devices(&again, devices, &tpc::SourceFile::new("once.ir", &once))
        .unwrap_or_else(|e| panic!("{}\n{}", path.display(), e.render()));
    assert_eq!(compile(&mut again, devices), once, "{}", path.display());
}
