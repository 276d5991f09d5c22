//! The static runner as PID 1 of a real container (busybox, no libc, a
//! read-only root), driven over `docker run -i` as the agent will drive it:
//! its reset kills everything a task left, empties /tmp and the secrets and
//! payload directories, and a task cannot reach the runner's protocol.
//! Needs the Docker Engine, the local busybox image
//! (scripts/build-test-image.sh) and the static runner in
//! SHEPHERD_RUNNER_STATIC (scripts/test.sh builds both).

mod common;

use base64::Engine as _;
use shepherd_runner::protocol::{self, Exited, FileSpec, Kind, Ready, ResetDone, RunRequest};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

struct Container {
    name: String,
    child: Child,
    stdin: ChildStdin,
    frames: mpsc::Receiver<(Kind, Vec<u8>)>,
}

/// The static runner (scripts/test.sh builds it).
fn runner_path() -> String {
    std::env::var("SHEPHERD_RUNNER_STATIC")
        .expect("SHEPHERD_RUNNER_STATIC must name the statically built shepherd-runner: run scripts/test.sh")
}

/// The static `pid1-probe` example, built beside the runner.
fn probe_path() -> String {
    let runner = std::path::PathBuf::from(runner_path());
    let probe = runner.parent().unwrap().join("examples/pid1-probe");
    assert!(probe.exists(), "{} is missing: scripts/test.sh builds it with the runner", probe.display());
    probe.display().to_string()
}

impl Container {
    fn start() -> Container {
        Container::start_with(&[])
    }

    /// With the probe at `/probe`.
    fn with_probe() -> Container {
        Container::start_with(&["-v".to_string(), format!("{}:/probe:ro", probe_path())])
    }

    fn start_with(extra: &[String]) -> Container {
        let runner = runner_path();
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let number = STARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("shepherd-runner-test-{}-{number}", std::process::id());
        let mut child = Command::new("docker")
            .args(["run", "-i", "--rm", "--name", &name, "--read-only", "--network", "none"])
            .args(["--tmpfs", "/tmp", "--tmpfs", "/run/secrets", "--tmpfs", "/run/shepherd"])
            .args(["--cap-drop", "ALL", "--security-opt", "no-new-privileges"])
            .args(extra)
            .arg("-v")
            .arg(format!("{runner}:/shepherd-runner:ro"))
            .args(["--entrypoint", "/shepherd-runner", "busybox"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker run");
        let stdin = child.stdin.take().unwrap();
        let frames = common::frames(child.stdout.take().unwrap());
        let mut container = Container { name, child, stdin, frames };
        let (kind, body) = container.next();
        assert_eq!(kind, Kind::Ready);
        assert_eq!(protocol::decode::<Ready>(&body).unwrap(), Ready { version: protocol::VERSION, pid1: true });
        container
    }

    fn next(&mut self) -> (Kind, Vec<u8>) {
        self.frames.recv_timeout(Duration::from_secs(30)).expect("a frame from the runner")
    }

    fn run(&mut self, request: &RunRequest) -> (String, Exited) {
        protocol::write_json(&mut self.stdin, Kind::Run, request).unwrap();
        let (kind, body) = self.next();
        assert_eq!(kind, Kind::Started, "{}", String::from_utf8_lossy(&body));
        let mut output = Vec::new();
        loop {
            match self.next() {
                (Kind::Stdout | Kind::Stderr, data) => output.extend(data),
                (Kind::Exited, body) => return (String::from_utf8_lossy(&output).into_owned(), protocol::decode(&body).unwrap()),
                (kind, body) => panic!("unexpected {kind:?}: {}", String::from_utf8_lossy(&body)),
            }
        }
    }

    fn reset(&mut self) -> ResetDone {
        protocol::write_frame(&mut self.stdin, Kind::Reset, &[]).unwrap();
        let (kind, body) = self.next();
        assert_eq!(kind, Kind::ResetDone);
        protocol::decode(&body).unwrap()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.name]).output();
        let _ = self.child.wait();
    }
}

fn sh(script: &str) -> RunRequest {
    RunRequest { argv: vec!["/bin/sh".into(), "-c".into(), script.into()], env: vec![("PATH".into(), "/bin".into())], ..Default::default() }
}

fn file(path: &str, text: &str) -> FileSpec {
    FileSpec { path: path.into(), mode: 0o400, data: base64::engine::general_purpose::STANDARD.encode(text) }
}

