//! Phases: the manager's phase checks, the phase verifier on hand-written programs, and
//! lower-to-local as the pass that reaches the local phase.

use std::collections::BTreeMap;

use tpc_ir::{Graph, SourceFile};
use tpc_passes::{verify_phase, Dump, Error, PassContext, PassManager, Phase, PrintIr};

fn parse(text: &str) -> Graph {
    tpc_ir::parse(&SourceFile::new("t.ir", text)).unwrap_or_else(|d| {
        panic!(
            "{}",
            tpc_ir::diag::render(&SourceFile::new("t.ir", text), &d)
        )
    })
}

/// Megatron's MLP from one annotation, as the user writes it (the global phase).
const MLP: &str = "mesh tp

func @mlp(%x: bf16[B, S, 768], %w0: bf16[3072@tp, 768], %b0: bf16[3072], %w1: bf16[768, 3072], %b1: bf16[768]) -> bf16[B, S, 768] {
  %h = linear(%x, %w0, %b0)
  %a = gelu(%h) {approximate = tanh}
  %y = linear(%a, %w1, %b1)
  return %y
}
";

/// Claimed resharded, but `%h`'s operand `%x` is split on the contraction while `%h` is split
/// on its features: the linear would need `%x` gathered, and no collective does it.
const NON_LOCAL: &str = "mesh tp

func @f(%x: bf16[B, S, 768@tp], %w: bf16[3072@tp, 768]) -> bf16[B, S, 3072] {
  %h = linear(%x, %w) : bf16[B, S, 3072@tp]
  %g = allgather(%h) {axis = tp} : bf16[B, S, 3072]
  return %g
}
";

fn context(tp: i64) -> PassContext {
    PassContext {
        symbols: BTreeMap::from([("B".to_string(), 2), ("S".to_string(), 8)]),
        axis_sizes: BTreeMap::from([("tp".to_string(), tp)]),
    }
}

#[test]
fn the_phase_verifier_rejects_a_resharded_graph_with_a_non_local_op() {
    let g = parse(NON_LOCAL);
    let diags = verify_phase(&g, Phase::Resharded, &context(8));
    assert_eq!(diags.len(), 1, "{diags:#?}");
    let d = &diags[0];
    assert!(
        d.message
            .contains("`%h` (`linear`) is not computed locally on `tp`")
            && d.message.contains("`%x` whole")
            && d.message.contains("`%x` is split in dim 2 as 768@tp"),
        "{}",
        d.message
    );
    // Located at the statement defining %h, with %x's declaration as the secondary label.
    let at = &NON_LOCAL[d.span.start as usize..d.span.end as usize];
    assert_eq!(at, "%h = linear(%x, %w) : bf16[B, S, 3072@tp]");
    let (span, _) = &d.secondary[0];
    assert_eq!(
        &NON_LOCAL[span.start as usize..span.end as usize],
        "%x: bf16[B, S, 768@tp]"
    );
    // The collective itself is fine: it is what converts layouts.
    assert!(!diags.iter().any(|d| d.message.contains("%g")));
}

#[test]
fn the_manager_verifies_its_input_at_the_first_pass_phase() {
    // reorder-sharded-axis needs the resharded phase: the input is claimed to be in it.
    let mut g = parse(NON_LOCAL);
    let mut pm = PassManager::parse("reorder-sharded-axis").expect("pipeline");
    pm.verify_each = true;
    pm.context = context(8);
    match pm.run(&mut g) {
        Err(Error::InvalidInput { phase, diagnostics }) => {
            assert_eq!(phase, Phase::Resharded);
            assert!(diagnostics[0].message.contains("`%h`"), "{diagnostics:#?}");
        }
        other => panic!("expected an invalid input, got {other:?}"),
    }
    // The same graph is a valid program: the IR's verifier alone accepts it.
    assert!(tpc_ir::verify::verify(&g).is_empty());
}

#[test]
fn every_valid_program_is_a_global_program() {
    // Shardings are annotations there, and a collective the program writes is kept.
    for text in [MLP, NON_LOCAL] {
        assert!(verify_phase(&parse(text), Phase::Global, &context(8)).is_empty());
    }
    // The input is verified by the IR's verifier as well: a graph left invalid is refused.
    let mut g = parse(MLP);
    let h = g.find("h").expect("%h");
    g.node_mut(h).ty.shape.pop();
    let mut pm = PassManager::parse("dce").expect("pipeline");
    pm.verify_each = true;
    match pm.run(&mut g) {
        Err(Error::InvalidInput { phase, diagnostics }) => {
            assert_eq!(phase, Phase::Global);
            assert!(diagnostics[0].message.contains("`%h`"), "{diagnostics:#?}");
        }
        other => panic!("expected an invalid input, got {other:?}"),
    }
}

