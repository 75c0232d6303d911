//! The CUDA executor of host programs: one thread per local rank, each on its own GPU with one
//! stream, one device arena of the plan's size, the module's kernels, a cuBLASLt handle and the
//! rank's NCCL communicators.
//!
//! A run goes in phases so that a failure never leaves a rank waiting forever:
//! 1. on the CPU: every host program is checked and its exchanges mapped to NCCL calls
//!    ([`super::plan`]); then the driver, the GPUs and the libraries the program needs;
//! 2. per rank thread: context, stream, arena, module and cuBLASLt; the main thread waits for
//!    all of them and stops every rank if one failed (before any NCCL call);
//! 3. the NCCL id: made here (one process) or by rank 0 and shared by the rendezvous (one
//!    process per rank: a process that failed its setup never joins, and the others time out);
//! 4. the steps, then a synchronization. If a rank fails, the others get
//!    [`RunOptions::failure_grace`] to finish; ranks still running after that, or after
//!    [`RunOptions::timeout`], are reported with the step they are at, and abandoned (their
//!    threads are detached, so the caller gets an error, never a hang).

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig,
    PushKernelArg,
};
use tpc_codegen::host::{Arg, Buffer, Compiled, HostProgram, Step, ALIGN};
use tpc_codegen::kir::Kernel;
use tpc_ir::DType;

use super::check::{self, driver_error};
use super::gemm::{Blas, Operands};
use super::nccl::{self, Comms};
use super::plan::{self, Plan};
use super::rendezvous::{self, WorldConfig};
use crate::tensor::{Data, Tensor};
use crate::{Error, Result};

/// Limits and switches of a CUDA run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The longest a run may take, setup included; ranks still running then are reported as
    /// stalled (`TPC_CUDA_TIMEOUT`, seconds).
    pub timeout: Duration,
    /// How long the processes of a multi-process world wait for each other to join
    /// (`TPC_RENDEZVOUS_TIMEOUT`, seconds).
    pub rendezvous_timeout: Duration,
    /// After one rank fails, how long the others get to finish.
    pub failure_grace: Duration,
    /// Synchronize after every step, so that an asynchronous CUDA error names the step that
    /// caused it (`TPC_CUDA_SYNC=1`); slower.
    pub sync_each_step: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            timeout: Duration::from_secs(600),
            rendezvous_timeout: rendezvous::DEFAULT_TIMEOUT,
            failure_grace: Duration::from_secs(10),
            sync_each_step: false,
        }
    }
}

impl RunOptions {
    /// The defaults, overridden by `TPC_CUDA_TIMEOUT`, `TPC_RENDEZVOUS_TIMEOUT` (seconds) and
    /// `TPC_CUDA_SYNC` (`1`/`true`).
    pub fn from_env() -> Result<RunOptions> {
        let mut o = RunOptions::default();
        let secs = |name: &str| -> Result<Option<Duration>> {
            match std::env::var(name).ok().filter(|v| !v.trim().is_empty()) {
                None => Ok(None),
                Some(v) => match v.trim().parse::<f64>() {
                    Ok(s) if s > 0.0 && s.is_finite() => Ok(Some(Duration::from_secs_f64(s))),
                    _ => Err(Error::Value(format!(
                        "{name}={v:?} is not a number of seconds"
                    ))),
                },
            }
        };
        if let Some(t) = secs("TPC_CUDA_TIMEOUT")? {
            o.timeout = t;
        }
        if let Some(t) = secs("TPC_RENDEZVOUS_TIMEOUT")? {
            o.rendezvous_timeout = t;
        }
        if let Ok(v) = std::env::var("TPC_CUDA_SYNC") {
            o.sync_each_step = match v.trim() {
                "" | "0" | "false" | "no" => false,
                "1" | "true" | "yes" => true,
                _ => return Err(Error::Value(format!("TPC_CUDA_SYNC={v:?} is not 0 or 1"))),
            };
        }
        Ok(o)
    }
}

