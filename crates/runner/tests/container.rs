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

impl Container {
    fn start() -> Container {
        let runner = std::env::var("SHEPHERD_RUNNER_STATIC")
            .expect("SHEPHERD_RUNNER_STATIC must name the statically built shepherd-runner: run scripts/test.sh");
        let name = format!("shepherd-runner-test-{}", std::process::id());
        let mut child = Command::new("docker")
            .args(["run", "-i", "--rm", "--name", &name, "--read-only", "--network", "none"])
            .args(["--tmpfs", "/tmp", "--tmpfs", "/run/secrets", "--tmpfs", "/run/shepherd"])
            .args(["--cap-drop", "ALL", "--security-opt", "no-new-privileges"])
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
