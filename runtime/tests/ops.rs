//! Every op of the reference executor against values computed by hand or by a closed form.

use std::collections::BTreeMap;

use tpc_ir::{parse, DType, SourceFile};
use tpc_runtime::{bind_symbols, philox, run_reference, Error, Tensor};

fn f32s(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_f32(DType::F32, shape.to_vec(), v.to_vec()).expect("tensor")
}

fn try_run(src: &str, inputs: Vec<(&str, Tensor)>) -> Result<Vec<Tensor>, Error> {
    let file = SourceFile::new("t.ir", src);
    let g = parse(&file).unwrap_or_else(|d| panic!("{}", tpc_ir::diag::render(&file, &d)));
    let inputs: BTreeMap<String, Tensor> = inputs
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let bindings = bind_symbols(&g, &inputs, &BTreeMap::new())?;
    run_reference(&g, &inputs, &bindings)
}

fn run1(src: &str, inputs: Vec<(&str, Tensor)>) -> Tensor {
    try_run(src, inputs).expect("runs").remove(0)
}

fn close(got: &Tensor, want: &[f64], tol: f64) {
    let g = got.to_f32_vec();
    assert_eq!(g.len(), want.len(), "length: got {g:?}, want {want:?}");
    for (i, (&a, &b)) in g.iter().zip(want).enumerate() {
        assert!(
            (a as f64 - b).abs() <= tol * (1.0 + b.abs()),
            "element {i}: got {a}, want {b} (all: {g:?})"
        );
    }
}

/// `func @f(%x: f32[4]) { %y = <op>(%x) <attrs>; return %y }` on `x`.
fn unary(op: &str, x: &[f32]) -> Tensor {
    let src = format!(
        "func @f(%x: f32[{}]) {{\n  %y = {op}(%x)\n  return %y\n}}\n",
        x.len()
    );
    run1(&src, vec![("x", f32s(&[x.len()], x))])
}

#[test]
fn unary_ops_match_their_formulas() {
    let x = [-1.5f32, -0.25, 0.5, 2.0];
    let xd: Vec<f64> = x.iter().map(|&a| a as f64).collect();
    let each = |f: fn(f64) -> f64| xd.iter().map(|&a| f(a)).collect::<Vec<_>>();
    close(&unary("neg", &x), &each(|a| -a), 0.0);
    close(&unary("abs", &x), &each(f64::abs), 0.0);
    close(&unary("exp", &x), &each(f64::exp), 1e-6);
    close(&unary("tanh", &x), &each(f64::tanh), 1e-6);
    close(
        &unary("sigmoid", &x),
        &each(|a| 1.0 / (1.0 + (-a).exp())),
        1e-6,
    );
    close(&unary("relu", &x), &[0.0, 0.0, 0.5, 2.0], 0.0);
    close(&unary("silu", &x), &each(|a| a / (1.0 + (-a).exp())), 1e-6);
    close(&unary("reciprocal", &x), &each(|a| 1.0 / a), 1e-6);
    let pos = [0.25f32, 1.0, 4.0, 9.0];
    close(&unary("sqrt", &pos), &[0.5, 1.0, 2.0, 3.0], 1e-7);
    close(&unary("rsqrt", &pos), &[2.0, 1.0, 0.5, 1.0 / 3.0], 1e-6);
    close(
        &unary("log", &pos),
        &[(0.25f64).ln(), 0.0, (4.0f64).ln(), (9.0f64).ln()],
        1e-6,
    );
}

#[test]
fn gelu_exact_and_tanh_match_torch_values() {
    let x = [-2.0f32, -0.5, 0.0, 1.0, 3.0];
    // torch.nn.functional.gelu(x) and gelu(x, approximate="tanh"), in f64.
    let erf = |v: f64| 0.5 * v * (1.0 + libm_erf(v / 2f64.sqrt()));
    let tanh = |v: f64| {
        0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh())
    };
    let src = |a: &str| {
        format!("func @f(%x: f32[5]) {{\n  %y = gelu(%x) {{approximate = {a}}}\n  return %y\n}}\n")
    };
    let got = run1(&src("none"), vec![("x", f32s(&[5], &x))]);
    close(
        &got,
        &x.iter().map(|&v| erf(v as f64)).collect::<Vec<_>>(),
        1e-6,
    );
    close(
        &got,
        &[-0.04550026, -0.15426877, 0.0, 0.8413447, 2.9959502],
        1e-6,
    );
    let got = run1(&src("tanh"), vec![("x", f32s(&[5], &x))]);
    close(
        &got,
        &x.iter().map(|&v| tanh(v as f64)).collect::<Vec<_>>(),
        1e-6,
    );
    close(
        &got,
        &[-0.04540231, -0.15428599, 0.0, 0.8411920, 2.9963627],
        1e-6,
    );
}

