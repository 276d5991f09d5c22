//! The autoscaler itself: what it works with, its state between rounds,
//! how it starts, its loop, and the small helpers every part of it shares
//! (join tokens, machines in flight, the audit log).

use super::config::{AutoscaleConfig, ProvisionerConfig};
use crate::loops::leader::Leadership;
use crate::metrics::Metrics;
use crate::nodes::links::NodeLinks;
use crate::nodes::view::ClusterView;
use crate::placement_notes::PlacementNotes;
use shepherd_core::Timestamp;
use shepherd_provision::Provisioner;
use shepherd_store::{AuditEntry, Store, StoreError};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// How often the store is reconciled with the provisioners' lists.
const RECONCILE_EVERY: Duration = Duration::from_secs(30);

/// What the autoscaler works with, from the rest of the server.
pub struct AutoscaleParts {
    /// Machines, nodes, queued tasks, projects and the audit log.
    pub store: Arc<dyn Store>,
    /// What each node holds (the scheduler's view).
    pub view: Arc<ClusterView>,
    /// The placement engine a scale-up is planned with.
    pub engine: shepherd_sched::SharedEngine,
    /// Whether this server leads (the autoscaler acts only then).
    pub leadership: Leadership,
    /// The agents of the nodes, to drain an idle machine's node.
    pub links: Arc<dyn NodeLinks>,
    /// Where each waiting task is told why it waits.
    pub notes: Arc<PlacementNotes>,
    /// Machine creates and failing pools are counted here.
    pub metrics: Arc<Metrics>,
    /// Woken when a machine is destroyed (the scheduler looks again).
    pub wakeup: Arc<Notify>,
}

/// A pool's state between rounds (in memory: a new leader starts afresh).
#[derive(Default)]
pub(super) struct PoolState {
    pub(super) last_scale_up: Option<Instant>,
    pub(super) failures: u32,
    pub(super) backoff_until: Option<Instant>,
    pub(super) last_failure_at: Option<Timestamp>,
    pub(super) last_error: Option<String>,
}

/// The autoscaler of one server (it acts only while the server leads).
pub struct Autoscaler {
    pub(super) parts: AutoscaleParts,
    pub(super) config: AutoscaleConfig,
    pub(super) provisioners: BTreeMap<String, Arc<dyn Provisioner>>,
    pub(super) cluster: String,
    /// The key machines' join tokens are made with (shared by the store).
    pub(super) token_key: ring::hmac::Key,
    pub(super) join_urls: Vec<String>,
    pub(super) pools: Mutex<HashMap<String, PoolState>>,
    /// Machines with a create or destroy of this server in flight.
    pub(super) in_flight: Mutex<HashSet<String>>,
    /// When each idle node of a machine was first seen idle.
    pub(super) idle_since: Mutex<HashMap<String, Instant>>,
    /// When a failed destroy of a machine may be tried again.
    pub(super) destroy_retry: Mutex<HashMap<String, (u32, Instant)>>,
}

