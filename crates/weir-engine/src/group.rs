//! The processes of a data-parallel built-in trainer (`weir/train-gbdt` or
//! `weir/train-mlp` with `with: { workers: N }`)
//! and how they sum their histograms. The step runtime is rank 0: it listens
//! on loopback, starts ranks 1..N as `weir train-worker` processes (in its
//! own process group, so cancel, timeouts and the reaper stop them with it)
//! and hands them the torchrun contract (MASTER_ADDR, MASTER_PORT,
//! WORLD_SIZE, RANK). An all-reduce is a star: every rank sends its buffer
//! to rank 0, which adds them in rank order and sends the sum back, so every
//! process gets the same bits whatever the timing.
//!
//! Why not a collective library: there is no maintained Rust binding to
//! gloo or NCCL, and MPI would need a native install on every node. The
//! exchange is a few thousand messages of a few hundred kilobytes per fit,
//! over loopback; a star is enough, and it keeps the sum deterministic.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use weir_ml::{Collective, MlError};

use crate::EngineError;

/// How long the processes of a group wait for one another to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// A peer silent for this long is taken as gone (a round's histograms
/// take milliseconds).
const SILENCE_TIMEOUT: Duration = Duration::from_secs(600);
const HELLO: &[u8; 4] = b"WEIR";

/// A data-parallel group over TCP.
pub struct TcpGroup {
    rank: usize,
    world: usize,
    /// Rank 0: the streams of ranks 1.. in order; others: the one to rank 0.
    peers: Vec<Mutex<TcpStream>>,
}

fn lost(what: impl std::fmt::Display) -> MlError {
    MlError::Group(what.to_string())
}

