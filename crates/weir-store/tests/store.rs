//! One conformance suite, run against every backend: SQLite in a temporary
//! directory and a fresh PostgreSQL database per test (dropped afterwards).
//! PostgreSQL comes from WEIR_TEST_POSTGRES (default: the local server,
//! postgres://postgres@127.0.0.1:5432/test); set it to `off` to skip.

use weir_core::Digest;
use weir_store::*;

struct Backend {
    store: Store,
    _dir: Option<tempfile_dir::TempDir>,
    pg: Option<(String, String)>,
}

mod tempfile_dir {
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn sqlite() -> Option<Backend> {
    let dir = std::env::temp_dir().join(format!("weir-store-{}", weir_core::new_id()));
    let store = Store::open(&format!("sqlite://{}/weir.db", dir.display()))
        .await
        .unwrap();
    Some(Backend {
        store,
        _dir: Some(tempfile_dir::TempDir(dir)),
        pg: None,
    })
}

async fn postgres() -> Option<Backend> {
    let admin = std::env::var("WEIR_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    if admin == "off" {
        eprintln!("WEIR_TEST_POSTGRES=off: skipping the PostgreSQL backend");
        return None;
    }
    let db = format!("weir_test_{}", weir_core::new_id());
    admin_exec(&admin, &format!("CREATE DATABASE {db}")).await;
    let base = admin.rsplit_once('/').unwrap().0;
    let store = Store::open(&format!("{base}/{db}")).await.unwrap();
    Some(Backend {
        store,
        _dir: None,
        pg: Some((admin, db)),
    })
}

async fn admin_exec(admin: &str, sql: &str) {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is required for this test ({e}); set WEIR_TEST_POSTGRES=off to skip"));
    sqlx::query(sql).execute(&mut conn).await.unwrap();
}

impl Backend {
    async fn teardown(self) {
        self.store.close().await;
        if let Some((admin, db)) = self.pg {
            admin_exec(
                &admin,
                &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            )
            .await;
        }
    }
}

fn artifact(bytes: &[u8]) -> ArtifactRecord {
    ArtifactRecord {
        digest: Digest::of_bytes(bytes),
        size: bytes.len() as i64,
        kind: ArtifactKind::File,
        created_at: weir_core::now_ms(),
    }
}

async fn step_statuses(s: &Store, run_id: &str) -> Vec<StepStatus> {
    s.step_runs(run_id)
        .await
        .unwrap()
        .iter()
        .map(|r| r.status)
        .collect()
}

fn new_run(steps: &[&str]) -> (RunRecord, Vec<NewStepRun>) {
    let run = RunRecord {
        id: weir_core::new_id(),
        pipeline: "demo".into(),
        spec_file: "p.yaml".into(),
        spec_json: "{}".into(),
        params_json: "{}".into(),
        status: RunStatus::Running,
        git_rev: None,
        started_at: weir_core::now_ms(),
        ended_at: None,
        error: None,
        runner: None,
        heartbeat_at: None,
    };
    let steps = steps
        .iter()
        .map(|s| NewStepRun {
            id: weir_core::new_id(),
            run_id: run.id.clone(),
            step: s.to_string(),
            kind: "command".into(),
            spec_json: "{}".into(),
            inputs_json: "{}".into(),
        })
        .collect();
    (run, steps)
}

async fn run_lifecycle(s: &Store) {
    let (run, steps) = new_run(&["a", "b"]);
    s.create_run(&run, &steps).await.unwrap();
    let got = s.run(&run.id[..20]).await.unwrap();
    assert_eq!(got.status, RunStatus::Running);
    assert_eq!(s.step_runs(&run.id).await.unwrap().len(), 2);

    let start = StepStart {
        inputs_json: "{\"x\":1}".into(),
        ..Default::default()
    };
    s.start_step(&steps[0].id, &start).await.unwrap();
    let out = artifact(b"table");
    let completion = StepCompletion {
        outputs: vec![("table".into(), out.clone())],
        metrics: vec![
            MetricPoint {
                key: "rows".into(),
                value: 1.0,
                step: 0,
                ts: 1,
            },
            MetricPoint {
                key: "rows".into(),
                value: 2.0,
                step: 1,
                ts: 2,
            },
        ],
        log: Some(artifact(b"log")),
        registrations: vec![],
        sources: vec![SourceFile {
            path: "data.csv".into(),
            digest: "ab".into(),
            size: 2,
        }],
        fence: None,
        datasets: vec![NewDatasetVersion {
            name: "raw".into(),
            output: "table".into(),
            rows: 2,
            columns: 1,
            profile_json: "{\"rows\":2,\"columns\":[]}".into(),
            changes_json: "[]".into(),
        }],
        usage: None,
    };
    s.complete_step(&steps[0].id, &completion).await.unwrap();
    // The table is version 1 of its dataset, recorded with the step.
    let datasets = s.list_datasets().await.unwrap();
    assert_eq!(datasets.len(), 1);
    assert_eq!(
        (
            datasets[0].name.as_str(),
            datasets[0].versions,
            datasets[0].latest.version
        ),
        ("raw", 1, 1)
    );
    assert_eq!(datasets[0].latest.digest, out.digest.hex());
    let made = s.step_dataset_versions(&steps[0].id).await.unwrap();
    assert_eq!(
        (made.len(), made[0].rows, made[0].run_id.as_str()),
        (1, 2, run.id.as_str())
    );
    assert!(s
        .dataset_version("raw", Some(2))
        .await
        .unwrap_err()
        .is_not_found());
    s.fail_step(&steps[1].id, "boom", Some(3), None)
        .await
        .unwrap();
    s.finish_run(&run.id, RunStatus::Failed, Some("step b failed"))
        .await
        .unwrap();

    let a = s.step_run(&steps[0].id).await.unwrap();
    assert_eq!(a.status, StepStatus::Succeeded);
    assert_eq!(a.log_digest, Some(Digest::of_bytes(b"log").hex()));
    assert_eq!(
        (a.inputs_json.as_str(), a.sources()[0].path.as_str()),
        ("{\"x\":1}", "data.csv")
    );
    let b = s.step_run(&steps[1].id).await.unwrap();
    assert_eq!(
        (b.status, b.exit_code, b.error.as_deref()),
        (StepStatus::Failed, Some(3), Some("boom"))
    );
    assert_eq!(
        s.step_outputs(&steps[0].id).await.unwrap(),
        vec![("table".to_string(), out.clone())]
    );
    assert_eq!(s.artifact(&out.digest).await.unwrap(), out);
    let metrics = s.latest_metrics(&run.id).await.unwrap();
    assert_eq!(metrics.len(), 1);
    assert_eq!(metrics[0].1.value, 2.0);
    let run = s.run(&run.id).await.unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run.ended_at.is_some());
    assert_eq!(s.list_runs(10).await.unwrap()[0].id, run.id);
}

async fn unknown_ids_are_not_found(s: &Store) {
    assert!(s.run("ffffffff").await.unwrap_err().is_not_found());
    assert!(s.step_run("nope").await.unwrap_err().is_not_found());
    let err = s.model_version("ghost", None).await.unwrap_err();
    assert!(err.is_not_found());
    assert!(
        err.to_string().contains("no model is registered yet"),
        "{err}"
    );
}

async fn ambiguous_prefix_is_reported(s: &Store) {
    let (r1, _) = new_run(&[]);
    let (mut r2, _) = new_run(&[]);
    // Same 31 hex digits, a different last one.
    let last = if r1.id.ends_with('0') { '1' } else { '0' };
    r2.id = format!("{}{last}", &r1.id[..31]);
    s.create_run(&r1, &[]).await.unwrap();
    s.create_run(&r2, &[]).await.unwrap();
    let err = s.run(&r1.id[..31]).await.unwrap_err();
    assert!(matches!(err, StoreError::Ambiguous { .. }), "{err}");
}

