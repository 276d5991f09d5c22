//! The `exec` provisioner: an external program does the work, so any cloud
//! can be added without recompiling Shepherd (as docker-machine drivers are
//! plugins). Each call runs the program once: one JSON request on its
//! stdin, one JSON answer on its stdout, exit status 0 for success. The
//! protocol is in `docs/provisioning.md`:
//!
//! ```text
//! {"version":1,"op":"create","cluster":C,"machine":{"id","pool","shape","labels"},
//!  "join":{"urls":[…],"token":T},"agent_args":[…]}   →  {"provider_id": "…"}
//! {"version":1,"op":"destroy","cluster":C,"machine_id":M,"provider_id":P}  →  {}
//! {"version":1,"op":"list","cluster":C}  →  {"machines":[{"machine_id","provider_id","pool"}]}
//! ```
//!
//! A failure is a non-zero exit; its message is the answer's `error`, else
//! the last lines of stderr. A program that runs past `timeout` is killed
//! with its whole process group.

use crate::{MachineRequest, ProviderMachine, ProvisionError, Provisioner};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The protocol version sent in every request.
pub const PROTOCOL_VERSION: u32 = 1;

/// Settings of the `exec` provisioner (`driver = "exec"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecProvisionerConfig {
    /// The program and its first arguments.
    pub command: Vec<String>,
    /// Longest a call may take (default 10 minutes: clouds are slow to make machines).
    #[serde(default = "default_timeout", with = "duration_text")]
    pub timeout: Duration,
    /// More environment for the program.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(600)
}

/// `"30s"`-style durations in the configuration (humantime's syntax).
pub mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| serde::de::Error::custom(format!("`{text}`: {e} (use e.g. 30s, 5m, 500ms)")))
    }
}

/// Machines made by an external program.
pub struct ExecProvisioner {
    config: ExecProvisionerConfig,
}

/// Output kept of the program's stderr and stdout (bytes).
const OUTPUT_LIMIT: u64 = 1 << 20;

impl ExecProvisioner {
    /// A provisioner running `config.command`.
    pub fn new(config: ExecProvisionerConfig) -> Result<ExecProvisioner, ProvisionError> {
        if config.command.is_empty() || config.command[0].is_empty() {
            return Err(ProvisionError::Failed("command: name the program to run".into()));
        }
        Ok(ExecProvisioner { config })
    }

    /// Runs the program with one request; its answer.
    async fn call(&self, request: Value) -> Result<Value, ProvisionError> {
        let op = request["op"].as_str().unwrap_or("?").to_string();
        let mut command = tokio::process::Command::new(&self.config.command[0]);
        command
            .args(&self.config.command[1..])
            .envs(&self.config.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        let mut child = command.spawn().map_err(|e| ProvisionError::Unreachable(format!("{}: {e}", self.config.command[0])))?;
        let pid = child.id();
        let body = serde_json::to_vec(&request).map_err(|e| ProvisionError::Protocol(e.to_string()))?;
        let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let work = async {
            if let Some(mut stdin) = stdin {
                // A program that does not read its request is its own business.
                let _ = stdin.write_all(&body).await;
                let _ = stdin.shutdown().await;
            }
            let (out, err) = tokio::join!(read_bounded(stdout), read_bounded(stderr));
            let status = child.wait().await;
            (status, out, err)
        };
        let (status, out, err) = match tokio::time::timeout(self.config.timeout, work).await {
            Ok(done) => done,
            Err(_) => {
                if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                    // The whole group: a shell's children too.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
                tracing::warn!(op, timeout = ?self.config.timeout, "provisioner program timed out; killed");
                return Err(ProvisionError::Timeout(self.config.timeout));
            }
        };
        let status = status.map_err(|e| ProvisionError::Unreachable(e.to_string()))?;
        let answer: Option<Value> = serde_json::from_slice(&out).ok();
        if !status.success() {
            let from_answer = answer.as_ref().and_then(|a| a["error"].as_str()).map(str::to_string);
            let stderr = String::from_utf8_lossy(&err);
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
            let message = from_answer.unwrap_or_else(|| if tail.is_empty() { format!("exited with {status}") } else { tail.join(" | ") });
            return Err(ProvisionError::Failed(format!("{op}: {message}")));
        }
        answer.ok_or_else(|| ProvisionError::Protocol(format!("{op}: stdout is not one JSON object: {}", String::from_utf8_lossy(&out))))
    }
}

/// What a pipe gives until it closes, up to [`OUTPUT_LIMIT`] bytes.
async fn read_bounded(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    let mut text = Vec::new();
    if let Some(pipe) = pipe {
        let _ = pipe.take(OUTPUT_LIMIT).read_to_end(&mut text).await;
    }
    text
}

#[async_trait]
impl Provisioner for ExecProvisioner {
    fn driver(&self) -> &'static str {
        "exec"
    }

