//! `compile`: from a program to everything a GPU runs, as values an embedder can keep: the
//! sharded IR, the kernels (as kernel IR, CUDA C and, where NVRTC is present, PTX), each rank's
//! host program, and the report. The CLI's `tpc compile -o DIR` writes these to files.

use std::collections::BTreeMap;
use std::path::Path;
use tpc_ir::ops::CollectiveOp;

use serde_json::{json, Value};
use tpc_codegen::host::{Compiled, HostProgram, Step};
use tpc_codegen::kir::Kernel;
use tpc_codegen::template::{HostTemplate, Templates};
use tpc_ir::{print, Diagnostic, Graph, PrintMode, SourceFile};

use crate::{Error, Result};

/// How to compile.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// Devices to shard over; `None` compiles for one device.
    pub devices: Option<i64>,
    /// Symbol values: the passes weigh layouts by bytes at these sizes, and host programs are
    /// sized with them (kernels take extents as arguments and serve any size).
    pub bindings: BTreeMap<String, i64>,
    /// The passes to run (`tpc_passes::DEFAULT_PIPELINE` by default).
    pub pipeline: String,
    /// Host programs for `bindings` only (uneven splits of symbolic extents cut as those values
    /// cut them), instead of templates valid for every binding (the default).
    pub specialize: bool,
}

impl Default for CompileOptions {
    fn default() -> CompileOptions {
        CompileOptions {
            devices: None,
            bindings: [("B", 2), ("S", 128)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            pipeline: tpc_passes::DEFAULT_PIPELINE.to_string(),
            specialize: false,
        }
    }
}

impl CompileOptions {
    /// Options for `devices` devices, other settings as default.
    pub fn devices(devices: i64) -> CompileOptions {
        CompileOptions {
            devices: Some(devices),
            ..CompileOptions::default()
        }
    }
}

/// What `compile` produces.
#[derive(Clone, Debug)]
pub struct Artifacts {
    /// The program after the pipeline: every value's layout, every collective.
    pub sharded: Graph,
    /// Mesh axis sizes.
    pub mesh: Vec<(String, usize)>,
    /// The symbol values `compiled` and the report are bound at.
    pub bindings: BTreeMap<String, i64>,
    /// The host templates: every rank's program for every binding (or, when `specialized`,
    /// for `bindings` only). Ranks that hold pieces of the same shapes share one.
    pub templates: Templates,
    /// Whether the templates serve `bindings` only.
    pub specialized: bool,
    /// The generated kernels and each rank's host program, bound at `bindings`.
    pub compiled: Compiled,
    /// All kernels as one CUDA C file.
    pub cuda: String,
    /// The report: collectives and their bytes, kernels, peak memory per rank.
    pub report: Value,
    /// The passes' warnings (an annotated split that an allgather undoes), located in the
    /// program compiled (render them with its source).
    pub warnings: Vec<Diagnostic>,
}

impl Artifacts {
    pub fn kernels(&self) -> &[Kernel] {
        &self.compiled.kernels
    }

    pub fn hosts(&self) -> &[HostProgram] {
        &self.compiled.hosts
    }

    /// The sharded program as text (it parses back to the same program).
    pub fn sharded_ir(&self) -> String {
        print(&self.sharded, PrintMode::Full)
    }

    /// The artifacts at other symbol values, from the same templates (no recompile): host
    /// programs bound at `bindings` and the report at those sizes. A binding that breaks a
    /// divisibility the plan needs is an error naming the symbol.
    pub fn bind(&self, bindings: &BTreeMap<String, i64>) -> Result<Artifacts> {
        if self.specialized && *bindings != self.bindings {
            return Err(Error::Usage(
                "these artifacts were compiled for one binding (specialized); compile without \
                 `specialize` (no --bind) to bind them at other values"
                    .into(),
            ));
        }
        let sizes: Vec<(String, i64)> = self
            .mesh
            .iter()
            .map(|(n, s)| (n.clone(), *s as i64))
            .collect();
        let empty = tpc_ir::verify::verify_bound_splits(&self.sharded, &sizes, bindings);
        if let Some(d) = empty.first() {
            return Err(Error::Usage(format!(
                "{}{}",
                d.message,
                d.help
                    .as_deref()
                    .map(|h| format!("; {h}"))
                    .unwrap_or_default()
            )));
        }
        let compiled = self.templates.bind(bindings).map_err(Error::Codegen)?;
        let report = full_report(
            &self.sharded,
            &self.mesh,
            bindings,
            &self.templates,
            &compiled,
        )?;
        Ok(Artifacts {
            bindings: bindings.clone(),
            compiled,
            report,
            ..self.clone()
        })
    }

