//! Kernels of every kind and variant, built by hand from the kernel IR: the CUDA C tests
//! (`cuda_kinds.rs`: each compiles with NVRTC) and the emulator tests (`emulated.rs`: each runs
//! like the interpreter) share them.
#![allow(dead_code)]

use tpc::codegen::kir::{
    Attention, Copy, Embedding, Expr, Fused, Input, Kept, Kernel, Output, Pick, Scalar, Value,
};
use tpc::ir::ops::{BinaryOp, UnaryOp};
use tpc::ir::{DType, ReduceOp};

/// A fused kernel's body, value by value.
#[derive(Default)]
pub struct Body(pub Vec<(Scalar, Expr)>);

impl Body {
    pub fn push(&mut self, s: Scalar, e: Expr) -> Value {
        self.0.push((s, e));
        Value(self.0.len() - 1)
    }
    pub fn f(&mut self, e: Expr) -> Value {
        self.push(Scalar::F32, e)
    }
    pub fn load(&mut self, i: usize) -> Value {
        self.f(Expr::Load(i))
    }
    pub fn konst(&mut self, c: f32) -> Value {
        self.f(Expr::Const(c))
    }
    pub fn bin(&mut self, op: BinaryOp, a: Value, b: Value) -> Value {
        let s = if matches!(
            op,
            BinaryOp::Eq
                | BinaryOp::Ne
                | BinaryOp::Lt
                | BinaryOp::Le
                | BinaryOp::Gt
                | BinaryOp::Ge
                | BinaryOp::And
                | BinaryOp::Or
        ) {
            Scalar::Bool
        } else {
            Scalar::F32
        };
        self.push(s, Expr::Binary(op, a, b))
    }
    pub fn un(&mut self, op: UnaryOp, a: Value) -> Value {
        self.f(Expr::Unary(op, a))
    }
    pub fn reduce(&mut self, op: ReduceOp, a: Value) -> Value {
        self.f(Expr::RowReduce(op, a))
    }
    pub fn round(&mut self, d: DType, a: Value) -> Value {
        self.f(Expr::Round(d, a))
    }
}

pub fn input(name: &str, dtype: DType, broadcast: &[bool]) -> Input {
    Input {
        name: name.to_string(),
        dtype,
        broadcast: broadcast.to_vec(),
    }
}

pub fn output(name: &str, dtype: DType, value: Value, per_row: bool) -> Output {
    Output {
        name: name.to_string(),
        dtype,
        value,
        per_row,
    }
}

struct FusedSpec {
    name: &'static str,
    inputs: Vec<Input>,
    outputs: Vec<Output>,
    rank: usize,
    row: Option<(usize, usize)>,
    args: Vec<&'static str>,
    body: Body,
}

fn fused(s: FusedSpec) -> Kernel {
    let global_index = s.body.0.iter().any(|(_, e)| matches!(e, Expr::Rand(_)));
    Kernel::Fused(Fused {
        name: s.name.to_string(),
        inputs: s.inputs,
        outputs: s.outputs,
        rank: s.rank,
        row: s.row,
        global_index,
        args: s.args.into_iter().map(String::from).collect(),
        seeds: 0,
        body: s.body.0,
    })
}

/// `y = tanh(x)` in bf16 on a contiguous tensor: the vectorized path of 8 elements a thread.
pub fn pointwise_bf16() -> Kernel {
    let mut b = Body::default();
    let x = b.load(0);
    let g = b.f(Expr::Unary(UnaryOp::Tanh, x));
    let y = b.round(DType::BF16, g);
    fused(FusedSpec {
        name: "pw_tanh_bf16",
        inputs: vec![input("x", DType::BF16, &[false, false])],
        outputs: vec![output("y", DType::BF16, y, false)],
        rank: 2,
        row: None,
        args: vec![],
        body: b,
    })
}

/// `y = x * h`, `m = y > 0` with an f32 and a bf16 input: the vectorized path of 4 elements,
/// with a bool output.
pub fn pointwise_mixed() -> Kernel {
    let mut b = Body::default();
    let x = b.load(0);
    let h = b.load(1);
    let y = b.bin(BinaryOp::Mul, x, h);
    let zero = b.konst(0.0);
    let m = b.bin(BinaryOp::Gt, y, zero);
    fused(FusedSpec {
        name: "pw_mixed",
        inputs: vec![
            input("x", DType::F32, &[false, false, false]),
            input("h", DType::BF16, &[false, false, false]),
        ],
        outputs: vec![
            output("y", DType::F32, y, false),
            output("m", DType::Bool, m, false),
        ],
        rank: 3,
        row: None,
        args: vec![],
        body: b,
    })
}

