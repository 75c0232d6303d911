//! The subcommands: each reads its input, calls the library, prints.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use tpc::ir::{print, PrintMode};
use tpc::{Error, Result};

use crate::cli::{Backend, CheckArgs, CompileArgs, Emit, Executor, FmtArgs, RunArgs};

/// The file's text and the name diagnostics use for it; `-` is standard input.
fn read_source(path: &Path) -> Result<(String, String)> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|source| Error::Read {
                path: "<stdin>".into(),
                source,
            })?;
        return Ok(("<stdin>".into(), text));
    }
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: name.clone(),
        source,
    })?;
    // Invalid UTF-8 is replaced, so the parser reports it at its location instead of failing here.
    Ok((name, String::from_utf8_lossy(&bytes).into_owned()))
}

fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

pub fn check(args: CheckArgs) -> Result<ExitCode> {
    let (name, text) = read_source(&args.file)?;
    let graph = tpc::load(&name, &text)?;
    let file = tpc::SourceFile::new(&name, &text);
    let mut axis_sizes = Vec::new();
    let mesh = match args.devices {
        Some(d) => {
            axis_sizes = tpc::resolve_devices(&graph, d, &file)?;
            let axes: Vec<String> = axis_sizes
                .iter()
                .map(|(n, s)| format!("{n} = {s}"))
                .collect();
            format!(", mesh {}", axes.join(", "))
        }
        None => String::new(),
    };
    let phase = match &args.phase {
        Some(p) => {
            let phase: tpc::passes::Phase = p.parse()?;
            let context = tpc::passes::PassContext {
                symbols: tpc::parse_bindings(args.bind.as_deref().unwrap_or(DEFAULT_BINDINGS))?,
                axis_sizes: axis_sizes.into_iter().collect(),
            };
            let diagnostics = tpc::passes::verify_phase(&graph, phase, &context);
            if !diagnostics.is_empty() {
                return Err(tpc::pass_error(
                    tpc::passes::Error::InvalidInput { phase, diagnostics },
                    &file,
                ));
            }
            format!(", {phase} phase")
        }
        None => String::new(),
    };
    let ops = graph.len() - graph.params().len();
    println!(
        "{name}: ok (@{}: {}, {}, {}{mesh}{phase})",
        graph.name,
        count(graph.params().len(), "parameter"),
        count(ops, "op"),
        count(graph.outputs().len(), "result")
    );
    Ok(ExitCode::SUCCESS)
}

