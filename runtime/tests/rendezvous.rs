//! The multi-process rendezvous: environment parsing and the blob exchange over TCP on
//! 127.0.0.1 (threads stand in for processes).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use tpc_runtime::cuda::rendezvous::{Frame, FrameKind, HEADER_BYTES};
use tpc_runtime::cuda::{share_blob, Master, WorldConfig};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn cfg(rank: usize, world: usize, port: u16) -> WorldConfig {
    WorldConfig {
        rank,
        world_size: world,
        master: Some(Master {
            addr: "127.0.0.1".into(),
            port,
        }),
        local_rank: None,
    }
}

fn vars(pairs: &[(&str, &str)]) -> tpc_runtime::Result<WorldConfig> {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    WorldConfig::from_vars(|name| map.get(name).cloned())
}

const FULL: [(&str, &str); 4] = [
    ("TPC_RANK", "1"),
    ("TPC_WORLD_SIZE", "4"),
    ("TPC_MASTER_ADDR", "node0"),
    ("TPC_MASTER_PORT", "29500"),
];

#[test]
fn no_variables_is_one_process() {
    assert_eq!(vars(&[]).unwrap(), WorldConfig::single());
    assert_eq!(vars(&[("TPC_RANK", " ")]).unwrap(), WorldConfig::single());
    assert!(!WorldConfig::single().is_multi_process());
}

#[test]
fn all_variables_parse() {
    let c = vars(&FULL).unwrap();
    assert_eq!(
        c,
        WorldConfig {
            rank: 1,
            world_size: 4,
            master: Some(Master {
                addr: "node0".into(),
                port: 29500
            }),
            local_rank: None,
        }
    );
    assert!(c.is_multi_process());
    let mut with_local = FULL.to_vec();
    with_local.push(("TPC_LOCAL_RANK", "3"));
    assert_eq!(vars(&with_local).unwrap().local_rank, Some(3));
}

fn err(pairs: &[(&str, &str)]) -> String {
    vars(pairs).unwrap_err().to_string()
}

#[test]
fn partial_variables_name_what_is_missing() {
    let m = err(&FULL[..2]);
    assert!(
        m.contains("TPC_MASTER_ADDR") && m.contains("TPC_MASTER_PORT"),
        "{m}"
    );
    assert!(m.contains("are not"), "{m}");
    let m = err(&[("TPC_MASTER_PORT", "1")]);
    assert!(m.contains("TPC_MASTER_PORT is set"), "{m}");
    let m = err(&[("TPC_LOCAL_RANK", "0")]);
    assert!(m.contains("TPC_LOCAL_RANK"), "{m}");
}

#[test]
fn malformed_values_name_the_variable() {
    let with = |name: &str, value: &str| {
        let mut v = FULL.to_vec();
        for p in v.iter_mut() {
            if p.0 == name {
                p.1 = value;
            }
        }
        if !v.iter().any(|p| p.0 == name) {
            v.push((name, value));
        }
        vars(&v)
    };
    for (name, value) in [
        ("TPC_RANK", "one"),
        ("TPC_RANK", "-1"),
        ("TPC_WORLD_SIZE", "0"),
        ("TPC_WORLD_SIZE", "x"),
        ("TPC_MASTER_PORT", "0"),
        ("TPC_MASTER_PORT", "70000"),
        ("TPC_MASTER_PORT", "http"),
        ("TPC_MASTER_ADDR", "two words"),
        ("TPC_LOCAL_RANK", "gpu0"),
    ] {
        let m = with(name, value).unwrap_err().to_string();
        assert!(m.contains(name), "{name}={value}: {m}");
    }
    let m = with("TPC_RANK", "4").unwrap_err().to_string();
    assert!(
        m.contains("TPC_RANK=4") && m.contains("TPC_WORLD_SIZE=4"),
        "{m}"
    );
}

#[test]
fn single_process_returns_the_blob() {
    let blob = vec![1, 2, 3];
    let got = share_blob(
        &WorldConfig::single(),
        Some(blob.clone()),
        Duration::from_secs(1),
    )
    .unwrap();
    assert_eq!(got, blob);
    assert!(share_blob(&WorldConfig::single(), None, Duration::from_secs(1)).is_err());
}

#[test]
fn every_rank_gets_the_blob() {
    let port = free_port();
    let world = 4;
    let blob: Vec<u8> = (0..128u32).map(|i| (i * 7) as u8).collect();
    let handles: Vec<_> = (0..world)
        .map(|r| {
            let blob = blob.clone();
            thread::spawn(move || {
                // Non-roots start first: they must retry until rank 0 listens.
                if r == 0 {
                    thread::sleep(Duration::from_millis(200));
                }
                let mine = (r == 0).then_some(blob);
                share_blob(&cfg(r, world, port), mine, Duration::from_secs(20))
            })
        })
        .collect();
    for (r, h) in handles.into_iter().enumerate() {
        let got = h
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("rank {r}: {e}"));
        assert_eq!(got, blob, "rank {r}");
    }
}

