//! Generated pointwise kernels: the kernel IR of every case and example is snapshot-tested with
//! its CUDA C; the CPU interpreter of the kernel IR equals the unfused ops bit for bit; and NVRTC
//! compiles every kernel for sm_80 and sm_90 where libnvrtc is present (CI installs it and sets
//! TPC_REQUIRE_NVRTC=1, so there a missing library fails instead of skipping). Each check of each
//! file is a trial, `<check>::<file>`: `cargo test --test kernels -- fan_out` runs all three checks
//! of tests/kernels/fan_out.ir.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::harness;
use tpc::codegen::fuse::{segment, FusedCall, ScalarSource, Segment};
use tpc::codegen::kir::{Fused, Kernel};
use tpc::runtime::{random_inputs, run_reference};

fn main() {
    let files = files();
    let mut trials = harness::per_file(
        "kernel_ir_and_cuda_snapshots",
        &files,
        kernel_ir_and_cuda_snapshots,
    );
    trials.extend(harness::per_file(
        "interpreted_kernels_equal_the_unfused_ops",
        &files,
        interpreted_kernels_equal_the_unfused_ops,
    ));
    trials.push(harness::trial(
        "interpreted_kernels_are_at_least_10",
        interpreted_kernels_are_at_least_10,
    ));
    trials.extend(harness::per_file_needing(
        "nvrtc_compiles_every_kernel",
        &files,
        common::nvrtc_missing,
        "TPC_REQUIRE_NVRTC",
        nvrtc_compiles_every_kernel,
    ));
    harness::run(trials)
}

fn bindings() -> BTreeMap<String, i64> {
    [("B", 2), ("S", 8), ("E", 4)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

fn files() -> Vec<std::path::PathBuf> {
    let mut f = common::ir_files("tests/kernels");
    f.extend(common::ir_files("examples"));
    f
}

fn kernels(g: &tpc::Graph) -> Vec<(Fused, FusedCall)> {
    let plan = segment(g).expect("segmentation");
    plan.segments
        .into_iter()
        .filter_map(|s| match (s, &plan.kernels) {
            (Segment::Fused { kernel, call }, ks) => match &ks[kernel] {
                Kernel::Fused(f) => Some((f.clone(), call)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// The distinct fused kernels, in first-use order (a kernel that several segments call, like the
/// same rotary embedding applied to q and k, once).
fn distinct_kernels(g: &tpc::Graph) -> Vec<Fused> {
    let plan = segment(g).expect("segmentation");
    plan.kernels
        .into_iter()
        .filter_map(|k| match k {
            Kernel::Fused(f) => Some(f),
            _ => None,
        })
        .collect()
}

fn kernel_ir_and_cuda_snapshots(path: &Path) {
    let g = common::load_primitive(path);
    let ks = distinct_kernels(&g);
    let mut text = String::new();
    for k in &ks {
        text.push_str(&format!("{k}\n\n"));
    }
    let all: Vec<Kernel> = ks.iter().map(|k| Kernel::Fused(k.clone())).collect();
    text.push_str(&tpc::codegen::cuda::module_source(&all));
    insta::assert_snapshot!(format!("kernels_{}", common::stem(path)), text);
}

/// Each kernel, run by the CPU interpreter on the values the reference computes for its inputs,
/// gives exactly the value the reference computes for its output.
fn interpreted_kernels_equal_the_unfused_ops(path: &Path) {
    let b = bindings();
    let g = common::load_primitive(path);
    let inputs = random_inputs(&g, &b, 5).expect("inputs");
    for (k, call) in kernels(&g) {
        // The graph returning the kernel's inputs and outputs, to read their values.
        let sources: Vec<tpc::ir::ValueId> = call.inputs.clone();
        let stored: Vec<tpc::ir::ValueId> = call.outputs.clone();
        let mut probe = g.clone();
        probe.set_outputs(sources.iter().chain(&stored).copied().collect());
        probe.result_types.clear();
        let values = run_reference(&probe, &inputs, &b).expect("reference");
        let (ins, want) = values.split_at(sources.len());
        let refs: Vec<&tpc::runtime::Tensor> = ins.iter().collect();
        let space = tpc::ir::layout::bound_shape(g.ty(call.space), &b).expect("bound");
        let scalars: Vec<f32> = call
            .args
            .iter()
            .map(|a| match a {
                ScalarSource::InverseCount(count) => {
                    (1.0 / count.eval(&b).expect("bound") as f64) as f32
                }
            })
            .collect();
        let got = tpc::runtime::kernel::run_pointwise(&k, &refs, &space, &scalars, &call.seeds)
            .unwrap_or_else(|e| panic!("{}: {}: {e}", path.display(), k.name));
        let bits = |t: &tpc::runtime::Tensor| {
            t.to_f32_vec()
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(got.len(), want.len());
        // The program is decomposed, so the reference computes what the kernel computes, in
        // the same order (a mean's `1/n` is `inv_count`'s f32 value in both): bit for bit.
        for (x, w) in got.iter().zip(want) {
            assert_eq!(bits(x), bits(w), "{}: {}", path.display(), k.name);
        }
    }
}

/// The interpreter check above is not vacuous: the cases and examples make at least 10 kernels.
fn interpreted_kernels_are_at_least_10() {
    let checked: usize = files()
        .iter()
        .map(|p| kernels(&common::load_primitive(p)).len())
        .sum();
    assert!(checked >= 10, "only {checked} kernels checked");
}

fn nvrtc_compiles_every_kernel(path: &Path) {
    let g = common::load_primitive(path);
    let ks = distinct_kernels(&g);
    let refs: Vec<&Fused> = ks.iter().collect();
    let all: Vec<Kernel> = ks.iter().map(|k| Kernel::Fused(k.clone())).collect();
    let source = tpc::codegen::cuda::module_source(&all);
    for arch in tpc::codegen::nvrtc::ARCHES {
        let ptx = tpc::codegen::nvrtc::compile(&source, arch)
            .unwrap_or_else(|e| panic!("{}: {e}\n{source}", path.display()));
        assert!(
            ptx.contains(&format!(".target {arch}")),
            "{}",
            path.display()
        );
        for k in &refs {
            assert!(
                ptx.contains(&format!(".entry {}", k.name)),
                "{}: no entry {}",
                path.display(),
                k.name
            );
        }
    }
}
