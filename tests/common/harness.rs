//! File-driven tests as one libtest trial per case, for the `harness = false` test targets
//! (Cargo.toml): a failing case hides no other, every failing case is listed at the end, and one
//! case runs by name, as in `cargo test --test passes -- insert-resharding::mlp_auto` (a
//! substring filter like libtest's; `--exact` for exactly that name, `--list` for all names).

use std::path::{Path, PathBuf};

use libtest_mimic::{Arguments, Completion, Trial};

/// A trial of a check that panics when it fails, as a `#[test]` function does.
pub fn trial(name: impl Into<String>, check: impl FnOnce() + Send + 'static) -> Trial {
    Trial::test(name, move || {
        check();
        Ok(())
    })
}

/// A file's name in trial names: `<pass>::<case>` for a pass filetest
/// (`tests/passes/<pass>/<case>.ir`), else the file's stem.
pub fn case_name(path: &Path) -> String {
    let stem = super::stem(path);
    match path.parent() {
        Some(dir) if dir.parent().is_some_and(|p| p.ends_with("tests/passes")) => {
            format!("{}::{stem}", super::stem(dir))
        }
        _ => stem,
    }
}

/// One trial per file, `<test>::<case name>`, each running `check` on its file.
pub fn per_file(test: &str, files: &[PathBuf], check: fn(&Path)) -> Vec<Trial> {
    files
        .iter()
        .map(|path| {
            let path = path.clone();
            trial(format!("{test}::{}", case_name(&path)), move || {
                check(&path)
            })
        })
        .collect()
}

/// Like [`per_file`] for checks that need a tool: where `missing` says why it is not here, each
/// trial is reported ignored with (the start of) that reason, or fails when the environment variable `require`
/// is `1` (as CI sets it), as [`super::present_or_skip`] decides.
pub fn per_file_needing(
    test: &str,
    files: &[PathBuf],
    missing: fn() -> Option<String>,
    require: &'static str,
    check: fn(&Path),
) -> Vec<Trial> {
    files
        .iter()
        .map(|path| {
            let path = path.clone();
            Trial::ignorable_test(format!("{test}::{}", case_name(&path)), move || {
                if let Some(why) = missing() {
                    let required = std::env::var(require).is_ok_and(|v| v == "1");
                    assert!(!required, "{require}=1 but {why}");
                    // The reason's first clause; the how-to after it is in the docs.
                    let short = why.split(": ").next().unwrap_or(&why).to_string();
                    return Ok(Completion::ignored_with(short));
                }
                check(&path);
                Ok(Completion::Completed)
            })
        })
        .collect()
}

/// Runs the trials as libtest runs tests (its filters and flags from the command line) and exits
/// with its status. Trial names must be unique, so that each one runs by its name.
pub fn run(trials: Vec<Trial>) -> ! {
    let mut names: Vec<&str> = trials.iter().map(Trial::name).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        panic!("two trials are named {}", w[0]);
    }
    libtest_mimic::run(&Arguments::from_args(), trials).exit()
}

/// Trials of plain test functions (`fn()` that panic on failure), each named as its function:
/// `harness::trials![a, b]`.
#[allow(unused_macros)]
macro_rules! trials {
    ($($test:ident),* $(,)?) => {
        vec![$($crate::common::harness::trial(stringify!($test), $test)),*]
    };
}
#[allow(unused_imports)]
pub(crate) use trials;
