//! A distributed `run:` step on Ray: its workers as one placement group.
//!
//! Rank 0 is the step's runtime itself, the Ray job's entrypoint, placed by
//! one worker's `resources:`; it uploads the outputs and records the
//! outcome as on one machine. Ranks 1..N-1 are Ray tasks in one placement
//! group of N-1 bundles of the same resources, started by a Ray driver
//! (`ray_group.py`) that the runtime runs beside rank 0 in its process
//! group: a failing rank 0 takes the driver, and Ray the driver's tasks,
//! with it; a failing other rank makes the driver cancel the rest and exit,
//! which stops rank 0. Each other rank runs `weir exec-rank`, which stages
//! the inputs on its node and runs the step's command there. A built-in
//! trainer's `with: { workers: N }` is placed the same way
//! ([`RemoteRanks`]); its other ranks train in `weir exec-rank` itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use crate::exec::{Task, WorkDir};
use crate::ops::StepLog;
use crate::{Context, EngineError};

/// The variable that tells a distributed step's runtime to place its other
/// ranks on Ray.
pub const ENV: &str = "WEIR_RAY_GROUP";
/// The Python that runs the driver: one with `ray` installed. Without it,
/// the Python of the Ray process that started the job, else `python3`.
pub const PYTHON_ENV: &str = "WEIR_RAY_PYTHON";

const DRIVER: &str = include_str!("ray_group.py");

/// How long the placement group may wait for room before the step fails.
const PLACEMENT_WAIT_S: u64 = 300;

/// What the runner hands a distributed step's runtime on Ray.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Group {
    /// What each rank asks for, in Ray's names.
    pub bundle: BTreeMap<String, f64>,
    /// The placement group's strategy (PACK, SPREAD, ...).
    pub strategy: String,
}

impl Group {
    pub fn to_env(&self) -> String {
        serde_json::to_string(self).expect("plain data serializes")
    }

    pub fn from_env() -> Result<Option<Group>, EngineError> {
        crate::ray::plan_from_env(ENV)
    }
}

/// The driver, once the placement group is ready: where rank 0 is, and the
/// rest of the driver's output (the other ranks' lines, its verdict).
pub(crate) struct Driver {
    pub master_addr: String,
    pub local_world_size: u32,
    pub child: Child,
    pub lines: Lines<BufReader<ChildStdout>>,
}

/// Starts the driver for ranks 1..`workers`-1 and waits until they are
/// placed. The driver's own errors (Ray's, Python's) go to the step log.
pub(crate) async fn start_driver(
    ctx: &Context,
    group: &Group,
    workers: u32,
    step_run_id: &str,
    master_port: u16,
    work: &Path,
    log: &StepLog,
) -> Result<Driver, EngineError> {
    let script = work.join("ray_group.py");
    std::fs::write(&script, DRIVER).map_err(EngineError::io("cannot write", &script))?;
    let weir = std::env::current_exe()
        .map_err(|e| EngineError::Executor(format!("cannot find the weir binary: {e}")))?;
    // The other ranks get the store configuration the runtime got.
    let env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("WEIR_") || k.starts_with("AWS_"))
        .filter(|(k, _)| k != ENV && k != crate::exec::FENCE_VAR && k != "WEIR_GPU_IDS")
        .collect();
    let spec = serde_json::json!({
        "node_ip": job_node_ip(ctx).await,
        "workers": workers,
        "bundle": group.bundle,
        "strategy": group.strategy,
        "wait_s": PLACEMENT_WAIT_S,
        "weir": weir,
        "step_run_id": step_run_id,
        "master_port": master_port,
        "env": env,
    });
    let python = python();
    log.line(format!(
        "placing ranks 1-{} on Ray ({}, with {})",
        workers - 1,
        group.strategy,
        python.display()
    ));
    let stderr = log
        .try_clone()
        .map_err(EngineError::io("cannot open", log.path()))?;
    let mut child = tokio::process::Command::new(&python)
        .arg(&script)
        .env("WEIR_GROUP_SPEC", spec.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            EngineError::StepFailed(format!(
                "cannot start the Ray driver with {}: {e}\n  hint: set {PYTHON_ENV} to a Python that has ray installed",
                python.display()
            ))
        })?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    loop {
        let line = lines
            .next_line()
            .await
            .map_err(|e| EngineError::StepFailed(format!("lost the Ray driver: {e}")))?;
        let Some(line) = line else {
            let status = child.wait().await.ok();
            return Err(EngineError::StepFailed(format!(
                "the Ray driver for ranks 1-{} ended before placing them ({}); last lines of the log:\n{}",
                workers - 1,
                status.map_or("no status".into(), |s| s.to_string()),
                log.tail(10)
            )));
        };
        match line.strip_prefix("weir-group: ") {
            Some(rest) if rest.starts_with("master ") => {
                let mut words = rest["master ".len()..].split_whitespace();
                let (Some(addr), Some(local)) = (words.next(), words.next()) else {
                    return Err(EngineError::StepFailed(format!(
                        "the Ray driver said `{line}`"
                    )));
                };
                return Ok(Driver {
                    master_addr: addr.to_string(),
                    local_world_size: local.parse().unwrap_or(1),
                    child,
                    lines,
                });
            }
            Some(rest) if rest.starts_with("error ") => {
                let _ = child.wait().await;
                return Err(EngineError::StepFailed(rest["error ".len()..].to_string()));
            }
            Some(rest) if rest.starts_with("placed ") => log.line(&rest["placed ".len()..]),
            _ => log.line(line),
        }
    }
}

