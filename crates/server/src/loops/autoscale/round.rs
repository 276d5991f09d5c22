//! One round over every pool: failed machines go and creates that never
//! joined fail; idle machines drain and drained empty ones go; each pool
//! grows to its `min`, then as the placement engine's plan for the waiting
//! tasks says, and every waiting task is told why it waits.

use super::autoscaler::Autoscaler;
use super::config::PoolConfig;
use crate::nodes::view::ClusterView;
use shepherd_core::{Machine, MachineState, NodeState, ProjectLimits, Timestamp};
use shepherd_sched::autoscale::{PoolOption, ScaleNote};
use shepherd_sched::{NodeSnapshot, QuotaLedger};
use shepherd_store::{QueueQuery, StoreError};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Queued tasks a scale-up plan looks at.
const PLAN_TASKS: usize = 2000;

impl Autoscaler {
    /// One look at every pool.
    pub async fn round(self: Arc<Self>) -> Result<(), StoreError> {
        let now = Timestamp::now();
        let machines = self.parts.store.machines().await?;
        let records = Arc::new(self.parts.store.list_nodes().await?);
        let nodes: HashMap<&str, &shepherd_store::NodeRecord> = records.iter().map(|n| (n.id.as_str(), n)).collect();
        self.note_joins(&machines);

        // 1. Failed machines go; creates that never joined fail.
        for machine in &machines {
            match machine.state {
                MachineState::Failed | MachineState::Destroying if !self.is_in_flight(&machine.id) => {
                    let due = self
                        .destroy_retry
                        .lock()
                        .ok()
                        .and_then(|r| r.get(&machine.id).map(|(_, at)| *at))
                        .is_none_or(|at| Instant::now() >= at);
                    if due {
                        self.clone().destroy(machine.clone(), machine.error.clone().unwrap_or_else(|| "failed".into()));
                    }
                }
                MachineState::Creating if !self.is_in_flight(&machine.id) => {
                    let timeout = self.config.pools.get(&machine.pool).map_or(Duration::from_secs(300), |p| p.join_timeout);
                    if now.millis() - machine.created_at.millis() > timeout.as_millis() as i64 {
                        self.fail(machine, &format!("its agent did not join within {}", humantime::format_duration(timeout))).await?;
                        self.count_failure(&machine.pool, "its agent did not join in time".into());
                    }
                }
                // A machine whose node went down and stayed silent past the
                // join timeout is dead: it fails and is destroyed.
                MachineState::Joined | MachineState::Draining if !self.is_in_flight(&machine.id) => {
                    let timeout = self.config.pools.get(&machine.pool).map_or(Duration::from_secs(300), |p| p.join_timeout);
                    let node = machine.node_id.as_deref().and_then(|id| nodes.get(id));
                    let dead = node.is_some_and(|n| {
                        n.state == NodeState::Down && now.millis() - n.last_heartbeat_at.millis() > timeout.as_millis() as i64
                    });
                    if dead {
                        let why = format!("its node has been down for more than {}", humantime::format_duration(timeout));
                        self.fail(machine, &why).await?;
                    }
                }
                _ => {}
            }
        }

        // What each node holds: the scheduler's view, kept by the leader; until
        // the scheduler built it (it does not while there are no nodes at
        // all), one read from the store.
        let own;
        let view: &ClusterView = if self.parts.view.is_built() {
            &self.parts.view
        } else {
            own = ClusterView::default();
            own.rebuild(&self.parts.store.active_tasks().await?);
            &own
        };
        let (snapshots, usage, held) = view.snapshot(&records);
        let code_usage = view.code_usage();
        let tasks_on: HashMap<&str, u32> = snapshots.iter().map(|n| (n.id.as_str(), n.task_count)).collect();

        // 2. Idle machines drain; drained ones go once empty.
        let mut active: HashMap<&str, u32> = HashMap::new();
        for m in machines.iter().filter(|m| m.state.counts()) {
            *active.entry(m.pool.as_str()).or_default() += 1;
        }
        let mut idle_now: Vec<(&Machine, Duration)> = Vec::new();
        if let Ok(mut idle) = self.idle_since.lock() {
            let mut seen = HashSet::new();
            for m in machines.iter().filter(|m| m.state == MachineState::Joined) {
                let Some(node) = m.node_id.as_deref() else { continue };
                seen.insert(node.to_string());
                let ready = nodes.get(node).is_some_and(|n| n.state == NodeState::Ready);
                if ready && tasks_on.get(node).copied().unwrap_or(0) == 0 {
                    let since = *idle.entry(node.to_string()).or_insert_with(Instant::now);
                    idle_now.push((m, since.elapsed()));
                } else {
                    idle.remove(node);
                }
            }
            idle.retain(|node, _| seen.contains(node));
        }
        idle_now.sort_by_key(|(_, idle_for)| std::cmp::Reverse(*idle_for));
        for (machine, idle_for) in idle_now {
            // A pool no longer configured keeps none of its machines.
            let (idle_time, min) = self.config.pools.get(&machine.pool).map_or((Duration::ZERO, 0), |p| (p.idle_time, p.min));
            let count = active.get(machine.pool.as_str()).copied().unwrap_or(0);
            if idle_for < idle_time || count <= min {
                continue;
            }
            if self.drain(machine).await? {
                active.insert(machine.pool.as_str(), count - 1);
            }
        }
        for machine in machines.iter().filter(|m| m.state == MachineState::Draining && !self.is_in_flight(&m.id)) {
            let empty = match machine.node_id.as_deref() {
                Some(node) => tasks_on.get(node).copied().unwrap_or(0) == 0 && self.parts.store.active_tasks_on(node).await?.is_empty(),
                None => true,
            };
            if empty {
                self.clone().destroy(machine.clone(), "idle, drained and empty".into());
            }
        }

        // 3 and 4. Grow: to each pool's min, then as the waiting tasks need.
        let mut options = Vec::new();
        for (name, pool) in &self.config.pools {
            let of_pool: Vec<&Machine> = machines.iter().filter(|m| &m.pool == name).collect();
            let total = of_pool.len() as u32;
            let creating = of_pool.iter().filter(|m| m.state == MachineState::Creating).count() as u32;
            let counted = of_pool.iter().filter(|m| m.state.counts()).count() as u32;
            let (mut room, mut limited_by) = (pool.max.saturating_sub(total).min(pool.max_creating.saturating_sub(creating)), None);
            if total >= pool.max {
                limited_by = Some(format!("it is at its max of {} machines", pool.max));
            } else if creating >= pool.max_creating {
                limited_by = Some(format!("{creating} machines are being made (max_creating {})", pool.max_creating));
            }
            if let Some((until, failures, error)) = self.backoff(name) {
                room = 0;
                limited_by = Some(format!(
                    "backing off for {} after {failures} failed creates (last: {error})",
                    humantime::format_duration(Duration::from_secs(until.saturating_duration_since(Instant::now()).as_secs()))
                ));
            }
            if counted < pool.min && room > 0 {
                let n = (pool.min - counted).min(room);
                for _ in 0..n {
                    self.clone().create(name, pool).await?;
                }
                // This round's machines are not in its view of the pool yet.
                room = 0;
                limited_by = Some(format!("machines up to its min of {} are being made", pool.min));
            }
            let cooling = self
                .pools
                .lock()
                .ok()
                .and_then(|p| p.get(name).and_then(|s| s.last_scale_up))
                .is_some_and(|at| at.elapsed() < pool.scale_up_cooldown);
            if cooling && room > 0 {
                room = 0;
                limited_by = Some(format!("cooling down (scale_up_cooldown {})", humantime::format_duration(pool.scale_up_cooldown)));
            }
            options.push(PoolOption { name: name.clone(), template: template(name, pool, &format!("{name}-new")), room, limited_by });
        }
        if options.is_empty() {
            return Ok(());
        }
        let page = self.parts.store.queued_tasks(now, QueueQuery { limit: PLAN_TASKS, projects: None, skip_shapes: Vec::new() }).await?;
        if page.tasks.is_empty() {
            self.parts.notes.set_autoscale(HashMap::new());
            return Ok(());
        }
        let tasks: Vec<_> = page.tasks.iter().map(|t| crate::loops::scheduler::pending(t, &Default::default())).collect();
        // Machines being made count as the empty nodes they will be.
        let mut coming = Vec::new();
        for m in machines.iter().filter(|m| m.state == MachineState::Creating) {
            if let Some(pool) = self.config.pools.get(&m.pool) {
                coming.push(template(&m.pool, pool, &m.id));
            }
        }
        let limits: HashMap<String, ProjectLimits> = self
            .parts
            .store
            .list_projects()
            .await?
            .into_iter()
            .filter(|p| p.limits != ProjectLimits::default())
            .map(|p| (p.name, p.limits))
            .collect();
        let code_limits = self.parts.store.code_limits().await?.into_iter().map(|l| ((l.project, l.name), l.max)).collect();
        let quota = QuotaLedger::new(held, limits).with_codes(code_usage, code_limits);
        let engine = self.parts.engine.get();
        let plan = tokio::task::spawn_blocking(move || {
            shepherd_sched::autoscale::plan(&engine, snapshots, coming, &usage, quota, tasks, &options, 0)
        })
        .await
        .map_err(|_| StoreError::Closed)?;
        let notes = plan
            .notes
            .into_iter()
            .filter(|(_, note)| !matches!(note, ScaleNote::Fits | ScaleNote::Quota))
            .map(|(id, note)| (id, note.to_string()))
            .collect();
        self.parts.notes.set_autoscale(notes);
        for (name, count) in plan.create {
            let Some(pool) = self.config.pools.get(&name) else { continue };
            tracing::info!(pool = %name, machines = count, "scaling up");
            if let Ok(mut pools) = self.pools.lock() {
                pools.entry(name.clone()).or_default().last_scale_up = Some(Instant::now());
            }
            for _ in 0..count {
                self.clone().create(&name, pool).await?;
            }
        }
        Ok(())
    }
}

/// A machine of the pool as the empty node it will be.
fn template(pool_name: &str, pool: &PoolConfig, id: &str) -> NodeSnapshot {
    let mut node = NodeSnapshot::new(id, pool.shape().capacity());
    node.max_tasks = pool.max_tasks;
    node.pool = Some(pool_name.to_string());
    node.labels = pool.labels.clone();
    node.labels.insert("pool".into(), pool_name.to_string());
    node.labels.insert("machine".into(), id.to_string());
    node
}
