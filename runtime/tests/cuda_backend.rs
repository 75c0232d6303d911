//! The CUDA executor. On any machine: the clear error where there is no driver, the checks of
//! host programs and the mapping of exchanges to NCCL calls. Where a driver and GPUs are
//! present: hand-built programs run on the GPU(s) and are compared with the CPU executor of
//! the same host programs (kernels, a cuBLASLt GEMM, NCCL exchanges); elsewhere those tests
//! print "skipped: no CUDA driver/GPU here".

// Boxes of one-dim views are written `bx(&[0..4])`: a one-range array is meant.
#![allow(clippy::single_range_in_vec_init)]

use std::collections::BTreeMap;
use std::time::Duration;

use tpc_codegen::host::{
    Arg, Block, BufId, Buffer, Compiled, Epilogue, Exchange, Gemm, HostProgram, Step, ALIGN,
};
use tpc_codegen::kir::{self, Expr, Fused, Kernel, Scalar, Value};
use tpc_ir::{BinaryOp, Collective, DType, ReduceOp};
use tpc_runtime::cuda::plan::{self, Call};
use tpc_runtime::cuda::{run_cuda, run_cuda_with, RunOptions, WorldConfig};
use tpc_runtime::Tensor;

/// Builds one rank's host program: buffers placed one after another at [`ALIGN`]ed offsets.
struct HostBuilder {
    rank: usize,
    world: usize,
    buffers: Vec<Buffer>,
    steps: Vec<Step>,
    end: u64,
}

impl HostBuilder {
    fn new(rank: usize, world: usize) -> Self {
        HostBuilder {
            rank,
            world,
            buffers: Vec::new(),
            steps: Vec::new(),
            end: 0,
        }
    }

    fn buf(&mut self, name: &str, dtype: DType, shape: &[usize]) -> BufId {
        let b = Buffer {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            offset: self.end,
        };
        self.end = (self.end + b.bytes()).div_ceil(ALIGN) * ALIGN;
        self.buffers.push(b);
        BufId(self.buffers.len() - 1)
    }

    fn input(&mut self, name: &str, dtype: DType, shape: &[usize]) -> BufId {
        let b = self.buf(name, dtype, shape);
        self.steps.push(Step::Input {
            buf: b,
            param: name.into(),
        });
        b
    }

    fn output(&mut self, b: BufId) {
        let x = &self.buffers[b.0];
        self.steps.push(Step::Output {
            buf: b,
            value: x.name.clone(),
            shape: x.shape.clone(),
        });
    }

    fn launch(&mut self, kernels: &[Kernel], kernel: usize, args: Vec<Arg>) {
        let ints: Vec<i64> = args
            .iter()
            .filter_map(|a| match a {
                Arg::Int(i) => Some(*i),
                _ => None,
            })
            .collect();
        let dims = kernels[kernel].launch(&ints);
        self.steps.push(Step::Launch {
            kernel,
            grid: dims.grid,
            block: dims.block,
            shared_bytes: dims.shared_bytes,
            args,
        });
    }

    fn finish(self) -> HostProgram {
        HostProgram {
            rank: self.rank,
            world: self.world,
            buffers: self.buffers.into(),
            steps: self.steps,
            peak_bytes: self.end.max(ALIGN),
        }
    }
}

fn copy_kernel(name: &str, dtype: DType, rank: usize) -> Kernel {
    Kernel::Copy(kir::Copy {
        name: name.into(),
        dtype,
        rank,
    })
}

/// `y = 2·x + 2` over a 2-d iteration space.
fn affine_kernel(name: &str) -> Kernel {
    Kernel::Fused(Fused {
        name: name.into(),
        inputs: vec![kir::Input {
            name: "x".into(),
            dtype: DType::F32,
            broadcast: vec![false, false],
        }],
        outputs: vec![kir::Output {
            name: "y".into(),
            dtype: DType::F32,
            value: Value(3),
            per_row: false,
        }],
        rank: 2,
        row: None,
        global_index: false,
        args: vec![],
        seeds: 0,
        body: vec![
            (Scalar::F32, Expr::Load(0)),
            (Scalar::F32, Expr::Const(2.0)),
            (Scalar::F32, Expr::Binary(BinaryOp::Mul, Value(0), Value(1))),
            (Scalar::F32, Expr::Binary(BinaryOp::Add, Value(2), Value(1))),
        ],
    })
}