/// Ranks 1..N-1 of a data-parallel built-in trainer on Ray (`with:
/// { workers: N }`), placed by the driver as a distributed `run:` step's
/// are: each a `weir exec-rank` that stages the inputs on its node and
/// trains beside rank 0, the step runtime, which listens at `listen`.
pub struct RemoteRanks {
    /// The address rank 0 listens at and the other ranks connect to: its
    /// node's, as Ray knows it.
    pub listen: String,
    ended: std::sync::Arc<std::sync::Mutex<Option<Result<(), String>>>>,
    relay: tokio::task::JoinHandle<()>,
}

impl RemoteRanks {
    /// Places ranks 1..`workers`-1 and starts them.
    pub(crate) async fn start(
        ctx: &Context,
        group: &Group,
        workers: u32,
        step_run_id: &str,
        work: &Path,
        log: &StepLog,
    ) -> Result<RemoteRanks, EngineError> {
        let port = crate::exec::free_port()?;
        let Driver {
            master_addr,
            mut child,
            lines,
            ..
        } = start_driver(ctx, group, workers, step_run_id, port, work, log).await?;
        let ended = std::sync::Arc::new(std::sync::Mutex::new(None));
        let relay_log = StepLog::append(log.path())?;
        let slot = ended.clone();
        // Dropping this task drops the driver, which kills it (and Ray the
        // ranks with it): rank 0 failing stops the others.
        let relay = tokio::spawn(async move {
            let failed = relay(lines, relay_log).await;
            let status = child.wait().await;
            let outcome = match (failed, status) {
                (Some(rank), _) => Err(format!(
                    "worker {rank} of {workers} failed on Ray (its lines in the step log start with [rank {rank}])"
                )),
                (None, Ok(s)) if s.success() => Ok(()),
                (None, Ok(s)) => Err(format!("the Ray driver of the workers exited with {s}")),
                (None, Err(e)) => Err(format!("lost the Ray driver of the workers: {e}")),
            };
            *slot.lock().expect("outcome lock") = Some(outcome);
        });
        Ok(RemoteRanks {
            listen: format!("{master_addr}:{port}"),
            ended,
            relay,
        })
    }

    fn outcome(&self) -> Option<Result<(), String>> {
        self.ended.lock().expect("outcome lock").clone()
    }

    /// While rank 0 waits for the others to connect: an error once they
    /// can no longer come.
    pub fn check(&self) -> Result<(), String> {
        match self.outcome() {
            None => Ok(()),
            Some(Ok(())) => Err("the workers on Ray ended before they connected".into()),
            Some(Err(why)) => Err(why),
        }
    }

