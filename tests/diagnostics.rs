//! Every file in tests/diagnostics/ is a malformed or ill-typed program, or (first line
//! `# DEVICES: N`) one that cannot be sharded on N devices. Each must fail (never panic), and its
//! rendered diagnostics are pinned by an insta snapshot. A new case is a new file, and its own
//! trial, `every_malformed_program_gets_located_errors::<case>`: `cargo test --test diagnostics
//! -- dim_out_of_range` runs one.

mod common;

use std::path::Path;

use common::harness;
use tpc::ir::diag::render;
use tpc::ir::{parse, SourceFile};

fn main() {
    let files = common::ir_files("tests/diagnostics");
    assert!(files.len() >= 20, "only {} diagnostic cases", files.len());
    let mut trials = harness::per_file(
        "every_malformed_program_gets_located_errors",
        &files,
        located_errors,
    );
    trials.push(harness::trial(
        "several_problems_are_all_reported",
        several_problems_are_all_reported,
    ));
    harness::run(trials)
}

fn located_errors(path: &Path) {
    let name = common::stem(path);
    let bytes = std::fs::read(path).expect("readable");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let file = SourceFile::new(format!("tests/diagnostics/{name}.ir"), text);
    // `# DEVICES: N` on the first line: the program is valid, but not on N devices.
    let devices = file
        .text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("# DEVICES:"))
        .map(|n| n.trim().parse::<i64>().expect("a device count"));
    let diags = match (parse(&file), devices) {
        (Ok(_), None) => panic!("{name}.ir parsed without errors"),
        (Ok(g), Some(n)) => match tpc::resolve_devices(&g, n, &file) {
            Err(tpc::Error::Program { diagnostics, .. }) => diagnostics,
            other => panic!("{name}.ir on {n} devices: {other:?}"),
        },
        (Err(d), _) => d,
    };
    assert!(!diags.is_empty());
    for d in &diags {
        assert!(
            !d.message.is_empty() && !d.label.is_empty(),
            "{name}: {d:?}"
        );
        assert!(
            d.span.end as usize <= file.text.len(),
            "{name}: span past the end"
        );
    }
    let rendered = render(&file, &diags);
    assert!(
        rendered.contains(&format!("tests/diagnostics/{name}.ir:")),
        "{name}: no location\n{rendered}"
    );
    insta::assert_snapshot!(name, rendered);
}

fn several_problems_are_all_reported() {
    let path = common::root().join("tests/diagnostics/many_errors.ir");
    let text = std::fs::read_to_string(path).expect("readable");
    let diags = parse(&SourceFile::new("many_errors.ir", text)).expect_err("invalid");
    assert!(diags.len() >= 4, "{diags:#?}");
}