async fn model_versions_increment(s: &Store) {
    let (run, steps) = new_run(&["register"]);
    s.create_run(&run, &steps).await.unwrap();
    let model = artifact(b"model-bytes");
    s.record_artifact(&model).await.unwrap();
    let reg = |n: &str| NewModelVersion {
        name: n.into(),
        digest: Some(model.digest),
        run_id: Some(run.id.clone()),
        metrics_json: "{\"auc\":0.7}".into(),
        lineage_json: "{}".into(),
        ..Default::default()
    };
    let v1 = s.register_model_version(&reg("m")).await.unwrap();
    let completion = StepCompletion {
        registrations: vec![reg("m")],
        ..Default::default()
    };
    s.start_step(&steps[0].id, &StepStart::default())
        .await
        .unwrap();
    let v2 = s.complete_step(&steps[0].id, &completion).await.unwrap();
    assert_eq!((v1.version, v2[0].version), (1, 2));
    assert_eq!(s.model_version("m", None).await.unwrap().version, 2);
    assert_eq!(
        s.model_version("m", Some(1)).await.unwrap().metrics_json,
        "{\"auc\":0.7}"
    );
    let missing = s.model_version("m", Some(9)).await.unwrap_err();
    assert!(
        missing.to_string().contains("model version 'm/9'"),
        "{missing}"
    );
    let models = s.list_models().await.unwrap();
    assert_eq!(
        (
            models[0].name.as_str(),
            models[0].latest_version,
            models[0].versions
        ),
        ("m", 2, 2)
    );
}

async fn failed_completion_leaves_nothing(s: &Store) {
    let (run, steps) = new_run(&["a"]);
    s.create_run(&run, &steps).await.unwrap();
    // The second output repeats the first name: the primary key rejects it and
    // the whole completion, status and the first output included, rolls back.
    let completion = StepCompletion {
        outputs: vec![("x".into(), artifact(b"1")), ("x".into(), artifact(b"2"))],
        ..Default::default()
    };
    s.start_step(&steps[0].id, &StepStart::default())
        .await
        .unwrap();
    assert!(s.complete_step(&steps[0].id, &completion).await.is_err());
    assert_eq!(
        s.step_run(&steps[0].id).await.unwrap().status,
        StepStatus::Running
    );
    assert!(s.step_outputs(&steps[0].id).await.unwrap().is_empty());
    assert!(s
        .artifact(&Digest::of_bytes(b"1"))
        .await
        .unwrap_err()
        .is_not_found());
}

async fn concurrent_registrations_get_distinct_versions(s: &Store) {
    let model = artifact(b"m2");
    s.record_artifact(&model).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.register_model_version(&NewModelVersion {
                name: "busy".into(),
                digest: Some(model.digest),
                metrics_json: "{}".into(),
                lineage_json: "{}".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .version
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort();
    assert_eq!(versions, (1..=8).collect::<Vec<i64>>());
}

async fn cache_hits_copy_outputs_and_metrics(s: &Store) {
    let (run1, steps1) = new_run(&["train"]);
    s.create_run(&run1, &steps1).await.unwrap();
    let start = StepStart {
        inputs_json: "{}".into(),
        cache_key: Some("key-1".into()),
        cache_components: Some("{\"with.l2\":\"0.1\"}".into()),
        cache_miss: Some("no earlier run".into()),
    };
    s.start_step(&steps1[0].id, &start).await.unwrap();
    assert!(
        s.cached_step_run("key-1").await.unwrap().is_none(),
        "a running step is not a cache entry"
    );
    let completion = StepCompletion {
        outputs: vec![("model".into(), artifact(b"weights"))],
        metrics: vec![MetricPoint {
            key: "auc".into(),
            value: 0.7,
            step: 0,
            ts: 1,
        }],
        log: Some(artifact(b"train log")),
        ..Default::default()
    };
    s.complete_step(&steps1[0].id, &completion).await.unwrap();
    let hit = s
        .cached_step_run("key-1")
        .await
        .unwrap()
        .expect("a cache entry");
    assert_eq!(hit.id, steps1[0].id);
    assert_eq!(
        s.previous_cache_components("demo", "train")
            .await
            .unwrap()
            .as_deref(),
        Some("{\"with.l2\":\"0.1\"}")
    );

    let (run2, steps2) = new_run(&["train"]);
    s.create_run(&run2, &steps2).await.unwrap();
    s.complete_from_cache(&steps2[0].id, &start, &hit)
        .await
        .unwrap();
    let reused = s.step_run(&steps2[0].id).await.unwrap();
    assert_eq!(
        (reused.status, reused.cached_from.as_deref()),
        (StepStatus::Succeeded, Some(hit.id.as_str()))
    );
    assert_eq!(reused.log_digest, hit.log_digest);
    assert_eq!(
        s.step_outputs(&steps2[0].id).await.unwrap(),
        s.step_outputs(&hit.id).await.unwrap()
    );
    assert_eq!(s.latest_metrics(&run2.id).await.unwrap()[0].1.value, 0.7);
}

async fn orphaned_runs_fail_whole_and_reopen_for_resume(s: &Store) {
    let (run, steps) = new_run(&["done", "busy", "later"]);
    s.create_run(&run, &steps).await.unwrap();
    s.start_step(&steps[0].id, &StepStart::default())
        .await
        .unwrap();
    s.complete_step(&steps[0].id, &StepCompletion::default())
        .await
        .unwrap();
    s.start_step(&steps[1].id, &StepStart::default())
        .await
        .unwrap();
    s.set_step_process(&steps[1].id, "here", 4242)
        .await
        .unwrap();
    assert_eq!(s.running_runs().await.unwrap().len(), 1);

    let stopped = s
        .fail_orphaned_run(&run.id, "the runner stopped")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (stopped.len(), stopped[0].pgid, stopped[0].host.as_deref()),
        (1, Some(4242), Some("here"))
    );
    assert!(
        s.fail_orphaned_run(&run.id, "again")
            .await
            .unwrap()
            .is_none(),
        "only once"
    );
    let statuses = step_statuses(s, &run.id).await;
    assert_eq!(
        statuses,
        [
            StepStatus::Succeeded,
            StepStatus::Failed,
            StepStatus::Skipped
        ]
    );
    assert_eq!(s.run(&run.id).await.unwrap().status, RunStatus::Failed);

    s.reopen_run(&run.id, "here/1/2").await.unwrap();
    let reopened = s.run(&run.id).await.unwrap();
    assert_eq!(
        (reopened.status, reopened.runner.as_deref(), reopened.error),
        (RunStatus::Running, Some("here/1/2"), None)
    );
    let statuses = step_statuses(s, &run.id).await;
    assert_eq!(
        statuses,
        [
            StepStatus::Succeeded,
            StepStatus::Pending,
            StepStatus::Pending
        ]
    );
    let err = s.reopen_run(&run.id, "x").await.unwrap_err();
    assert!(err.to_string().contains("is not failed"), "{err}");
}

/// A runner killed mid-statement may have its last UPDATE executed late
/// (PostgreSQL runs a received statement even after the client is gone): it
/// must not revive a step of a run that was reaped in the meantime.
async fn late_step_transitions_cannot_revive_a_reaped_run(s: &Store) {
    let (run, steps) = new_run(&["a", "b"]);
    s.create_run(&run, &steps).await.unwrap();
    s.start_step(&steps[0].id, &StepStart::default())
        .await
        .unwrap();
    s.fail_step(&steps[0].id, "boom", Some(1), None)
        .await
        .unwrap();
    s.fail_orphaned_run(&run.id, "the runner stopped")
        .await
        .unwrap();
    let err = s
        .start_step(&steps[1].id, &StepStart::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot start step 'b': it is skipped and its run is failed"),
        "{err}"
    );
    let err = s.retry_step(&steps[0].id, 2).await.unwrap_err();
    assert!(err.to_string().contains("cannot retry step 'a'"), "{err}");
    // An attempt on a lost cluster node that finishes after all cannot turn
    // the failed step into a success.
    let out = artifact(b"late");
    let err = s
        .complete_step(
            &steps[0].id,
            &StepCompletion {
                outputs: vec![("table".into(), out.clone())],
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot complete step 'a': it is failed"),
        "{err}"
    );
    assert!(s.step_outputs(&steps[0].id).await.unwrap().is_empty());
    let statuses = step_statuses(s, &run.id).await;
    assert_eq!(statuses, [StepStatus::Failed, StepStatus::Skipped]);
    // A lost attempt's runtime that finishes while a newer attempt runs is
    // fenced off by the job it ran as.
    let (run2, steps2) = new_run(&["c"]);
    s.create_run(&run2, &steps2).await.unwrap();
    s.start_step(&steps2[0].id, &StepStart::default())
        .await
        .unwrap();
    s.set_step_job(&steps2[0].id, "ray", "http://h:8265", "job-2")
        .await
        .unwrap();
    let late = StepCompletion {
        fence: Some("job-1".into()),
        ..Default::default()
    };
    let err = s.complete_step(&steps2[0].id, &late).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("another attempt of it is running now (job job-2)"),
        "{err}"
    );
    let err = s
        .fail_step_fenced(&steps2[0].id, Some("job-1"), "lost", None, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot fail step 'c'"), "{err}");
    assert_eq!(
        s.step_run(&steps2[0].id).await.unwrap().status,
        StepStatus::Running
    );
    let current = StepCompletion {
        fence: Some("job-2".into()),
        ..Default::default()
    };
    s.complete_step(&steps2[0].id, &current).await.unwrap();
    // Where a cluster placed an attempt is kept with the step run.
    s.set_step_job(&steps[0].id, "ray", "http://127.0.0.2:8265", "weir-a-1")
        .await
        .unwrap();
    s.set_step_node(&steps[0].id, "node-1").await.unwrap();
    let placed = s.step_run(&steps[0].id).await.unwrap();
    assert_eq!(
        (
            placed.executor.as_deref(),
            placed.executor_address.as_deref(),
            placed.node.as_deref(),
            placed.job.as_deref()
        ),
        (
            Some("ray"),
            Some("http://127.0.0.2:8265"),
            Some("node-1"),
            Some("weir-a-1")
        )
    );
}

async fn study_trials_round_trip_and_replace(s: &Store) {
    let (run, steps) = new_run(&["train"]);
    s.create_run(&run, &steps).await.unwrap();
    assert!(s.study_trials(&run.id, "train").await.unwrap().is_empty());
    let mut trial = StoredTrial {
        number: 0,
        state: "running".into(),
        params_json: r#"{"lr":0.1}"#.into(),
        value: None,
        intermediate_json: "{}".into(),
        metrics_json: "[]".into(),
        outputs_json: None,
        error: None,
        tracking_run_id: Some("child".into()),
        started_at: 1,
        ended_at: None,
        job: None,
        node: None,
    };
    s.save_trial(&run.id, "train", &trial).await.unwrap();
    let second = StoredTrial {
        number: 1,
        ..trial.clone()
    };
    s.save_trial(&run.id, "train", &second).await.unwrap();
    // Finishing a trial replaces its row.
    trial.state = "complete".into();
    trial.value = Some(0.731_234_567_890_123_4);
    trial.intermediate_json = r#"{"1":0.5,"2":0.4}"#.into();
    trial.outputs_json = Some(r#"{"model":{"digest":"ab","kind":"file"}}"#.into());
    trial.ended_at = Some(9);
    s.save_trial(&run.id, "train", &trial).await.unwrap();
    let stored = s.study_trials(&run.id, "train").await.unwrap();
    assert_eq!(stored, vec![trial, second.clone()]);
    assert!(s.study_trials(&run.id, "other").await.unwrap().is_empty());

    // A trial running as a cluster job: its job reports values and its
    // outcome while the trial still names it, and never after.
    s.set_trial_placement(&run.id, "train", 1, Some("job-a"), None)
        .await
        .unwrap();
    s.set_trial_placement(&run.id, "train", 1, None, Some("node-7"))
        .await
        .unwrap();
    assert!(s
        .set_trial_intermediate(&run.id, "train", 1, "job-a", r#"{"3":0.6}"#)
        .await
        .unwrap());
    assert!(!s
        .set_trial_intermediate(&run.id, "train", 1, "job-b", r#"{"3":0.1}"#)
        .await
        .unwrap());
    let running = s.study_trial(&run.id, "train", 1).await.unwrap().unwrap();
    assert_eq!(
        (running.job.as_deref(), running.node.as_deref()),
        (Some("job-a"), Some("node-7"))
    );
    assert_eq!(running.intermediate_json, r#"{"3":0.6}"#);
    let ended = StoredTrial {
        state: "pruned".into(),
        value: None,
        metrics_json: r#"[{"key":"valid.auc","value":0.6,"step":0}]"#.into(),
        ended_at: Some(12),
        ..running.clone()
    };
    assert!(!s
        .finish_trial_fenced(&run.id, "train", "job-b", &ended)
        .await
        .unwrap());
    assert!(s
        .finish_trial_fenced(&run.id, "train", "job-a", &ended)
        .await
        .unwrap());
    // Ended: a late second report changes nothing.
    let late = StoredTrial {
        state: "complete".into(),
        value: Some(0.9),
        ..ended.clone()
    };
    assert!(!s
        .finish_trial_fenced(&run.id, "train", "job-a", &late)
        .await
        .unwrap());
    assert_eq!(
        s.study_trial(&run.id, "train", 1).await.unwrap(),
        Some(ended)
    );
    assert_eq!(s.study_trial(&run.id, "train", 5).await.unwrap(), None);
}

async fn log_chunks_show_the_current_attempt(s: &Store) {
    let (run, steps) = new_run(&["train"]);
    s.create_run(&run, &steps).await.unwrap();
    let id = steps[0].id.clone();
    let chunk = |start: i64, body: &str| LogChunk {
        start,
        end: start + body.len() as i64,
        body: body.into(),
    };
    s.push_log_chunk(&id, 1, &chunk(0, "one\n")).await.unwrap();
    s.push_log_chunk(&id, 1, &chunk(4, "two\n")).await.unwrap();
    let all = s.log_chunks(&id, 1, 0).await.unwrap();
    assert_eq!(all, vec![chunk(0, "one\n"), chunk(4, "two\n")]);
    // A reader that has the first piece gets only what follows it.
    assert_eq!(
        s.log_chunks(&id, 1, 4).await.unwrap(),
        vec![chunk(4, "two\n")]
    );
    assert!(s.log_chunks(&id, 1, 8).await.unwrap().is_empty());
    // A retry's log starts again at byte 0 and replaces the first attempt's.
    s.push_log_chunk(&id, 2, &chunk(0, "again\n"))
        .await
        .unwrap();
    assert!(s.log_chunks(&id, 1, 0).await.unwrap().is_empty());
    assert_eq!(
        s.log_chunks(&id, 2, 0).await.unwrap(),
        vec![chunk(0, "again\n")]
    );
    s.drop_log_chunks(&id).await.unwrap();
    assert!(s.log_chunks(&id, 2, 0).await.unwrap().is_empty());
}

macro_rules! store_suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let b = super::sqlite().await.unwrap();
                super::$case(&b.store).await;
                b.teardown().await;
            })*
        }
        mod postgres_backend {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(b) = super::postgres().await else { return };
                super::$case(&b.store).await;
                b.teardown().await;
            })*
        }
    };
}