/// erf by its Maclaurin series (enough terms for |x| <= 3), independent of the executor's libm.
fn libm_erf(x: f64) -> f64 {
    let mut sum = 0.0;
    let mut term = x;
    for n in 0..80 {
        sum += term / (2 * n + 1) as f64;
        term *= -x * x / (n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[test]
fn binary_ops_broadcast_like_numpy() {
    let src = "func @f(%a: f32[2, 2], %b: f32[2]) {\n  %y = add(%a, %b)\n  return %y\n}\n";
    let y = run1(
        src,
        vec![
            ("a", f32s(&[2, 2], &[1., 2., 3., 4.])),
            ("b", f32s(&[2], &[10., 20.])),
        ],
    );
    assert_eq!(y.shape(), &[2, 2]);
    close(&y, &[11., 22., 13., 24.], 0.0);
    for (op, want) in [
        ("sub", [-1.0, 1.0, 0.0]),
        ("mul", [6.0, 2.0, 9.0]),
        ("div", [2.0 / 3.0, 2.0, 1.0]),
        ("maximum", [3.0, 2.0, 3.0]),
        ("minimum", [2.0, 1.0, 3.0]),
        ("pow", [8.0, 2.0, 27.0]),
    ] {
        let src =
            format!("func @f(%a: f32[3], %b: f32[3]) {{\n  %y = {op}(%a, %b)\n  return %y\n}}\n");
        let y = run1(
            &src,
            vec![
                ("a", f32s(&[3], &[2., 2., 3.])),
                ("b", f32s(&[3], &[3., 1., 3.])),
            ],
        );
        close(&y, &want, 1e-7);
    }
}

#[test]
fn comparisons_logic_and_where() {
    let src = "func @f(%a: f32[3], %b: f32[3]) {\n  %lt = lt(%a, %b)\n  %ge = ge(%a, %b)\n  %both = and(%lt, %ge)\n  %either = or(%lt, %ge)\n  %y = where(%lt, %a, %b)\n  return %lt, %both, %either, %y\n}\n";
    let out = try_run(
        src,
        vec![
            ("a", f32s(&[3], &[1., 5., 2.])),
            ("b", f32s(&[3], &[2., 4., 2.])),
        ],
    )
    .expect("runs");
    assert_eq!(out[0].to_f32_vec(), [1., 0., 0.]);
    assert_eq!(out[1].to_f32_vec(), [0., 0., 0.]);
    assert_eq!(out[2].to_f32_vec(), [1., 1., 1.]);
    assert_eq!(out[3].to_f32_vec(), [1., 4., 2.]);
    assert_eq!(out[0].dtype(), DType::Bool);
    let src = "func @f(%a: i64[3], %b: i64[3]) {\n  %eq = eq(%a, %b)\n  %ne = ne(%a, %b)\n  %le = le(%a, %b)\n  %gt = gt(%a, %b)\n  %not = not(%eq)\n  return %eq, %ne, %le, %gt, %not\n}\n";
    let a = Tensor::from_i64(vec![3], vec![1, 5, 2]).unwrap();
    let b = Tensor::from_i64(vec![3], vec![2, 4, 2]).unwrap();
    let out = try_run(src, vec![("a", a), ("b", b)]).expect("runs");
    let want: [[f32; 3]; 5] = [
        [0., 0., 1.],
        [1., 1., 0.],
        [1., 0., 1.],
        [0., 1., 0.],
        [1., 1., 0.],
    ];
    for (t, w) in out.iter().zip(want) {
        assert_eq!(t.to_f32_vec(), w);
    }
}

#[test]
fn integer_arithmetic_truncates_and_rejects_division_by_zero() {
    let src = "func @f(%a: i64[3], %b: i64[3]) {\n  %y = div(%a, %b)\n  return %y\n}\n";
    let a = Tensor::from_i64(vec![3], vec![-7, 7, 9]).unwrap();
    let y = run1(
        src,
        vec![
            ("a", a.clone()),
            ("b", Tensor::from_i64(vec![3], vec![2, 2, -4]).unwrap()),
        ],
    );
    assert_eq!(y.to_f32_vec(), [-3., 3., -2.]);
    let err = try_run(
        src,
        vec![
            ("a", a),
            ("b", Tensor::from_i64(vec![3], vec![1, 0, 1]).unwrap()),
        ],
    )
    .unwrap_err();
    assert!(err.to_string().contains("division by zero"), "{err}");
}

#[test]
fn casts_follow_torch() {
    let src = "func @f(%x: f32[4]) {\n  %i = cast(%x) {dtype = i64}\n  %b = cast(%x) {dtype = bool}\n  %h = cast(%x) {dtype = bf16}\n  return %i, %b, %h\n}\n";
    let out = try_run(src, vec![("x", f32s(&[4], &[2.7, -2.7, 0.0, 1.003_906_3]))]).expect("runs");
    assert_eq!(out[0].to_f32_vec(), [2., -2., 0., 1.]);
    assert_eq!(out[1].to_f32_vec(), [1., 1., 0., 1.]);
    // 1 + 2^-8 lies halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to even, 1.
    assert_eq!(out[2].to_f32_vec(), [2.703125, -2.703125, 0.0, 1.0]);
}

#[test]
fn bf16_ops_compute_in_f32_and_round_once() {
    // 1 + 2^-9 is not a bf16 value, and neither is the exact sum 1 + 2^-8 + 2^-9.
    let x = Tensor::from_f32(
        DType::BF16,
        vec![2],
        vec![1.0 + 1.0 / 512.0, 1.0 + 1.0 / 128.0],
    )
    .unwrap();
    assert_eq!(x.to_f32_vec(), [1.0, 1.0078125]);
    let src = "func @f(%a: bf16[2], %b: bf16[2]) {\n  %y = add(%a, %b)\n  return %y\n}\n";
    let a = Tensor::from_f32(DType::BF16, vec![2], vec![1.0, 256.0]).unwrap();
    let b = Tensor::from_f32(DType::BF16, vec![2], vec![0.0078125, 1.0]).unwrap();
    let y = run1(src, vec![("a", a), ("b", b)]);
    // 1 + 2^-7 is exact in bf16; 256 + 1 rounds to 256 (bf16 has 8 significant bits).
    assert_eq!(y.to_f32_vec(), [1.0078125, 256.0]);
    assert_eq!(y.dtype(), DType::BF16);
}

#[test]
fn reductions_over_dims_with_and_without_keepdim() {
    let x = f32s(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
    let src = |op: &str, dims: &str, keep: bool| {
        format!("func @f(%x: f32[2, 3]) {{\n  %y = {op}(%x) {{dims = {dims}, keepdim = {keep}}}\n  return %y\n}}\n")
    };
    let y = run1(&src("sum", "[1]", false), vec![("x", x.clone())]);
    assert_eq!((y.shape(), y.to_f32_vec()), (&[2usize][..], vec![6., 15.]));
    let y = run1(&src("mean", "[0]", true), vec![("x", x.clone())]);
    assert_eq!(
        (y.shape(), y.to_f32_vec()),
        (&[1usize, 3][..], vec![2.5, 3.5, 4.5])
    );
    let y = run1(&src("max", "[0, 1]", false), vec![("x", x.clone())]);
    assert_eq!((y.shape(), y.to_f32_vec()), (&[][..], vec![6.]));
    let y = run1(&src("min", "[-1]", false), vec![("x", x)]);
    assert_eq!(y.to_f32_vec(), [1., 4.]);
}

#[test]
fn softmax_of_one_two_three() {
    let src = "func @f(%x: f32[2, 3]) {\n  %y = softmax(%x) {dim = -1}\n  return %y\n}\n";
    let y = run1(
        src,
        vec![("x", f32s(&[2, 3], &[1., 2., 3., 1001., 1002., 1003.]))],
    );
    let want = [0.09003057, 0.24472847, 0.66524096];
    close(&y, &[want, want].concat(), 1e-6);
    // Along dim 0 each column is a softmax of two entries.
    let src = "func @f(%x: f32[2, 2]) {\n  %y = softmax(%x) {dim = 0}\n  return %y\n}\n";
    let y = run1(src, vec![("x", f32s(&[2, 2], &[0., 0., 0., 2f32.ln()]))]);
    close(&y, &[0.5, 1. / 3., 0.5, 2. / 3.], 1e-6);
}

#[test]
fn layer_norm_uses_the_biased_variance() {
    let src = "func @f(%x: f32[1, 4], %w: f32[4], %b: f32[4]) {\n  %y = layer_norm(%x, %w, %b) {eps = 0.0}\n  %z = layer_norm(%x) {eps = 1.0}\n  return %y, %z\n}\n";
    let out = try_run(
        src,
        vec![
            ("x", f32s(&[1, 4], &[1., 2., 3., 4.])),
            ("w", f32s(&[4], &[1., 2., 1., 1.])),
            ("b", f32s(&[4], &[0., 0., 1., 0.])),
        ],
    )
    .expect("runs");
    let s = 1.25f64.sqrt();
    close(
        &out[0],
        &[-1.5 / s, 2.0 * -0.5 / s, 0.5 / s + 1.0, 1.5 / s],
        1e-6,
    );
    let s = 2.25f64.sqrt();
    close(&out[1], &[-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s], 1e-6);
}

#[test]
fn rms_norm_with_and_without_eps() {
    let src = "func @f(%x: f32[2], %w: f32[2]) {\n  %y = rms_norm(%x, %w) {eps = 0.0}\n  %z = rms_norm(%x)\n  return %y, %z\n}\n";
    let out = try_run(
        src,
        vec![("x", f32s(&[2], &[3., 4.])), ("w", f32s(&[2], &[1., 2.]))],
    )
    .expect("runs");
    let r = 12.5f64.sqrt();
    close(&out[0], &[3. / r, 8. / r], 1e-6);
    let r = (12.5f64 + f32::EPSILON as f64).sqrt();
    close(&out[1], &[3. / r, 4. / r], 1e-6);
}

#[test]
fn matmul_plain_batched_and_linear() {
    let src = "func @f(%a: f32[2, 3], %b: f32[3, 2]) {\n  %y = matmul(%a, %b)\n  return %y\n}\n";
    let y = run1(
        src,
        vec![
            ("a", f32s(&[2, 3], &[1., 2., 3., 4., 5., 6.])),
            ("b", f32s(&[3, 2], &[7., 8., 9., 10., 11., 12.])),
        ],
    );
    assert_eq!(y.to_f32_vec(), [58., 64., 139., 154.]);
    let src =
        "func @f(%a: f32[2, 2, 2], %b: f32[2, 2, 2]) {\n  %y = matmul(%a, %b)\n  return %y\n}\n";
    let eye_then_swap = f32s(&[2, 2, 2], &[1., 0., 0., 1., 0., 1., 1., 0.]);
    let y = run1(
        src,
        vec![
            ("a", f32s(&[2, 2, 2], &[1., 2., 3., 4., 5., 6., 7., 8.])),
            ("b", eye_then_swap),
        ],
    );
    assert_eq!(y.to_f32_vec(), [1., 2., 3., 4., 6., 5., 8., 7.]);
    // linear: x [1, 2, 3] @ w^T (w [2, 3]) + b
    let src = "func @f(%x: f32[1, 2, 3], %w: f32[2, 3], %b: f32[2]) {\n  %y = linear(%x, %w, %b)\n  return %y\n}\n";
    let y = run1(
        src,
        vec![
            ("x", f32s(&[1, 2, 3], &[1., 2., 3., 4., 5., 6.])),
            ("w", f32s(&[2, 3], &[1., 0., -1., 0.5, 0.5, 0.5])),
            ("b", f32s(&[2], &[10., 20.])),
        ],
    );
    assert_eq!(y.shape(), &[1, 2, 2]);
    assert_eq!(y.to_f32_vec(), [8., 23., 8., 27.5]);
}

#[test]
fn shape_ops_move_the_right_elements() {
    let x = f32s(&[2, 3], &[0., 1., 2., 3., 4., 5.]);
    let src = "func @f(%x: f32[2, 3]) {\n  %t = permute(%x) {dims = [1, 0]}\n  %r = reshape(%x) {shape = [3, -1]}\n  %s = slice(%x) {dim = 1, start = 0, end = 3, step = 2}\n  %c = concat(%x, %x) {dim = 0}\n  %b = broadcast(%x) {shape = [2, 2, 3]}\n  return %t, %r, %s, %c, %b\n}\n";
    let out = try_run(src, vec![("x", x)]).expect("runs");
    assert_eq!(
        (out[0].shape(), out[0].to_f32_vec()),
        (&[3usize, 2][..], vec![0., 3., 1., 4., 2., 5.])
    );
    assert_eq!(out[1].shape(), &[3, 2]);
    assert_eq!(
        (out[2].shape(), out[2].to_f32_vec()),
        (&[2usize, 2][..], vec![0., 2., 3., 5.])
    );
    assert_eq!(
        out[3].to_f32_vec(),
        [0., 1., 2., 3., 4., 5., 0., 1., 2., 3., 4., 5.]
    );
    assert_eq!(
        out[4].to_f32_vec(),
        [0., 1., 2., 3., 4., 5., 0., 1., 2., 3., 4., 5.]
    );
    let src = "func @f(%x: f32[2, 3]) {\n  %c = concat(%x, %x) {dim = 1}\n  return %c\n}\n";
    let c = run1(src, vec![("x", f32s(&[2, 3], &[0., 1., 2., 3., 4., 5.]))]);
    assert_eq!(
        c.to_f32_vec(),
        [0., 1., 2., 0., 1., 2., 3., 4., 5., 3., 4., 5.]
    );
}

#[test]
fn symbolic_slices_are_checked_at_run_time() {
    let src =
        "func @f(%x: f32[S]) {\n  %y = slice(%x) {dim = 0, start = 0, end = S/2}\n  return %y\n}\n";
    let y = run1(src, vec![("x", f32s(&[4], &[1., 2., 3., 4.]))]);
    assert_eq!(y.to_f32_vec(), [1., 2.]);
    let err = try_run(src, vec![("x", f32s(&[3], &[1., 2., 3.]))]).unwrap_err();
    assert!(err.to_string().contains("not a whole number"), "{err}");
}

#[test]
fn embedding_gathers_rows_and_rejects_bad_ids() {
    let src =
        "func @f(%ids: i64[3], %w: f32[4, 2]) {\n  %y = embedding(%ids, %w)\n  return %y\n}\n";
    let w = f32s(&[4, 2], &[0., 1., 10., 11., 20., 21., 30., 31.]);
    let y = run1(
        src,
        vec![
            ("ids", Tensor::from_i64(vec![3], vec![3, 0, 3]).unwrap()),
            ("w", w.clone()),
        ],
    );
    assert_eq!(
        (y.shape(), y.to_f32_vec()),
        (&[3usize, 2][..], vec![30., 31., 0., 1., 30., 31.])
    );
    let err = try_run(
        src,
        vec![
            ("ids", Tensor::from_i64(vec![3], vec![0, 4, 1]).unwrap()),
            ("w", w),
        ],
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("index 4 at position 1 is out of range for %w with 4 rows"),
        "{err}"
    );
}

#[test]
fn sdpa_with_causal_mask_by_hand() {
    let src = "func @f(%q: f32[1, 2, 2], %k: f32[1, 2, 2], %v: f32[1, 2, 2]) {\n  %c = sdpa(%q, %k, %v) {causal = true}\n  %n = sdpa(%q, %k, %v) {causal = false, scale = 1.0}\n  return %c, %n\n}\n";
    let eye = f32s(&[1, 2, 2], &[1., 0., 0., 1.]);
    let v = f32s(&[1, 2, 2], &[1., 2., 3., 4.]);
    let out = try_run(src, vec![("q", eye.clone()), ("k", eye), ("v", v)]).expect("runs");
    // Causal row 0 sees key 0 only; row 1 weighs keys 0 and 1 by softmax([0, 1/sqrt 2]).
    let w1 = 1.0 / (1.0 + (0.5f64).sqrt().exp());
    let r1 = [w1 * 1.0 + (1.0 - w1) * 3.0, w1 * 2.0 + (1.0 - w1) * 4.0];
    close(&out[0], &[1.0, 2.0, r1[0], r1[1]], 1e-6);
    // Not causal, scale 1: row 0 weighs by softmax([1, 0]), row 1 by softmax([0, 1]).
    let a = 1.0f64.exp() / (1.0f64.exp() + 1.0);
    close(
        &out[1],
        &[
            a * 1. + (1. - a) * 3.,
            a * 2. + (1. - a) * 4.,
            (1. - a) * 1. + a * 3.,
            (1. - a) * 2. + a * 4.,
        ],
        1e-6,
    );
}

#[test]
fn rand_like_and_dropout_follow_philox_by_global_index() {
    let n = 4000;
    let src = format!("func @f(%x: f32[{n}]) {{\n  %r = rand_like(%x) {{seed = 3}}\n  %d = dropout(%x) {{p = 0.25, seed = 3}}\n  %z = dropout(%x) {{p = 1.0, seed = 3}}\n  %i = dropout(%x) {{p = 0.0, seed = 3}}\n  return %r, %d, %z, %i\n}}\n");
    let out = try_run(&src, vec![("x", f32s(&[n], &vec![1.0; n]))]).expect("runs");
    let r = out[0].to_f32_vec();
    let d = out[1].to_f32_vec();
    for i in 0..n {
        let u = philox::uniform(3, i as u64);
        assert_eq!(r[i], u);
        assert_eq!(
            d[i],
            if u < 0.75 { 1.0f32 / 0.75 } else { 0.0 },
            "element {i}"
        );
    }
    let kept = d.iter().filter(|&&x| x != 0.0).count() as f64 / n as f64;
    assert!((kept - 0.75).abs() < 0.03, "kept {kept}");
    assert!(out[2].to_f32_vec().iter().all(|&x| x == 0.0));
    assert!(out[3].to_f32_vec().iter().all(|&x| x == 1.0));
}

#[test]
fn dropout_in_bf16_scales_by_the_rounded_factor() {
    // torch builds the scaled mask in bf16: 1/0.9 rounds to 1.109375.
    let src = "func @f(%x: bf16[64]) {\n  %d = dropout(%x) {p = 0.1, seed = 1}\n  return %d\n}\n";
    let d = run1(
        src,
        vec![(
            "x",
            Tensor::from_f32(DType::BF16, vec![64], vec![1.0; 64]).unwrap(),
        )],
    );
    assert!(
        d.to_f32_vec().iter().all(|&x| x == 0.0 || x == 1.109375),
        "{:?}",
        d.to_f32_vec()
    );
}

#[test]
fn full_fills_and_rounds() {
    let src = "func @f() {\n  %y = full() {shape = [2, 2], value = 0.1, dtype = bf16}\n  %i = full() {shape = [3], value = 7, dtype = i64}\n  return %y, %i\n}\n";
    let out = try_run(src, vec![]).expect("runs");
    assert_eq!(
        out[0].to_f32_vec(),
        vec![half::bf16::from_f32(0.1).to_f32(); 4]
    );
    assert_eq!(out[1].to_f32_vec(), [7., 7., 7.]);
}

#[test]
fn cross_entropy_means_over_kept_targets() {
    let src =
        "func @f(%l: f32[3, 2], %t: i64[3]) {\n  %y = cross_entropy(%l, %t)\n  return %y\n}\n";
    let l = f32s(&[3, 2], &[0., 0., 3f32.ln(), 0., 5., 5.]);
    // Row 0: -log(1/2); row 1 (target 1): -log(1/4); row 2 ignored.
    let y = run1(
        src,
        vec![
            ("l", l.clone()),
            ("t", Tensor::from_i64(vec![3], vec![0, 1, -100]).unwrap()),
        ],
    );
    close(&y, &[(2f64.ln() + 4f64.ln()) / 2.0], 1e-6);
    assert_eq!(y.shape(), &[] as &[usize]);
    let all_ignored = run1(
        src,
        vec![
            ("l", l.clone()),
            ("t", Tensor::from_i64(vec![3], vec![-100; 3]).unwrap()),
        ],
    );
    assert!(all_ignored.to_f32_vec()[0].is_nan());
    let err = try_run(
        src,
        vec![
            ("l", l),
            ("t", Tensor::from_i64(vec![3], vec![0, 2, 0]).unwrap()),
        ],
    )
    .unwrap_err();
    assert!(err.to_string().contains("target 2"), "{err}");
    // Classes on dim 1 for rank-3 logits: [N=1, C=2, d=2].
    let src = "func @f(%l: f32[1, 2, 2], %t: i64[1, 2]) {\n  %y = cross_entropy(%l, %t)\n  return %y\n}\n";
    let y = run1(
        src,
        vec![
            ("l", f32s(&[1, 2, 2], &[0., 3f32.ln(), 0., 0.])),
            ("t", Tensor::from_i64(vec![1, 2], vec![0, 1]).unwrap()),
        ],
    );
    close(&y, &[(2f64.ln() + 4f64.ln()) / 2.0], 1e-6);
}

#[test]
fn split_gives_each_piece_and_unequal_widths() {
    let src = "func @f(%x: f32[2, 5]) {\n  %a, %b, %c = split(%x) {dim = 1, sizes = [1, 3, 1]}\n  return %a, %b, %c\n}\n";
    let x: Vec<f32> = (0..10).map(|i| i as f32).collect();
    let out = try_run(src, vec![("x", f32s(&[2, 5], &x))]).expect("runs");
    assert_eq!(out[0].shape(), [2, 1]);
    assert_eq!(out[0].to_f32_vec(), [0., 5.]);
    assert_eq!(out[1].to_f32_vec(), [1., 2., 3., 6., 7., 8.]);
    assert_eq!(out[2].to_f32_vec(), [4., 9.]);
}

#[test]
fn sin_and_cos() {
    let x = [0.0f32, 0.5, -1.0, 3.0];
    let s = unary("sin", &x);
    close(&s, &x.map(|v| (v as f64).sin()), 1e-6);
    let c = unary("cos", &x);
    close(&c, &x.map(|v| (v as f64).cos()), 1e-6);
}

#[test]
fn norm_statistics_are_per_row_in_f32() {
    let src = "func @f(%x: bf16[2, 4], %w: bf16[4]) {\n  %y, %mean, %rstd = layer_norm_stats(%x, %w) {eps = 0.0}\n  %z, %r = rms_norm_stats(%x) {eps = 0.0}\n  %y1 = layer_norm(%x, %w) {eps = 0.0}\n  return %y, %mean, %rstd, %z, %r, %y1\n}\n";
    let x = Tensor::from_f32(
        DType::BF16,
        vec![2, 4],
        vec![1., 2., 3., 4., -2., 0., 2., 4.],
    )
    .expect("tensor");
    let w = Tensor::from_f32(DType::BF16, vec![4], vec![1., 2., 1., 1.]).expect("tensor");
    let out = try_run(src, vec![("x", x), ("w", w)]).expect("runs");
    assert_eq!(out[1].dtype(), DType::F32);
    assert_eq!(out[1].shape(), [2]);
    close(&out[1], &[2.5, 1.0], 1e-6);
    close(&out[2], &[1.0 / 1.25f64.sqrt(), 1.0 / 5f64.sqrt()], 1e-6);
    close(&out[4], &[1.0 / 7.5f64.sqrt(), 1.0 / 6f64.sqrt()], 1e-6);
    // The first result is layer_norm's.
    assert_eq!(out[0].to_f32_vec(), out[5].to_f32_vec());
    assert_eq!(out[0].dtype(), DType::BF16);
}
