//! The CPU interpreter of every kernel kind (`tpc_runtime::kernel::run_kernel`) against the
//! reference ops: kernels are built by hand, run on the values the reference reads, and compared
//! bit for bit (or within a stated tolerance where the kernel computes in another order or
//! precision than the reference: mean, layer_norm and rms_norm).

use std::collections::BTreeMap;

use tpc_codegen::kir::{
    Attention, Copy, Embedding, Expr, Fused, Input, Kept, Kernel, Output, Pick, Scalar, Value,
};
use tpc_ir::ops::{BinaryOp, UnaryOp};
use tpc_ir::{parse, DType, ReduceOp, SourceFile};
use tpc_runtime::kernel::{run_kernel, KArg};
use tpc_runtime::{bind_symbols, run_reference, Data, Error, Tensor};

// ---------------------------------------------------------------------------------------------
// Helpers

/// Runs the one-function program `src` on `inputs` with the reference executor.
fn reference(src: &str, inputs: &[(&str, &Tensor)]) -> Vec<Tensor> {
    let file = SourceFile::new("t.ir", src);
    let g = parse(&file).unwrap_or_else(|d| panic!("{}", tpc_ir::diag::render(&file, &d)));
    let inputs: BTreeMap<String, Tensor> = inputs
        .iter()
        .map(|(k, v)| (k.to_string(), (*v).clone()))
        .collect();
    let bindings = bind_symbols(&g, &inputs, &BTreeMap::new()).expect("bindings");
    run_reference(&g, &inputs, &bindings).expect("reference")
}

/// Deterministic pseudo-random values in [-scale, scale), rounded to `dtype`.
fn values(dtype: DType, shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    let v = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_f32(dtype, shape.to_vec(), v).expect("tensor")
}

fn ints(shape: &[usize], v: Vec<i64>) -> Tensor {
    Tensor::from_i64(shape.to_vec(), v).expect("tensor")
}

/// An owned kernel argument.
enum A {
    In(Data),
    /// An output buffer of this many elements of the variant for `DType`.
    Out(DType, usize),
    Int(i64),
    Float(f32),
}

fn zeros(dtype: DType, n: usize) -> Data {
    match dtype {
        DType::Bool => Data::Bool(vec![false; n]),
        DType::I64 => Data::I64(vec![0; n]),
        _ => Data::Float(vec![0.0; n]),
    }
}

/// Runs `k` with `args` (in parameter order); returns the output buffers.
fn try_launch(k: &Kernel, args: Vec<A>) -> Result<Vec<Data>, Error> {
    let mut ins: Vec<Option<Data>> = Vec::new();
    let mut outs: Vec<Data> = Vec::new();
    for a in &args {
        match a {
            A::In(d) => ins.push(Some(d.clone())),
            A::Out(dt, n) => outs.push(zeros(*dt, *n)),
            _ => {}
        }
    }
    launch_into(k, &args, &ins, &mut outs)?;
    Ok(outs)
}

fn launch_into(
    k: &Kernel,
    args: &[A],
    ins: &[Option<Data>],
    outs: &mut [Data],
) -> Result<(), Error> {
    let mut ins = ins.iter();
    let mut outs = outs.iter_mut();
    let mut kargs: Vec<KArg<'_>> = Vec::new();
    for a in args {
        kargs.push(match a {
            A::In(_) => KArg::In(ins.next().unwrap().as_ref().unwrap()),
            A::Out(..) => KArg::Out(outs.next().unwrap()),
            A::Int(v) => KArg::Int(*v),
            A::Float(v) => KArg::Float(*v),
        });
    }
    run_kernel(k, &mut kargs)
}

fn launch(k: &Kernel, args: Vec<A>) -> Vec<Data> {
    try_launch(k, args).unwrap_or_else(|e| panic!("{}: {e}", k.name()))
}

fn bits(d: &Data) -> Vec<u64> {
    match d {
        Data::Float(v) => v.iter().map(|x| x.to_bits() as u64).collect(),
        Data::I64(v) => v.iter().map(|&x| x as u64).collect(),
        Data::Bool(v) => v.iter().map(|&x| x as u64).collect(),
    }
}

fn assert_bits(got: &Data, want: &Tensor, what: &str) {
    let (g, w) = (bits(got), bits(want.data()));
    assert_eq!(g.len(), w.len(), "{what}: lengths");
    if let Some(i) = (0..g.len()).find(|&i| g[i] != w[i]) {
        panic!(
            "{what}: element {i} differs: got {:?}, want {:?}",
            floats(got).get(i),
            want.to_f32_vec()[i]
        );
    }
}

fn floats(d: &Data) -> Vec<f32> {
    match d {
        Data::Float(v) => v.clone(),
        Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
        Data::Bool(v) => v.iter().map(|&x| x as u8 as f32).collect(),
    }
}

/// Every element within `ulps` units in the last place of `dtype` of the reference (of 1 for
/// elements smaller than 1: the normalizations' outputs are of order 1, and cancellation in
/// `x - mean` makes the small ones' relative error larger).
fn assert_close(got: &Data, want: &Tensor, ulps: f32, what: &str) {
    let (g, w) = (floats(got), want.to_f32_vec());
    assert_eq!(g.len(), w.len(), "{what}: lengths");
    let eps = match want.dtype() {
        DType::BF16 => 2f32.powi(-8),
        DType::F16 => 2f32.powi(-11),
        _ => 2f32.powi(-24),
    };
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        let tol = ulps * eps * b.abs().max(1.0);
        assert!(
            (a - b).abs() <= tol,
            "{what}: element {i}: got {a}, want {b} (tolerance {tol})"
        );
    }
}

/// A fused-kernel builder.
struct Fb {
    k: Fused,
}

impl Fb {
    fn new(name: &str, rank: usize, row: Option<(usize, usize)>) -> Fb {
        Fb {
            k: Fused {
                name: name.into(),
                inputs: Vec::new(),
                outputs: Vec::new(),
                rank,
                row,
                global_index: false,
                args: Vec::new(),
                seeds: 0,
                body: Vec::new(),
            },
        }
    }

    fn push(&mut self, ty: Scalar, e: Expr) -> Value {
        if matches!(e, Expr::Rand(_)) {
            self.k.global_index = true;
        }
        self.k.body.push((ty, e));
        Value(self.k.body.len() - 1)
    }

    fn f(&mut self, e: Expr) -> Value {
        self.push(Scalar::F32, e)
    }

    fn load(&mut self, dtype: DType, broadcast: &[bool]) -> Value {
        self.k.inputs.push(Input {
            name: format!("x{}", self.k.inputs.len()),
            dtype,
            broadcast: broadcast.to_vec(),
        });
        let ty = if dtype == DType::Bool {
            Scalar::Bool
        } else {
            Scalar::F32
        };
        self.push(ty, Expr::Load(self.k.inputs.len() - 1))
    }

    fn arg(&mut self, what: &str) -> Value {
        self.k.args.push(what.into());
        self.f(Expr::Arg(self.k.args.len() - 1))
    }

    fn round(&mut self, dtype: DType, v: Value) -> Value {
        match dtype {
            DType::BF16 | DType::F16 => self.f(Expr::Round(dtype, v)),
            _ => v,
        }
    }

