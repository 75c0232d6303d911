//! The CUDA executor against the CPU reference on one GPU: every example compiled for one
//! device, run through its host program on the GPU, equals the unsharded reference within its
//! dtype's rounding. Each example is a trial, `examples_on_one_gpu_equal_the_reference::<example>`.
//! Where there is no GPU (or no driver, or no libnvrtc) each is reported ignored, with the reason;
//! set TPC_REQUIRE_GPU=1 to make that a failure instead.

mod common;

use std::path::Path;

use common::harness;

fn main() {
    harness::run(harness::per_file_needing(
        "examples_on_one_gpu_equal_the_reference",
        &common::ir_files("examples"),
        missing,
        "TPC_REQUIRE_GPU",
        examples_on_one_gpu_equal_the_reference,
    ))
}

/// Why the GPU tests cannot run here, if they cannot.
fn missing() -> Option<String> {
    if !tpc::runtime::cuda::driver_present() {
        return Some("no CUDA driver (libcuda) here".into());
    }
    if tpc::runtime::cuda::gpu_count().unwrap_or(0) == 0 {
        return Some("no GPU here".into());
    }
    common::nvrtc_missing()
}

fn examples_on_one_gpu_equal_the_reference(path: &Path) {
    let bindings = tpc::parse_bindings("B=2,S=64").expect("bindings");
    let g = common::load(path);
    let fixed: Vec<i64> = g.mesh.axes.iter().filter_map(|a| a.size).collect();
    if fixed.iter().product::<i64>() > 1 {
        return; // needs as many GPUs as its fixed mesh
    }
    let text = std::fs::read_to_string(path).expect("readable");
    let options = tpc::CompileOptions {
        devices: Some(1),
        bindings: bindings.clone(),
        ..tpc::CompileOptions::default()
    };
    let a = tpc::compile(&common::stem(path), &text, &options)
        .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.render()));
    let inputs = tpc::runtime::random_inputs(&g, &bindings, 3).expect("inputs");
    let want = tpc::runtime::run_reference(&g, &inputs, &bindings).expect("reference");
    let got =
        tpc::run_cuda(&a, &inputs).unwrap_or_else(|e| panic!("{} on the GPU: {e}", path.display()));
    for (w, x) in want.iter().zip(&got) {
        assert_eq!(w.shape(), x.shape(), "{}", path.display());
        let peak = w.max_abs().max(1e-6);
        let err = w
            .to_f32_vec()
            .iter()
            .zip(x.to_f32_vec())
            .map(|(a, b)| (a - b).abs() as f64)
            .fold(0.0, f64::max)
            / peak;
        // The GPU sums in other orders and rounds GEMM epilogues once.
        let tol = if w.dtype() == tpc::ir::DType::F32 {
            1e-4
        } else {
            1.0 / 16.0
        };
        assert!(
            err <= tol,
            "{}: relative error {err} on the GPU",
            path.display()
        );
    }
    eprintln!("{}: GPU equals the reference", path.display());
}
