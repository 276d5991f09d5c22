//! What both runner tests share: the runner's frames, read on a thread.

use shepherd_runner::protocol::{self, Kind};
use std::sync::mpsc;

/// Reads frames from `output` until it ends, on a thread of its own.
pub fn frames(mut output: impl std::io::Read + Send + 'static) -> mpsc::Receiver<(Kind, Vec<u8>)> {
    let (tx, frames) = mpsc::channel();
    std::thread::spawn(move || {
        while let Ok(Some(frame)) = protocol::read_frame(&mut output) {
            if tx.send(frame).is_err() {
                return;
            }
        }
    });
    frames
}