/// Runs each local rank's host program on its own GPU (one thread per GPU, one NCCL
/// communicator over all ranks of the world). `inputs[r]` holds local rank r's pieces of the
/// parameters keyed by parameter name (the `param` of `Step::Input`); returns per local rank
/// its output pieces keyed by value name (`Step::Output`).
///
/// The hosts in `compiled.hosts` are all ranks of the world (index = global rank). A single
/// process ([`WorldConfig::single`]) runs them all, rank r on GPU r. With `TPC_RANK` etc.
/// ([`WorldConfig::from_env`]) there is one process per rank: this process runs rank
/// `world.rank` on GPU `TPC_LOCAL_RANK`, or `rank % (GPUs here)`. Options come from the
/// environment ([`RunOptions::from_env`]).
pub fn run_cuda(
    compiled: &Compiled,
    ptx: &str,
    inputs: &[BTreeMap<String, Tensor>],
    world: &WorldConfig,
) -> Result<Vec<BTreeMap<String, Tensor>>> {
    run_cuda_with(compiled, ptx, inputs, world, &RunOptions::from_env()?)
}

/// [`run_cuda`] with explicit options.
pub fn run_cuda_with(
    compiled: &Compiled,
    ptx: &str,
    inputs: &[BTreeMap<String, Tensor>],
    world: &WorldConfig,
    options: &RunOptions,
) -> Result<Vec<BTreeMap<String, Tensor>>> {
    let start = Instant::now();
    let plan = plan::check(compiled)?;
    let n = compiled.hosts.len();
    let local: Vec<usize> = if world.is_multi_process() {
        if world.world_size != n {
            return Err(Error::Cuda(format!(
                "{} processes were started ({}={}) but the program has {n} ranks: start one process per rank",
                world.world_size,
                rendezvous::WORLD_SIZE_VAR,
                world.world_size
            )));
        }
        vec![world.rank]
    } else {
        (0..n).collect()
    };
    if inputs.len() != local.len() {
        return Err(Error::Value(format!(
            "run_cuda: {} input maps for {} local ranks",
            inputs.len(),
            local.len()
        )));
    }
    let count = check::gpu_count()?;
    let devices: Vec<usize> = if world.is_multi_process() {
        let d = world.local_rank.unwrap_or(world.rank % count);
        if d >= count {
            return Err(Error::Cuda(format!(
                "{}={d} but this machine has {count} GPU(s)",
                rendezvous::LOCAL_RANK_VAR
            )));
        }
        vec![d]
    } else {
        if n > count {
            return Err(Error::Cuda(format!(
                "the program has {n} ranks but this machine has {count} GPU(s): compile for at most \
                 {count} devices, or run one process per rank on several machines ({}, {}, {}, {})",
                rendezvous::RANK_VAR,
                rendezvous::WORLD_SIZE_VAR,
                rendezvous::MASTER_ADDR_VAR,
                rendezvous::MASTER_PORT_VAR
            )));
        }
        (0..n).collect()
    };
    let has = |f: fn(&Step) -> bool| local.iter().any(|&r| compiled.hosts[r].steps.iter().any(f));
    if has(|s| matches!(s, Step::Gemm(_))) {
        check::require_cublaslt()?;
    }
    if plan.needs_nccl {
        check::require_nccl()?;
    }
    if has(|s| matches!(s, Step::Launch { .. })) && ptx.trim().is_empty() {
        return Err(Error::Cuda(
            "the program launches kernels but the PTX module is empty".into(),
        ));
    }

    let shared = Arc::new(Shared {
        compiled: compiled.clone(),
        ptx: ptx.to_string(),
        plan,
        options: options.clone(),
        progress: local
            .iter()
            .map(|_| AtomicUsize::new(NOT_STARTED))
            .collect(),
        abort: AtomicBool::new(false),
    });
    let (events_tx, events) = channel::<Event>();
    let mut go: Vec<Sender<Go>> = Vec::new();
    for (li, (&rank, &device)) in local.iter().zip(&devices).enumerate() {
        let (go_tx, go_rx) = channel::<Go>();
        go.push(go_tx);
        let shared = shared.clone();
        let events_tx = events_tx.clone();
        let pieces = inputs[li].clone();
        let spawned = std::thread::Builder::new()
            .name(format!("tpc-cuda-rank{rank}"))
            .spawn(move || rank_thread(shared, li, rank, device, pieces, go_rx, events_tx));
        if let Err(e) = spawned {
            return Err(Error::Cuda(format!(
                "starting the thread of rank {rank}: {e}"
            )));
        }
    }
    drop(events_tx);
    let deadline = start + options.timeout;
    let describe_rank = |li: usize| format!("rank {} (GPU {})", local[li], devices[li]);

    // Phase 2: every rank set up, or nobody runs.
    let mut ready = vec![false; local.len()];
    let mut failures: Vec<(usize, Error)> = Vec::new();
    while ready.iter().any(|r| !r) && failures.is_empty() {
        match recv_until(&events, deadline) {
            Ok(Event::Setup(li, Ok(()))) => ready[li] = true,
            Ok(Event::Setup(li, Err(e))) | Ok(Event::Failed(li, e)) => failures.push((li, e)),
            Ok(Event::Done(li, _)) => failures.push((
                li,
                Error::Cuda(format!(
                    "{}: finished before it was started",
                    describe_rank(li)
                )),
            )),
            Err(()) => {
                let waiting: Vec<String> = (0..local.len())
                    .filter(|&l| !ready[l])
                    .map(describe_rank)
                    .collect();
                return Err(Error::Cuda(format!(
                    "{} did not finish setting up within {:.0} s",
                    waiting.join(", "),
                    options.timeout.as_secs_f64()
                )));
            }
        }
    }
    if !failures.is_empty() {
        drop(go); // every rank thread sees its channel closed and stops
        return Err(combine(failures, &describe_rank));
    }

    // Phase 3: the NCCL id.
    let id = if shared.plan.needs_nccl {
        let made = if world.is_multi_process() {
            let mine = if world.rank == 0 {
                Some(nccl::new_id().map_err(Error::Cuda)?)
            } else {
                None
            };
            rendezvous::share_blob(world, mine, options.rendezvous_timeout)
        } else {
            nccl::new_id().map_err(Error::Cuda)
        };
        match made {
            Ok(id) => Some(id),
            Err(e) => {
                drop(go);
                return Err(e);
            }
        }
    } else {
        None
    };

    // Phase 4: run.
    for tx in &go {
        let _ = tx.send(Go::Run(id.clone()));
    }
    let mut results: Vec<Option<BTreeMap<String, Tensor>>> =
        (0..local.len()).map(|_| None).collect();
    let mut deadline = deadline;
    let mut pending = local.len();
    while pending > 0 {
        match recv_until(&events, deadline) {
            Ok(Event::Done(li, Ok(out))) => {
                results[li] = Some(out);
                pending -= 1;
            }
            Ok(Event::Done(li, Err(e)))
            | Ok(Event::Failed(li, e))
            | Ok(Event::Setup(li, Err(e))) => {
                if failures.is_empty() {
                    // The others' results are of no use now; stop them rather than let them
                    // wait for the failed rank inside NCCL.
                    shared.abort.store(true, Ordering::SeqCst);
                    deadline = deadline.min(Instant::now() + options.failure_grace);
                }
                failures.push((li, e));
                pending -= 1;
            }
            Ok(Event::Setup(_, Ok(()))) => {}
            Err(()) => {
                shared.abort.store(true, Ordering::SeqCst);
                let stalled: Vec<String> = (0..local.len())
                    .filter(|&l| results[l].is_none() && !failures.iter().any(|(f, _)| *f == l))
                    .map(|l| {
                        let at = shared.progress[l].load(Ordering::SeqCst);
                        format!(
                            "{} {}",
                            describe_rank(l),
                            where_is(
                                &shared.compiled.kernels,
                                &shared.compiled.hosts[local[l]],
                                at
                            )
                        )
                    })
                    .collect();
                let m = if failures.is_empty() {
                    format!(
                        "the run did not finish within {:.0} s: {} (a peer process may have failed or \
                         stopped; raise TPC_CUDA_TIMEOUT for longer runs)",
                        options.timeout.as_secs_f64(),
                        stalled.join("; ")
                    )
                } else {
                    format!(
                        "{}; the other ranks were given up after waiting {:.0} s more: {}",
                        combine(std::mem::take(&mut failures), &describe_rank),
                        options.failure_grace.as_secs_f64(),
                        stalled.join("; ")
                    )
                };
                return Err(Error::Cuda(m));
            }
        }
    }
    if !failures.is_empty() {
        return Err(combine(failures, &describe_rank));
    }
    Ok(results.into_iter().map(|r| r.unwrap_or_default()).collect())
}

