//! An in-memory provisioner for tests: machines are entries in a map,
//! failures and delays are scripted, and every call is counted.

use crate::{MachineRequest, ProviderMachine, ProvisionError, Provisioner};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Machines kept in memory.
#[derive(Default)]
pub struct FakeProvisioner {
    machines: Mutex<BTreeMap<(String, String), ProviderMachine>>,
    /// Creates that fail before one succeeds (counted down).
    pub fail_creates: AtomicUsize,
    /// How long each create takes.
    pub create_delay: Mutex<Duration>,
    /// Calls so far.
    pub creates: AtomicUsize,
    pub destroys: AtomicUsize,
    /// The requests of the creates, in order.
    pub requests: Mutex<Vec<MachineRequest>>,
    next: AtomicUsize,
}

impl FakeProvisioner {
    /// One whose next `n` creates fail.
    pub fn failing(n: usize) -> FakeProvisioner {
        FakeProvisioner { fail_creates: AtomicUsize::new(n), ..Default::default() }
    }

    /// The machines it holds of a cluster.
    pub fn held(&self, cluster: &str) -> Vec<ProviderMachine> {
        self.machines.lock().map(|m| m.iter().filter(|((c, _), _)| c == cluster).map(|(_, m)| m.clone()).collect()).unwrap_or_default()
    }
}

#[async_trait]
impl Provisioner for FakeProvisioner {
    fn driver(&self) -> &'static str {
        "fake"
    }

    async fn create(&self, request: &MachineRequest) -> Result<String, ProvisionError> {
        self.creates.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut requests) = self.requests.lock() {
            requests.push(request.clone());
        }
        let delay = self.create_delay.lock().map(|d| *d).unwrap_or_default();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if self.fail_creates.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(ProvisionError::Failed("scripted failure".into()));
        }
        let mut machines = self.machines.lock().map_err(|_| ProvisionError::Failed("poisoned".into()))?;
        let key = (request.cluster.clone(), request.machine_id.clone());
        let made = machines.entry(key).or_insert_with(|| ProviderMachine {
            machine_id: request.machine_id.clone(),
            provider_id: format!("fake-{}", self.next.fetch_add(1, Ordering::SeqCst)),
            pool: Some(request.pool.clone()),
        });
        Ok(made.provider_id.clone())
    }

    async fn destroy(&self, cluster: &str, machine: &ProviderMachine) -> Result<(), ProvisionError> {
        self.destroys.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut machines) = self.machines.lock() {
            machines.remove(&(cluster.to_string(), machine.machine_id.clone()));
        }
        Ok(())
    }

    async fn list(&self, cluster: &str) -> Result<Vec<ProviderMachine>, ProvisionError> {
        Ok(self.held(cluster))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_fake_conforms() {
        crate::conformance::check(&FakeProvisioner::default(), "fake-cluster").await;
    }

    #[tokio::test]
    async fn scripted_failures() {
        let fake = FakeProvisioner::failing(2);
        let request = crate::conformance::request("c", "m-1");
        assert!(fake.create(&request).await.is_err());
        assert!(fake.create(&request).await.is_err());
        assert!(fake.create(&request).await.is_ok());
        assert_eq!(fake.creates.load(Ordering::SeqCst), 3);
        assert_eq!(fake.held("c").len(), 1);
    }
}
