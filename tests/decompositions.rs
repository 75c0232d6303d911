//! Every composite op equals its decomposition: the reference executor on the composite and on
//! the program `decompose` makes of it agree within two roundings of bf16 or f16, or 1e-6 in f32
//! (dropout bit for bit), in f32, bf16 and f16, for each of the op's forms. The decomposed program holds no
//! composite (decomposing it again changes nothing), and every op of the IR is classified here as
//! composite (with cases) or primitive, so a new op cannot skip this check.
//!
//! Each (case, dtype) is a trial: `cargo test --test decompositions -- softmax_middle_dim`.

mod common;

use std::collections::BTreeMap;

use common::harness;
use tpc::ir::DType;
use tpc::runtime::{random_inputs, run_reference, Tensor};

/// (name, the op's statement with `T` for the dtype, the parameters, the result types).
type Case = (&'static str, &'static str, &'static str, &'static str);

const CASES: &[Case] = &[
    (
        "softmax_last_dim",
        "%y = softmax(%x) {dim = 2}",
        "%x: T[B, 5, 7]",
        "T[B, 5, 7]",
    ),
    (
        "softmax_middle_dim",
        "%y = softmax(%x) {dim = 1}",
        "%x: T[B, 5, 7]",
        "T[B, 5, 7]",
    ),
    (
        "layer_norm_affine",
        "%y = layer_norm(%x, %w, %b) {eps = 1e-3}",
        "%x: T[B, 4, 24], %w: T[24], %b: T[24]",
        "T[B, 4, 24]",
    ),
    (
        "layer_norm_bare",
        "%y = layer_norm(%x)",
        "%x: T[B, 24]",
        "T[B, 24]",
    ),
    (
        "layer_norm_two_dims",
        "%y = layer_norm(%x, %w)",
        "%x: T[B, 3, 8], %w: T[3, 8]",
        "T[B, 3, 8]",
    ),
    (
        "layer_norm_stats",
        "%y, %mean, %rstd = layer_norm_stats(%x, %w, %b)",
        "%x: T[B, 4, 24], %w: T[24], %b: T[24]",
        "T[B, 4, 24], f32[B, 4], f32[B, 4]",
    ),
    (
        "layer_norm_stats_one_kept",
        "%y, _, %rstd = layer_norm_stats(%x)",
        "%x: T[B, 24]",
        "T[B, 24], f32[B]",
    ),
    (
        "rms_norm_weight",
        "%y = rms_norm(%x, %w) {eps = 1e-6}",
        "%x: T[B, 4, 24], %w: T[24]",
        "T[B, 4, 24]",
    ),
    (
        "rms_norm_machine_eps",
        "%y = rms_norm(%x)",
        "%x: T[B, 24]",
        "T[B, 24]",
    ),
    (
        "rms_norm_stats",
        "%y, %rstd = rms_norm_stats(%x, %w)",
        "%x: T[B, 4, 24], %w: T[24]",
        "T[B, 4, 24], f32[B, 4]",
    ),
    (
        "mean_one_dim",
        "%y = mean(%x) {dims = [1]}",
        "%x: T[B, 9, 5]",
        "T[B, 5]",
    ),
    (
        "mean_keepdim",
        "%y = mean(%x) {dims = [2], keepdim = true}",
        "%x: T[B, 9, 5]",
        "T[B, 9, 1]",
    ),
    (
        "mean_two_dims",
        "%y = mean(%x) {dims = [0, 2]}",
        "%x: T[B, 9, 5]",
        "T[9]",
    ),
    (
        "mean_all",
        "%y = mean(%x) {dims = [0, 1]}",
        "%x: T[B, 9]",
        "T[]",
    ),
    (
        "dropout",
        "%y = dropout(%x) {p = 0.3, seed = 5}",
        "%x: T[B, 33]",
        "T[B, 33]",
    ),
    (
        "dropout_none",
        "%y = dropout(%x) {p = 0.0, seed = 5}",
        "%x: T[B, 33]",
        "T[B, 33]",
    ),
    (
        "dropout_all",
        "%y = dropout(%x) {p = 1.0, seed = 5}",
        "%x: T[B, 33]",
        "T[B, 33]",
    ),
    ("gelu_erf", "%y = gelu(%x)", "%x: T[B, 33]", "T[B, 33]"),
    (
        "cross_entropy_rows",
        "%y = cross_entropy(%x, %t)",
        "%x: T[B, 7], %t: i64[B]",
        "T[]",
    ),
    (
        "cross_entropy_classes_in_the_middle_ignoring",
        "%y = cross_entropy(%x, %t) {ignore_index = 1}",
        "%x: T[B, 7, 5], %t: i64[B, 5]",
        "T[]",
    ),
    (
        "cross_entropy_one_position",
        "%y = cross_entropy(%x, %t)",
        "%x: T[7], %t: i64[]",
        "T[]",
    ),
    (
        "gelu_tanh",
        "%y = gelu(%x) {approximate = tanh}",
        "%x: T[B, 33]",
        "T[B, 33]",
    ),
];

