//! The runner protocol: frames on the container's attached stdin (agent →
//! runner) and stdout (runner → agent). No host socket and no extra mount.
//!
//! A frame is one kind byte, a big-endian `u32` length, and that many bytes
//! of body: JSON for requests and answers, raw bytes for output. The runner
//! says [`Kind::Ready`] once; then, for each task, the agent sends
//! [`Kind::Run`], the runner answers [`Kind::Started`] (or
//! [`Kind::Failure`] if the task could not start), streams [`Kind::Stdout`]/[`Kind::Stderr`] and
//! ends with [`Kind::Exited`]; the agent may send [`Kind::Signal`]
//! meanwhile, and sends [`Kind::Reset`] after the exit, answered by
//! [`Kind::ResetDone`]. Only a runner that said `pid1` and answered a reset
//! with `ok` may be given another task. Closing the runner's stdin ends it.

use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

/// This protocol's version, said in [`Ready`].
pub const VERSION: u32 = 1;

/// The largest frame either side accepts (a run request carries the
/// payload and secret files).
pub const MAX_FRAME: u32 = 64 << 20;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Agent → runner: run a task ([`RunRequest`]).
    Run = 1,
    /// Agent → runner: signal the running task's processes ([`SignalRequest`]).
    Signal = 2,
    /// Agent → runner: restore a clean state after the task ended (no body).
    Reset = 3,
    /// Runner → agent: started and waiting ([`Ready`]).
    Ready = 0x81,
    /// Runner → agent: bytes the task wrote to stdout.
    Stdout = 0x82,
    /// Runner → agent: bytes the task wrote to stderr.
    Stderr = 0x83,
    /// Runner → agent: the task's process ended ([`Exited`]).
    Exited = 0x84,
    /// Runner → agent: the reset's outcome ([`ResetDone`]).
    ResetDone = 0x85,
    /// Runner → agent: a request it could not carry out ([`Failure`]).
    Failure = 0x86,
    /// Runner → agent: the task's process started ([`Started`]); always
    /// before its output and its `Exited`.
    Started = 0x87,
}

impl Kind {
    /// The kind of a frame's first byte.
    pub fn from_byte(byte: u8) -> Option<Kind> {
        Some(match byte {
            1 => Kind::Run,
            2 => Kind::Signal,
            3 => Kind::Reset,
            0x81 => Kind::Ready,
            0x82 => Kind::Stdout,
            0x83 => Kind::Stderr,
            0x84 => Kind::Exited,
            0x85 => Kind::ResetDone,
            0x86 => Kind::Failure,
            0x87 => Kind::Started,
            _ => return None,
        })
    }
}

/// A task to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    /// The program and its arguments (exec form; no shell is implied).
    pub argv: Vec<String>,
    /// The task's environment, on top of the runner's own as it started
    /// (what the engine gave the container: the image's, PATH, HOSTNAME,
    /// HOME), as the engine merges a cold container's. Nothing a task sets
    /// reaches the next.
    pub env: Vec<(String, String)>,
    /// The working directory (default `/`).
    #[serde(default)]
    pub workdir: Option<String>,
    /// Files written before the task starts (payload, secrets, its
    /// dependencies' results) and removed by the reset.
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// Where the task may write its result (`$SHEPHERD_RESULT_FILE`): the
    /// runner makes its directory writable for any user before the task
    /// starts, and sends what is there (a regular file, at most
    /// [`MAX_RESULT`] bytes) with the exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_file: Option<String>,
}

/// The most of a result file the runner sends (64 KiB, as for a cold container).
pub const MAX_RESULT: u64 = 64 * 1024;

/// A file the runner writes for a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSpec {
    /// Absolute path inside the container; its directory is created.
    pub path: String,
    /// Unix permission bits.
    pub mode: u32,
    /// The content, base64 (standard alphabet).
    pub data: String,
}

/// A signal for the running task's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalRequest {
    /// The signal number (15 for SIGTERM, 9 for SIGKILL).
    pub signal: i32,
}

/// The runner's greeting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    pub version: u32,
    /// Whether the runner is the container's PID 1: only then can a reset
    /// kill every other process, and only then may the container be reused.
    pub pid1: bool,
}

/// The task's process started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// Its process id (in the container's PID namespace).
    pub pid: i32,
}

/// How the task's process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exited {
    /// The exit code, or 128 + the signal that killed it (the shell's
    /// convention, as for a cold container).
    pub code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// CPU time it used, user and system, in milliseconds (as PID 1 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    /// The most memory it held at once, in bytes (as PID 1 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
    /// What the task wrote to its result file (base64), if the request
    /// named one and the task left a regular file there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
}

