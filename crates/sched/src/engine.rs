//! The placement engine: picks each task's profile, walks candidate nodes
//! in the profile's order through its filters, scores the first feasible
//! ones and takes the best; explains every task that fits nowhere.

use crate::cluster::{CandidateOrder, Cluster};
use crate::fairness;
use crate::model::{NodeSnapshot, PendingTask, Placement, PlacementPlan, Rejection};
use crate::profile::{self, BatchOrder, ConfigError, Profile, SchedulerConfig};
use shepherd_core::Resources;
use std::collections::HashMap;

/// Profiles and per-project settings; cheap to share, no state between passes.
#[derive(Clone)]
pub struct Engine {
    profiles: HashMap<String, Profile>,
    default_profile: String,
    project_profiles: HashMap<String, String>,
    weights: HashMap<String, f64>,
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new(&SchedulerConfig::default()).expect("the built-in configuration is valid")
    }
}

impl Engine {
    /// The built-in profiles plus those in `config`.
    pub fn new(config: &SchedulerConfig) -> Result<Engine, ConfigError> {
        let mut profiles = profile::builtins();
        for (name, profile_config) in &config.profiles {
            profiles.insert(name.clone(), profile::compile(name, profile_config)?);
        }
        let default_profile = config.default_profile.clone().unwrap_or_else(|| "spread".into());
        if !profiles.contains_key(&default_profile) {
            return Err(ConfigError::UnknownProfile(default_profile));
        }
        let mut project_profiles = HashMap::new();
        let mut weights = HashMap::new();
        for (project, settings) in &config.projects {
            if let Some(name) = &settings.profile {
                if !profiles.contains_key(name) {
                    return Err(ConfigError::UnknownProfile(name.clone()));
                }
                project_profiles.insert(project.clone(), name.clone());
            }
            if let Some(weight) = settings.weight {
                weights.insert(project.clone(), weight);
            }
        }
        Ok(Engine { profiles, default_profile, project_profiles, weights })
    }

    /// Whether a profile of that name exists.
    pub fn has_profile(&self, name: &str) -> bool {
        self.profiles.contains_key(name)
    }

    /// Every profile name, sorted.
    pub fn profile_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.profiles.keys().cloned().collect();
        names.sort();
        names
    }

    /// The profile a task runs under: its own, else its project's, else the cluster's.
    pub fn profile_for(&self, task: &PendingTask) -> &Profile {
        task.profile
            .as_deref()
            .and_then(|name| self.profiles.get(name))
            .or_else(|| self.project_profiles.get(&task.project).and_then(|name| self.profiles.get(name)))
            .or_else(|| self.profiles.get(&self.default_profile))
            .or_else(|| self.profiles.values().next())
            .expect("at least the built-in profiles exist")
    }

    /// A placer over `nodes` for one pass (or a whole simulation).
    pub fn placer(&self, nodes: Vec<NodeSnapshot>, seed: u64) -> Placer<'_> {
        let mut keys: Vec<String> = self.profiles.values().map(|p| p.topology_key.clone()).collect();
        keys.sort();
        keys.dedup();
        Placer { engine: self, cluster: Cluster::new(nodes, &keys, seed), infeasible: HashMap::new() }
    }

    /// Orders a batch: priorities, then weighted fair share across projects.
    pub fn order(&self, tasks: Vec<PendingTask>, nodes: &[NodeSnapshot], usage: &HashMap<String, Resources>) -> Vec<PendingTask> {
        let capacity = nodes.iter().fold(Resources { cpu_millicores: 0, memory_mib: 0 }, |acc, n| Resources {
            cpu_millicores: acc.cpu_millicores.saturating_add(n.capacity.cpu_millicores),
            memory_mib: acc.memory_mib.saturating_add(n.capacity.memory_mib),
        });
        fairness::order(tasks, usage, capacity, &self.weights, |t| self.profile_for(t).batch_order == BatchOrder::LargestFirst)
    }

    /// Orders and places a batch against `nodes`: the whole pass in one call.
    pub fn place_batch(&self, nodes: Vec<NodeSnapshot>, tasks: Vec<PendingTask>, usage: &HashMap<String, Resources>, seed: u64) -> PlacementPlan {
        let ordered = self.order(tasks, &nodes, usage);
        let mut placer = self.placer(nodes, seed);
        let mut plan = PlacementPlan::default();
        for task in &ordered {
            match placer.place(task) {
                Ok(node) => plan.placements.push(Placement { task_id: task.id, node_id: placer.cluster.nodes[node].id.clone() }),
                Err(reason) => plan.unplaced.push((task.id, reason)),
            }
        }
        plan
    }
}