async fn leases_elect_one_holder_and_window_parts_are_read_once(s: &Store) {
    let lease = format!("controller-{}", weir_core::new_id());
    assert!(s.acquire_lease(&lease, "a", 60_000).await.unwrap());
    // Held and fresh: nobody else gets it; its holder keeps it.
    assert!(!s.acquire_lease(&lease, "b", 60_000).await.unwrap());
    assert!(s.acquire_lease(&lease, "a", 60_000).await.unwrap());
    assert_eq!(s.lease(&lease).await.unwrap().unwrap().0, "a");
    // Expired: the first to ask takes it, and then holds it.
    assert!(s.acquire_lease(&lease, "a", -1).await.unwrap());
    assert!(s.acquire_lease(&lease, "b", 60_000).await.unwrap());
    assert!(!s.acquire_lease(&lease, "a", 60_000).await.unwrap());
    // Released by its holder only.
    s.release_lease(&lease, "a").await.unwrap();
    assert_eq!(s.lease(&lease).await.unwrap().unwrap().0, "b");
    s.release_lease(&lease, "b").await.unwrap();
    assert!(s.lease(&lease).await.unwrap().is_none());
    assert!(s.acquire_lease(&lease, "a", 60_000).await.unwrap());

    let endpoint = format!("web-{}", weir_core::new_id());
    for (replica, revision) in [("r1", 3), ("r2", 3), ("r2", 2)] {
        s.push_window(&WindowPart {
            endpoint: endpoint.clone(),
            version: 7,
            revision,
            replica: replica.into(),
            window_json: format!("{{\"requests\": {revision}}}"),
        })
        .await
        .unwrap();
    }
    let parts = s.take_windows(&endpoint, 7).await.unwrap();
    let mut seen: Vec<(String, i64)> = parts
        .iter()
        .map(|p| (p.replica.clone(), p.revision))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("r1".to_string(), 3),
            ("r2".to_string(), 2),
            ("r2".to_string(), 3)
        ]
    );
    assert!(s.take_windows(&endpoint, 7).await.unwrap().is_empty());
}

