//! The store's machines against each provisioner's `list`: unknown
//! machines are destroyed, vanished ones fail, and creates a dead server
//! began are asked for again.

use super::autoscaler::{AutoscaleError, Autoscaler};
use shepherd_core::{Machine, MachineState};
use shepherd_provision::ProviderMachine;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

impl Autoscaler {
    /// The store's machines against the provisioners' lists.
    pub async fn reconcile(self: &Arc<Self>) -> Result<(), AutoscaleError> {
        let machines = self.parts.store.machines().await?;
        let known: HashMap<&str, &Machine> = machines.iter().map(|m| (m.id.as_str(), m)).collect();
        let mut listed: HashMap<String, ProviderMachine> = HashMap::new();
        let mut answered: HashSet<&str> = HashSet::new();
        for (name, provisioner) in &self.provisioners {
            match provisioner.list(&self.cluster).await {
                Ok(list) => {
                    answered.insert(name.as_str());
                    for machine in list {
                        if known.contains_key(machine.machine_id.as_str()) || self.is_in_flight(&machine.machine_id) {
                            listed.insert(machine.machine_id.clone(), machine);
                            continue;
                        }
                        // Made, but unknown to the store: a create whose record is gone.
                        tracing::warn!(machine = %machine.machine_id, provisioner = %name, "destroying a machine the store does not know");
                        if let Err(e) = provisioner.destroy(&self.cluster, &machine).await {
                            tracing::warn!(machine = %machine.machine_id, error = %e, "could not destroy an unknown machine");
                        } else {
                            self.audit("machine.destroy", &machine.machine_id, "unknown to the store (reconcile)".into()).await;
                        }
                    }
                }
                Err(e) => tracing::warn!(provisioner = %name, error = %e, "autoscaler: could not list machines"),
            }
        }
        for machine in &machines {
            // Only what a provisioner that answered should have listed.
            let Some(pool) = self.config.pools.get(&machine.pool) else { continue };
            if !answered.contains(pool.provisioner.as_str()) || self.is_in_flight(&machine.id) {
                continue;
            }
            match (machine.state, listed.get(&machine.id)) {
                (MachineState::Creating | MachineState::Joined | MachineState::Draining, Some(found))
                    if machine.provider_id.as_deref() != Some(found.provider_id.as_str()) =>
                {
                    let mut updated = machine.clone();
                    updated.provider_id = Some(found.provider_id.clone());
                    self.parts.store.put_machine(updated, Some(machine.state)).await?;
                }
                // Not listed, and no create answered: one a dead server began
                // (its process may still run, or died with it, or was never
                // started). Asked again with the same id and join token: a
                // create is idempotent, so it is never made twice.
                (MachineState::Creating, None) if machine.provider_id.is_none() => {
                    if let Some(provisioner) = self.provisioners.get(&pool.provisioner).cloned() {
                        tracing::info!(machine = %machine.id, pool = %machine.pool, "resuming an interrupted create");
                        self.audit("machine.resume", &machine.id, format!("pool {}: a create a server began", machine.pool)).await;
                        self.take(&machine.id);
                        self.clone().launch(provisioner, machine.clone(), pool);
                    }
                }
                // Made but not listed yet (a slow provider): it keeps its
                // place until its join timeout; if it never joins, it fails then.
                (MachineState::Creating, None) => {}
                (MachineState::Joined | MachineState::Draining, None) => {
                    self.fail(machine, "gone from its provisioner's list").await?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}