/// Copy-kernel arguments: `out[i, j] = in[j, i]` for `in` of `rows × cols`.
fn transpose_args(input: BufId, output: BufId, rows: usize, cols: usize) -> Vec<Arg> {
    vec![
        Arg::Buffer(input),
        Arg::Buffer(output),
        Arg::Int(cols as i64),
        Arg::Int(rows as i64),
        Arg::Int(0),
        Arg::Int(1),
        Arg::Int(cols as i64),
        Arg::Int(0),
        Arg::Int(rows as i64),
        Arg::Int(1),
    ]
}

/// One rank, one Copy kernel: `xt = transpose(x)`.
fn tiny_copy_program() -> (Compiled, BTreeMap<String, Tensor>) {
    let kernels = vec![copy_kernel("copy_f32_2", DType::F32, 2)];
    let mut h = HostBuilder::new(0, 1);
    let x = h.input("x", DType::F32, &[2, 3]);
    let xt = h.buf("xt", DType::F32, &[3, 2]);
    h.steps.push(Step::Alloc { buf: xt });
    h.launch(&kernels, 0, transpose_args(x, xt, 2, 3));
    h.output(xt);
    let compiled = Compiled {
        kernels,
        hosts: vec![h.finish()],
    };
    let mut inputs = BTreeMap::new();
    inputs.insert(
        "x".to_string(),
        Tensor::from_f32(DType::F32, vec![2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap(),
    );
    (compiled, inputs)
}

/// Whether this machine can run the GPU tests; prints why not.
fn gpus(needed: usize) -> bool {
    match tpc_runtime::cuda::gpu_count() {
        Ok(n) if n >= needed => {
            if tpc_codegen::nvrtc::available() {
                true
            } else {
                println!("skipped: {n} GPU(s) here but no libnvrtc to compile the kernels");
                false
            }
        }
        Ok(n) => {
            println!("skipped: needs {needed} GPUs, {n} here");
            false
        }
        Err(e) => {
            println!("skipped: no CUDA driver/GPU here ({e})");
            false
        }
    }
}

#[test]
fn without_a_driver_run_cuda_is_a_clear_error() {
    if tpc_runtime::cuda::driver_present() {
        println!("skipped: a CUDA driver is present here (the GPU tests cover this machine)");
        return;
    }
    let (compiled, inputs) = tiny_copy_program();
    let r = std::panic::catch_unwind(|| run_cuda(&compiled, "", &[inputs], &WorldConfig::single()));
    let e = r.expect("run_cuda panicked").unwrap_err();
    let m = e.to_string();
    assert!(matches!(e, tpc_runtime::Error::Cuda(_)), "{e:?}");
    assert!(m.contains("no CUDA driver"), "{m}");
    assert!(tpc_runtime::cuda::gpu_count().is_err());
}

#[test]
fn broken_host_programs_are_refused_before_any_gpu_work() {
    let (mut compiled, inputs) = tiny_copy_program();
    compiled.hosts[0].peak_bytes = 16;
    let m = run_cuda(
        &compiled,
        "",
        std::slice::from_ref(&inputs),
        &WorldConfig::single(),
    )
    .unwrap_err()
    .to_string();
    assert!(m.contains("does not fit the arena"), "{m}");

    let (mut compiled, _) = tiny_copy_program();
    if let Step::Launch { args, .. } = &mut compiled.hosts[0].steps[2] {
        args.pop();
    }
    let m = plan::check(&compiled).unwrap_err().to_string();
    assert!(m.contains("do not match"), "{m}");
}

#[test]
fn more_processes_than_ranks_is_an_error() {
    let (compiled, inputs) = tiny_copy_program();
    let world = WorldConfig {
        rank: 0,
        world_size: 2,
        master: Some(tpc_runtime::cuda::Master {
            addr: "127.0.0.1".into(),
            port: 1,
        }),
        local_rank: None,
    };
    let m = run_cuda(&compiled, "", &[inputs], &world)
        .unwrap_err()
        .to_string();
    assert!(m.contains("2 processes") && m.contains("1 ranks"), "{m}");
}

// --- exchanges ------------------------------------------------------------------------------

/// A box of a 1-, 2- or 3-dim view.
fn bx(ranges: &[std::ops::Range<usize>]) -> Block {
    Block(ranges.to_vec())
}

/// Per rank of `group`, an exchange over a tensor seen as `view`, whose member `s` holds the
/// boxes `held(s)` (input, output) and whose member `t` receives `recv(t, s)` from member `s`.
#[allow(clippy::too_many_arguments)]
fn exchange(
    kind: Collective,
    group: &[usize],
    me: usize,
    input: BufId,
    output: BufId,
    reduce: Option<ReduceOp>,
    view: &[usize],
    held: &dyn Fn(usize) -> (Block, Block),
    recv: &dyn Fn(usize, usize) -> Option<Block>,
) -> Exchange {
    let g = group.len();
    Exchange {
        kind,
        axis: "tp".into(),
        group: group.to_vec(),
        input,
        output,
        dtype: DType::F32,
        reduce,
        view: view.to_vec(),
        inputs: (0..g).map(|s| held(s).0).collect(),
        outputs: (0..g).map(|s| held(s).1).collect(),
        recv: (0..g).map(|s| recv(me, s)).collect(),
        send: (0..g).map(|t| recv(t, me)).collect(),
        me,
    }
}

/// A world of `n` ranks, each with one exchange of `inp` input and `out` output elements.
fn one_exchange(
    n: usize,
    inp: &dyn Fn(usize) -> usize,
    out: &dyn Fn(usize) -> usize,
    make: &dyn Fn(usize, BufId, BufId) -> Exchange,
) -> Compiled {
    let hosts = (0..n)
        .map(|r| {
            let mut h = HostBuilder::new(r, n);
            let x = h.input("x", DType::F32, &[inp(r)]);
            let y = h.buf("y", DType::F32, &[out(r)]);
            h.steps.push(Step::Exchange(make(r, x, y)));
            h.output(y);
            h.finish()
        })
        .collect();
    Compiled {
        kernels: vec![],
        hosts,
    }
}

fn calls(c: &Compiled) -> Vec<Vec<Call>> {
    let p = plan::check(c).unwrap();
    p.exchanges
        .iter()
        .map(|m| m.values().flat_map(|x| x.calls.clone()).collect())
        .collect()
}

/// The exchanges the tests run on CPU and GPU: (name, program).
fn exchange_programs() -> Vec<(&'static str, Compiled)> {
    let g2 = [0usize, 1];
    let sum = Some(ReduceOp::Sum);
    vec![
        (
            "allreduce",
            one_exchange(2, &|_| 4, &|_| 4, &|me, x, y| {
                exchange(
                    Collective::AllReduce(ReduceOp::Sum),
                    &g2,
                    me,
                    x,
                    y,
                    sum,
                    &[4],
                    &|_| (bx(&[0..4]), bx(&[0..4])),
                    &|_, _| Some(bx(&[0..4])),
                )
            }),
        ),
        (
            "reduce_scatter",
            one_exchange(2, &|_| 4, &|_| 2, &|me, x, y| {
                exchange(
                    Collective::ReduceScatter(ReduceOp::Sum),
                    &g2,
                    me,
                    x,
                    y,
                    sum,
                    &[4],
                    &|t| (bx(&[0..4]), bx(&[2 * t..2 * t + 2])),
                    &|t, _| Some(bx(&[2 * t..2 * t + 2])),
                )
            }),
        ),
        (
            "reduce_scatter uneven",
            one_exchange(2, &|_| 5, &|r| [3, 2][r], &|me, x, y| {
                exchange(
                    Collective::ReduceScatter(ReduceOp::Max),
                    &g2,
                    me,
                    x,
                    y,
                    Some(ReduceOp::Max),
                    &[5],
                    &|t| (bx(&[0..5]), bx(&[[0..3, 3..5][t].clone()])),
                    &|t, _| Some(bx(&[[0..3, 3..5][t].clone()])),
                )
            }),
        ),
        (
            "allgather",
            one_exchange(2, &|_| 3, &|_| 6, &|me, x, y| {
                exchange(
                    Collective::AllGather,
                    &g2,
                    me,
                    x,
                    y,
                    None,
                    &[6],
                    &|s| (bx(&[3 * s..3 * s + 3]), bx(&[0..6])),
                    &|_, s| Some(bx(&[3 * s..3 * s + 3])),
                )
            }),
        ),
        (
            "allgather uneven",
            one_exchange(2, &|r| [3, 2][r], &|_| 5, &|me, x, y| {
                exchange(
                    Collective::AllGather,
                    &g2,
                    me,
                    x,
                    y,
                    None,
                    &[5],
                    &|s| (bx(&[[0..3, 3..5][s].clone()]), bx(&[0..5])),
                    &|_, s| Some(bx(&[[0..3, 3..5][s].clone()])),
                )
            }),
        ),
        (
            "all_to_all",
            // Member t receives elements [2t, 2t+2) of every member s at [2s, 2s+2).
            one_exchange(2, &|_| 4, &|_| 4, &|me, x, y| {
                // View [2, 2, 2]: member s holds [:, s, :] before, member t [t, :, :] after.
                exchange(
                    Collective::AllToAll,
                    &g2,
                    me,
                    x,
                    y,
                    None,
                    &[2, 2, 2],
                    &|s| (bx(&[0..2, s..s + 1, 0..2]), bx(&[s..s + 1, 0..2, 0..2])),
                    &|t, s| Some(bx(&[t..t + 1, s..s + 1, 0..2])),
                )
            }),
        ),
    ]
}

#[test]
fn exchanges_map_to_the_nccl_calls_their_shape_allows() {
    let progs: BTreeMap<&str, Compiled> = exchange_programs().into_iter().collect();
    let c = |name: &str| calls(&progs[name]);
    let sum = ReduceOp::Sum;
    assert_eq!(
        c("allreduce")[1],
        vec![Call::AllReduce {
            op: sum,
            src: 0,
            dst: 0,
            count: 4
        }]
    );
    assert_eq!(
        c("reduce_scatter")[0],
        vec![Call::ReduceScatter {
            op: sum,
            src: 0,
            dst: 0,
            count: 2
        }]
    );
    let max = ReduceOp::Max;
    assert_eq!(
        c("reduce_scatter uneven")[1],
        vec![
            Call::Reduce {
                op: max,
                root: 0,
                src: 0,
                dst: None,
                count: 3
            },
            Call::Reduce {
                op: max,
                root: 1,
                src: 3,
                dst: Some(0),
                count: 2
            },
        ]
    );
    assert_eq!(
        c("allgather")[0],
        vec![Call::AllGather {
            src: 0,
            dst: 0,
            count: 3
        }]
    );
    assert_eq!(
        c("allgather uneven")[1],
        vec![
            Call::Broadcast {
                root: 0,
                src: None,
                dst: 0,
                count: 3
            },
            Call::Broadcast {
                root: 1,
                src: Some(0),
                dst: 3,
                count: 2
            },
        ]
    );
    assert_eq!(
        c("all_to_all")[0],
        vec![
            Call::Send {
                peer: 1,
                src: 2,
                count: 2
            },
            Call::Recv {
                peer: 1,
                dst: 2,
                count: 2
            },
            Call::Copy {
                src: 0,
                dst: 0,
                count: 2
            },
        ]
    );
    let lines = plan::describe(&progs["allgather uneven"]).unwrap();
    assert_eq!(
        lines[1],
        vec![
            "step 1 allgather over [0, 1] (grouped): ncclBroadcast(root 0, in+- -> out+0, 3); \
              ncclBroadcast(root 1, in+0 -> out+3, 2)"
                .to_string()
        ]
    );
    let p = plan::check(&progs["all_to_all"]).unwrap();
    assert!(p.needs_nccl && p.split_layers.is_empty());
    assert!(p.exchanges[0].values().all(|x| x.grouped));
}

#[test]
fn sub_groups_get_split_communicators_and_shard_needs_none() {
    // Mesh dp=2, tp=2: ranks (0,1) and (2,3) allreduce over tp.
    let sum = Some(ReduceOp::Sum);
    let c = one_exchange(4, &|_| 4, &|_| 4, &|me, x, y| {
        let group = if me < 2 { vec![0, 1] } else { vec![2, 3] };
        exchange(
            Collective::AllReduce(ReduceOp::Sum),
            &group,
            me % 2,
            x,
            y,
            sum,
            &[4],
            &|_| (bx(&[0..4]), bx(&[0..4])),
            &|_, _| Some(bx(&[0..4])),
        )
    });
    let p = plan::check(&c).unwrap();
    assert_eq!(p.split_layers, vec![vec![vec![0, 1], vec![2, 3]]]);
    assert_eq!(p.exchanges[3][&1].comm, Some(vec![2, 3]));
    // A shard keeps its own piece: copies only, no NCCL at all.
    let c = one_exchange(2, &|_| 4, &|_| 2, &|me, x, y| {
        exchange(
            Collective::Shard,
            &[0, 1],
            me,
            x,
            y,
            None,
            &[4],
            &|t| (bx(&[0..4]), bx(&[2 * t..2 * t + 2])),
            &|t, s| (t == s).then(|| bx(&[2 * t..2 * t + 2])),
        )
    });
    let p = plan::check(&c).unwrap();
    assert!(!p.needs_nccl);
    assert_eq!(
        p.exchanges[1][&1].calls,
        vec![Call::Copy {
            src: 2,
            dst: 0,
            count: 2
        }]
    );
    // A group of one: copies.
    let c = one_exchange(1, &|_| 3, &|_| 3, &|me, x, y| {
        exchange(
            Collective::AllReduce(ReduceOp::Sum),
            &[0],
            me,
            x,
            y,
            sum,
            &[3],
            &|_| (bx(&[0..3]), bx(&[0..3])),
            &|_, _| Some(bx(&[0..3])),
        )
    });
    assert_eq!(
        calls(&c)[0],
        vec![Call::Copy {
            src: 0,
            dst: 0,
            count: 3
        }]
    );
}

#[test]
fn disagreeing_members_are_refused() {
    // Rank 1 expects other runs than rank 0 sends.
    let c = one_exchange(2, &|_| 4, &|_| 4, &|me, x, y| {
        let mut e = exchange(
            Collective::AllGather,
            &[0, 1],
            me,
            x,
            y,
            None,
            &[4],
            &|s| (bx(&[2 * s..2 * s + 2]), bx(&[0..4])),
            &|_, s| Some(bx(&[2 * s..2 * s + 2])),
        );
        if me == 1 {
            e.recv[0] = Some(bx(&[1..2]));
        }
        e
    });
    let m = plan::check(&c).unwrap_err().to_string();
    assert!(m.contains("other runs"), "{m}");
    // Rank 1 makes one exchange more.
    let mut c = exchange_programs().remove(0).1;
    let extra = c.hosts[1].steps[1].clone();
    c.hosts[1].steps.insert(1, extra);
    let m = plan::check(&c).unwrap_err().to_string();
    assert!(m.contains("same number of exchanges"), "{m}");
}

#[test]
fn collectives_in_crossed_orders_are_refused() {
    // Three ranks, three pairs; each rank starts with another pair: 0 waits for 1 over
    // [0, 1], 1 for 2 over [1, 2], 2 for 0 over [0, 2].
    let sum = Some(ReduceOp::Sum);
    let order = [
        [vec![0, 1], vec![0, 2]],
        [vec![1, 2], vec![0, 1]],
        [vec![0, 2], vec![1, 2]],
    ];
    let hosts = (0..3)
        .map(|r| {
            let mut h = HostBuilder::new(r, 3);
            let x = h.input("x", DType::F32, &[2]);
            for group in &order[r] {
                let out = h.buf("y", DType::F32, &[2]);
                let me = group.iter().position(|&g| g == r).unwrap();
                h.steps.push(Step::Exchange(exchange(
                    Collective::AllReduce(ReduceOp::Sum),
                    group,
                    me,
                    x,
                    out,
                    sum,
                    &[2],
                    &|_| (bx(&[0..2]), bx(&[0..2])),
                    &|_, _| Some(bx(&[0..2])),
                )));
            }
            h.finish()
        })
        .collect();
    let c = Compiled {
        kernels: vec![],
        hosts,
    };
    let m = plan::check(&c).unwrap_err().to_string();
    assert!(m.contains("deadlock"), "{m}");
    // The same exchanges in one order everywhere are fine.
    let mut c = c;
    for (r, h) in c.hosts.iter_mut().enumerate() {
        if r == 1 {
            h.steps.swap(1, 2);
        }
    }
    plan::check(&c).unwrap();
}

// --- on the GPU -----------------------------------------------------------------------------

/// The CPU executor's results for the same host programs.
fn on_cpu(c: &Compiled, inputs: &[BTreeMap<String, Tensor>]) -> Vec<BTreeMap<String, Tensor>> {
    tpc_runtime::collective::run_ranks(c.hosts.len(), Duration::from_secs(30), |comm| {
        let r = comm.rank();
        tpc_runtime::host::run_host(
            &c.hosts[r],
            c,
            tpc_runtime::host::Kernels::Interpret,
            &inputs[r],
            comm,
        )
    })
    .unwrap()
}

fn assert_close(what: &str, gpu: &Tensor, cpu: &Tensor, tol: f32) {
    assert_eq!(gpu.shape(), cpu.shape(), "{what}");
    assert_eq!(gpu.dtype(), cpu.dtype(), "{what}");
    for (i, (a, b)) in gpu.to_f32_vec().iter().zip(cpu.to_f32_vec()).enumerate() {
        assert!(
            (a - b).abs() <= tol * (1.0 + b.abs()),
            "{what}[{i}]: GPU {a} vs CPU {b}"
        );
    }
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 250.0 - 2.0
        })
        .collect()
}

