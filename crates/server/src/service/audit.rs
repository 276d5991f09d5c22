//! The audit log: who created, cancelled or changed what.

use crate::service::auth::Caller;
use shepherd_core::Timestamp;
use shepherd_store::{AuditEntry, Store};

/// An audit log line about an action of `caller`, now.
pub fn audit_entry(caller: &Caller, project: Option<&str>, action: &str, target: &str, detail: Option<String>) -> AuditEntry {
    AuditEntry {
        seq: 0,
        at: Timestamp::now(),
        actor: caller.actor(),
        project: project.map(str::to_string),
        action: action.to_string(),
        target: target.to_string(),
        detail,
    }
}

/// Records an action in the audit log. A failure to record is logged, not
/// returned: the action itself has already happened.
pub async fn record(store: &dyn Store, caller: &Caller, project: Option<&str>, action: &str, target: &str, detail: Option<String>) {
    let entry = audit_entry(caller, project, action, target, detail);
    if let Err(e) = store.append_audit(vec![entry]).await {
        tracing::error!(error = %e, action, target, "could not write the audit log");
    }
}
