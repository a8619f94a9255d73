//! HTTPS: `weir server` and `weir serve` with `--tls-cert`/`--tls-key`
//! answer over TLS (with tokens, as a team would run them), refuse plain
//! HTTP, and say which file is wrong when one is.

use serde_json::json;

use crate::common::{make_certs, Sandbox};

#[test]
fn the_tracking_server_and_the_inference_server_speak_https() {
    let sb = Sandbox::new();
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let tracking = sb.tracking_server_over(Some(certs.path()));
    assert!(tracking.base.starts_with("https://"), "{}", tracking.base);
    let admin = sb.json(&["tokens", "create", "--name", "ops", "--role", "admin"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let created = tracking
        .client
        .post(format!(
            "{}/api/2.0/mlflow/experiments/create",
            tracking.base
        ))
        .bearer_auth(&admin)
        .json(&json!({"name": "over-tls"}))
        .send()
        .unwrap();
    assert_eq!(created.status(), 200);
    // The dashboard's page comes over the same connection kind.
    let page = tracking
        .client
        .get(format!("{}/", tracking.base))
        .send()
        .unwrap();
    assert_eq!(page.status(), 200);
    // Plain HTTP to the TLS port gets no answer at all.
    let plain = tracking.base.replace("https://", "http://");
    assert!(reqwest::blocking::get(format!("{plain}/health")).is_err());

    crate::lineage::rows(&sb, "a.csv", 0);
    sb.write("m.yaml", crate::lineage::PIPELINE);
    sb.ok(&["run", "m.yaml"]);
    let server = sb.serve_over(&["m"], Some(certs.path()));
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let body = json!({"inputs": [
        {"name": "x1", "datatype": "FP64", "shape": [1], "data": [3.0]},
        {"name": "x2", "datatype": "FP64", "shape": [1], "data": [4.0]},
    ]});
    let (status, answer) = server.post("/v2/models/m/infer", body.to_string());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outputs"][0]["shape"], json!([1]));
}

#[test]
fn bad_certificate_files_are_named_before_anything_listens() {
    let sb = Sandbox::new();
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let cert = certs.path().join("cert.pem").display().to_string();
    let missing = certs.path().join("nope.pem").display().to_string();

    let e = sb.fails(&[
        "server",
        "--addr",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &missing,
    ]);
    assert!(
        e.contains("cannot read the TLS private key") && e.contains("nope.pem"),
        "{e}"
    );
    // The certificate given as its own key.
    let e = sb.fails(&[
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &cert,
    ]);
    assert!(
        e.contains("holds no private key") && e.contains("--tls-key"),
        "{e}"
    );
    // One without the other is a usage error.
    let e = sb.fails(&["server", "--tls-cert", &cert]);
    assert!(e.contains("--tls-key"), "{e}");
}