/// Whether the CUDA writer writes `k` yet.
fn written(k: &Kernel) -> bool {
    let src = tpc_codegen::cuda::kernel_source(k);
    let ok = src.contains("__global__");
    if !ok {
        println!(
            "note: the CUDA writer does not write @{} yet; left out",
            k.name()
        );
    }
    ok
}

/// One rank: the kernels the writer writes (a transpose, an affine map) and two GEMMs (f32
/// with bias, batched bf16 with bias and gelu), with its inputs.
fn one_gpu_program() -> (Compiled, Vec<BTreeMap<String, Tensor>>) {
    let all = [
        copy_kernel("copy_f32_2", DType::F32, 2),
        affine_kernel("affine"),
    ];
    let kernels: Vec<Kernel> = all.into_iter().filter(written).collect();
    let idx = |name: &str| kernels.iter().position(|k| k.name() == name);
    let (m, n, k) = (5, 7, 9);
    let mut h = HostBuilder::new(0, 1);
    let x = h.input("x", DType::F32, &[m, k]);
    let w = h.input("w", DType::F32, &[n, k]);
    let bias = h.input("bias", DType::F32, &[n]);
    let xb = h.input("xb", DType::BF16, &[2, m, k]);
    let wb = h.input("wb", DType::BF16, &[k, n]);
    let bb = h.input("bb", DType::BF16, &[n]);
    if let Some(i) = idx("copy_f32_2") {
        let xt = h.buf("xt", DType::F32, &[k, m]);
        h.launch(&kernels, i, transpose_args(x, xt, m, k));
        h.output(xt);
    }
    if let Some(i) = idx("affine") {
        let y = h.buf("y", DType::F32, &[m, k]);
        h.launch(
            &kernels,
            i,
            vec![
                Arg::Buffer(x),
                Arg::Buffer(y),
                Arg::Int(m as i64),
                Arg::Int(k as i64),
            ],
        );
        h.output(y);
    }
    // f32: z = x · wᵀ + bias.
    let z = h.buf("z", DType::F32, &[m, n]);
    h.steps.push(Step::Gemm(Gemm {
        a: x,
        b: w,
        c: z,
        bias: Some(bias),
        epilogue: Epilogue::Bias,
        dtype: DType::F32,
        batch: 1,
        m,
        n,
        k,
        stride_a: 0,
        stride_b: 0,
        stride_c: 0,
        b_transposed: true,
    }));
    h.output(z);
    // bf16, batched, b shared by both batches: zb[i] = gelu(xb[i] · wb + bb).
    let zb = h.buf("zb", DType::BF16, &[2, m, n]);
    h.steps.push(Step::Gemm(Gemm {
        a: xb,
        b: wb,
        c: zb,
        bias: Some(bb),
        epilogue: Epilogue::BiasGelu,
        dtype: DType::BF16,
        batch: 2,
        m,
        n,
        k,
        stride_a: m * k,
        stride_b: 0,
        stride_c: m * n,
        b_transposed: false,
    }));
    h.output(zb);
    let compiled = Compiled {
        kernels: kernels.clone(),
        hosts: vec![h.finish()],
    };
    let mut inputs = BTreeMap::new();
    let mut put = |name: &str, dtype: DType, shape: Vec<usize>, seed: u32| {
        let n: usize = shape.iter().product();
        inputs.insert(
            name.to_string(),
            Tensor::from_f32(dtype, shape, values(n, seed)).unwrap(),
        );
    };
    put("x", DType::F32, vec![m, k], 1);
    put("w", DType::F32, vec![n, k], 2);
    put("bias", DType::F32, vec![n], 3);
    put("xb", DType::BF16, vec![2, m, k], 4);
    put("wb", DType::BF16, vec![k, n], 5);
    put("bb", DType::BF16, vec![n], 6);
    let inputs = vec![inputs];
    (compiled, inputs)
}

