//! The relay: acts on what other servers publish for the agents connected
//! here (assignments, cancels, drains, volume removals, prefetches), and
//! on releases for the leader's view.

use crate::nodes::dispatch::Dispatch;
use crate::nodes::links::NodeLinks;
use crate::nodes::remote::RemoteAgents;
use crate::nodes::view::ClusterView;

/// The leader's scheduler, woken by followers' [`Dispatch::Wake`].
pub struct Wake {
    pub scheduler: std::sync::Arc<tokio::sync::Notify>,
    pub leadership: crate::loops::leader::Leadership,
}

/// Acts on what other servers publish, for the agents connected here:
/// assignments (with the launch spec read from the store) and cancels.
/// After the store's listener reconnected (messages may have been missed),
/// every agent here reconciles.
pub async fn run(
    mut messages: tokio::sync::broadcast::Receiver<String>,
    store: std::sync::Arc<dyn shepherd_store::Store>,
    remote: std::sync::Arc<RemoteAgents>,
    view: std::sync::Arc<ClusterView>,
    wake: Wake,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let message = tokio::select! {
            message = messages.recv() => message,
            _ = shutdown.changed() => return,
        };
        let text = match message {
            Ok(text) => text,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "fell behind the other servers' messages; agents reconcile");
                remote.reconcile_all();
                view.mark_stale();
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        if text == shepherd_store::postgres::RESYNC {
            remote.reconcile_all();
            // Releases may have been missed too: the scheduler reads them again.
            view.mark_stale();
            continue;
        }
        match serde_json::from_str::<Dispatch>(&text) {
            Ok(Dispatch::Assign { node, task, attempt }) if remote.holds(&node) => match store.launch_spec(task).await {
                Ok(Some(launch)) if launch.attempt == attempt && launch.node_id.as_deref() == Some(node.as_str()) => {
                    remote.assign(&node, launch);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, %task, "could not read an assignment for an agent here"),
            },
            Ok(Dispatch::Cancel { node, task }) => {
                remote.cancel_here(&node, task);
            }
            Ok(Dispatch::Drain { node }) => {
                remote.drain_here(&node);
            }
            Ok(Dispatch::RemoveVolume { node, engine_name, project }) => {
                remote.remove_volume_here(&node, &engine_name, &project);
            }
            Ok(Dispatch::Prefetch { node, image, project, timeout }) if remote.holds(&node) => {
                let auth = match &project {
                    Some(project) => store.registry_auth(project, &image).await.unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "could not read a registry login for a prefetch");
                        None
                    }),
                    None => None,
                };
                remote.prefetch_here(&node, &image, project.as_deref(), auth, timeout);
            }
            Ok(Dispatch::Reconcile) => remote.reconcile_all(),
            // Only the leader places (a follower hears its own wakes too).
            Ok(Dispatch::Wake) if wake.leadership.is_leader() => wake.scheduler.notify_one(),
            Ok(Dispatch::Released { tasks }) => {
                for (task, attempt) in tasks {
                    view.released(task, attempt);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "a message not for the dispatcher"),
        }
    }
}
