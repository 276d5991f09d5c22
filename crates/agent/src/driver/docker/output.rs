//! An attempt's output: attached to before the container starts, or, for
//! an attempt adopted after a restart, read back from the engine's log
//! (skipping what was stored already) and followed.

use super::DockerDriver;
use crate::driver::spec::{Captured, OutputChunk, OutputSender};
use bollard::container::LogOutput;
use bollard::query_parameters::AttachContainerOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;
use shepherd_core::LogStream;

impl DockerDriver {
    /// Attaches to a container's output. Attaching before `start` (as
    /// `docker run` does) sees every byte; the stream ends once the container
    /// has exited and its output is drained.
    pub(super) async fn attach(&self, container: &str, output: OutputSender) -> Result<(), bollard::errors::Error> {
        let started = std::time::Instant::now();
        crate::metrics::metrics().time("attach", started, attach(&self.docker, container, output).await)
    }
}

/// Attaches to a container's output (see [`DockerDriver::attach`]).
async fn attach(docker: &Docker, container: &str, output: OutputSender) -> Result<(), bollard::errors::Error> {
    let options = AttachContainerOptionsBuilder::default().stream(true).stdout(true).stderr(true).logs(false).build();
    let mut attached = docker.attach_container(container, Some(options)).await?.output;
    tokio::spawn(async move {
        while let Some(item) = attached.next().await {
            let (stream, message) = match item {
                Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => (LogStream::Stdout, message),
                Ok(LogOutput::StdErr { message }) => (LogStream::Stderr, message),
                Ok(LogOutput::StdIn { .. }) => continue,
                Err(_) => break,
            };
            if output.send(OutputChunk { stream, data: message.to_vec() }).await.is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// Streams a container's log from its start (following it while it runs),
/// leaving out the first bytes of each stream that were captured already.
/// If the engine keeps no log for it, says so in the output and, for a
/// running container, follows from now on.
pub(super) fn replay(docker: Docker, container: String, output: OutputSender, captured: Captured, running: bool) {
    tokio::spawn(async move {
        let options = bollard::query_parameters::LogsOptionsBuilder::default().follow(true).stdout(true).stderr(true).build();
        let mut log = docker.logs(&container, Some(options));
        let mut skip = captured;
        let mut first = true;
        while let Some(item) = log.next().await {
            let (stream, mut data) = match item {
                Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => (LogStream::Stdout, message.to_vec()),
                Ok(LogOutput::StdErr { message }) => (LogStream::Stderr, message.to_vec()),
                Ok(LogOutput::StdIn { .. }) => continue,
                Err(e) if first => {
                    tracing::warn!(%container, error = %e, "cannot read the container's log back; following from now on");
                    let note = "\n[shepherd: output written while no agent watched this task could not be read back from the engine and is missing]\n";
                    let _ = output.send(OutputChunk { stream: LogStream::System, data: note.as_bytes().to_vec() }).await;
                    if running {
                        if let Err(e) = attach(&docker, &container, output).await {
                            tracing::warn!(%container, error = %e, "cannot attach to the container");
                        }
                    }
                    return;
                }
                Err(_) => return,
            };
            first = false;
            let left = if stream == LogStream::Stderr { &mut skip.stderr } else { &mut skip.stdout };
            let dropped = (*left).min(data.len() as u64);
            *left -= dropped;
            data.drain(..dropped as usize);
            if !data.is_empty() && output.send(OutputChunk { stream, data }).await.is_err() {
                return;
            }
        }
    });
}