/// Before the first step.
const NOT_STARTED: usize = usize::MAX;
/// Why a rank stopped when the run was given up.
const STOPPED: &str = "stopped: the run was given up (another rank failed or time ran out)";
/// Joining the NCCL communicators.
const JOINING: usize = usize::MAX - 1;

fn where_is(kernels: &[Kernel], host: &HostProgram, at: usize) -> String {
    match at {
        NOT_STARTED => "had not started".to_string(),
        JOINING => "was joining the NCCL communicators".to_string(),
        i if i >= host.steps.len() => "was finishing".to_string(),
        i => format!(
            "was at step {i} ({})",
            describe_step(kernels, host, &host.steps[i])
        ),
    }
}

fn combine(mut failures: Vec<(usize, Error)>, describe_rank: &dyn Fn(usize) -> String) -> Error {
    failures.sort_by_key(|(li, _)| *li);
    // Ranks stopped because another failed say nothing new.
    if failures
        .iter()
        .any(|(_, e)| !e.to_string().contains(STOPPED))
    {
        failures.retain(|(_, e)| !e.to_string().contains(STOPPED));
    }
    if failures.len() == 1 {
        return failures
            .pop()
            .map(|(_, e)| e)
            .unwrap_or_else(|| Error::Cuda("no failure".into()));
    }
    let lines: Vec<String> = failures
        .iter()
        .map(|(li, e)| {
            let m = e.to_string();
            if m.starts_with("rank ") {
                m
            } else {
                format!("{}: {m}", describe_rank(*li))
            }
        })
        .collect();
    Error::Cuda(lines.join("; "))
}