/// The reset's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetDone {
    /// Everything was restored: the container may run another task.
    pub ok: bool,
    /// What could not be restored.
    pub error: Option<String>,
}

/// A request the runner could not carry out (a bad frame, a task that would
/// not start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub message: String,
}

/// Writes one frame and flushes it.
pub fn write_frame(out: &mut impl Write, kind: Kind, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut head = [0u8; 5];
    head[0] = kind as u8;
    head[1..].copy_from_slice(&len.to_be_bytes());
    out.write_all(&head)?;
    out.write_all(body)?;
    out.flush()
}

/// Writes a frame with a JSON body.
pub fn write_json(out: &mut impl Write, kind: Kind, value: &impl Serialize) -> io::Result<()> {
    let body = serde_json::to_vec(value).map_err(io::Error::other)?;
    write_frame(out, kind, &body)
}

/// Reads one frame: `None` at a clean end of input (between frames). An
/// unknown kind, a frame over [`MAX_FRAME`] or an end inside a frame is an
/// error.
pub fn read_frame(input: &mut impl Read) -> io::Result<Option<(Kind, Vec<u8>)>> {
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        match input.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "input ended inside a frame header")),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let (kind, len) = header(&head)?;
    let mut body = vec![0u8; len];
    input.read_exact(&mut body)?;
    Ok(Some((kind, body)))
}

/// A frame header's kind and body length; an unknown kind or a length over
/// [`MAX_FRAME`] is an error.
fn header(head: &[u8; 5]) -> io::Result<(Kind, usize)> {
    let kind =
        Kind::from_byte(head[0]).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("unknown frame kind {:#x}", head[0])))?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes is over the limit")));
    }
    Ok((kind, len as usize))
}

/// The frame at the start of `buffer`, for readers that gather bytes as
/// they come: its kind, body and whole length, or `None` while the frame
/// is incomplete. Errors as [`read_frame`].
pub fn frame_at(buffer: &[u8]) -> io::Result<Option<(Kind, &[u8], usize)>> {
    let Some(head) = buffer.first_chunk::<5>() else { return Ok(None) };
    let (kind, len) = header(head)?;
    Ok(buffer.get(5..5 + len).map(|body| (kind, body, 5 + len)))
}

/// Decodes a frame's JSON body.
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> io::Result<T> {
    serde_json::from_slice(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_ones_are_refused() {
        let mut buffer = Vec::new();
        write_json(&mut buffer, Kind::Run, &RunRequest { argv: vec!["true".into()], ..Default::default() }).unwrap();
        write_frame(&mut buffer, Kind::Stdout, b"hello").unwrap();
        let mut input = buffer.as_slice();
        let (kind, body) = read_frame(&mut input).unwrap().unwrap();
        assert_eq!(kind, Kind::Run);
        assert_eq!(decode::<RunRequest>(&body).unwrap().argv, ["true"]);
        assert_eq!(read_frame(&mut input).unwrap(), Some((Kind::Stdout, b"hello".to_vec())));
        assert_eq!(read_frame(&mut input).unwrap(), None, "a clean end");

        assert!(read_frame(&mut &[0x7fu8, 0, 0, 0, 0][..]).is_err(), "unknown kind");
        assert!(read_frame(&mut &[1u8, 0xff, 0xff, 0xff, 0xff][..]).is_err(), "over the limit");
        assert!(read_frame(&mut &[1u8, 0, 0][..]).is_err(), "cut inside the header");
        assert!(read_frame(&mut &[1u8, 0, 0, 0, 9, b'{'][..]).is_err(), "cut inside the body");
        assert!(decode::<RunRequest>(b"not json").is_err());

        // Gathered a few bytes at a time: nothing until a frame is whole.
        let mut frames = Vec::new();
        write_frame(&mut frames, Kind::Stdout, b"abc").unwrap();
        assert_eq!(frame_at(&frames[..4]).unwrap(), None);
        assert_eq!(frame_at(&frames[..7]).unwrap(), None);
        assert_eq!(frame_at(&frames).unwrap(), Some((Kind::Stdout, &b"abc"[..], 8)));
        assert!(frame_at(&[0x7f, 0, 0, 0, 0]).is_err(), "unknown kind");
        assert!(frame_at(&[1, 0xff, 0xff, 0xff, 0xff]).is_err(), "over the limit");
    }
}
