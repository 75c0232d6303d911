//! Command-line arguments (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "tpc",
    version,
    about = "tpc, a tensor-parallel compiler: shards tensor programs across devices",
    long_about = "tpc reads a tensor program in its text IR (.ir), checks it, prints it in canonical \
                  form, and runs it on the CPU reference executor. See docs/ir.md for the IR.",
    after_help = "Examples:\n  tpc check examples/mlp.ir\n  tpc fmt examples/block.ir\n  \
                  tpc run examples/mlp.ir --bind B=2,S=128\n  cat prog.ir | tpc check -"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Parse and verify a program; report every error with its location.
    #[command(
        after_help = "Examples:\n  tpc check examples/mlp.ir\n  tpc check --phase resharded --devices 8 sharded.ir\n\nExits 0 when the program is valid (at the phase, with --phase), 1 otherwise."
    )]
    Check(CheckArgs),
    /// Print a program in canonical form on standard output.
    #[command(
        after_help = "Examples:\n  tpc fmt examples/mlp.ir\n  tpc fmt --check examples/mlp.ir   \
                            # exit 1 if the file is not canonical\n\nComments are kept: above the statement they precede, or at the end of its line."
    )]
    Fmt(FmtArgs),
    /// Run the compiler's passes on a program and print the result.
    #[command(
        after_help = "Examples:\n  tpc compile examples/mlp.ir --devices 8\n  \
                            tpc compile examples/attention_glm.ir --print-ir-after all --time-passes\n\n\
                            The default pipeline shards the program: propagate-sharding, insert-resharding, \
                            reorder-sharded-axis. `--emit local --rank R` prints what rank R runs (lower-to-local)."
    )]
    Compile(CompileArgs),
    /// Run a program on the CPU reference executor and summarize its outputs.
    #[command(
        after_help = "Examples:\n  tpc run examples/mlp.ir --bind B=2,S=128\n  \
                            tpc run examples/mlp.ir --inputs in.safetensors --outputs out.safetensors\n\n\
                            Inputs missing from --inputs are drawn from --seed. Symbols not given by --bind \
                            are read off the input tensors' shapes."
    )]
    Run(RunArgs),
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The program (`-` reads standard input).
    pub file: PathBuf,
    /// Number of devices, to check the mesh against (`mesh tp` takes them all).
    #[arg(long)]
    pub devices: Option<i64>,
    /// Also check the invariants of this phase: `global` (no collectives), `sharded` (every
    /// layout propagation gives, no collectives), `resharded` (every op but a collective
    /// computes locally from its operands' layouts) or `local` (every rank's pieces check;
    /// needs --devices for a mesh without sizes).
    #[arg(long, value_name = "PHASE")]
    pub phase: Option<String>,
    /// With --phase: the symbol values the sharded phase weighs layouts at and the local phase
    /// lowers at (default B=2,S=128, as `compile`).
    #[arg(long, value_name = "SYM=N,...", requires = "phase")]
    pub bind: Option<String>,
}