    async fn create(&self, request: &MachineRequest) -> Result<String, ProvisionError> {
        let answer = self
            .call(json!({
                "version": PROTOCOL_VERSION,
                "op": "create",
                "cluster": request.cluster,
                "machine": {"id": request.machine_id, "pool": request.pool, "shape": request.shape, "labels": request.labels},
                "join": {"urls": request.join_urls, "token": request.join_token},
                "agent_args": request.agent_args(),
            }))
            .await?;
        match answer["provider_id"].as_str() {
            Some(id) if !id.is_empty() => Ok(id.to_string()),
            _ => Err(ProvisionError::Protocol(format!("create: no provider_id in {answer}"))),
        }
    }

    async fn destroy(&self, cluster: &str, machine: &ProviderMachine) -> Result<(), ProvisionError> {
        self.call(json!({
            "version": PROTOCOL_VERSION,
            "op": "destroy",
            "cluster": cluster,
            "machine_id": machine.machine_id,
            "provider_id": machine.provider_id,
        }))
        .await
        .map(|_| ())
    }

    async fn list(&self, cluster: &str) -> Result<Vec<ProviderMachine>, ProvisionError> {
        let answer = self.call(json!({"version": PROTOCOL_VERSION, "op": "list", "cluster": cluster})).await?;
        serde_json::from_value(answer["machines"].clone()).map_err(|e| ProvisionError::Protocol(format!("list: machines: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &std::path::Path, body: &str) -> ExecProvisioner {
        let path = dir.join("p.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        ExecProvisioner::new(ExecProvisionerConfig {
            command: vec!["sh".into(), path.display().to_string()],
            timeout: Duration::from_secs(2),
            env: BTreeMap::new(),
        })
        .unwrap()
    }

    fn request() -> MachineRequest {
        MachineRequest {
            cluster: "c1".into(),
            machine_id: "m-1".into(),
            pool: "burst".into(),
            shape: shepherd_core::MachineShape { cpu_millicores: 1000, memory_mib: 512, max_tasks: 4, labels: BTreeMap::new() },
            labels: BTreeMap::from([("pool".to_string(), "burst".to_string())]),
            join_urls: vec!["http://127.0.0.1:7070".into()],
            join_token: "secret-token".into(),
        }
    }

    #[tokio::test]
    async fn requests_and_answers() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("request.json");
        let p = script(dir.path(), &format!("cat > {}; echo '{{\"provider_id\": \"i-123\"}}'", log.display()));
        assert_eq!(p.create(&request()).await.unwrap(), "i-123");
        let sent: Value = serde_json::from_str(&std::fs::read_to_string(&log).unwrap()).unwrap();
        assert_eq!(sent["op"], "create");
        assert_eq!(sent["machine"]["id"], "m-1");
        assert_eq!(sent["join"]["token"], "secret-token");
        assert!(sent["agent_args"].as_array().unwrap().iter().any(|a| a == "pool=burst"));
        assert!(!format!("{:?}", request()).contains("secret-token"), "the token stays out of logs");
    }

    #[tokio::test]
    async fn failures_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(dir.path(), "cat >/dev/null; echo 'quota exceeded in region x' >&2; exit 3");
        let e = p.create(&request()).await.unwrap_err().to_string();
        assert!(e.contains("quota exceeded in region x"), "{e}");
        let p = script(dir.path(), "cat >/dev/null; echo '{\"error\": \"no capacity\"}'; exit 1");
        assert!(p.list("c1").await.unwrap_err().to_string().contains("no capacity"));
        let p = script(dir.path(), "cat >/dev/null; echo not json");
        assert!(matches!(p.list("c1").await, Err(ProvisionError::Protocol(_))));
        let p = script(dir.path(), "cat >/dev/null; echo '{}'");
        assert!(matches!(p.create(&request()).await, Err(ProvisionError::Protocol(_))));
    }

    #[tokio::test]
    async fn a_program_that_hangs_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("child-pid");
        let p = script(dir.path(), &format!("sleep 300 & echo $! > {}; wait", marker.display()));
        let started = std::time::Instant::now();
        assert!(matches!(p.list("c1").await, Err(ProvisionError::Timeout(_))));
        assert!(started.elapsed() < Duration::from_secs(10));
        let child: i32 = std::fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
        // The background sleep went with the group.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while unsafe { libc::kill(child, 0) } == 0 {
            assert!(std::time::Instant::now() < deadline, "the program's child survived");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
