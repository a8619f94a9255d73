//! Any body on `/invocations` or an OIP `infer` route (JSON or JSON and
//! binary tensors), decoded against a
//! model with a text and a numeric input: a frame or a 400, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_ml::{InputKind, InputSpec};
use weir_serve::{decode_payload, Protocol};

fuzz_target!(|data: &[u8]| {
    let Some((first, body)) = data.split_first() else {
        return;
    };
    // Binary bodies: the JSON header's length is taken from the body's
    // size, so every split of the same bytes is reachable.
    let protocol = match first % 3 {
        0 => Protocol::Mlflow,
        1 => Protocol::Oip,
        _ => Protocol::OipBinary {
            header_length: usize::from(first / 3) * body.len() / 85,
        },
    };
    let inputs = [
        InputSpec {
            name: "carrier".into(),
            kind: InputKind::Text,
        },
        InputSpec {
            name: "distance".into(),
            kind: InputKind::Numeric,
        },
    ];
    if let Ok(frame) = decode_payload(protocol, body, &inputs) {
        assert_eq!(frame.columns.len(), inputs.len());
    }
});
