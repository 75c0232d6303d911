//! The generated CUDA C, run: every example's (and decomposition case's) kernels.cu compiled for the host by a C++ compiler
//! against the CUDA emulator (tpc_runtime::emulate: blocks of fiber threads with real barriers
//! and warp shuffles) and run through the host programs at 1 and 3 devices, equals the same host
//! programs run through the kernel-IR interpreter within a few roundings of the dtype, and the
//! unsharded reference within the usual tolerance. This is what proves, without a GPU, that the
//! CUDA source computes what the kernel IR means: its index arithmetic, vector paths, tiling and
//! reductions.
//!
//! Each example is a trial, `every_example_runs_its_cuda_c_like_the_interpreter::<example>`.
//! Needs a C++ compiler (g++ 12 or clang++ 15 and later; `TPC_CXX` picks one). Without one the
//! example trials are reported ignored and the kernel-kind test says so and passes; CI sets
//! TPC_REQUIRE_CXX=1, which makes that a failure.

mod common;
mod kinds;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::harness;
use tpc::codegen::kir::{Kernel, ParamKind};
use tpc::ir::DType;
use tpc::runtime::emulate::{run_kernel_emulated, Emulator};
use tpc::runtime::host::{run_host_programs_with, Kernels};
use tpc::runtime::kernel::{run_kernel, KArg};
use tpc::runtime::ranks::MeshSizes;
use tpc::runtime::Tensor;
use tpc::runtime::{round_to, Data};

fn compiler_or_skip() -> bool {
    common::present_or_skip(common::cxx_missing(), "TPC_REQUIRE_CXX")
}

use common::relative_error;

fn main() {
    let mut trials = harness::trials![every_kernel_kind_runs_its_cuda_c_like_the_interpreter];
    // The examples, and the decomposition cases (softmax, the norms and their statistics, a
    // mean over a split dim, dropout, both gelus, the vocabulary-parallel loss), whose kernels
    // compute the decompositions.
    let mut files = common::ir_files("examples");
    files.extend(common::ir_files("tests/passes/decompose"));
    files.extend(common::ir_files("tests/passes/decompose-before-sharding"));
    trials.extend(harness::per_file_needing(
        "every_example_runs_its_cuda_c_like_the_interpreter",
        &files,
        common::cxx_missing,
        "TPC_REQUIRE_CXX",
        every_example_runs_its_cuda_c_like_the_interpreter,
    ));
    harness::run(trials)
}

/// Two programs that differ only in how their kernels are run (the sum order of a reduction, a
/// libm function) differ by a few roundings of the dtype.
fn kernel_tolerance(d: DType) -> f64 {
    match d {
        DType::BF16 => 1.0 / 64.0,
        DType::F16 => 1.0 / 512.0,
        DType::F32 => 1e-5,
        _ => 0.0,
    }
}

