//! The relay: acts on what other servers publish for the agents connected
//! here (assignments, cancels, drains, volume removals, prefetches), and
//! on releases for the leader's view.

use crate::nodes::cluster_links::ClusterLinks;
use crate::nodes::dispatch::Dispatch;
use crate::nodes::view::ClusterView;

/// The leader's scheduler, woken by followers' [`Dispatch::Wake`].
pub struct Wake {
    pub scheduler: std::sync::Arc<tokio::sync::Notify>,
    pub leadership: crate::loops::leader::Leadership,
}

/// Acts on what other servers publish, for the agents reached from here
/// (the one in this process and those connected to it): assignments (with
/// the launch spec read from the store), cancels, drains, volume removals
/// and prefetches.
/// After the store's listener reconnected (messages may have been missed),
/// every agent here reconciles.
pub async fn run(
    mut messages: tokio::sync::broadcast::Receiver<String>,
    store: std::sync::Arc<dyn shepherd_store::Store>,
    links: std::sync::Arc<ClusterLinks>,
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
                links.reconcile_here();
                view.mark_stale();
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        if text == shepherd_store::postgres::RESYNC {
            links.reconcile_here();
            // Releases may have been missed too: the scheduler reads them again.
            view.mark_stale();
            continue;
        }
        match serde_json::from_str::<Dispatch>(&text) {
            Ok(Dispatch::Assign { node, task, attempt }) if links.holds_here(&node) => match store.launch_spec(task).await {
                Ok(Some(launch)) if launch.attempt == attempt && launch.node_id.as_deref() == Some(node.as_str()) => {
                    links.assign_here(&node, launch);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, %task, "could not read an assignment for an agent here"),
            },
            Ok(Dispatch::Cancel { node, task }) => {
                links.cancel_here(&node, task);
            }
            Ok(Dispatch::Drain { node }) => {
                links.drain_here(&node);
            }
            Ok(Dispatch::RemoveVolume { node, engine_name, project }) => {
                links.remove_volume_here(&node, &engine_name, &project);
            }
            Ok(Dispatch::Prefetch { node, image, project, timeout }) if links.holds_here(&node) => {
                let auth = match &project {
                    Some(project) => store.registry_auth(project, &image).await.unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "could not read a registry login for a prefetch");
                        None
                    }),
                    None => None,
                };
                links.prefetch_here(&node, &image, project.as_deref(), auth, timeout);
            }
            Ok(Dispatch::Reconcile) => links.reconcile_here(),
            // Only the leader places (a follower hears its own wakes too).
            Ok(Dispatch::Wake) if wake.leadership.is_leader() => wake.scheduler.notify_one(),
            Ok(Dispatch::NodesChanged) => {
                view.nodes_changed();
                if wake.leadership.is_leader() {
                    wake.scheduler.notify_one();
                }
            }
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
