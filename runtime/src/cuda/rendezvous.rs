//! Joining the processes of a multi-node run: which rank this process is, and a one-shot
//! exchange of a small blob (the 128-byte NCCL unique id) from rank 0 to every other process.
//!
//! # Configuration
//!
//! The usual rendezvous variables, all four or none (an empty value counts as unset):
//!
//! | variable          | meaning                                                   |
//! |-------------------|-----------------------------------------------------------|
//! | `TPC_RANK`        | this process's rank, `0..TPC_WORLD_SIZE`                  |
//! | `TPC_WORLD_SIZE`  | the number of processes                                   |
//! | `TPC_MASTER_ADDR` | host name or address where rank 0 listens                 |
//! | `TPC_MASTER_PORT` | TCP port where rank 0 listens (1..=65535)                 |
//! | `TPC_LOCAL_RANK`  | optional: the GPU ordinal this process uses               |
//!
//! None of them: one process owns every rank (one GPU per rank on this machine).
//!
//! # Wire format
//!
//! Every message is one frame: a 20-byte header, all integers little-endian, then `len` bytes
//! of payload.
//!
//! | bytes  | field     | value                                                          |
//! |--------|-----------|----------------------------------------------------------------|
//! | 0..4   | magic     | `b"TPCR"`                                                      |
//! | 4..6   | version   | [`VERSION`] (1)                                                |
//! | 6..8   | kind      | 1 hello, 2 blob, 3 ack, 4 error ([`FrameKind`])                |
//! | 8..12  | rank      | the sender's rank (hello, ack) or the receiver's (blob, error) |
//! | 12..16 | world     | the world size the sender was started with                     |
//! | 16..20 | len       | payload length, at most [`MAX_PAYLOAD`]                        |
//!
//! The exchange: every non-root process connects to rank 0 (retrying with backoff until the
//! timeout) and sends `hello` (no payload). Rank 0 accepts connections until every rank
//! `1..world` has said hello (a duplicate rank, a rank out of range or a different world size
//! fails the rendezvous, and every joined process is told so with an `error` frame whose
//! payload is the UTF-8 message; a connection that does not speak this protocol is dropped and
//! rank 0 keeps waiting). Then rank 0 sends each a `blob` frame and waits for each one's `ack`.
//! Every read and write has a deadline: a missing process is a timeout error, never a hang.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::{Error, Result};

pub const RANK_VAR: &str = "TPC_RANK";
pub const WORLD_SIZE_VAR: &str = "TPC_WORLD_SIZE";
pub const MASTER_ADDR_VAR: &str = "TPC_MASTER_ADDR";
pub const MASTER_PORT_VAR: &str = "TPC_MASTER_PORT";
pub const LOCAL_RANK_VAR: &str = "TPC_LOCAL_RANK";

/// Frame magic.
pub const MAGIC: [u8; 4] = *b"TPCR";
/// Protocol version.
pub const VERSION: u16 = 1;
/// Header size in bytes.
pub const HEADER_BYTES: usize = 20;
/// Largest payload a frame may carry.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// The default time to wait for every process to join.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Where rank 0 listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Master {
    pub addr: String,
    pub port: u16,
}

/// Which process of the world this is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorldConfig {
    /// This process's rank (0 for a single process).
    pub rank: usize,
    /// The number of processes (1 for a single process).
    pub world_size: usize,
    /// Where rank 0 listens; `None`: a single process owns every rank.
    pub master: Option<Master>,
    /// The GPU ordinal this process uses (`TPC_LOCAL_RANK`), if given.
    pub local_rank: Option<usize>,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig::single()
    }
}

impl WorldConfig {
    /// One process that owns every rank.
    pub fn single() -> WorldConfig {
        WorldConfig {
            rank: 0,
            world_size: 1,
            master: None,
            local_rank: None,
        }
    }

    /// Whether the world has other processes to join.
    pub fn is_multi_process(&self) -> bool {
        self.master.is_some()
    }

    /// From the process environment (see the module docs).
    pub fn from_env() -> Result<WorldConfig> {
        WorldConfig::from_vars(|name| std::env::var(name).ok())
    }