pub fn fmt(args: FmtArgs) -> Result<ExitCode> {
    let (name, text) = read_source(&args.file)?;
    let graph = tpc::load(&name, &text)?;
    let printed = print(&graph, PrintMode::Source);
    if args.check {
        if printed != text {
            eprintln!("{name} is not in canonical form; `tpc fmt {name}` prints it");
            return Ok(ExitCode::from(1));
        }
        return Ok(ExitCode::SUCCESS);
    }
    print!("{printed}");
    Ok(ExitCode::SUCCESS)
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let (name, text) = read_source(&args.file)?;
    let graph = tpc::load(&name, &text)?;
    let mut explicit = BTreeMap::new();
    for b in &args.bind {
        for (k, v) in tpc::parse_bindings(b)? {
            if explicit.insert(k.clone(), v).is_some() {
                return Err(Error::Usage(format!("symbol `{k}` is bound twice")));
            }
        }
    }
    let mut inputs = match &args.inputs {
        Some(p) => tpc::runtime::load_safetensors(p)?,
        None => BTreeMap::new(),
    };
    for key in inputs.keys() {
        if graph.params().iter().all(|&p| graph.name(p) != key) {
            eprintln!(
                "warning: input `{key}` is not a parameter of @{}; it is ignored",
                graph.name
            );
        }
    }
    let bindings = tpc::runtime::bind_symbols(&graph, &inputs, &explicit)?;
    tpc::runtime::draw_missing_inputs(&graph, &bindings, args.seed, &mut inputs)?;
    let start = Instant::now();
    let outputs = match args.devices {
        None => tpc::runtime::run_reference(&graph, &inputs, &bindings)?,
        Some(d) => {
            let file = tpc::SourceFile::new(&name, &text);
            let axes = tpc::resolve_devices(&graph, d, &file)?;
            tpc::check_bound_splits(&graph, &axes, &bindings, &file)?;
            let mut sharded = graph.clone();
            let mut pm = tpc::passes::PassManager::parse(&args.pipeline)?;
            pm.verify_each = true;
            pm.context.symbols = bindings.clone();
            pm.context.axis_sizes = axes.into_iter().collect();
            let records = pm
                .run(&mut sharded)
                .map_err(|e| tpc::pass_error(e, &tpc::SourceFile::new(&name, &text)))?;
            print_warnings(&records, &file);
            let sizes = sharded.mesh.resolve(Some(d))?;
            let mesh = tpc::runtime::ranks::MeshSizes(
                sizes.into_iter().map(|(n, s)| (n, s as usize)).collect(),
            );
            if mesh.world() != d as usize {
                return Err(Error::Usage(format!(
                    "the program declares no mesh, so it runs on one device, not {d}; add `mesh tp`"
                )));
            }
            let timeout = std::time::Duration::from_secs(300);
            match (args.executor, args.backend) {
                (Executor::Ops, Backend::Cpu) => {
                    tpc::runtime::ranks::run_sharded(&sharded, &mesh, &inputs, &bindings, timeout)?
                }
                (Executor::Host, backend) => {
                    let artifacts = tpc::compile::codegen(sharded, d, &bindings)
                        .map_err(|e| tpc::located(e, &tpc::SourceFile::new(&name, &text)))?;
                    match backend {
                        Backend::Cpu => tpc::runtime::host::run_host_programs(
                            &artifacts.sharded,
                            &artifacts.compiled,
                            &mesh,
                            &inputs,
                            &bindings,
                            timeout,
                        )?,
                        Backend::Cuda => tpc::run_cuda(&artifacts, &inputs)?,
                    }
                }
                (Executor::Emulated, Backend::Cpu) => {
                    let artifacts = tpc::compile::codegen(sharded, d, &bindings)
                        .map_err(|e| tpc::located(e, &tpc::SourceFile::new(&name, &text)))?;
                    tpc::run_emulated(&artifacts, &inputs)?
                }
                (Executor::Emulated, Backend::Cuda) => {
                    return Err(Error::Usage(
                        "--executor emulated runs the CUDA C on the CPU; drop --backend cuda"
                            .into(),
                    ))
                }
                (Executor::Ops, Backend::Cuda) => {
                    return Err(Error::Usage(
                        "--backend cuda runs host programs; drop --executor ops".into(),
                    ))
                }
            }
        }
    };
    let elapsed = start.elapsed();
    for (&v, t) in graph.outputs().iter().zip(&outputs) {
        println!(
            "%{}: {}{:?}  mean {:.6}  max|x| {:.6}",
            graph.name(v),
            t.dtype(),
            t.shape(),
            t.mean(),
            t.max_abs()
        );
    }
    println!("wall time: {:.3} ms", elapsed.as_secs_f64() * 1e3);
    let mut failed = false;
    // One process per rank holds only its pieces: nothing whole to compare.
    let pieces_only = args.backend == Backend::Cuda && std::env::var_os("TPC_RANK").is_some();
    if args.check && pieces_only {
        println!("check skipped: with TPC_RANK set each process holds only its own pieces");
    }
    if args.check && !pieces_only {
        let reference = tpc::runtime::run_reference(&graph, &inputs, &bindings)?;
        for ((&v, want), got) in graph.outputs().iter().zip(&reference).zip(&outputs) {
            let peak = want.max_abs();
            let max_abs = want
                .to_f32_vec()
                .iter()
                .zip(got.to_f32_vec())
                .map(|(a, b)| {
                    if a.is_nan() && b.is_nan() {
                        0.0
                    } else {
                        (a - b).abs() as f64
                    }
                })
                .fold(
                    0.0,
                    |m: f64, x| if x.is_nan() { f64::INFINITY } else { m.max(x) },
                );
            let rel = max_abs / peak.max(f64::MIN_POSITIVE);
            // A value computed in bf16 and cast to f32 carries bf16's rounding: the tolerance
            // is the loosest of the dtypes the program computes in.
            let tol = graph
                .values()
                .iter()
                .map(|&u| tolerance(graph.ty(u).dtype))
                .fold(tolerance(want.dtype()), f64::max);
            let ok = rel <= tol || max_abs == 0.0;
            failed |= !ok;
            println!(
                "check %{}: max abs err {max_abs:.3e}, rel err {rel:.3e} (tolerance {tol:.1e}) {}",
                graph.name(v),
                if ok { "ok" } else { "FAILED" }
            );
        }
    }
    if let Some(path) = &args.outputs {
        let named: Vec<(String, &tpc::runtime::Tensor)> = graph
            .outputs()
            .iter()
            .zip(&outputs)
            .map(|(&v, t)| (graph.name(v).to_string(), t))
            .collect();
        tpc::runtime::save_safetensors(path, &named)?;
        println!("wrote {} output(s) to {}", named.len(), path.display());
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// How far a sharded result may be from the reference, relative to the reference's largest
/// magnitude: a few roundings of the dtype (sums run in another order, a bias moves after a
/// reduction).
fn tolerance(dt: tpc::ir::DType) -> f64 {
    match dt {
        // 8 ulps of bf16 (2^-8 each): each rank rounds its partial sum before the allreduce.
        tpc::ir::DType::BF16 => 1.0 / 32.0,
        tpc::ir::DType::F16 => 1.0 / 256.0,
        tpc::ir::DType::F32 => 1e-5,
        _ => 0.0,
    }
}

/// Which passes `flag` (`--print-ir-before`, `--print-ir-after`) asks to print the IR around:
/// `all`, or names of passes the pipeline runs.
fn print_ir(
    flag: &str,
    value: Option<&str>,
    pm: &tpc::passes::PassManager,
) -> Result<tpc::passes::PrintIr> {
    Ok(match value {
        None => tpc::passes::PrintIr::None,
        Some("all") => tpc::passes::PrintIr::All,
        Some(list) => {
            let names: Vec<String> = list.split(',').map(|s| s.trim().to_string()).collect();
            for n in &names {
                if !pm.pass_names().contains(&n.as_str()) {
                    return Err(Error::Usage(format!(
                        "{flag} names `{n}`, which the pipeline does not run (it runs {})",
                        pm.pass_names().join(", ")
                    )));
                }
            }
            tpc::passes::PrintIr::Passes(names)
        }
    })
}

/// The symbol values `tpc compile` weighs layouts and counts bytes at without --bind.
const DEFAULT_BINDINGS: &str = "B=2,S=128";

fn bindings_text(b: &std::collections::BTreeMap<String, i64>) -> String {
    b.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The passes' warnings, located in `file`, on standard error.
fn print_warnings(records: &[tpc::passes::PassRecord], file: &tpc::SourceFile) {
    let warnings: Vec<tpc::Diagnostic> = records
        .iter()
        .flat_map(|r| r.warnings.iter().cloned())
        .collect();
    if !warnings.is_empty() {
        eprint!("{}", tpc::ir::diag::render(file, &warnings));
    }
}

pub fn compile(args: CompileArgs) -> Result<ExitCode> {
    let (name, text) = read_source(&args.file)?;
    let mut graph = tpc::load(&name, &text)?;
    let axis_sizes = match args.devices {
        Some(d) => tpc::resolve_devices(&graph, d, &tpc::SourceFile::new(&name, &text))?,
        None => Vec::new(),
    };
    let specialize = args.bind.is_some();
    let bindings = tpc::parse_bindings(args.bind.as_deref().unwrap_or(DEFAULT_BINDINGS))?;
    if specialize {
        let file = tpc::SourceFile::new(&name, &text);
        tpc::check_bound_splits(&graph, &axis_sizes, &bindings, &file)?;
    }
    let needs_codegen = args.out_dir.is_some()
        || matches!(
            args.emit,
            Emit::Cuda | Emit::Ptx | Emit::Host | Emit::Kernels
        );
    // `--emit local` prints what lower-to-local gives at the end of the pipeline.
    let lower = args.emit == Emit::Local && !needs_codegen && args.report.is_none();
    if lower && args.devices.is_none() {
        return Err(Error::Usage(
            "--emit local needs --devices, to size every piece".into(),
        ));
    }
    let mut pipeline = args.pipeline.clone();
    let lowered_by_pipeline = tpc::passes::PassManager::parse(&pipeline)?
        .pass_names()
        .contains(&"lower-to-local");
    if lower && !lowered_by_pipeline {
        pipeline = format!("{pipeline},lower-to-local{{rank={}}}", args.rank);
    }
    let mut pm = tpc::passes::PassManager::parse(&pipeline)?;
    pm.verify_each = true;
    pm.context.symbols = bindings.clone();
    pm.context.axis_sizes = axis_sizes.into_iter().collect();
    pm.print_before = print_ir("--print-ir-before", args.print_ir_before.as_deref(), &pm)?;
    pm.print_after = print_ir("--print-ir-after", args.print_ir_after.as_deref(), &pm)?;
    let file = tpc::SourceFile::new(&name, &text);
    let records = pm
        .run_dumping(&mut graph, &mut |when, pass, ir| match when {
            tpc::passes::Dump::Before => eprintln!("# IR before {pass}\n{ir}"),
            tpc::passes::Dump::After => eprintln!("# IR after {pass}\n{ir}"),
        })
        .map_err(|e| match e {
            // As `tpc::local::local_program` reports them.
            tpc::passes::Error::Lowering(m) => Error::Usage(m),
            e => tpc::pass_error(e, &file),
        })?;
    print_warnings(&records, &file);
    if args.time_passes {
        for r in &records {
            eprintln!(
                "{:>10.3} ms  {}{}",
                r.time.as_secs_f64() * 1e3,
                r.pass,
                if r.changed { "" } else { " (no change)" }
            );
        }
    }
    if needs_codegen {
        let artifacts =
            tpc::compile::codegen_with(graph, args.devices.unwrap_or(1), &bindings, specialize)
                .map_err(|e| tpc::located(e, &file))?;
        if let Some(dir) = &args.out_dir {
            let written = artifacts.write_dir(dir)?;
            let peak: Vec<String> = artifacts
                .hosts()
                .iter()
                .map(|h| h.peak_bytes.to_string())
                .collect();
            let peak = if artifacts.hosts().is_empty() {
                vec![format!(
                    "none until {} are bound",
                    artifacts.unbound_symbols().join(", ")
                )]
            } else {
                peak
            };
            eprintln!(
                "wrote {} files to {} ({} kernels, {} ranks, {} host program(s){}, peak bytes per rank{}: {}){}",
                written.len(),
                dir.display(),
                artifacts.kernels().len(),
                artifacts.templates.world(),
                artifacts.templates.programs.len(),
                if specialize { "" } else { " for every binding" },
                if specialize {
                    String::new()
                } else {
                    format!(" at {}", bindings_text(&bindings))
                },
                peak.join(", "),
                if tpc::codegen::nvrtc::available() {
                    String::new()
                } else {
                    format!(
                        "; no kernels.ptx: libnvrtc is missing ({})",
                        tpc::codegen::nvrtc::HOW_TO_GET_NVRTC
                    )
                }
            );
        }
        match args.emit {
            Emit::Cuda => print!("{}", artifacts.cuda),
            Emit::Ptx => print!("{}", artifacts.ptx("sm_90")?),
            Emit::Kernels => {
                for k in artifacts.kernels() {
                    println!("{k}");
                }
            }
            Emit::Host => {
                let text = if specialize {
                    artifacts.host_text(args.rank)
                } else {
                    artifacts.template_text(args.rank)
                };
                let text = text.ok_or_else(|| {
                    Error::Usage(format!(
                        "--rank {} is not one of the {} ranks",
                        args.rank,
                        artifacts.hosts().len()
                    ))
                })?;
                print!("{text}");
            }
            Emit::Ir if args.out_dir.is_none() => print!("{}", artifacts.sharded_ir()),
            _ => {}
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.report.is_some() {
        let devices = args
            .devices
            .ok_or_else(|| Error::Usage("--report needs --devices, to size every piece".into()))?;
        let report = match tpc::compile::codegen_with(graph.clone(), devices, &bindings, specialize)
        {
            Ok(a) => a.report,
            Err(e) => {
                let mut r = tpc::report::report(&graph, devices, &bindings)?;
                if let serde_json::Value::Object(m) = &mut r {
                    m.insert("codegen_error".into(), serde_json::json!(e.to_string()));
                }
                r
            }
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    match args.emit {
        Emit::Ir => print!("{}", print(&graph, PrintMode::Full)),
        Emit::Local => {
            let program = records
                .iter()
                .rev()
                .find_map(|r| r.local.as_ref())
                .ok_or_else(|| Error::Usage("the pipeline lowered nothing".into()))?;
            let sizes = graph.mesh.resolve(args.devices)?;
            print!(
                "{}",
                tpc::local::format_local(&graph, program, &sizes, &bindings)
            );
        }
        Emit::Cuda | Emit::Ptx | Emit::Host | Emit::Kernels => {}
    }
    Ok(ExitCode::SUCCESS)
}