#[test]
fn the_gpu_test_programs_run_on_the_cpu() {
    // The GPU tests compare with these CPU results; here the programs themselves are checked.
    let (compiled, inputs) = one_gpu_program();
    plan::check(&compiled).unwrap();
    let cpu = on_cpu(&compiled, &inputs);
    assert!(cpu[0].contains_key("z") && cpu[0].contains_key("zb"));
    for (name, compiled) in exchange_programs() {
        let inputs = exchange_inputs(&compiled);
        let cpu = on_cpu(&compiled, &inputs);
        let x: Vec<Vec<f32>> = inputs.iter().map(|m| m["x"].to_f32_vec()).collect();
        let y: Vec<Vec<f32>> = cpu.iter().map(|m| m["y"].to_f32_vec()).collect();
        let expect: Vec<Vec<f32>> = match name {
            "allreduce" => vec![(0..4).map(|i| x[0][i] + x[1][i]).collect(); 2],
            "reduce_scatter" => (0..2)
                .map(|t| (0..2).map(|i| x[0][2 * t + i] + x[1][2 * t + i]).collect())
                .collect(),
            "reduce_scatter uneven" => vec![
                (0..3).map(|i| x[0][i].max(x[1][i])).collect(),
                (3..5).map(|i| x[0][i].max(x[1][i])).collect(),
            ],
            "allgather" | "allgather uneven" => vec![[x[0].clone(), x[1].clone()].concat(); 2],
            "all_to_all" => (0..2)
                .map(|t| [&x[0][2 * t..2 * t + 2], &x[1][2 * t..2 * t + 2]].concat())
                .collect(),
            other => panic!("no expectation for {other}"),
        };
        assert_eq!(y, expect, "{name}");
    }
}

