//! Pass filetests: every `tests/passes/<pass>/<case>.ir` starts with `# RUN: <pipeline>`; the
//! pipeline runs (verifying after each pass) and the full printed IR is an insta snapshot beside
//! the case. Adding a case is adding a file.
//!
//! Every case is its own trial, named `<pass>::<case>`: `cargo test --test passes --
//! insert-resharding::mlp_auto` runs one (a substring of the name selects every case it is part
//! of; `-- --list` lists them).

mod common;

use std::path::Path;

use common::harness;
use tpc::ir::{print, PrintMode};
use tpc::passes::PassManager;

fn main() {
    let root = common::root().join("tests/passes");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("tests/passes")
        .map(|e| e.expect("entry").path())
        .collect();
    dirs.sort();
    let mut trials = Vec::new();
    for dir in dirs.into_iter().filter(|d| d.is_dir()) {
        let pass = common::stem(&dir);
        for path in common::ir_files(&format!("tests/passes/{pass}")) {
            let name = format!("{pass}::{}", common::stem(&path));
            let dir = dir.clone();
            trials.push(harness::trial(name, move || filetest(&dir, &path)));
        }
    }
    assert!(trials.len() >= 40, "only {} pass cases", trials.len());
    harness::run(trials)
}

/// Runs the case `path` of the pass directory `dir` and checks its snapshot.
fn filetest(dir: &Path, path: &Path) {
    let text = std::fs::read_to_string(path).expect("readable");
    let pipeline = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("# RUN:"))
        .unwrap_or_else(|| panic!("{} must start with `# RUN: <pipeline>`", path.display()))
        .trim();
    let original = common::load(path);
    let mut g = original.clone();
    let mut pm = PassManager::parse(pipeline).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    pm.verify_each = true;
    // The CLI's default bindings, so that `tpc compile CASE` prints the snapshot.
    pm.context.symbols = tpc::parse_bindings("B=2,S=128").expect("bindings");
    // As tests/sharded.rs runs the cases.
    let devices = common::case_devices(&original);
    pm.context.axis_sizes = original
        .mesh
        .resolve(Some(devices))
        .map(|s| s.into_iter().collect())
        .unwrap_or_default();
    if let Err(e) = pm.run(&mut g) {
        panic!("{}: {e}", path.display());
    }
    let printed = print(&g, PrintMode::Full);
    same_results(&original, &g, path);
    // The result is itself a valid program that prints the same.
    let again =
        tpc::load("printed.ir", &printed).unwrap_or_else(|e| panic!("{printed}\n{}", e.render()));
    assert_eq!(print(&again, PrintMode::Full), printed);
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(dir.join("snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_snapshot!(common::stem(path), printed));
}

/// A pass must not change what the program computes: the reference executor (which runs
/// collectives as the identity on global values) gives the same results before and after, within
/// the rounding a reordered bias add may bring.
fn same_results(before: &tpc::Graph, after: &tpc::Graph, path: &Path) {
    let b: std::collections::BTreeMap<String, i64> = [("B", 2), ("S", 8), ("E", 4)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let inputs = tpc::runtime::random_inputs(before, &b, 11).expect("inputs");
    let want = tpc::runtime::run_reference(before, &inputs, &b).expect("reference runs");
    let got = tpc::runtime::run_reference(after, &inputs, &b)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(w.shape(), g.shape());
        let tol = match w.dtype() {
            tpc::ir::DType::BF16 => 1.0 / 64.0,
            tpc::ir::DType::F16 => 1.0 / 512.0,
            _ => 1e-5,
        };
        let peak = w.max_abs().max(1.0);
        for (x, y) in w.to_f32_vec().iter().zip(g.to_f32_vec()) {
            assert!(
                ((x - y).abs() as f64) <= tol * peak,
                "{}: {x} became {y}",
                path.display()
            );
        }
    }
}
