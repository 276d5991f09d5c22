//! A machine's life: recorded and made (`Autoscaler::create`, resumed
//! through `Autoscaler::launch`), drained when idle, failed, and
//! destroyed (provider, node record, machine record) in the background.

use super::autoscaler::Autoscaler;
use super::backoff::MAX_BACKOFF;
use super::config::PoolConfig;
use shepherd_core::{Machine, MachineState, NodeState, Timestamp};
use shepherd_provision::{MachineRequest, ProviderMachine, Provisioner};
use shepherd_store::StoreError;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest a destroy may take.
const DESTROY_TIMEOUT: Duration = Duration::from_secs(300);

impl Autoscaler {
    /// Marks a machine failed (it is destroyed next round).
    pub(super) async fn fail(&self, machine: &Machine, why: &str) -> Result<(), StoreError> {
        let mut failed = machine.clone();
        if failed.become_(MachineState::Failed, Timestamp::now()).is_err() {
            return Ok(());
        }
        failed.error = Some(why.to_string());
        if self.parts.store.put_machine(failed, Some(machine.state)).await? {
            tracing::warn!(machine = %machine.id, pool = %machine.pool, why, "machine failed");
        }
        Ok(())
    }

    /// Records a new machine of the pool and has it made in the background.
    pub(super) async fn create(self: Arc<Self>, pool_name: &str, pool: &PoolConfig) -> Result<(), StoreError> {
        let Some(provisioner) = self.provisioners.get(&pool.provisioner).cloned() else { return Ok(()) };
        let id = format!("m-{}", ulid::Ulid::new().to_string().to_lowercase());
        let now = Timestamp::now();
        let machine = Machine {
            id: id.clone(),
            pool: pool_name.to_string(),
            provisioner: pool.provisioner.clone(),
            provider_id: None,
            state: MachineState::Creating,
            shape: pool.shape(),
            cost: pool.cost.clone(),
            node_id: None,
            created_at: now,
            updated_at: now,
            provisioned_at: None,
            joined_at: None,
            error: None,
            join_token_sha256: crate::service::auth::hash_token(&self.join_token(&id)),
        };
        self.take(&id);
        if !self.parts.store.put_machine(machine.clone(), None).await? {
            self.release(&id);
            return Ok(());
        }
        self.audit(
            "machine.create",
            &id,
            format!("pool {pool_name}: {} millicores, {} MiB, via {}", pool.cpu_millicores, pool.memory_mib, pool.provisioner),
        )
        .await;
        tracing::info!(machine = %id, pool = %pool_name, "creating a machine");
        self.launch(provisioner, machine, pool);
        Ok(())
    }

    /// Asks the provisioner for a recorded machine (taken in flight by the
    /// caller; released when the create answers) and records the answer.
    pub(super) fn launch(self: Arc<Self>, provisioner: Arc<dyn Provisioner>, machine: Machine, pool: &PoolConfig) {
        let mut labels = pool.labels.clone();
        labels.insert("pool".into(), machine.pool.clone());
        labels.insert("machine".into(), machine.id.clone());
        let request = MachineRequest {
            cluster: self.cluster.clone(),
            machine_id: machine.id.clone(),
            pool: machine.pool.clone(),
            shape: machine.shape.clone(),
            labels,
            join_urls: self.join_urls.clone(),
            join_token: self.join_token(&machine.id),
        };
        let timeout = pool.join_timeout;
        tokio::spawn(async move {
            let made = match tokio::time::timeout(timeout, provisioner.create(&request)).await {
                Ok(made) => made.map_err(|e| e.to_string()),
                Err(_) => Err(format!("the create took longer than {}", humantime::format_duration(timeout))),
            };
            match made {
                Ok(provider_id) => {
                    self.parts.metrics.machine_create(&machine.pool, "made");
                    // Its agent may have joined already: set the provider id on what is stored.
                    for _ in 0..5 {
                        let current = match self.parts.store.machines().await {
                            Ok(all) => all.into_iter().find(|m| m.id == machine.id),
                            Err(_) => None,
                        };
                        let Some(current) = current else { break };
                        let expected = current.state;
                        let updated = Machine { provider_id: Some(provider_id.clone()), provisioned_at: Some(Timestamp::now()), ..current };
                        if matches!(self.parts.store.put_machine(updated, Some(expected)).await, Ok(true)) {
                            break;
                        }
                    }
                    tracing::info!(machine = %machine.id, provider_id, "machine made; waiting for its agent to join");
                }
                Err(error) => {
                    self.count_failure(&machine.pool, error.clone());
                    if let Err(e) = self.fail(&machine, &format!("create failed: {error}")).await {
                        tracing::warn!(machine = %machine.id, error = %e, "could not record a failed create");
                    }
                }
            }
            self.release(&machine.id);
        });
    }

