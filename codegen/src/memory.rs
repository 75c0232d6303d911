//! The memory plan: every buffer gets an offset in the rank's one arena, alive from the step
//! that defines it to the last step that uses it, and a dead buffer's range is reused.
//!
//! Placement is first fit in step order over the ranges in use (offsets aligned to
//! [`ALIGN`]); the arena's size is the highest end reached, which is the rank's peak memory.

use std::collections::BTreeMap;

use crate::host::{BufId, Buffer, Step, ALIGN};

/// Inserts an allocation (`alloc`) before the first step that touches each buffer, unless that
/// step places the buffer itself (`places`: inputs and tables), and a release (`free`) after
/// the last one (never for buffers in `keep`). Liveness is structural, so a symbolic program
/// is scheduled once for every binding; [`place`] gives the offsets once sizes are known.
pub fn schedule<S>(
    work: Vec<(S, Vec<BufId>)>,
    keep: &[BufId],
    places: impl Fn(&S) -> bool,
    alloc: impl Fn(BufId) -> S,
    free: impl Fn(BufId) -> S,
) -> Vec<S> {
    // First and last step touching each buffer.
    let mut first: BTreeMap<BufId, usize> = BTreeMap::new();
    let mut last: BTreeMap<BufId, usize> = BTreeMap::new();
    for (i, (_, touched)) in work.iter().enumerate() {
        for &b in touched {
            first.entry(b).or_insert(i);
            last.insert(b, i);
        }
    }
    let mut steps = Vec::with_capacity(work.len() * 2);
    for (i, (step, touched)) in work.into_iter().enumerate() {
        let mut fresh: Vec<BufId> = touched
            .iter()
            .copied()
            .filter(|b| first.get(b) == Some(&i))
            .collect();
        fresh.dedup();
        if !places(&step) {
            steps.extend(fresh.into_iter().map(&alloc));
        }
        steps.push(step);
        let mut dead: Vec<BufId> = touched
            .iter()
            .copied()
            .filter(|b| last.get(b) == Some(&i) && !keep.contains(b))
            .collect();
        dead.sort();
        dead.dedup();
        steps.extend(dead.into_iter().map(&free));
    }
    steps
}

/// Places every buffer of a scheduled program (first fit in step order over the ranges in use,
/// offsets aligned to [`ALIGN`]); returns the arena's size, the highest end reached.
pub fn place(buffers: &mut [Buffer], steps: &[Step]) -> u64 {
    let mut arena = Arena::default();
    for s in steps {
        match s {
            Step::Input { buf, .. } | Step::Table { buf, .. } | Step::Alloc { buf } => {
                let at = arena.place(*buf, buffers[buf.0].bytes());
                buffers[buf.0].offset = at;
            }
            Step::Free { buf } => arena.release(*buf),
            _ => {}
        }
    }
    arena.peak
}

/// The arena while a plan is placed: the gaps below the top (offset -> end), the top of the
/// highest range in use, and where each live buffer sits. First fit takes the lowest gap that
/// is large enough, else the top; a released range joins its neighbouring gaps (or lowers the
/// top). Placement costs the number of gaps, not the number of live buffers (a program's
/// weights are live together from its start).
#[derive(Default)]
struct Arena {
    gaps: BTreeMap<u64, u64>,
    top: u64,
    live: BTreeMap<BufId, (u64, u64)>,
    peak: u64,
}

impl Arena {
    fn place(&mut self, b: BufId, bytes: u64) -> u64 {
        let size = bytes.max(1).div_ceil(ALIGN) * ALIGN;
        let fit = self
            .gaps
            .iter()
            .find(|(&start, &end)| end - start >= size)
            .map(|(&start, &end)| (start, end));
        let at = match fit {
            Some((start, end)) => {
                self.gaps.remove(&start);
                if start + size < end {
                    self.gaps.insert(start + size, end);
                }
                start
            }
            None => {
                let at = self.top;
                self.top += size;
                at
            }
        };
        self.live.insert(b, (at, at + size));
        self.peak = self.peak.max(self.top);
        at
    }

    fn release(&mut self, b: BufId) {
        let Some((mut start, mut end)) = self.live.remove(&b) else {
            return;
        };
        // Join the gap ending here and the one starting at the end.
        if let Some((&s, &e)) = self.gaps.range(..start).next_back() {
            if e == start {
                self.gaps.remove(&s);
                start = s;
            }
        }
        if let Some(e) = self.gaps.remove(&end) {
            end = e;
        }
        if end == self.top {
            self.top = start;
        } else {
            self.gaps.insert(start, end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tpc_ir::DType;

    fn buf(n: usize) -> Buffer {
        Buffer {
            name: "x".into(),
            dtype: DType::F32,
            shape: vec![n],
            offset: 0,
        }
    }

    fn input(b: usize) -> Step {
        Step::Input {
            buf: BufId(b),
            param: "x".into(),
        }
    }

    #[test]
    fn dead_ranges_are_reused_and_live_ones_never_overlap() {
        // b0 (1 KiB) used by steps 0-1, b1 by 1-2, b2 by 2-3: b2 can take b0's place.
        let mut buffers = vec![buf(256), buf(256), buf(256)];
        let work = vec![
            (input(0), vec![BufId(0)]),
            (input(1), vec![BufId(0), BufId(1)]),
            (input(2), vec![BufId(1), BufId(2)]),
            (
                Step::Output {
                    buf: BufId(2),
                    value: "y".into(),
                    shape: vec![256],
                },
                vec![BufId(2)],
            ),
        ];
        let steps = schedule(
            work,
            &[BufId(2)],
            |s| matches!(s, Step::Input { .. } | Step::Table { .. }),
            |buf| Step::Alloc { buf },
            |buf| Step::Free { buf },
        );
        let peak = place(&mut buffers, &steps);
        assert_eq!(peak, 2048);
        assert_eq!(buffers[2].offset, buffers[0].offset);
        assert_ne!(buffers[1].offset, buffers[0].offset);
        assert!(steps.contains(&Step::Free { buf: BufId(0) }));
        assert!(!steps.contains(&Step::Free { buf: BufId(2) }));
    }
}