#[test]
fn one_gpu_kernels_and_gemms_match_the_cpu() {
    if !gpus(1) {
        return;
    }
    let (compiled, inputs) = one_gpu_program();
    let kernels = compiled.kernels.clone();
    let source = tpc_codegen::cuda::module_source(&kernels);
    let ptx = tpc_codegen::nvrtc::compile(&source, "sm_80").expect("NVRTC compiles the module");
    let options = RunOptions {
        sync_each_step: true,
        ..RunOptions::default()
    };
    let gpu = run_cuda_with(&compiled, &ptx, &inputs, &WorldConfig::single(), &options)
        .unwrap_or_else(|e| panic!("{e}"));
    let cpu = on_cpu(&compiled, &inputs);
    assert_eq!(
        gpu[0].keys().collect::<Vec<_>>(),
        cpu[0].keys().collect::<Vec<_>>()
    );
    for (name, t) in &cpu[0] {
        // bf16 with gelu: the GPU rounds once, the CPU also rounds the biased sum.
        let tol = if t.dtype() == DType::BF16 { 2e-2 } else { 1e-5 };
        assert_close(name, &gpu[0][name], t, tol);
    }
    println!("ran on the GPU: {:?}", gpu[0].keys().collect::<Vec<_>>());
}

/// Each rank's input `x` of an exchange program.
fn exchange_inputs(compiled: &Compiled) -> Vec<BTreeMap<String, Tensor>> {
    compiled
        .hosts
        .iter()
        .map(|h| {
            let Step::Input { buf, param } = &h.steps[0] else {
                unreachable!()
            };
            let b = &h.buffers[buf.0];
            let t = Tensor::from_f32(
                DType::F32,
                b.shape.clone(),
                values(b.elems(), 1 + h.rank as u32 * 31),
            )
            .unwrap();
            [(param.clone(), t)].into_iter().collect()
        })
        .collect()
}