fn usage_of(run: &RunRecord, step: &NewStepRun, trial: Option<i64>, cost: f64) -> UsageRecord {
    UsageRecord {
        run_id: run.id.clone(),
        step_run_id: step.id.clone(),
        step: step.step.clone(),
        attempt: 99,
        trial,
        host: "h".into(),
        status: "succeeded".into(),
        started_at: weir_core::now_ms() - 1000,
        ended_at: weir_core::now_ms(),
        usage: weir_core::usage::Usage {
            wall_ms: 1000,
            cpu_ms: 900,
            max_rss_bytes: 1 << 20,
            gpus: 0,
            bytes_read: 10,
            bytes_written: 20,
        },
        cpus: 1.0,
        memory_bytes: 0,
        spot: false,
        billed: trial.is_none(),
        cost: weir_core::cost::Cost {
            cpu: cost,
            ..Default::default()
        },
        total: cost,
        tracking_run: None,
    }
}

async fn usage_adds_up_by_run_step_and_study(s: &Store) {
    let pipeline = format!("costly-{}", weir_core::new_id());
    let (mut first, first_steps) = new_run(&["prep", "tune"]);
    first.pipeline = pipeline.clone();
    s.create_run(&first, &first_steps).await.unwrap();
    let (prep, tune) = (&first_steps[0], &first_steps[1]);
    s.record_usage(&usage_of(&first, prep, None, 0.5))
        .await
        .unwrap();
    // The same attempt recorded again replaces its record.
    s.record_usage(&usage_of(&first, prep, None, 1.0))
        .await
        .unwrap();
    s.record_usage(&usage_of(&first, tune, None, 2.0))
        .await
        .unwrap();
    for t in 0..3 {
        s.record_usage(&usage_of(&first, tune, Some(t), 0.25))
            .await
            .unwrap();
    }
    let usage = s.run_usage(&first.id).await.unwrap();
    assert_eq!(usage.len(), 5);
    // The attempt is the step run's own, not what the caller said.
    assert!(usage.iter().all(|u| u.attempt == 1), "{usage:?}");
    assert_eq!(usage[0].usage.cpu_ms, 900);
    assert_eq!(usage.iter().filter(|u| u.trial.is_some()).count(), 3);
    // Trials inside their step's process are not billed twice.
    assert_eq!(s.run_cost(&first.id).await.unwrap(), 3.0);
    assert_eq!(s.study_cost(&tune.id).await.unwrap(), (0.75, 3));
    assert_eq!(s.study_cost(&prep.id).await.unwrap(), (0.0, 0));
    // The tracking view shows each attempt's usage on its step's run and
    // the run's cost so far on the pipeline's.
    let latest = |run: &weir_store::tracking::TrackingRun, key: &str| {
        run.metrics
            .iter()
            .find(|m| m.key == key)
            .map(|m| m.value)
            .unwrap_or_else(|| panic!("{key} in {:?}", run.metrics))
    };
    let shown = s.tracking_run(&tune.id).await.unwrap();
    assert_eq!(latest(&shown, "system/cpu_seconds"), 0.9);
    assert_eq!(latest(&shown, "system/wall_seconds"), 1.0);
    assert_eq!(latest(&shown, "system/max_rss_megabytes"), 1.0);
    assert_eq!(latest(&shown, "system/cost_dollars"), 2.0);
    // The pipeline's run gets its totals when it finishes.
    s.finish_run(&first.id, RunStatus::Succeeded, None)
        .await
        .unwrap();
    let whole = s.tracking_run(&first.id).await.unwrap();
    assert_eq!(latest(&whole, "system/cost_dollars"), 3.0);
    assert_eq!(latest(&whole, "system/cpu_seconds"), 1.8);

    let (mut second, second_steps) = new_run(&["prep", "tune"]);
    second.pipeline = pipeline.clone();
    s.create_run(&second, &second_steps).await.unwrap();
    assert_eq!(
        s.last_step_cost(&pipeline, "prep", &second.id)
            .await
            .unwrap(),
        Some(1.0)
    );
    assert_eq!(
        s.last_step_cost(&pipeline, "prep", &first.id)
            .await
            .unwrap(),
        None
    );
    let rows = s.costs_since(0, Some(&pipeline)).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows.iter().map(|r| r.cost).sum::<f64>(), 3.0);
    assert!(s
        .costs_since(weir_core::now_ms() + 60_000, Some(&pipeline))
        .await
        .unwrap()
        .is_empty());

    let replica = format!("replica-{}", weir_core::new_id());
    let mut serving = ServeUsage {
        replica: replica.clone(),
        targets: "web".into(),
        host: "h".into(),
        started_at: weir_core::now_ms(),
        updated_at: weir_core::now_ms(),
        cpu_ms: 10,
        rss_bytes: 1 << 20,
        requests: 0,
        cost: 0.1,
    };
    s.record_serve_usage(&serving).await.unwrap();
    serving.requests = 2000;
    serving.cost = 0.2;
    s.record_serve_usage(&serving).await.unwrap();
    let mine: Vec<ServeUsage> = s
        .serve_usage_since(0)
        .await
        .unwrap()
        .into_iter()
        .filter(|u| u.replica == replica)
        .collect();
    assert_eq!(mine.len(), 1);
    assert_eq!((mine[0].requests, mine[0].cost), (2000, 0.2));

    // SLO counts: replicas add to their own rows, reads sum them per minute.
    let endpoint = format!("web-{}", weir_core::new_id());
    let rows = |total, failed| {
        vec![
            (endpoint.clone(), 100, total, failed, 1),
            (endpoint.clone(), 101, 5, 0, 0),
        ]
    };
    s.add_slo_minutes("r1", &rows(10, 2), 1000).await.unwrap();
    s.add_slo_minutes("r1", &rows(10, 1), 1000).await.unwrap();
    s.add_slo_minutes("r2", &rows(7, 0), 1000).await.unwrap();
    assert_eq!(
        s.slo_minutes(&endpoint, 0).await.unwrap(),
        vec![(100, 27, 3, 3), (101, 15, 0, 0)]
    );
    assert_eq!(
        s.slo_minutes(&endpoint, 101).await.unwrap(),
        vec![(101, 15, 0, 0)]
    );
    // Rows older than what is kept go as newer ones come.
    s.add_slo_minutes("r1", &[(endpoint.clone(), 2000, 1, 0, 0)], 1000)
        .await
        .unwrap();
    assert_eq!(
        s.slo_minutes(&endpoint, 0).await.unwrap(),
        vec![(2000, 1, 0, 0)]
    );
}

async fn schedules_fire_once_and_keep_their_history(s: &Store) {
    let name = format!("nightly-{}", weir_core::new_id());
    let schedule = Schedule {
        name: name.clone(),
        spec_file: "/p.yaml".into(),
        cron: "0 3 * * *".into(),
        off_peak: Some("22:00-06:00".into()),
        params_json: "{}".into(),
        catch_up: "skip".into(),
        created_at: 1000,
        last_fire_at: 1000,
    };
    s.add_schedule(&schedule).await.unwrap();
    assert!(matches!(
        s.add_schedule(&schedule).await,
        Err(StoreError::Conflict(_))
    ));
    let firing = |id: &str, at: i64, outcome: &str| Firing {
        id: id.into(),
        schedule: name.clone(),
        scheduled_for: at,
        fired_at: at + 5,
        outcome: outcome.into(),
        run_id: None,
        detail: "catches up 2".into(),
    };
    let (a, b) = (weir_core::new_id(), weir_core::new_id());
    assert!(s
        .advance_schedule(&name, 1000, 2000, &[firing(&a, 2000, "started")])
        .await
        .unwrap());
    // A second scheduler working from the old state moves nothing.
    assert!(!s
        .advance_schedule(&name, 1000, 2000, &[firing(&b, 2000, "started")])
        .await
        .unwrap());
    s.finish_firing(&a, "succeeded", Some("run-1"), "")
        .await
        .unwrap();
    let history = s.firings(&name, 10).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(
        (
            history[0].outcome.as_str(),
            history[0].run_id.as_deref(),
            history[0].detail.as_str()
        ),
        ("succeeded", Some("run-1"), "catches up 2")
    );
    assert!(s
        .schedules()
        .await
        .unwrap()
        .iter()
        .any(|x| x.name == name && x.last_fire_at == 2000));
    assert!(s.remove_schedule(&name).await.unwrap());
    assert!(!s.remove_schedule(&name).await.unwrap());
    assert!(s.firings(&name, 10).await.unwrap().is_empty());
}

