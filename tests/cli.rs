//! The `tpc` binary end to end: exit codes, messages, standard input, safetensors in and out.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::harness;

fn main() {
    let mut trials = harness::trials![
        emit_kernels_prints_the_kernel_ir,
        check_with_devices_resolves_the_mesh,
        errors_are_located_and_exit_1,
        huge_extents_and_garbage_are_errors_not_crashes,
        fmt_is_canonical_and_check_mode_detects_drift,
        run_prints_stats_and_round_trips_safetensors,
        help_explains_itself_with_examples,
        bad_usage_is_an_error,
        compile_propagates_and_reports_passes,
        run_on_n_devices_checks_against_the_reference,
        splits_that_would_leave_devices_idle_are_errors,
        emulated_executor_runs_the_cuda_c_or_says_why_not,
        emit_host_prints_the_template_for_every_size_or_with_bind_a_ranks_program,
        check_verifies_a_program_at_a_phase,
        compile_prints_the_ir_before_passes_and_takes_pass_options,
        an_allgather_that_undoes_an_annotation_is_a_warning
    ];
    trials.extend(harness::per_file(
        "check_accepts_every_example",
        &common::ir_files("examples"),
        check_accepts_every_example,
    ));
    harness::run(trials)
}

fn tpc(args: &[&str], stdin: Option<&str>) -> Output {
    tpc_with_env(args, stdin, &[])
}

