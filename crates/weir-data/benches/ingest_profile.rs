//! What profiling adds to an ingest: `weir/ingest` reads a table and writes
//! it as Parquet; a dataset output also profiles it in the same step. This
//! times both parts on the flights data (or the file named by
//! WEIR_BENCH_TABLE) and prints the profile's share of the ingest.
//!
//!     cargo bench -p weir-data --bench ingest_profile

use std::time::Instant;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let path = std::env::var("WEIR_BENCH_TABLE").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/flights/data/flights.csv.gz"
        )
        .into()
    });
    let path = std::path::Path::new(&path);
    let out = std::env::temp_dir().join(format!("weir-bench-{}.parquet", std::process::id()));
    let repeats = 5;
    let (mut ingest, mut profile) = (Vec::new(), Vec::new());
    let mut shape = (0, 0);
    for _ in 0..repeats {
        let started = Instant::now();
        let batch = weir_data::read_table(
            path,
            &weir_data::IngestOptions::new(path.display().to_string()),
        )
        .expect("the table reads");
        weir_data::write_parquet(&batch, &out).expect("the table writes");
        ingest.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        let p = weir_data::profile(&batch).expect("the table profiles");
        profile.push(started.elapsed().as_secs_f64());
        shape = (p.rows, p.columns.len());
    }
    let _ = std::fs::remove_file(&out);
    let (i, p) = (median(ingest), median(profile));
    println!(
        "{}: {} rows x {} columns; read + write Parquet {:.3} s, profile {:.3} s (median of {repeats}): profiling adds {:.1} % to the ingest",
        path.display(),
        shape.0,
        shape.1,
        i,
        p,
        100.0 * p / i
    );
}
