//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub mod harness;
pub mod program_gen;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `*.ir` file in `dir` (relative to the root), sorted by name.
pub fn ir_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "ir"))
        .collect();
    files.sort();
    files
}

pub fn stem(p: &Path) -> String {
    p.file_stem()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}

/// Parses and verifies a file, panicking with the rendered diagnostics if it has errors.
pub fn load(path: &Path) -> tpc::Graph {
    let text = std::fs::read_to_string(path).expect("readable file");
    let rel = path
        .strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string();
    tpc::load(&rel, &text).unwrap_or_else(|e| panic!("{}", e.render()))
}

/// The program at `path` with its composites decomposed (what segmentation takes).
pub fn load_primitive(path: &Path) -> tpc::Graph {
    let mut g = load(path);
    tpc::passes::decompose::run(&mut g, true).expect("decompose");
    g
}

/// The sharding passes' filetest directories (and `decompose`'s, which shard first).
pub const PASS_DIRS: [&str; 5] = [
    "tests/passes/propagate-sharding",
    "tests/passes/insert-resharding",
    "tests/passes/reorder-sharded-axis",
    "tests/passes/decompose",
    "tests/passes/decompose-before-sharding",
];

/// The device count a pass case runs on: its mesh's fixed sizes when all are fixed (`mesh dp =
/// 2, tp = 4` is 8), else 4.
pub fn case_devices(g: &tpc::Graph) -> i64 {
    let sizes: Vec<i64> = g.mesh.axes.iter().filter_map(|a| a.size).collect();
    if !sizes.is_empty() && sizes.len() == g.mesh.axes.len() {
        sizes.iter().product()
    } else {
        4
    }
}

/// Whether a test's tool is here (`missing` is None); otherwise says why it skips and returns
/// false, or fails when the environment variable `require` is `1` (as CI sets it).
pub fn present_or_skip(missing: Option<String>, require: &str) -> bool {
    let Some(why) = missing else {
        return true;
    };
    let required = std::env::var(require).is_ok_and(|v| v == "1");
    assert!(!required, "{require}=1 but {why}");
    eprintln!("skipped: {why}");
    false
}

/// Why the NVRTC tests cannot run here, if they cannot.
pub fn nvrtc_missing() -> Option<String> {
    (!tpc::codegen::nvrtc::available()).then(|| {
        format!(
            "libnvrtc is missing: {}",
            tpc::codegen::nvrtc::HOW_TO_GET_NVRTC
        )
    })
}

/// Why the emulator tests cannot run here, if they cannot.
pub fn cxx_missing() -> Option<String> {
    tpc::runtime::emulate::find_compiler()
        .is_none()
        .then(|| format!("no C++ compiler: {}", tpc::runtime::emulate::HOW_TO_GET_CXX))
}

/// The largest |want - got| relative to the largest |want|; NaN where both are NaN counts as
/// equal, NaN on one side only as infinitely far.
pub fn relative_error(want: &tpc::runtime::Tensor, got: &tpc::runtime::Tensor) -> f64 {
    assert_eq!(want.shape(), got.shape());
    let peak = want.max_abs().max(1e-6);
    let mut worst = 0.0f64;
    for (x, y) in want.to_f32_vec().iter().zip(got.to_f32_vec()) {
        let d = if x.is_nan() && y.is_nan() {
            0.0
        } else {
            (x - y).abs() as f64
        };
        worst = if d.is_nan() {
            f64::INFINITY
        } else {
            worst.max(d)
        };
    }
    worst / peak
}
