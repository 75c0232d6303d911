//! Generated kernels on a GPU: pointwise and row-reduction kernels' DRAM bandwidth as a share of
//! the device's peak (the goal: at least 80%), and the attention kernel's throughput.
//!
//! Each case is a one-op program compiled for one device. Its host program is run by the CUDA
//! executor twice: as compiled, and with its kernel launches repeated `extra` more times in
//! place; the difference of the two wall times over `extra` is one launch's time, free of the
//! setup, upload and download both runs share. Bytes moved are the bytes of the buffers a launch
//! reads and writes (each once); attention's work is 4·B·H·Sq·Sk·D flops (half that causal).
//!
//!     cargo bench --bench gpu_kernels
//!
//! Without a GPU it prints why and exits 0. `TPC_BENCH_EMULATED=1` runs the same cases, small,
//! through the CUDA emulator instead (a check of the harness, not a measurement).

use std::collections::BTreeMap;
use std::time::Instant;

use tpc::codegen::host::{Arg, Step};

struct Case {
    name: &'static str,
    text: String,
    /// Attention flops per launch, when the case is attention.
    flops: Option<f64>,
    extra: usize,
}

fn cases(small: bool) -> Vec<Case> {
    let (rows, width) = if small { (64, 256) } else { (16384, 4096) };
    let (b, h, s, d) = if small {
        (1, 2, 64, 64)
    } else {
        (8, 16, 2048, 64)
    };
    let reps = |n: usize| if small { 2 } else { n };
    let pointwise = |name: &'static str, dtype: &str, body: &str| {
        Case {
        name,
        text: format!(
            "func @f(%x: {dtype}[{rows}, {width}], %y: {dtype}[{rows}, {width}]) -> {dtype}[{rows}, {width}] {{\n{body}\n}}\n"
        ),
        flops: None,
        extra: reps(2000),
    }
    };
    let attention = |causal: bool| {
        let flops = 4.0 * (b * h * s * s * d) as f64 / if causal { 2.0 } else { 1.0 };
        Case {
            name: if causal { "sdpa causal bf16" } else { "sdpa bf16" },
            text: format!(
                "func @f(%q: bf16[{b}, {h}, {s}, {d}], %k: bf16[{b}, {h}, {s}, {d}], %v: bf16[{b}, {h}, {s}, {d}]) -> bf16[{b}, {h}, {s}, {d}] {{\n  %o = sdpa(%q, %k, %v) {{causal = {causal}}}\n  return %o\n}}\n"
            ),
            flops: Some(flops),
            extra: reps(100),
        }
    };
    vec![
        pointwise(
            "gelu tanh bf16",
            "bf16",
            "  %g = gelu(%x) {approximate = tanh}\n  return %g",
        ),
        pointwise(
            "add f32",
            "f32",
            "  %g = add(%x, %y)\n  return %g",
        ),
        pointwise(
            "dropout bf16",
            "bf16",
            "  %g = dropout(%x) {p = 0.1, seed = 3}\n  return %g",
        ),
        Case {
            name: "layer norm bf16",
            text: format!(
                "func @f(%x: bf16[{rows}, {width}], %w: bf16[{width}], %b: bf16[{width}]) -> bf16[{rows}, {width}] {{\n  %g = layer_norm(%x, %w, %b)\n  return %g\n}}\n"
            ),
            flops: None,
            extra: reps(2000),
        },
        Case {
            name: "softmax bf16",
            text: format!(
                "func @f(%x: bf16[{rows}, {width}]) -> bf16[{rows}, {width}] {{\n  %g = softmax(%x) {{dim = 1}}\n  return %g\n}}\n"
            ),
            flops: None,
            extra: reps(2000),
        },
        attention(false),
        attention(true),
    ]
}

/// The artifacts with every launch repeated `extra` more times right after itself.
fn repeated(a: &tpc::Artifacts, extra: usize) -> tpc::Artifacts {
    let mut a = a.clone();
    for host in &mut a.compiled.hosts {
        let mut steps = Vec::with_capacity(host.steps.len());
        for s in host.steps.drain(..) {
            let again = matches!(s, Step::Launch { .. });
            steps.push(s.clone());
            if again {
                steps.extend(std::iter::repeat_n(s, extra));
            }
        }
        host.steps = steps;
    }
    a
}

/// Bytes the launches of rank 0 read and write, each buffer once per launch.
fn launch_bytes(a: &tpc::Artifacts) -> u64 {
    let host = &a.compiled.hosts[0];
    host.steps
        .iter()
        .map(|s| match s {
            Step::Launch { args, .. } => args
                .iter()
                .map(|x| match x {
                    Arg::Buffer(b) => host.buffers[b.0].bytes(),
                    _ => 0,
                })
                .sum(),
            _ => 0,
        })
        .sum()
}

fn main() {
    let emulated = std::env::var("TPC_BENCH_EMULATED").is_ok_and(|v| v == "1");
    let device = if emulated {
        None
    } else {
        match tpc::runtime::cuda::device_info(0) {
            Ok(d) => Some(d),
            Err(e) => {
                println!("gpu_kernels: skipped: {e}");
                return;
            }
        }
    };
    if let Some(d) = &device {
        println!(
            "{} ({} SMs), peak DRAM bandwidth {:.0} GB/s",
            d.name,
            d.multiprocessors,
            d.peak_bytes_per_s / 1e9
        );
    }
    let mut failed = false;
    for case in cases(emulated) {
        let options = tpc::CompileOptions {
            devices: Some(1),
            ..Default::default()
        };
        let result = (|| -> Result<String, String> {
            let a = tpc::compile(case.name, &case.text, &options).map_err(|e| e.render())?;
            let g = &a.sharded;
            let inputs: BTreeMap<String, tpc::runtime::Tensor> =
                tpc::runtime::random_inputs(g, &a.bindings, 1).map_err(|e| e.to_string())?;
            let run = |a: &tpc::Artifacts| -> Result<f64, String> {
                let start = Instant::now();
                if emulated {
                    tpc::run_emulated(a, &inputs).map_err(|e| e.to_string())?;
                } else {
                    tpc::run_cuda(a, &inputs).map_err(|e| e.to_string())?;
                }
                Ok(start.elapsed().as_secs_f64())
            };
            let many = repeated(&a, case.extra);
            // Best of three of each, after one warm-up run (module load, cuBLASLt handles).
            run(&a)?;
            let mut once = f64::INFINITY;
            let mut more = f64::INFINITY;
            for _ in 0..3 {
                once = once.min(run(&a)?);
                more = more.min(run(&many)?);
            }
            let per_launch = ((more - once) / case.extra as f64).max(1e-9);
            let bytes = launch_bytes(&a) as f64;
            let kernels: Vec<&str> = a.kernels().iter().map(|k| k.name()).collect();
            let mut line = format!(
                "{:<18} {:>9.1} us  {:>7.1} GB/s",
                case.name,
                per_launch * 1e6,
                bytes / per_launch / 1e9
            );
            if let Some(d) = &device {
                line += &format!(
                    "  {:>5.1}% of peak",
                    100.0 * bytes / per_launch / d.peak_bytes_per_s
                );
            }
            if let Some(f) = case.flops {
                line += &format!("  {:>6.1} TFLOP/s", f / per_launch / 1e12);
            }
            line += &format!("  ({} launches: {})", kernels.len(), kernels.join(", "));
            Ok(line)
        })();
        match result {
            Ok(line) => println!("{line}"),
            Err(e) => {
                failed = true;
                println!("{:<18} FAILED: {e}", case.name);
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
