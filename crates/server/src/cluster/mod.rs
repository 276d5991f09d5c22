//! The composition root: [`Cluster::start`] opens the store, builds the
//! services, the nodes' links and the router, and starts every loop of
//! `crate::loops`, in one place; the all-in-one cluster adds one local
//! agent in the same process.

use crate::http::state::AppState;
use crate::loops::scheduler::Scheduler;
use crate::nodes::links::LocalAgents;
use crate::placement_notes::PlacementNotes;
use shepherd_agent::{Agent, AgentConfig, Driver, LogLimits};
use shepherd_core::{Limits, Resources, Timestamp};
use shepherd_store::{NodeRecord, NodeState, PgStore, SqliteOptions, SqliteStore, Store, StoreError, Synchronous};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// What the cluster needs to start.
#[derive(Clone)]
pub struct ClusterConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Where tasks, nodes and tenants are kept.
    pub store: StoreConfig,
    pub limits: Limits,
    /// The in-process agent; `None` runs an API server and scheduler only.
    pub local_node: Option<LocalNodeConfig>,
    /// Placement profiles, run-time plugins and per-project settings,
    /// reloaded from their file while the cluster runs.
    pub scheduling: Arc<shepherd_plugins::Scheduling>,
    /// Agents on other hosts join with this token; `None`: no remote agents.
    pub join_token: Option<String>,
    /// A node silent this long is down; its tasks are lost and retried.
    pub node_timeout: Duration,
    /// Serve HTTPS with this certificate and key.
    pub tls: Option<crate::http::tls::TlsFiles>,
    /// The cluster's admin token (kept only as a hash in memory).
    pub admin_token: String,
    /// Longest time an ordinary API request may take (503 after).
    pub request_timeout: Duration,
    /// Connection limits of the API listener.
    pub serve_limits: crate::http::serve::ServeLimits,
    /// The leader's lease (servers sharing a store): a new leader takes over
    /// within this long after the old one is gone.
    pub leader_lease: Duration,
    /// IronWorker stacks (runtime names) and the images that run them.
    pub stacks: BTreeMap<String, String>,
    /// Webhooks may call loopback, private and link-local addresses (a
    /// cluster whose tenants are trusted, or tests); by default only public ones.
    pub webhook_allow_private: bool,
    /// Most output bytes a remote node may store for one attempt (its
    /// head and tail together; agents keep 1 MiB of each by default).
    pub max_attempt_log_bytes: u64,
    /// Serve `/metrics` without a token on this address too.
    pub metrics_listen: Option<SocketAddr>,
    /// Events are kept this long for clients resuming the stream.
    pub event_retention: Duration,
    /// How long finished tasks are kept, and where they go first.
    pub retention: crate::loops::retention::RetentionConfig,
    /// Autoscaled pools and the provisioners that make their machines.
    pub autoscale: Option<crate::loops::autoscale::config::AutoscaleConfig>,
}

impl ClusterConfig {
    /// An all-in-one cluster on `127.0.0.1:0` (a free port) with `data_dir`
    /// and the defaults of `shepherd up`: one local node of 4 cores and
    /// 8 GiB. Tests and embedders change what they need.
    pub fn local(data_dir: PathBuf, admin_token: &str) -> ClusterConfig {
        ClusterConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            store: StoreConfig::Sqlite { synchronous: Synchronous::Full },
            limits: Limits::default(),
            local_node: Some(LocalNodeConfig {
                capacity: Resources { cpu_millicores: 4000, memory_mib: 8192 },
                max_tasks: 256,
                labels: BTreeMap::new(),
                log_limits: LogLimits::default(),
                stop_grace: Duration::from_secs(10),
                stop_on_shutdown: false,
                image_cleanup_every: None,
            }),
            scheduling: Arc::new(shepherd_plugins::Scheduling::fixed(shepherd_sched::Engine::default())),
            join_token: None,
            node_timeout: Duration::from_secs(15),
            tls: None,
            admin_token: admin_token.to_string(),
            request_timeout: Duration::from_secs(30),
            serve_limits: crate::http::serve::ServeLimits::default(),
            leader_lease: Duration::from_secs(5),
            stacks: BTreeMap::new(),
            webhook_allow_private: false,
            max_attempt_log_bytes: crate::nodes::guard::DEFAULT_MAX_ATTEMPT_LOG_BYTES,
            metrics_listen: None,
            event_retention: Duration::from_secs(3600),
            retention: crate::loops::retention::RetentionConfig::default(),
            autoscale: None,
        }
    }
}

