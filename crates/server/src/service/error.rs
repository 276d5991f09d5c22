//! The services' error type.

use crate::service::auth::Denied;
use shepherd_core::FieldError;
use shepherd_store::StoreError;

/// Why an operation of a service was refused: typed, for each API (REST,
/// IronWorker, the agent API) to render its own way.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No such task, or one the caller may not see (they answer alike).
    #[error("no task with id {0}")]
    NotFound(String),
    /// Something else the caller named does not exist (or is another
    /// project's): the message says what.
    #[error("no {0}")]
    Missing(String),
    /// A field the caller may not set that way (another project).
    #[error("{field}: {message}")]
    Forbidden { field: String, message: String },
    /// A field that is not acceptable.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The project's `max_queued` quota would be exceeded.
    #[error("{0}")]
    QuotaExceeded(String),
    /// A body over its limit (a code package).
    #[error("{0}")]
    TooLarge(String),
    /// The thing is not in a state that allows this (a paused schedule paused again).
    #[error("{0}")]
    Conflict(String),
    /// The task has ended; there is nothing to cancel.
    #[error("{0}")]
    NotCancellable(String),
    /// Refused with a stable code of its own (`exists`, `in_use`,
    /// `driver_not_allowed`, `ended`, …), of a kind each API renders.
    #[error("{message}")]
    Refused { kind: Refusal, code: &'static str, field: Option<String>, message: String },
    /// The caller may not (the admin's alone), or the project is another's.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The kind of a [`ServiceError::Refused`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not allowed for this caller or project (HTTP 403).
    Forbidden,
    /// Not in a state that allows it, or already there (HTTP 409).
    Conflict,
    /// Over a quota (HTTP 429).
    Quota,
}

impl ServiceError {
    /// A refusal of `kind` with its own `code`.
    pub fn refused(kind: Refusal, code: &'static str, message: impl Into<String>) -> ServiceError {
        ServiceError::Refused { kind, code, field: None, message: message.into() }
    }

    /// The same refusal, naming the field it is about.
    pub fn on_field(self, name: impl Into<String>) -> ServiceError {
        match self {
            ServiceError::Refused { kind, code, message, .. } => ServiceError::Refused { kind, code, field: Some(name.into()), message },
            other => other,
        }
    }
}
