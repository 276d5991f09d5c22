//! Reading a history file: bounded lines, each checked.

use shepherd_core::history::{HistoryError, HistoryRecord};

/// A history read from JSON Lines, line by line, each at most
/// [`shepherd_core::history::MAX_LINE`] bytes (never more is held), each
/// checked; an error names its line.
pub fn read_history(reader: impl std::io::BufRead) -> impl Iterator<Item = Result<HistoryRecord, HistoryError>> {
    let mut reader = reader;
    let mut number = 0usize;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        number += 1;
        let mut line = Vec::new();
        let limit = shepherd_core::history::MAX_LINE as u64 + 1;
        match std::io::BufRead::read_until(&mut std::io::Read::take(&mut reader, limit), b'\n', &mut line) {
            Ok(0) => None,
            Err(e) => {
                done = true;
                Some(Err(HistoryError(format!("line {number}: {e}"))))
            }
            Ok(_) if line.len() as u64 == limit && line.last() != Some(&b'\n') => {
                done = true;
                Some(Err(HistoryError(format!("line {number}: longer than {} bytes", shepherd_core::history::MAX_LINE))))
            }
            Ok(_) => {
                let text = match std::str::from_utf8(&line) {
                    Ok(text) => text.trim_end_matches(['\n', '\r']),
                    Err(e) => {
                        done = true;
                        return Some(Err(HistoryError(format!("line {number}: {e}"))));
                    }
                };
                Some(HistoryRecord::parse(text).map_err(|e| {
                    done = true;
                    HistoryError(format!("line {number}: {}", e.0))
                }))
            }
        }
    })
}
