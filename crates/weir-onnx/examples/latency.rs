//! The in-process compute floor for serving benchmarks: median time of one
//! single-row call of an ONNX model through tract, rows taken in turn from a
//! CSV with a header (the peer serving benchmark's requests.csv).
//!
//!   cargo run --release -p weir-onnx --example latency -- model.onnx requests.csv [calls]

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, rows, rest @ ..] = args.as_slice() else {
        return Err("usage: latency MODEL.onnx ROWS.csv [CALLS]".into());
    };
    let calls: usize = rest.first().map_or(Ok(5000), |c| c.parse())?;
    let model = weir_onnx::OnnxModel::from_bytes(&std::fs::read(model)?)?;
    let rows: Vec<Vec<f64>> = std::fs::read_to_string(rows)?
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|v| v.trim().parse::<f64>()).collect())
        .collect::<Result<_, _>>()?;
    for row in rows.iter().take(200) {
        model.run(1, std::slice::from_ref(row))?;
    }
    let mut times = Vec::with_capacity(calls);
    for i in 0..calls {
        let row = &rows[i % rows.len()];
        let t = Instant::now();
        model.run(1, std::slice::from_ref(row))?;
        times.push(t.elapsed().as_nanos() as f64 / 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{{\"calls\":{calls},\"median_us\":{:.2},\"p99_us\":{:.2}}}",
        times[calls / 2],
        times[calls * 99 / 100]
    );
    Ok(())
}