/// Why the autoscaler could not start.
#[derive(Debug, thiserror::Error)]
pub enum AutoscaleError {
    /// A configured provisioner could not be made.
    #[error("provisioner {name}: {source}")]
    Provisioner {
        /// The provisioner's name in the configuration.
        name: String,
        /// Why it could not be made.
        source: shepherd_provision::ProvisionError,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Autoscaler {
    /// The configuration it runs with.
    pub fn config(&self) -> &AutoscaleConfig {
        &self.config
    }

    /// Builds the provisioners and learns the cluster's id. `server_url`
    /// is where machines join unless the configuration says otherwise;
    /// `machines_dir` is the default data root of docker machines.
    pub async fn new(
        config: AutoscaleConfig,
        parts: AutoscaleParts,
        server_url: &str,
        machines_dir: std::path::PathBuf,
    ) -> Result<Arc<Autoscaler>, AutoscaleError> {
        let mut provisioners: BTreeMap<String, Arc<dyn Provisioner>> = BTreeMap::new();
        for (name, p) in &config.provisioners {
            let made: Arc<dyn Provisioner> = match p {
                ProvisionerConfig::Docker(docker) => Arc::new(
                    shepherd_provision::docker::DockerProvisioner::connect(docker.clone(), machines_dir.clone())
                        .await
                        .map_err(|source| AutoscaleError::Provisioner { name: name.clone(), source })?,
                ),
                ProvisionerConfig::Exec(exec) => Arc::new(
                    shepherd_provision::exec::ExecProvisioner::new(exec.clone())
                        .map_err(|source| AutoscaleError::Provisioner { name: name.clone(), source })?,
                ),
            };
            provisioners.insert(name.clone(), made);
        }
        Self::with_provisioners(config, parts, server_url, provisioners).await
    }

    /// An autoscaler over provisioners already made (tests use the fake).
    pub async fn with_provisioners(
        config: AutoscaleConfig,
        parts: AutoscaleParts,
        server_url: &str,
        provisioners: BTreeMap<String, Arc<dyn Provisioner>>,
    ) -> Result<Arc<Autoscaler>, AutoscaleError> {
        let cluster = parts.store.cluster_id().await?;
        let proposed = crate::service::auth::random_hex().map_err(|_| StoreError::Unavailable("no randomness for a key".into()))?;
        let key = parts.store.cluster_value("machine_token_key", &proposed).await?;
        let join_urls = if config.join_urls.is_empty() { vec![server_url.to_string()] } else { config.join_urls.clone() };
        for pool in config.pools.keys() {
            parts.metrics.pool_failing(pool, false);
        }
        Ok(Arc::new(Autoscaler {
            parts,
            config,
            provisioners,
            cluster,
            token_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes()),
            join_urls,
            pools: Mutex::default(),
            in_flight: Mutex::default(),
            idle_since: Mutex::default(),
            destroy_retry: Mutex::default(),
        }))
    }

    /// The cluster id machines are tagged with.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Runs until shutdown: a round every `interval` while leading, a
    /// reconcile on taking the lead and every 30 s.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut led_epoch = None;
        let mut reconciled = Instant::now();
        loop {
            if let Some(lease) = self.parts.leadership.lease() {
                if led_epoch != Some(lease.epoch) || reconciled.elapsed() >= RECONCILE_EVERY {
                    led_epoch = Some(lease.epoch);
                    if let Err(e) = self.reconcile().await {
                        tracing::warn!(error = %e, "autoscaler: could not reconcile machines");
                    }
                    reconciled = Instant::now();
                }
                if let Err(e) = self.clone().round().await {
                    tracing::warn!(error = %e, "autoscaler round failed");
                }
            } else {
                led_epoch = None;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// A machine's join token: an HMAC of its id under the cluster's key,
    /// so that whichever server leads can make it again (to resume a
    /// create a dead server began) while the store keeps only its hash.
    pub(super) fn join_token(&self, machine: &str) -> String {
        let tag = ring::hmac::sign(&self.token_key, machine.as_bytes());
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(super) fn is_in_flight(&self, id: &str) -> bool {
        self.in_flight.lock().map(|f| f.contains(id)).unwrap_or(true)
    }

    /// Takes a machine for a create or destroy; false if one is in flight.
    pub(super) fn take(&self, id: &str) -> bool {
        self.in_flight.lock().map(|mut f| f.insert(id.to_string())).unwrap_or(false)
    }

    pub(super) fn release(&self, id: &str) {
        if let Ok(mut f) = self.in_flight.lock() {
            f.remove(id);
        }
    }

    pub(super) async fn audit(&self, action: &str, target: &str, detail: String) {
        let entry = AuditEntry {
            seq: 0,
            at: Timestamp::now(),
            actor: "autoscaler".into(),
            project: None,
            action: action.into(),
            target: target.into(),
            detail: Some(detail),
        };
        if let Err(e) = self.parts.store.append_audit(vec![entry]).await {
            tracing::error!(error = %e, action, target, "could not write the audit log");
        }
    }
}