    /// Drains a machine's node; true if it is now draining.
    pub(super) async fn drain(&self, machine: &Machine) -> Result<bool, StoreError> {
        let Some(node) = machine.node_id.as_deref() else { return Ok(false) };
        if !self.parts.store.active_tasks_on(node).await?.is_empty() {
            return Ok(false);
        }
        let mut draining = machine.clone();
        if draining.become_(MachineState::Draining, Timestamp::now()).is_err() {
            return Ok(false);
        }
        if !self.parts.store.put_machine(draining, Some(machine.state)).await? {
            return Ok(false);
        }
        self.parts.store.set_node_state(node, NodeState::Draining).await?;
        self.parts.view.nodes_changed();
        self.parts.links.drain(node);
        if let Ok(mut idle) = self.idle_since.lock() {
            idle.remove(node);
        }
        tracing::info!(machine = %machine.id, node, pool = %machine.pool, "idle machine draining");
        self.audit("machine.drain", &machine.id, format!("pool {}: idle", machine.pool)).await;
        Ok(true)
    }

    /// Destroys a machine in the background: provider, node record, machine record.
    pub(super) fn destroy(self: Arc<Self>, machine: Machine, why: String) {
        if !self.take(&machine.id) {
            return;
        }
        tokio::spawn(async move {
            let result = self.destroy_now(&machine, &why).await;
            if let Err(error) = result {
                let mut retries = self.destroy_retry.lock().ok();
                let tries = retries.as_mut().map_or(1, |r| {
                    let entry = r.entry(machine.id.clone()).or_insert((0, Instant::now()));
                    entry.0 += 1;
                    entry.1 = Instant::now() + Duration::from_secs(1u64 << entry.0.min(8)).min(MAX_BACKOFF);
                    entry.0
                });
                drop(retries);
                tracing::warn!(machine = %machine.id, tries, error, "machine destroy failed; will retry");
            } else if let Ok(mut r) = self.destroy_retry.lock() {
                r.remove(&machine.id);
            }
            self.release(&machine.id);
        });
    }

    async fn destroy_now(&self, machine: &Machine, why: &str) -> Result<(), String> {
        let store = &self.parts.store;
        let mut current = store.machines().await.map_err(|e| e.to_string())?.into_iter().find(|m| m.id == machine.id).ok_or("gone")?;
        if current.state != MachineState::Destroying {
            let expected = current.state;
            current.become_(MachineState::Destroying, Timestamp::now()).map_err(|e| e.to_string())?;
            if !store.put_machine(current.clone(), Some(expected)).await.map_err(|e| e.to_string())? {
                return Err("changed meanwhile".into());
            }
        }
        let provisioner = self.provisioners.get(&current.provisioner).ok_or_else(|| format!("no provisioner {}", current.provisioner))?;
        let target = ProviderMachine {
            machine_id: current.id.clone(),
            provider_id: current.provider_id.clone().unwrap_or_default(),
            pool: Some(current.pool.clone()),
        };
        match tokio::time::timeout(DESTROY_TIMEOUT, provisioner.destroy(&self.cluster, &target)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("the destroy timed out".into()),
        }
        if let Some(node) = &current.node_id {
            if !store.delete_node(node).await.map_err(|e| e.to_string())? {
                tracing::warn!(machine = %current.id, node, "a destroyed machine's node still holds tasks; they will be lost with it");
            }
            self.parts.view.nodes_changed();
        }
        store.delete_machine(&current.id).await.map_err(|e| e.to_string())?;
        tracing::info!(machine = %current.id, pool = %current.pool, why, "machine destroyed");
        self.audit("machine.destroy", &current.id, format!("pool {}: {why}", current.pool)).await;
        self.parts.wakeup.notify_one();
        Ok(())
    }
}
