//! Collectives for N rank threads in one process, with real semantics: each rank contributes its
//! own buffer and receives what NCCL would give it. Uneven pieces move only real data. Every wait
//! has a deadline, and a rank that fails or stalls fails the whole run with its own message:
//! nothing hangs.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tpc_ir::ReduceOp;

use crate::tensor::Data;
use crate::{Error, Result};

/// One exchange in flight: every rank's contribution, and how many have read them.
struct Round {
    slots: Vec<Option<Arc<Data>>>,
    taken: usize,
}

struct State {
    /// Rounds by sequence number; each rank numbers its collectives 0, 1, 2, … in program order.
    rounds: BTreeMap<u64, Round>,
    /// The first failure: (rank, message). Once set, every wait returns at once.
    failure: Option<(usize, String)>,
}

/// What the ranks share.
pub struct World {
    size: usize,
    timeout: Duration,
    state: Mutex<State>,
    changed: Condvar,
}

/// One rank's handle on the world.
pub struct Comm {
    rank: usize,
    world: Arc<World>,
    seq: u64,
}

impl World {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A rank that panicked while holding the lock leaves consistent data (every update is a
        // single assignment), so the poison flag carries no information here.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the first failure and wakes every waiting rank.
    fn fail(&self, rank: usize, message: String) {
        let mut st = self.lock();
        if st.failure.is_none() {
            st.failure = Some((rank, message));
        }
        drop(st);
        self.changed.notify_all();
    }
}

impl Comm {
    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.world.size
    }

