//! The runner binary driven over its protocol, as the agent will drive it,
//! on the host (not PID 1: its reset says so, and kills only the task's
//! process group). Scratch directories are temporary ones.

mod common;

use base64::Engine as _;
use shepherd_runner::protocol::{self, Exited, FileSpec, Kind, Ready, ResetDone, RunRequest, SignalRequest};
use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Runner {
    child: Child,
    stdin: Option<ChildStdin>,
    frames: mpsc::Receiver<(Kind, Vec<u8>)>,
}

impl Runner {
    fn start(scratch: &std::path::Path) -> Runner {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shepherd-runner"))
            .arg("--scratch")
            .arg(scratch)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let frames = common::frames(child.stdout.take().unwrap());
        let mut runner = Runner { child, stdin, frames };
        let (kind, body) = runner.next();
        assert_eq!(kind, Kind::Ready);
        assert_eq!(protocol::decode::<Ready>(&body).unwrap(), Ready { version: protocol::VERSION, pid1: false });
        runner
    }

    fn send(&mut self, kind: Kind, body: &[u8]) {
        protocol::write_frame(self.stdin.as_mut().unwrap(), kind, body).unwrap();
    }

    fn run(&mut self, request: &RunRequest) {
        self.send(Kind::Run, &serde_json::to_vec(request).unwrap());
    }

    /// The next frame but a `Started` (checked where it matters).
    fn next(&mut self) -> (Kind, Vec<u8>) {
        loop {
            let frame = self.frames.recv_timeout(Duration::from_secs(10)).expect("a frame from the runner");
            if frame.0 != Kind::Started {
                return frame;
            }
        }
    }

    /// Output until the exit: (stdout, stderr, exit).
    fn until_exit(&mut self) -> (String, String, Exited) {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            match self.next() {
                (Kind::Stdout, data) => stdout.extend(data),
                (Kind::Stderr, data) => stderr.extend(data),
                (Kind::Exited, body) => {
                    return (String::from_utf8(stdout).unwrap(), String::from_utf8(stderr).unwrap(), protocol::decode(&body).unwrap())
                }
                (kind, body) => panic!("unexpected {kind:?}: {}", String::from_utf8_lossy(&body)),
            }
        }
    }

    fn reset(&mut self) -> ResetDone {
        self.send(Kind::Reset, &[]);
        let (kind, body) = self.next();
        assert_eq!(kind, Kind::ResetDone);
        protocol::decode(&body).unwrap()
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sh(script: &str) -> RunRequest {
    RunRequest {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        ..Default::default()
    }
}

/// A reset on the host does everything but kill processes outside the task.
fn assert_reset_clean_but_not_pid1(done: &ResetDone) {
    assert!(!done.ok, "never ok outside PID 1: {done:?}");
    assert_eq!(done.error.as_deref(), Some("not PID 1: processes outside the task's group may be left"), "{done:?}");
}

fn alive(pid: i32) -> bool {
    // A zombie is not alive: look at the state in /proc.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

#[test]
fn runs_tasks_one_after_another_with_their_own_output_env_files_and_exit_codes() {
    let scratch = tempfile::tempdir().unwrap();
    let mut runner = Runner::start(scratch.path());
    for k in 0..3 {
        let payload = scratch.path().join("payload");
        let mut request = sh("cat \"$P\"; echo \"$FOO\"; echo oops >&2; ls \"$S\"; touch \"$S/left-by-$K\"; exit $K");
        request.env.extend([
            ("FOO".into(), format!("bar{k}")),
            ("K".into(), k.to_string()),
            ("P".into(), payload.display().to_string()),
            ("S".into(), scratch.path().display().to_string()),
        ]);
        request.files.push(FileSpec {
            path: payload.display().to_string(),
            mode: 0o400,
            data: base64::engine::general_purpose::STANDARD.encode(format!("payload {k}\n")),
        });
        runner.run(&request);
        // `Started` first, with the task's pid, before any output.
        let (kind, body) = runner.frames.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(kind, Kind::Started);
        assert!(protocol::decode::<protocol::Started>(&body).unwrap().pid > 1);
        let (stdout, stderr, exit) = runner.until_exit();
        // The previous task's file is gone: only this task's payload is there.
        assert_eq!(stdout, format!("payload {k}\nbar{k}\npayload\n"));
        assert_eq!(stderr, "oops\n");
        assert_eq!(exit, Exited { code: k, signal: None, cpu_ms: None, peak_memory_bytes: None, result: None });
        assert_reset_clean_but_not_pid1(&runner.reset());
        assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0, "scratch emptied");
    }
}

#[test]
fn signals_reach_the_task_and_what_it_leaves_behind_is_cut_off_and_killed() {
    let scratch = tempfile::tempdir().unwrap();
    let mut runner = Runner::start(scratch.path());

    // SIGTERM to the task's group: 128 + 15, as for a cold container.
    runner.run(&sh("echo started; exec sleep 30"));
    assert_eq!(runner.next(), (Kind::Stdout, b"started\n".to_vec()));
    runner.send(Kind::Signal, &serde_json::to_vec(&SignalRequest { signal: 15 }).unwrap());
    let (_, _, exit) = runner.until_exit();
    assert_eq!(exit, Exited { code: 143, signal: Some(15), cpu_ms: None, peak_memory_bytes: None, result: None });
    assert_reset_clean_but_not_pid1(&runner.reset());

    // A background process that keeps the output open: the exit is still
    // reported promptly, its later output is not the task's, and the reset kills it.
    let began = Instant::now();
    runner.run(&sh("sleep 30 & echo $!; exit 0"));
    let (stdout, _, exit) = runner.until_exit();
    assert_eq!(exit.code, 0);
    assert!(began.elapsed() < Duration::from_secs(5), "exit reported after {:?}", began.elapsed());
    let pid: i32 = stdout.trim().parse().unwrap();
    assert!(alive(pid), "the background sleep runs until the reset");
    assert_reset_clean_but_not_pid1(&runner.reset());
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!alive(pid), "the reset killed what the task left behind");
}

