//! Seeds a tracking store at scale for the dashboard's speed figures
//! (bench/ui_scale.sh): RUNS finished runs in one experiment, each with 10
//! params, 3 tags and METRICS metrics of STEPS points, written through the
//! store's own write path (the one `log-batch` takes), in batches of at most
//! 1,000 metrics as MLflow clients send them.
//!
//!   cargo run --release -p weir-store --example seed_tracking -- \
//!     sqlite:///tmp/ui-scale/weir.db 100000 20 100

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weir_store::tracking::{Metric, NewTrackingRun};
use weir_store::Store;

const KEYS: [&str; 20] = [
    "train.loss",
    "valid.loss",
    "train.auc",
    "valid.auc",
    "train.accuracy",
    "valid.accuracy",
    "train.logloss",
    "valid.logloss",
    "train.rmse",
    "valid.rmse",
    "learning_rate",
    "grad_norm",
    "epoch_seconds",
    "rows_per_second",
    "peak_memory_mb",
    "valid.precision",
    "valid.recall",
    "valid.f1",
    "test.auc",
    "test.accuracy",
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: seed_tracking DB_URL RUNS [METRICS (<= 20)] [STEPS]".into());
    }
    let url = args[1].clone();
    let runs: usize = args[2].parse()?;
    let metrics: usize = args.get(3).map_or(Ok(20), |s| s.parse())?;
    let steps: i64 = args.get(4).map_or(Ok(100), |s| s.parse())?;
    if metrics > KEYS.len() {
        return Err(format!("at most {} metrics", KEYS.len()).into());
    }
    let store = Store::open(&url).await?;
    let experiment = store.create_experiment("scale", None, &[]).await?;
    let started = Instant::now();
    // A few writers keep SQLite's single writer busy while the others build
    // their next batch.
    const WRITERS: usize = 3;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(w as u64);
            for i in (w..runs).step_by(WRITERS) {
                seed_run(&store, &mut rng, experiment, i, metrics, steps).await?;
                if w == 0 && i % 5_000 == 0 && i > 0 {
                    let s = started.elapsed().as_secs_f64();
                    eprintln!("{i} runs in {s:.0} s ({:.0} runs/s)", i as f64 / s);
                }
            }
            Ok::<_, weir_store::StoreError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let s = started.elapsed().as_secs_f64();
    println!(
        "{{\"experiment_id\": {experiment}, \"runs\": {runs}, \"metrics\": {metrics}, \"steps\": {steps}, \"seconds\": {s:.1}}}"
    );
    Ok(())
}

async fn seed_run(
    store: &Store,
    rng: &mut StdRng,
    experiment: i64,
    i: usize,
    metrics: usize,
    steps: i64,
) -> Result<(), weir_store::StoreError> {
    let start = 1_760_000_000_000 + i as i64 * 60_000;
    let run_id = format!("{:032x}", rng.random::<u128>());
    store
        .create_tracking_run(&NewTrackingRun {
            run_id: run_id.clone(),
            experiment_id: experiment,
            name: format!("run-{i}"),
            user_id: "bench".into(),
            start_time: Some(start),
            tags: vec![
                ("team".into(), ["search", "ads", "risk"][i % 3].into()),
                ("dataset".into(), format!("flights-{}", i % 12)),
                (
                    "stage".into(),
                    if i.is_multiple_of(10) {
                        "candidate"
                    } else {
                        "sweep"
                    }
                    .into(),
                ),
            ],
        })
        .await?;
    let lr: f64 = 10f64.powf(rng.random_range(-3.0..-0.5));
    let params: Vec<(String, String)> = vec![
        ("learning_rate".into(), format!("{lr:.6}")),
        ("num_leaves".into(), rng.random_range(8..256).to_string()),
        (
            "min_data_in_leaf".into(),
            rng.random_range(5..400).to_string(),
        ),
        (
            "colsample".into(),
            format!("{:.3}", rng.random_range(0.5..1.0)),
        ),
        (
            "subsample".into(),
            format!("{:.3}", rng.random_range(0.5..1.0)),
        ),
        ("model".into(), ["gbdt", "mlp", "linear"][i % 3].into()),
        ("optimizer".into(), ["adam", "sgd"][i % 2].into()),
        ("batch_size".into(), [64, 128, 256, 512][i % 4].to_string()),
        ("seed".into(), i.to_string()),
        ("epochs".into(), steps.to_string()),
    ];
    // Curves that look like training: a loss that falls, a score that rises,
    // each run to its own plateau, with noise.
    let plateau: f64 = rng.random_range(0.6..0.95);
    let mut points = Vec::with_capacity(metrics * steps as usize);
    for (k, key) in KEYS.iter().take(metrics).enumerate() {
        for step in 0..steps {
            let t = (step + 1) as f64 / steps as f64;
            let rising = plateau * (1.0 - (-4.0 * t).exp()) + 0.5 * (1.0 - plateau);
            let noise: f64 = rng.random_range(-0.01..0.01);
            let value = if key.contains("loss") || key.contains("rmse") {
                1.0 - rising + noise + 0.1 * k as f64
            } else {
                rising + noise
            };
            points.push(Metric {
                key: (*key).into(),
                value,
                timestamp: start + step * 1_000,
                step,
            });
        }
    }
    let mut first = true;
    for batch in points.chunks(1_000) {
        let params = if first { params.as_slice() } else { &[] };
        store.log_batch(&run_id, batch, params, &[]).await?;
        first = false;
    }
    store
        .update_tracking_run(&run_id, Some("FINISHED"), Some(start + steps * 1_000), None)
        .await?;
    Ok(())
}
