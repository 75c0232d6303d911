//! The CPU executor on examples/mlp_f32.ir (GPT-2 small's MLP, 768 -> 3072 -> 768, GELU tanh,
//! dropout p = 0.1, f32) at B=2, S=128: the compiled host programs at 1 and 8 ranks
//! (`tpc::run_on_cpu`), and the unsharded reference executor (`tpc::runtime::run_reference`)
//! for comparison. Compilation and input drawing happen once, outside the timed loop.
//!
//! The goal: within 1.5x of PyTorch's eager CPU forward of the same unsharded MLP on the
//! same machine; benches/torch_mlp.py measures that side.
//!
//!     cargo bench --bench cpu_executor
//!     python3 benches/torch_mlp.py

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

/// The allocator the `tpc` binary uses, so the figures are `tpc run`'s.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NAME: &str = "examples/mlp_f32.ir";
const TEXT: &str = include_str!("../examples/mlp_f32.ir");
const BINDINGS: &str = "B=2,S=128";

fn cpu_executor(c: &mut Criterion) {
    let bindings = tpc::parse_bindings(BINDINGS).expect("bindings");
    let graph = tpc::load(NAME, TEXT).expect("a valid program");
    let inputs = tpc::runtime::random_inputs(&graph, &bindings, 0).expect("inputs");

    let mut group = c.benchmark_group("mlp_f32 B=2 S=128");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));

    for ranks in [1i64, 8] {
        let options = tpc::CompileOptions {
            devices: Some(ranks),
            bindings: bindings.clone(),
            ..Default::default()
        };
        let artifacts = tpc::compile(NAME, TEXT, &options).expect("compiles");
        // One untimed run, so a failure shows as an error rather than as a timing.
        tpc::run_on_cpu(&artifacts, &inputs).expect("runs");
        group.bench_with_input(
            BenchmarkId::new("run_on_cpu ranks", ranks),
            &artifacts,
            |b, artifacts| b.iter(|| tpc::run_on_cpu(artifacts, &inputs).expect("runs")),
        );
    }

    tpc::runtime::run_reference(&graph, &inputs, &bindings).expect("runs");
    group.bench_function("run_reference", |b| {
        b.iter(|| tpc::runtime::run_reference(&graph, &inputs, &bindings).expect("runs"))
    });
    group.finish();
}

/// The same program at a real size, B=8, S=512 (4096 positions): one compile for every size,
/// bound at it, run on 1 and on 8 ranks. The goal: 8 ranks within 1.5x of 1 rank on
/// this 2-core machine (the collectives copy blocks; the ranks' replicated work is what remains).
fn at_real_size(c: &mut Criterion) {
    let bindings = tpc::parse_bindings("B=8,S=512").expect("bindings");
    let graph = tpc::load(NAME, TEXT).expect("a valid program");
    let inputs = tpc::runtime::random_inputs(&graph, &bindings, 0).expect("inputs");
    let mut group = c.benchmark_group("mlp_f32 B=8 S=512");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10));
    for ranks in [1i64, 8] {
        let artifacts = tpc::compile(NAME, TEXT, &tpc::CompileOptions::devices(ranks))
            .expect("compiles")
            .bind(&bindings)
            .expect("binds");
        tpc::run_on_cpu(&artifacts, &inputs).expect("runs");
        group.bench_with_input(
            BenchmarkId::new("run_on_cpu ranks", ranks),
            &artifacts,
            |b, artifacts| b.iter(|| tpc::run_on_cpu(artifacts, &inputs).expect("runs")),
        );
    }
    group.finish();
}

criterion_group!(benches, cpu_executor, at_real_size);
criterion_main!(benches);