    /// The program's symbols that `bindings` does not give (then only the templates exist).
    pub fn unbound_symbols(&self) -> Vec<String> {
        unbound_symbols(&self.sharded, &self.bindings)
    }

    /// An error unless every rank's host program is bound (a program with symbols that
    /// `bindings` does not give has only its templates until [`Artifacts::bind`]).
    fn check_bound(&self) -> Result<()> {
        if self.compiled.hosts.len() == self.templates.world() {
            return Ok(());
        }
        let unbound = self.unbound_symbols().join(", ");
        Err(Error::Usage(format!(
            "the host programs are not bound to sizes: bind {unbound} (Artifacts::bind) before running them"
        )))
    }

    /// The host template rank `rank` runs, as text (symbolic sizes).
    pub fn template_text(&self, rank: usize) -> Option<String> {
        self.templates
            .program_of(rank)
            .map(|t| format!("{}\n", t.display(&self.templates.kernels)))
    }

    /// Rank `rank`'s host program, bound at `bindings`, as text.
    pub fn host_text(&self, rank: usize) -> Option<String> {
        self.compiled
            .hosts
            .get(rank)
            .map(|h| format!("{}\n", h.display(&self.compiled.kernels)))
    }

    /// The kernels in PTX for `arch` (`sm_80`, `sm_90`), through NVRTC.
    pub fn ptx(&self, arch: &'static str) -> Result<String> {
        tpc_codegen::nvrtc::compile(&self.cuda, arch).map_err(Error::Codegen)
    }

    /// Writes `sharded.ir`, `kernels.cu`, `kernels.ptx` (sm_90, when NVRTC is present), the
    /// host programs and `report.json` into `dir`; returns the paths written. The host
    /// programs are `host<k>.host`, one per template (symbolic, for every binding; the report's
    /// `host_program_of_rank` says which rank runs which), or, when specialized,
    /// `rank<r>.host` bound at `bindings`.
    pub fn write_dir(&self, dir: &Path) -> Result<Vec<std::path::PathBuf>> {
        let io = |path: &Path, e: std::io::Error| Error::Write {
            path: path.display().to_string(),
            source: e,
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let mut files: Vec<(String, String)> = vec![
            ("sharded.ir".into(), self.sharded_ir()),
            ("kernels.cu".into(), self.cuda.clone()),
        ];
        if tpc_codegen::nvrtc::available() {
            files.push(("kernels.ptx".into(), self.ptx("sm_90")?));
        }
        if self.specialized {
            for (r, _) in self.compiled.hosts.iter().enumerate() {
                files.push((
                    format!("rank{r}.host"),
                    self.host_text(r).unwrap_or_default(),
                ));
            }
        } else {
            for (k, t) in self.templates.programs.iter().enumerate() {
                files.push((
                    format!("host{k}.host"),
                    format!("{}\n", t.display(&self.templates.kernels)),
                ));
            }
        }
        files.push((
            "report.json".into(),
            serde_json::to_string_pretty(&self.report).unwrap_or_default() + "\n",
        ));
        let mut written = Vec::new();
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|e| io(&path, e))?;
            written.push(path);
        }
        Ok(written)
    }
}

/// Compiles program text; `name` is what diagnostics call the file.
pub fn compile(name: &str, text: &str, options: &CompileOptions) -> Result<Artifacts> {
    let graph = crate::load(name, text)?;
    compile_loaded(graph, &SourceFile::new(name, text), options)
}

/// Compiles a graph built in Rust (diagnostics point into its printed form).
pub fn compile_graph(graph: Graph, options: &CompileOptions) -> Result<Artifacts> {
    let text = print(&graph, PrintMode::Source);
    let file = SourceFile::new(format!("@{}", graph.name), &text);
    // Through the text, so the graph is verified like a parsed one.
    let graph = crate::load(&file.name, &text)?;
    compile_loaded(graph, &file, options)
}