/// The store a cluster keeps its state in.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// The embedded SQLite file `DATA_DIR/shepherd.db` (the default).
    Sqlite { synchronous: Synchronous },
    /// A PostgreSQL database (`postgres://user:password@host:port/database`),
    /// which several servers may share.
    Postgres { url: String, options: shepherd_store::postgres::PgOptions },
}

/// The local node's size and settings.
#[derive(Debug, Clone)]
pub struct LocalNodeConfig {
    pub capacity: Resources,
    pub max_tasks: u32,
    pub labels: BTreeMap<String, String>,
    pub log_limits: LogLimits,
    pub stop_grace: Duration,
    /// A clean stop stops the tasks too, leaving no container for adoption.
    pub stop_on_shutdown: bool,
    /// How often the driver's image cleanup runs (`None`: never).
    pub image_cleanup_every: Option<Duration>,
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("data directory {path}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("local agent: {0}")]
    Agent(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("autoscaler: {0}")]
    Autoscale(String),
}

/// A running cluster.
pub struct Cluster {
    addr: SocketAddr,
    node_id: Option<String>,
    driver: Option<&'static str>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    agent: Option<Agent>,
    store: Arc<dyn Store>,
}

/// The project `shepherd up` makes for a new cluster.
pub const DEFAULT_PROJECT: &str = "default";

/// The server id of this data directory, made once and kept: the lease's
/// holder when this server leads.
pub fn server_id(data_dir: &std::path::Path) -> Result<String, std::io::Error> {
    let path = data_dir.join("server-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ => {
            let id = format!("server-{}", &ulid::Ulid::new().to_string().to_lowercase()[16..]);
            std::fs::write(&path, &id)?;
            Ok(id)
        }
    }
}

/// The node id of this data directory, made once and kept, so a restart
/// finds the attempts it owned.
pub fn local_node_id(data_dir: &std::path::Path) -> Result<String, std::io::Error> {
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ => {
            let id = format!("node-{}", &ulid::Ulid::new().to_string().to_lowercase()[16..]);
            std::fs::write(&path, &id)?;
            Ok(id)
        }
    }
}