/// Changes made at once each get their own audit entry, chained in one
/// unbroken line (PostgreSQL: the appenders queue on a lock), with who made
/// them; a change refused leaves no entry.
async fn concurrent_changes_chain_their_audit_entries(s: &Store) {
    let name = format!("audited-{}", weir_core::new_id());
    let v = s
        .register_model_version(&NewModelVersion {
            name: name.clone(),
            source: "s3://bucket/m".into(),
            metrics_json: "{}".into(),
            lineage_json: "{}".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let changes = (0..8).map(|i| {
        let (s, name) = (s.clone(), name.clone());
        tokio::spawn(weir_store::audit::acting_as(
            format!("user{i}"),
            async move { s.set_model_alias(&name, &format!("a{i}"), v.version).await },
        ))
    });
    for c in futures_join(changes).await {
        c.unwrap().unwrap();
    }
    assert!(s.set_model_alias(&name, "nope", 99).await.is_err());
    let entries = s.audit_entries(0).await.unwrap();
    let mine: Vec<_> = entries
        .iter()
        .filter(|e| e.target.starts_with(&format!("{name}@")))
        .collect();
    // Other tests share the store: only this model's entries are counted.
    assert_eq!(mine.len(), 8, "{mine:#?}");
    let mut actors: Vec<&str> = mine.iter().map(|e| e.actor.as_str()).collect();
    actors.sort();
    assert_eq!(
        actors,
        (0..8).map(|i| format!("user{i}")).collect::<Vec<_>>()
    );
    assert!(mine
        .iter()
        .all(|e| e.action == "alias.set" && e.after["version"] == v.version));
    let verified = s.verify_audit().await.unwrap();
    assert_eq!(verified.broken_at, None, "{verified:?}");
    assert!(verified.entries >= entries.len() as i64);
}

async fn futures_join<T>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut out = Vec::new();
    for h in handles.collect::<Vec<_>>() {
        out.push(h.await);
    }
    out
}

store_suite!(
    concurrent_changes_chain_their_audit_entries,
    schedules_fire_once_and_keep_their_history,
    usage_adds_up_by_run_step_and_study,
    leases_elect_one_holder_and_window_parts_are_read_once,
    run_lifecycle,
    unknown_ids_are_not_found,
    ambiguous_prefix_is_reported,
    model_versions_increment,
    failed_completion_leaves_nothing,
    concurrent_registrations_get_distinct_versions,
    cache_hits_copy_outputs_and_metrics,
    orphaned_runs_fail_whole_and_reopen_for_resume,
    late_step_transitions_cannot_revive_a_reaped_run,
    study_trials_round_trip_and_replace,
    log_chunks_show_the_current_attempt,
    deployments_change_by_revision_with_their_events,
    search_sees_every_write_after_caching_a_run,
    refused_tracking_writes_say_why_and_leave_nothing,
    racing_params_of_one_run_keep_one_value,
    a_full_batch_of_one_key_reads_back_whole,
    searches_walk_the_newest_runs_first_and_compare_long_values_whole,
    cluster_runtimes_announce_their_steps_ending,
    prediction_log_segments_stay_within_their_budget_and_feedback_replaces,
);

/// Segments are kept newest first within a target's byte budget (the
/// newest always, whatever its size); the dropped ones' digests come back
/// for the caller to delete. Feedback sent twice for a request keeps the last.
async fn prediction_log_segments_stay_within_their_budget_and_feedback_replaces(s: &Store) {
    let segment = |n: i64, target: &str| Segment {
        id: format!("seg-{target}-{n}"),
        target: target.into(),
        model: "m".into(),
        version: 1,
        digest: Digest::of_bytes(format!("{target}{n}").as_bytes()).hex(),
        bytes: 100,
        rows: 10,
        first_at: n * 1000,
        last_at: n * 1000 + 500,
    };
    for n in 1..=3 {
        let seg = segment(n, "web");
        let dropped = s
            .add_segment(&artifact(format!("web{n}").as_bytes()), &seg, 250)
            .await
            .unwrap();
        match n {
            3 => assert_eq!(dropped, [segment(1, "web").digest]),
            _ => assert!(dropped.is_empty()),
        }
    }
    s.add_segment(&artifact(b"api1"), &segment(1, "api"), 50)
        .await
        .unwrap();
    let kept: Vec<String> = s
        .segments("web", 0, i64::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.id)
        .collect();
    assert_eq!(kept, ["seg-web-2", "seg-web-3"]);
    // Only segments overlapping the window.
    let window: Vec<String> = s
        .segments("web", 2600, 2900)
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.id)
        .collect();
    assert!(window.is_empty(), "{window:?}");
    assert_eq!(s.segments("web", 2400, 2900).await.unwrap().len(), 1);
    assert_eq!(s.segments("api", 0, i64::MAX).await.unwrap().len(), 1);
    s.add_feedback("web", "r1", "[0]").await.unwrap();
    s.add_feedback("web", "r1", "[1]").await.unwrap();
    s.add_feedback("api", "r1", "[0]").await.unwrap();
    let got = s.feedback_since("web", 0).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got["r1"], "[1]");
    // The latest check of each monitor; checks a month old go.
    let day = 24 * 3_600_000;
    for (monitor, at, status) in [
        ("a", 1, "ok"),
        ("a", 40 * day, "fired"),
        ("b", 40 * day - 1, "ok"),
    ] {
        s.record_check(&MonitorCheck {
            monitor: monitor.into(),
            target: "web".into(),
            checked_at: at,
            status: status.into(),
            reason: String::new(),
            report_json: "{}".into(),
        })
        .await
        .unwrap();
    }
    let latest: Vec<(String, String)> = s
        .latest_checks("web")
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.monitor, c.status))
        .collect();
    assert_eq!(
        latest,
        [("a".into(), "fired".into()), ("b".into(), "ok".into())]
    );
    assert!(s.latest_checks("api").await.unwrap().is_empty());
}

/// A step runtime on a cluster (fenced by its job) announces its outcome on
/// PostgreSQL when it commits, to every listener; SQLite has no listener.
/// Local runtimes, and writes that were refused, announce nothing.
async fn cluster_runtimes_announce_their_steps_ending(s: &Store) {
    use std::time::Duration;
    let Some(events) = s.step_ended_events().await.unwrap() else {
        assert_eq!(s.backend(), weir_store::Backend::Sqlite);
        return;
    };
    let (mut first, mut second) = (events.subscribe(), events.subscribe());
    let (run, steps) = new_run(&["ok", "bad", "local"]);
    s.create_run(&run, &steps).await.unwrap();
    for step in &steps {
        s.start_step(&step.id, &StepStart::default()).await.unwrap();
        s.set_step_job(&step.id, "ray", "http://h:8265", "job-1")
            .await
            .unwrap();
    }
    let stale = StepCompletion {
        fence: Some("job-0".into()),
        ..Default::default()
    };
    s.complete_step(&steps[0].id, &stale).await.unwrap_err();
    s.complete_step(&steps[2].id, &StepCompletion::default())
        .await
        .unwrap();
    let current = StepCompletion {
        fence: Some("job-1".into()),
        ..Default::default()
    };
    s.complete_step(&steps[0].id, &current).await.unwrap();
    s.fail_step_fenced(&steps[1].id, Some("job-1"), "exit 1", Some(1), None)
        .await
        .unwrap();
    for receiver in [&mut first, &mut second] {
        let mut heard = Vec::new();
        while let Ok(Ok(id)) =
            tokio::time::timeout(Duration::from_millis(500), receiver.recv()).await
        {
            heard.push(id);
        }
        assert_eq!(heard, [steps[0].id.clone(), steps[1].id.clone()]);
    }
}