#[derive(Args, Debug)]
pub struct FmtArgs {
    /// The program (`-` reads standard input).
    pub file: PathBuf,
    /// Print nothing; exit 1 if the file is not already in canonical form.
    #[arg(long)]
    pub check: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The program (`-` reads standard input).
    pub file: PathBuf,
    /// A safetensors file with input tensors, keyed by parameter name without `%`.
    #[arg(long, value_name = "IN.safetensors")]
    pub inputs: Option<PathBuf>,
    /// Write the outputs to this safetensors file, keyed by the returned values' names.
    #[arg(long, value_name = "OUT.safetensors")]
    pub outputs: Option<PathBuf>,
    /// Seed for inputs that --inputs does not give.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Values of the program's symbols, like `B=2,S=128` (may be repeated).
    #[arg(long, value_name = "SYM=N,...")]
    pub bind: Vec<String>,
    /// Run the sharded program on this many CPU rank threads (one per device) instead of once.
    #[arg(long)]
    pub devices: Option<i64>,
    /// With --devices: also run the unsharded reference, print each output's error, and exit 1
    /// beyond the tolerance of its dtype.
    #[arg(long, requires = "devices")]
    pub check: bool,
    /// With --devices: the passes that shard the program.
    #[arg(long, default_value = tpc::passes::DEFAULT_PIPELINE)]
    pub pipeline: String,
    /// With --devices: how the ranks run: `host` runs the compiled host programs (generated
    /// kernels through the kernel-IR interpreter, GEMM and collective steps, the memory plan);
    /// `emulated` runs the same host programs with the kernels' CUDA C itself, compiled for the
    /// CPU by a C++ compiler against tpc's CUDA emulator (needs g++ or clang++; `TPC_CXX`);
    /// `ops` runs the sharded graph op by op.
    #[arg(long, value_enum, default_value_t = Executor::Host)]
    pub executor: Executor,
    /// With --devices: `cpu` runs the ranks as threads here; `cuda` runs the host programs on
    /// GPUs (one per rank; see docs/cli.md for several nodes).
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub backend: Backend,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Executor {
    Host,
    Emulated,
    Ops,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Cpu,
    Cuda,
}

#[derive(Args, Debug)]
pub struct CompileArgs {
    /// The program (`-` reads standard input).
    pub file: PathBuf,
    /// Number of devices (`mesh tp` takes them all; `mesh dp = 2, tp = 4` needs 8).
    #[arg(long)]
    pub devices: Option<i64>,
    /// Comma-separated passes to run, in order, each with its options in braces
    /// (`reorder-sharded-axis{all-to-all=false}`).
    #[arg(long, default_value = tpc::passes::DEFAULT_PIPELINE)]
    pub pipeline: String,
    /// Print the IR before this pass (or these, comma-separated, or `all`) on standard error.
    #[arg(long, value_name = "PASS|all")]
    pub print_ir_before: Option<String>,
    /// Print the IR after this pass (or these, comma-separated, or `all`) on standard error.
    #[arg(long, value_name = "PASS|all")]
    pub print_ir_after: Option<String>,
    /// Print each pass's wall time on standard error.
    #[arg(long)]
    pub time_passes: bool,
    /// What to print on standard output.
    #[arg(long, value_enum, default_value_t = Emit::Ir)]
    pub emit: Emit,
    /// Print a report instead of the IR: every collective with its bytes on one device, totals,
    /// and peak bytes per device.
    #[arg(long, value_enum)]
    pub report: Option<ReportFormat>,
    /// Write sharded.ir, kernels.cu, kernels.ptx (when NVRTC is present), the host programs
    /// and report.json into this directory. Without --bind the host programs are
    /// host<k>.host, valid for every binding of the symbols (ranks with pieces of the same
    /// shapes share one; report.json's host_program_of_rank says which); with --bind they are
    /// rank<r>.host, specialized to those values.
    #[arg(short = 'o', long = "out-dir", value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// The rank whose program `--emit local` and `--emit host` print.
    #[arg(long, default_value_t = 0)]
    pub rank: usize,
    /// Specialize to these symbol values: the passes weigh layouts by bytes moved at them, the
    /// report counts bytes at them, and the host programs serve only them. Without it the
    /// passes and the report use B=2,S=128 and the host programs serve every binding.
    #[arg(long, value_name = "SYM=N,...")]
    pub bind: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    Json,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    /// The IR after the pipeline, with every value's full type.
    Ir,
    /// One rank's program: every value with the shape of that rank's piece (needs --devices).
    Local,
    /// The generated kernels as CUDA C.
    Cuda,
    /// The generated kernels as PTX for sm_90 (needs libnvrtc).
    Ptx,
    /// One rank's host program (`--rank`).
    Host,
    /// The generated kernels in the kernel IR (what the CUDA C and the interpreter both run).
    Kernels,
}
