//! tract's answers against onnxruntime's for scikit-learn exports (see
//! tests/data/README.md for how the files were made).

use serde_json::Value;
use weir_onnx::{Data, ElemType, OnnxError, OnnxModel};

fn fixture(name: &str) -> (OnnxModel, Value) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    let bytes = std::fs::read(format!("{dir}/{name}.onnx")).expect("model file");
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/expected.json")).unwrap())
            .unwrap();
    (
        OnnxModel::from_bytes(&bytes).expect("loads"),
        expected[name].clone(),
    )
}

fn rows(expected: &Value) -> (usize, Vec<f64>) {
    let rows = expected["rows"].as_array().unwrap();
    let flat = rows
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    (rows.len(), flat)
}

fn floats(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        other => vec![other.as_f64().unwrap()],
    }
}

#[test]
fn binary_tree_ensemble_matches_onnxruntime() {
    let (model, expected) = fixture("gbdt_classifier");
    assert_eq!(model.inputs()[0].name, "X");
    assert_eq!(model.inputs()[0].elem, ElemType::F32);
    assert_eq!(model.inputs()[0].shape, vec![-1, 30]);
    let names: Vec<&str> = model.outputs().iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["label", "probabilities"]);

    let (n, flat) = rows(&expected);
    let out = model.run(n, &[flat]).unwrap();
    let Data::I64(labels) = &out[0].data else {
        panic!("labels are int64: {:?}", out[0].data)
    };
    let want: Vec<i64> = floats(&expected["outputs"]["label"])
        .iter()
        .map(|v| *v as i64)
        .collect();
    assert_eq!(labels, &want);
    assert_eq!(out[1].shape, vec![n, 2]);
    let Data::F32(probs) = &out[1].data else {
        panic!("probabilities are float: {:?}", out[1].data)
    };
    let want = floats(&expected["outputs"]["probabilities"]);
    let worst = probs
        .iter()
        .zip(&want)
        .map(|(a, b)| (f64::from(*a) - b).abs())
        .fold(0.0, f64::max);
    assert!(worst <= 1e-5, "largest difference {worst}");
}

#[test]
fn dense_network_matches_onnxruntime_one_row_at_a_time() {
    let (model, expected) = fixture("mlp_regressor");
    let (n, flat) = rows(&expected);
    let want = floats(&expected["outputs"]["variable"]);
    let width = flat.len() / n;
    for (i, row) in flat.chunks(width).enumerate() {
        let out = model.run(1, &[row.to_vec()]).unwrap();
        let got = match &out[0].data {
            Data::F32(v) => f64::from(v[0]),
            other => panic!("float output: {other:?}"),
        };
        assert!(
            (got - want[i]).abs() <= 1e-5 * want[i].abs().max(1.0),
            "row {i}: {got} vs {}",
            want[i]
        );
    }
}

#[test]
fn wrong_widths_and_counts_are_named() {
    let (model, _) = fixture("gbdt_classifier");
    let e = model.run(2, &[vec![0.0; 59]]).unwrap_err().to_string();
    assert!(
        e.contains("'X'") && e.contains("60") && e.contains("59"),
        "{e}"
    );
    let e = model.run(1, &[]).unwrap_err().to_string();
    assert!(e.contains("takes 1 inputs (X)"), "{e}");
}

#[test]
fn damaged_files_are_refused_at_load() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    let bytes = std::fs::read(format!("{dir}/gbdt_classifier.onnx")).unwrap();
    let e = OnnxModel::from_bytes(&bytes[..bytes.len() / 2]).unwrap_err();
    assert!(matches!(e, OnnxError::Parse(_)), "{e}");
    let e = OnnxModel::from_bytes(b"not a model at all").unwrap_err();
    assert!(
        matches!(e, OnnxError::Parse(_) | OnnxError::Unsupported(_)),
        "{e}"
    );
    assert!(OnnxModel::from_bytes(b"").is_err());
}