fn tpc_with_env(args: &[&str], stdin: Option<&str>, vars: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tpc"))
        .args(args)
        .envs(vars.iter().copied())
        .current_dir(common::root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tpc starts");
    {
        let mut pipe = child.stdin.take().expect("stdin");
        if let Some(s) = stdin {
            pipe.write_all(s.as_bytes()).expect("write stdin");
        }
    }
    child.wait_with_output().expect("tpc finishes")
}

/// Runs `tpc` with `args`, which must fail with status 1 and say `message`.
fn fails_with(args: &[&str], message: &str) {
    let out = tpc(args, None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(message), "{}", text(&out.stderr));
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn check_accepts_every_example(f: &Path) {
    let rel = f
        .strip_prefix(common::root())
        .expect("under root")
        .display()
        .to_string();
    let out = tpc(&["check", &rel], None);
    assert!(out.status.success(), "{rel}: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok"), "{}", text(&out.stdout));
}

fn check_with_devices_resolves_the_mesh() {
    let out = tpc(&["check", "examples/mlp.ir", "--devices", "8"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("mesh tp = 8"),
        "{}",
        text(&out.stdout)
    );
    let src = "mesh dp = 2, tp = 4\n\nfunc @f(%x: f32[8]) -> f32[8] {\n  return %x\n}\n";
    let out = tpc(&["check", "-", "--devices", "6"], Some(src));
    assert_eq!(out.status.code(), Some(1));
    // Located at the `mesh` line, with the count that fits.
    for want in [
        "need 8 devices, but --devices is 6",
        "<stdin>:1:1",
        "the mesh is declared here",
        "pass --devices 8",
    ] {
        assert!(text(&out.stderr).contains(want), "{}", text(&out.stderr));
    }
    fails_with(
        &["compile", "examples/mlp_dp_tp.ir", "--devices", "4"],
        "examples/mlp_dp_tp.ir:3:1",
    );
}

fn errors_are_located_and_exit_1() {
    let src =
        "func @f(%x: f32[4]) -> f32[4] {\n  %y = exp(%z)\n  %w = frobnicate(%x)\n  return %y\n}\n";
    let out = tpc(&["check", "-"], Some(src));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("<stdin>:2:"), "{err}");
    assert!(
        err.contains("<stdin>:3:"),
        "both errors are reported: {err}"
    );
    assert!(err.contains('^'), "{err}");
}

fn huge_extents_and_garbage_are_errors_not_crashes() {
    for src in [
        "func @f(%x: f32[1000000000000000000]) -> f32[1] {\n  return %x\n}\n",
        "\u{0}\u{1}\u{ff}garbage((((",
        "",
        "func @f(%x: f32[B]) {\n  %y = exp(%x)\n  return %y\n}\n",
    ] {
        let out = tpc(&["check", "-"], Some(src));
        let code = out.status.code();
        if src.contains("[B]") {
            assert_eq!(code, Some(0), "{}", text(&out.stderr));
        } else {
            assert_eq!(code, Some(1), "{src:?}: {}", text(&out.stderr));
            assert!(text(&out.stderr).contains("error"), "{}", text(&out.stderr));
        }
    }
    // A binding far beyond memory is refused before allocating.
    let src = "func @f(%x: f32[B, 1024]) -> f32[B, 1024] {\n  %y = exp(%x)\n  return %y\n}\n";
    let out = tpc(&["run", "-", "--bind", "B=1000000000000"], Some(src));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

fn fmt_is_canonical_and_check_mode_detects_drift() {
    let messy = "func @f(%x:f32[4],%y :f32[4])->f32[4]{\n%z=add(%x,%y)\n  return %z\n}\n";
    let out = tpc(&["fmt", "-"], Some(messy));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let canonical = text(&out.stdout);
    assert!(canonical.contains("%z = add(%x, %y)"), "{canonical}");
    let again = tpc(&["fmt", "-"], Some(&canonical));
    assert_eq!(text(&again.stdout), canonical);
    assert_eq!(
        tpc(&["fmt", "--check", "-"], Some(messy)).status.code(),
        Some(1)
    );
    assert_eq!(
        tpc(&["fmt", "--check", "-"], Some(&canonical))
            .status
            .code(),
        Some(0)
    );
}

fn run_prints_stats_and_round_trips_safetensors() {
    let dir = std::env::temp_dir().join(format!("tpc-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out_path = dir.join("out.safetensors");
    let out_str = out_path.to_string_lossy().into_owned();
    let out = tpc(
        &[
            "run",
            "examples/mlp.ir",
            "--bind",
            "B=2,S=4",
            "--outputs",
            &out_str,
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("%o: bf16[2, 4, 768]"), "{stdout}");
    assert!(
        stdout.contains("mean") && stdout.contains("max|x|") && stdout.contains("wall time"),
        "{stdout}"
    );
    let saved = tpc::runtime::load_safetensors(&out_path).expect("outputs readable");
    assert_eq!(saved["o"].shape(), &[2, 4, 768]);

    // Feed a program's output back in as another program's input: symbols come from the shapes.
    let src = "func @g(%o: bf16[B, S, 768]) -> f32[B, S, 768] {\n  %c = cast(%o) {dtype = f32}\n  return %c\n}\n";
    let prog = dir.join("g.ir");
    std::fs::write(&prog, src).expect("write program");
    let out2 = tpc(
        &["run", &prog.to_string_lossy(), "--inputs", &out_str],
        None,
    );
    assert!(out2.status.success(), "{}", text(&out2.stderr));
    let mean_line = |s: &str, name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split("mean").nth(1).unwrap_or("").to_string())
    };
    assert_eq!(
        mean_line(&stdout, "%o"),
        mean_line(&text(&out2.stdout), "%c")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn help_explains_itself_with_examples() {
    for args in [
        vec!["--help"],
        vec!["check", "--help"],
        vec!["fmt", "--help"],
        vec!["run", "--help"],
    ] {
        let out = tpc(&args, None);
        assert!(out.status.success());
        assert!(
            text(&out.stdout).contains("Example"),
            "{args:?}: {}",
            text(&out.stdout)
        );
    }
}

fn bad_usage_is_an_error() {
    let out = tpc(&["run", "examples/mlp.ir", "--bind", "B=two"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("B=two") || text(&out.stderr).contains("two"),
        "{}",
        text(&out.stderr)
    );
    let out = tpc(&["run", "examples/mlp.ir"], None);
    assert_eq!(
        out.status.code(),
        Some(1),
        "unbound symbols must be an error"
    );
    assert!(
        text(&out.stderr).contains("--bind"),
        "{}",
        text(&out.stderr)
    );
    let out = tpc(&["check", "no/such/file.ir"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no/such/file.ir"));
}

fn compile_propagates_and_reports_passes() {
    let out = tpc(
        &[
            "compile",
            "examples/attention_glm.ir",
            "--devices",
            "8",
            "--time-passes",
            "--print-ir-after",
            "all",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ir = text(&out.stdout);
    assert!(
        ir.contains("%q = permute(%q.1) {dims = [0, 2, 1, 3]} : bf16[B, 16@tp, S, 48]"),
        "{ir}"
    );
    assert!(ir.contains("partial(tp)"), "{ir}");
    let err = text(&out.stderr);
    assert!(
        err.contains("# IR after propagate-sharding") && err.contains("ms  propagate-sharding"),
        "{err}"
    );
    fails_with(
        &[
            "compile",
            "examples/mlp.ir",
            "--pipeline",
            "propagate-shardin",
        ],
        "the passes are: decompose-before-sharding, propagate-sharding",
    );
    let out = tpc(
        &["compile", "examples/mlp.ir", "--print-ir-after", "dce"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
}

fn run_on_n_devices_checks_against_the_reference() {
    let out = tpc(
        &[
            "run",
            "examples/block.ir",
            "--bind",
            "B=1,S=8",
            "--devices",
            "8",
            "--check",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("check %out: max abs err"),
        "{}",
        text(&out.stdout)
    );
    // Without resharding, code generation refuses the program, at the ops that would need
    // communication, instead of running it.
    let out = tpc(
        &[
            "run",
            "examples/mlp.ir",
            "--bind",
            "B=1,S=8",
            "--devices",
            "8",
            "--check",
            "--pipeline",
            "propagate-sharding",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("is not computed locally on `tp`"),
        "{}",
        text(&out.stderr)
    );
    // --check needs --devices.
    let out = tpc(
        &["run", "examples/mlp.ir", "--bind", "B=1,S=8", "--check"],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
}

fn splits_that_would_leave_devices_idle_are_errors() {
    let src = "mesh tp\n\nfunc @f(%w: f32[(3, 4@tp, 8), 16]) {\n  %y = exp(%w)\n  return %y\n}\n";
    for cmd in ["check", "compile"] {
        let out = tpc(&[cmd, "-", "--devices", "8"], Some(src));
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let err = text(&out.stderr);
        assert!(
            err.contains("splits a factor of 4 in dim 0 over 8 devices")
                && err.contains("<stdin>:3:9"),
            "{err}"
        );
    }
    // Uneven is fine: 4 over 3 devices gives 2, 1, 1.
    assert_eq!(
        tpc(&["check", "-", "--devices", "3"], Some(src))
            .status
            .code(),
        Some(0)
    );
    // A symbol's split is checked when it is bound: B = 2 rows over 4 devices leave two idle.
    let src = "mesh dp

func @f(%x: f32[B@dp, 64]) -> f32[B@dp, 64] {
  %y = exp(%x)
  return %y
}
";
    for cmd in ["compile", "run"] {
        let out = tpc(&[cmd, "-", "--devices", "4", "--bind", "B=2"], Some(src));
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let err = text(&out.stderr);
        assert!(
            err.contains("splits a factor of B = 2 in dim 0 over 4 devices (`dp`)")
                && err.contains("<stdin>:3:9")
                && err.contains("bind B so that it is at least 4"),
            "{cmd}: {err}"
        );
    }
    // Unbound (templates for every B) and bound large enough, it compiles and runs.
    for args in [
        &["compile", "-", "--devices", "4"][..],
        &["run", "-", "--devices", "4", "--bind", "B=4"],
    ] {
        let out = tpc(args, Some(src));
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
}

fn emulated_executor_runs_the_cuda_c_or_says_why_not() {
    let args = [
        "run",
        "examples/mlp.ir",
        "--bind",
        "B=1,S=8",
        "--devices",
        "2",
        "--check",
        "--executor",
        "emulated",
    ];
    // A compiler that does not exist: a clear error and status 1, not a panic.
    let out = tpc_with_env(&args, None, &[("TPC_CXX", "/nonexistent/c++")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no C++ compiler found"),
        "{}",
        text(&out.stderr)
    );
    // --executor emulated with --backend cuda is a usage error.
    let mut with_cuda = args.to_vec();
    with_cuda.extend(["--backend", "cuda"]);
    let out = tpc(&with_cuda, None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("drop --backend cuda"),
        "{}",
        text(&out.stderr)
    );
    if !common::present_or_skip(common::cxx_missing(), "TPC_REQUIRE_CXX") {
        return;
    }
    let out = tpc(&args, None);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("check %o: max abs err"),
        "{}",
        text(&out.stdout)
    );
}

fn emit_host_prints_the_template_for_every_size_or_with_bind_a_ranks_program() {
    let out = tpc(
        &[
            "compile",
            "examples/block_seqpar.ir",
            "--devices",
            "8",
            "--emit",
            "host",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let template = text(&out.stdout);
    assert!(
        template.starts_with("host ranks 0-7 of 8 (every binding"),
        "{template}"
    );
    assert!(template.contains("bf16[B, S/8, 768]"), "{template}");
    // Specialized to S=12 over 8 ranks: uneven, and rank 7 holds one position.
    let out = tpc(
        &[
            "compile",
            "examples/block_seqpar.ir",
            "--devices",
            "8",
            "--emit",
            "host",
            "--rank",
            "7",
            "--bind",
            "B=2,S=12",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let bound = text(&out.stdout);
    assert!(bound.starts_with("host rank 7 of 8 (arena "), "{bound}");
    assert!(bound.contains("%x: bf16[2, 1, 768]"), "{bound}");
}

/// A hand-written program claimed to be resharded whose `linear` would need its input
/// gathered, with no collective to do it.
const NON_LOCAL: &str = "mesh tp

func @f(%x: bf16[B, S, 768@tp], %w: bf16[3072@tp, 768]) -> bf16[B, S, 3072] {
  %h = linear(%x, %w) : bf16[B, S, 3072@tp]
  %g = allgather(%h) {axis = tp} : bf16[B, S, 3072]
  return %g
}
";

fn check_verifies_a_program_at_a_phase() {
    // Valid as a program, so plain `check` accepts it.
    let out = tpc(&["check", "-"], Some(NON_LOCAL));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = tpc(
        &["check", "-", "--phase", "resharded", "--devices", "8"],
        Some(NON_LOCAL),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "error: at the resharded phase: `%h` (`linear`) is not computed locally on `tp`: \
             it needs `%x` whole there, but `%x` is split in dim 2 as 768@tp"
        ) && err.contains("<stdin>:4:3")
            && err.contains("`%x` is laid out here"),
        "{err}"
    );
    // What `tpc compile` prints is at the resharded phase.
    let compiled = tpc(&["compile", "examples/block.ir", "--devices", "8"], None);
    assert!(compiled.status.success(), "{}", text(&compiled.stderr));
    let compiled = text(&compiled.stdout);
    for phase in ["resharded", "local"] {
        let out = tpc(
            &["check", "-", "--phase", phase, "--devices", "8"],
            Some(&compiled),
        );
        assert!(out.status.success(), "{phase}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains(&format!("mesh tp = 8, {phase} phase)")),
            "{}",
            text(&out.stdout)
        );
    }
    // The user's program is not at the sharded phase: propagation would add layouts.
    fails_with(&["check", "examples/mlp_auto.ir", "--phase", "sharded"], "`%h` is laid out as bf16[B, S, 3072], but its ops' factor rules give it bf16[B, S, 3072@tp]");
    let out = tpc(&["check", "examples/mlp.ir", "--phase", "lowered"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .contains("unknown phase `lowered`; the phases are: global, sharded, resharded, local"),
        "{}",
        text(&out.stderr)
    );
}

fn compile_prints_the_ir_before_passes_and_takes_pass_options() {
    let out = tpc(
        &[
            "compile",
            "examples/mlp_auto.ir",
            "--devices",
            "8",
            "--print-ir-before",
            "insert-resharding",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    let before = err
        .strip_prefix("# IR before insert-resharding\n")
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        before.contains("bf16[B, S, 3072@tp]") && !before.contains("= allreduce("),
        "{err}"
    );
    assert!(!err.contains("# IR before propagate-sharding"), "{err}");
    fails_with(
        &["compile", "examples/mlp.ir", "--print-ir-before", "dce"],
        "--print-ir-before names `dce`",
    );
    // Options in braces; a bad value says what the option takes.
    let out = tpc(
        &[
            "compile",
            "examples/mlp.ir",
            "--devices",
            "8",
            "--pipeline",
            "propagate-sharding{cost=bytes},insert-resharding,reorder-sharded-axis{all-to-all=false}",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    fails_with(&["compile", "examples/mlp.ir", "--pipeline", "propagate-sharding{cost=flops}"], "`flops` is not a value of option `cost` of pass `propagate-sharding`: it takes one of bytes");
    // A pass before its phase names both.
    fails_with(&["compile", "examples/mlp.ir", "--pipeline", "dce,insert-resharding"], "pass `insert-resharding` needs the graph at the sharded phase, but it is at the global phase");
    // `--emit local` is lower-to-local at the end of the pipeline: the same as naming it.
    let emit = tpc(
        &[
            "compile",
            "examples/mlp.ir",
            "--devices",
            "8",
            "--emit",
            "local",
            "--rank",
            "3",
        ],
        None,
    );
    let named = tpc(
        &[
            "compile",
            "examples/mlp.ir",
            "--devices",
            "8",
            "--emit",
            "local",
            "--pipeline",
            "propagate-sharding,insert-resharding,reorder-sharded-axis,lower-to-local{rank=3}",
        ],
        None,
    );
    assert!(emit.status.success(), "{}", text(&emit.stderr));
    assert!(text(&emit.stdout).starts_with("# @mlp on rank 3 (tp 3 of 8)"));
    assert_eq!(text(&emit.stdout), text(&named.stdout));
}

/// Logits split on their classes by annotation, into a softmax that needs them whole: the plan
/// gathers what the program split. It compiles (the plan is correct) and says so, located; the
/// plain MLP says nothing.
fn an_allgather_that_undoes_an_annotation_is_a_warning() {
    let src = "mesh tp\nfunc @f(%x: f32[B, 64@tp]) -> f32[B, 64] {\n  %p = softmax(%x) {dim = 1}\n  return %p\n}\n";
    for cmd in ["compile", "run"] {
        let out = tpc(&[cmd, "-", "--devices", "8", "--bind", "B=1"], Some(src));
        assert!(out.status.success(), "{cmd}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        for want in [
            "warning: `%x` is split over `tp` as written, but is gathered whole over `tp` for `%p`",
            "<stdin>:3:3",
            "the allgather undoes the annotation",
        ] {
            assert!(err.contains(want), "{cmd}: {err}");
        }
    }
    let out = tpc(&["compile", "examples/mlp.ir", "--devices", "8"], None);
    assert!(out.status.success());
    assert!(
        !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );
    // An embedder gets them with the artifacts.
    let a = tpc::compile("w.ir", src, &tpc::CompileOptions::devices(8)).expect("compiles");
    let names: Vec<&str> = a.warnings.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(
        names[0].starts_with("`%x` is split over `tp` as written"),
        "{names:?}"
    );
}

/// `--emit kernels` prints every generated kernel in the kernel IR (the host program names them
/// only); a value clap does not know is a usage error, status 2.
fn emit_kernels_prints_the_kernel_ir() {
    let out = tpc(
        &[
            "compile",
            "examples/lm_head_loss.ir",
            "--devices",
            "8",
            "--emit",
            "kernels",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let kir = text(&out.stdout);
    for want in [
        "kernel @k0_embedding_tok embedding bf16",
        "rows over [n1]",
        "row.max v0",
        "pick f32 ignore_index=-100",
        "kept ignore_index=-100",
    ] {
        assert!(kir.contains(want), "{want}\n{kir}");
    }
    let bad = tpc(&["compile", "examples/mlp.ir", "--emit", "kernel"], None);
    assert_eq!(bad.status.code(), Some(2));
}