/// Searches of an experiment without pipeline runs walk its runs newest
/// first (filters that match many runs), or start from a tag's or param's
/// index (filters that match few); both give the order a full sort would,
/// and a value longer than the index's 200-character prefix is compared
/// whole.
async fn searches_walk_the_newest_runs_first_and_compare_long_values_whole(s: &Store) {
    let exp = s.create_experiment("walk", None, &[]).await.unwrap();
    let long = "v".repeat(250);
    let mut expected = Vec::new();
    for i in 0..520i64 {
        let run = s
            .create_tracking_run(&tracking::NewTrackingRun {
                run_id: format!("{i:0>32}"),
                experiment_id: exp,
                name: format!("run-{i}"),
                user_id: "u".into(),
                // Out of insertion order, with ties broken by run id.
                start_time: Some((i * 7919) % 400),
                tags: vec![("kind".into(), "common".into())],
            })
            .await
            .unwrap();
        let note = match i {
            3 => format!("{long}-a"),
            4 => format!("{long}-b"),
            _ => "short".into(),
        };
        let acc = match i % 4 {
            0 => vec![tracking::Metric {
                key: "acc".into(),
                value: ((i * 13) % 97) as f64,
                timestamp: 1,
                step: 0,
            }],
            _ => vec![],
        };
        s.log_batch(
            &run.info.run_id,
            &acc,
            &[("p".into(), (i % 3).to_string())],
            &[("note".into(), note)],
        )
        .await
        .unwrap();
        if i % 3 != 0 {
            expected.push(((i * 7919) % 400, run.info.run_id));
        }
    }
    expected.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let ordered = |filter: &str, order: Option<&str>, offset: i64| {
        let filter = filter.to_string();
        let order_by = order
            .map(|o| vec![filter::parse_order_by(o).unwrap()])
            .unwrap_or_default();
        async move {
            s.search_tracking_runs(&tracking::RunSearch {
                experiment_ids: vec![exp],
                filter: filter::parse(&filter).unwrap(),
                view: tracking::ViewType::ActiveOnly,
                order_by,
                max_results: 50,
                offset,
            })
            .await
            .unwrap()
        }
    };
    let search = |filter: &str, offset: i64| ordered(filter, None, offset);
    // Ordered by a metric 130 of the 520 runs have: those first, by value,
    // then the rest newest first, whichever page a boundary falls in.
    for ascending in [false, true] {
        let mut all: Vec<(Option<i64>, i64, String)> = (0..520i64)
            .map(|i| {
                let acc = (i % 4 == 0).then_some((i * 13) % 97);
                (acc, (i * 7919) % 400, format!("{i:0>32}"))
            })
            .collect();
        all.sort_by(|a, b| {
            let by_value = match (a.0, b.0) {
                (Some(x), Some(y)) if ascending => x.cmp(&y),
                (Some(x), Some(y)) => y.cmp(&x),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            };
            by_value
                .then_with(|| b.1.cmp(&a.1))
                .then_with(|| a.2.cmp(&b.2))
        });
        let order = if ascending {
            "metrics.acc ASC"
        } else {
            "metrics.acc DESC"
        };
        for offset in [0, 100, 130, 140, 480] {
            let (page, more) = ordered("", Some(order), offset).await;
            let ids: Vec<&str> = page.iter().map(|r| r.info.run_id.as_str()).collect();
            let want: Vec<&str> = all
                .iter()
                .skip(offset as usize)
                .take(50)
                .map(|r| r.2.as_str())
                .collect();
            assert_eq!(ids, want, "{order} from {offset}");
            assert_eq!(more, offset + 50 < 520, "{order} from {offset}");
        }
    }
    // 520 runs share the tag: too many for its index to be the way in.
    for offset in [0, 50, 300] {
        let (page, more) = search("tags.kind = 'common' and params.p != '0'", offset).await;
        let ids: Vec<&str> = page.iter().map(|r| r.info.run_id.as_str()).collect();
        let want: Vec<&str> = expected
            .iter()
            .skip(offset as usize)
            .take(50)
            .map(|(_, id)| id.as_str())
            .collect();
        assert_eq!(ids, want, "offset {offset}");
        assert_eq!(more, (offset as usize + 50) < expected.len());
    }
    let (page, _) = search(&format!("tags.note = '{long}-b'"), 0).await;
    let ids: Vec<&str> = page.iter().map(|r| r.info.run_id.as_str()).collect();
    assert_eq!(ids, [format!("{:0>32}", 4)]);
    let (page, _) = search(&format!("tags.note = '{long}'"), 0).await;
    assert!(page.is_empty());
}

/// One search of `exp` for `filter`, ordered by `metrics.acc DESC`.
async fn search(s: &Store, exp: i64, filter: &str) -> Vec<tracking::TrackingRun> {
    s.search_tracking_runs(&tracking::RunSearch {
        experiment_ids: vec![exp],
        filter: filter::parse(filter).unwrap(),
        view: tracking::ViewType::ActiveOnly,
        order_by: vec![filter::parse_order_by("metrics.acc DESC").unwrap()],
        max_results: 100,
        offset: 0,
    })
    .await
    .unwrap()
    .0
}

/// A request's writes go to SQLite as one command; each way it can be
/// refused must still say why, and leave nothing of the request behind.
async fn refused_tracking_writes_say_why_and_leave_nothing(s: &Store) {
    let exp = s.create_experiment("refusals", None, &[]).await.unwrap();
    let new_run = |id: &str, experiment_id: i64| tracking::NewTrackingRun {
        run_id: format!("{id:0>32}"),
        experiment_id,
        name: format!("run-{id}"),
        user_id: "u".into(),
        start_time: None,
        tags: vec![("team".into(), "x".into())],
    };
    let metric = |value: f64| tracking::Metric {
        key: "acc".into(),
        value,
        timestamp: 1,
        step: 0,
    };
    let pair = |k: &str, v: &str| (k.to_string(), v.to_string());

    let created = s.create_tracking_run(&new_run("a", exp)).await.unwrap();
    assert!(created.info.artifact_uri.ends_with("/artifacts"));
    let a = created.info.run_id;
    let stored = s.tracking_run(&a).await.unwrap();
    assert!(stored.tags.contains(&pair("team", "x")));
    assert!(stored.tags.contains(&pair("mlflow.runName", "run-a")));
    assert_eq!(stored.info.start_time, None);

    // No experiment, or a deleted one: no run, no tags.
    let err = s
        .create_tracking_run(&new_run("b", 987_654))
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    s.set_experiment_lifecycle(exp, "deleted").await.unwrap();
    let err = s.create_tracking_run(&new_run("c", exp)).await.unwrap_err();
    assert!(err.to_string().contains("is deleted; restore it"), "{err}");
    s.set_experiment_lifecycle(exp, "active").await.unwrap();
    for id in ["b", "c"] {
        assert!(s
            .tracking_run(&format!("{id:0>32}"))
            .await
            .unwrap_err()
            .is_not_found());
    }

    // A param logged again with its value is fine; with another value the
    // whole batch is refused, its metric and new param included.
    s.log_batch(&a, &[metric(0.5)], &[pair("lr", "0.1")], &[])
        .await
        .unwrap();
    s.log_batch(&a, &[], &[pair("lr", "0.1")], &[])
        .await
        .unwrap();
    let err = s
        .log_batch(
            &a,
            &[metric(0.9)],
            &[pair("depth", "3"), pair("lr", "0.2")],
            &[pair("team", "y")],
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("changing param values is not allowed"),
        "{err}"
    );
    let stored = s.tracking_run(&a).await.unwrap();
    assert_eq!(stored.params, vec![pair("lr", "0.1")]);
    assert_eq!(stored.metrics.len(), 1);
    assert_eq!(stored.metrics[0].value, 0.5);
    assert!(stored.tags.contains(&pair("team", "x")));

    // An unknown run, and a deleted one.
    let err = s
        .log_batch(
            &format!("{:0>32}", "f"),
            &[metric(1.0)],
            &[pair("k", "v")],
            &[],
        )
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    s.set_run_lifecycle(&a, "deleted").await.unwrap();
    let err = s
        .log_batch(&a, &[metric(0.7)], &[pair("x", "1")], &[pair("t", "1")])
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("must be in the 'active' state; it is 'deleted'"),
        "{err}"
    );
    // Without params a batch may go as one statement: it still writes
    // nothing to a deleted or unknown run.
    let err = s
        .log_batch(&a, &[metric(0.8)], &[], &[pair("t", "1")])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("it is 'deleted'"), "{err}");
    let unknown = format!("{:0>32}", "e");
    let err = s
        .log_batch(&unknown, &[metric(0.8)], &[], &[])
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    s.set_run_lifecycle(&a, "active").await.unwrap();
    let stored = s.tracking_run(&a).await.unwrap();
    assert_eq!(stored.params, vec![pair("lr", "0.1")]);
    assert_eq!(stored.metrics[0].value, 0.5);
    assert!(!stored.tags.iter().any(|(k, _)| k == "t"));
    // And a batch that renames the run still does.
    s.log_batch(&a, &[], &[], &[pair("mlflow.runName", "renamed")])
        .await
        .unwrap();
    assert_eq!(s.tracking_run(&a).await.unwrap().info.name, "renamed");
}