    /// After rank 0's fit: waits for the others to end; an error names the
    /// first that failed.
    pub fn wait(&self) -> Result<(), EngineError> {
        loop {
            match self.outcome() {
                Some(outcome) => return outcome.map_err(EngineError::StepFailed),
                None => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    }
}

impl Drop for RemoteRanks {
    fn drop(&mut self) {
        self.relay.abort();
    }
}

/// The address of the node this runtime's Ray job runs on. The driver
/// joins the cluster through that node's raylet: left to guess, Ray picks
/// by routing, which on a host with several nodes (loopback clusters) may
/// be another node's.
async fn job_node_ip(ctx: &Context) -> Option<String> {
    let address = ctx.config.ray_address()?;
    let job = std::env::var(crate::exec::FENCE_VAR).ok()?;
    let cluster = crate::ray::RayCluster::connect(address).await.ok()?;
    let node = cluster.job(&job).await.ok()?.driver_node_id?;
    let nodes = cluster.alive_nodes().await.ok()?;
    nodes
        .into_iter()
        .find(|n| n.node_id == node)
        .map(|n| n.node_ip)
}

/// Passes the driver's lines to the step log until it ends; the rank that
/// failed first, if one did.
pub(crate) async fn relay(mut lines: Lines<BufReader<ChildStdout>>, log: StepLog) -> Option<u32> {
    let mut failed = None;
    while let Ok(Some(line)) = lines.next_line().await {
        match line.strip_prefix("weir-group: failed ") {
            Some(rest) => {
                failed = rest.split_whitespace().next().and_then(|r| r.parse().ok());
            }
            None => log.line(line),
        }
    }
    failed
}

/// The Python for the driver: [`PYTHON_ENV`], else the one whose `ray` the
/// Ray job supervisor that started this runtime has loaded (the
/// entrypoint's shell exec'd into this runtime, so that is the parent; its
/// title is Ray's and its executable the base interpreter, not the
/// environment's, so the environment is read off the path of `ray`'s
/// extension module), else `python3`.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os(PYTHON_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let parent = std::os::unix::process::parent_id();
    std::fs::read_to_string(format!("/proc/{parent}/maps"))
        .ok()
        .and_then(|maps| python_of_ray(&maps))
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// `PREFIX/bin/python3` for a process that mapped
/// `PREFIX/lib/pythonX.Y/(site|dist)-packages/ray/_raylet.so`.
fn python_of_ray(maps: &str) -> Option<PathBuf> {
    let raylet = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|path| path.ends_with("/ray/_raylet.so"))?;
    let prefix = Path::new(raylet).ancestors().find(|dir| {
        dir.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n == "lib")
    })?;
    let python = prefix.parent()?.join("bin/python3");
    python.exists().then_some(python)
}

