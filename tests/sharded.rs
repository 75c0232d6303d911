//! Sharded programs on N CPU rank threads equal the unsharded reference: every example, on
//! several device counts including ones that split heads unevenly, and every pass filetest;
//! each op by op, decomposed op by op, and through its kernels and host programs. Each
//! file is a trial: `cargo test --test sharded -- insert-resharding::mlp_auto` runs one.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::harness;
use tpc::passes::PassManager;
use tpc::runtime::host::run_host_programs;
use tpc::runtime::ranks::{run_sharded, MeshSizes};
use tpc::runtime::{random_inputs, run_reference, Tensor};

fn main() {
    let mut trials = harness::per_file(
        "examples_on_n_ranks_equal_the_reference",
        &common::ir_files("examples"),
        examples_on_n_ranks_equal_the_reference,
    );
    let cases: Vec<_> = common::PASS_DIRS
        .iter()
        .flat_map(|d| common::ir_files(d))
        .collect();
    trials.extend(harness::per_file(
        "pass_cases_on_n_ranks_equal_the_reference",
        &cases,
        pass_cases_on_n_ranks_equal_the_reference,
    ));
    trials.push(harness::trial(
        "sharded_dropout_is_bit_identical",
        sharded_dropout_is_bit_identical,
    ));
    harness::run(trials)
}

fn bindings() -> BTreeMap<String, i64> {
    [
        ("B".to_string(), 2),
        ("S".to_string(), 8),
        ("E".to_string(), 4),
    ]
    .into_iter()
    .collect()
}

/// Largest |a - b| relative to the reference's largest magnitude.
fn rel_err(want: &Tensor, got: &Tensor) -> f64 {
    let peak = want.max_abs().max(1e-6);
    want.to_f32_vec()
        .iter()
        .zip(got.to_f32_vec())
        .map(|(a, b)| (a - b).abs() as f64)
        .fold(0.0, f64::max)
        / peak
}

/// Runs `path` sharded over `devices` against the reference; the passes weigh layouts at
/// `cost_symbols` (which may choose another plan than the run's own sizes would).
fn check(path: &Path, devices: i64, cost_symbols: &BTreeMap<String, i64>) {
    let original = common::load(path);
    let mut g = original.clone();
    let mut pm = PassManager::parse(tpc::passes::DEFAULT_PIPELINE).expect("pipeline");
    pm.verify_each = true;
    pm.context.symbols = cost_symbols.clone();
    let sizes = g.mesh.resolve(Some(devices)).expect("mesh");
    pm.context.axis_sizes = sizes.iter().cloned().collect();
    pm.run(&mut g)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mesh = MeshSizes(sizes.into_iter().map(|(n, s)| (n, s as usize)).collect());
    let b = bindings();
    let inputs = random_inputs(&original, &b, 9).expect("inputs");
    let want = run_reference(&original, &inputs, &b).expect("reference");
    let by_ops = run_sharded(&g, &mesh, &inputs, &b, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{} on {devices}: {e}", path.display()));
    // The same program with its composites decomposed (what the kernels compute), op by op.
    let mut primitive = g.clone();
    tpc::passes::decompose::run(&mut primitive, true).expect("decompose");
    let by_primitives = run_sharded(&primitive, &mesh, &inputs, &b, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{} decomposed, on {devices}: {e}", path.display()));
    // The same program compiled to kernels and host programs, run by the CPU executor.
    let artifacts = tpc::compile::codegen(g.clone(), devices, &b)
        .unwrap_or_else(|e| panic!("{} on {devices}: {}", path.display(), e.render()));
    let by_hosts = run_host_programs(
        &artifacts.sharded,
        &artifacts.compiled,
        &mesh,
        &inputs,
        &b,
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{} on {devices} through host programs: {e}", path.display()));
    let pairs = want
        .iter()
        .zip(&by_ops)
        .chain(want.iter().zip(&by_primitives))
        .chain(want.iter().zip(&by_hosts));
    for (w, x) in pairs {
        assert_eq!(w.shape(), x.shape());
        let err = rel_err(w, x);
        let tol = if w.dtype() == tpc::ir::DType::F32 {
            1e-5
        } else {
            2.0 / 128.0
        };
        assert!(
            err <= tol,
            "{} on {devices} devices: relative error {err}",
            path.display()
        );
    }
}

fn examples_on_n_ranks_equal_the_reference(path: &Path) {
    let g = common::load(path);
    // A mesh with every size fixed runs on exactly that many devices.
    let fixed: Vec<i64> = g.mesh.axes.iter().filter_map(|a| a.size).collect();
    let counts: Vec<i64> = if !fixed.is_empty() && fixed.len() == g.mesh.axes.len() {
        vec![fixed.iter().product()]
    } else {
        vec![1, 2, 3, 8]
    };
    // The plans chosen at the CLI's default sizes and at large ones (where sequence
    // parallelism turns into gathering weights) both compute the same thing.
    let large = tpc::parse_bindings("B=64,S=1024").expect("bindings");
    for devices in counts {
        check(path, devices, &bindings());
        check(path, devices, &large);
    }
}

fn pass_cases_on_n_ranks_equal_the_reference(path: &Path) {
    let devices = common::case_devices(&common::load(path));
    check(path, devices, &bindings());
}

/// Dropout on a sharded activation equals the unsharded dropout bit for bit.
fn sharded_dropout_is_bit_identical() {
    let path = common::root().join("examples/dropout_broadcast.ir");
    let original = common::load(&path);
    let mut g = original.clone();
    PassManager::parse(tpc::passes::DEFAULT_PIPELINE)
        .expect("pipeline")
        .run(&mut g)
        .expect("passes");
    let mesh = MeshSizes(vec![("tp".to_string(), 8)]);
    let b = bindings();
    let inputs = random_inputs(&original, &b, 3).expect("inputs");
    let want = run_reference(&original, &inputs, &b).expect("reference");
    let got = run_sharded(&g, &mesh, &inputs, &b, Duration::from_secs(60)).expect("ranks");
    assert_eq!(want, got);
}