    fn bin(&mut self, op: BinaryOp, a: Value, b: Value) -> Value {
        self.f(Expr::Binary(op, a, b))
    }

    fn un(&mut self, op: UnaryOp, a: Value) -> Value {
        self.f(Expr::Unary(op, a))
    }

    fn red(&mut self, op: ReduceOp, a: Value) -> Value {
        self.f(Expr::RowReduce(op, a))
    }

    fn store(&mut self, dtype: DType, v: Value, per_row: bool) {
        self.k.outputs.push(Output {
            name: format!("y{}", self.k.outputs.len()),
            dtype,
            value: v,
            per_row,
        });
    }

    fn done(self) -> Kernel {
        Kernel::Fused(self.k)
    }
}

/// Arguments of a fused kernel: inputs, outputs (elements each), extents, identity global-index
/// tables if it has them, scalars.
fn fused_args(k: &Kernel, ins: &[&Tensor], shape: &[usize], scalars: &[f32]) -> Vec<A> {
    let Kernel::Fused(f) = k else { panic!() };
    let total: usize = shape.iter().product();
    let mut a: Vec<A> = ins.iter().map(|t| A::In(t.data().clone())).collect();
    for o in &f.outputs {
        let n = match f.row {
            Some((x, y)) if o.per_row => shape[..x].iter().chain(&shape[y..]).product(),
            _ => total,
        };
        a.push(A::Out(o.dtype, n));
    }
    a.extend(shape.iter().map(|&n| A::Int(n as i64)));
    if f.global_index {
        // The unsharded case: g<d>[i] = i * (row-major stride of dim d).
        let mut stride = 1i64;
        let mut tables = Vec::new();
        for &n in shape.iter().rev() {
            tables.push(A::In(Data::I64(
                (0..n as i64).map(|i| i * stride).collect(),
            )));
            stride *= n as i64;
        }
        tables.reverse();
        a.extend(tables);
    }
    a.extend(scalars.iter().map(|&s| A::Float(s)));
    a
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "f32",
    }
}