    /// From a lookup of the variables by name (the environment, or a map in tests).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<WorldConfig> {
        let get = |name: &str| {
            get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let names = [RANK_VAR, WORLD_SIZE_VAR, MASTER_ADDR_VAR, MASTER_PORT_VAR];
        let values: Vec<Option<String>> = names.iter().map(|n| get(n)).collect();
        let local = get(LOCAL_RANK_VAR);
        let set: Vec<&str> = names
            .iter()
            .zip(&values)
            .filter(|(_, v)| v.is_some())
            .map(|(n, _)| *n)
            .collect();
        if set.is_empty() {
            if local.is_some() {
                return Err(Error::Value(format!(
                    "{LOCAL_RANK_VAR} is set but {} are not: {LOCAL_RANK_VAR} picks the GPU of one \
                     process of a multi-process run; set all of {} (or unset {LOCAL_RANK_VAR} to \
                     run every rank in this process)",
                    names.join(", "),
                    names.join(", ")
                )));
            }
            return Ok(WorldConfig::single());
        }
        if set.len() < names.len() {
            let unset: Vec<&str> = names
                .iter()
                .zip(&values)
                .filter(|(_, v)| v.is_none())
                .map(|(n, _)| *n)
                .collect();
            return Err(Error::Value(format!(
                "{} {} set but {} {}: set all of {} to run one process per rank, or none of them \
                 to run every rank in this process",
                set.join(", "),
                if set.len() == 1 { "is" } else { "are" },
                unset.join(", "),
                if unset.len() == 1 {
                    "is not"
                } else {
                    "are not"
                },
                names.join(", ")
            )));
        }
        let value = |i: usize| values[i].clone().unwrap_or_default();
        let parse = |name: &str, v: &str, what: &str| -> Result<usize> {
            v.parse::<usize>().map_err(|_| {
                Error::Value(format!(
                    "{name}={v:?} is not {what} (a non-negative integer)"
                ))
            })
        };
        let rank = parse(RANK_VAR, &value(0), "a rank")?;
        let world_size = parse(WORLD_SIZE_VAR, &value(1), "a world size")?;
        if world_size == 0 {
            return Err(Error::Value(format!(
                "{WORLD_SIZE_VAR}=0: the world needs at least one process"
            )));
        }
        if rank >= world_size {
            return Err(Error::Value(format!(
                "{RANK_VAR}={rank} is not below {WORLD_SIZE_VAR}={world_size} (ranks are 0..{world_size})"
            )));
        }
        let addr = value(2);
        if addr.contains(char::is_whitespace) {
            return Err(Error::Value(format!(
                "{MASTER_ADDR_VAR}={addr:?} is not a host name or address"
            )));
        }
        let port_text = value(3);
        let port = match port_text.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(Error::Value(format!(
                    "{MASTER_PORT_VAR}={port_text:?} is not a TCP port (1..=65535)"
                )))
            }
        };
        let local_rank = match local {
            Some(v) => Some(parse(LOCAL_RANK_VAR, &v, "a GPU ordinal")?),
            None => None,
        };
        Ok(WorldConfig {
            rank,
            world_size,
            master: Some(Master { addr, port }),
            local_rank,
        })
    }
}

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Hello = 1,
    Blob = 2,
    Ack = 3,
    Error = 4,
}

impl FrameKind {
    fn from_u16(k: u16) -> Option<FrameKind> {
        Some(match k {
            1 => FrameKind::Hello,
            2 => FrameKind::Blob,
            3 => FrameKind::Ack,
            4 => FrameKind::Error,
            _ => return None,
        })
    }
}

/// One message of the rendezvous protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub rank: u32,
    pub world: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.payload.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.kind as u16).to_le_bytes());
        out.extend_from_slice(&self.rank.to_le_bytes());
        out.extend_from_slice(&self.world.to_le_bytes());
        out.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Parses a header; returns the frame without its payload and the payload length.
    pub fn decode_header(h: &[u8; HEADER_BYTES]) -> std::result::Result<(Frame, usize), String> {
        if h[0..4] != MAGIC {
            return Err(format!(
                "bad magic {:02x?} (expected {:02x?} \"TPCR\"): not a tpc rendezvous peer",
                &h[0..4],
                MAGIC
            ));
        }
        let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let version = u16_at(4);
        if version != VERSION {
            return Err(format!(
                "protocol version {version}, this build speaks {VERSION}: run the same tpc on every node"
            ));
        }
        let kind = FrameKind::from_u16(u16_at(6))
            .ok_or_else(|| format!("unknown frame kind {}", u16_at(6)))?;
        let len = u32_at(16) as usize;
        if len > MAX_PAYLOAD {
            return Err(format!("a payload of {len} bytes (at most {MAX_PAYLOAD})"));
        }
        Ok((
            Frame {
                kind,
                rank: u32_at(8),
                world: u32_at(12),
                payload: Vec::new(),
            },
            len,
        ))
    }
}

fn time_left(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    (left > Duration::ZERO).then_some(left)
}