/// The shape of a task as far as feasibility goes: two tasks of the same
/// shape fit on the same nodes. Used to remember, within a pass, that a
/// shape fits nowhere (allocations only grow within a pass).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Shape {
    profile: String,
    resources: (u32, u32),
    constraints: Vec<String>,
    pool: Option<String>,
    project: String,
    anti_affinity: Option<crate::model::AntiAffinity>,
}

/// Places tasks one at a time against a cluster it updates.
pub struct Placer<'e> {
    engine: &'e Engine,
    /// The nodes with every placement so far applied.
    pub cluster: Cluster,
    infeasible: HashMap<Shape, String>,
}

impl Placer<'_> {
    /// Places one task: the index of its node, or why it fits nowhere.
    pub fn place(&mut self, task: &PendingTask) -> Result<usize, String> {
        let profile = self.engine.profile_for(task);
        let shape = Shape {
            profile: profile.name.clone(),
            resources: (task.resources.cpu_millicores, task.resources.memory_mib),
            constraints: task.constraints.iter().map(|c| c.to_string()).collect(),
            pool: task.pool.clone(),
            project: task.project.clone(),
            anti_affinity: task.anti_affinity.clone(),
        };
        if let Some(reason) = self.infeasible.get(&shape) {
            return Err(reason.clone());
        }
        let start = (crate::rng::mix(self.cluster.seed ^ (task.id.0 .0 as u64)) % (self.cluster.nodes.len().max(1) as u64)) as usize;
        let mut candidates: Vec<usize> = Vec::with_capacity(profile.candidates);
        for i in self.cluster.candidates(profile.order, task, start) {
            let node = &self.cluster.nodes[i];
            if profile.filters.iter().all(|f| f.filter(task, node).is_ok()) {
                candidates.push(i);
                if candidates.len() >= profile.candidates {
                    break;
                }
            }
        }
        let view = self.cluster.view();
        let best = candidates
            .iter()
            .map(|&i| {
                let node = &self.cluster.nodes[i];
                let score: f64 = profile.scorers.iter().map(|(s, w)| w * s.score(task, node, &view)).sum();
                (i, score)
            })
            // Highest score; on a tie, the candidate visited first.
            .fold(None, |best: Option<(usize, f64)>, (i, score)| match best {
                Some((_, b)) if b >= score => best,
                _ => Some((i, score)),
            });
        match best {
            Some((i, _)) => {
                self.cluster.assign(i, task);
                Ok(i)
            }
            None => {
                let reason = self.explain(task, profile);
                self.infeasible.insert(shape, reason.clone());
                Err(reason)
            }
        }
    }

    /// "0/N nodes fit: ..." with the count of each first rejection.
    fn explain(&self, task: &PendingTask, profile: &Profile) -> String {
        if self.cluster.nodes.is_empty() {
            return "no nodes in the cluster".into();
        }
        let mut counts: HashMap<Rejection, usize> = HashMap::new();
        for node in &self.cluster.nodes {
            if let Some(why) = profile.filters.iter().find_map(|f| f.filter(task, node).err()) {
                *counts.entry(why).or_default() += 1;
            }
        }
        let mut counts: Vec<(Rejection, usize)> = counts.into_iter().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let detail: Vec<String> = counts.iter().map(|(why, n)| format!("{n} {why}")).collect();
        format!("0/{} nodes fit: {}", self.cluster.nodes.len(), detail.join(", "))
    }

    /// Frees a task's reservation (the simulator, when a task ends).
    pub fn release(&mut self, node: usize, task: &PendingTask) {
        self.cluster.release(node, task);
        // Capacity appeared: what did not fit may fit now.
        self.infeasible.clear();
    }

    /// Forgets remembered infeasible shapes (new pass over the same cluster).
    pub fn new_pass(&mut self) {
        self.infeasible.clear();
    }

    /// The order candidates are visited in for `task`'s profile.
    pub fn order_of(&self, task: &PendingTask) -> CandidateOrder {
        self.engine.profile_for(task).order
    }
}