#[test]
fn bad_requests_are_refused_and_the_runner_goes_on() {
    let scratch = tempfile::tempdir().unwrap();
    let mut runner = Runner::start(scratch.path());
    let failure = |runner: &mut Runner| {
        let (kind, body) = runner.next();
        assert_eq!(kind, Kind::Failure, "{}", String::from_utf8_lossy(&body));
        protocol::decode::<protocol::Failure>(&body).unwrap().message
    };
    runner.send(Kind::Run, b"not json");
    assert!(failure(&mut runner).contains("bad run request"));
    runner.run(&RunRequest::default());
    assert!(failure(&mut runner).contains("no command"));
    // Any task asked for, even one that did not start, needs a reset before the next.
    runner.run(&sh("true"));
    assert!(failure(&mut runner).contains("reset before"));
    runner.reset();
    // A task that cannot start leaves none of its files behind.
    let secret = scratch.path().join("secret");
    let mut missing = RunRequest { argv: vec!["/no/such/program".into()], ..Default::default() };
    missing.files.push(FileSpec { path: secret.display().to_string(), mode: 0o400, data: "c2VjcmV0".into() });
    runner.run(&missing);
    assert!(failure(&mut runner).contains("cannot start"));
    assert!(!secret.exists(), "the failed task's file was removed at once");
    runner.reset();
    let mut relative = sh("true");
    relative.files.push(FileSpec { path: "relative".into(), mode: 0o600, data: String::new() });
    runner.run(&relative);
    assert!(failure(&mut runner).contains("not absolute"));
    runner.reset();
    runner.send(Kind::Stdout, b"from the wrong side");
    assert!(failure(&mut runner).contains("unexpected"));

    runner.run(&sh("sleep 30"));
    runner.run(&sh("true"));
    assert!(failure(&mut runner).contains("already running"));
    runner.send(Kind::Signal, &serde_json::to_vec(&SignalRequest { signal: 9 }).unwrap());
    assert_eq!(runner.until_exit().2, Exited { code: 137, signal: Some(9), cpu_ms: None, peak_memory_bytes: None, result: None });
    runner.run(&sh("true"));
    assert!(failure(&mut runner).contains("reset before"));
    runner.reset();
    runner.run(&sh("echo fine"));
    assert_eq!(runner.until_exit().0, "fine\n");
}

#[test]
fn the_runner_ends_with_its_input_and_takes_the_task_with_it() {
    let scratch = tempfile::tempdir().unwrap();
    let mut runner = Runner::start(scratch.path());
    runner.run(&sh("echo $$; exec sleep 30"));
    let (kind, pid) = runner.next();
    assert_eq!(kind, Kind::Stdout);
    let pid: i32 = String::from_utf8(pid).unwrap().trim().parse().unwrap();
    drop(runner.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = runner.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the runner did not end with its input");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}");
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!alive(pid), "the task went with the runner");
    // A garbage frame header ends it with an error, not a hang.
    let scratch = tempfile::tempdir().unwrap();
    let mut runner = Runner::start(scratch.path());
    runner.stdin.as_mut().unwrap().write_all(&[0x42, 0, 0, 0, 1, 0]).unwrap();
    drop(runner.stdin.take());
    let status = runner.child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
}

/// A task's result file: sent with its exit when it is a regular file (cut
/// at 64 KiB), not when it is a link or a FIFO (which never blocks the
/// runner); its directory is made writable and emptied by the reset.
#[test]
fn the_result_file_comes_back_with_the_exit_bounded_and_only_as_a_regular_file() {
    let scratch = tempfile::tempdir().unwrap();
    let mut runner = Runner::start(scratch.path());
    let file = scratch.path().join("out/result");
    let outcomes = [
        ("printf 'forty-two' > \"$R\"", Some(b"forty-two".len())),
        ("head -c 200000 /dev/zero > \"$R\"", Some(64 * 1024)),
        ("ln -s /etc/passwd \"$R\"", None),
        ("mkfifo \"$R\"", None),
        ("true", None),
    ];
    for (script, expected) in outcomes {
        let mut request = sh(script);
        request.env.push(("R".into(), file.display().to_string()));
        request.result_file = Some(file.display().to_string());
        runner.run(&request);
        let (_, _, exit) = runner.until_exit();
        let result = exit.result.map(|r| base64::engine::general_purpose::STANDARD.decode(r).unwrap());
        assert_eq!(result.as_ref().map(Vec::len), expected, "{script}");
        if expected == Some(9) {
            assert_eq!(result.as_deref(), Some(&b"forty-two"[..]));
        }
        assert_reset_clean_but_not_pid1(&runner.reset());
        assert!(!file.exists() && !file.parent().unwrap().exists(), "the reset empties the scratch it lives in");
    }
}
