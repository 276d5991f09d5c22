//! What every HTTP handler can reach: [`AppState`], the services and the
//! parts of the running server behind the edges.

use shepherd_store::Store;
use std::sync::Arc;
use tokio::sync::Notify;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    /// Task operations (create, get, list, cancel, wait), authorization included.
    pub tasks: Arc<crate::service::TaskService>,
    /// Codes (named, versioned task templates).
    pub codes: Arc<crate::service::CodeService>,
    /// Projects, their tokens, secrets, registry logins and audit log.
    pub projects: Arc<crate::service::ProjectService>,
    /// Nodes: their allocation, draining.
    pub nodes: Arc<crate::service::NodeService>,
    /// Image prefetches.
    pub images: Arc<crate::service::ImageService>,
    /// Projects' volumes.
    pub volumes: Arc<crate::service::VolumeService>,
    /// Schedules (and, through them, their firing loop's wakeup).
    pub schedules: Arc<crate::service::ScheduleService>,
    /// Wakes the scheduler when nodes or limits change.
    pub scheduler_wakeup: Arc<Notify>,
    /// The agent API: registration, reports and connections of remote agents.
    pub agents: crate::service::agents::AgentService,
    /// API tokens and rate limits.
    pub auth: Arc<crate::service::auth::Auth>,
    /// Longest time an ordinary request may take.
    pub request_timeout: std::time::Duration,
    /// Whether this server leads (servers sharing a store).
    pub leadership: crate::loops::leader::Leadership,
    /// Prometheus metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The event stream's poller.
    pub events: Arc<crate::loops::events::EventHub>,
    /// The dashboard's last hour.
    pub timeline: Arc<crate::loops::timeline::Timeline>,
    /// Autoscaled pools, when configured.
    pub autoscaler: Option<Arc<crate::loops::autoscale::Autoscaler>>,
    /// The scheduler's configuration and run-time plugins (reloads).
    pub scheduling: Arc<shepherd_plugins::Scheduling>,
}

impl AppState {
    /// The state of an API over `store` alone: the default placement
    /// engine, no in-process agent, no agents allowed to join. For tests
    /// of the router (`tower::ServiceExt::oneshot`) and for embedding.
    pub fn standalone(store: Arc<dyn Store>, admin_token: &str) -> AppState {
        let wakeup = Arc::new(Notify::new());
        let notes = Arc::new(crate::placement_notes::PlacementNotes::default());
        let auth = Arc::new(crate::service::auth::Auth::new(admin_token));
        let remote = Arc::new(crate::nodes::remote::RemoteAgents::default());
        let scheduling = Arc::new(shepherd_plugins::Scheduling::fixed(shepherd_sched::Engine::default()));
        let tasks = crate::service::TaskService::new(
            store.clone(),
            shepherd_core::Limits::default(),
            scheduling.engine(),
            notes,
            auth.clone(),
            remote.clone(),
            wakeup.clone(),
        );
        let leadership = crate::loops::leader::Leadership::new("standalone".into(), std::time::Duration::from_secs(5));
        let observer =
            crate::nodes::view::Observer { view: Default::default(), store: store.clone(), leadership: leadership.clone(), shared: false };
        let metrics = tasks.metrics.clone();
        let tasks = Arc::new(tasks);
        let projects = Arc::new(crate::service::ProjectService { store: store.clone(), auth: auth.clone(), wakeup: wakeup.clone() });
        let volumes = Arc::new(crate::service::VolumeService { store: store.clone(), projects: projects.clone(), links: remote.clone() });
        let nodes = Arc::new(crate::service::NodeService { store: store.clone(), links: remote.clone(), view: observer.view.clone() });
        let images = Arc::new(crate::service::ImageService { store: store.clone(), links: remote.clone() });
        AppState {
            nodes,
            images,
            projects,
            volumes,
            metrics: metrics.clone(),
            events: crate::loops::events::EventHub::new(store.clone()),
            timeline: Default::default(),
            autoscaler: None,
            scheduling: scheduling.clone(),
            codes: Arc::new(crate::service::CodeService {
                store: store.clone(),
                limits: shepherd_core::Limits::default(),
                engine: scheduling.engine(),
                stacks: Default::default(),
            }),
            schedules: Arc::new(crate::service::ScheduleService::new(store.clone(), tasks.clone())),
            store: store.clone(),
            tasks,
            scheduler_wakeup: wakeup.clone(),
            agents: crate::service::agents::AgentService {
                store: store.clone(),
                join_token: None,
                remote,
                liveness: Arc::new(crate::nodes::liveness::Liveness::new(None)),
                observer,
                node_timeout: std::time::Duration::from_secs(15),
                logs: Arc::new(crate::nodes::guard::LogGuard::new(crate::nodes::guard::DEFAULT_MAX_ATTEMPT_LOG_BYTES)),
                refusals: Default::default(),
                metrics: metrics.clone(),
                wakeup: wakeup.clone(),
            },
            auth,
            request_timeout: std::time::Duration::from_secs(30),
            leadership,
        }
    }

    /// Records an action in the audit log. A failure to record is logged,
    /// not returned: the action itself has already happened.
    pub async fn audit(
        &self,
        caller: &crate::service::auth::Caller,
        project: Option<&str>,
        action: &str,
        target: &str,
        detail: Option<String>,
    ) {
        crate::service::audit::record(self.store.as_ref(), caller, project, action, target, detail).await;
    }
}
