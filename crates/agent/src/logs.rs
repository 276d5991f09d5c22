//! Bounded log capture: the first `head_bytes` of an attempt's output are
//! stored as they arrive (so `shepherd logs -f` follows live), the last
//! `tail_bytes` are kept in memory and stored when the attempt ends, and
//! whatever falls between is dropped and counted. A task printing gigabytes
//! costs the server at most head + tail bytes.

use crate::backend::Backend;
use crate::driver::OutputChunk;
use shepherd_core::TaskId;
use shepherd_core::{LogChunk, LogStream};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How much of each attempt's output is kept.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    pub head_bytes: usize,
    pub tail_bytes: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits { head_bytes: 1024 * 1024, tail_bytes: 1024 * 1024 }
    }
}

/// Store pending output at least this often while an attempt runs.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// ... or as soon as this much is pending.
const FLUSH_BYTES: usize = 64 * 1024;

struct Capture {
    task_id: TaskId,
    attempt: u32,
    limits: LogLimits,
    head_used: usize,
    pending: Vec<LogChunk>,
    pending_bytes: usize,
    tail: VecDeque<(LogStream, Vec<u8>)>,
    tail_bytes: usize,
    dropped: u64,
}

impl Capture {
    fn push(&mut self, chunk: OutputChunk) {
        let mut data = chunk.data;
        let room = self.limits.head_bytes.saturating_sub(self.head_used);
        if room > 0 {
            let head: Vec<u8> = if data.len() <= room { std::mem::take(&mut data) } else { data.drain(..room).collect() };
            self.head_used += head.len();
            self.pending_bytes += head.len();
            self.pending.push(LogChunk { task_id: self.task_id, attempt: self.attempt, stream: chunk.stream, data: head });
        }
        if data.is_empty() {
            return;
        }
        self.tail_bytes += data.len();
        self.tail.push_back((chunk.stream, data));
        while self.tail_bytes > self.limits.tail_bytes {
            let Some((stream, mut front)) = self.tail.pop_front() else { break };
            let excess = self.tail_bytes - self.limits.tail_bytes;
            if front.len() > excess {
                front.drain(..excess);
                self.tail_bytes -= excess;
                self.dropped += excess as u64;
                self.tail.push_front((stream, front));
            } else {
                self.tail_bytes -= front.len();
                self.dropped += front.len() as u64;
            }
        }
    }

    fn finish(&mut self) {
        if self.dropped > 0 {
            let notice = format!(
                "\n[shepherd: {} bytes of output truncated; showing the first {} and the last {} bytes]\n",
                self.dropped, self.limits.head_bytes, self.limits.tail_bytes
            );
            self.pending.push(LogChunk {
                task_id: self.task_id,
                attempt: self.attempt,
                stream: LogStream::System,
                data: notice.into_bytes(),
            });
        }
        for (stream, data) in self.tail.drain(..) {
            self.pending.push(LogChunk { task_id: self.task_id, attempt: self.attempt, stream, data });
        }
    }

    async fn flush(&mut self, store: &dyn Backend) {
        if self.pending.is_empty() {
            return;
        }
        let chunks = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        if let Err(e) = store.append_logs(chunks).await {
            tracing::warn!(task = %self.task_id, error = %e, "could not store task output");
        }
    }
}

/// Drains `output` into the store until every sender is dropped.
/// `already_stored`: bytes of this attempt stored before (an attempt adopted
/// after a restart), counted against the head.
pub async fn capture(
    store: Arc<dyn Backend>,
    task_id: TaskId,
    attempt: u32,
    limits: LogLimits,
    already_stored: usize,
    mut output: mpsc::Receiver<OutputChunk>,
) {
    let mut capture = Capture {
        task_id,
        attempt,
        limits,
        head_used: already_stored,
        pending: Vec::new(),
        pending_bytes: 0,
        tail: VecDeque::new(),
        tail_bytes: 0,
        dropped: 0,
    };
    let mut ticker = tokio::time::interval(FLUSH_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            chunk = output.recv() => match chunk {
                Some(chunk) => {
                    capture.push(chunk);
                    if capture.pending_bytes >= FLUSH_BYTES {
                        capture.flush(store.as_ref()).await;
                    }
                }
                None => break,
            },
            _ = ticker.tick() => capture.flush(store.as_ref()).await,
        }
    }
    capture.finish();
    capture.flush(store.as_ref()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(limits: LogLimits) -> Capture {
        Capture {
            task_id: TaskId(ulid::Ulid::nil()),
            attempt: 1,
            limits,
            head_used: 0,
            pending: Vec::new(),
            pending_bytes: 0,
            tail: VecDeque::new(),
            tail_bytes: 0,
            dropped: 0,
        }
    }

    fn text(c: &Capture) -> String {
        c.pending.iter().map(|c| String::from_utf8_lossy(&c.data).into_owned()).collect()
    }

    #[test]
    fn small_output_is_kept_whole() {
        let mut c = capture(LogLimits { head_bytes: 10, tail_bytes: 10 });
        c.push(OutputChunk { stream: LogStream::Stdout, data: b"hello".to_vec() });
        c.finish();
        assert_eq!(text(&c), "hello");
    }

    #[test]
    fn large_output_keeps_head_and_tail_and_says_so() {
        let mut c = capture(LogLimits { head_bytes: 4, tail_bytes: 3 });
        for piece in ["abcdef", "ghij", "klmnopqrstuvwxyz"] {
            c.push(OutputChunk { stream: LogStream::Stdout, data: piece.as_bytes().to_vec() });
        }
        c.finish();
        let all = text(&c);
        assert!(all.starts_with("abcd"), "{all}");
        assert!(all.ends_with("xyz"), "{all}");
        assert!(all.contains("19 bytes of output truncated"), "{all}");
        let kept: usize = c.pending.iter().filter(|p| p.stream != LogStream::System).map(|p| p.data.len()).sum();
        assert_eq!(kept, 7);
    }
}