#[test]
fn missing_root_is_a_timeout_not_a_hang() {
    let port = free_port();
    let t = Instant::now();
    let e = share_blob(&cfg(1, 2, port), None, Duration::from_millis(700)).unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    let m = e.to_string();
    assert!(
        m.contains("could not reach rank 0") && m.contains(&port.to_string()),
        "{m}"
    );
}

#[test]
fn missing_rank_is_a_timeout_at_the_root() {
    let port = free_port();
    let t = Instant::now();
    let e = share_blob(&cfg(0, 3, port), Some(vec![9]), Duration::from_millis(700)).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(10));
    let m = e.to_string();
    assert!(m.contains("rank(s) 1, 2 of 3 did not join"), "{m}");
}

#[test]
fn a_root_that_answers_with_the_wrong_magic_is_rejected() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let fake = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut hello = [0u8; HEADER_BYTES];
        s.read_exact(&mut hello).unwrap();
        let mut reply = Frame {
            kind: FrameKind::Blob,
            rank: 1,
            world: 2,
            payload: vec![1, 2, 3],
        }
        .encode();
        reply[..4].copy_from_slice(b"HTTP");
        s.write_all(&reply).unwrap();
        thread::sleep(Duration::from_millis(200));
    });
    let m = share_blob(&cfg(1, 2, port), None, Duration::from_secs(5))
        .unwrap_err()
        .to_string();
    assert!(m.contains("magic"), "{m}");
    fake.join().unwrap();
}

#[test]
fn the_root_drops_a_stranger_and_keeps_waiting() {
    let port = free_port();
    let root = thread::spawn(move || {
        share_blob(
            &cfg(0, 2, port),
            Some(vec![42; 128]),
            Duration::from_secs(20),
        )
    });
    // A stranger speaks something else first: it is told so and dropped.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stranger = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("root never listened: {e}"),
        }
    };
    stranger
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    stranger
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stranger.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("magic"), "the stranger was told: {text:?}");
    // The real rank 1 still joins.
    let got = share_blob(&cfg(1, 2, port), None, Duration::from_secs(20)).unwrap();
    assert_eq!(got, vec![42; 128]);
    assert_eq!(root.join().unwrap().unwrap(), vec![42; 128]);
}

#[test]
fn a_duplicate_rank_fails_the_rendezvous() {
    let port = free_port();
    let root =
        thread::spawn(move || share_blob(&cfg(0, 3, port), Some(vec![1]), Duration::from_secs(20)));
    let first = thread::spawn(move || share_blob(&cfg(1, 3, port), None, Duration::from_secs(20)));
    // Let the first rank 1 join before the second one.
    thread::sleep(Duration::from_millis(400));
    let second = share_blob(&cfg(1, 3, port), None, Duration::from_secs(20));
    let root = root.join().unwrap().unwrap_err().to_string();
    assert!(root.contains("rank 1 joined twice"), "{root}");
    let second = second.unwrap_err().to_string();
    assert!(second.contains("joined twice"), "{second}");
    let first = first.join().unwrap().unwrap_err().to_string();
    assert!(first.contains("joined twice"), "{first}");
}

#[test]
fn out_of_range_rank_and_other_world_size_are_rejected() {
    for (rank, world, expect) in [(5u32, 2u32, "outside 1..2"), (1, 3, "TPC_WORLD_SIZE=3")] {
        let port = free_port();
        let root = thread::spawn(move || {
            share_blob(&cfg(0, 2, port), Some(vec![1]), Duration::from_secs(20))
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("root never listened: {e}"),
            }
        };
        let hello = Frame {
            kind: FrameKind::Hello,
            rank,
            world,
            payload: vec![],
        };
        s.write_all(&hello.encode()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let mut h = [0u8; HEADER_BYTES];
        h.copy_from_slice(&answer[..HEADER_BYTES]);
        let (f, len) = Frame::decode_header(&h).unwrap();
        assert_eq!(f.kind, FrameKind::Error);
        let text = String::from_utf8_lossy(&answer[HEADER_BYTES..HEADER_BYTES + len]).to_string();
        assert!(text.contains(expect), "{text}");
        let m = root.join().unwrap().unwrap_err().to_string();
        assert!(m.contains(expect), "{m}");
    }
}

#[test]
fn frames_round_trip_and_reject_bad_headers() {
    let f = Frame {
        kind: FrameKind::Blob,
        rank: 3,
        world: 8,
        payload: vec![7; 128],
    };
    let bytes = f.encode();
    assert_eq!(&bytes[..4], b"TPCR");
    assert_eq!(bytes.len(), HEADER_BYTES + 128);
    let mut h = [0u8; HEADER_BYTES];
    h.copy_from_slice(&bytes[..HEADER_BYTES]);
    let (g, len) = Frame::decode_header(&h).unwrap();
    assert_eq!((g.kind, g.rank, g.world, len), (FrameKind::Blob, 3, 8, 128));
    let mut bad = h;
    bad[4] = 9; // version
    assert!(Frame::decode_header(&bad).unwrap_err().contains("version"));
    let mut bad = h;
    bad[6] = 77; // kind
    assert!(Frame::decode_header(&bad).unwrap_err().contains("kind"));
    let mut bad = h;
    bad[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(Frame::decode_header(&bad).unwrap_err().contains("payload"));
}
