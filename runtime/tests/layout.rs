//! Cutting tensors into rank pieces and assembling them again.

use std::collections::BTreeMap;

use tpc_ir::layout::MeshCoords;
use tpc_ir::{parse, SourceFile, TensorType};
use tpc_runtime::layout::{assemble, cut};
use tpc_runtime::{random_inputs, Tensor};

fn param_type(src: &str) -> TensorType {
    let g = parse(&SourceFile::new("t.ir", src)).expect("valid");
    g.ty(g.params()[0]).clone()
}

fn coords(axes: &[(&str, usize, usize)]) -> MeshCoords {
    axes.iter()
        .map(|(a, i, n)| (a.to_string(), (*i, *n)))
        .collect()
}

fn global(ty: &TensorType, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_f32(ty.dtype, shape.to_vec(), (0..n).map(|i| i as f32).collect()).unwrap()
}

#[test]
fn cut_then_assemble_is_the_identity_for_factor_and_uneven_splits() {
    let ty = param_type("mesh tp\n\nfunc @f(%w: f32[(3, 12@tp, 4), 5]) {\n  return %w\n}\n");
    let g = global(&ty, &[144, 5]);
    let b = BTreeMap::new();
    let pieces: Vec<(MeshCoords, Tensor)> = (0..8)
        .map(|r| {
            let c = coords(&[("tp", r, 8)]);
            let p = cut(&g, &ty, &b, &c).unwrap();
            (c, p)
        })
        .collect();
    assert_eq!(
        pieces[0].1.shape(),
        &[3 * 2 * 4, 5],
        "rank 0 holds two heads"
    );
    assert_eq!(pieces[7].1.shape(), &[3 * 4, 5], "rank 7 holds one");
    assert_eq!(assemble(&[144, 5], &ty, &b, &pieces).unwrap(), g);
}

#[test]
fn partial_pieces_sum_back_and_replicas_must_agree() {
    let ty = param_type(
        "mesh dp = 2, tp = 2\n\nfunc @f(%p: f32[4, 6@dp] partial(tp)) {\n  return %p\n}\n",
    );
    let g = global(&ty, &[4, 6]);
    let b = BTreeMap::new();
    let mut pieces = Vec::new();
    for dp in 0..2 {
        for tp in 0..2 {
            let c = coords(&[("dp", dp, 2), ("tp", tp, 2)]);
            let p = cut(&g, &ty, &b, &c).unwrap();
            if tp == 1 {
                assert!(
                    p.to_f32_vec().iter().all(|&x| x == 0.0),
                    "only the first tp rank holds the summand"
                );
            }
            pieces.push((c, p));
        }
    }
    assert_eq!(assemble(&[4, 6], &ty, &b, &pieces).unwrap(), g);

    let rep = param_type("mesh tp\n\nfunc @f(%r: f32[2]) {\n  return %r\n}\n");
    let a = (
        coords(&[("tp", 0, 2)]),
        Tensor::from_f32(rep.dtype, vec![2], vec![1.0, 2.0]).unwrap(),
    );
    let b2 = (
        coords(&[("tp", 1, 2)]),
        Tensor::from_f32(rep.dtype, vec![2], vec![1.0, 2.5]).unwrap(),
    );
    let err = assemble(&[2], &rep, &BTreeMap::new(), &[a, b2]).unwrap_err();
    assert!(err.to_string().contains("replicas disagree"), "{err}");
}

#[test]
fn symbolic_factors_are_bound_first() {
    let src = "mesh tp\n\nfunc @f(%x: bf16[B, (S@tp, 4)]) {\n  return %x\n}\n";
    let g = parse(&SourceFile::new("t.ir", src)).expect("valid");
    let ty = g.ty(g.params()[0]).clone();
    let b: BTreeMap<String, i64> = [("B".to_string(), 2), ("S".to_string(), 6)]
        .into_iter()
        .collect();
    let x = random_inputs(&g, &b, 1).unwrap().remove("x").unwrap();
    let piece = cut(&x, &ty, &b, &coords(&[("tp", 1, 4)])).unwrap();
    assert_eq!(
        piece.shape(),
        &[2, 2 * 4],
        "6 over 4 ranks: rank 1 holds 2 rows of S"
    );
}
