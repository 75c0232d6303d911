//! Per-rank programs: the local shapes each rank computes with, uneven splits included.

mod common;

use std::collections::BTreeMap;

use tpc::passes::PassManager;

fn local(file: &str, devices: i64, rank: usize) -> String {
    let mut g = common::load(&common::root().join("examples").join(file));
    PassManager::parse("propagate-sharding,insert-resharding")
        .expect("pipeline")
        .run(&mut g)
        .expect("passes");
    let sizes = g.mesh.resolve(Some(devices)).expect("mesh");
    let b: BTreeMap<String, i64> = [("B".to_string(), 2), ("S".to_string(), 128)]
        .into_iter()
        .collect();
    tpc::local::local_program(&g, &sizes, &b, rank).expect("local program")
}

#[test]
fn uneven_heads_give_the_first_ranks_two_and_the_rest_one() {
    let first = local("attention_uneven.ir", 8, 0);
    let last = local("attention_uneven.ir", 8, 7);
    assert!(
        first.contains("%q = permute(%q.1) {dims = [0, 2, 1, 3]} : bf16[2, 2, 128, 64]"),
        "{first}"
    );
    assert!(
        last.contains("%q = permute(%q.1) {dims = [0, 2, 1, 3]} : bf16[2, 1, 128, 64]"),
        "{last}"
    );
    insta::assert_snapshot!("attention_uneven_rank0", first);
    insta::assert_snapshot!("attention_uneven_rank7", last);
}

#[test]
fn two_axis_mesh_ranks_hold_their_batch_and_features() {
    let text = local("mlp_dp_tp.ir", 8, 5);
    assert!(
        text.starts_with("# @mlp on rank 5 (dp 1 of 2, tp 1 of 4)"),
        "{text}"
    );
    assert!(
        text.contains("%h = linear(%x, %w0, %b0) : bf16[1, 128, 768]"),
        "{text}"
    );
    insta::assert_snapshot!("mlp_dp_tp_rank5", text);
}

#[test]
fn ranks_outside_the_mesh_are_an_error() {
    let mut g = common::load(&common::root().join("examples/mlp.ir"));
    PassManager::parse("propagate-sharding")
        .expect("pipeline")
        .run(&mut g)
        .expect("passes");
    let sizes = g.mesh.resolve(Some(8)).expect("mesh");
    assert!(tpc::local::local_program(&g, &sizes, &BTreeMap::new(), 8).is_err());
}
