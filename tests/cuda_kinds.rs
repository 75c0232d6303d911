//! The CUDA C of every kernel kind: kernels built by hand for each kind and variant (pointwise
//! with scalar arguments, broadcasts and Philox draws; row kernels like softmax and layer norm,
//! per-row outputs, rows over a leading dim and over several dims; strided copies of every rank;
//! embedding; attention, causal or not, in f32/bf16/f16; cross-entropy), and every kernel that
//! segmentation makes of the examples, compile with NVRTC for every architecture tpc targets
//! (where libnvrtc is present: CI installs it and sets TPC_REQUIRE_NVRTC=1, so there a missing
//! library fails instead of skipping). The source of a few of them is snapshot-tested.

mod common;
mod kinds;

use std::path::{Path, PathBuf};

use common::harness;
use tpc::codegen::cuda::{kernel_source, module_source};
use tpc::codegen::kir::{Embedding, Kept, Kernel, Pick};
use tpc::ir::DType;

use kinds::*;

fn main() {
    let mut trials = harness::trials![
        nvrtc_compiles_every_kind,
        every_kernel_is_written,
        attention_head_dim_limit,
        cuda_source_snapshots,
        the_examples_make_at_least_3_kinds
    ];
    trials.extend(harness::per_file_needing(
        "nvrtc_compiles_every_example_kernel",
        &example_files(),
        common::nvrtc_missing,
        "TPC_REQUIRE_NVRTC",
        nvrtc_compiles_every_example_kernel,
    ));
    harness::run(trials)
}

/// The examples and the kernel test cases.
fn example_files() -> Vec<PathBuf> {
    let mut files = common::ir_files("examples");
    files.extend(common::ir_files("tests/kernels"));
    files
}

/// Every kernel segmentation makes of a file, of every kind.
fn kernels_of(path: &Path) -> Vec<Kernel> {
    let g = common::load_primitive(path);
    tpc::codegen::fuse::segment(&g)
        .expect("segmentation")
        .kernels
}

fn assert_compiles(what: &str, kernels: &[Kernel]) {
    let source = module_source(kernels);
    assert!(
        !source.contains("not written yet"),
        "{what}: placeholder in\n{source}"
    );
    for arch in tpc::codegen::nvrtc::ARCHES {
        let ptx = tpc::codegen::nvrtc::compile(&source, arch)
            .unwrap_or_else(|e| panic!("{what}: {e}\n{source}"));
        assert!(ptx.contains(&format!(".target {arch}")), "{what}");
        for k in kernels {
            assert!(
                ptx.contains(&format!(".entry {}(", k.name())),
                "{what}: no entry {} for {arch}",
                k.name()
            );
        }
    }
}

fn nvrtc_compiles_every_kind() {
    if !common::present_or_skip(common::nvrtc_missing(), "TPC_REQUIRE_NVRTC") {
        return;
    }
    assert_compiles("hand-built kernels", &all_kernels());
}

fn nvrtc_compiles_every_example_kernel(path: &Path) {
    assert_compiles(&path.display().to_string(), &kernels_of(path));
}

/// The examples make kernels of several kinds, so that the check above covers more than one.
fn the_examples_make_at_least_3_kinds() {
    let kinds: std::collections::HashSet<_> = example_files()
        .iter()
        .flat_map(|p| kernels_of(p))
        .map(|k| std::mem::discriminant(&k))
        .collect();
    assert!(
        kinds.len() >= 3,
        "the examples make only {} kinds",
        kinds.len()
    );
}

fn every_kernel_is_written() {
    for k in all_kernels() {
        let src = kernel_source(&k);
        assert!(
            src.contains(&format!("extern \"C\" __global__ void {}(", k.name())),
            "{}:\n{src}",
            k.name()
        );
        assert!(!src.contains("not written yet"), "{}:\n{src}", k.name());
    }
}

/// The host can check the attention kernel's head-dim limit, which the kernel checks too.
fn attention_head_dim_limit() {
    let max = tpc::codegen::cuda::ATTENTION_MAX_HEAD_DIM;
    assert!(max >= 128, "common head dims are 64 and 128");
    for causal in [false, true] {
        let src = kernel_source(&attention(DType::BF16, causal));
        assert!(
            src.contains(&format!("d <= {max} && dv >= 0 && dv <= {max}")),
            "{src}"
        );
    }
}

fn snapshot_of(k: &Kernel) -> String {
    format!("{k}\n\n{}", kernel_source(k))
}

fn cuda_source_snapshots() {
    insta::assert_snapshot!("cuda_pointwise_bf16", snapshot_of(&pointwise_bf16()));
    insta::assert_snapshot!("cuda_pointwise_dropout", snapshot_of(&pointwise_dropout()));
    insta::assert_snapshot!(
        "cuda_row_softmax",
        snapshot_of(&softmax("row_softmax", DType::F32, 3, (2, 3)))
    );
    insta::assert_snapshot!("cuda_row_layer_norm", snapshot_of(&layer_norm()));
    insta::assert_snapshot!(
        "cuda_row_softmax_dim0",
        snapshot_of(&softmax("row_softmax_dim0", DType::BF16, 2, (0, 1)))
    );
    insta::assert_snapshot!("cuda_row_dropout_rms", snapshot_of(&row_dropout_rms()));
    insta::assert_snapshot!("cuda_copy_bf16_3", snapshot_of(&copy(DType::BF16, 3)));
    insta::assert_snapshot!(
        "cuda_embedding",
        snapshot_of(&Kernel::Embedding(Embedding {
            name: "embed".into(),
            dtype: DType::BF16,
        }))
    );
    insta::assert_snapshot!(
        "cuda_attention_bf16_causal",
        snapshot_of(&attention(DType::BF16, true))
    );
    insta::assert_snapshot!(
        "cuda_pick",
        snapshot_of(&Kernel::Pick(Pick {
            name: "pick".into(),
            dtype: DType::BF16,
            ignore_index: -100,
        }))
    );
    insta::assert_snapshot!(
        "cuda_kept",
        snapshot_of(&Kernel::Kept(Kept {
            name: "kept".into(),
            ignore_index: -100,
        }))
    );
}