fn run(a: &tpc::Artifacts, kernels: Kernels<'_>, inputs: &BTreeMap<String, Tensor>) -> Vec<Tensor> {
    let mesh = MeshSizes(a.mesh.clone());
    run_host_programs_with(
        &a.sharded,
        &a.compiled,
        kernels,
        &mesh,
        inputs,
        &a.bindings,
        Duration::from_secs(600),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn every_example_runs_its_cuda_c_like_the_interpreter(path: &Path) {
    let bindings = tpc::parse_bindings("B=2,S=24").expect("bindings");
    let g = common::load(path);
    let text = std::fs::read_to_string(path).expect("readable");
    let fixed: i64 = g.mesh.axes.iter().filter_map(|a| a.size).product();
    let device_counts: Vec<i64> = if fixed > 1 { vec![fixed] } else { vec![1, 3] };
    let inputs = tpc::runtime::random_inputs(&g, &bindings, 5).expect("inputs");
    let reference = tpc::runtime::run_reference(&g, &inputs, &bindings).expect("reference");
    for devices in device_counts {
        let what = format!("{} on {devices} devices", path.display());
        let options = tpc::CompileOptions {
            devices: Some(devices),
            bindings: bindings.clone(),
            ..tpc::CompileOptions::default()
        };
        let a = tpc::compile(&common::stem(path), &text, &options)
            .unwrap_or_else(|e| panic!("{what}: {}", e.render()));
        let emulator =
            Emulator::build(&a.compiled.kernels).unwrap_or_else(|e| panic!("{what}: {e}"));
        let interpreted = run(&a, Kernels::Interpret, &inputs);
        let emulated = run(&a, Kernels::Emulate(&emulator), &inputs);
        for (((&v, want), interp), got) in g
            .outputs()
            .iter()
            .zip(&reference)
            .zip(&interpreted)
            .zip(&emulated)
        {
            let d = want.dtype();
            let vs_interp = relative_error(interp, got);
            assert!(
                vs_interp <= kernel_tolerance(d),
                "{what}: %{} from the CUDA C is {vs_interp:.3e} from the interpreter's",
                g.name(v)
            );
            let vs_ref = relative_error(want, got);
            assert!(
                vs_ref <= 1.0 / 16.0,
                "{what}: %{} from the CUDA C is {vs_ref:.3e} from the reference",
                g.name(v)
            );
        }
    }
}

/// A small deterministic generator (xorshift), so the cases need no input files.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1).
    fn float(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn below(&mut self, n: i64) -> i64 {
        (self.next() % n.max(1) as u64) as i64
    }
}

/// One launch's arguments, in parameter order.
enum Value {
    Buffer(Data),
    Int(i64),
    Float(f32),
}

fn floats(draw: &mut Draw, dtype: DType, n: usize) -> Data {
    match dtype {
        DType::Bool => Data::Bool((0..n).map(|_| draw.next().is_multiple_of(2)).collect()),
        DType::I64 => Data::I64((0..n).map(|_| draw.below(1000)).collect()),
        d => Data::Float((0..n).map(|_| round_to(d, 3.0 * draw.float())).collect()),
    }
}

fn product(xs: &[i64]) -> usize {
    xs.iter().product::<i64>() as usize
}

/// The arguments of `k` at extents `ext` (a fused or copy kernel's dims; for the other kinds
/// their own integer arguments in parameter order).
fn case(k: &Kernel, ext: &[i64], draw: &mut Draw) -> Vec<Value> {
    let mut out = Vec::new();
    match k {
        Kernel::Fused(f) => {
            for input in &f.inputs {
                let dims: Vec<i64> = ext
                    .iter()
                    .zip(&input.broadcast)
                    .map(|(&n, &b)| if b { 1 } else { n })
                    .collect();
                out.push(Value::Buffer(floats(draw, input.dtype, product(&dims))));
            }
            for o in &f.outputs {
                let n = match (o.per_row, f.row) {
                    (true, Some((a, b))) => product(&ext[..a]) * product(&ext[b..]),
                    _ => product(ext),
                };
                out.push(Value::Buffer(floats(draw, o.dtype, n)));
            }
            out.extend(ext.iter().map(|&n| Value::Int(n)));
            if f.global_index {
                // The tensor as one shard of a larger one: global offsets with a shifted start.
                let mut stride = 1i64;
                let mut tables = Vec::new();
                for &n in ext.iter().rev() {
                    tables.push((0..n).map(|i| (i + 2) * stride).collect::<Vec<_>>());
                    stride *= n + 3;
                }
                tables.reverse();
                out.extend(tables.into_iter().map(|t| Value::Buffer(Data::I64(t))));
            }
            out.extend(
                f.args
                    .iter()
                    .map(|_| Value::Float(0.25 + draw.float().abs())),
            );
        }
        Kernel::Copy(c) => {
            // Read a permuted, offset view of a larger buffer; write into an offset one.
            let rank = c.rank;
            let mut is = vec![0i64; rank];
            let mut stride = 1;
            for d in 0..rank {
                is[d] = stride;
                stride *= ext[d] + 1;
            }
            let (in_base, out_base) = (3i64, 5i64);
            let in_len = in_base + ext.iter().zip(&is).map(|(n, s)| (n - 1) * s).sum::<i64>() + 1;
            let mut os = vec![0i64; rank];
            let mut stride = 1;
            for d in (0..rank).rev() {
                os[d] = stride;
                stride *= ext[d];
            }
            out.push(Value::Buffer(floats(draw, c.dtype, in_len as usize)));
            out.push(Value::Buffer(floats(
                draw,
                c.dtype,
                out_base as usize + product(ext),
            )));
            out.extend(ext.iter().map(|&n| Value::Int(n)));
            out.push(Value::Int(in_base));
            out.extend(is.iter().map(|&s| Value::Int(s)));
            out.push(Value::Int(out_base));
            out.extend(os.iter().map(|&s| Value::Int(s)));
        }
        Kernel::Embedding(e) => {
            // The middle third of a vocabulary of 3 × vocab rows: most ids are another rank's.
            let (rows, width, vocab) = (ext[0], ext[1], ext[2]);
            let ids = (0..rows).map(|_| draw.below(3 * vocab)).collect();
            out.push(Value::Buffer(Data::I64(ids)));
            out.push(Value::Buffer(floats(
                draw,
                e.dtype,
                (vocab * width) as usize,
            )));
            out.push(Value::Buffer(floats(
                draw,
                e.dtype,
                (rows * width) as usize,
            )));
            out.extend([rows, width, vocab, 3 * vocab].map(Value::Int));
            out.push(Value::Buffer(Data::I64((vocab..2 * vocab).collect())));
        }
        Kernel::Attention(a) => {
            let (batch, sq, sk, d, dv) = (ext[0], ext[1], ext[2], ext[3], ext[4]);
            for n in [batch * sq * d, batch * sk * d, batch * sk * dv] {
                out.push(Value::Buffer(floats(draw, a.dtype, n as usize)));
            }
            out.push(Value::Buffer(if a.lse {
                floats(draw, DType::F32, (batch * sq) as usize)
            } else {
                floats(draw, a.dtype, (batch * sq * dv) as usize)
            }));
            out.extend([batch, sq, sk, d, dv].map(Value::Int));
            out.push(Value::Float(1.0 / (d as f32).sqrt()));
            // The queries of the last shard of the sequence: positions sk - sq .. sk.
            out.push(Value::Buffer(Data::I64((sk - sq..sk).collect())));
        }
        Kernel::Pick(p) => {
            // Every other entry of 2n global ones; targets anywhere in them, some ignored.
            let (outer, n, inner) = (ext[0], ext[1], ext[2]);
            out.push(Value::Buffer(floats(draw, p.dtype, product(ext))));
            let targets = (0..outer * inner)
                .map(|i| {
                    if i % 7 == 3 {
                        p.ignore_index
                    } else {
                        draw.below(2 * n)
                    }
                })
                .collect();
            out.push(Value::Buffer(Data::I64(targets)));
            out.push(Value::Buffer(floats(
                draw,
                DType::F32,
                (outer * inner) as usize,
            )));
            out.extend([outer, n, inner, 2 * n].map(Value::Int));
            out.push(Value::Buffer(Data::I64((0..n).map(|k| 2 * k).collect())));
        }
        Kernel::Kept(k) => {
            let count = ext[0];
            let targets = (0..count)
                .map(|i| {
                    if i % 5 == 2 {
                        k.ignore_index
                    } else {
                        draw.below(9)
                    }
                })
                .collect();
            out.push(Value::Buffer(Data::I64(targets)));
            out.push(Value::Buffer(floats(draw, DType::F32, count as usize)));
            out.push(Value::Int(count));
        }
    }
    out
}

/// Runs `k` on a copy of `values` through `run` and returns the outputs.
fn outputs_of(
    k: &Kernel,
    values: &[Value],
    run: impl FnOnce(&mut [KArg<'_>]) -> tpc::runtime::Result<()>,
) -> Vec<(DType, Data)> {
    let params = k.params();
    let mut held: Vec<Option<Data>> = values
        .iter()
        .map(|v| match v {
            Value::Buffer(d) => Some(d.clone()),
            _ => None,
        })
        .collect();
    {
        let mut args: Vec<KArg<'_>> = Vec::new();
        for ((v, p), h) in values.iter().zip(&params).zip(held.iter_mut()) {
            args.push(match (v, p.kind) {
                (Value::Buffer(_), ParamKind::Output(_)) => KArg::Out(h.as_mut().expect("buffer")),
                (Value::Buffer(_), _) => KArg::In(h.as_ref().expect("buffer")),
                (Value::Int(i), _) => KArg::Int(*i),
                (Value::Float(x), _) => KArg::Float(*x),
            });
        }
        run(&mut args).unwrap_or_else(|e| panic!("{}: {e}", k.name()));
    }
    params
        .iter()
        .zip(held)
        .filter_map(|(p, h)| match p.kind {
            ParamKind::Output(d) => Some((d, h.expect("buffer"))),
            _ => None,
        })
        .collect()
}

/// The extents each hand-built kernel runs at: odd sizes (vector tails, partial tiles and
/// warps), rows longer than a block keeps in registers (16 × 256), attention with head dims past
/// one 64-wide chunk and queries past one tile.
fn extents_for(k: &Kernel) -> Vec<Vec<i64>> {
    match k {
        // Odd lengths take the scalar paths; multiples of 8 the vector paths (rows too).
        Kernel::Fused(f) => [37, 4133, 40, 4136]
            .iter()
            .map(|&n| {
                let mut ext: Vec<i64> = [3, 5, 7, 2, 3][..f.rank].to_vec();
                if n > 1000 {
                    ext = vec![2; f.rank];
                }
                match f.row {
                    Some((_, b)) => ext[b - 1] = n,
                    None => ext[f.rank - 1] = n,
                }
                ext
            })
            .collect(),
        Kernel::Copy(c) => vec![[3, 5, 7, 2, 3][..c.rank].to_vec(), {
            let mut v = vec![2i64; c.rank];
            v[0] = 1031;
            v
        }],
        Kernel::Embedding(_) => vec![vec![37, 33, 50], vec![5, 768, 1000]],
        Kernel::Attention(_) => vec![
            vec![2, 45, 70, 80, 130],
            vec![3, 1, 33, 64, 64],
            vec![1, 64, 64, 256, 256],
        ],
        Kernel::Pick(_) => vec![vec![5, 37, 3], vec![4000, 50, 1], vec![7, 30, 300]],
        Kernel::Kept(_) => vec![vec![1], vec![4133]],
    }
}

fn assert_close(what: &str, d: DType, want: &Data, got: &Data) {
    match (want, got) {
        (Data::Float(w), Data::Float(g)) => {
            assert_eq!(w.len(), g.len(), "{what}");
            let peak = w.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
            // One rounding of the dtype, relative to the largest value: sums in another order.
            let tol = match d {
                DType::BF16 => 1.0 / 128.0,
                DType::F16 => 1.0 / 1024.0,
                _ => 1e-5,
            };
            for (i, (a, b)) in w.iter().zip(g).enumerate() {
                let ok = (a.is_nan() && b.is_nan()) || (a - b).abs() <= tol * peak;
                assert!(ok, "{what}: element {i} is {b}, the interpreter gives {a}");
            }
        }
        _ => assert_eq!(want, got, "{what}"),
    }
}

fn every_kernel_kind_runs_its_cuda_c_like_the_interpreter() {
    if !compiler_or_skip() {
        return;
    }
    let kernels = kinds::all_kernels();
    let emulator = Emulator::build(&kernels).unwrap_or_else(|e| panic!("{e}"));
    let mut draw = Draw(0x9e37_79b9_7f4a_7c15);
    for (i, k) in kernels.iter().enumerate() {
        for ext in extents_for(k) {
            let what = format!("{} at {ext:?}", k.name());
            let values = case(k, &ext, &mut draw);
            let want = outputs_of(k, &values, |a| run_kernel(k, a));
            let got = outputs_of(k, &values, |a| run_kernel_emulated(&emulator, i, a));
            for ((d, w), (_, g)) in want.iter().zip(&got) {
                assert_close(&what, *d, w, g);
            }
        }
    }
}