fn dims_text(shape: &[usize]) -> String {
    shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// Fused: row reductions

/// softmax over dims a..a+1 of `shape` as a row kernel.
fn softmax_kernel(dtype: DType, rank: usize, dim: usize) -> Kernel {
    let mut b = Fb::new("k_softmax", rank, Some((dim, dim + 1)));
    let x = b.load(dtype, &vec![false; rank]);
    let m = b.red(ReduceOp::Max, x);
    let d = b.bin(BinaryOp::Sub, x, m);
    let e = b.un(UnaryOp::Exp, d);
    let s = b.red(ReduceOp::Sum, e);
    let y = b.bin(BinaryOp::Div, e, s);
    let y = b.round(dtype, y);
    b.store(dtype, y, false);
    b.done()
}

fn check_softmax(dtype: DType, shape: &[usize], dim: usize) {
    let x = values(dtype, shape, 1, 4.0);
    let src = format!(
        "func @f(%x: {dt}[{s}]) -> {dt}[{s}] {{\n  %y = softmax(%x) {{dim = {dim}}}\n  return %y\n}}\n",
        dt = dtype_name(dtype),
        s = dims_text(shape)
    );
    let want = reference(&src, &[("x", &x)]);
    let k = softmax_kernel(dtype, shape.len(), dim);
    let got = launch(&k, fused_args(&k, &[&x], shape, &[]));
    assert_bits(
        &got[0],
        &want[0],
        &format!("softmax {dtype} {shape:?} dim {dim}"),
    );
}

#[test]
fn softmax_over_the_last_dim() {
    check_softmax(DType::F32, &[4, 8], 1);
    check_softmax(DType::BF16, &[3, 5, 7], 2);
    check_softmax(DType::F16, &[2, 33], 1);
    // Long rows: one row per tile.
    check_softmax(DType::F32, &[3, 5000], 1);
}

#[test]
fn softmax_over_a_leading_dim() {
    check_softmax(DType::F32, &[5, 3, 4], 0);
    check_softmax(DType::BF16, &[5, 3, 4], 1);
    // Many inner positions: several tiles per outer position.
    check_softmax(DType::F32, &[6, 3, 1000], 1);
    check_softmax(DType::F32, &[3, 9000], 0);
}

#[test]
fn layer_norm_with_weight_and_bias() {
    for (dtype, ulps) in [(DType::F32, 8.0), (DType::BF16, 1.0)] {
        let (rows, n) = (6, 48);
        let x = values(dtype, &[rows, n], 2, 3.0);
        let w = values(dtype, &[n], 3, 1.0);
        let bias = values(dtype, &[n], 4, 1.0);
        let dt = dtype_name(dtype);
        let src = format!(
            "func @f(%x: {dt}[{rows}, {n}], %w: {dt}[{n}], %b: {dt}[{n}]) -> {dt}[{rows}, {n}] {{\n  %y = layer_norm(%x, %w, %b) {{eps = 0.00001}}\n  return %y\n}}\n"
        );
        let want = reference(&src, &[("x", &x), ("w", &w), ("b", &bias)]);

        let mut b = Fb::new("k_layer_norm", 2, Some((1, 2)));
        let xv = b.load(dtype, &[false, false]);
        let inv_n = b.arg("1/n");
        let sum = b.red(ReduceOp::Sum, xv);
        let mean = b.bin(BinaryOp::Mul, sum, inv_n);
        let c = b.bin(BinaryOp::Sub, xv, mean);
        let c2 = b.bin(BinaryOp::Mul, c, c);
        let ss = b.red(ReduceOp::Sum, c2);
        let var = b.bin(BinaryOp::Mul, ss, inv_n);
        let eps = b.f(Expr::Const(1e-5));
        let ve = b.bin(BinaryOp::Add, var, eps);
        let inv = b.un(UnaryOp::Rsqrt, ve);
        let y = b.bin(BinaryOp::Mul, c, inv);
        let wv = b.load(dtype, &[true, false]);
        let y = b.bin(BinaryOp::Mul, y, wv);
        let bv = b.load(dtype, &[true, false]);
        let y = b.bin(BinaryOp::Add, y, bv);
        let y = b.round(dtype, y);
        b.store(dtype, y, false);
        let k = b.done();
        let got = launch(
            &k,
            fused_args(&k, &[&x, &w, &bias], &[rows, n], &[1.0 / n as f32]),
        );
        // The reference normalizes in f64, the kernel in f32.
        assert_close(&got[0], &want[0], ulps, &format!("layer_norm {dtype}"));
    }
}

#[test]
fn rms_norm_with_weight() {
    for (dtype, ulps) in [(DType::F32, 8.0), (DType::BF16, 1.0)] {
        let (rows, n) = (5, 40);
        let x = values(dtype, &[rows, n], 5, 2.0);
        let w = values(dtype, &[n], 6, 1.0);
        let dt = dtype_name(dtype);
        let src = format!(
            "func @f(%x: {dt}[{rows}, {n}], %w: {dt}[{n}]) -> {dt}[{rows}, {n}] {{\n  %y = rms_norm(%x, %w) {{eps = 0.00001}}\n  return %y\n}}\n"
        );
        let want = reference(&src, &[("x", &x), ("w", &w)]);

        let mut b = Fb::new("k_rms_norm", 2, Some((1, 2)));
        let xv = b.load(dtype, &[false, false]);
        let inv_n = b.arg("1/n");
        let x2 = b.bin(BinaryOp::Mul, xv, xv);
        let ss = b.red(ReduceOp::Sum, x2);
        let ms = b.bin(BinaryOp::Mul, ss, inv_n);
        let eps = b.f(Expr::Const(1e-5));
        let me = b.bin(BinaryOp::Add, ms, eps);
        let inv = b.un(UnaryOp::Rsqrt, me);
        let y = b.bin(BinaryOp::Mul, xv, inv);
        let wv = b.load(dtype, &[true, false]);
        let y = b.bin(BinaryOp::Mul, y, wv);
        let y = b.round(dtype, y);
        b.store(dtype, y, false);
        let k = b.done();
        let got = launch(&k, fused_args(&k, &[&x, &w], &[rows, n], &[1.0 / n as f32]));
        assert_close(&got[0], &want[0], ulps, &format!("rms_norm {dtype}"));
    }
}

/// `<op>(x) {dims = [..]}` on `shape` against a row kernel over dims `row` storing per row.
fn check_reduce(op: &str, dtype: DType, shape: &[usize], row: (usize, usize), x: &Tensor) {
    let dims: Vec<String> = (row.0..row.1).map(|d| d.to_string()).collect();
    let out: Vec<usize> = shape[..row.0]
        .iter()
        .chain(&shape[row.1..])
        .copied()
        .collect();
    let dt = dtype_name(dtype);
    let src = format!(
        "func @f(%x: {dt}[{}]) -> {dt}[{}] {{\n  %y = {op}(%x) {{dims = [{}]}}\n  return %y\n}}\n",
        dims_text(shape),
        dims_text(&out),
        dims.join(", ")
    );
    let want = reference(&src, &[("x", x)]);
    let mut b = Fb::new("k_reduce", shape.len(), Some(row));
    let xv = b.load(dtype, &vec![false; shape.len()]);
    let count: usize = shape[row.0..row.1].iter().product();
    let (y, scalars) = match op {
        "sum" => (b.red(ReduceOp::Sum, xv), vec![]),
        "max" => (b.red(ReduceOp::Max, xv), vec![]),
        "min" => (b.red(ReduceOp::Min, xv), vec![]),
        "mean" => {
            let s = b.red(ReduceOp::Sum, xv);
            let inv = b.arg("1/n");
            (b.bin(BinaryOp::Mul, s, inv), vec![1.0 / count as f32])
        }
        _ => unreachable!(),
    };
    let y = b.round(dtype, y);
    b.store(dtype, y, true);
    let k = b.done();
    let got = launch(&k, fused_args(&k, &[x], shape, &scalars));
    let what = format!("{op} {dtype} {shape:?} over {row:?}");
    if op == "mean" {
        // sum·(1/n) in f32 against the reference's sum/n in f64.
        assert_close(&got[0], &want[0], 2.0, &what);
    } else {
        assert_bits(&got[0], &want[0], &what);
    }
}

#[test]
fn reductions_store_once_per_row() {
    for dtype in [DType::F32, DType::BF16] {
        let shape = [4, 6, 5];
        let x = values(dtype, &shape, 7, 10.0);
        for op in ["sum", "max", "min", "mean"] {
            check_reduce(op, dtype, &shape, (0, 1), &x);
            check_reduce(op, dtype, &shape, (1, 3), &x);
            check_reduce(op, dtype, &shape, (2, 3), &x);
        }
    }
    // Long rows and many rows, over a leading dim (several tiles, several threads).
    let shape = [7, 20000];
    let x = values(DType::F32, &shape, 8, 1.0);
    check_reduce("sum", DType::F32, &shape, (0, 1), &x);
    check_reduce("max", DType::F32, &shape, (1, 2), &x);
    let shape = [3000, 24];
    let x = values(DType::F32, &shape, 9, 1.0);
    check_reduce("sum", DType::F32, &shape, (1, 2), &x);
}

#[test]
fn max_and_min_propagate_nan() {
    let mut v = values(DType::F32, &[3, 4], 10, 1.0).to_f32_vec();
    v[5] = f32::NAN;
    let x = Tensor::from_f32(DType::F32, vec![3, 4], v).unwrap();
    check_reduce("max", DType::F32, &[3, 4], (1, 2), &x);
    check_reduce("min", DType::F32, &[3, 4], (0, 1), &x);
}

#[test]
fn empty_rows_reduce_to_the_identity() {
    let x = Tensor::from_f32(DType::F32, vec![3, 0], vec![]).unwrap();
    check_reduce("sum", DType::F32, &[3, 0], (1, 2), &x);
    check_reduce("max", DType::F32, &[3, 0], (1, 2), &x);
}

/// A per-row value stored per element, and a per-row input read once per row.
#[test]
fn per_row_values_broadcast_along_the_row() {
    let shape = [3, 4, 5];
    let x = values(DType::F32, &shape, 11, 2.0);
    let c = values(DType::F32, &[3, 1, 5], 12, 2.0);
    let src = "func @f(%x: f32[3, 4, 5], %c: f32[3, 1, 5]) -> f32[3, 4, 5] {\n  %m = max(%x) {dims = [1], keepdim = true}\n  %a = add(%m, %c)\n  %y = sub(%x, %a)\n  return %y\n}\n";
    let want = reference(src, &[("x", &x), ("c", &c)]);
    let mut b = Fb::new("k_row", 3, Some((1, 2)));
    let xv = b.load(DType::F32, &[false, false, false]);
    let m = b.red(ReduceOp::Max, xv);
    let cv = b.load(DType::F32, &[false, true, false]);
    let a = b.bin(BinaryOp::Add, m, cv);
    let y = b.bin(BinaryOp::Sub, xv, a);
    b.store(DType::F32, y, false);
    b.store(DType::F32, a, true);
    let k = b.done();
    let got = launch(&k, fused_args(&k, &[&x, &c], &shape, &[]));
    assert_bits(&got[0], &want[0], "x - (max + c)");
    let want_a = reference(
        "func @f(%x: f32[3, 4, 5], %c: f32[3, 1, 5]) -> f32[3, 1, 5] {\n  %m = max(%x) {dims = [1], keepdim = true}\n  %a = add(%m, %c)\n  return %a\n}\n",
        &[("x", &x), ("c", &c)],
    );
    assert_bits(&got[1], &want_a[0], "max + c per row");
}

// ---------------------------------------------------------------------------------------------
// Fused: pointwise chains, broadcasts, random numbers

/// Chains of unary functions, each result rounded as the unfused ops round it; large launches
/// look the functions of bf16/f16 values up in tables (which must change nothing).
#[test]
fn exp_and_gelu_chains_in_bf16() {
    for dtype in [DType::BF16, DType::F16, DType::F32] {
        for rows in [6, 64] {
            let n = 300;
            let shape = [rows, n];
            let x = values(dtype, &shape, 13, 2.0);
            let y = values(dtype, &[n], 14, 2.0);
            let dt = dtype_name(dtype);
            let src = format!(
                "func @f(%x: {dt}[{rows}, {n}], %y: {dt}[{n}]) -> ({dt}[{rows}, {n}], {dt}[{rows}, {n}]) {{\n  %a = exp(%x)\n  %b = sin(%a)\n  %c = mul(%b, %y)\n  %d = cos(%c)\n  %e = tanh(%d)\n  %f = sigmoid(%x)\n  %g = silu(%f)\n  %h = abs(%x)\n  %i = log(%h)\n  %j = add(%g, %i)\n  return %e, %j\n}}\n"
            );
            let want = reference(&src, &[("x", &x), ("y", &y)]);
            let mut b = Fb::new("k_chain", 2, None);
            let xv = b.load(dtype, &[false, false]);
            let a = b.un(UnaryOp::Exp, xv);
            let a = b.round(dtype, a);
            let g = b.un(UnaryOp::Sin, a);
            let g = b.round(dtype, g);
            let yv = b.load(dtype, &[true, false]);
            let c = b.bin(BinaryOp::Mul, g, yv);
            let c = b.round(dtype, c);
            let d = b.un(UnaryOp::Cos, c);
            let d = b.round(dtype, d);
            let e = b.un(UnaryOp::Tanh, d);
            // Stored unrounded: the store rounds.
            b.store(dtype, e, false);
            let f = b.un(UnaryOp::Sigmoid, xv);
            let f = b.round(dtype, f);
            let g = b.un(UnaryOp::Silu, f);
            let g = b.round(dtype, g);
            let h = b.un(UnaryOp::Abs, xv);
            let h = b.round(dtype, h);
            let i = b.un(UnaryOp::Log, h);
            let i = b.round(dtype, i);
            let j = b.bin(BinaryOp::Add, g, i);
            let j = b.round(dtype, j);
            b.store(dtype, j, false);
            let k = b.done();
            let got = launch(&k, fused_args(&k, &[&x, &y], &shape, &[]));
            assert_bits(
                &got[0],
                &want[0],
                &format!("exp/gelu/tanh {dtype} {shape:?}"),
            );
            assert_bits(
                &got[1],
                &want[1],
                &format!("sigmoid/silu/log {dtype} {shape:?}"),
            );
        }
    }
}

#[test]
fn comparisons_selects_and_bools() {
    let shape = [5, 9];
    let x = values(DType::F32, &shape, 15, 1.0);
    let y = values(DType::F32, &[5, 1], 16, 1.0);
    let src = "func @f(%x: f32[5, 9], %y: f32[5, 1]) -> (bool[5, 9], f32[5, 9]) {\n  %c = gt(%x, %y)\n  %n = not(%c)\n  %z = where(%n, %x, %y)\n  %w = cast(%c) {dtype = f32}\n  %s = add(%z, %w)\n  return %n, %s\n}\n";
    let want = reference(src, &[("x", &x), ("y", &y)]);
    let mut b = Fb::new("k_bool", 2, None);
    let xv = b.load(DType::F32, &[false, false]);
    let yv = b.load(DType::F32, &[false, true]);
    let c = b.push(Scalar::Bool, Expr::Binary(BinaryOp::Gt, xv, yv));
    let n = b.push(Scalar::Bool, Expr::Unary(UnaryOp::Not, c));
    let z = b.f(Expr::Select(n, xv, yv));
    let one = b.f(Expr::Const(1.0));
    let zero = b.f(Expr::Const(0.0));
    let w = b.f(Expr::Select(c, one, zero));
    let s = b.bin(BinaryOp::Add, z, w);
    b.store(DType::Bool, n, false);
    b.store(DType::F32, s, false);
    let k = b.done();
    let got = launch(&k, fused_args(&k, &[&x, &y], &shape, &[]));
    assert_bits(&got[0], &want[0], "not(x > y)");
    assert_bits(&got[1], &want[1], "where + cast");

    // A bool input, read as 0/1.
    let m = Tensor::from_bool(vec![5, 9], (0..45).map(|i| i % 3 == 0).collect()).unwrap();
    let src = "func @f(%m: bool[5, 9], %x: f32[5, 9]) -> f32[5, 9] {\n  %z = full() {shape = [5, 9], value = 0.0}\n  %y = where(%m, %x, %z)\n  return %y\n}\n";
    let want = reference(src, &[("m", &m), ("x", &x)]);
    let mut b = Fb::new("k_where", 2, None);
    let mv = b.load(DType::Bool, &[false, false]);
    let xv = b.load(DType::F32, &[false, false]);
    let zero = b.f(Expr::Const(0.0));
    let y = b.f(Expr::Select(mv, xv, zero));
    b.store(DType::F32, y, false);
    let k = b.done();
    let got = launch(&k, fused_args(&k, &[&m, &x], &shape, &[]));
    assert_bits(&got[0], &want[0], "where(bool input)");
}

/// The dropout of `x` (dtype, shape) as a kernel with identity global-index tables.
fn dropout_kernel(dtype: DType, rank: usize, p: f64, seed: u64) -> Kernel {
    let mut b = Fb::new("k_dropout", rank, None);
    let x = b.load(dtype, &vec![false; rank]);
    let keep = b.f(Expr::Const((1.0 - p) as f32));
    let scale = tpc_runtime::round_to(dtype, (1.0 / (1.0 - p)) as f32);
    let scale = b.f(Expr::Const(scale));
    let r = b.f(Expr::Rand(seed));
    let kept = b.push(Scalar::Bool, Expr::Binary(BinaryOp::Lt, r, keep));
    let s = b.bin(BinaryOp::Mul, x, scale);
    let s = b.round(dtype, s);
    let zero = b.f(Expr::Const(0.0));
    let y = b.f(Expr::Select(kept, s, zero));
    b.store(dtype, y, false);
    b.done()
}

#[test]
fn dropout_and_rand_like_by_global_index() {
    for dtype in [DType::F32, DType::BF16] {
        for shape in [vec![4, 8], vec![3, 50, 300]] {
            let x = values(dtype, &shape, 17, 3.0);
            let dt = dtype_name(dtype);
            let s = dims_text(&shape);
            let src = format!(
                "func @f(%x: {dt}[{s}]) -> ({dt}[{s}], {dt}[{s}]) {{\n  %y = dropout(%x) {{p = 0.1, seed = 7}}\n  %r = rand_like(%x) {{seed = 3}}\n  return %y, %r\n}}\n"
            );
            let want = reference(&src, &[("x", &x)]);
            let k = dropout_kernel(dtype, shape.len(), 0.1, 7);
            let got = launch(&k, fused_args(&k, &[&x], &shape, &[]));
            assert_bits(&got[0], &want[0], &format!("dropout {dtype} {shape:?}"));

            let mut b = Fb::new("k_rand", shape.len(), None);
            let r = b.f(Expr::Rand(3));
            let r = b.round(dtype, r);
            b.store(dtype, r, false);
            let k = b.done();
            let got = launch(&k, fused_args(&k, &[], &shape, &[]));
            assert_bits(&got[0], &want[1], &format!("rand_like {dtype} {shape:?}"));
        }
    }
}

/// A rank's part of a sharded tensor draws by global index through its tables.
#[test]
fn dropout_of_a_shard_draws_the_global_numbers() {
    let shape = [4, 12];
    let x = values(DType::F32, &shape, 18, 1.0);
    let src = "func @f(%x: f32[4, 12]) -> f32[4, 12] {\n  %y = dropout(%x) {p = 0.5, seed = 9}\n  return %y\n}\n";
    let want = reference(src, &[("x", &x)]).remove(0).to_f32_vec();
    // Columns 6..12 of every row.
    let xs: Vec<f32> = x
        .to_f32_vec()
        .chunks(12)
        .flat_map(|r| r[6..].to_vec())
        .collect();
    let k = dropout_kernel(DType::F32, 2, 0.5, 9);
    let args = vec![
        A::In(Data::Float(xs)),
        A::Out(DType::F32, 24),
        A::Int(4),
        A::Int(6),
        A::In(Data::I64((0..4).map(|i| i * 12).collect())),
        A::In(Data::I64((6..12).collect())),
    ];
    let got = floats(&launch(&k, args)[0]);
    let want: Vec<f32> = want.chunks(12).flat_map(|r| r[6..].to_vec()).collect();
    assert_eq!(
        got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
}

/// A sharded activation times a broadcast scale plus a broadcast bias, then dropout (the
/// dropout_broadcast example), large enough to run on several threads.
#[test]
fn broadcast_inputs_and_dropout_over_many_elements() {
    let shape = [2, 64, 768];
    let x = values(DType::BF16, &shape, 19, 2.0);
    let sc = values(DType::BF16, &[768], 20, 2.0);
    let bi = values(DType::BF16, &[64, 1], 21, 2.0);
    let src = "func @f(%x: bf16[2, 64, 768], %s: bf16[768], %b: bf16[64, 1]) -> bf16[2, 64, 768] {\n  %y = mul(%x, %s)\n  %z = add(%y, %b)\n  %d = dropout(%z) {p = 0.1, seed = 5}\n  return %d\n}\n";
    let want = reference(src, &[("x", &x), ("s", &sc), ("b", &bi)]);
    let mut b = Fb::new("k_bcast", 3, None);
    let xv = b.load(DType::BF16, &[false, false, false]);
    let sv = b.load(DType::BF16, &[true, true, false]);
    let y = b.bin(BinaryOp::Mul, xv, sv);
    let y = b.round(DType::BF16, y);
    let bv = b.load(DType::BF16, &[true, false, true]);
    let z = b.bin(BinaryOp::Add, y, bv);
    let z = b.round(DType::BF16, z);
    let keep = b.f(Expr::Const(0.9));
    let scale = b.f(Expr::Const(tpc_runtime::round_to(DType::BF16, 1.0 / 0.9)));
    let r = b.f(Expr::Rand(5));
    let kept = b.push(Scalar::Bool, Expr::Binary(BinaryOp::Lt, r, keep));
    let s = b.bin(BinaryOp::Mul, z, scale);
    let s = b.round(DType::BF16, s);
    let zero = b.f(Expr::Const(0.0));
    let d = b.f(Expr::Select(kept, s, zero));
    b.store(DType::BF16, d, false);
    let k = b.done();
    let got = launch(&k, fused_args(&k, &[&x, &sc, &bi], &shape, &[]));
    assert_bits(&got[0], &want[0], "dropout(x * s + b)");
}

#[test]
fn scalar_arguments_and_constants() {
    let shape = [3, 7];
    let x = values(DType::F32, &shape, 22, 1.0);
    // (x * s0 + exp(s0)) with s0 an argument: the constant part is computed once.
    let mut b = Fb::new("k_args", 2, None);
    let xv = b.load(DType::F32, &[false, false]);
    let s = b.arg("s0");
    let e = b.un(UnaryOp::Exp, s);
    let m = b.bin(BinaryOp::Mul, xv, s);
    let y = b.bin(BinaryOp::Add, m, e);
    b.store(DType::F32, y, false);
    b.store(DType::F32, e, false);
    let k = b.done();
    let got = launch(&k, fused_args(&k, &[&x], &shape, &[0.5]));
    let want: Vec<f32> = x
        .to_f32_vec()
        .iter()
        .map(|&v| v * 0.5 + 0.5f32.exp())
        .collect();
    assert_eq!(floats(&got[0]), want);
    assert_eq!(floats(&got[1]), vec![0.5f32.exp(); 21]);
}

/// `run_pointwise`, the thin wrapper the codegen tests use, still works (rows included).
#[test]
fn run_pointwise_wraps_run_kernel() {
    let x = values(DType::F32, &[4, 8], 23, 4.0);
    let src =
        "func @f(%x: f32[4, 8]) -> f32[4, 8] {\n  %y = softmax(%x) {dim = 1}\n  return %y\n}\n";
    let want = reference(src, &[("x", &x)]);
    let Kernel::Fused(k) = softmax_kernel(DType::F32, 2, 1) else {
        unreachable!()
    };
    let got = tpc_runtime::kernel::run_pointwise(&k, &[&x], &[4, 8], &[], &[]).unwrap();
    assert_eq!(got[0].shape(), &[4, 8]);
    assert_bits(got[0].data(), &want[0], "run_pointwise softmax");
}

// ---------------------------------------------------------------------------------------------
// Copy

fn copy_kernel(dtype: DType, rank: usize) -> Kernel {
    Kernel::Copy(Copy {
        name: "k_copy".into(),
        dtype,
        rank,
    })
}

/// Copy arguments: in, out (elements), extents, in_base, in strides, out_base, out strides.
fn copy_args(
    src: Data,
    dtype: DType,
    out_len: usize,
    n: &[usize],
    (in_base, is): (i64, &[i64]),
    (out_base, os): (i64, &[i64]),
) -> Vec<A> {
    let mut a = vec![A::In(src), A::Out(dtype, out_len)];
    a.extend(n.iter().map(|&x| A::Int(x as i64)));
    a.push(A::Int(in_base));
    a.extend(is.iter().map(|&x| A::Int(x)));
    a.push(A::Int(out_base));
    a.extend(os.iter().map(|&x| A::Int(x)));
    a
}

#[test]
fn copy_as_permute() {
    let x = values(DType::BF16, &[2, 3, 4], 24, 1.0);
    let src = "func @f(%x: bf16[2, 3, 4]) -> bf16[4, 2, 3] {\n  %y = permute(%x) {dims = [2, 0, 1]}\n  return %y\n}\n";
    let want = reference(src, &[("x", &x)]);
    let k = copy_kernel(DType::BF16, 3);
    // Output dims [4, 2, 3]: input strides of dims 2, 0, 1.
    let got = launch(
        &k,
        copy_args(
            x.data().clone(),
            DType::BF16,
            24,
            &[4, 2, 3],
            (0, &[1, 12, 4]),
            (0, &[6, 3, 1]),
        ),
    );
    assert_bits(&got[0], &want[0], "permute");
}

#[test]
fn copy_as_slice_and_concat() {
    let x = values(DType::F32, &[3, 10], 25, 1.0);
    let y = values(DType::F32, &[3, 5], 26, 1.0);
    let src = "func @f(%x: f32[3, 10]) -> f32[3, 4] {\n  %y = slice(%x) {dim = 1, start = 1, end = 9, step = 2}\n  return %y\n}\n";
    let want = reference(src, &[("x", &x)]);
    let k = copy_kernel(DType::F32, 2);
    let got = launch(
        &k,
        copy_args(
            x.data().clone(),
            DType::F32,
            12,
            &[3, 4],
            (1, &[10, 2]),
            (0, &[4, 1]),
        ),
    );
    assert_bits(&got[0], &want[0], "strided slice");

    let src = "func @f(%x: f32[3, 10], %y: f32[3, 5]) -> f32[3, 15] {\n  %z = concat(%x, %y) {dim = 1}\n  return %z\n}\n";
    let want = reference(src, &[("x", &x), ("y", &y)]);
    // Two copies into one buffer: each part writes its columns only.
    let a1 = copy_args(
        x.data().clone(),
        DType::F32,
        45,
        &[3, 10],
        (0, &[10, 1]),
        (0, &[15, 1]),
    );
    let a2 = copy_args(
        y.data().clone(),
        DType::F32,
        45,
        &[3, 5],
        (0, &[5, 1]),
        (10, &[15, 1]),
    );
    let mut out = vec![Data::Float(vec![f32::NAN; 45])];
    let ins1 = vec![Some(x.data().clone())];
    let ins2 = vec![Some(y.data().clone())];
    launch_into(&k, &a1, &ins1, &mut out).unwrap();
    launch_into(&k, &a2, &ins2, &mut out).unwrap();
    assert_bits(&out[0], &want[0], "concat");
}

#[test]
fn copy_of_ints_and_bools_and_broadcasts() {
    let k = copy_kernel(DType::I64, 2);
    // Transpose of a 2x3 i64 matrix.
    let got = launch(
        &k,
        copy_args(
            Data::I64(vec![1, 2, 3, 4, 5, 6]),
            DType::I64,
            6,
            &[3, 2],
            (0, &[1, 3]),
            (0, &[2, 1]),
        ),
    );
    assert_eq!(got[0], Data::I64(vec![1, 4, 2, 5, 3, 6]));
    let k = copy_kernel(DType::Bool, 2);
    // A materialized broadcast (stride 0) of a bool row.
    let got = launch(
        &k,
        copy_args(
            Data::Bool(vec![true, false, true]),
            DType::Bool,
            6,
            &[2, 3],
            (0, &[0, 1]),
            (0, &[3, 1]),
        ),
    );
    assert_eq!(
        got[0],
        Data::Bool(vec![true, false, true, true, false, true])
    );
    // A broadcast of one column along rows: the innermost input stride is 0.
    let k = copy_kernel(DType::F32, 2);
    let got = launch(
        &k,
        copy_args(
            Data::Float(vec![1.0, 2.0]),
            DType::F32,
            6,
            &[2, 3],
            (0, &[1, 0]),
            (0, &[3, 1]),
        ),
    );
    assert_eq!(got[0], Data::Float(vec![1.0, 1.0, 1.0, 2.0, 2.0, 2.0]));
}

// ---------------------------------------------------------------------------------------------
// Embedding

fn embedding_kernel(dtype: DType) -> Kernel {
    Kernel::Embedding(Embedding {
        name: "k_emb".into(),
        dtype,
    })
}

#[test]
fn embedding_gathers_rows() {
    let w = values(DType::BF16, &[7, 5], 27, 1.0);
    let ids = ints(&[2, 3], vec![0, 6, 3, 3, 1, 2]);
    let src = "func @f(%ids: i64[2, 3], %w: bf16[7, 5]) -> bf16[2, 3, 5] {\n  %y = embedding(%ids, %w)\n  return %y\n}\n";
    let want = reference(src, &[("ids", &ids), ("w", &w)]);
    let k = embedding_kernel(DType::BF16);
    let args = |ids: &Tensor| {
        vec![
            A::In(ids.data().clone()),
            A::In(w.data().clone()),
            A::Out(DType::BF16, 30),
            A::Int(6),
            A::Int(5),
            A::Int(7),
            A::Int(7),
            A::In(Data::I64((0..7).collect())),
        ]
    };
    let got = launch(&k, args(&ids));
    assert_bits(&got[0], &want[0], "embedding");
    // Rows 2..5 of the 7 (a rank's piece): ids it does not hold give zero rows.
    let piece =
        Tensor::from_f32(DType::BF16, vec![3, 5], w.to_f32_vec()[10..25].to_vec()).expect("tensor");
    let got = launch(
        &k,
        vec![
            A::In(ids.data().clone()),
            A::In(piece.data().clone()),
            A::Out(DType::BF16, 30),
            A::Int(6),
            A::Int(5),
            A::Int(3),
            A::Int(7),
            A::In(Data::I64(vec![2, 3, 4])),
        ],
    );
    let full = want[0].to_f32_vec();
    let masked: Vec<f32> = full
        .chunks(5)
        .zip([0, 6, 3, 3, 1, 2])
        .flat_map(|(row, id)| {
            row.iter()
                .map(move |&x| if (2..5).contains(&id) { x } else { 0.0 })
        })
        .collect();
    assert_eq!(floats(&got[0]), masked, "a piece of the table");
    let bad = ints(&[2, 3], vec![0, 6, 7, 3, 1, 2]);
    match try_launch(&k, args(&bad)) {
        Err(Error::Value(m)) => {
            assert!(
                m.starts_with("embedding index 7 at position 2 is out of range for"),
                "{m}"
            );
            assert!(m.ends_with("with 7 rows"), "{m}");
        }
        other => panic!("want a value error, got {:?}", other.map(|_| ())),
    }
    let bad = ints(&[2, 3], vec![0, -1, 2, 3, 1, 2]);
    assert!(matches!(try_launch(&k, args(&bad)), Err(Error::Value(_))));
}

// ---------------------------------------------------------------------------------------------
// Attention

fn attention_args(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    dims: [usize; 5],
    scale: f32,
    qpos: Vec<i64>,
) -> Vec<A> {
    let [batch, sq, _, _, dv] = dims;
    let mut a = vec![
        A::In(q.data().clone()),
        A::In(k.data().clone()),
        A::In(v.data().clone()),
        A::Out(q.dtype(), batch * sq * dv),
    ];
    a.extend(dims.iter().map(|&x| A::Int(x as i64)));
    a.push(A::Float(scale));
    a.push(A::In(Data::I64(qpos)));
    a
}

/// The attention kernel equals `sdpa`, and its log-sum-exp variant `sdpa_stats`' second result,
/// bit for bit.
#[test]
fn attention_equals_sdpa() {
    for dtype in [DType::F32, DType::BF16] {
        for causal in [true, false] {
            let (b, h, s, d) = (2, 3, 9, 8);
            let q = values(dtype, &[b, h, s, d], 28, 1.0);
            let kk = values(dtype, &[b, h, s, d], 29, 1.0);
            let v = values(dtype, &[b, h, s, d], 30, 1.0);
            let dt = dtype_name(dtype);
            let ty = format!("{dt}[{b}, {h}, {s}, {d}]");
            let inputs = [("q", &q), ("k", &kk), ("v", &v)];
            let src = format!(
                "func @f(%q: {ty}, %k: {ty}, %v: {ty}) -> {ty} {{\n  %y = sdpa(%q, %k, %v) {{causal = {causal}}}\n  return %y\n}}\n"
            );
            let want = reference(&src, &inputs);
            let stats = reference(
                &format!(
                    "func @f(%q: {ty}, %k: {ty}, %v: {ty}) {{\n  %y, %lse = sdpa_stats(%q, %k, %v) {{causal = {causal}}}\n  return %y, %lse\n}}\n"
                ),
                &inputs,
            );
            assert_eq!(
                stats[0].to_f32_vec(),
                want[0].to_f32_vec(),
                "sdpa_stats' first result is sdpa's"
            );
            assert_eq!(stats[1].shape(), [b, h, s]);
            assert_eq!(stats[1].dtype(), DType::F32);
            let scale = (1.0 / (d as f64).sqrt()) as f32;
            let args = || {
                attention_args(
                    &q,
                    &kk,
                    &v,
                    [b * h, s, s, d, d],
                    scale,
                    (0..s as i64).collect(),
                )
            };
            for lse in [false, true] {
                let kernel = Kernel::Attention(Attention {
                    name: "k_attn".into(),
                    dtype,
                    causal,
                    lse,
                });
                let mut a = args();
                if lse {
                    a[3] = A::Out(DType::F32, b * h * s);
                }
                let got = launch(&kernel, a);
                let (what, w) = if lse {
                    ("lse", &stats[1])
                } else {
                    ("sdpa", &want[0])
                };
                assert_bits(&got[0], w, &format!("{what} {dtype} causal={causal}"));
            }
            // The log-sum-exp as a closed form: row 0 of slice 0.
            let (qf, kf) = (q.to_f32_vec(), kk.to_f32_vec());
            let keys = if causal { 1 } else { s };
            let lse0 = (0..keys)
                .map(|j| {
                    let dot: f64 = (0..d).map(|x| qf[x] as f64 * kf[j * d + x] as f64).sum();
                    (dot / (d as f64).sqrt()).exp()
                })
                .sum::<f64>()
                .ln();
            let got0 = stats[1].to_f32_vec()[0] as f64;
            assert!(
                (got0 - lse0).abs() < 1e-4 * (1.0 + lse0.abs()),
                "{got0} vs {lse0}"
            );
        }
    }
}

/// A rank holding queries 5..9 of the sequence masks by their global positions.
#[test]
fn causal_attention_masks_by_global_query_positions() {
    for dtype in [DType::F32, DType::BF16] {
        let (bh, s, d, dv) = (3, 9, 4, 6);
        let q = values(dtype, &[bh, s, d], 31, 1.0);
        let kk = values(dtype, &[bh, s, d], 32, 1.0);
        let v = values(dtype, &[bh, s, dv], 33, 1.0);
        let dt = dtype_name(dtype);
        let src = format!(
            "func @f(%q: {dt}[{bh}, {s}, {d}], %k: {dt}[{bh}, {s}, {d}], %v: {dt}[{bh}, {s}, {dv}]) -> {dt}[{bh}, {s}, {dv}] {{\n  %y = sdpa(%q, %k, %v) {{causal = true, scale = 0.3}}\n  return %y\n}}\n"
        );
        let want = reference(&src, &[("q", &q), ("k", &kk), ("v", &v)])
            .remove(0)
            .to_f32_vec();
        // The queries 5..9 of every slice.
        let part = |t: &Tensor, w: usize| -> Vec<f32> {
            t.to_f32_vec()
                .chunks(s * w)
                .flat_map(|c| c[5 * w..].to_vec())
                .collect()
        };
        let qs = Tensor::from_f32(dtype, vec![bh, 4, d], part(&q, d)).unwrap();
        let kernel = Kernel::Attention(Attention {
            name: "k_attn".into(),
            dtype,
            causal: true,
            lse: false,
        });
        let got = launch(
            &kernel,
            attention_args(&qs, &kk, &v, [bh, 4, s, d, dv], 0.3, vec![5, 6, 7, 8]),
        );
        let want: Vec<f32> = want
            .chunks(s * dv)
            .flat_map(|c| c[5 * dv..].to_vec())
            .collect();
        assert_eq!(
            floats(&got[0])
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<_>>(),
            want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "{dtype}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Pick and kept (cross-entropy's stages)

#[test]
fn pick_and_kept_with_ignore_index() {
    for dtype in [DType::F32, DType::BF16] {
        let x = values(dtype, &[4, 5, 3], 34, 3.0);
        let target = ints(&[4, 3], vec![0, 4, -100, 2, 2, 1, -100, 3, 0, 4, 1, 2]);
        let dt = dtype_name(dtype);
        let src = format!(
            "func @f(%x: {dt}[4, 5, 3], %t: i64[4, 3]) -> (f32[4, 3], f32[4, 3]) {{\n  %y = pick(%x, %t) {{dim = 1}}\n  %k = kept(%t)\n  return %y, %k\n}}\n"
        );
        let want = reference(&src, &[("x", &x), ("t", &target)]);
        let k = Kernel::Pick(Pick {
            name: "k_pick".into(),
            dtype,
            ignore_index: -100,
        });
        let args = |t: &Tensor| {
            vec![
                A::In(x.data().clone()),
                A::In(t.data().clone()),
                A::Out(DType::F32, 12),
                A::Int(4),
                A::Int(5),
                A::Int(3),
                A::Int(5),
                A::In(Data::I64((0..5).collect())),
            ]
        };
        let got = launch(&k, args(&target));
        assert_bits(&got[0], &want[0], &format!("pick {dtype}"));
        // Out of range: the reference's error.
        let bad = ints(&[4, 3], vec![0, 4, -100, 2, 5, 1, -100, 3, 0, 4, 1, 2]);
        match try_launch(&k, args(&bad)) {
            Err(Error::Value(m)) => assert_eq!(
                m,
                "`pick` target 5 at position 4 is out of range for 5 entries"
            ),
            other => panic!("want a value error, got {:?}", other.map(|_| ())),
        }
        let kept = Kernel::Kept(Kept {
            name: "k_kept".into(),
            ignore_index: -100,
        });
        let got = launch(
            &kept,
            vec![
                A::In(target.data().clone()),
                A::Out(DType::F32, 12),
                A::Int(12),
            ],
        );
        assert_bits(&got[0], &want[1], "kept");
    }
}

// ---------------------------------------------------------------------------------------------
// Argument checks

fn internal(r: Result<Vec<Data>, Error>, want: &str) {
    match r {
        Err(Error::Internal(m)) => assert!(m.contains(want), "`{m}` does not say `{want}`"),
        Err(e) => panic!("want an internal error saying `{want}`, got {e}"),
        Ok(_) => panic!("want an internal error saying `{want}`, got a result"),
    }
}

#[test]
fn argument_mismatches_are_internal_errors() {
    let k = softmax_kernel(DType::F32, 2, 1);
    let x = Data::Float(vec![0.0; 8]);
    let good = || {
        vec![
            A::In(x.clone()),
            A::Out(DType::F32, 8),
            A::Int(2),
            A::Int(4),
        ]
    };
    assert!(try_launch(&k, good()).is_ok());
    // Too few arguments.
    internal(
        try_launch(&k, vec![A::In(x.clone()), A::Out(DType::F32, 8), A::Int(2)]),
        "takes 4 arguments (in0, out0, n0, n1), got 3",
    );
    // An int where a buffer goes.
    internal(
        try_launch(
            &k,
            vec![A::Int(0), A::Out(DType::F32, 8), A::Int(2), A::Int(4)],
        ),
        "parameter in0 wants an input of f32, got the int 0",
    );
    // A bool buffer for a float input.
    internal(
        try_launch(
            &k,
            vec![
                A::In(Data::Bool(vec![false; 8])),
                A::Out(DType::F32, 8),
                A::Int(2),
                A::Int(4),
            ],
        ),
        "parameter in0 wants an input of f32, got an input (a bool buffer)",
    );
    // An input where an output goes.
    internal(
        try_launch(
            &k,
            vec![A::In(x.clone()), A::In(x.clone()), A::Int(2), A::Int(4)],
        ),
        "parameter out0 wants an output of f32",
    );
    // A float where an int goes.
    internal(
        try_launch(
            &k,
            vec![
                A::In(x.clone()),
                A::Out(DType::F32, 8),
                A::Float(2.0),
                A::Int(4),
            ],
        ),
        "parameter n0 wants an int",
    );
    // Lengths that do not match the extents.
    internal(
        try_launch(
            &k,
            vec![
                A::In(x.clone()),
                A::Out(DType::F32, 8),
                A::Int(3),
                A::Int(4),
            ],
        ),
        "holds 8 elements, but the extents address 12",
    );
    internal(
        try_launch(
            &k,
            vec![
                A::In(x.clone()),
                A::Out(DType::F32, 7),
                A::Int(2),
                A::Int(4),
            ],
        ),
        "out0 (%y0) holds 7 elements, but the extents address 8",
    );
    internal(
        try_launch(
            &k,
            vec![
                A::In(x.clone()),
                A::Out(DType::F32, 8),
                A::Int(-2),
                A::Int(-4),
            ],
        ),
        "n0 = -2 is negative",
    );
    // A global-index table of the wrong length.
    let d = dropout_kernel(DType::F32, 2, 0.5, 1);
    internal(
        try_launch(
            &d,
            vec![
                A::In(x.clone()),
                A::Out(DType::F32, 8),
                A::Int(2),
                A::Int(4),
                A::In(Data::I64(vec![0, 4])),
                A::In(Data::I64(vec![0, 1, 2])),
            ],
        ),
        "g1 holds 3 elements, but the extents address 4",
    );
    // A copy reaching outside its buffers.
    let c = copy_kernel(DType::F32, 1);
    internal(
        try_launch(
            &c,
            copy_args(x.clone(), DType::F32, 8, &[4], (6, &[1]), (0, &[1])),
        ),
        "in holds 8 elements, but the copy addresses offsets 6..=9",
    );
    internal(
        try_launch(
            &c,
            copy_args(x.clone(), DType::F32, 8, &[4], (0, &[1]), (-1, &[1])),
        ),
        "out holds 8 elements, but the copy addresses offsets -1..=2",
    );
    // Attention with a qpos table of the wrong length, and a wrong q length.
    let at = Kernel::Attention(Attention {
        name: "k_attn".into(),
        dtype: DType::F32,
        causal: true,
        lse: false,
    });
    let q = values(DType::F32, &[1, 2, 4], 1, 1.0);
    internal(
        try_launch(
            &at,
            attention_args(&q, &q, &q, [1, 2, 2, 4, 4], 0.5, vec![0]),
        ),
        "qpos holds 1 elements, but the extents address 2",
    );
    internal(
        try_launch(
            &at,
            attention_args(&q, &q, &q, [1, 2, 2, 3, 4], 0.5, vec![0, 1]),
        ),
        "q holds 8 elements, but the extents address 6",
    );
    // Pick's target of the wrong length.
    let pick = Kernel::Pick(Pick {
        name: "k_pick".into(),
        dtype: DType::F32,
        ignore_index: -1,
    });
    internal(
        try_launch(
            &pick,
            vec![
                A::In(Data::Float(vec![0.0; 6])),
                A::In(Data::I64(vec![0; 3])),
                A::Out(DType::F32, 2),
                A::Int(2),
                A::Int(3),
                A::Int(1),
                A::Int(3),
                A::In(Data::I64(vec![0, 1, 2])),
            ],
        ),
        "target holds 3 elements, but the extents address 2",
    );
}

#[test]
fn malformed_fused_kernels_are_internal_errors() {
    let x = Data::Float(vec![0.0; 8]);
    let args = || {
        vec![
            A::In(x.clone()),
            A::Out(DType::F32, 8),
            A::Int(2),
            A::Int(4),
        ]
    };
    // An operand computed after its use.
    let mut b = Fb::new("k_bad", 2, None);
    let v = b.load(DType::F32, &[false, false]);
    let y = b.bin(BinaryOp::Add, v, Value(5));
    b.store(DType::F32, y, false);
    internal(
        try_launch(&b.done(), args()),
        "uses v5, which is not computed before it",
    );
    // A row reduction without rows.
    let mut b = Fb::new("k_bad", 2, None);
    let v = b.load(DType::F32, &[false, false]);
    let y = b.red(ReduceOp::Sum, v);
    b.store(DType::F32, y, false);
    internal(try_launch(&b.done(), args()), "without rows");
    // A per-element value stored once per row.
    let mut b = Fb::new("k_bad", 2, Some((1, 2)));
    let v = b.load(DType::F32, &[false, false]);
    b.store(DType::F32, v, true);
    internal(
        try_launch(
            &b.done(),
            vec![
                A::In(x.clone()),
                A::Out(DType::F32, 2),
                A::Int(2),
                A::Int(4),
            ],
        ),
        "is not the same along a row",
    );
    // A broadcast mask of the wrong rank.
    let mut b = Fb::new("k_bad", 2, None);
    let v = b.load(DType::F32, &[false]);
    b.store(DType::F32, v, false);
    internal(
        try_launch(&b.done(), args()),
        "broadcast mask of 1 dims, not 2",
    );
    // Rows outside the rank.
    let mut b = Fb::new("k_bad", 2, Some((1, 3)));
    let v = b.load(DType::F32, &[false, false]);
    b.store(DType::F32, v, false);
    internal(
        try_launch(&b.done(), args()),
        "row dims 1..3 outside rank 2",
    );
}

/// Inputs broadcast along some row dims (read per element through their offsets), with rows
/// over two dims and over a leading dim (several rows per tile).
#[test]
fn partly_broadcast_inputs_in_rows() {
    let shape = [3, 4, 5];
    let x = values(DType::F32, &shape, 35, 2.0);
    let y = values(DType::F32, &[4, 1], 36, 2.0);
    for (row, dims) in [((1, 3), "1, 2"), ((0, 1), "0"), ((0, 2), "0, 1")] {
        let out: Vec<usize> = shape[..row.0]
            .iter()
            .chain(&shape[row.1..])
            .copied()
            .collect();
        let src = format!(
            "func @f(%x: f32[3, 4, 5], %y: f32[4, 1]) -> f32[{}] {{\n  %p = mul(%x, %y)\n  %s = sum(%p) {{dims = [{dims}]}}\n  return %s\n}}\n",
            dims_text(&out)
        );
        let want = reference(&src, &[("x", &x), ("y", &y)]);
        let mut b = Fb::new("k_partly", 3, Some(row));
        let xv = b.load(DType::F32, &[false, false, false]);
        let yv = b.load(DType::F32, &[true, false, true]);
        let p = b.bin(BinaryOp::Mul, xv, yv);
        let s = b.red(ReduceOp::Sum, p);
        b.store(DType::F32, s, true);
        let k = b.done();
        let got = launch(&k, fused_args(&k, &[&x, &y], &shape, &[]));
        assert_bits(&got[0], &want[0], &format!("sum(x * y) over {row:?}"));
    }
}