#[test]
fn a_pass_before_its_phase_is_an_error_naming_both() {
    let mut g = parse(MLP);
    let pm = PassManager::parse("dce,insert-resharding").expect("pipeline");
    let err = pm
        .run(&mut g)
        .expect_err("insert-resharding on a global graph");
    match &err {
        Error::PhaseTooEarly {
            pass,
            requires,
            current,
            ..
        } => {
            assert_eq!(pass, "insert-resharding");
            assert_eq!((*requires, *current), (Phase::Sharded, Phase::Global));
        }
        other => panic!("expected a phase error, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "pass `insert-resharding` needs the graph at the sharded phase, but it is at the global \
         phase; `propagate-sharding` brings it there"
    );
    // Nothing ran: the phases are checked before the first pass.
    assert_eq!(g.len(), parse(MLP).len());

    // An input declared global, for a pass that needs the resharded phase.
    let mut pm = PassManager::parse("reorder-sharded-axis").expect("pipeline");
    pm.input_phase = Some(Phase::Global);
    assert!(matches!(
        pm.run(&mut g),
        Err(Error::PhaseTooEarly {
            requires: Phase::Resharded,
            current: Phase::Global,
            ..
        })
    ));
}

#[test]
fn a_pass_making_a_phase_already_past_is_an_error() {
    let mut g = parse(MLP);
    let pm = PassManager::parse("propagate-sharding,insert-resharding,propagate-sharding")
        .expect("pipeline");
    match pm.run(&mut g) {
        Err(Error::PhasePassed {
            pass,
            produces,
            current,
        }) => {
            assert_eq!(pass, "propagate-sharding");
            assert_eq!((produces, current), (Phase::Sharded, Phase::Resharded));
        }
        other => panic!("expected a phase error, got {other:?}"),
    }
}

#[test]
fn the_default_pipeline_walks_the_phases_and_lowers_to_local() {
    let mut g = parse(MLP);
    let mut pm = PassManager::parse(
        "propagate-sharding,insert-resharding,reorder-sharded-axis,dce,lower-to-local{rank=1}",
    )
    .expect("pipeline");
    pm.verify_each = true;
    pm.context = context(2);
    let records = pm.run(&mut g).expect("runs");
    let phases: Vec<Phase> = records.iter().map(|r| r.phase).collect();
    assert_eq!(
        phases,
        [
            Phase::Sharded,
            Phase::Resharded,
            Phase::Resharded,
            Phase::Resharded,
            Phase::Local
        ]
    );
    let local = records[4].local.as_ref().expect("lowered");
    assert_eq!(local.rank, 1);
    let h = g.find("h").expect("%h");
    // Rank 1 of 2 holds half of the 3072 features.
    assert_eq!(local.values[&h].shape, [2, 8, 1536]);
    assert_eq!(local.values[&h].global_shape, [2, 8, 3072]);
    // The graph itself is the global program still, and verifies at the local phase.
    assert!(verify_phase(&g, Phase::Local, &context(2)).is_empty());
    // A rank past the mesh is the lowering's error.
    let mut pm = PassManager::parse("lower-to-local{rank=2}").expect("pipeline");
    pm.context = context(2);
    match pm.run(&mut g) {
        Err(Error::Lowering(m)) => assert!(m.contains("rank 2 is not one of the 2 ranks"), "{m}"),
        other => panic!("expected a lowering error, got {other:?}"),
    }
}

#[test]
fn lower_to_local_needs_the_axis_sizes() {
    let mut g = parse(MLP);
    let pm = PassManager::parse("propagate-sharding,insert-resharding,lower-to-local")
        .expect("pipeline");
    match pm.run(&mut g) {
        Err(Error::Lowering(m)) => assert!(m.contains("mesh axis `tp`"), "{m}"),
        other => panic!("expected a lowering error, got {other:?}"),
    }
}

#[test]
fn the_sharded_phase_needs_every_layout_propagation_gives() {
    let g = parse(MLP);
    let diags = verify_phase(&g, Phase::Sharded, &context(8));
    let named: Vec<&str> = diags
        .iter()
        .map(|d| d.message.split('`').nth(1).unwrap_or(""))
        .collect();
    assert_eq!(named, ["%b0", "%w1", "%h", "%a", "%y"], "{diags:#?}");
    assert!(diags[2].message.contains("give it bf16[B, S, 3072@tp]"));
    // After propagate-sharding it holds.
    let mut g = g;
    let mut pm = PassManager::parse("propagate-sharding").expect("pipeline");
    pm.context = context(8);
    pm.run(&mut g).expect("runs");
    assert!(verify_phase(&g, Phase::Sharded, &context(8)).is_empty());
    // And at the global phase the user's program is fine.
    assert!(verify_phase(&parse(MLP), Phase::Global, &context(8)).is_empty());
}

#[test]
fn a_partial_linear_with_a_bias_and_a_partial_result_are_not_resharded() {
    let text = "mesh tp

func @f(%x: f32[4, 16@tp], %w: f32[8, 16@tp], %b: f32[8]) -> f32[4, 8] {
  %y = linear(%x, %w, %b) : f32[4, 8] partial(tp)
  return %y
}
";
    let g = parse(text);
    let diags = verify_phase(&g, Phase::Resharded, &context(2));
    let messages: Vec<&str> = diags.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert!(messages[0].contains("linear with a bias is partial"));
    assert!(messages[1].contains("`%y` is returned partial over `tp`"));
}

#[test]
fn ir_is_printed_before_and_after_the_passes_asked_for() {
    let mut g = parse(MLP);
    let mut pm = PassManager::parse("propagate-sharding,insert-resharding").expect("pipeline");
    pm.print_before = PrintIr::Passes(vec!["insert-resharding".into()]);
    pm.print_after = PrintIr::All;
    let mut dumps = Vec::new();
    let records = pm
        .run_dumping(&mut g, &mut |when, pass, _| {
            dumps.push((when, pass.to_string()))
        })
        .expect("runs");
    assert_eq!(
        dumps,
        [
            (Dump::After, "propagate-sharding".to_string()),
            (Dump::Before, "insert-resharding".to_string()),
            (Dump::After, "insert-resharding".to_string()),
        ]
    );
    assert!(records[0].ir_before.is_none());
    let before = records[1].ir_before.as_deref().expect("printed");
    assert!(
        before.contains("3072@tp") && !before.contains("= allreduce("),
        "{before}"
    );
    assert_eq!(records[0].ir_after.as_deref(), Some(before));
    assert!(records[1]
        .ir_after
        .as_deref()
        .is_some_and(|ir| ir.contains("= allreduce(")));
}
