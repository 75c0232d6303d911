//! Generated pointwise kernels: the kernel IR of every case and example is snapshot-tested with
//! its CUDA C; the CPU interpreter of the kernel IR equals the unfused ops bit for bit; and NVRTC
//! compiles every kernel for sm_80 and sm_90 where libnvrtc is present (CI installs it and sets
//! TPC_REQUIRE_NVRTC=1, so there a missing library fails instead of skipping).

mod common;

use std::collections::BTreeMap;

use tpc::codegen::fuse::{segment, Segment};
use tpc::codegen::kir::{Fused, Kernel};
use tpc::runtime::{random_inputs, run_reference};

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

fn kernels(g: &tpc::Graph) -> Vec<(Fused, Vec<tpc::ir::ValueId>)> {
    segment(g)
        .into_iter()
        .filter_map(|s| match s {
            Segment::Pointwise { kernel, members } => Some((kernel, members)),
            Segment::Op(_) => None,
        })
        .collect()
}

#[test]
fn kernel_ir_and_cuda_snapshots() {
    for path in files() {
        let g = common::load(&path);
        let ks = kernels(&g);
        let mut text = String::new();
        for (k, _) in &ks {
            text.push_str(&format!("{k}\n\n"));
        }
        let all: Vec<Kernel> = ks.iter().map(|(k, _)| Kernel::Fused(k.clone())).collect();
        text.push_str(&tpc::codegen::cuda::module_source(&all));
        insta::assert_snapshot!(format!("kernels_{}", common::stem(&path)), text);
    }
}

/// Each kernel, run by the CPU interpreter on the values the reference computes for its inputs,
/// gives exactly the value the reference computes for its output.
#[test]
fn interpreted_kernels_equal_the_unfused_ops() {
    let b = bindings();
    let mut checked = 0;
    for path in files() {
        let g = common::load(&path);
        let inputs = random_inputs(&g, &b, 5).expect("inputs");
        for (k, _) in kernels(&g) {
            // The graph returning the kernel's inputs and outputs, to read their values.
            let find = |n: &str| g.find(n).expect("a value of the graph");
            let sources: Vec<tpc::ir::ValueId> = k.inputs.iter().map(|i| find(&i.name)).collect();
            let stored: Vec<tpc::ir::ValueId> = k.outputs.iter().map(|o| find(&o.name)).collect();
            let mut probe = g.clone();
            probe.set_outputs(sources.iter().chain(&stored).copied().collect());
            probe.result_types.clear();
            let values = run_reference(&probe, &inputs, &b).expect("reference");
            let (ins, want) = values.split_at(sources.len());
            let refs: Vec<&tpc::runtime::Tensor> = ins.iter().collect();
            let got = tpc::runtime::kernel::run_pointwise(&k, &refs, want[0].shape())
                .unwrap_or_else(|e| panic!("{}: {}: {e}", path.display(), k.name));
            let bits = |t: &tpc::runtime::Tensor| {
                t.to_f32_vec()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(got.len(), want.len());
            for (x, w) in got.iter().zip(want) {
                assert_eq!(bits(x), bits(w), "{}: {}", path.display(), k.name);
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} kernels checked");
}

#[test]
fn nvrtc_compiles_every_kernel() {
    if !tpc::codegen::nvrtc::available() {
        let required = std::env::var("TPC_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "TPC_REQUIRE_NVRTC=1 but libnvrtc is missing: {}",
            tpc::codegen::nvrtc::HOW_TO_GET_NVRTC
        );
        eprintln!(
            "skipped: libnvrtc is not available here; {}",
            tpc::codegen::nvrtc::HOW_TO_GET_NVRTC
        );
        return;
    }
    for path in files() {
        let g = common::load(&path);
        let ks = kernels(&g);
        let refs: Vec<&Fused> = ks.iter().map(|(k, _)| k).collect();
        let all: Vec<Kernel> = ks.iter().map(|(k, _)| Kernel::Fused(k.clone())).collect();
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
}