/// A new run, named `name`, in a new experiment of the same name.
async fn run_in_new_experiment(s: &Store, name: &str) -> String {
    let experiment_id = s.create_experiment(name, None, &[]).await.unwrap();
    let run_id = format!("{name:0>32}");
    s.create_tracking_run(&tracking::NewTrackingRun {
        run_id: run_id.clone(),
        experiment_id,
        name: name.into(),
        user_id: "u".into(),
        start_time: None,
        tags: Vec::new(),
    })
    .await
    .unwrap();
    run_id
}

/// A 1,000-point batch of one key (stored in several rows on PostgreSQL)
/// reads back as its history, every point in step order, and its latest.
async fn a_full_batch_of_one_key_reads_back_whole(s: &Store) {
    let run_id = run_in_new_experiment(s, "long").await;
    let points: Vec<tracking::Metric> = (0..1000)
        .rev()
        .map(|step| tracking::Metric {
            key: "loss".into(),
            value: step as f64 / 1000.0,
            timestamp: 7,
            step,
        })
        .collect();
    s.log_batch(&run_id, &points, &[], &[]).await.unwrap();
    let history = s.metric_history(&run_id, "loss", 5000, 0).await.unwrap();
    let steps: Vec<i64> = history.iter().map(|m| m.step).collect();
    assert_eq!(steps, (0..1000).collect::<Vec<i64>>());
    assert!(history.iter().all(|m| m.value == m.step as f64 / 1000.0));
    let run = s.tracking_run(&run_id).await.unwrap();
    assert_eq!(run.metrics.len(), 1);
    assert_eq!((run.metrics[0].step, run.metrics[0].value), (999, 0.999));
}

/// Batches that log one param with different values at once: exactly one
/// wins, and each of the others is refused whole (its metric too), however
/// their statements interleave.
async fn racing_params_of_one_run_keep_one_value(s: &Store) {
    let run_id = run_in_new_experiment(s, "race").await;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (s, run_id) = (s.clone(), run_id.clone());
            tokio::spawn(async move {
                let metric = tracking::Metric {
                    key: format!("m{i}"),
                    value: 1.0,
                    timestamp: 1,
                    step: 0,
                };
                s.log_batch(&run_id, &[metric], &[("seed".into(), i.to_string())], &[])
                    .await
                    .map(|()| i)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(i) => winners.push(i),
            Err(e) => assert!(
                e.to_string()
                    .contains("changing param values is not allowed"),
                "{e}"
            ),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let stored = s.tracking_run(&run_id).await.unwrap();
    assert_eq!(
        stored.params,
        vec![("seed".to_string(), winners[0].to_string())]
    );
    let keys: Vec<&str> = stored.metrics.iter().map(|m| m.key.as_str()).collect();
    assert_eq!(keys, vec![format!("m{}", winners[0]).as_str()]);
}

/// A search caches what it returns of each run (`data_cache`); every kind of
/// write afterwards must show in the next search, exactly as `tracking_run`
/// (which never reads the cache) sees it.
async fn search_sees_every_write_after_caching_a_run(s: &Store) {
    let exp = s.create_experiment("cached", None, &[]).await.unwrap();
    let metric = |key: &str, value: f64, step: i64| tracking::Metric {
        key: key.into(),
        value,
        timestamp: 1,
        step,
    };
    let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
    for (id, acc) in [("a", 0.9), ("b", 0.7)] {
        let run_id = format!("{id:0>32}");
        s.create_tracking_run(&tracking::NewTrackingRun {
            run_id: run_id.clone(),
            experiment_id: exp,
            name: format!("run-{id}"),
            user_id: "u".into(),
            start_time: Some(1),
            tags: vec![],
        })
        .await
        .unwrap();
        s.log_batch(
            &run_id,
            &[metric("acc", acc, 0), metric("loss", f64::NAN, 0)],
            &[pair("lr", "0.1"), pair("note", "a:b 日本")],
            &[pair("team", "x")],
        )
        .await
        .unwrap();
    }
    let a = format!("{:0>32}", "a");
    // Each search must equal the runs read one by one (no cache there).
    let check = |runs: Vec<tracking::TrackingRun>| async move {
        for run in &runs {
            let fresh = s.tracking_run(&run.info.run_id).await.unwrap();
            assert_eq!(run.params, fresh.params);
            assert_eq!(run.tags, fresh.tags);
            assert_eq!(run.inputs, fresh.inputs);
            assert_eq!(run.models, fresh.models);
            assert_eq!(run.metrics.len(), fresh.metrics.len());
            for (m, f) in run.metrics.iter().zip(&fresh.metrics) {
                assert_eq!((&m.key, m.step, m.timestamp), (&f.key, f.step, f.timestamp));
                assert!(
                    m.value.to_bits() == f.value.to_bits()
                        || (m.value.is_nan() && f.value.is_nan())
                );
            }
        }
        runs
    };
    let runs = check(search(s, exp, "metrics.acc > 0.5").await).await;
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].info.run_id, a);
    assert!(runs[0]
        .metrics
        .iter()
        .any(|m| m.key == "loss" && m.value.is_nan()));
    // Served from the cache now; the same again (NaN != NaN, so as text).
    let again = check(search(s, exp, "metrics.acc > 0.5").await).await;
    assert_eq!(format!("{again:?}"), format!("{runs:?}"));

    // A newer metric value, a new param and a changed tag.
    s.log_batch(
        &a,
        &[metric("acc", 0.1, 1)],
        &[pair("depth", "3")],
        &[pair("team", "y")],
    )
    .await
    .unwrap();
    let runs = check(search(s, exp, "").await).await;
    let run_a = runs.iter().find(|r| r.info.run_id == a).unwrap();
    assert_eq!(
        run_a.metrics.iter().find(|m| m.key == "acc").unwrap().value,
        0.1
    );
    assert!(run_a.params.contains(&pair("depth", "3")));
    assert!(run_a.tags.contains(&pair("team", "y")));
    assert_eq!(
        runs.last().unwrap().info.run_id,
        a,
        "ordered by the new acc"
    );
    assert_eq!(search(s, exp, "metrics.acc > 0.5").await.len(), 1);

    // A deleted tag, a renamed run, a dataset input and a logged model.
    s.delete_run_tag(&a, "team").await.unwrap();
    s.update_tracking_run(&a, None, None, Some("renamed"))
        .await
        .unwrap();
    s.log_inputs(&a, &[("ds".into(), "d1".into(), "{}".into(), "[]".into())])
        .await
        .unwrap();
    let runs = check(search(s, exp, "params.lr = '0.1'").await).await;
    let run_a = runs.iter().find(|r| r.info.run_id == a).unwrap();
    assert!(!run_a.tags.iter().any(|(k, _)| k == "team"));
    assert!(run_a.tags.contains(&pair("mlflow.runName", "renamed")));
    assert_eq!(run_a.inputs.len(), 1);
    assert_eq!(search(s, exp, "tags.team = 'x'").await.len(), 1);
}

/// A new endpoint on version 1 of model `m`, healthy, canary steps 5 and 100.
fn endpoint(name: &str) -> weir_store::Deployment {
    weir_store::Deployment {
        endpoint: name.into(),
        model: "m".into(),
        stable: Some(1),
        candidate: None,
        strategy: "canary".into(),
        steps: vec![5, 100],
        step_index: 0,
        weight: 0,
        phase: "Healthy".into(),
        analysis: serde_json::json!({"interval_ms": 1000}),
        reason: String::new(),
        revision: 0,
        updated_at: 0,
    }
}

/// The controller and `weir rollout` both write an endpoint: a write based
/// on a revision someone else has moved past is refused, and nothing of it
/// (row or event) lands.
async fn deployments_change_by_revision_with_their_events(s: &Store) {
    use weir_store::Deployment;
    let d = endpoint("web");
    let first = s.save_deployment(&d, "deployed", "v1").await.unwrap();
    assert_eq!(first.revision, 1);
    assert!(
        s.save_deployment(&d, "deployed", "again").await.is_err(),
        "a second create"
    );
    let moved = s
        .save_deployment(
            &Deployment {
                candidate: Some(2),
                weight: 5,
                ..first.clone()
            },
            "deployed",
            "v2 at 5%",
        )
        .await
        .unwrap();
    let stale = s
        .save_deployment(
            &Deployment {
                weight: 100,
                ..first.clone()
            },
            "promoted",
            "stale",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(stale, weir_store::StoreError::Conflict(_)),
        "{stale}"
    );
    let now = s.deployment("web").await.unwrap();
    assert_eq!(
        (now.candidate, now.weight, now.revision),
        (Some(2), 5, moved.revision)
    );
    assert_eq!(now.analysis["interval_ms"], 1000);
    let events: Vec<String> = s
        .deployment_events("web")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.detail)
        .collect();
    assert_eq!(events, ["v1", "v2 at 5%"]);
    assert_eq!(s.deployments().await.unwrap().len(), 1);
    assert!(s.deployment("nope").await.unwrap_err().is_not_found());
}