fn recv_until(events: &Receiver<Event>, deadline: Instant) -> std::result::Result<Event, ()> {
    let left = deadline.saturating_duration_since(Instant::now());
    match events.recv_timeout(left) {
        Ok(e) => Ok(e),
        Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => Err(()),
    }
}

/// What every rank thread reads.
struct Shared {
    compiled: Compiled,
    ptx: String,
    plan: Plan,
    options: RunOptions,
    /// Per local rank: the step it is at (or [`NOT_STARTED`], [`JOINING`]).
    progress: Vec<AtomicUsize>,
    /// Set when the run is given up (a rank failed, or time ran out): every rank stops at its
    /// next wait for the GPU and aborts its communicators, which ends NCCL work that waits
    /// for a peer that is gone.
    abort: AtomicBool,
}

/// From a rank thread to the main thread.
enum Event {
    Setup(usize, Result<()>),
    Done(usize, Result<BTreeMap<String, Tensor>>),
    Failed(usize, Error),
}

/// From the main thread to a rank thread: run, with the NCCL id if the program needs one.
enum Go {
    Run(Option<Vec<u8>>),
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic".to_string()
    }
}

fn rank_thread(
    shared: Arc<Shared>,
    li: usize,
    rank: usize,
    device: usize,
    inputs: BTreeMap<String, Tensor>,
    go: Receiver<Go>,
    events: Sender<Event>,
) {
    let tx = events.clone();
    let outcome = catch_unwind(AssertUnwindSafe(move || {
        let mut dev = match Device::setup(&shared, rank, device) {
            Ok(d) => {
                let _ = tx.send(Event::Setup(li, Ok(())));
                d
            }
            Err(e) => {
                let _ = tx.send(Event::Setup(li, Err(e)));
                return;
            }
        };
        let Ok(Go::Run(id)) = go.recv() else {
            return; // another rank failed its setup
        };
        let result = dev.run(&shared, li, rank, &inputs, id);
        let _ = tx.send(Event::Done(li, result));
    }));
    if let Err(p) = outcome {
        let _ = events.send(Event::Failed(
            li,
            Error::Cuda(format!(
                "rank {rank} (GPU {device}): the CUDA bindings panicked: {}",
                panic_message(p)
            )),
        ));
    }
}