/// The ops with a decomposition, each with cases above.
const COMPOSITES: &[&str] = &[
    "softmax",
    "layer_norm",
    "layer_norm_stats",
    "rms_norm",
    "rms_norm_stats",
    "mean",
    "dropout",
    "gelu",
    "cross_entropy",
];

/// The ops code generation lowers as they are. `sdpa` (and `sdpa_stats`) is a primitive too:
/// its kernel is one pass (flash attention) that a decomposition would only split.
const PRIMITIVES: &[&str] = &[
    "abs",
    "add",
    "all_to_all",
    "allgather",
    "allreduce",
    "and",
    "broadcast",
    "cast",
    "concat",
    "cos",
    "div",
    "embedding",
    "eq",
    "erf",
    "exp",
    "full",
    "ge",
    "gt",
    "inv_count",
    "kept",
    "le",
    "linear",
    "log",
    "lt",
    "matmul",
    "max",
    "maximum",
    "min",
    "minimum",
    "mul",
    "ne",
    "neg",
    "not",
    "or",
    "permute",
    "pick",
    "pow",
    "rand_like",
    "reciprocal",
    "reduce_scatter",
    "relu",
    "reshape",
    "rsqrt",
    "sdpa",
    "sdpa_stats",
    "shard",
    "sigmoid",
    "silu",
    "sin",
    "slice",
    "split",
    "sqrt",
    "sub",
    "sum",
    "tanh",
    "where",
];

const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

fn main() {
    let mut trials = vec![
        harness::trial(
            "every_op_is_composite_or_primitive",
            every_op_is_composite_or_primitive,
        ),
        harness::trial("every_composite_has_cases", every_composite_has_cases),
    ];
    for &case in CASES {
        for dtype in DTYPES {
            trials.push(harness::trial(format!("{}::{dtype}", case.0), move || {
                composite_equals_its_decomposition(case, dtype)
            }));
        }
    }
    harness::run(trials)
}

fn every_op_is_composite_or_primitive() {
    for name in tpc::ir::ops::all_op_names() {
        let composite = COMPOSITES.contains(&name);
        let primitive = PRIMITIVES.contains(&name);
        assert!(
            composite != primitive,
            "`{name}` must be listed once, as composite (with cases) or as primitive"
        );
    }
}

fn every_composite_has_cases() {
    for name in COMPOSITES {
        let covered = CASES.iter().any(|(_, stmt, _, _)| {
            stmt.split_once(" = ")
                .and_then(|(_, rhs)| rhs.split_once('('))
                .is_some_and(|(op, _)| op == *name)
        });
        assert!(covered, "the composite `{name}` has no case");
    }
}