/// A search through a store this process may only read cannot cache what it
/// reads; it answers all the same. Nor does a cache that does not decode stop
/// a search.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_store_searches_without_caching_and_a_bad_cache_is_rebuilt() {
    let dir = std::env::temp_dir().join(format!("weir-store-{}", weir_core::new_id()));
    let url = format!("sqlite://{}/weir.db", dir.display());
    let _cleanup = tempfile_dir::TempDir(dir);
    let writer = Store::open(&url).await.unwrap();
    let exp = writer.create_experiment("ro", None, &[]).await.unwrap();
    let run_id = weir_core::new_id();
    writer
        .create_tracking_run(&tracking::NewTrackingRun {
            run_id: run_id.clone(),
            experiment_id: exp,
            name: "r".into(),
            user_id: String::new(),
            start_time: Some(1),
            tags: vec![],
        })
        .await
        .unwrap();
    let acc = tracking::Metric {
        key: "acc".into(),
        value: 0.75,
        timestamp: 1,
        step: 0,
    };
    writer
        .log_batch(&run_id, &[acc], &[("lr".into(), "0.1".into())], &[])
        .await
        .unwrap();
    let reader = Store::connect(&format!("{url}?mode=ro")).await.unwrap();
    let check = |runs: Vec<tracking::TrackingRun>| {
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].params, vec![("lr".to_string(), "0.1".to_string())]);
        assert_eq!(runs[0].metrics[0].value, 0.75);
    };
    for store in [&reader, &writer, &reader] {
        check(search(store, exp, "metrics.acc > 0.5").await);
    }
    // A read-only store cannot write, whatever path a write takes.
    let more = tracking::Metric {
        key: "acc".into(),
        value: 0.5,
        timestamp: 2,
        step: 1,
    };
    assert!(reader.log_batch(&run_id, &[more], &[], &[]).await.is_err());
    check(search(&writer, exp, "metrics.acc > 0.5").await);
    // A cache that does not decode is rebuilt, not an error.
    sqlx::any::install_default_drivers();
    let mut raw = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::query("UPDATE tracking_runs SET data_cache = '3:abc'")
        .execute(&mut raw)
        .await
        .unwrap();
    check(search(&writer, exp, "metrics.acc > 0.5").await);
}

/// Separate stores on one SQLite file stand for separate `weir exec`
/// processes: their concurrent commits must all land, none failing with
/// "database is locked".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_concurrent_writers_do_not_see_locked_errors() {
    let dir = std::env::temp_dir().join(format!("weir-store-{}", weir_core::new_id()));
    let url = format!("sqlite://{}/weir.db", dir.display());
    let first = Store::open(&url).await.unwrap();
    // Eight writers, each starting and completing 20 steps of its own (a
    // step completes once: only a running step can).
    let names: Vec<String> = (0..8)
        .flat_map(|i| (0..20).map(move |round| format!("s{i}-{round}")))
        .collect();
    let (run, steps) = new_run(&names.iter().map(String::as_str).collect::<Vec<_>>());
    first.create_run(&run, &steps).await.unwrap();
    let mut tasks = Vec::new();
    for (i, own) in steps.chunks(20).map(<[_]>::to_vec).enumerate() {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let store = Store::open(&url).await.unwrap();
            for (round, step) in own.iter().enumerate() {
                let round = round as i64;
                let completion = StepCompletion {
                    metrics: vec![MetricPoint {
                        key: format!("m{round}"),
                        value: i as f64,
                        step: round,
                        ts: 0,
                    }],
                    outputs: vec![(
                        format!("o{round}"),
                        artifact(format!("{i}-{round}").as_bytes()),
                    )],
                    ..Default::default()
                };
                store
                    .start_step(&step.id, &StepStart::default())
                    .await
                    .unwrap();
                store.complete_step(&step.id, &completion).await.unwrap();
            }
            store.close().await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let recorded = first.step_runs(&run.id).await.unwrap();
    assert!(recorded.iter().all(|s| s.status == StepStatus::Succeeded));
    let mut outputs = 0;
    for step in recorded.iter().filter(|s| s.step.starts_with("s3-")) {
        outputs += first.step_outputs(&step.id).await.unwrap().len();
    }
    assert_eq!(outputs, 20);
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}/weir.db", dir.display()))
        .await
        .unwrap();
    let mode: (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode.0, "wal");
    first.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Two processes writing one SQLite file (`weir serve` recording traffic
/// while `weir deploy` saves an endpoint): a transaction that reads before
/// it writes takes the write lock at BEGIN, so it waits for the other's
/// commit instead of failing at its first write with SQLITE_BUSY_SNAPSHOT
/// ("database is locked"), which a deferred one did once the other had
/// committed since its read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_read_then_write_transactions_wait_for_another_process() {
    use weir_store::Deployment;
    let dir = std::env::temp_dir().join(format!("weir-store-{}", weir_core::new_id()));
    let url = format!("sqlite://{}/weir.db", dir.display());
    let (serve, deploy) = (
        Store::open(&url).await.unwrap(),
        Store::open(&url).await.unwrap(),
    );
    let writer = |store: Store, name: &'static str| {
        tokio::spawn(async move {
            let mut d = store
                .save_deployment(&endpoint(name), "deployed", "v1")
                .await?;
            for i in 0..150 {
                d = store
                    .save_deployment(
                        &Deployment {
                            weight: i % 100,
                            ..d.clone()
                        },
                        "analysed",
                        "step",
                    )
                    .await?;
            }
            Ok::<_, weir_store::StoreError>(d.revision)
        })
    };
    let (a, b) = (writer(serve.clone(), "web"), writer(deploy.clone(), "api"));
    assert_eq!(a.await.unwrap().unwrap(), 151);
    assert_eq!(b.await.unwrap().unwrap(), 151);
    serve.close().await;
    deploy.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A tracking write that meets another connection's write lock (another
/// process's, say) waits for it on a blocking thread, and writes that meet
/// one another in one process queue: none fails with "database is locked",
/// and every point lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_tracking_writes_wait_for_the_lock_instead_of_failing() {
    let dir = std::env::temp_dir().join(format!("weir-store-{}", weir_core::new_id()));
    let url = format!("sqlite://{}/weir.db", dir.display());
    let store = Store::open(&url).await.unwrap();
    let exp = store.create_experiment("locks", None, &[]).await.unwrap();
    let run = store
        .create_tracking_run(&tracking::NewTrackingRun {
            run_id: weir_core::new_id(),
            experiment_id: exp,
            name: "r".into(),
            user_id: "u".into(),
            start_time: None,
            tags: Vec::new(),
        })
        .await
        .unwrap()
        .info
        .run_id;

    use sqlx::Connection;
    let mut other = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let (store, run) = (store.clone(), run.clone());
            tokio::spawn(async move {
                let points: Vec<tracking::Metric> = (0..50)
                    .map(|step| tracking::Metric {
                        key: format!("m{i}"),
                        value: step as f64,
                        timestamp: 0,
                        step,
                    })
                    .collect();
                store.log_batch(&run, &points, &[], &[]).await
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !writers.iter().any(|w| w.is_finished()),
        "a write went through while another connection held the lock"
    );
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    for w in writers {
        w.await.unwrap().unwrap();
    }
    let stored = store.tracking_run(&run).await.unwrap();
    assert_eq!(stored.metrics.len(), 8);
    for i in 0..8 {
        let history = store.metric_history(&run, &format!("m{i}"), 1000, 0).await;
        assert_eq!(history.unwrap().len(), 50);
    }
    store.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn rejects_unknown_url_schemes() {
    let err = Store::open("mysql://x").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("not a supported metadata store URL"),
        "{err}"
    );
}

/// Commands started at once on a new SQLite database each open it: the
/// schema must be created once, not by all of them at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stores_opened_at_once_on_a_new_sqlite_file_all_succeed() {
    let dir = std::env::temp_dir().join(format!("weir-store-{}", weir_core::new_id()));
    let _cleanup = tempfile_dir::TempDir(dir.clone());
    let url = format!("sqlite://{}/weir.db", dir.display());
    let opens: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { Store::open(&url).await.map(drop) })
        })
        .collect();
    for open in opens {
        open.await.unwrap().unwrap();
    }
}
