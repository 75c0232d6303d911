//! Host programs: snapshots of every example's kernels (CUDA C) and rank 0's host program at 8
//! devices; the memory plan never places two live buffers over each other; every launch passes
//! what its kernel's parameters ask for; `tpc compile -o` writes every artifact. Each check of
//! each example is a trial, `<check>::<example>` (`cargo test --test hosts -- mlp_dp_tp`).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::harness;
use tpc::codegen::host::{HostProgram, Step};

fn main() {
    let examples = common::ir_files("examples");
    let mut trials = harness::per_file(
        "kernels_and_host_program_snapshots",
        &examples,
        kernels_and_host_program_snapshots,
    );
    trials.extend(harness::per_file(
        "memory_plans_never_overlap_and_launches_match_their_kernels",
        &examples,
        memory_plans_never_overlap_and_launches_match_their_kernels,
    ));
    trials.push(harness::trial(
        "compile_with_out_dir_writes_every_artifact",
        compile_with_out_dir_writes_every_artifact,
    ));
    harness::run(trials)
}

fn bindings() -> BTreeMap<String, i64> {
    tpc::parse_bindings("B=2,S=128").expect("bindings")
}

fn artifacts(path: &Path, devices: i64) -> tpc::Artifacts {
    let text = std::fs::read_to_string(path).expect("readable");
    let options = tpc::CompileOptions {
        devices: Some(devices),
        bindings: bindings(),
        ..tpc::CompileOptions::default()
    };
    tpc::compile(&common::stem(path), &text, &options)
        .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.render()))
}

fn devices_for(g: &tpc::Graph) -> i64 {
    let fixed: Vec<i64> = g.mesh.axes.iter().filter_map(|a| a.size).collect();
    if !fixed.is_empty() && fixed.len() == g.mesh.axes.len() {
        fixed.iter().product()
    } else {
        8
    }
}

fn kernels_and_host_program_snapshots(path: &Path) {
    let devices = devices_for(&common::load(path));
    let a = artifacts(path, devices);
    insta::assert_snapshot!(format!("cuda_{}", common::stem(path)), a.cuda);
    let mut text = String::new();
    for k in a.kernels() {
        text.push_str(&format!("{k}\n"));
    }
    text.push('\n');
    text.push_str(&a.host_text(0).expect("rank 0"));
    insta::assert_snapshot!(format!("host_{}", common::stem(path)), text);
    // The template rank 0 runs, for every binding.
    insta::assert_snapshot!(
        format!("template_{}", common::stem(path)),
        a.template_text(0).expect("rank 0")
    );
}

/// Replays the plan: a buffer's bytes are in use from its allocation (or input, or table) to
/// its free; no two in use at once overlap, and all lie inside the arena.
fn check_plan(h: &HostProgram, what: &str) {
    let mut live: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    for s in &h.steps {
        let start = match s {
            Step::Input { buf, .. } | Step::Alloc { buf } | Step::Table { buf, .. } => Some(*buf),
            _ => None,
        };
        if let Some(b) = start {
            let x = &h.buffers[b.0];
            let (lo, hi) = (x.offset, x.offset + x.bytes());
            assert!(hi <= h.peak_bytes, "{what}: %{} leaves the arena", x.name);
            for (other, &(l, e)) in &live {
                assert!(
                    hi <= l || e <= lo || x.bytes() == 0,
                    "{what}: %{} overlaps live %{}",
                    x.name,
                    h.buffers[*other].name
                );
            }
            live.insert(b.0, (lo, hi));
        }
        if let Step::Free { buf } = s {
            assert!(
                live.remove(&buf.0).is_some(),
                "{what}: free of a dead buffer"
            );
        }
    }
}