/// Why reading or writing a frame failed.
enum WireError {
    /// The deadline passed.
    Timeout,
    /// The peer closed the connection or the socket failed.
    Io(std::io::Error),
    /// The bytes are not this protocol.
    Protocol(String),
}

impl WireError {
    fn describe(&self, what: &str, timeout: Duration) -> String {
        match self {
            WireError::Timeout => format!("{what}: timed out after {:.1} s", timeout.as_secs_f64()),
            WireError::Io(e) if e.kind() == ErrorKind::UnexpectedEof => {
                format!("{what}: the peer closed the connection")
            }
            WireError::Io(e) => format!("{what}: {e}"),
            WireError::Protocol(m) => format!("{what}: {m}"),
        }
    }
}

fn io_err(e: std::io::Error) -> WireError {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => WireError::Timeout,
        _ => WireError::Io(e),
    }
}

fn write_frame(
    s: &mut TcpStream,
    f: &Frame,
    deadline: Instant,
) -> std::result::Result<(), WireError> {
    let left = time_left(deadline).ok_or(WireError::Timeout)?;
    s.set_write_timeout(Some(left)).map_err(WireError::Io)?;
    s.write_all(&f.encode()).map_err(io_err)?;
    s.flush().map_err(io_err)
}

fn read_frame(s: &mut TcpStream, deadline: Instant) -> std::result::Result<Frame, WireError> {
    let mut read = |buf: &mut [u8]| -> std::result::Result<(), WireError> {
        let mut at = 0;
        while at < buf.len() {
            let left = time_left(deadline).ok_or(WireError::Timeout)?;
            s.set_read_timeout(Some(left)).map_err(WireError::Io)?;
            match s.read(&mut buf[at..]) {
                Ok(0) => return Err(WireError::Io(ErrorKind::UnexpectedEof.into())),
                Ok(n) => at += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        Ok(())
    };
    let mut h = [0u8; HEADER_BYTES];
    read(&mut h)?;
    let (mut frame, len) = Frame::decode_header(&h).map_err(WireError::Protocol)?;
    frame.payload = vec![0u8; len];
    read(&mut frame.payload)?;
    Ok(frame)
}

/// Shares `blob_if_root` (given by rank 0, `None` on every other rank) with every process of
/// the world; returns the blob on every rank. A single-process world returns the blob at once.
/// Fails with a clear error when a process does not join within `timeout`, when rank 0 cannot
/// be reached, and when a peer does not speak this protocol.
pub fn share_blob(
    cfg: &WorldConfig,
    blob_if_root: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Vec<u8>> {
    if cfg.rank >= cfg.world_size {
        return Err(Error::Value(format!(
            "rank {} is not below the world size {}",
            cfg.rank, cfg.world_size
        )));
    }
    let master = match &cfg.master {
        Some(m) if cfg.world_size > 1 => m,
        _ => {
            return blob_if_root.ok_or_else(|| {
                Error::Value("rendezvous: the only process is rank 0 and must give the blob".into())
            })
        }
    };
    if let Some(b) = &blob_if_root {
        if b.len() > MAX_PAYLOAD {
            return Err(Error::Value(format!(
                "rendezvous: a blob of {} bytes is over the limit of {MAX_PAYLOAD}",
                b.len()
            )));
        }
    }
    match (cfg.rank, blob_if_root) {
        (0, Some(blob)) => serve(cfg, master, blob, timeout),
        (0, None) => Err(Error::Value(
            "rendezvous: rank 0 must give the blob to share".into(),
        )),
        (_, None) => join(cfg, master, timeout),
        (r, Some(_)) => Err(Error::Value(format!(
            "rendezvous: only rank 0 gives the blob, but rank {r} gave one"
        ))),
    }
}

fn resolve(master: &Master) -> std::io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = (master.addr.as_str(), master.port)
        .to_socket_addrs()?
        .collect();
    if addrs.is_empty() {
        return Err(std::io::Error::new(
            ErrorKind::NotFound,
            format!("{} resolves to no address", master.addr),
        ));
    }
    Ok(addrs)
}

/// Rank 0 listens on every interface (as torch's store does): a host name that resolves to a
/// loopback address on rank 0's own machine (Debian's `127.0.1.1`) must still be reachable
/// from the others. The family of the master address comes first, then the other one.
fn listen(master: &Master) -> std::io::Result<TcpListener> {
    let v4 = SocketAddr::from(([0, 0, 0, 0], master.port));
    let v6 = SocketAddr::from(([0u16; 8], master.port));
    let order = match resolve(master).ok().and_then(|a| a.first().copied()) {
        Some(SocketAddr::V6(_)) => [v6, v4],
        _ => [v4, v6],
    };
    TcpListener::bind(order[0]).or_else(|e| TcpListener::bind(order[1]).map_err(|_| e))
}

fn net_err(m: String) -> Error {
    Error::Io(m)
}

/// Tells every joined process that the rendezvous failed, then returns the error.
fn fail_all(joined: &mut [Option<TcpStream>], world: u32, message: String) -> Error {
    let deadline = Instant::now() + Duration::from_secs(2);
    for (r, s) in joined.iter_mut().enumerate() {
        if let Some(s) = s {
            let f = Frame {
                kind: FrameKind::Error,
                rank: r as u32,
                world,
                payload: message.clone().into_bytes(),
            };
            let _ = write_frame(s, &f, deadline);
        }
    }
    net_err(message)
}

fn serve(cfg: &WorldConfig, master: &Master, blob: Vec<u8>, timeout: Duration) -> Result<Vec<u8>> {
    let world = cfg.world_size;
    let deadline = Instant::now() + timeout;
    let at = format!("{}:{}", master.addr, master.port);
    let listener = listen(master).map_err(|e| {
        net_err(format!(
            "rendezvous: rank 0 cannot listen on port {} (for {at}): {e}",
            master.port
        ))
    })?;
    let addr = listener
        .local_addr()
        .map_or_else(|_| at.clone(), |a| a.to_string());
    listener
        .set_nonblocking(true)
        .map_err(|e| net_err(format!("rendezvous: {e}")))?;
    let mut joined: Vec<Option<TcpStream>> = (0..world).map(|_| None).collect();
    let mut rejected: Vec<String> = Vec::new();
    let mut count = 1;
    while count < world {
        let (mut s, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                if time_left(deadline).is_none() {
                    let missing: Vec<String> = (1..world)
                        .filter(|&r| joined[r].is_none())
                        .map(|r| r.to_string())
                        .collect();
                    let mut m = format!(
                        "rendezvous: rank 0 waited {:.1} s on {addr} but rank(s) {} of {world} did not join; \
                         start every process with the same {WORLD_SIZE_VAR}, {MASTER_ADDR_VAR} and {MASTER_PORT_VAR}",
                        timeout.as_secs_f64(),
                        missing.join(", ")
                    );
                    if !rejected.is_empty() {
                        m += &format!(" (rejected connections: {})", rejected.join("; "));
                    }
                    return Err(fail_all(&mut joined, world as u32, m));
                }
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => {
                let m = format!("rendezvous: rank 0 could not accept on {addr}: {e}");
                return Err(fail_all(&mut joined, world as u32, m));
            }
        };
        let _ = s.set_nonblocking(false);
        let _ = s.set_nodelay(true);
        // A peer that connects must say hello at once; one that does not is dropped.
        let hello_deadline = deadline.min(Instant::now() + Duration::from_secs(5));
        let hello = match read_frame(&mut s, hello_deadline) {
            Ok(f) => f,
            Err(e) => {
                let m = e.describe(&format!("connection from {peer}"), Duration::from_secs(5));
                if let WireError::Protocol(_) = e {
                    let f = Frame {
                        kind: FrameKind::Error,
                        rank: u32::MAX,
                        world: world as u32,
                        payload: m.clone().into_bytes(),
                    };
                    let _ = write_frame(&mut s, &f, hello_deadline);
                }
                rejected.push(m);
                continue;
            }
        };
        let r = hello.rank as usize;
        let problem = if hello.kind != FrameKind::Hello {
            Some(format!(
                "{peer} sent a {:?} frame instead of hello",
                hello.kind
            ))
        } else if hello.world as usize != world {
            Some(format!(
                "a process at {peer} (rank {r}) was started with {WORLD_SIZE_VAR}={}, rank 0 with {world}",
                hello.world
            ))
        } else if r == 0 || r >= world {
            Some(format!(
                "a process at {peer} claims rank {r}, outside 1..{world} (rank 0 is the master)"
            ))
        } else if joined[r].is_some() {
            Some(format!(
                "rank {r} joined twice (again from {peer}): give every process its own {RANK_VAR}"
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            let m = format!("rendezvous failed: {p}");
            let f = Frame {
                kind: FrameKind::Error,
                rank: hello.rank,
                world: world as u32,
                payload: m.clone().into_bytes(),
            };
            let _ = write_frame(
                &mut s,
                &f,
                deadline.max(Instant::now() + Duration::from_secs(1)),
            );
            return Err(fail_all(&mut joined, world as u32, m));
        }
        joined[r] = Some(s);
        count += 1;
    }
    // Everybody is here: send the blob, then collect the acknowledgements.
    for r in 1..world {
        let f = Frame {
            kind: FrameKind::Blob,
            rank: r as u32,
            world: world as u32,
            payload: blob.clone(),
        };
        if let Some(s) = joined[r].as_mut() {
            if let Err(e) = write_frame(s, &f, deadline) {
                let m = e.describe(
                    &format!("rendezvous: sending the blob to rank {r}"),
                    timeout,
                );
                return Err(fail_all(&mut joined, world as u32, m));
            }
        }
    }
    for r in 1..world {
        let Some(s) = joined[r].as_mut() else {
            continue;
        };
        match read_frame(s, deadline) {
            Ok(f) if f.kind == FrameKind::Ack && f.rank as usize == r => {}
            Ok(f) => {
                let m = format!(
                    "rendezvous: rank {r} answered the blob with a {:?} frame from rank {}",
                    f.kind, f.rank
                );
                return Err(fail_all(&mut joined, world as u32, m));
            }
            Err(e) => {
                let m = e.describe(
                    &format!("rendezvous: waiting for rank {r} to acknowledge"),
                    timeout,
                );
                return Err(fail_all(&mut joined, world as u32, m));
            }
        }
    }
    Ok(blob)
}

fn join(cfg: &WorldConfig, master: &Master, timeout: Duration) -> Result<Vec<u8>> {
    let rank = cfg.rank;
    let world = cfg.world_size;
    let deadline = Instant::now() + timeout;
    let at = format!("{}:{}", master.addr, master.port);
    let mut backoff = Duration::from_millis(20);
    let mut last_error;
    let mut s = loop {
        let attempt = match resolve(master) {
            Ok(addrs) => {
                let mut result = Err(std::io::Error::other("no address"));
                for a in addrs {
                    let left = time_left(deadline).unwrap_or(Duration::from_millis(1));
                    result = TcpStream::connect_timeout(&a, left.min(Duration::from_secs(5)));
                    if result.is_ok() {
                        break;
                    }
                }
                result
            }
            Err(e) => Err(e),
        };
        match attempt {
            Ok(s) => break s,
            Err(e) => last_error = e,
        }
        match time_left(deadline) {
            Some(left) => std::thread::sleep(backoff.min(left)),
            None => {
                return Err(net_err(format!(
                    "rendezvous: rank {rank} could not reach rank 0 at {at} within {:.1} s \
                     (last error: {last_error}); is rank 0 running, and {MASTER_ADDR_VAR}/{MASTER_PORT_VAR} right?",
                    timeout.as_secs_f64()
                )))
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    };
    let _ = s.set_nodelay(true);
    let hello = Frame {
        kind: FrameKind::Hello,
        rank: rank as u32,
        world: world as u32,
        payload: Vec::new(),
    };
    write_frame(&mut s, &hello, deadline).map_err(|e| {
        net_err(e.describe(
            &format!("rendezvous: rank {rank} saying hello to {at}"),
            timeout,
        ))
    })?;
    let f = read_frame(&mut s, deadline).map_err(|e| {
        let what = match e {
            WireError::Timeout => format!(
                "rendezvous: rank {rank} joined rank 0 at {at} but got no blob \
                 (are all {world} processes started?)"
            ),
            _ => format!("rendezvous: rank {rank} waiting for the blob from {at}"),
        };
        net_err(e.describe(&what, timeout))
    })?;
    match f.kind {
        FrameKind::Blob if f.rank as usize == rank && f.world as usize == world => {
            let ack = Frame {
                kind: FrameKind::Ack,
                rank: rank as u32,
                world: world as u32,
                payload: Vec::new(),
            };
            write_frame(&mut s, &ack, deadline).map_err(|e| {
                net_err(e.describe(&format!("rendezvous: rank {rank} acknowledging"), timeout))
            })?;
            Ok(f.payload)
        }
        FrameKind::Blob => Err(net_err(format!(
            "rendezvous: rank {rank} of {world} got a blob meant for rank {} of {}",
            f.rank, f.world
        ))),
        FrameKind::Error => Err(net_err(format!(
            "rendezvous: rank 0 at {at} rejected rank {rank}: {}",
            String::from_utf8_lossy(&f.payload)
        ))),
        k => Err(net_err(format!(
            "rendezvous: rank {rank} expected the blob from {at} but got a {k:?} frame"
        ))),
    }
}