/// `y = x * s0 + bias` with the bias broadcast over dim 0: a scalar argument, no vector path.
pub fn pointwise_arg() -> Kernel {
    let mut b = Body::default();
    let x = b.load(0);
    let s = b.f(Expr::Arg(0));
    let xs = b.bin(BinaryOp::Mul, x, s);
    let bias = b.load(1);
    let y = b.bin(BinaryOp::Add, xs, bias);
    let y = b.round(DType::F16, y);
    fused(FusedSpec {
        name: "pw_arg_bias",
        inputs: vec![
            input("x", DType::F16, &[false, false]),
            input("bias", DType::F16, &[true, false]),
        ],
        outputs: vec![output("y", DType::F16, y, false)],
        rank: 2,
        row: None,
        args: vec!["1 / count of %x over dims [1]"],
        body: b,
    })
}

/// Dropout: `y = rand < 0.9 ? round(x * 1/0.9) : 0` by global index.
pub fn pointwise_dropout() -> Kernel {
    let mut b = Body::default();
    let x = b.load(0);
    let keep = b.konst(0.9);
    let scale = b.konst(1.109375);
    let r = b.f(Expr::Rand(7));
    let kept = b.bin(BinaryOp::Lt, r, keep);
    let xs = b.bin(BinaryOp::Mul, x, scale);
    let xs = b.round(DType::BF16, xs);
    let zero = b.konst(0.0);
    let y = b.f(Expr::Select(kept, xs, zero));
    fused(FusedSpec {
        name: "pw_dropout",
        inputs: vec![input("x", DType::BF16, &[false, false, false])],
        outputs: vec![output("y", DType::BF16, y, false)],
        rank: 3,
        row: None,
        args: vec![],
        body: b,
    })
}

/// Softmax over the last dim: max, exp(x - max), sum, divide.
pub fn softmax(name: &'static str, dtype: DType, rank: usize, row: (usize, usize)) -> Kernel {
    let mut b = Body::default();
    let x = b.load(0);
    let m = b.reduce(ReduceOp::Max, x);
    let d = b.bin(BinaryOp::Sub, x, m);
    let e = b.un(UnaryOp::Exp, d);
    let s = b.reduce(ReduceOp::Sum, e);
    let y = b.bin(BinaryOp::Div, e, s);
    let y = b.round(dtype, y);
    fused(FusedSpec {
        name,
        inputs: vec![input("x", dtype, &vec![false; rank])],
        outputs: vec![output("y", dtype, y, false)],
        rank,
        row: Some(row),
        args: vec![],
        body: b,
    })
}

/// Layer norm over the last dim with a per-element weight (`[1, 1, n2]`), a row-uniform gain
/// (`[n0, n1, 1]`: read once per row) and the row's mean stored per row.
pub fn layer_norm() -> Kernel {
    let mut b = Body::default();
    let x = b.load(0);
    let inv = b.f(Expr::Arg(0));
    let sum = b.reduce(ReduceOp::Sum, x);
    let mean = b.bin(BinaryOp::Mul, sum, inv);
    let xc = b.bin(BinaryOp::Sub, x, mean);
    let sq = b.bin(BinaryOp::Mul, xc, xc);
    let var = b.reduce(ReduceOp::Sum, sq);
    let var = b.bin(BinaryOp::Mul, var, inv);
    let eps = b.konst(1e-5);
    let ve = b.bin(BinaryOp::Add, var, eps);
    let rs = b.un(UnaryOp::Rsqrt, ve);
    let xn = b.bin(BinaryOp::Mul, xc, rs);
    let w = b.load(1);
    let gain = b.load(2);
    let wg = b.bin(BinaryOp::Mul, w, gain);
    let y = b.bin(BinaryOp::Mul, xn, wg);
    let y = b.round(DType::BF16, y);
    let mean_out = b.round(DType::F32, mean);
    fused(FusedSpec {
        name: "row_layer_norm",
        inputs: vec![
            input("x", DType::BF16, &[false, false, false]),
            input("w", DType::BF16, &[true, true, false]),
            input("gain", DType::F32, &[false, false, true]),
        ],
        outputs: vec![
            output("y", DType::BF16, y, false),
            output("mean", DType::F32, mean_out, true),
        ],
        rank: 3,
        row: Some((2, 3)),
        args: vec!["1 / count of %x over dims [2]"],
        body: b,
    })
}

