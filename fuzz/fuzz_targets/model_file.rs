//! Any bytes as a Weir model file: refused, or a model that predicts (or
//! refuses to) on a frame of its own inputs without panicking. A file whose
//! parts disagree (weights for fewer features than it declares, a tree
//! pointing past its nodes) must be caught, not indexed out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_ml::{Column, Frame, InputKind, Model};

fuzz_target!(|data: &[u8]| {
    let Ok((model, _)) = Model::read(data) else {
        return;
    };
    let rows = 3;
    let columns = model
        .inputs()
        .iter()
        .map(|input| match input.kind {
            InputKind::Text => Column::Text(vec![Some("a".into()), None, Some(String::new())]),
            // Datetimes arrive as epoch seconds.
            InputKind::Numeric | InputKind::Datetime => Column::Numeric(vec![0.0, -1.5, f64::NAN]),
        })
        .collect();
    let _ = model.predict(&Frame { rows, columns });
});
