//! The executor's harness: inputs, bindings, limits, safetensors.

use std::collections::BTreeMap;

use tpc_ir::{parse, DType, Graph, SourceFile};
use tpc_runtime::{
    bind_symbols, load_safetensors, random_inputs, run_reference, run_reference_with_limits,
    save_safetensors, Error, Limits, Tensor,
};

fn graph(src: &str) -> Graph {
    parse(&SourceFile::new("t.ir", src)).expect("valid program")
}

const PROG: &str = "func @f(%x: f32[B, S], %ids: i64[B], %w: bf16[V, 4]) {\n  %y = exp(%x)\n  %e = embedding(%ids, %w)\n  return %y, %e\n}\n";

#[test]
fn symbols_are_read_off_inputs_and_conflicts_are_errors() {
    let g = graph(PROG);
    let mut inputs = BTreeMap::new();
    inputs.insert(
        "x".to_string(),
        Tensor::from_f32(DType::F32, vec![2, 5], vec![0.0; 10]).unwrap(),
    );
    let explicit: BTreeMap<String, i64> = [("V".to_string(), 7)].into_iter().collect();
    let b = bind_symbols(&g, &inputs, &explicit).expect("binds");
    assert_eq!((b["B"], b["S"], b["V"]), (2, 5, 7));
    let conflicting: BTreeMap<String, i64> = [("B".to_string(), 3), ("V".to_string(), 7)]
        .into_iter()
        .collect();
    let err = bind_symbols(&g, &inputs, &conflicting).unwrap_err();
    assert!(err.to_string().contains("symbol B is 3"), "{err}");
    let err = bind_symbols(&g, &inputs, &BTreeMap::new()).unwrap_err();
    assert!(err.to_string().contains("--bind V="), "{err}");
}

#[test]
fn random_inputs_are_deterministic_and_in_range() {
    let g = graph(PROG);
    let b: BTreeMap<String, i64> = [("B", 64), ("S", 3), ("V", 5)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let a = random_inputs(&g, &b, 9).unwrap();
    assert_eq!(a, random_inputs(&g, &b, 9).unwrap());
    assert_ne!(a["x"], random_inputs(&g, &b, 10).unwrap()["x"]);
    let ids = a["ids"].to_f32_vec();
    assert!(ids.iter().all(|&i| (0.0..5.0).contains(&i)), "{ids:?}");
    assert!(
        ids.iter().any(|&i| i >= 3.0),
        "ids use the whole vocabulary"
    );
    assert!(a["x"]
        .to_f32_vec()
        .iter()
        .all(|&v| (-1.0..1.0).contains(&v)));
    let out = run_reference(&g, &a, &b).expect("runs");
    assert_eq!(out[1].shape(), &[64, 4]);
}

#[test]
fn missing_and_mismatched_inputs_are_named() {
    let g = graph("func @f(%x: f32[2]) {\n  %y = exp(%x)\n  return %y\n}\n");
    let err = run_reference(&g, &BTreeMap::new(), &BTreeMap::new()).unwrap_err();
    assert!(
        matches!(err, Error::MissingInput(ref n) if n == "x"),
        "{err}"
    );
    let mut inputs = BTreeMap::new();
    inputs.insert(
        "x".to_string(),
        Tensor::from_f32(DType::BF16, vec![2], vec![0.0; 2]).unwrap(),
    );
    let err = run_reference(&g, &inputs, &BTreeMap::new()).unwrap_err();
    assert!(
        err.to_string().contains("should be f32[2] but is bf16[2]"),
        "{err}"
    );
}

#[test]
fn huge_bindings_are_refused_before_allocating() {
    let g = graph("func @f(%x: f32[B, 1024]) {\n  %y = exp(%x)\n  return %y\n}\n");
    let b: BTreeMap<String, i64> = [("B".to_string(), 1_000_000_000_000)].into_iter().collect();
    assert!(matches!(
        random_inputs(&g, &b, 0),
        Err(Error::TooLarge { .. })
    ));
    let err = run_reference(&g, &BTreeMap::new(), &b).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    // A small limit trips on live memory too.
    let b: BTreeMap<String, i64> = [("B".to_string(), 4)].into_iter().collect();
    let inputs = random_inputs(&g, &b, 0).unwrap();
    let err =
        run_reference_with_limits(&g, &inputs, &b, &Limits { max_bytes: 20_000 }).unwrap_err();
    assert!(err.to_string().contains("%y"), "{err}");
}

#[test]
fn safetensors_round_trip_every_dtype() {
    let dir = std::env::temp_dir().join(format!("tpc-rt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.safetensors");
    let ts = [
        (
            "a",
            Tensor::from_f32(DType::F32, vec![2], vec![1.5, -2.0]).unwrap(),
        ),
        (
            "b.0.weight",
            Tensor::from_f32(DType::BF16, vec![1, 2], vec![0.1, 3.0]).unwrap(),
        ),
        (
            "c",
            Tensor::from_f32(DType::F16, vec![2], vec![0.1, 65504.0]).unwrap(),
        ),
        (
            "d",
            Tensor::from_i64(vec![3], vec![-1, 0, i64::MAX]).unwrap(),
        ),
        ("e", Tensor::from_bool(vec![2], vec![true, false]).unwrap()),
    ];
    let named: Vec<(String, &Tensor)> = ts.iter().map(|(n, t)| (n.to_string(), t)).collect();
    save_safetensors(&path, &named).unwrap();
    let back = load_safetensors(&path).unwrap();
    for (n, t) in &ts {
        assert_eq!(&back[*n], t, "{n}");
    }
    std::fs::write(&path, b"not safetensors").unwrap();
    assert!(load_safetensors(&path)
        .unwrap_err()
        .to_string()
        .contains("not a valid safetensors file"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn collectives_are_the_identity_on_global_values() {
    let g = graph("mesh tp\n\nfunc @f(%y: f32[2, 4] partial(tp)) {\n  %s = allreduce(%y) {axis = tp} : f32[2, 4]\n  %t = shard(%s) {axis = tp} : f32[2, 4@tp]\n  %u = allgather(%t) {axis = tp} : f32[2, 4]\n  return %u\n}\n");
    let inputs = random_inputs(&g, &BTreeMap::new(), 4).unwrap();
    let out = run_reference(&g, &inputs, &BTreeMap::new()).unwrap();
    assert_eq!(out[0], inputs["y"]);
}
