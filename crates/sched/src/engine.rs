//! The placement engine: picks each task's profile, walks candidate nodes
//! in the profile's order through its filters, scores the first feasible
//! ones and takes the best; explains every task that fits nowhere.

use crate::cluster::{CandidateOrder, Cluster};
use crate::fairness;
use crate::model::{NodeSnapshot, PendingTask, Placement, PlacementPlan, Rejection, Unplaced, Wait};
use crate::profile::{self, BatchOrder, ConfigError, Profile, SchedulerConfig};
use crate::quota::QuotaLedger;
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
        fairness::order(tasks, usage, total_capacity(nodes), &self.weights, |t| self.profile_for(t).batch_order == BatchOrder::LargestFirst)
    }

    /// Orders and places a batch against `nodes`: the whole pass in one call.
    pub fn place_batch(&self, nodes: Vec<NodeSnapshot>, tasks: Vec<PendingTask>, usage: &HashMap<String, Resources>, seed: u64) -> PlacementPlan {
        self.pass(nodes, usage.clone(), QuotaLedger::default(), seed).place(tasks)
    }

    /// A pass over `nodes` that may place several batches in turn (pages
    /// of a long queue), each against the nodes as the earlier ones left
    /// them. `usage` is what each project holds (for fair share), `quota`
    /// what counts against project quotas.
    pub fn pass(&self, nodes: Vec<NodeSnapshot>, usage: HashMap<String, Resources>, quota: QuotaLedger, seed: u64) -> Pass<'_> {
        let capacity = total_capacity(&nodes);
        Pass { placer: self.placer(nodes, seed), usage, quota, capacity }
    }
}

fn total_capacity(nodes: &[NodeSnapshot]) -> Resources {
    nodes.iter().fold(Resources { cpu_millicores: 0, memory_mib: 0 }, |acc, n| Resources {
        cpu_millicores: acc.cpu_millicores.saturating_add(n.capacity.cpu_millicores),
        memory_mib: acc.memory_mib.saturating_add(n.capacity.memory_mib),
    })
}

/// One scheduling pass: nodes, fair-share usage and quotas, all updated as
/// tasks are placed, so that later batches see what earlier ones took.
pub struct Pass<'e> {
    placer: Placer<'e>,
    usage: HashMap<String, Resources>,
    quota: QuotaLedger,
    capacity: Resources,
}

impl Pass<'_> {
    /// Orders a batch (priority, then fair share) and places it: quota
    /// first, then a node.
    pub fn place(&mut self, tasks: Vec<PendingTask>) -> PlacementPlan {
        let engine = self.placer.engine;
        let ordered = fairness::order(tasks, &self.usage, self.capacity, &engine.weights, |t| {
            engine.profile_for(t).batch_order == BatchOrder::LargestFirst
        });
        let mut plan = PlacementPlan::default();
        for task in &ordered {
            if let Some(reason) = self.quota.check(task) {
                plan.unplaced.push(Unplaced { task_id: task.id, reason, wait: Wait::Quota });
                continue;
            }
            match self.placer.place(task) {
                Ok(node) => {
                    self.quota.charge(task);
                    let used = self.usage.entry(task.project.clone()).or_insert(Resources { cpu_millicores: 0, memory_mib: 0 });
                    used.cpu_millicores = used.cpu_millicores.saturating_add(task.resources.cpu_millicores);
                    used.memory_mib = used.memory_mib.saturating_add(task.resources.memory_mib);
                    plan.placements.push(Placement { task_id: task.id, node_id: self.placer.cluster.nodes[node].id.clone() });
                }
                Err(unfit) => plan.unplaced.push(Unplaced { task_id: task.id, reason: unfit.reason, wait: unfit.wait }),
            }
        }
        plan
    }
}

/// Why a task fits on no node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfit {
    pub reason: String,
    /// [`Wait::Room`] or [`Wait::NeverFits`].
    pub wait: Wait,
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

/// "3 insufficient cpu, 1 not ready": counts, most first.
fn render(counts: HashMap<Rejection, usize>, name: impl Fn(&Rejection) -> String) -> String {
    let mut counts: Vec<(Rejection, usize)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts.iter().map(|(why, n)| format!("{n} {}", name(why))).collect::<Vec<_>>().join(", ")
}

/// Places tasks one at a time against a cluster it updates.
pub struct Placer<'e> {
    engine: &'e Engine,
    /// The nodes with every placement so far applied.
    pub cluster: Cluster,
    infeasible: HashMap<Shape, Unfit>,
}

impl Placer<'_> {
    /// Places one task: the index of its node, or why it fits nowhere.
    pub fn place(&mut self, task: &PendingTask) -> Result<usize, Unfit> {
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
                let unfit = self.explain(task, profile);
                self.infeasible.insert(shape, unfit.clone());
                Err(unfit)
            }
        }
    }

    /// "0/N nodes fit: ..." with the count of each first rejection; or, when
    /// no node could take the task even with nothing running on it, "no
    /// node can ever run this task: ..." saying what is missing.
    fn explain(&mut self, task: &PendingTask, profile: &Profile) -> Unfit {
        if self.cluster.nodes.is_empty() {
            return Unfit { reason: "no nodes in the cluster".into(), wait: Wait::Room };
        }
        let first_rejection = |node: &NodeSnapshot| profile.filters.iter().find_map(|f| f.filter(task, node).err());
        let mut now: HashMap<Rejection, usize> = HashMap::new();
        let mut idle: HashMap<Rejection, usize> = HashMap::new();
        let mut fits_idle = false;
        for node in &mut self.cluster.nodes {
            if let Some(why) = first_rejection(node) {
                *now.entry(why).or_default() += 1;
            }
            if fits_idle {
                continue;
            }
            // The node as it would be with nothing running and ready: taken
            // apart in place (no copy), put back right after.
            let ready = std::mem::replace(&mut node.ready, true);
            let allocated = std::mem::replace(&mut node.allocated, Resources { cpu_millicores: 0, memory_mib: 0 });
            let task_count = std::mem::replace(&mut node.task_count, 0);
            let label_counts = std::mem::take(&mut node.label_counts);
            match first_rejection(node) {
                Some(why) => *idle.entry(why).or_default() += 1,
                None => fits_idle = true,
            }
            node.ready = ready;
            node.allocated = allocated;
            node.task_count = task_count;
            node.label_counts = label_counts;
        }
        let total = self.cluster.nodes.len();
        if fits_idle {
            return Unfit { reason: format!("0/{total} nodes fit: {}", render(now, |why| why.to_string())), wait: Wait::Room };
        }
        let largest = |f: fn(&NodeSnapshot) -> u32| self.cluster.nodes.iter().map(f).max().unwrap_or(0);
        let (cpu, memory) = (largest(|n| n.capacity.cpu_millicores), largest(|n| n.capacity.memory_mib));
        let detail = render(idle, |why| match why {
            Rejection::InsufficientCpu => format!(
                "too little cpu in all (the task asks {} millicores; the largest node has {cpu})",
                task.resources.cpu_millicores
            ),
            Rejection::InsufficientMemory => format!(
                "too little memory in all (the task asks {} MiB; the largest node has {memory})",
                task.resources.memory_mib
            ),
            Rejection::TooManyTasks => "take no tasks at all (task limit 0)".into(),
            other => other.to_string(),
        });
        Unfit { reason: format!("no node can ever run this task (0/{total} fit even with nothing running): {detail}"), wait: Wait::NeverFits }
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