fn compile_loaded(
    mut graph: Graph,
    file: &SourceFile,
    options: &CompileOptions,
) -> Result<Artifacts> {
    let devices = options.devices.unwrap_or(1);
    let axes = crate::resolve_devices(&graph, devices, file)?;
    // Specialized, the binding is the program's; otherwise it only weighs the plan.
    if options.specialize {
        crate::check_bound_splits(&graph, &axes, &options.bindings, file)?;
    }
    let mut pm = tpc_passes::PassManager::parse(&options.pipeline)?;
    pm.verify_each = true;
    pm.context.symbols = options.bindings.clone();
    pm.context.axis_sizes = axes.iter().cloned().collect();
    let records = pm.run(&mut graph).map_err(|e| crate::pass_error(e, file))?;
    let mut artifacts = codegen_with(graph, devices, &options.bindings, options.specialize)?;
    artifacts.warnings = records.into_iter().flat_map(|r| r.warnings).collect();
    Ok(artifacts)
}

/// Code generation for a program the passes have sharded (for `devices` devices), specialized
/// to `bindings` (see [`codegen_with`]).
pub fn codegen(graph: Graph, devices: i64, bindings: &BTreeMap<String, i64>) -> Result<Artifacts> {
    codegen_with(graph, devices, bindings, true)
}

/// Code generation for a program the passes have sharded (for `devices` devices): kernels,
/// host templates (valid for every binding, or with `specialize` for `bindings` only), the
/// host programs bound at `bindings`, CUDA C and the report at `bindings`.
pub fn codegen_with(
    graph: Graph,
    devices: i64,
    bindings: &BTreeMap<String, i64>,
    specialize: bool,
) -> Result<Artifacts> {
    let mesh: Vec<(String, usize)> = graph
        .mesh
        .resolve(Some(devices))?
        .into_iter()
        .map(|(n, s)| (n, s as usize))
        .collect();
    let unbound = unbound_symbols(&graph, bindings);
    if specialize && !unbound.is_empty() {
        return Err(Error::Usage(format!(
            "host programs specialized to a binding need every symbol bound; bind {} (e.g. --bind {}=2)",
            unbound.join(", "),
            unbound[0]
        )));
    }
    let primitive = decomposed(&graph, &mesh)?;
    let plan = tpc_codegen::fuse::segment(&primitive).map_err(Error::Codegen)?;
    let templates = tpc_codegen::build::compile_templates(
        &primitive,
        &plan,
        &mesh,
        specialize.then_some(bindings),
    )
    .map_err(Error::Codegen)?;
    let cuda = tpc_codegen::cuda::module_source(&templates.kernels);
    // Templates of a program with symbols the bindings do not give serve every binding still;
    // bound programs and sized figures wait for `Artifacts::bind`.
    let (compiled, report) = if unbound.is_empty() {
        let compiled = templates.bind(bindings).map_err(Error::Codegen)?;
        let report = full_report(&graph, &mesh, bindings, &templates, &compiled)?;
        (compiled, report)
    } else {
        let compiled = Compiled {
            kernels: templates.kernels.clone(),
            hosts: Vec::new(),
        };
        let report = unsized_report(&graph, &mesh, bindings, &templates, &unbound);
        (compiled, report)
    };
    Ok(Artifacts {
        sharded: graph,
        mesh,
        bindings: bindings.clone(),
        templates,
        specialized: specialize,
        compiled,
        cuda,
        report,
        warnings: Vec::new(),
    })
}

/// The sharded program with its composites written as primitive ops (the `decompose` pass,
/// its input verified at the resharded phase), which is what the kernels compute: what code
/// generation segments. Values keep their ids, so parameters and results are the sharded
/// program's.
pub fn decomposed(graph: &Graph, mesh: &[(String, usize)]) -> Result<Graph> {
    let mut primitive = graph.clone();
    let mut pm = tpc_passes::PassManager::parse("decompose")?;
    pm.input_phase = Some(tpc_passes::Phase::Resharded);
    pm.context.axis_sizes = mesh.iter().map(|(n, s)| (n.clone(), *s as i64)).collect();
    pm.run(&mut primitive)?;
    Ok(primitive)
}