/// A sum and a min over the middle dim, stored per row only (both in one pass).
pub fn per_row_reductions() -> Kernel {
    let mut b = Body::default();
    let x = b.load(0);
    let s = b.reduce(ReduceOp::Sum, x);
    let m = b.reduce(ReduceOp::Min, x);
    fused(FusedSpec {
        name: "row_sum_min",
        inputs: vec![input("x", DType::F32, &[false, false, false])],
        outputs: vec![
            output("s", DType::F32, s, true),
            output("m", DType::F32, m, true),
        ],
        rank: 3,
        row: Some((1, 2)),
        args: vec![],
        body: b,
    })
}

/// Dropout then rms norm over dims 1..3 of a rank-4 tensor: Philox by global index in a row
/// kernel, a row of two dims.
pub fn row_dropout_rms() -> Kernel {
    let mut b = Body::default();
    let x = b.load(0);
    let keep = b.konst(0.5);
    let r = b.f(Expr::Rand(11));
    let kept = b.bin(BinaryOp::Lt, r, keep);
    let zero = b.konst(0.0);
    let xd = b.f(Expr::Select(kept, x, zero));
    let sq = b.bin(BinaryOp::Mul, xd, xd);
    let ss = b.reduce(ReduceOp::Sum, sq);
    let inv = b.f(Expr::Arg(0));
    let ms = b.bin(BinaryOp::Mul, ss, inv);
    let rs = b.un(UnaryOp::Rsqrt, ms);
    let y = b.bin(BinaryOp::Mul, xd, rs);
    fused(FusedSpec {
        name: "row_dropout_rms",
        inputs: vec![input("x", DType::F32, &[false, false, false, false])],
        outputs: vec![
            output("xd", DType::F32, xd, false),
            output("y", DType::F32, y, false),
        ],
        rank: 4,
        row: Some((1, 3)),
        args: vec!["1 / count over dims [1, 2]"],
        body: b,
    })
}

pub fn copy(dtype: DType, rank: usize) -> Kernel {
    Kernel::Copy(Copy {
        name: format!("copy_{dtype}_{rank}"),
        dtype,
        rank,
    })
}

pub fn attention(dtype: DType, causal: bool) -> Kernel {
    Kernel::Attention(Attention {
        name: format!("attn_{dtype}{}", if causal { "_causal" } else { "" }),
        dtype,
        causal,
        lse: false,
    })
}

/// The attention kernel writing each query's log-sum-exp (`sdpa_stats`' second result).
pub fn attention_lse(dtype: DType, causal: bool) -> Kernel {
    Kernel::Attention(Attention {
        name: format!("attn_lse_{dtype}{}", if causal { "_causal" } else { "" }),
        dtype,
        causal,
        lse: true,
    })
}

/// One of every kind and variant.
pub fn all_kernels() -> Vec<Kernel> {
    let mut ks = vec![
        pointwise_bf16(),
        pointwise_mixed(),
        pointwise_arg(),
        pointwise_dropout(),
        softmax("row_softmax", DType::F32, 3, (2, 3)),
        softmax("row_softmax_dim0", DType::BF16, 2, (0, 1)),
        layer_norm(),
        per_row_reductions(),
        row_dropout_rms(),
    ];
    for dtype in [DType::F32, DType::BF16] {
        ks.extend((1..=5).map(|r| copy(dtype, r)));
    }
    ks.push(copy(DType::I64, 2));
    ks.push(copy(DType::Bool, 3));
    for dtype in [DType::F32, DType::BF16] {
        ks.push(Kernel::Embedding(Embedding {
            name: format!("embed_{dtype}"),
            dtype,
        }));
    }
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        ks.push(attention(dtype, false));
        ks.push(attention(dtype, true));
        ks.push(attention_lse(dtype, true));
    }
    for (dtype, ignore) in [(DType::F32, -100), (DType::BF16, i64::MIN)] {
        ks.push(Kernel::Pick(Pick {
            name: format!("pick_{dtype}"),
            dtype,
            ignore_index: ignore,
        }));
    }
    ks.push(Kernel::Kept(Kept {
        name: "kept".into(),
        ignore_index: -100,
    }));
    ks
}
