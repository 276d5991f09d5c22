//! Replays the fuzz seeds and every input that ever crashed a fuzz target
//! (`fuzz/regressions/TARGET/`) through the same harness the fuzzer runs,
//! so a fixed crash stays fixed without cargo-fuzz.

#[path = "../../../fuzz/harness.rs"]
mod harness;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut count = 0;
    for dir in [root.join("corpus").join(target), root.join("regressions").join(target)] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let bytes = std::fs::read(entry.path()).expect("read a saved input");
            run(&bytes);
            count += 1;
        }
    }
    count
}

#[test]
fn saved_request_bodies_decode_without_panicking() {
    assert!(replay("request_decoding", harness::request_decoding) >= 4);
}

#[test]
fn saved_constraints_parse_and_print_back() {
    assert!(replay("constraint_parser", harness::constraint_parser) >= 6);
}
