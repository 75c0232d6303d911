//! Registers and spills of every generated kernel on sm_90: the PTX that NVRTC makes of every
//! example's kernels (at 1 and 8 devices) and of every hand-built kernel kind is assembled by
//! `ptxas -v` (from the `nvidia-cuda-nvcc-cu12` wheel; no GPU needed), which must report no spill
//! stores or loads. The table of registers per kernel is printed (`cargo test --test ptxas --
//! --nocapture`).
//!
//! ptxas is `TPC_PTXAS`, else `ptxas` on PATH. Without it (or without libnvrtc) the test says so
//! and passes; CI sets TPC_REQUIRE_PTXAS=1, which makes that a failure.

mod common;
mod kinds;

use std::process::Command;

use tpc::codegen::cuda::module_source;
use tpc::codegen::kir::Kernel;

fn ptxas() -> Option<String> {
    let cmd = std::env::var("TPC_PTXAS").unwrap_or_else(|_| "ptxas".into());
    let runs = Command::new(&cmd)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    runs.then_some(cmd)
}

/// Per kernel: (name, registers, spill store bytes, spill load bytes, shared bytes).
fn assemble(ptxas: &str, kernels: &[Kernel], what: &str) -> Vec<(String, u32, u32, u32, u32)> {
    let ptx = tpc::codegen::nvrtc::compile(&module_source(kernels), "sm_90")
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let dir = std::env::temp_dir().join(format!("tpc-ptxas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join(format!("{}.ptx", what.replace(['/', ' '], "_")));
    std::fs::write(&file, ptx).expect("write ptx");
    let out = Command::new(ptxas)
        .args(["-arch=sm_90", "-v", "-o", "/dev/null"])
        .arg(&file)
        .output()
        .expect("ptxas runs");
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{what}: ptxas failed:\n{log}");
    let number_before = |line: &str, word: &str| -> u32 {
        let words: Vec<&str> = line.split_whitespace().collect();
        words
            .windows(2)
            .find(|w| w[1].trim_end_matches(',') == word)
            .and_then(|w| w[0].parse().ok())
            .unwrap_or(0)
    };
    let mut rows: Vec<(String, u32, u32, u32, u32)> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            rows.push((name, 0, 0, 0, 0));
        } else if let Some(row) = rows.last_mut() {
            if line.contains("spill stores") {
                // "N bytes stack frame, N bytes spill stores, N bytes spill loads"
                let parts: Vec<&str> = line.split(',').collect();
                row.2 = parts
                    .iter()
                    .find(|p| p.contains("spill stores"))
                    .map(|p| number_before(p, "bytes"))
                    .unwrap_or(0);
                row.3 = parts
                    .iter()
                    .find(|p| p.contains("spill loads"))
                    .map(|p| number_before(p, "bytes"))
                    .unwrap_or(0);
            } else if line.contains("Used") && line.contains("registers") {
                row.1 = number_before(line, "registers");
                row.4 = number_before(line, "bytes");
            }
        }
    }
    assert_eq!(
        rows.len(),
        kernels.len(),
        "{what}: ptxas reported {} kernels of {}:\n{log}",
        rows.len(),
        kernels.len()
    );
    rows
}

#[test]
fn no_kernel_spills_registers_on_sm_90() {
    let ptxas = match (ptxas(), common::nvrtc_missing()) {
        (Some(p), None) => p,
        (p, nvrtc) => {
            let why = match p {
                None => "no ptxas runs here (python3 -m pip install nvidia-cuda-nvcc-cu12; set TPC_PTXAS)".to_string(),
                Some(_) => nvrtc.unwrap_or_default(),
            };
            common::present_or_skip(Some(why), "TPC_REQUIRE_PTXAS");
            return;
        }
    };
    let bindings = tpc::parse_bindings("B=2,S=128").expect("bindings");
    let mut modules: Vec<(String, Vec<Kernel>)> = vec![("kinds".into(), kinds::all_kernels())];
    for path in common::ir_files("examples") {
        let g = common::load(&path);
        let text = std::fs::read_to_string(&path).expect("readable");
        let fixed: i64 = g.mesh.axes.iter().filter_map(|a| a.size).product();
        for devices in if fixed > 1 { vec![fixed] } else { vec![1, 8] } {
            let options = tpc::CompileOptions {
                devices: Some(devices),
                bindings: bindings.clone(),
                ..tpc::CompileOptions::default()
            };
            let a = tpc::compile(&common::stem(&path), &text, &options)
                .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.render()));
            modules.push((
                format!("{} x{devices}", common::stem(&path)),
                a.compiled.kernels.clone(),
            ));
        }
    }
    let mut spills = Vec::new();
    println!(
        "{:<28} {:<28} {:>5} {:>7} {:>7} {:>6}",
        "module", "kernel", "regs", "st", "ld", "smem"
    );
    for (what, kernels) in &modules {
        for (name, regs, st, ld, smem) in assemble(&ptxas, kernels, what) {
            println!("{what:<28} {name:<28} {regs:>5} {st:>7} {ld:>7} {smem:>6}");
            if st > 0 || ld > 0 {
                spills.push(format!("{what}: {name} spills {st} bytes, reloads {ld}"));
            }
        }
    }
    assert!(
        spills.is_empty(),
        "kernels spill on sm_90:\n{}",
        spills.join("\n")
    );
}
