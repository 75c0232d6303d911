//! Times the phases of `tpc::compile` on a generated GPT-2 stack at 8 devices (load, the
//! pipeline with verification, decompose (with its verification, as codegen runs it),
//! segmentation, host templates, binding every rank, the CUDA C,
//! the report), per layer, for finding what grows faster than the program:
//! `cargo run --release --example profile_compile -- 8 96`.
use std::time::Instant;

/// The allocator the `tpc` binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let layer_counts: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let layer_counts = if layer_counts.is_empty() {
        vec![8, 96]
    } else {
        layer_counts
    };
    let bindings = tpc::parse_bindings("B=2,S=128").expect("bindings");
    let names = [
        "load",
        "passes",
        "decompose",
        "segment",
        "templates",
        "bind",
        "cuda",
        "report",
    ];
    for layers in layer_counts {
        let text = tpc::gen::gpt_stack(layers, 16, 768, tpc::gen::Annotate::Megatron);
        let reps = (480 / layers).max(3);
        let mut t = [0f64; 8];
        for _ in 0..reps {
            let mut clock = Instant::now();
            let mut lap = |i: usize, t: &mut [f64; 8]| {
                let now = Instant::now();
                t[i] += (now - clock).as_secs_f64();
                clock = now;
            };
            let mut g = tpc::load("gen.ir", &text).expect("valid");
            let file = tpc::SourceFile::new("gen.ir", &text);
            let axes = tpc::resolve_devices(&g, 8, &file).expect("devices");
            lap(0, &mut t);
            let mut pm =
                tpc::passes::PassManager::parse(tpc::passes::DEFAULT_PIPELINE).expect("pipeline");
            pm.verify_each = true;
            pm.context.symbols = bindings.clone();
            pm.context.axis_sizes = axes.into_iter().collect();
            pm.run(&mut g).expect("passes");
            lap(1, &mut t);
            let mesh = vec![("tp".to_string(), 8usize)];
            let primitive = tpc::compile::decomposed(&g, &mesh).expect("decompose");
            lap(2, &mut t);
            let plan = tpc::codegen::fuse::segment(&primitive).expect("segments");
            lap(3, &mut t);
            let templates = tpc::codegen::build::compile_templates(&primitive, &plan, &mesh, None)
                .expect("templates");
            lap(4, &mut t);
            let compiled = templates.bind(&bindings).expect("binds");
            lap(5, &mut t);
            let cuda = tpc::codegen::cuda::module_source(&compiled.kernels);
            lap(6, &mut t);
            let report = tpc::report::report(&g, 8, &bindings).expect("report");
            lap(7, &mut t);
            std::hint::black_box((cuda, report));
        }
        let line: Vec<String> = names
            .iter()
            .zip(&t)
            .map(|(n, s)| format!("{n} {:.3}", s * 1e3 / reps as f64 / layers as f64))
            .collect();
        let total: f64 = t.iter().sum::<f64>() * 1e3 / reps as f64;
        println!(
            "L={layers}: {total:.1} ms; per layer (ms): {}",
            line.join(", ")
        );
    }
}