/// This data directory's node secret, made once (32 random bytes, hex,
/// readable by its owner only) and kept: the node's id is bound to it at
/// its first registration, so no other agent can register as this node.
pub fn local_node_secret(data_dir: &std::path::Path) -> Result<String, std::io::Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("node-secret");
    match std::fs::read_to_string(&path) {
        Ok(secret) if !secret.trim().is_empty() => Ok(secret.trim().to_string()),
        _ => {
            let secret = crate::service::auth::random_hex().map_err(|_| std::io::Error::other("the system's random source failed"))?;
            let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
            file.write_all(secret.as_bytes())?;
            Ok(secret)
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".into())
}

impl Cluster {
    /// Opens the store, reconciles the local agent's attempts, and starts
    /// serving. Returns once the API is listening.
    pub async fn start(config: ClusterConfig, driver: Arc<dyn Driver>) -> Result<Cluster, ClusterError> {
        let data_err = |source| ClusterError::DataDir { path: config.data_dir.clone(), source };
        std::fs::create_dir_all(&config.data_dir).map_err(data_err)?;
        let store: Arc<dyn Store> = match &config.store {
            StoreConfig::Sqlite { synchronous } => Arc::new(SqliteStore::open(
                config.data_dir.join("shepherd.db"),
                SqliteOptions { synchronous: *synchronous, ..Default::default() },
            )?),
            StoreConfig::Postgres { url, options } => Arc::new(PgStore::connect_with(url, options.clone()).await?),
        };
        let dyn_store = store.clone();
        let metrics = Arc::new(crate::metrics::Metrics::new());
        dyn_store.set_observer(metrics.clone());
        let wakeup = Arc::new(Notify::new());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut background = Vec::new();
        // Listening first: the server's address is part of who it is.
        let listener =
            tokio::net::TcpListener::bind(config.listen).await.map_err(|source| ClusterError::Bind { addr: config.listen, source })?;
        let addr = listener.local_addr().map_err(|source| ClusterError::Bind { addr: config.listen, source })?;
        let url = format!("{}://{addr}", if config.tls.is_some() { "https" } else { "http" });
        let leadership = crate::loops::leader::Leadership::new(server_id(&config.data_dir).map_err(data_err)?, config.leader_lease);
        // Lead (or not) before the first pass, then keep the lease up.
        leadership.round(dyn_store.as_ref()).await;
        background.push(tokio::spawn(leadership.clone().run(dyn_store.clone(), url.clone(), shutdown_rx.clone())));

        let view = Arc::new(crate::nodes::view::ClusterView::default());
        let observer = crate::nodes::view::Observer {
            view: view.clone(),
            store: dyn_store.clone(),
            leadership: leadership.clone(),
            shared: dyn_store.subscribe().is_some(),
        };
        let mut agent = None;
        let mut node_record = None;
        if let Some(node) = &config.local_node {
            let id = local_node_id(&config.data_dir).map_err(data_err)?;
            // Its id is this data directory's: no remote agent may take it.
            let secret = local_node_secret(&config.data_dir).map_err(data_err)?;
            if !dyn_store.claim_node(&id, Some(crate::service::auth::hash_token(&secret))).await? {
                return Err(ClusterError::Agent(format!(
                    "node id {id} is bound to another node's secret (another agent registered as this node): \
                     remove {} to make this a new node",
                    config.data_dir.join("node-id").display()
                )));
            }
            let now = Timestamp::now();
            let record = NodeRecord {
                id: id.clone(),
                hostname: hostname(),
                state: NodeState::Ready,
                driver: driver.name().to_string(),
                capacity: node.capacity,
                max_tasks: node.max_tasks,
                labels: node.labels.clone(),
                images: driver.images().await,
                registered_at: now,
                last_heartbeat_at: now,
            };
            dyn_store.upsert_node(record.clone()).await?;
            // The leader, if another server leads, places on it now.
            crate::nodes::dispatch::nodes_changed_everywhere(dyn_store.as_ref()).await;
            let local = Agent::new(
                AgentConfig {
                    node_id: id,
                    work_dir: config.data_dir.join("attempts"),
                    log_limits: node.log_limits,
                    stop_grace: node.stop_grace,
                    stop_on_shutdown: node.stop_on_shutdown,
                    image_cleanup_every: node.image_cleanup_every,
                },
                Arc::new(crate::nodes::backend::StoreBackend { store: dyn_store.clone(), observer: observer.clone() }),
                driver.clone(),
                wakeup.clone(),
            );
            local.reconcile().await.map_err(|e| ClusterError::Agent(e.to_string()))?;
            agent = Some(local);
            node_record = Some(record);
        }

        let remote = Arc::new(crate::nodes::remote::RemoteAgents::default());
        let liveness = Arc::new(crate::nodes::liveness::Liveness::new(node_record.as_ref().map(|n| n.id.clone())));
        let links = Arc::new(crate::nodes::cluster_links::ClusterLinks {
            local: LocalAgents::new(agent.clone()),
            remote: remote.clone(),
            store: dyn_store.clone(),
        });
        if let Some(messages) = dyn_store.subscribe() {
            background.push(tokio::spawn(crate::loops::relay::run(
                messages,
                dyn_store.clone(),
                links.clone(),
                view.clone(),
                crate::loops::relay::Wake { scheduler: wakeup.clone(), leadership: leadership.clone() },
                shutdown_rx.clone(),
            )));
        }
        background.push(tokio::spawn(crate::loops::reload::run(config.scheduling.clone(), wakeup.clone(), shutdown_rx.clone())));
        let notes = Arc::new(PlacementNotes::default());
        let mut scheduler = Scheduler::new(
            dyn_store.clone(),
            links.clone(),
            wakeup.clone(),
            notes.clone(),
            config.scheduling.engine(),
            leadership.clone(),
            view.clone(),
        );
        scheduler.metrics = metrics.clone();
        background.push(tokio::spawn(scheduler.run(shutdown_rx.clone())));
        let autoscaler = match &config.autoscale {
            Some(autoscale) => {
                let parts = crate::loops::autoscale::AutoscaleParts {
                    store: dyn_store.clone(),
                    view: view.clone(),
                    engine: config.scheduling.engine(),
                    leadership: leadership.clone(),
                    links: links.clone(),
                    notes: notes.clone(),
                    metrics: metrics.clone(),
                    wakeup: wakeup.clone(),
                };
                let autoscaler = crate::loops::autoscale::Autoscaler::new(autoscale.clone(), parts, &url, config.data_dir.join("machines"))
                    .await
                    .map_err(|e| ClusterError::Autoscale(e.to_string()))?;
                background.push(tokio::spawn(autoscaler.clone().run(shutdown_rx.clone())));
                Some(autoscaler)
            }
            None => None,
        };
        if let (Some(record), Some(local)) = (node_record, agent.clone()) {
            background.push(tokio::spawn(crate::loops::heartbeats::local_node(dyn_store.clone(), local, record.id, shutdown_rx.clone())));
        }
        // Heartbeats reach the store in batches, five times per node timeout (at most 5 s apart).
        let flush_every = (config.node_timeout / 5).clamp(Duration::from_millis(100), Duration::from_secs(5));
        background.push(tokio::spawn(crate::loops::heartbeats::flush(
            dyn_store.clone(),
            liveness.clone(),
            view.clone(),
            flush_every,
            shutdown_rx.clone(),
        )));
        background.push(tokio::spawn(crate::loops::node_watch::run(
            remote.clone(),
            liveness.clone(),
            observer.clone(),
            leadership.clone(),
            wakeup.clone(),
            config.node_timeout,
            shutdown_rx.clone(),
        )));

        let auth = Arc::new(crate::service::auth::Auth::new(&config.admin_token));
        let mut tasks = crate::service::TaskService::new(
            dyn_store.clone(),
            config.limits,
            config.scheduling.engine(),
            notes,
            auth.clone(),
            links,
            wakeup.clone(),
        );
        tasks.metrics = metrics.clone();
        let tasks = Arc::new(tasks);
        // Project streams' cursors are sealed with the cluster's key, so any server resumes them.
        let proposed = crate::service::auth::random_hex().map_err(|_| ClusterError::Agent("the system's random source failed".into()))?;
        let secret = dyn_store.cluster_value("event_cursor_key", &proposed).await?;
        let events = crate::loops::events::EventHub::with_seal(dyn_store.clone(), crate::loops::events::CursorSeal::new(secret.as_bytes()));
        background.push(tokio::spawn(events.clone().run(shutdown_rx.clone())));
        background.push(tokio::spawn(crate::loops::events::prune(
            dyn_store.clone(),
            leadership.clone(),
            config.event_retention,
            shutdown_rx.clone(),
        )));
        background.push(tokio::spawn(
            crate::loops::retention::Retention {
                store: dyn_store.clone(),
                leadership: leadership.clone(),
                config: config.retention.clone(),
                metrics: metrics.clone(),
            }
            .run(shutdown_rx.clone()),
        ));
        match crate::loops::webhooks::Dispatcher::new(dyn_store.clone(), config.webhook_allow_private) {
            Ok(dispatcher) => background.push(tokio::spawn(dispatcher.run(leadership.clone(), shutdown_rx.clone()))),
            Err(e) => tracing::error!(error = %e, "webhooks are off: no HTTP client"),
        }
        let schedules = Arc::new(crate::service::ScheduleService::new(dyn_store.clone(), tasks.clone()));
        background.push(tokio::spawn(
            Arc::new(crate::loops::schedules::SlotFiring::new(schedules.clone())).run(leadership.clone(), shutdown_rx.clone()),
        ));
        let projects = Arc::new(crate::service::ProjectService { store: dyn_store.clone(), auth: auth.clone(), wakeup: wakeup.clone() });
        let volumes =
            Arc::new(crate::service::VolumeService { store: dyn_store.clone(), projects: projects.clone(), links: tasks.links.clone() });
        let nodes = Arc::new(crate::service::NodeService { store: dyn_store.clone(), links: tasks.links.clone(), view: view.clone() });
        let images = Arc::new(crate::service::ImageService { store: dyn_store.clone(), links: tasks.links.clone() });
        let state = AppState {
            nodes,
            images,
            projects,
            volumes,
            codes: Arc::new(crate::service::CodeService {
                store: dyn_store.clone(),
                limits: config.limits,
                engine: config.scheduling.engine(),
                stacks: Arc::new(config.stacks.clone()),
            }),
            schedules,
            store: dyn_store.clone(),
            tasks,
            scheduler_wakeup: wakeup.clone(),
            agents: crate::service::AgentService {
                store: dyn_store.clone(),
                join_token: config.join_token.clone(),
                remote,
                liveness,
                observer,
                node_timeout: config.node_timeout,
                logs: Arc::new(crate::nodes::guard::LogGuard::new(config.max_attempt_log_bytes)),
                refusals: Default::default(),
                metrics: metrics.clone(),
                wakeup: wakeup.clone(),
            },
            auth,
            request_timeout: config.request_timeout,
            leadership,
            metrics,
            events,
            timeline: Default::default(),
            autoscaler,
            scheduling: config.scheduling.clone(),
        };
        background.push(tokio::spawn(state.timeline.clone().run(dyn_store, state.metrics.clone(), shutdown_rx.clone())));
        if let Some(listen) = config.metrics_listen {
            if !listen.ip().is_loopback() {
                // The metrics name every project and node, and need no token there.
                tracing::warn!(addr = %listen, "--metrics-listen serves /metrics without a token on a non-loopback address: \
                    every project's and node's name is readable by anyone who reaches it (firewall it, or use the API's /metrics with the admin token)");
            }
            let listener = tokio::net::TcpListener::bind(listen).await.map_err(|source| ClusterError::Bind { addr: listen, source })?;
            let app = crate::http::metrics_router(state.clone());
            background.push(tokio::spawn(crate::http::serve::serve(listener, app, None, config.serve_limits, shutdown_rx.clone())));
            tracing::info!(addr = %listen, "metrics listening");
        }
        let app = crate::http::router(state);
        let tls = match &config.tls {
            Some(files) => Some(crate::http::tls::server_config(files).map_err(ClusterError::Tls)?),
            None => None,
        };
        let server = tokio::spawn(crate::http::serve::serve(listener, app, tls, config.serve_limits, shutdown_rx.clone()));
        tracing::info!(%addr, "API listening");
        Ok(Cluster {
            addr,
            node_id: agent.as_ref().map(|a| a.node_id().to_string()),
            driver: agent.as_ref().map(|a| a.driver_name()),
            shutdown,
            server,
            background,
            agent,
            store,
        })
    }

    /// Creates the `default` project if there is none yet and returns a
    /// new token for it; `None` if it already existed (its tokens were
    /// shown when it was made).
    pub async fn bootstrap_default_project(&self) -> Result<Option<String>, StoreError> {
        let project = shepherd_store::Project {
            name: DEFAULT_PROJECT.into(),
            created_at: Timestamp::now(),
            limits: Default::default(),
            policy: Default::default(),
        };
        if !self.store.create_project(project).await? {
            return Ok(None);
        }
        let (record, token) = crate::service::auth::mint_token(self.store.as_ref(), DEFAULT_PROJECT, "created by shepherd up").await?;
        let detail = Some(format!("first start; token {}", record.id));
        let entry = crate::service::tasks::audit_entry(
            &crate::service::auth::Caller::Admin,
            Some(DEFAULT_PROJECT),
            "project.create",
            DEFAULT_PROJECT,
            detail,
        );
        self.store.append_audit(vec![entry]).await?;
        Ok(Some(token))
    }

    /// Where the API listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The local node's id, if this cluster runs an agent.
    pub fn node_id(&self) -> Option<&str> {
        self.node_id.as_deref()
    }

    /// The local agent's driver, if any.
    pub fn driver(&self) -> Option<&'static str> {
        self.driver
    }

    /// Stops cleanly: no new placements; running attempts left running for
    /// the next start to adopt (containers) or stopped and put back in the
    /// queue (processes, or with `stop_on_shutdown`); the API closed, the
    /// store flushed. Returns how many attempts were left running.
    pub async fn shutdown(self) -> usize {
        let _ = self.shutdown.send(true);
        for task in self.background {
            let _ = task.await;
        }
        let left_running = match &self.agent {
            Some(agent) => agent.shutdown().await,
            None => 0,
        };
        // Followers of live logs keep connections open: give them a moment, then close.
        let mut server = self.server;
        if tokio::time::timeout(Duration::from_secs(3), &mut server).await.is_err() {
            server.abort();
        }
        self.store.close();
        tracing::info!("cluster stopped");
        left_running
    }
}
