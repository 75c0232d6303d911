//! The pass manager on small graphs built in Rust.

use tpc_ir::ops::UnaryOp;
use tpc_ir::{DType, Dim, Graph, Mesh, Op, Span, TensorType};
use tpc_passes::{Error, PassManager, PrintAfter};

fn graph_with_dead_chain() -> Graph {
    let mut g = Graph::new("f", Mesh::default());
    let x = g.add_param(
        "x",
        TensorType::new(DType::F32, vec![Dim::symbol("B"), 4.into()]),
        Span::DUMMY,
    );
    let y = g
        .add_op("y", Op::Unary(UnaryOp::Exp), &[x], Span::DUMMY)
        .expect("exp");
    let dead = g
        .add_op("dead", Op::Unary(UnaryOp::Tanh), &[x], Span::DUMMY)
        .expect("tanh");
    g.add_op("dead2", Op::Unary(UnaryOp::Neg), &[dead], Span::DUMMY)
        .expect("neg");
    g.set_outputs(vec![y]);
    g
}

#[test]
fn dce_removes_dead_chains_and_keeps_params() {
    let mut g = graph_with_dead_chain();
    let mut pm = PassManager::parse("dce").expect("pipeline");
    pm.verify_each = true;
    pm.print_after = PrintAfter::All;
    let records = pm.run(&mut g).expect("runs");
    assert!(records[0].changed);
    let names: Vec<&str> = g.values().iter().map(|&v| g.name(v)).collect();
    assert_eq!(names, ["x", "y"]);
    let ir = records[0].ir_after.as_deref().expect("printed");
    assert!(ir.contains("%y = exp(%x)") && !ir.contains("dead"), "{ir}");
    // A second run finds nothing to do.
    assert!(!pm.run(&mut g).expect("runs")[0].changed);
}

#[test]
fn unknown_passes_list_the_valid_ones() {
    match PassManager::parse("dce, propagate-shardin") {
        Err(Error::UnknownPass { name, valid }) => {
            assert_eq!(name, "propagate-shardin");
            assert!(valid.contains("dce"));
        }
        other => panic!("expected an unknown-pass error, got {other:?}"),
    }
    assert!(matches!(
        PassManager::parse(" , "),
        Err(Error::EmptyPipeline)
    ));
}