fn program(case: Case, dtype: DType) -> String {
    let (_, stmt, params, results) = case;
    let t = dtype.to_string();
    let fill = |s: &str| s.replace("T[", &format!("{t}["));
    let names: Vec<&str> = stmt
        .split(" = ")
        .next()
        .unwrap_or("")
        .split(", ")
        .filter(|n| *n != "_")
        .collect();
    let results = fill(results);
    let ret = if names.len() == 1 {
        results.clone()
    } else {
        format!("({results})")
    };
    format!(
        "func @f({}) -> {ret} {{\n  {}\n  return {}\n}}\n",
        fill(params),
        stmt,
        names.join(", ")
    )
}

fn composite_equals_its_decomposition(case: Case, dtype: DType) {
    let text = program(case, dtype);
    let composite = tpc::load("case.ir", &text).unwrap_or_else(|e| panic!("{text}{}", e.render()));
    let mut decomposed = composite.clone();
    assert!(
        tpc::passes::decompose::run(&mut decomposed, true).expect("decompose"),
        "{}: nothing was decomposed",
        case.0
    );
    // The result verifies, holds no composite, and decomposes to itself.
    let printed = tpc::ir::print(&decomposed, tpc::ir::PrintMode::Full);
    let reparsed =
        tpc::load("decomposed.ir", &printed).unwrap_or_else(|e| panic!("{printed}{}", e.render()));
    for &v in reparsed.values() {
        let op = reparsed.op(v).name();
        assert!(
            !COMPOSITES.contains(&op),
            "{}: `{op}` left in\n{printed}",
            case.0
        );
    }
    let mut again = reparsed.clone();
    assert!(!tpc::passes::decompose::run(&mut again, true).expect("decompose"));

    let b: BTreeMap<String, i64> = [("B".to_string(), 3)].into_iter().collect();
    let inputs = spread(random_inputs(&composite, &b, 17).expect("inputs"));
    let want = run_reference(&composite, &inputs, &b).expect("composite");
    let got = run_reference(&decomposed, &inputs, &b).expect("decomposition");
    assert_eq!(want.len(), got.len());
    for (w, g) in want.iter().zip(&got) {
        assert_eq!((w.dtype(), w.shape()), (g.dtype(), g.shape()), "{}", case.0);
        if case.0.starts_with("dropout") {
            assert_eq!(
                bits(w),
                bits(g),
                "{} in {dtype}: dropout must match bit for bit",
                case.0
            );
            continue;
        }
        // Two roundings of bf16 or f16 (both compute in f32, in different orders, and round
        // once), or a few of f32 (the reference's norms accumulate differently), relative to
        // the value or, near zero (where centering cancels), to a tenth of the largest value.
        let tol = match w.dtype() {
            DType::BF16 => 2.0 / 128.0,
            DType::F16 => 2.0 / 1024.0,
            _ => 1e-6,
        };
        let peak = w.max_abs().max(1e-6);
        for (x, y) in w.to_f32_vec().iter().zip(g.to_f32_vec()) {
            let d = (x - y).abs() as f64;
            assert!(
                d <= tol * (x.abs() as f64).max(peak * 0.1),
                "{} in {dtype}: {x} (composite) vs {y} (decomposed)\n{printed}",
                case.0
            );
        }
    }
}

/// The inputs scaled to about [-3, 3], where gelu's cubic term, softmax's shift and the norms'
/// variances all matter.
fn spread(inputs: BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    inputs
        .into_iter()
        .map(|(name, t)| {
            if !t.dtype().is_float() {
                return (name, t);
            }
            let k = 3.0 / t.max_abs().max(1e-6) as f32;
            let values = t.to_f32_vec().iter().map(|x| x * k).collect();
            let scaled = Tensor::from_f32(t.dtype(), t.shape().to_vec(), values).expect("tensor");
            (name, scaled)
        })
        .collect()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_f32_vec().iter().map(|x| x.to_bits()).collect()
}
