//! Independent steps run in parallel within --max-parallel and the
//! machine's resource slots (cpu, memory, gpu); requests that can never fit
//! are rejected before anything runs.

use crate::common::Sandbox;

/// Three independent steps that record when they ran.
fn parallel_pipeline(sb: &Sandbox, resources: &str) {
    let mut yaml = String::from("version: 1\nsteps:\n");
    for name in ["a", "b", "c"] {
        yaml += &format!(
            "  {name}:\n    run: echo \"$(date +%s%N) start\" >> times.{name}; sleep 1; echo \"$(date +%s%N) end\" >> times.{name}; echo \"$CUDA_VISIBLE_DEVICES\" > gpu.{name}\n    resources: {resources}\n"
        );
    }
    sb.write("pipeline.yaml", &yaml);
}

/// The largest number of steps that ran at the same time.
fn max_overlap(sb: &Sandbox) -> usize {
    let mut events: Vec<(u128, i32)> = Vec::new();
    for name in ["a", "b", "c"] {
        let text = std::fs::read_to_string(sb.path().join(format!("times.{name}"))).unwrap();
        for line in text.lines() {
            let (t, what) = line.split_once(' ').unwrap();
            events.push((t.parse().unwrap(), if what == "start" { 1 } else { -1 }));
        }
    }
    events.sort();
    let (mut now, mut max) = (0, 0);
    for (_, delta) in events {
        now += delta;
        max = max.max(now);
    }
    max as usize
}

fn run_with(sb: &Sandbox, env: &[(&str, &str)], extra: &[&str]) {
    let mut args = vec!["run", "pipeline.yaml"];
    args.extend_from_slice(extra);
    let mut command = sb.command(&args);
    command.envs(env.iter().copied());
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn independent_steps_run_in_parallel_within_cpu_slots() {
    let sb = Sandbox::new();
    parallel_pipeline(&sb, "{ cpu: 1 }");
    run_with(&sb, &[("WEIR_CPUS", "3")], &["--max-parallel", "8"]);
    assert_eq!(max_overlap(&sb), 3);

    let sb = Sandbox::new();
    parallel_pipeline(&sb, "{ cpu: 1 }");
    run_with(&sb, &[("WEIR_CPUS", "2")], &["--max-parallel", "8"]);
    assert_eq!(max_overlap(&sb), 2);

    let sb = Sandbox::new();
    parallel_pipeline(&sb, "{ cpu: 1 }");
    run_with(&sb, &[("WEIR_CPUS", "3")], &["--max-parallel", "1"]);
    assert_eq!(max_overlap(&sb), 1);
}

#[test]
fn memory_and_gpu_requests_limit_what_runs_together() {
    let sb = Sandbox::new();
    parallel_pipeline(&sb, "{ cpu: 0.5, memory: 3GiB }");
    run_with(
        &sb,
        &[("WEIR_CPUS", "4"), ("WEIR_MEMORY", "7GiB")],
        &["--max-parallel", "8"],
    );
    assert_eq!(max_overlap(&sb), 2);

    let sb = Sandbox::new();
    parallel_pipeline(&sb, "{ gpu: 1 }");
    run_with(
        &sb,
        &[("WEIR_CPUS", "4"), ("WEIR_GPUS", "2")],
        &["--max-parallel", "8"],
    );
    assert_eq!(max_overlap(&sb), 2);
    let mut seen: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            std::fs::read_to_string(sb.path().join(format!("gpu.{n}")))
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["0", "1"], "each step sees only the GPU it was given");
}

#[test]
fn a_request_larger_than_the_machine_is_rejected_before_running() {
    let sb = Sandbox::new();
    parallel_pipeline(&sb, "{ cpu: 8, memory: 1TiB, gpu: 1 }");
    let out = sb
        .command(&["run", "pipeline.yaml"])
        .env("WEIR_CPUS", "2")
        .env("WEIR_MEMORY", "8GiB")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "pipeline.yaml:4: steps.a.resources.cpu: 8 CPUs is more than this machine offers (2)"
        ),
        "{err}"
    );
    assert!(
        err.contains(
            "steps.a.resources.memory: 1024.0GiB is more than this machine offers (8.0GiB)"
        ),
        "{err}"
    );
    assert!(
        err.contains("steps.a.resources.gpu: 1 GPUs is more than this machine offers (0)"),
        "{err}"
    );
    assert!(err.contains("WEIR_CPUS"), "{err}");
    assert!(sb.json(&["runs", "list"]).as_array().unwrap().is_empty());
}