/// One rank's GPU state.
struct Device {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    device: usize,
    /// Keeps the arena alive; `base` is its first [`ALIGN`]-aligned address.
    _arena: CudaSlice<u8>,
    base: u64,
    functions: BTreeMap<usize, CudaFunction>,
    _module: Option<Arc<CudaModule>>,
    blas: Option<Blas>,
}

fn cuda_err(m: String) -> Error {
    Error::Cuda(m)
}

impl Device {
    fn setup(shared: &Shared, rank: usize, device: usize) -> Result<Device> {
        let fail = |what: &str, e: cudarc::driver::DriverError| {
            cuda_err(format!(
                "rank {rank} (GPU {device}): {what}: {}",
                driver_error(&e)
            ))
        };
        let host = &shared.compiled.hosts[rank];
        let ctx = CudaContext::new(device).map_err(|e| fail("creating the context", e))?;
        // SAFETY: one stream per context, and everything this rank does is ordered on it.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| fail("creating a stream", e))?;
        let bytes = host.peak_bytes.max(1) + ALIGN;
        let arena = stream.alloc_zeros::<u8>(bytes as usize).map_err(|e| {
            let free = ctx
                .mem_get_info()
                .map(|(free, _)| format!(" ({free} bytes free)"))
                .unwrap_or_default();
            fail(
                &format!("allocating the arena of {} bytes{free}", host.peak_bytes),
                e,
            )
        })?;
        let (raw, _sync) = arena.device_ptr(&stream);
        let base = raw.next_multiple_of(ALIGN);
        drop(_sync);
        let mut functions = BTreeMap::new();
        let mut module = None;
        for step in &host.steps {
            let Step::Launch { kernel, .. } = step else {
                continue;
            };
            if functions.contains_key(kernel) {
                continue;
            }
            let m = match &module {
                Some(m) => m,
                None => {
                    let m = ctx
                        .load_module(cudarc::nvrtc::Ptx::from_src(shared.ptx.clone()))
                        .map_err(|e| {
                            let cc = ctx
                                .compute_capability()
                                .map(|(a, b)| format!(" (this GPU is sm_{a}{b})"))
                                .unwrap_or_default();
                            let hint = if e.0
                                == cudarc::driver::sys::CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION
                            {
                                "; the PTX comes from an NVRTC newer than this driver: use an \
                                 NVRTC of the driver's CUDA version or older, or update the driver"
                            } else {
                                ""
                            };
                            cuda_err(format!(
                                "rank {rank} (GPU {device}): loading the PTX module{cc}: {}{hint}",
                                driver_error(&e)
                            ))
                        })?;
                    module.insert(m)
                }
            };
            let name = shared.compiled.kernels[*kernel].name();
            let f = m.load_function(name).map_err(|e| {
                cuda_err(format!(
                    "rank {rank} (GPU {device}): kernel @{name} is not in the PTX module ({}); the \
                     module source must define every kernel the host program launches",
                    driver_error(&e)
                ))
            })?;
            functions.insert(*kernel, f);
        }
        let blas = if host.steps.iter().any(|s| matches!(s, Step::Gemm(_))) {
            Some(
                Blas::new(&stream)
                    .map_err(|m| cuda_err(format!("rank {rank} (GPU {device}): {m}")))?,
            )
        } else {
            None
        };
        stream.synchronize().map_err(|e| fail("setting up", e))?;
        Ok(Device {
            ctx,
            stream,
            device,
            _arena: arena,
            base,
            functions,
            _module: module,
            blas,
        })
    }

