//! Any text as an MLflow search filter or order-by: parsed or refused with
//! a position, never a panic; what parses prints back to text that parses
//! to the same clauses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_store::filter;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(clauses) = filter::parse(text) {
        let printed = filter::print(&clauses);
        let again = filter::parse(&printed)
            .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which fails: {e}"));
        assert_eq!(clauses, again, "{text:?} printed as {printed:?}");
    }
    let _ = filter::parse_experiment_filter(text);
    let _ = filter::parse_logged_model_filter(text);
    let _ = filter::parse_registry_filter(text);
    let _ = filter::parse_order_by(text);
});