fn memory_plans_never_overlap_and_launches_match_their_kernels(path: &Path) {
    let devices = devices_for(&common::load(path));
    let a = artifacts(path, devices);
    for h in a.hosts() {
        let what = format!("{} rank {}", path.display(), h.rank);
        check_plan(h, &what);
        for s in &h.steps {
            if let Step::Launch { kernel, args, .. } = s {
                let k = &a.kernels()[*kernel];
                assert!(
                    tpc::codegen::build::args_match(k, args, &h.buffers),
                    "{what}: launch of {} does not match its parameters",
                    k.name()
                );
            }
        }
        assert!(h.peak_bytes > 0, "{what}");
    }
    // Never more than every buffer side by side; reuse keeps big programs well below.
    let h = &a.hosts()[0];
    let align = tpc::codegen::host::ALIGN;
    let total: u64 = h
        .buffers
        .iter()
        .map(|b| b.bytes().max(1).div_ceil(align) * align)
        .sum();
    assert!(h.peak_bytes <= total, "{}", path.display());
    if common::stem(path) == "block" {
        assert!(
            h.peak_bytes * 2 < total,
            "block: arena {} of {total} bytes in all",
            h.peak_bytes
        );
    }
}

/// `tpc compile FILE --devices 8 -o DIR` with `extra` arguments; the report and the names of
/// the files written.
fn compile_to_dir(tag: &str, extra: &[&str]) -> (std::path::PathBuf, serde_json::Value) {
    let dir = std::env::temp_dir().join(format!("tpc-out-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tpc"))
        .args(["compile", "examples/mlp.ir", "--devices", "8", "-o"])
        .arg(&dir)
        .args(extra)
        .current_dir(common::root())
        .output()
        .expect("tpc runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).expect("report"))
            .expect("json");
    (dir, report)
}

fn assert_written(dir: &std::path::Path, names: &[String]) {
    let mut names: Vec<&str> = names.iter().map(String::as_str).collect();
    names.extend(["sharded.ir", "kernels.cu", "report.json"]);
    if tpc::codegen::nvrtc::available() {
        names.push("kernels.ptx");
    }
    for n in names {
        let p = dir.join(n);
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert!(!text.is_empty(), "{n} is empty");
    }
    // The sharded IR parses back.
    let ir = std::fs::read_to_string(dir.join("sharded.ir")).expect("ir");
    tpc::load("sharded.ir", &ir).unwrap_or_else(|e| panic!("{}", e.render()));
}

fn compile_with_out_dir_writes_every_artifact() {
    // Without --bind: one host program for every rank and every binding.
    let (dir, report) = compile_to_dir("symbolic", &[]);
    assert_written(&dir, &["host0.host".to_string()]);
    assert!(!dir.join("rank0.host").exists());
    let host = std::fs::read_to_string(dir.join("host0.host")).expect("host0");
    assert!(
        host.starts_with("host ranks 0-7 of 8 (every binding"),
        "{host}"
    );
    assert!(host.contains("bf16[B, S, 768]"), "{host}");
    assert_eq!(report["host_programs"], 1);
    assert_eq!(
        report["host_program_of_rank"],
        serde_json::json!(vec![0; 8])
    );
    assert_eq!(
        report["peak_bytes_per_rank"].as_array().map(Vec::len),
        Some(8)
    );
    assert!(report["kernels"].as_array().is_some_and(|k| !k.is_empty()));
    let _ = std::fs::remove_dir_all(&dir);
    // With --bind: every rank's program at those sizes.
    let (dir, report) = compile_to_dir("bound", &["--bind", "B=4,S=64"]);
    let ranks: Vec<String> = (0..8).map(|r| format!("rank{r}.host")).collect();
    assert_written(&dir, &ranks);
    let host = std::fs::read_to_string(dir.join("rank3.host")).expect("rank3");
    assert!(host.contains("bf16[4, 64, 768]"), "{host}");
    let peaks = report["peak_bytes_per_rank"].as_array().expect("peaks");
    assert_eq!(peaks.len(), 8);
    assert_eq!(report["peak_bytes_per_device"], peaks[0]);
    let _ = std::fs::remove_dir_all(&dir);
}