impl TcpGroup {
    /// Rank 0: waits for ranks 1..world to connect to `listener`. `check`
    /// is asked while it waits, so a worker that died at start fails the
    /// fit at once instead of at the timeout.
    pub fn lead(
        listener: &TcpListener,
        world: usize,
        mut check: impl FnMut() -> Result<(), String>,
    ) -> Result<TcpGroup, MlError> {
        listener.set_nonblocking(true).map_err(lost)?;
        let mut slots: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        while slots.iter().any(Option::is_none) {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    stream.set_nonblocking(false).map_err(lost)?;
                    stream
                        .set_read_timeout(Some(Duration::from_secs(10)))
                        .map_err(lost)?;
                    let mut hello = [0u8; 8];
                    // Not a worker (a port scan): ignore it.
                    if stream.read_exact(&mut hello).is_err() || &hello[..4] != HELLO {
                        continue;
                    }
                    let rank = u32::from_le_bytes(hello[4..].try_into().expect("4 bytes")) as usize;
                    if !(1..world).contains(&rank) || slots[rank - 1].is_some() {
                        return Err(lost(format!("a worker said it is rank {rank} of {world}")));
                    }
                    configure(&stream)?;
                    slots[rank - 1] = Some(stream);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    check().map_err(lost)?;
                    if Instant::now() > deadline {
                        let missing: Vec<String> = slots
                            .iter()
                            .enumerate()
                            .filter(|(_, s)| s.is_none())
                            .map(|(i, _)| (i + 1).to_string())
                            .collect();
                        return Err(lost(format!(
                            "workers {} did not connect within {}s",
                            missing.join(", "),
                            CONNECT_TIMEOUT.as_secs()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(lost(e)),
            }
        }
        Ok(TcpGroup {
            rank: 0,
            world,
            peers: slots.into_iter().flatten().map(Mutex::new).collect(),
        })
    }

    /// Ranks 1..: connects to rank 0 at `master`.
    pub fn join(master: &str, rank: usize, world: usize) -> Result<TcpGroup, MlError> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let mut stream = loop {
            match TcpStream::connect(master) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(lost(format!("cannot reach rank 0 at {master}: {e}")))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        configure(&stream)?;
        let mut hello = [0u8; 8];
        hello[..4].copy_from_slice(HELLO);
        hello[4..].copy_from_slice(&(rank as u32).to_le_bytes());
        stream.write_all(&hello).map_err(lost)?;
        Ok(TcpGroup {
            rank,
            world,
            peers: vec![Mutex::new(stream)],
        })
    }
}

fn configure(stream: &TcpStream) -> Result<(), MlError> {
    stream.set_nodelay(true).map_err(lost)?;
    stream
        .set_read_timeout(Some(SILENCE_TIMEOUT))
        .map_err(lost)?;
    Ok(())
}

fn send(stream: &mut TcpStream, buf: &[f64]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(8 + buf.len() * 8);
    bytes.extend((buf.len() as u64).to_le_bytes());
    for v in buf {
        bytes.extend(v.to_le_bytes());
    }
    stream.write_all(&bytes)
}

fn receive(stream: &mut TcpStream, expected: usize) -> Result<Vec<f64>, String> {
    let mut len = [0u8; 8];
    stream.read_exact(&mut len).map_err(|e| e.to_string())?;
    let len = u64::from_le_bytes(len) as usize;
    if len != expected {
        return Err(format!("sent {len} values where {expected} were expected"));
    }
    let mut bytes = vec![0u8; len * 8];
    stream.read_exact(&mut bytes).map_err(|e| e.to_string())?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

impl Collective for TcpGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce(&self, buf: &mut [f64]) -> Result<(), MlError> {
        if self.rank == 0 {
            for (i, peer) in self.peers.iter().enumerate() {
                let mut peer = peer.lock().expect("peer lock");
                let theirs = receive(&mut peer, buf.len())
                    .map_err(|e| lost(format!("worker {}: {e}", i + 1)))?;
                for (b, t) in buf.iter_mut().zip(theirs) {
                    *b += t;
                }
            }
            for (i, peer) in self.peers.iter().enumerate() {
                send(&mut peer.lock().expect("peer lock"), buf)
                    .map_err(|e| lost(format!("worker {}: {e}", i + 1)))?;
            }
        } else {
            let mut master = self.peers[0].lock().expect("peer lock");
            send(&mut master, buf).map_err(|e| lost(format!("rank 0: {e}")))?;
            let sum = receive(&mut master, buf.len()).map_err(|e| lost(format!("rank 0: {e}")))?;
            buf.copy_from_slice(&sum);
        }
        Ok(())
    }
}

/// The built-in trainers that train data-parallel.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trainer {
    Gbdt,
    Mlp,
}

impl Trainer {
    /// The built-in op's trainer, if it trains data-parallel.
    pub fn of(op: weir_core::ops::BuiltinOp) -> Option<Trainer> {
        match op {
            weir_core::ops::BuiltinOp::TrainGbdt => Some(Trainer::Gbdt),
            weir_core::ops::BuiltinOp::TrainMlp => Some(Trainer::Mlp),
            _ => None,
        }
    }
}

/// What a `weir train-worker` process trains on: the trainer, the step's
/// options and the staged inputs on this machine.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub trainer: Trainer,
    pub with: serde_json::Value,
    pub train: PathBuf,
    pub valid: Option<PathBuf>,
    pub master: String,
    pub world: usize,
}

impl WorkerSpec {
    /// A rank of `step`'s fit, on its inputs as staged on this machine.
    pub fn of_step(
        trainer: Trainer,
        step: &weir_core::pipeline::Step,
        inputs: &std::collections::BTreeMap<String, PathBuf>,
        master: String,
        world: usize,
    ) -> Result<WorkerSpec, EngineError> {
        Ok(WorkerSpec {
            trainer,
            with: serde_json::Value::Object(step.with.clone().into_iter().collect()),
            train: inputs.get("train").cloned().ok_or_else(|| {
                EngineError::StepFailed(format!("step '{}' has no input 'train'", step.name))
            })?,
            valid: inputs.get("valid").cloned(),
            master,
            world,
        })
    }
}

/// The worker processes of a fit; killed if dropped before they finished.
pub(crate) struct Workers {
    children: Vec<Child>,
}

impl Workers {
    /// Starts ranks 1..world of a fit described by `spec` (written to
    /// `spec_path`), their output appended to the step's log.
    pub(crate) fn start(
        spec: &WorkerSpec,
        spec_path: &Path,
        log: &crate::ops::StepLog,
    ) -> Result<Workers, EngineError> {
        std::fs::write(
            spec_path,
            serde_json::to_vec(spec).expect("plain data serializes"),
        )
        .map_err(EngineError::io("cannot write", spec_path))?;
        let exe = std::env::current_exe()
            .map_err(|e| EngineError::StepFailed(format!("cannot find the weir binary: {e}")))?;
        let (host, port) = spec.master.rsplit_once(':').unwrap_or((&spec.master, ""));
        let mut workers = Workers {
            children: Vec::new(),
        };
        for rank in 1..spec.world {
            let out = log
                .try_clone()
                .map_err(EngineError::io("cannot open", log.path()))?;
            let err = log
                .try_clone()
                .map_err(EngineError::io("cannot open", log.path()))?;
            let child = Command::new(&exe)
                .arg("train-worker")
                .arg(spec_path)
                .env("MASTER_ADDR", host)
                .env("MASTER_PORT", port)
                .env("WORLD_SIZE", spec.world.to_string())
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err))
                .spawn()
                .map_err(|e| EngineError::StepFailed(format!("cannot start worker {rank}: {e}")))?;
            workers.children.push(child);
        }
        Ok(workers)
    }

    /// An error if a worker has already exited.
    pub(crate) fn check(&mut self) -> Result<(), String> {
        for (i, child) in self.children.iter_mut().enumerate() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "worker {} exited ({status}) before training",
                    i + 1
                ));
            }
        }
        Ok(())
    }

    /// Waits for every worker to exit; an error names the first that failed.
    pub(crate) fn wait(mut self) -> Result<(), EngineError> {
        let mut failed = None;
        for (i, child) in self.children.iter_mut().enumerate() {
            match child.wait() {
                Ok(s) if s.success() => {}
                Ok(s) => {
                    failed.get_or_insert(format!("worker {} exited with {s}", i + 1));
                }
                Err(e) => {
                    failed.get_or_insert(format!("cannot wait for worker {}: {e}", i + 1));
                }
            }
        }
        self.children.clear();
        match failed {
            Some(why) => Err(EngineError::StepFailed(why)),
            None => Ok(()),
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `weir train-worker SPEC`: rank RANK (from the environment) of a
/// data-parallel fit. Trains alongside rank 0 and keeps nothing: rank 0
/// writes the model.
pub fn train_worker(spec_path: &Path) -> Result<(), EngineError> {
    crate::exec::die_with_parent();
    let spec: WorkerSpec = serde_json::from_slice(
        &std::fs::read(spec_path).map_err(EngineError::io("cannot read", spec_path))?,
    )
    .map_err(|e| EngineError::StepFailed(format!("the worker spec is not valid: {e}")))?;
    let rank: usize = std::env::var("RANK")
        .ok()
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| EngineError::StepFailed("RANK must be a number".into()))?;
    train_rank(&spec, rank)
}

/// Rank `rank` (1..world) of the fit `spec` describes: trains alongside
/// rank 0 and keeps nothing.
pub fn train_rank(spec: &WorkerSpec, rank: usize) -> Result<(), EngineError> {
    if !(1..spec.world).contains(&rank) {
        return Err(EngineError::StepFailed(format!(
            "rank {rank}: a worker's rank must be from 1 to {} (rank 0 is the step itself)",
            spec.world - 1
        )));
    }
    let with = |e: serde_json::Error| EngineError::StepFailed(format!("with: {e}"));
    let train = weir_data::read_parquet(&spec.train)?;
    let valid = match &spec.valid {
        Some(path) => Some(weir_data::read_parquet(path)?),
        None => None,
    };
    match spec.trainer {
        Trainer::Gbdt => {
            let params: weir_ml::GbdtParams =
                serde_json::from_value(spec.with.clone()).map_err(with)?;
            let data = weir_ml::GbdtData::prepare(&train, valid.as_ref(), &params)?;
            let group = TcpGroup::join(&spec.master, rank, spec.world)?;
            weir_ml::train_gbdt_distributed(&data, &params, &group, &mut |_| true)?;
        }
        Trainer::Mlp => {
            let params: weir_ml::MlpParams =
                serde_json::from_value(spec.with.clone()).map_err(with)?;
            let group = TcpGroup::join(&spec.master, rank, spec.world)?;
            weir_ml::train_mlp_distributed(&train, valid.as_ref(), &params, &group, &mut |_| true)?;
        }
    }
    Ok(())
}
