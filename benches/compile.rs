//! The whole compiler, `tpc::compile` (parse, the default sharding pipeline, codegen: kernels,
//! each rank's host program and memory plan, the report), over 8 devices:
//!
//! - `compile/gpt`: `gpt_stack(L, 16, 768, Megatron)` at L = 1, 8, 32, 96, B=2, S=128;
//! - `compile/mlp`: examples/mlp.ir at (B, S) = (2, 128), (8, 512), (64, 4096);
//! - `compile/llama`: an 80-layer Llama-2-70B-shaped `llama_stack` (E = 8192, 64 heads, 8 kv
//!   heads, FFN 28672) at B=1, S=4096.
//!
//! Compile time should not grow with the bound sizes (kernels take extents as arguments), and
//! should grow about linearly with the layers. Small samples keep the whole run to minutes.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tpc::gen::{gpt_stack, llama_stack, Annotate, Llama};
use tpc::CompileOptions;

/// The allocator the `tpc` binary uses, so the figures are the CLI's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MLP: &str = include_str!("../examples/mlp.ir");

fn options(bindings: &str) -> CompileOptions {
    let mut options = CompileOptions::devices(8);
    options.bindings = tpc::parse_bindings(bindings).expect("bindings");
    options
}

fn ops(text: &str) -> u64 {
    tpc::load("gen.ir", text).map(|g| g.len()).unwrap_or(0) as u64
}

/// Times whole compiles of `text`. The first compile is checked (a program that does not
/// compile fails loudly rather than timing an error), and only when criterion's filter selects
/// the benchmark, so `cargo bench --bench compile -- gpt/1` compiles nothing else.
fn bench(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: String,
    text: &str,
    options: &CompileOptions,
) {
    group.throughput(Throughput::Elements(ops(text)));
    let mut checked = false;
    group.bench_with_input(BenchmarkId::from_parameter(&id), text, |b, text| {
        if !checked {
            if let Err(e) = tpc::compile("gen.ir", text, options) {
                panic!("{id} does not compile: {}", e.render());
            }
            checked = true;
        }
        b.iter(|| tpc::compile("gen.ir", text, options).expect("compiles"))
    });
}

fn small_group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    group
}

fn gpt(c: &mut Criterion) {
    let mut group = small_group(c, "compile/gpt");
    let options = options("B=2,S=128");
    for layers in [1usize, 8, 32, 96] {
        let text = gpt_stack(layers, 16, 768, Annotate::Megatron);
        bench(&mut group, layers.to_string(), &text, &options);
    }
    group.finish();
}

fn mlp(c: &mut Criterion) {
    let mut group = small_group(c, "compile/mlp");
    for (b, s) in [(2, 128), (8, 512), (64, 4096)] {
        let options = options(&format!("B={b},S={s}"));
        bench(&mut group, format!("B={b},S={s}"), MLP, &options);
    }
    group.finish();
}

fn llama(c: &mut Criterion) {
    let mut group = small_group(c, "compile/llama");
    let options = options("B=1,S=4096");
    let text = llama_stack(&Llama::llama2_70b(80), Annotate::Megatron);
    bench(&mut group, "70b-80-layers".to_string(), &text, &options);
    group.finish();
}

criterion_group!(benches, gpt, mlp, llama);
criterion_main!(benches);