#[test]
fn two_gpus_exchanges_match_the_cpu() {
    if !gpus(2) {
        return;
    }
    if !tpc_runtime::cuda::nccl_present() {
        println!("skipped: 2 GPUs here but no libnccl");
        return;
    }
    for (name, compiled) in exchange_programs() {
        let inputs = exchange_inputs(&compiled);
        let gpu = run_cuda(&compiled, "", &inputs, &WorldConfig::single())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let cpu = on_cpu(&compiled, &inputs);
        for r in 0..2 {
            assert_close(
                &format!("{name} rank {r}"),
                &gpu[r]["y"],
                &cpu[r]["y"],
                1e-6,
            );
        }
    }
}

#[test]
fn the_copy_program_runs_on_one_gpu() {
    if !gpus(1) {
        return;
    }
    let (compiled, inputs) = tiny_copy_program();
    if !written(&compiled.kernels[0]) {
        return;
    }
    let ptx = tpc_codegen::nvrtc::compile(
        &tpc_codegen::cuda::module_source(&compiled.kernels),
        "sm_80",
    )
    .unwrap();
    let gpu = run_cuda(&compiled, &ptx, &[inputs], &WorldConfig::single())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(gpu[0]["xt"].to_f32_vec(), vec![1., 4., 2., 5., 3., 6.]);
}

#[test]
fn a_missing_kernel_is_a_clear_error_on_the_gpu() {
    if !gpus(1) {
        return;
    }
    let (compiled, inputs) = tiny_copy_program();
    // A module that defines another kernel only.
    let other = vec![affine_kernel("affine")];
    let ptx =
        tpc_codegen::nvrtc::compile(&tpc_codegen::cuda::module_source(&other), "sm_80").unwrap();
    let m = run_cuda(&compiled, &ptx, &[inputs], &WorldConfig::single())
        .unwrap_err()
        .to_string();
    assert!(m.contains("@copy_f32_2 is not in the PTX module"), "{m}");
}
