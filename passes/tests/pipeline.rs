//! The pass manager on small graphs built in Rust.

use tpc_ir::ops::UnaryOp;
use tpc_ir::{DType, Dim, Graph, Mesh, Op, Span, TensorType};
use tpc_passes::{Error, OptionValue, PassManager, PrintAfter};

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

/// Each pass's options as the manager holds them: (pass, option, value).
fn options_of(pm: &PassManager) -> Vec<(String, String)> {
    pm.passes()
        .flat_map(|(pass, options)| {
            pass.options().iter().map(move |spec| {
                let value = match spec.kind {
                    tpc_passes::OptionKind::Bool => {
                        OptionValue::Bool(options.bool(spec.name).expect("bool"))
                    }
                    tpc_passes::OptionKind::Count => {
                        OptionValue::Count(options.count(spec.name).expect("count"))
                    }
                    tpc_passes::OptionKind::Choice(_) => {
                        OptionValue::Choice(options.choice(spec.name).expect("choice"))
                    }
                };
                (
                    format!("{}{{{}}}", pass.name(), spec.name),
                    value.to_string(),
                )
            })
        })
        .collect()
}

#[test]
fn options_parse_as_mlir_writes_them() {
    let pm = PassManager::parse(
        "propagate-sharding{cost=bytes},insert-resharding,reorder-sharded-axis{all-to-all=false},dce,lower-to-local{ rank=3 }",
    )
    .expect("pipeline");
    assert_eq!(
        pm.pass_names(),
        [
            "propagate-sharding",
            "insert-resharding",
            "reorder-sharded-axis",
            "dce",
            "lower-to-local"
        ]
    );
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        options_of(&pm),
        pairs(&[
            ("propagate-sharding{cost}", "bytes"),
            ("reorder-sharded-axis{all-to-all}", "false"),
            ("lower-to-local{rank}", "3"),
        ])
    );
    // Defaults where the pipeline gives none; a bool written alone is true; commas between
    // options as well as spaces.
    let pm =
        PassManager::parse("propagate-sharding,reorder-sharded-axis{all-to-all},lower-to-local{}")
            .expect("pipeline");
    assert_eq!(
        options_of(&pm),
        pairs(&[
            ("propagate-sharding{cost}", "bytes"),
            ("reorder-sharded-axis{all-to-all}", "true"),
            ("lower-to-local{rank}", "0"),
        ])
    );
    // The existing pipelines parse as before.
    let pm = PassManager::parse(tpc_passes::DEFAULT_PIPELINE).expect("pipeline");
    assert_eq!(pm.pass_names().len(), 4);
}

#[test]
fn every_registered_pass_takes_its_defaults() {
    for pass in tpc_passes::registry() {
        let pm = PassManager::parse(pass.name()).expect("pipeline");
        assert_eq!(
            options_of(&pm).len(),
            pass.options().len(),
            "{}",
            pass.name()
        );
        assert!(!pass.description().is_empty());
        if let Some(p) = pass.produces() {
            assert!(p >= pass.requires(), "{}", pass.name());
        }
    }
}

#[test]
fn an_unknown_option_lists_the_valid_ones() {
    match PassManager::parse("propagate-sharding{cst=bytes}") {
        Err(e @ Error::UnknownOption { .. }) => {
            let m = e.to_string();
            assert!(
                m.starts_with("pass `propagate-sharding` has no option `cst`; its options are: cost=bytes (one of bytes): "),
                "{m}"
            );
        }
        other => panic!("expected an unknown-option error, got {other:?}"),
    }
    match PassManager::parse("dce{aggressive}") {
        Err(e @ Error::UnknownOption { .. }) => assert_eq!(
            e.to_string(),
            "pass `dce` has no option `aggressive`; it takes no options"
        ),
        other => panic!("expected an unknown-option error, got {other:?}"),
    }
}

#[test]
fn a_bad_option_value_says_what_the_option_takes() {
    let cases = [
        (
            "propagate-sharding{cost=flops}",
            "`flops` is not a value of option `cost` of pass `propagate-sharding`: it takes one of bytes",
        ),
        (
            "lower-to-local{rank=-1}",
            "`-1` is not a value of option `rank` of pass `lower-to-local`: it takes a non-negative whole number",
        ),
        (
            "lower-to-local{rank}",
            "`` is not a value of option `rank` of pass `lower-to-local`: it takes a non-negative whole number",
        ),
        (
            "reorder-sharded-axis{all-to-all=maybe}",
            "`maybe` is not a value of option `all-to-all` of pass `reorder-sharded-axis`: it takes true or false",
        ),
    ];
    for (pipeline, message) in cases {
        match PassManager::parse(pipeline) {
            Err(e @ Error::BadOptionValue { .. }) => assert_eq!(e.to_string(), message),
            other => panic!("{pipeline}: expected a bad-value error, got {other:?}"),
        }
    }
}

#[test]
fn malformed_option_syntax_is_an_error() {
    for (pipeline, fragment) in [
        ("dce{", "is not closed"),
        ("dce}", "closes no"),
        ("lower-to-local{rank={1}}", "do not nest"),
        ("lower-to-local{rank=1}x", "nothing may follow"),
        ("lower-to-local{rank=1 rank=2}", "sets option `rank` twice"),
    ] {
        match PassManager::parse(pipeline) {
            Err(e @ Error::Pipeline(_)) => {
                assert!(e.to_string().contains(fragment), "{pipeline}: {e}")
            }
            other => panic!("{pipeline}: expected a pipeline error, got {other:?}"),
        }
    }
    // An unknown pass with options is an unknown pass.
    assert!(matches!(
        PassManager::parse("dcee{x=1}"),
        Err(Error::UnknownPass { .. })
    ));
}