/// The symbols of `graph`'s shapes that `bindings` does not give, sorted.
fn unbound_symbols(graph: &Graph, bindings: &BTreeMap<String, i64>) -> Vec<String> {
    graph
        .values()
        .iter()
        .flat_map(|&v| graph.ty(v).shape.iter().flat_map(|d| d.symbols()))
        .filter(|s| !bindings.contains_key(s))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The report of a program compiled without values for `unbound`: its collectives (kind, axis,
/// value; no bytes), kernels and host programs, and which symbols to bind for the rest.
fn unsized_report(
    graph: &Graph,
    mesh: &[(String, usize)],
    bindings: &BTreeMap<String, i64>,
    templates: &Templates,
    unbound: &[String],
) -> Value {
    let listed = |moving: bool| -> Vec<Value> {
        graph
            .values()
            .iter()
            .filter_map(|&v| match graph.op(v) {
                tpc_ir::Op::Collective(CollectiveOp { kind, axis })
                    if kind.moves_data() == moving =>
                {
                    Some(json!({
                        "kind": kind.name(),
                        "axis": axis,
                        "value": format!("%{}", graph.name(v)),
                    }))
                }
                _ => None,
            })
            .collect()
    };
    json!({
        "devices": templates.world(),
        "mesh": mesh.iter().map(|(n, s)| (n.clone(), json!(s))).collect::<serde_json::Map<_, _>>(),
        "bindings": bindings,
        "unbound_symbols": unbound,
        "collectives": listed(true),
        "local_slices": listed(false),
        "kernels": kernels_json(&templates.kernels),
        "host_programs": templates.programs.len(),
        "host_program_of_rank": program_of_rank(templates),
    })
}

fn program_of_rank(templates: &Templates) -> Vec<usize> {
    (0..templates.world())
        .map(|r| {
            templates
                .programs
                .iter()
                .position(|t: &HostTemplate| t.ranks.contains(&r))
                .unwrap_or(0)
        })
        .collect()
}

/// The report of a compiled program at `bindings`: collectives, kernels, host programs and
/// their peak memory from the memory plan.
fn full_report(
    graph: &Graph,
    mesh: &[(String, usize)],
    bindings: &BTreeMap<String, i64>,
    templates: &Templates,
    compiled: &Compiled,
) -> Result<Value> {
    let devices: usize = mesh.iter().map(|(_, n)| (*n).max(1)).product();
    let mut report = crate::report::report(graph, devices as i64, bindings)?;
    if let Value::Object(map) = &mut report {
        map.insert("bindings".into(), json!(bindings));
        map.insert("kernels".into(), kernels_json(&compiled.kernels));
        let peaks: Vec<u64> = compiled.hosts.iter().map(|h| h.peak_bytes).collect();
        map.insert(
            "peak_bytes_per_device".into(),
            json!(peaks.iter().copied().max().unwrap_or(0)),
        );
        map.insert("peak_bytes_per_rank".into(), json!(peaks));
        map.insert("host_programs".into(), json!(templates.programs.len()));
        map.insert(
            "host_program_of_rank".into(),
            json!(program_of_rank(templates)),
        );
        map.insert("steps_per_rank".into(), steps_json(compiled));
    }
    Ok(report)
}

fn kernels_json(kernels: &[Kernel]) -> Value {
    let kinds: Vec<Value> = kernels
        .iter()
        .map(|k| {
            let kind = match k {
                Kernel::Fused(f) if f.row.is_some() => "fused-rows",
                Kernel::Fused(_) => "fused-pointwise",
                Kernel::Copy(_) => "copy",
                Kernel::Embedding(_) => "embedding",
                Kernel::Attention(_) => "attention",
                Kernel::Pick(_) => "pick",
                Kernel::Kept(_) => "kept",
            };
            json!({"name": k.name(), "kind": kind})
        })
        .collect();
    json!(kinds)
}

fn steps_json(c: &Compiled) -> Value {
    let counts: Vec<Value> = c
        .hosts
        .iter()
        .map(|h| {
            let mut launches = 0;
            let mut gemms = 0;
            let mut collectives = 0;
            for s in &h.steps {
                match s {
                    Step::Launch { .. } => launches += 1,
                    Step::Gemm(_) => gemms += 1,
                    Step::Exchange(_) => collectives += 1,
                    _ => {}
                }
            }
            json!({"launches": launches, "gemms": gemms, "collectives": collectives})
        })
        .collect();
    json!(counts)
}

/// Runs the compiled host programs on CPU rank threads (the CPU executor: kernels through the
/// kernel-IR interpreter, real collectives between the threads) and returns the results as
/// global tensors, in the program's result order. `inputs` are the global parameters by name.
pub fn run_on_cpu(
    artifacts: &Artifacts,
    inputs: &BTreeMap<String, tpc_runtime::Tensor>,
) -> Result<Vec<tpc_runtime::Tensor>> {
    artifacts.check_bound()?;
    let mesh = tpc_runtime::ranks::MeshSizes(artifacts.mesh.clone());
    Ok(tpc_runtime::host::run_host_programs(
        &artifacts.sharded,
        &artifacts.compiled,
        &mesh,
        inputs,
        &artifacts.bindings,
        std::time::Duration::from_secs(300),
    )?)
}

/// Runs the compiled host programs on CPU rank threads as [`run_on_cpu`] does, but with every
/// launch running the generated CUDA C itself, compiled for the host by a C++ compiler against
/// tpc's CUDA emulator (`tpc_runtime::emulate`): a check of the CUDA source without a GPU.
pub fn run_emulated(
    artifacts: &Artifacts,
    inputs: &BTreeMap<String, tpc_runtime::Tensor>,
) -> Result<Vec<tpc_runtime::Tensor>> {
    artifacts.check_bound()?;
    let emulator = tpc_runtime::emulate::Emulator::build(&artifacts.compiled.kernels)?;
    let mesh = tpc_runtime::ranks::MeshSizes(artifacts.mesh.clone());
    Ok(tpc_runtime::host::run_host_programs_with(
        &artifacts.sharded,
        &artifacts.compiled,
        tpc_runtime::host::Kernels::Emulate(&emulator),
        &mesh,
        inputs,
        &artifacts.bindings,
        std::time::Duration::from_secs(300),
    )?)
}

/// Runs the compiled host programs on GPUs with the CUDA executor (driver, cuBLASLt, NCCL):
/// one process owning every rank (rank r on GPU r), or, with `TPC_RANK`, `TPC_WORLD_SIZE`,
/// `TPC_MASTER_ADDR` and `TPC_MASTER_PORT` set, one process per rank joined over TCP. Kernels
/// are compiled by NVRTC to PTX for sm_80, which the driver also runs on newer GPUs.
///
/// Returns the results as global tensors; in a run of one process per rank, this process's
/// pieces of them (the other pieces are on the other processes).
pub fn run_cuda(
    artifacts: &Artifacts,
    inputs: &BTreeMap<String, tpc_runtime::Tensor>,
) -> Result<Vec<tpc_runtime::Tensor>> {
    use tpc_runtime::cuda::WorldConfig;
    artifacts.check_bound()?;
    let world = WorldConfig::from_env()?;
    let ptx = artifacts.ptx("sm_80")?;
    let mesh = tpc_runtime::ranks::MeshSizes(artifacts.mesh.clone());
    let local: Vec<usize> = if world.is_multi_process() {
        vec![world.rank]
    } else {
        (0..mesh.world()).collect()
    };
    let g = &artifacts.sharded;
    let b = &artifacts.bindings;
    let mut pieces = Vec::with_capacity(local.len());
    for &r in &local {
        let coords = mesh.coords(r);
        let mut mine = BTreeMap::new();
        for &p in g.params() {
            let name = g.name(p);
            let global = inputs
                .get(name)
                .ok_or_else(|| tpc_runtime::Error::MissingInput(name.to_string()))?;
            mine.insert(
                name.to_string(),
                tpc_runtime::layout::cut(global, g.ty(p), b, &coords)?,
            );
        }
        pieces.push(mine);
    }
    let outs = tpc_runtime::cuda::run_cuda(&artifacts.compiled, &ptx, &pieces, &world)?;
    let mut results = Vec::new();
    for &o in g.outputs() {
        let name = g.name(o);
        let held: Vec<(tpc_ir::layout::MeshCoords, tpc_runtime::Tensor)> = local
            .iter()
            .zip(&outs)
            .map(|(&r, out)| {
                out.get(name)
                    .cloned()
                    .map(|t| (mesh.coords(r), t))
                    .ok_or_else(|| {
                        Error::Runtime(tpc_runtime::Error::Internal(format!(
                            "rank {r} did not produce %{name}"
                        )))
                    })
            })
            .collect::<Result<_>>()?;
        if world.is_multi_process() {
            results.extend(held.into_iter().map(|(_, t)| t));
            continue;
        }
        let shape = tpc_ir::layout::bound_shape(g.ty(o), b)
            .map_err(|e| Error::Runtime(tpc_runtime::Error::Shape(e.to_string())))?;
        results.push(tpc_runtime::layout::assemble(&shape, g.ty(o), b, &held)?);
    }
    Ok(results)
}
