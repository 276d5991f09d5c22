#![allow(dead_code)]
//! What the fuzz targets run, shared with the regression test
//! (`crates/core/tests/fuzz_regressions.rs`) that replays every saved
//! input: anything that ever crashed stays fixed.

use shepherd_core::{decode_json, validate, Constraint, Limits, ProjectLimits, SecretRef, TaskId, TaskSpec, Timestamp};

/// The request bodies the API decodes, decoded and validated as the server
/// does: a task, a batch, a project's limits, secret references.
pub fn request_decoding(data: &[u8]) {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Batch {
        tasks: Vec<TaskSpec>,
    }
    let id = TaskId(ulid::Ulid::nil());
    if let Ok(spec) = decode_json::<TaskSpec>(data) {
        let _ = validate(spec, &Limits::default(), id, Timestamp(0));
    }
    if let Ok(batch) = decode_json::<Batch>(data) {
        for spec in batch.tasks {
            let _ = validate(spec, &Limits::default(), id, Timestamp(0));
        }
    }
    let _ = decode_json::<ProjectLimits>(data);
    let _ = decode_json::<Vec<SecretRef>>(data);
}

/// Parses a constraint; one that parses must print back to itself.
pub fn constraint_parser(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(constraint) = Constraint::parse(text) {
        let printed = constraint.to_string();
        let again = Constraint::parse(&printed).expect("a printed constraint parses");
        assert_eq!(again, constraint, "`{text}` printed as `{printed}` parses differently");
    }
}
