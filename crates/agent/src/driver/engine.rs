//! The Docker Engine's answers as the docker driver, its warm pool and its
//! pulls read them: failed calls in the driver's terms, the engine's own
//! words, status checks, and its event log (OOM kills).

use super::spec::DriverError;
use bollard::Docker;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::time::Duration;

/// An engine call that failed, as a driver I/O error naming what was being done.
pub(super) fn engine_error(context: &str, e: bollard::errors::Error) -> DriverError {
    DriverError::Io(std::io::Error::other(format!("{context}: {e}")))
}

/// The engine's message of an error (its own words, or a registry's
/// relayed in a pull's stream, for a task's reason).
pub(super) fn engine_message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        bollard::errors::Error::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

/// Whether the engine answered with one of the HTTP status `codes`.
pub(super) fn is_status(e: &bollard::errors::Error, codes: &[u16]) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code, .. } if codes.contains(status_code))
}

/// The engine's answer to creating a container from an image it lacks.
pub(super) fn is_missing_image(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, message } if message.contains("No such image"))
}

/// Whether the engine's event log holds an `oom` event for container `name`
/// since `since` (Unix seconds, fractions allowed) until now.
pub(super) async fn oom_event_logged(docker: &Docker, name: &str, since: &str) -> bool {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let filters = HashMap::from([("container".to_string(), vec![name.to_string()]), ("event".to_string(), vec!["oom".to_string()])]);
    let options = bollard::query_parameters::EventsOptionsBuilder::default()
        .since(since)
        .until(&format!("{}.{:09}", now.as_secs(), now.subsec_nanos()))
        .filters(&filters)
        .build();
    let mut events = docker.events(Some(options));

    let found = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(event) = events.next().await {
            match event {
                Ok(event) if event.action.as_deref() == Some("oom") => return true,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(container = %name, error = %e, "cannot read the engine's events");
                    return false;
                }
            }
        }
        false
    })
    .await;
    found.unwrap_or(false)
}