    fn ptr(&self, b: &Buffer) -> u64 {
        self.base + b.offset
    }

    /// Waits for the stream by polling, so that a rank waiting for a peer that failed can
    /// stop: when the run is given up, or NCCL reports an asynchronous error.
    fn sync(&self, abort: &AtomicBool, comms: Option<&Comms>) -> std::result::Result<(), String> {
        use cudarc::driver::sys::CUresult;
        let mut polls = 0u32;
        loop {
            // SAFETY: the rank's live stream.
            match unsafe { cudarc::driver::sys::cuStreamQuery(self.stream.cu_stream()) } {
                CUresult::CUDA_SUCCESS => return Ok(()),
                CUresult::CUDA_ERROR_NOT_READY => {}
                e => return Err(driver_error(&cudarc::driver::DriverError(e))),
            }
            if abort.load(Ordering::SeqCst) {
                return Err(STOPPED.to_string());
            }
            if let Some(c) = comms {
                c.async_error()?;
            }
            polls += 1;
            if polls < 200 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }

    fn run(
        &mut self,
        shared: &Shared,
        li: usize,
        rank: usize,
        inputs: &BTreeMap<String, Tensor>,
        id: Option<Vec<u8>>,
    ) -> Result<BTreeMap<String, Tensor>> {
        let host = &shared.compiled.hosts[rank];
        let progress = &shared.progress[li];
        let device = self.device;
        self.ctx
            .bind_to_thread()
            .map_err(|e| cuda_err(format!("rank {rank} (GPU {device}): {}", driver_error(&e))))?;
        progress.store(JOINING, Ordering::SeqCst);
        let comms = match id {
            Some(id) if shared.plan.needs_nccl => Some(
                Comms::init(&id, rank, &shared.plan)
                    .map_err(|m| cuda_err(format!("rank {rank} (GPU {device}): {m}")))?,
            ),
            _ => None,
        };
        let hint = |m: String| {
            if shared.options.sync_each_step || m == STOPPED {
                m
            } else {
                format!(
                    "{m} (an asynchronous error of this or an earlier step; set TPC_CUDA_SYNC=1 \
                     to find the step)"
                )
            }
        };
        let mut outputs = BTreeMap::new();
        for (i, step) in host.steps.iter().enumerate() {
            progress.store(i, Ordering::SeqCst);
            let at = |m: String| {
                cuda_err(format!(
                    "rank {rank} (GPU {device}), step {i} ({}): {m}",
                    describe_step(&shared.compiled.kernels, host, step)
                ))
            };
            match self.step(
                shared,
                rank,
                host,
                i,
                step,
                inputs,
                comms.as_ref(),
                &mut outputs,
            ) {
                Ok(()) => {}
                Err(StepError::Cuda(m)) => return Err(at(m)),
                Err(StepError::Synced(m)) => return Err(at(hint(m))),
                Err(StepError::Other(e)) => return Err(e),
            }
            if shared.options.sync_each_step {
                self.sync(&shared.abort, comms.as_ref()).map_err(at)?;
            }
        }
        progress.store(host.steps.len(), Ordering::SeqCst);
        self.sync(&shared.abort, comms.as_ref()).map_err(|m| {
            cuda_err(format!(
                "rank {rank} (GPU {device}): at the end of the program: {}",
                hint(m)
            ))
        })?;
        if let Some(c) = comms {
            c.close()
                .map_err(|m| cuda_err(format!("rank {rank} (GPU {device}): {m}")))?;
        }
        Ok(outputs)
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        shared: &Shared,
        rank: usize,
        host: &HostProgram,
        i: usize,
        step: &Step,
        inputs: &BTreeMap<String, Tensor>,
        comms: Option<&Comms>,
        outputs: &mut BTreeMap<String, Tensor>,
    ) -> std::result::Result<(), StepError> {
        let bufs = &host.buffers;
        let cu = self.stream.cu_stream();
        match step {
            Step::Alloc { .. } | Step::Free { .. } => Ok(()),
            Step::Input { buf, param } => {
                let t = inputs
                    .get(param)
                    .ok_or_else(|| StepError::Other(Error::MissingInput(param.clone())))?;
                let b = &bufs[buf.0];
                if t.shape() != b.shape.as_slice() || t.dtype() != b.dtype {
                    return Err(StepError::Other(Error::InputMismatch {
                        name: param.clone(),
                        expected: format!("{}{:?} on rank {rank}", b.dtype, b.shape),
                        got: format!("{}{:?}", t.dtype(), t.shape()),
                    }));
                }
                let bytes = encode(b.dtype, t.data()).map_err(StepError::Other)?;
                self.htod(&bytes, self.ptr(b), &shared.abort, comms)
            }
            Step::Table { buf, values } => {
                let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                self.htod(&bytes, self.ptr(&bufs[buf.0]), &shared.abort, comms)
            }
            Step::Launch {
                kernel,
                grid,
                block,
                shared_bytes,
                args,
            } => {
                let f = self
                    .functions
                    .get(kernel)
                    .ok_or_else(|| StepError::Cuda(format!("kernel {kernel} was not loaded")))?;
                enum K {
                    P(u64),
                    I(i64),
                    F(f32),
                }
                let values: Vec<K> = args
                    .iter()
                    .map(|a| match a {
                        Arg::Buffer(b) => K::P(self.ptr(&bufs[b.0])),
                        Arg::Int(x) => K::I(*x),
                        Arg::Float(x) => K::F(*x),
                    })
                    .collect();
                let mut lb = self.stream.launch_builder(f);
                for v in &values {
                    match v {
                        K::P(p) => lb.arg(p),
                        K::I(x) => lb.arg(x),
                        K::F(x) => lb.arg(x),
                    };
                }
                let cfg = LaunchConfig {
                    grid_dim: (grid[0], grid[1], grid[2]),
                    block_dim: (*block, 1, 1),
                    shared_mem_bytes: *shared_bytes,
                };
                // SAFETY: the arguments match the kernel's parameters (checked by the plan:
                // pointers into the arena for buffers, i64 and f32 for the rest).
                unsafe { lb.launch(cfg) }
                    .map(|_| ())
                    .map_err(|e| StepError::Cuda(driver_error(&e)))
            }
            Step::Gemm(g) => {
                let blas = self
                    .blas
                    .as_ref()
                    .ok_or_else(|| StepError::Cuda("no cuBLASLt handle".into()))?;
                let p = Operands {
                    a: self.ptr(&bufs[g.a.0]),
                    b: self.ptr(&bufs[g.b.0]),
                    c: self.ptr(&bufs[g.c.0]),
                    bias: g.bias.map(|x| (self.ptr(&bufs[x.0]), bufs[x.0].dtype)),
                };
                blas.gemm(&self.stream, g, &p).map_err(StepError::Cuda)
            }
            Step::Exchange(x) => {
                let p = shared.plan.exchanges[rank]
                    .get(&i)
                    .ok_or_else(|| StepError::Cuda("the exchange has no plan".into()))?;
                nccl::exchange(
                    comms,
                    &shared.plan,
                    p,
                    x.dtype,
                    self.ptr(&bufs[x.input.0]),
                    self.ptr(&bufs[x.output.0]),
                    &self.stream,
                )
                .map_err(StepError::Cuda)
            }
            Step::Output { buf, value, shape } => {
                let b = &bufs[buf.0];
                let mut bytes = vec![0u8; b.bytes() as usize];
                if !bytes.is_empty() {
                    // SAFETY: the range lies in the arena; the stream is synchronized below
                    // before `bytes` is read.
                    unsafe {
                        cudarc::driver::result::memcpy_dtoh_async(&mut bytes, self.ptr(b), cu)
                    }
                    .map_err(|e| StepError::Synced(driver_error(&e)))?;
                }
                self.sync(&shared.abort, comms).map_err(StepError::Synced)?;
                outputs.insert(value.clone(), decode(b.dtype, shape.clone(), &bytes));
                Ok(())
            }
        }
    }

    fn htod(
        &self,
        bytes: &[u8],
        at: u64,
        abort: &AtomicBool,
        comms: Option<&Comms>,
    ) -> std::result::Result<(), StepError> {
        if bytes.is_empty() {
            return Ok(());
        }
        // SAFETY: the range lies in the arena (checked by the plan); `bytes` outlives the copy:
        // the stream is synchronized before returning (as cudarc does for host slices; the
        // driver stages pageable memory anyway, and inputs come first in a program).
        unsafe { cudarc::driver::result::memcpy_htod_async(at, bytes, self.stream.cu_stream()) }
            .map_err(|e| StepError::Cuda(driver_error(&e)))?;
        self.sync(abort, comms).map_err(StepError::Synced)
    }
}

enum StepError {
    /// A CUDA error of the step itself.
    Cuda(String),
    /// A CUDA error seen when synchronizing (possibly of an earlier step).
    Synced(String),
    /// Not a CUDA error (a missing or mismatched input).
    Other(Error),
}

/// A short name of a step, for messages.
pub(crate) fn describe_step(kernels: &[Kernel], host: &HostProgram, step: &Step) -> String {
    let name = |b: usize| {
        host.buffers
            .get(b)
            .map_or("?", |x| x.name.as_str())
            .to_string()
    };
    match step {
        Step::Input { param, .. } => format!("input %{param}"),
        Step::Alloc { buf } => format!("alloc %{}", name(buf.0)),
        Step::Table { buf, .. } => format!("table %{}", name(buf.0)),
        Step::Launch { kernel, .. } => match kernels.get(*kernel) {
            Some(k) => format!("launch @{}", k.name()),
            None => format!("launch of kernel {kernel}"),
        },
        Step::Gemm(g) => format!("gemm into %{}", name(g.c.0)),
        Step::Exchange(x) => format!(
            "{} %{} -> %{} over {} {:?}",
            x.kind.name(),
            name(x.input.0),
            name(x.output.0),
            x.axis,
            x.group
        ),
        Step::Free { buf } => format!("free %{}", name(buf.0)),
        Step::Output { value, .. } => format!("output %{value}"),
    }
}

/// A tensor's values as the bytes its buffer holds (`crate::bytes`).
pub(crate) fn encode(dtype: DType, data: &Data) -> Result<Vec<u8>> {
    crate::bytes::encode(dtype, data)
}

/// The tensor a buffer's bytes hold.
pub(crate) fn decode(dtype: DType, shape: Vec<usize>, raw: &[u8]) -> Tensor {
    Tensor {
        dtype,
        shape,
        data: crate::bytes::decode(dtype, raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let cases = [
            Tensor::from_f32(DType::F32, vec![3], vec![1.5, -2.0, 1e-3]).unwrap(),
            Tensor::from_f32(DType::BF16, vec![3], vec![1.5, -2.0, 1e-3]).unwrap(),
            Tensor::from_f32(DType::F16, vec![3], vec![1.5, -2.0, 1e-3]).unwrap(),
            Tensor::from_i64(vec![2], vec![-7, 1 << 40]).unwrap(),
            Tensor::from_bool(vec![3], vec![true, false, true]).unwrap(),
        ];
        for t in cases {
            let bytes = encode(t.dtype(), t.data()).unwrap();
            assert_eq!(bytes.len() as u64, t.size_bytes());
            assert_eq!(decode(t.dtype(), t.shape().to_vec(), &bytes), t);
        }
    }
}