/// One rank beside rank 0 (`weir exec-rank`): stages the step's inputs into
/// a scratch directory on this node, then runs the step's command, with the
/// torchrun variables its driver set; its exit status is the command's.
/// Its outputs and metrics are scratch: the step's are rank 0's. A saved
/// checkpoint is restored for it to read.
pub async fn exec_rank(ctx: &Context, step_run_id: &str, rank: u32) -> Result<i32, EngineError> {
    use std::os::unix::process::CommandExt;
    crate::exec::die_with_parent();
    use weir_core::pipeline::Action;
    let task = Task::load(ctx, step_run_id).await?;
    // A `run:` step's command, or a data-parallel trainer's.
    let (command, trainer) = match &task.step.action {
        Action::Command(command) => (Some(command), None),
        Action::Builtin(op) => match crate::group::Trainer::of(*op) {
            Some(trainer) => (None, Some(trainer)),
            None => {
                return Err(EngineError::Executor(format!(
                    "step '{}' is neither a `run:` step nor a data-parallel trainer; only those have ranks",
                    task.step.name
                )))
            }
        },
    };
    let scratch = ctx.work_dir().join(format!("{step_run_id}-rank-{rank}"));
    let _ = std::fs::remove_dir_all(&scratch);
    let work = WorkDir(scratch);
    let (inputs, outputs) = (work.0.join("inputs"), work.0.join("outputs"));
    for dir in [&inputs, &outputs] {
        std::fs::create_dir_all(dir).map_err(EngineError::io("cannot create", dir))?;
    }
    let log = StepLog::create(&work.0.join("log.txt"))?;
    let staged = crate::exec::stage_inputs(ctx, &task.inputs, &inputs, &log).await?;
    if let Some(trainer) = trainer {
        // The contract's variables say where rank 0 is.
        let var = |name: &str| {
            std::env::var(name).map_err(|_| {
                EngineError::Executor(format!(
                    "{name} is not set: ranks are started by their step"
                ))
            })
        };
        let world: usize = var("WORLD_SIZE")?
            .parse()
            .map_err(|e| EngineError::Executor(format!("WORLD_SIZE: {e}")))?;
        let master = format!("{}:{}", var("MASTER_ADDR")?, var("MASTER_PORT")?);
        let spec = crate::group::WorkerSpec::of_step(trainer, &task.step, &staged, master, world)?;
        println!(
            "rank {rank} of {world}: training data staged here ({} bytes), rank 0 at {}",
            std::fs::metadata(&spec.train).map_or(0, |m| m.len()),
            spec.master
        );
        tokio::task::spawn_blocking(move || crate::group::train_rank(&spec, rank as usize))
            .await
            .map_err(|e| EngineError::StepFailed(format!("the worker panicked: {e}")))??;
        return Ok(0);
    }
    let command = command.expect("a command when not a trainer");
    let params = work.0.join("params.json");
    let contract = serde_json::json!({ "with": task.step.with, "params": task.params });
    std::fs::write(&params, contract.to_string())
        .map_err(EngineError::io("cannot write", &params))?;
    let metrics = work.0.join("metrics.jsonl");
    std::fs::File::create(&metrics).map_err(EngineError::io("cannot create", &metrics))?;
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(
            Path::new(&task.spec_file)
                .parent()
                .unwrap_or(Path::new(".")),
        )
        .envs(&task.step.env)
        .env("WEIR_INPUTS_DIR", &inputs)
        .env("WEIR_OUTPUTS_DIR", &outputs)
        .env("WEIR_PARAMS", &params)
        .env("WEIR_METRICS_FILE", &metrics)
        .env("WEIR_RUN_ID", &task.run_id)
        .env("WEIR_STEP", &task.step.name);
    if let Some(digest) = ctx.store.step_run(step_run_id).await?.checkpoint_digest {
        let digest: weir_core::Digest = digest
            .parse()
            .map_err(|e| EngineError::corrupt("step_runs.checkpoint_digest", e))?;
        let dir = work.0.join("checkpoint");
        ctx.artifacts
            .fetch(&digest, weir_core::ArtifactKind::Dir, &dir)
            .await?;
        cmd.env("WEIR_CHECKPOINT_DIR", dir);
    }
    // SAFETY: prctl takes plain integers; nothing else runs in the child
    // between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // The command dies with this rank (and it with its Ray task).
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let status = cmd
        .status()
        .map_err(|e| EngineError::StepFailed(format!("cannot start `sh -c {command}`: {e}")))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_python_is_the_environment_that_holds_the_loaded_ray() {
        let dir = std::env::temp_dir().join(format!("weir-python-{}", weir_core::new_id()));
        let venv = dir.join("venv");
        std::fs::create_dir_all(venv.join("bin")).unwrap();
        std::fs::write(venv.join("bin/python3"), "").unwrap();
        let maps = format!(
            "7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n7f02-7f03 r-xp 00000000 08:01 2 {}/lib/python3.11/site-packages/ray/_raylet.so\n",
            venv.display()
        );
        assert_eq!(python_of_ray(&maps), Some(venv.join("bin/python3")));
        assert_eq!(
            python_of_ray("7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/libc.so.6\n"),
            None
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
