//! Per-rank programs: the local shapes each rank computes with, uneven splits included.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::harness;
use tpc::passes::PassManager;

fn main() {
    let mut trials = harness::trials![
        uneven_heads_give_the_first_ranks_two_and_the_rest_one,
        two_axis_mesh_ranks_hold_their_batch_and_features,
        ranks_outside_the_mesh_are_an_error
    ];
    trials.extend(harness::per_file(
        "every_rank_of_every_example_lowers_and_the_pieces_tile_each_value",
        &common::ir_files("examples"),
        every_rank_of_every_example_lowers_and_the_pieces_tile_each_value,
    ));
    harness::run(trials)
}

fn local(file: &str, devices: i64, rank: usize) -> String {
    let mut g = common::load(&common::root().join("examples").join(file));
    PassManager::parse(tpc::passes::DEFAULT_PIPELINE)
        .expect("pipeline")
        .run(&mut g)
        .expect("passes");
    let sizes = g.mesh.resolve(Some(devices)).expect("mesh");
    let b: BTreeMap<String, i64> = [("B".to_string(), 2), ("S".to_string(), 128)]
        .into_iter()
        .collect();
    tpc::local::local_program(&g, &sizes, &b, rank).expect("local program")
}

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

fn ranks_outside_the_mesh_are_an_error() {
    let mut g = common::load(&common::root().join("examples/mlp.ir"));
    PassManager::parse("propagate-sharding")
        .expect("pipeline")
        .run(&mut g)
        .expect("passes");
    let sizes = g.mesh.resolve(Some(8)).expect("mesh");
    assert!(tpc::local::local_program(&g, &sizes, &BTreeMap::new(), 8).is_err());
}

/// lower-to-local on every example, device count and rank: each op's shape rule holds on the
/// local pieces (checked by the lowering), and the pieces of every value cover each global
/// element exactly as often as the value is replicated (once per rank group that holds it).
fn every_rank_of_every_example_lowers_and_the_pieces_tile_each_value(path: &Path) {
    let b: BTreeMap<String, i64> = [("B", 2), ("S", 8), ("E", 4)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let mut g = common::load(path);
    let mut pm = PassManager::parse(tpc::passes::DEFAULT_PIPELINE).expect("pipeline");
    pm.context.symbols = b.clone();
    pm.run(&mut g).expect("passes");
    let fixed = g.mesh.axes.iter().all(|a| a.size.is_some());
    let counts: &[i64] = if fixed { &[8] } else { &[3, 8] };
    for &devices in counts {
        let sizes: Vec<(String, usize)> = g
            .mesh
            .resolve(Some(devices))
            .expect("mesh")
            .into_iter()
            .map(|(n, s)| (n, s as usize))
            .collect();
        let world = devices as usize;
        let programs: Vec<_> = (0..world)
            .map(|r| {
                tpc::passes::lower_to_local::lower_to_local(&g, &sizes, &b, r)
                    .unwrap_or_else(|e| panic!("{} rank {r}: {e}", path.display()))
            })
            .collect();
        for &v in g.values() {
            let global = &programs[0].values[&v].global_shape;
            let mut held = vec![0usize; global.iter().product()];
            for p in &programs {
                let piece = &p.values[&v];
                for o in tpc::ir::layout::flat_offsets(global, &piece.indices) {
                    held[o] += 1;
                }
            }
            let split_over: usize = g
                .ty(v)
                .sharding
                .dims
                .iter()
                .flat_map(|d| d.factors.iter().flat_map(|f| f.axes.iter()))
                .map(|a| sizes.iter().find(|(n, _)| n == a).map_or(1, |(_, s)| *s))
                .product();
            let copies = world / split_over;
            assert!(
                held.iter().all(|&n| n == copies),
                "{} on {devices}: %{} is not held {copies} times everywhere",
                path.display(),
                g.name(v)
            );
        }
    }
}
