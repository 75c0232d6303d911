//! The in-process collectives: real semantics for every kind, uneven pieces, and failure
//! without hangs.

use std::time::{Duration, Instant};

use tpc_ir::ReduceOp;
use tpc_runtime::collective::run_ranks;
use tpc_runtime::{Data, Error};

const T: Duration = Duration::from_secs(10);

fn floats(d: &Data) -> Vec<f32> {
    match d {
        Data::Float(v) => v.clone(),
        other => panic!("expected floats, got {other:?}"),
    }
}

#[test]
fn allreduce_sums_in_rank_order_on_every_rank() {
    let out = run_ranks(4, T, |c| {
        let r = c.rank() as f32;
        c.allreduce(Data::Float(vec![r, 1.0, 0.1 * r]), ReduceOp::Sum)
    })
    .expect("runs");
    for d in &out {
        assert_eq!(floats(d), floats(&out[0]), "every rank holds the same bits");
    }
    assert_eq!(floats(&out[0])[..2], [6.0, 4.0]);
    let max = run_ranks(3, T, |c| {
        c.allreduce(
            Data::I64(vec![c.rank() as i64, -(c.rank() as i64)]),
            ReduceOp::Max,
        )
    })
    .unwrap();
    assert_eq!(max[1], Data::I64(vec![2, 0]));
}

#[test]
fn allgather_moves_uneven_pieces() {
    // 12 heads over 8 ranks: the first 4 ranks hold 2, the rest 1.
    let out = run_ranks(8, T, |c| {
        let mine = if c.rank() < 4 {
            vec![c.rank() as f32; 2]
        } else {
            vec![c.rank() as f32]
        };
        let all = c.allgather(Data::Float(mine))?;
        Ok(all.iter().flat_map(|d| floats(d)).collect::<Vec<f32>>())
    })
    .unwrap();
    let want: Vec<f32> = vec![0., 0., 1., 1., 2., 2., 3., 3., 4., 5., 6., 7.];
    assert!(out.iter().all(|v| *v == want));
}

#[test]
fn reduce_scatter_keeps_each_ranks_piece_of_the_sum() {
    let counts = [2usize, 1, 1];
    let out = run_ranks(3, T, |c| {
        c.reduce_scatter(
            Data::Float(vec![1.0, 2.0, 3.0, 4.0]),
            &counts,
            ReduceOp::Sum,
        )
    })
    .unwrap();
    assert_eq!(floats(&out[0]), [3.0, 6.0]);
    assert_eq!(floats(&out[1]), [9.0]);
    assert_eq!(floats(&out[2]), [12.0]);
}

#[test]
fn all_to_all_transposes_pieces() {
    let out = run_ranks(3, T, |c| {
        let r = c.rank() as i64;
        // Rank r sends (r, s) repeated s+1 times to rank s.
        let pieces = (0..3)
            .map(|s| Data::I64(vec![10 * r + s; s as usize + 1]))
            .collect();
        c.all_to_all(pieces)
    })
    .unwrap();
    assert_eq!(
        out[2],
        vec![
            Data::I64(vec![2; 3]),
            Data::I64(vec![12; 3]),
            Data::I64(vec![22; 3])
        ]
    );
    assert_eq!(
        out[0],
        vec![Data::I64(vec![0]), Data::I64(vec![10]), Data::I64(vec![20])]
    );
}

#[test]
fn a_failing_rank_fails_the_run_with_its_message_and_nobody_hangs() {
    let start = Instant::now();
    let err = run_ranks(4, T, |c| {
        if c.rank() == 2 {
            return Err(Error::Value("rank two's input is bad".into()));
        }
        c.allreduce(Data::Float(vec![1.0]), ReduceOp::Sum)
    })
    .unwrap_err();
    assert!(matches!(err, Error::RankFailed { rank: 2, .. }), "{err}");
    assert!(err.to_string().contains("rank two's input is bad"), "{err}");
    assert!(start.elapsed() < T / 2, "the others were released at once");
}

#[test]
fn a_stalled_rank_times_out_and_a_panicking_rank_is_reported() {
    let err = run_ranks(2, Duration::from_millis(200), |c| {
        if c.rank() == 0 {
            c.allreduce(Data::Float(vec![1.0]), ReduceOp::Sum)
        } else {
            Ok(Data::Float(vec![]))
        }
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("timed out") && err.to_string().contains("rank(s) 1"),
        "{err}"
    );
    let err = run_ranks(3, T, |c| {
        if c.rank() == 1 {
            panic!("boom");
        }
        c.allgather(Data::Float(vec![0.0]))
    })
    .unwrap_err();
    assert!(err.to_string().contains("boom"), "{err}");
}
