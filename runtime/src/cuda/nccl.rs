//! NCCL communicators and exchange calls (cudarc's `nccl::result`/`sys` layers on raw arena
//! pointers, since the arena holds every dtype).
//!
//! One communicator spans the world (`ncclCommInitRank` with the id shared by rank 0); every
//! other group an exchange uses gets its own, split from it (`ncclCommSplit`, one split per
//! layer of disjoint groups, the same on every rank; the rank in a group's communicator is its
//! position in the group).

use std::collections::BTreeMap;
use std::ffi::{c_void, CStr};
use std::ptr::null_mut;

use cudarc::driver::CudaStream;
use cudarc::nccl::result as nr;
use cudarc::nccl::sys;
use tpc_ir::{DType, ReduceOp};

use super::plan::{Call, ExchangePlan, Plan};

/// `NCCL_SPLIT_NOCOLOR`.
const NO_COLOR: i32 = -1;

/// The bytes of an NCCL unique id.
pub(crate) const ID_BYTES: usize = 128;

/// A fresh NCCL unique id (rank 0 makes it, every rank joins with it).
pub(crate) fn new_id() -> Result<Vec<u8>, String> {
    let id = nr::get_uniqueid().map_err(|e| format!("ncclGetUniqueId: {}", describe(e.0, None)))?;
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

fn describe(r: sys::ncclResult_t, comm: Option<sys::ncclComm_t>) -> String {
    // SAFETY: NCCL returns static strings (or null).
    let text = unsafe {
        let p = sys::ncclGetErrorString(r);
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    let last = comm
        .map(|c| unsafe {
            let p = sys::ncclGetLastError(c);
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        })
        .filter(|s| !s.is_empty());
    match last {
        Some(l) => format!("{r:?} ({text}): {l}"),
        None => format!("{r:?} ({text})"),
    }
}

/// This rank's communicators.
pub(crate) struct Comms {
    world: sys::ncclComm_t,
    groups: BTreeMap<Vec<usize>, sys::ncclComm_t>,
    /// Set once the communicators were destroyed cleanly.
    closed: bool,
}

impl Comms {
    /// Joins the world communicator as `rank` (the CUDA context of the rank's GPU must be
    /// current on this thread), then makes the plan's split communicators.
    pub(crate) fn init(id: &[u8], rank: usize, plan: &Plan) -> Result<Comms, String> {
        if id.len() != ID_BYTES {
            return Err(format!(
                "an NCCL id of {} bytes (expected {ID_BYTES})",
                id.len()
            ));
        }
        let mut uid = sys::ncclUniqueId {
            internal: [0; ID_BYTES],
        };
        for (d, &s) in uid.internal.iter_mut().zip(id) {
            *d = s as _;
        }
        let mut world: sys::ncclComm_t = null_mut();
        // SAFETY: `world` receives the new communicator.
        unsafe { nr::comm_init_rank(&mut world, plan.world as i32, uid, rank as i32) }.map_err(
            |e| {
                format!(
                    "ncclCommInitRank (rank {rank} of {}): {}",
                    plan.world,
                    describe(e.0, None)
                )
            },
        )?;
        let mut comms = Comms {
            world,
            groups: BTreeMap::new(),
            closed: false,
        };
        for (l, layer) in plan.split_layers.iter().enumerate() {
            let mine = layer
                .iter()
                .enumerate()
                .find_map(|(c, g)| g.iter().position(|&r| r == rank).map(|p| (c, p, g)));
            let (color, key) = mine.map_or((NO_COLOR, 0), |(c, p, _)| (c as i32, p as i32));
            let mut new: sys::ncclComm_t = null_mut();
            // SAFETY: a live parent communicator; a null config inherits the parent's.
            let r = unsafe { sys::ncclCommSplit(comms.world, color, key, &mut new, null_mut()) };
            r.result().map_err(|e| {
                format!(
                    "ncclCommSplit (layer {l}, color {color}): {}",
                    describe(e.0, Some(comms.world))
                )
            })?;
            if let Some((_, _, g)) = mine {
                if new.is_null() {
                    return Err(format!(
                        "ncclCommSplit gave no communicator for group {g:?}"
                    ));
                }
                comms.groups.insert(g.clone(), new);
            }
        }
        Ok(comms)
    }

    fn get(&self, plan: &Plan, group: &[usize]) -> Result<sys::ncclComm_t, String> {
        if plan.is_world(group) {
            return Ok(self.world);
        }
        self.groups
            .get(group)
            .copied()
            .ok_or_else(|| format!("no communicator for group {group:?}"))
    }

    /// An error NCCL found asynchronously (a peer that failed or aborted, a network error).
    pub(crate) fn async_error(&self) -> Result<(), String> {
        for c in self
            .groups
            .values()
            .copied()
            .chain(std::iter::once(self.world))
        {
            let mut r = sys::ncclResult_t::ncclSuccess;
            // SAFETY: a live communicator and a place for the result.
            let q = unsafe { sys::ncclCommGetAsyncError(c, &mut r) };
            if q != sys::ncclResult_t::ncclSuccess {
                return Err(format!("ncclCommGetAsyncError: {}", describe(q, Some(c))));
            }
            if r != sys::ncclResult_t::ncclSuccess && r != sys::ncclResult_t::ncclInProgress {
                return Err(format!("NCCL reported {}", describe(r, Some(c))));
            }
        }
        Ok(())
    }

    /// Destroys the communicators (after the stream has finished their work).
    pub(crate) fn close(mut self) -> Result<(), String> {
        let mut first = None;
        for c in self
            .groups
            .values()
            .copied()
            .chain(std::iter::once(self.world))
        {
            // SAFETY: each communicator is destroyed once.
            if let Err(e) = unsafe { nr::comm_destroy(c) } {
                first.get_or_insert(format!("ncclCommDestroy: {}", describe(e.0, None)));
            }
        }
        self.closed = true;
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Comms {
    /// On an error path: abort, so that work left on the device does not wait for peers.
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        for c in self
            .groups
            .values()
            .copied()
            .chain(std::iter::once(self.world))
        {
            // SAFETY: each communicator is aborted once.
            let _ = unsafe { nr::comm_abort(c) };
        }
    }
}

fn data_type(d: DType) -> sys::ncclDataType_t {
    match d {
        DType::F32 => sys::ncclDataType_t::ncclFloat32,
        DType::BF16 => sys::ncclDataType_t::ncclBfloat16,
        DType::F16 => sys::ncclDataType_t::ncclFloat16,
        DType::I64 => sys::ncclDataType_t::ncclInt64,
        DType::Bool => sys::ncclDataType_t::ncclUint8,
    }
}

fn red_op(op: ReduceOp) -> sys::ncclRedOp_t {
    match op {
        ReduceOp::Sum => sys::ncclRedOp_t::ncclSum,
        ReduceOp::Max => sys::ncclRedOp_t::ncclMax,
        ReduceOp::Min => sys::ncclRedOp_t::ncclMin,
    }
}

/// Enqueues one exchange of `dtype` from the buffer at `input` to the one at `output` (device
/// addresses) on `stream`.
pub(crate) fn exchange(
    comms: Option<&Comms>,
    plan: &Plan,
    x: &ExchangePlan,
    dtype: DType,
    input: u64,
    output: u64,
    stream: &CudaStream,
) -> Result<(), String> {
    let size = dtype.size_bytes();
    let src = |off: usize| input + off as u64 * size;
    let dst = |off: usize| output + off as u64 * size;
    let cu_stream = stream.cu_stream();
    // Copies within the rank first (they touch no buffer that NCCL reads).
    for c in &x.calls {
        if let Call::Copy {
            src: s,
            dst: d,
            count,
        } = c
        {
            // SAFETY: both ranges lie in the arena (checked by the plan) and do not overlap.
            unsafe {
                cudarc::driver::result::memcpy_dtod_async(
                    dst(*d),
                    src(*s),
                    *count * size as usize,
                    cu_stream,
                )
            }
            .map_err(|e| format!("device copy: {}", super::check::driver_error(&e)))?;
        }
    }
    let Some(group) = &x.comm else {
        return Ok(());
    };
    let comms = comms.ok_or("NCCL was not initialized")?;
    let comm = comms.get(plan, group)?;
    let ty = data_type(dtype);
    let st = cu_stream as sys::cudaStream_t;
    let issue = |c: &Call| -> Result<(), sys::ncclResult_t> {
        // SAFETY: every range lies in the arena of this rank (checked by the plan); the
        // communicator is alive; NCCL reads and writes them in stream order.
        let r = unsafe {
            match *c {
                Call::AllReduce {
                    op,
                    src: s,
                    dst: d,
                    count,
                } => nr::all_reduce(
                    src(s) as *const c_void,
                    dst(d) as *mut c_void,
                    count,
                    ty,
                    red_op(op),
                    comm,
                    st,
                ),
                Call::ReduceScatter {
                    op,
                    src: s,
                    dst: d,
                    count,
                } => nr::reduce_scatter(
                    src(s) as *const c_void,
                    dst(d) as *mut c_void,
                    count,
                    ty,
                    red_op(op),
                    comm,
                    st,
                ),
                Call::AllGather {
                    src: s,
                    dst: d,
                    count,
                } => nr::all_gather(
                    src(s) as *const c_void,
                    dst(d) as *mut c_void,
                    count,
                    ty,
                    comm,
                    st,
                ),
                Call::Reduce {
                    op,
                    root,
                    src: s,
                    dst: d,
                    count,
                } => nr::reduce(
                    src(s) as *const c_void,
                    d.map_or(null_mut(), |d| dst(d) as *mut c_void),
                    count,
                    ty,
                    red_op(op),
                    root as i32,
                    comm,
                    st,
                ),
                Call::Broadcast {
                    root,
                    src: s,
                    dst: d,
                    count,
                } => nr::broadcast(
                    s.map_or(std::ptr::null(), |s| src(s) as *const c_void),
                    dst(d) as *mut c_void,
                    count,
                    ty,
                    root as i32,
                    comm,
                    st,
                ),
                Call::Send {
                    peer,
                    src: s,
                    count,
                } => nr::send(src(s) as *const c_void, count, ty, peer as i32, comm, st),
                Call::Recv {
                    peer,
                    dst: d,
                    count,
                } => nr::recv(dst(d) as *mut c_void, count, ty, peer as i32, comm, st),
                Call::Copy { .. } => return Ok(()),
            }
        };
        r.map(|_| ()).map_err(|e| e.0)
    };
    let fail = |c: &Call, e: sys::ncclResult_t| format!("{c}: {}", describe(e, Some(comm)));
    if x.grouped {
        nr::group_start().map_err(|e| format!("ncclGroupStart: {}", describe(e.0, Some(comm))))?;
        let mut first: Option<String> = None;
        for c in x.calls.iter().filter(|c| c.is_nccl()) {
            if let Err(e) = issue(c) {
                first = Some(fail(c, e));
                break;
            }
        }
        let end = nr::group_end();
        if let Some(m) = first {
            return Err(m);
        }
        end.map_err(|e| format!("ncclGroupEnd: {}", describe(e.0, Some(comm))))?;
    } else {
        for c in x.calls.iter().filter(|c| c.is_nccl()) {
            issue(c).map_err(|e| fail(c, e))?;
        }
    }
    Ok(())
}