    /// Deposits `mine` and returns every rank's contribution, in rank order.
    fn exchange(&mut self, what: &str, mine: Data) -> Result<Vec<Arc<Data>>> {
        let world = Arc::clone(&self.world);
        let (n, seq) = (world.size, self.seq);
        self.seq += 1;
        let deadline = Instant::now() + world.timeout;
        let mut st = world.lock();
        st.rounds
            .entry(seq)
            .or_insert_with(|| Round {
                slots: vec![None; n],
                taken: 0,
            })
            .slots[self.rank] = Some(Arc::new(mine));
        world.changed.notify_all();
        loop {
            if let Some((rank, msg)) = &st.failure {
                return Err(Error::RankFailed {
                    rank: *rank,
                    message: msg.clone(),
                });
            }
            let round = st
                .rounds
                .get_mut(&seq)
                .ok_or_else(|| Error::Internal("a collective round vanished".into()))?;
            if round.slots.iter().all(Option::is_some) {
                let all: Vec<Arc<Data>> = round.slots.iter().flatten().cloned().collect();
                round.taken += 1;
                if round.taken == n {
                    st.rounds.remove(&seq);
                }
                return Ok(all);
            }
            let now = Instant::now();
            if now >= deadline {
                let missing: Vec<String> = round
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.is_none())
                    .map(|(r, _)| r.to_string())
                    .collect();
                let message = format!(
                    "{what} #{seq} timed out after {:.1} s waiting for rank(s) {}",
                    world.timeout.as_secs_f64(),
                    missing.join(", ")
                );
                if st.failure.is_none() {
                    st.failure = Some((self.rank, message.clone()));
                }
                drop(st);
                world.changed.notify_all();
                return Err(Error::RankFailed {
                    rank: self.rank,
                    message,
                });
            }
            st = world
                .changed
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Every rank gets the elementwise reduction of all ranks' buffers, summed in rank order so
    /// that every rank holds the same bits.
    pub fn allreduce(&mut self, data: Data, op: ReduceOp) -> Result<Data> {
        let all = self.exchange("allreduce", data)?;
        reduce_in_rank_order(&all, op)
    }

    /// Every rank gets every rank's piece, in rank order (pieces may differ in length).
    pub fn allgather(&mut self, data: Data) -> Result<Vec<Arc<Data>>> {
        self.exchange("allgather", data)
    }

    /// The reduction of all ranks' buffers, of which this rank keeps piece `rank`; `counts` gives
    /// every rank's piece length (uneven counts move only real data).
    pub fn reduce_scatter(&mut self, data: Data, counts: &[usize], op: ReduceOp) -> Result<Data> {
        if counts.len() != self.size() || counts.iter().sum::<usize>() != data_len(&data) {
            return Err(Error::Internal(format!(
                "reduce_scatter of {} elements with counts {counts:?} over {} ranks",
                data_len(&data),
                self.size()
            )));
        }
        let all = self.exchange("reduce_scatter", data)?;
        let start: usize = counts[..self.rank].iter().sum();
        let range = start..start + counts[self.rank];
        let pieces: Vec<Arc<Data>> = all
            .iter()
            .map(|d| Arc::new(slice_data(d, range.clone())))
            .collect();
        reduce_in_rank_order(&pieces, op)
    }

    /// Rank `r` sends `pieces[s]` to rank `s` and receives, in rank order, what each sent it.
    pub fn all_to_all(&mut self, pieces: Vec<Data>) -> Result<Vec<Data>> {
        if pieces.len() != self.size() {
            return Err(Error::Internal(format!(
                "all_to_all with {} pieces over {} ranks",
                pieces.len(),
                self.size()
            )));
        }
        let lens: Vec<usize> = pieces.iter().map(data_len).collect();
        let flat = concat_data(&pieces)?;
        let all = self.exchange(
            "all_to_all",
            Data::I64(lens.iter().map(|&l| l as i64).collect()),
        )?;
        let sent = self.exchange("all_to_all", flat)?;
        let mut out = Vec::with_capacity(self.size());
        for (src, (lens, data)) in all.iter().zip(&sent).enumerate() {
            let Data::I64(lens) = &**lens else {
                return Err(Error::Internal(format!("rank {src} sent bad lengths")));
            };
            let start: i64 = lens[..self.rank].iter().sum();
            let len = lens[self.rank];
            out.push(slice_data(data, start as usize..(start + len) as usize));
        }
        Ok(out)
    }
}

fn data_len(d: &Data) -> usize {
    match d {
        Data::Float(v) => v.len(),
        Data::I64(v) => v.len(),
        Data::Bool(v) => v.len(),
    }
}

fn slice_data(d: &Data, r: std::ops::Range<usize>) -> Data {
    match d {
        Data::Float(v) => Data::Float(v[r].to_vec()),
        Data::I64(v) => Data::I64(v[r].to_vec()),
        Data::Bool(v) => Data::Bool(v[r].to_vec()),
    }
}

fn concat_data(parts: &[Data]) -> Result<Data> {
    let mixed = || Error::Internal("a collective mixes dtypes".into());
    Ok(match parts.first() {
        None | Some(Data::Float(_)) => Data::Float(
            parts
                .iter()
                .map(|p| {
                    if let Data::Float(v) = p {
                        Ok(v.as_slice())
                    } else {
                        Err(mixed())
                    }
                })
                .collect::<Result<Vec<_>>>()?
                .concat(),
        ),
        Some(Data::I64(_)) => Data::I64(
            parts
                .iter()
                .map(|p| {
                    if let Data::I64(v) = p {
                        Ok(v.as_slice())
                    } else {
                        Err(mixed())
                    }
                })
                .collect::<Result<Vec<_>>>()?
                .concat(),
        ),
        Some(Data::Bool(_)) => Data::Bool(
            parts
                .iter()
                .map(|p| {
                    if let Data::Bool(v) = p {
                        Ok(v.as_slice())
                    } else {
                        Err(mixed())
                    }
                })
                .collect::<Result<Vec<_>>>()?
                .concat(),
        ),
    })
}

fn reduce_in_rank_order(all: &[Arc<Data>], op: ReduceOp) -> Result<Data> {
    let first = all
        .first()
        .ok_or_else(|| Error::Internal("a collective over no ranks".into()))?;
    let bad = || Error::Internal("a reduction over buffers of different dtypes or lengths".into());
    match &**first {
        Data::Float(v0) => {
            let mut acc = v0.clone();
            for d in &all[1..] {
                let Data::Float(v) = &**d else {
                    return Err(bad());
                };
                if v.len() != acc.len() {
                    return Err(bad());
                }
                for (a, &b) in acc.iter_mut().zip(v) {
                    *a = match op {
                        ReduceOp::Sum => *a + b,
                        ReduceOp::Max => a.max(b),
                        ReduceOp::Min => a.min(b),
                    };
                }
            }
            Ok(Data::Float(acc))
        }
        Data::I64(v0) => {
            let mut acc = v0.clone();
            for d in &all[1..] {
                let Data::I64(v) = &**d else {
                    return Err(bad());
                };
                if v.len() != acc.len() {
                    return Err(bad());
                }
                for (a, &b) in acc.iter_mut().zip(v) {
                    *a = match op {
                        ReduceOp::Sum => a.wrapping_add(b),
                        ReduceOp::Max => (*a).max(b),
                        ReduceOp::Min => (*a).min(b),
                    };
                }
            }
            Ok(Data::I64(acc))
        }
        Data::Bool(_) => Err(Error::Internal("a reduction of bool buffers".into())),
    }
}

/// Runs `body` on `size` rank threads sharing one world. Returns every rank's result in rank
/// order, or the first failure: a rank's error, a panic, or a collective that timed out.
pub fn run_ranks<T, F>(size: usize, timeout: Duration, body: F) -> Result<Vec<T>>
where
    T: Send,
    F: Fn(&mut Comm) -> Result<T> + Sync,
{
    if size == 0 {
        return Err(Error::Internal("a world of zero ranks".into()));
    }
    let world = Arc::new(World {
        size,
        timeout,
        state: Mutex::new(State {
            rounds: BTreeMap::new(),
            failure: None,
        }),
        changed: Condvar::new(),
    });
    let results: Vec<Result<T>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..size)
            .map(|rank| {
                let world = Arc::clone(&world);
                let body = &body;
                scope.spawn(move || {
                    // The ranks share the machine's cores: their GEMMs do not each take all.
                    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                    crate::ops::linalg::set_gemm_threads((cores / size).max(1));
                    let mut comm = Comm {
                        rank,
                        world: Arc::clone(&world),
                        seq: 0,
                    };
                    // A panic is caught here, not at join, so that the other ranks are released
                    // at once instead of waiting for their deadline.
                    let out =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&mut comm)))
                            .unwrap_or_else(|panic| {
                                let what = panic
                                    .downcast_ref::<&str>()
                                    .map(|s| s.to_string())
                                    .or_else(|| panic.downcast_ref::<String>().cloned())
                                    .unwrap_or_else(|| "a panic".into());
                                Err(Error::Internal(format!("panicked: {what}")))
                            });
                    if let Err(e) = &out {
                        world.fail(rank, e.to_string());
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(rank, h)| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::RankFailed {
                        rank,
                        message: "the rank thread died".into(),
                    })
                })
            })
            .collect()
    });
    if let Some((rank, message)) = world.lock().failure.clone() {
        return Err(Error::RankFailed { rank, message });
    }
    results.into_iter().collect()
}