#[test]
fn as_pid1_the_reset_leaves_nothing_of_the_previous_task() {
    let mut c = Container::start();
    let ok = ResetDone { ok: true, error: None };

    // A task that leaves things behind: files, a process in its group, one
    // in a session of its own, and its payload and secret.
    let mut messy =
        sh("echo k1 > /tmp/mark; mkdir -p /tmp/d/e; sleep 1000 & setsid sleep 1000 & cat /run/shepherd/payload /run/secrets/key");
    messy.files = vec![file("/run/shepherd/payload", "payload-1\n"), file("/run/secrets/key", "secret-1\n")];
    let (output, exit) = c.run(&messy);
    assert_eq!((output.as_str(), exit.code), ("payload-1\nsecret-1\n", 0));
    assert_eq!(c.reset(), ok);

    // The next task sees none of it: only PID 1 and its own processes.
    let (output, exit) = c.run(&sh("ls -A /tmp /run/shepherd /run/secrets; ps -o pid,comm | grep -c sleep; true"));
    assert_eq!(exit.code, 0);
    assert!(exit.peak_memory_bytes.is_some_and(|b| b > 0) && exit.cpu_ms.is_some(), "as PID 1 the runner reports usage: {exit:?}");
    assert_eq!(output, "/run/secrets:\n\n/run/shepherd:\n\n/tmp:\n0\n", "{output}");
    assert_eq!(c.reset(), ok);

    // It cannot write into the runner's protocol, nor kill it.
    let (output, exit) = c.run(&sh("echo garbage > /proc/1/fd/1 && echo wrote; kill -9 1; echo still; exit 4"));
    assert_eq!(exit.code, 4);
    assert!(!output.contains("wrote") && output.contains("still"), "{output}");
    assert_eq!(c.reset(), ok);

    // Orphans are reaped while a task runs (no zombies against the pids
    // limit); /dev/shm and the scratch directories' own modes are restored.
    let (output, exit) = c.run(&sh("for i in 1 2 3 4 5; do sh -c 'sleep 0.05 &'; done; sleep 0.5; \
         ps -o stat | grep -c Z; echo x > /dev/shm/seg; chmod 700 /tmp; true"));
    assert_eq!((output.as_str(), exit.code), ("0\n", 0), "zombies left while the task ran");
    assert_eq!(c.reset(), ok);
    let (output, _) = c.run(&sh("ls -A /dev/shm; stat -c %a /tmp"));
    assert_eq!(output, "1777\n");
    assert_eq!(c.reset(), ok);

    // Many tasks in a row, each with its own exit code.
    for k in 0..20 {
        let (output, exit) = c.run(&sh(&format!("test -e /tmp/k && exit 99; touch /tmp/k; echo {k}; exit {}", k % 7)));
        assert_eq!((output.trim(), exit.code), (k.to_string().as_str(), k % 7));
        assert_eq!(c.reset(), ok);
    }
}

/// Issue 27, item 6: the attack's probes, each in a fresh container. A task
/// that changed PID 1 (its limits, nice value, CPU affinity, I/O priority,
/// scheduling policy, `oom_score_adj`) or `/dev` (files, directories,
/// links and fifos left there; `/dev/null` replaced or its mode changed)
/// leaves nothing to the next task: the reset puts it back, or fails (the
/// agent then never gives the container another task). Before, 60 of 170
/// such probes leaked.
#[test]
fn as_pid1_the_reset_puts_back_what_a_task_changed_of_pid1_and_dev_or_fails() {
    // What a task inherits from PID 1, and /dev.
    let look = "/probe show; ls -A /dev | sort | tr '\\n' ' '; stat -c '%a %F' /dev/null";
    // PID 1's own settings, and /dev: what a probe must change.
    let pid1 = "cat /proc/1/limits /proc/1/oom_score_adj; cut -d' ' -f19,41 /proc/1/stat; grep Cpus_allowed_list /proc/1/status; \
                ionice -p 1; ls -A /dev | sort | tr '\\n' ' '; stat -c '%a %F' /dev/null";
    let (baseline, untouched) = {
        let mut c = Container::with_probe();
        let (out, exit) = c.run(&sh(look));
        assert_eq!(exit.code, 0, "{out}");
        assert!(c.reset().ok);
        let (pid1_out, _) = c.run(&sh(pid1));
        (out, pid1_out)
    };
    assert!(baseline.contains("nofile=") && baseline.contains("null"), "{baseline}");
    let probes = [
        ("a file in /dev", "touch /dev/leak"),
        ("a directory in /dev", "mkdir -p /dev/d/e && touch /dev/d/e/f"),
        ("a link in /dev", "ln -s /etc/passwd /dev/l"),
        ("a fifo in /dev", "mkfifo /dev/p"),
        ("/dev/null replaced", "rm -f /dev/null && echo x > /dev/null"),
        ("/dev/null's mode", "chmod 600 /dev/null"),
        ("open files, soft", "/probe rlimit nofile 64 $(hard nofile)"),
        ("file size, soft", "/probe rlimit fsize 1024 $(hard fsize)"),
        ("open files, hard", "/probe rlimit nofile 64 64"),
        ("file size", "/probe rlimit fsize 1024 1024"),
        ("core size", "/probe rlimit core 0 0"),
        ("nice", "renice -n 19 -p 1"),
        ("CPU affinity", "taskset -p 1 1"),
        ("I/O priority", "ionice -c 3 -p 1"),
        ("scheduling policy", "/probe idle"),
        ("oom_score_adj", "echo 1000 > /proc/1/oom_score_adj"),
    ];
    let (mut restored, mut refused) = (Vec::new(), Vec::new());
    for (what, script) in probes {
        let mut c = Container::with_probe();
        let hard = "hard() { /probe show | tr ' ' '\\n' | grep \"^$1=\" | cut -d/ -f2; }";
        let (out, _) = c.run(&sh(&format!("{hard}; {script}; {pid1}")));
        assert_ne!(out, untouched, "{what}: the probe changed nothing, so it tests nothing: {out}");
        let done = c.reset();
        if done.ok {
            let (after, exit) = c.run(&sh(look));
            assert_eq!(exit.code, 0, "{what}: {after}");
            assert_eq!(after, baseline, "{what} leaked to the next task");
            restored.push(what);
        } else {
            // Refused: the agent removes the container instead of reusing it.
            assert!(done.error.is_some(), "{what}: {done:?}");
            refused.push((what, done.error.unwrap_or_default()));
        }
    }
    eprintln!("put back: {restored:?}\nrefused: {refused:?}");
    for must_restore in [
        "a file in /dev",
        "a directory in /dev",
        "a link in /dev",
        "a fifo in /dev",
        "/dev/null's mode",
        "open files, soft",
        "file size, soft",
    ] {
        assert!(restored.contains(&must_restore), "{must_restore} should be put back, not cost the container: {refused:?}");
    }
    assert!(refused.iter().any(|(what, why)| *what == "/dev/null replaced" && why.contains("/dev/null")), "{refused:?}");
}
