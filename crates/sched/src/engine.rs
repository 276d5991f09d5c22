//! The placement engine: picks each task's profile, walks candidate nodes
//! in the profile's order through its filters, scores the first feasible
//! ones and takes the best; explains every task that fits nowhere.

use crate::cluster::{CandidateOrder, NodeIndex};
use crate::fairness;
pub use crate::model::NodeScore;
use crate::model::{Hold, NodeSnapshot, PendingTask, Placement, PlacementPlan, Rejection, Unfit, Unplaced, Wait};
use crate::profile::{self, BatchOrder, ConfigError, Profile, SchedulerConfig};
use crate::quota::QuotaLedger;
use crate::registry::Registry;
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
    /// The built-in profiles plus those in `config`, with the in-tree plugins.
    pub fn new(config: &SchedulerConfig) -> Result<Engine, ConfigError> {
        Engine::with_registry(config, &Registry::builtin())
    }

    /// The built-in profiles plus those in `config`, whose plugins come
    /// from `registry` (the in-tree ones and any added to it).
    pub fn with_registry(config: &SchedulerConfig, registry: &Registry) -> Result<Engine, ConfigError> {
        let mut profiles = profile::builtins(registry);
        for (name, profile_config) in &config.profiles {
            profiles.insert(name.clone(), profile::compile(name, profile_config, registry)?);
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
        let mut keys: Vec<String> = self.profiles.values().flat_map(|p| p.scorers.iter().flat_map(|(s, _)| s.topology_keys())).collect();
        keys.sort();
        keys.dedup();
        Placer {
            engine: self,
            cluster: NodeIndex::new(nodes, &keys, seed),
            infeasible: HashMap::new(),
            record_scores: false,
            explain: true,
            scores: Vec::new(),
        }
    }

    /// Orders a batch: priorities, then weighted fair share across projects.
    pub fn order(&self, tasks: Vec<PendingTask>, nodes: &[NodeSnapshot], usage: &HashMap<String, Resources>) -> Vec<PendingTask> {
        fairness::order(tasks, usage, total_capacity(nodes), &self.weights, |t| self.profile_for(t).batch_order == BatchOrder::LargestFirst)
    }

    /// The fair order over `nodes` one task at a time, for a caller that
    /// reads its queue lazily ([`fairness::FairMerge`]; the same order as
    /// [`Engine::order`] unless a profile packs largest first, which needs
    /// a project's whole batch: see [`Engine::sorts_batch_of`]).
    pub fn fair_merge<'a>(&'a self, nodes: &[NodeSnapshot], usage: &'a HashMap<String, Resources>) -> fairness::FairMerge<'a> {
        fairness::FairMerge::new(usage, total_capacity(nodes), &self.weights)
    }

    /// Whether `task`'s profile sorts its batch (largest first) before
    /// placing it: a lazy reader must then read the whole batch.
    pub fn sorts_batch_of(&self, task: &PendingTask) -> bool {
        self.profile_for(task).batch_order == BatchOrder::LargestFirst
    }

    /// Orders and places a batch against `nodes`: the whole pass in one call.
    pub fn place_batch(
        &self,
        nodes: Vec<NodeSnapshot>,
        tasks: Vec<PendingTask>,
        usage: &HashMap<String, Resources>,
        seed: u64,
    ) -> PlacementPlan {
        self.pass(nodes, usage.clone(), QuotaLedger::default(), seed).place(tasks)
    }

    /// A pass over `nodes` that may place several batches in turn (pages
    /// of a long queue), each against the nodes as the earlier ones left
    /// them. `usage` is what each project holds (for fair share), `quota`
    /// what counts against project quotas.
    pub fn pass(&self, nodes: Vec<NodeSnapshot>, usage: HashMap<String, Resources>, quota: QuotaLedger, seed: u64) -> Pass<'_> {
        let capacity = total_capacity(&nodes);
        Pass { placer: self.placer(nodes, seed), usage, quota, capacity, bound: HashMap::new() }
    }
}

/// The engine a running scheduler uses, replaced whole when its
/// configuration is reloaded: each pass takes the engine of the moment
/// ([`SharedEngine::get`]) and keeps it to the end, so every task of a
/// pass is placed by one version.
#[derive(Clone)]
pub struct SharedEngine(std::sync::Arc<std::sync::RwLock<std::sync::Arc<Engine>>>);

impl SharedEngine {
    /// Shares `engine`.
    pub fn new(engine: Engine) -> SharedEngine {
        SharedEngine(std::sync::Arc::new(std::sync::RwLock::new(std::sync::Arc::new(engine))))
    }

    /// The engine now.
    pub fn get(&self) -> std::sync::Arc<Engine> {
        match self.0.read() {
            Ok(engine) => engine.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts `engine` in place for the passes that start from now on.
    pub fn replace(&self, engine: Engine) {
        let engine = std::sync::Arc::new(engine);
        match self.0.write() {
            Ok(mut slot) => *slot = engine,
            Err(poisoned) => *poisoned.into_inner() = engine,
        }
    }
}

impl Default for SharedEngine {
    fn default() -> SharedEngine {
        SharedEngine::new(Engine::default())
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
    /// Node-scoped volumes (project, name) bound by placements of this
    /// pass: later tasks that mount them go to the same node.
    bound: HashMap<(String, String), String>,
}

impl Pass<'_> {
    /// Keeps, for each task placed, how its best candidate nodes scored
    /// (`PlacementPlan::scores`).
    pub fn record_scores(&mut self) {
        self.placer.record_scores = true;
    }

    /// Orders a batch (priority, then fair share) and places it: quota
    /// first, then a node.
    pub fn place(&mut self, tasks: Vec<PendingTask>) -> PlacementPlan {
        let engine = self.placer.engine;
        let ordered = fairness::order(tasks, &self.usage, self.capacity, &engine.weights, |t| {
            engine.profile_for(t).batch_order == BatchOrder::LargestFirst
        });
        let mut plan = PlacementPlan::default();
        for task in &ordered {
            // A volume an earlier placement of this pass bound pins this task too.
            let pinned;
            let task = if task.volumes.iter().any(|v| v.node.is_none() && self.bound.contains_key(&(task.project.clone(), v.name.clone())))
            {
                let mut t = task.clone();
                for v in &mut t.volumes {
                    if v.node.is_none() {
                        v.node = self.bound.get(&(t.project.clone(), v.name.clone())).cloned();
                    }
                }
                pinned = t;
                &pinned
            } else {
                task
            };
            if let Some(hold) = self.quota.check(task) {
                plan.unplaced.push(Unplaced { task_id: task.id, hold: Hold::Quota(hold) });
                continue;
            }
            match self.placer.place(task) {
                Ok(node) => {
                    if self.placer.record_scores {
                        plan.scores.push((task.id, self.placer.take_scores()));
                    }
                    self.quota.charge(task);
                    let used = self.usage.entry(task.project.clone()).or_insert(Resources { cpu_millicores: 0, memory_mib: 0 });
                    used.cpu_millicores = used.cpu_millicores.saturating_add(task.resources.cpu_millicores);
                    used.memory_mib = used.memory_mib.saturating_add(task.resources.memory_mib);
                    let node_id = self.placer.cluster.nodes[node].id.clone();
                    for v in task.volumes.iter().filter(|v| v.node.is_none()) {
                        self.bound.insert((task.project.clone(), v.name.clone()), node_id.clone());
                    }
                    plan.placements.push(Placement { task_id: task.id, node_id });
                }
                Err(unfit) => plan.unplaced.push(Unplaced { task_id: task.id, hold: Hold::Unfit(unfit) }),
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
    gpus: u32,
    devices: Vec<String>,
    volumes: Vec<crate::model::NodeVolume>,
    seen_by_plugins: Option<(String, i32)>,
}

/// Places tasks one at a time against a cluster it updates.
pub struct Placer<'e> {
    engine: &'e Engine,
    /// The nodes with every placement so far applied.
    pub cluster: NodeIndex,
    infeasible: HashMap<Shape, Unfit>,
    /// Keep the scores of the best candidates of each placement.
    pub record_scores: bool,
    /// Say why a task fits nowhere, node by node (a simulator that only
    /// needs whether it fits turns this off: the counts take two walks
    /// over every node).
    pub explain: bool,
    scores: Vec<NodeScore>,
}

/// Candidates kept per placement when scores are recorded.
const SCORES_KEPT: usize = 5;

/// The largest window of nodes a batched filter sees in one call while
/// candidates are sought.
const MAX_WINDOW: usize = 4096;

/// For each node, the first filter of the profile (in its order) that
/// rejects `task` there, or `None` where every filter accepts. Batched
/// filters are called once with every node still in the running.
fn first_rejections(task: &PendingTask, profile: &Profile, nodes: &[NodeSnapshot]) -> Vec<Option<Rejection>> {
    let mut verdict: Vec<Option<Rejection>> = vec![None; nodes.len()];
    let mut alive: Vec<usize> = (0..nodes.len()).collect();
    let mut batch = Vec::new();
    for filter in &profile.filters {
        if alive.is_empty() {
            break;
        }
        if filter.batched() {
            let refs: Vec<&NodeSnapshot> = alive.iter().map(|&i| &nodes[i]).collect();
            batch.clear();
            filter.filter_batch(task, &refs, &mut batch);
            let missing = Rejection::Other { filter: filter.name().to_string(), reason: "gave no verdict".into() };
            let mut answers = batch.drain(..);
            alive.retain(|&i| match answers.next().unwrap_or(Err(missing.clone())) {
                Ok(()) => true,
                Err(why) => {
                    verdict[i] = Some(why);
                    false
                }
            });
        } else {
            alive.retain(|&i| match filter.filter(task, &nodes[i]) {
                Ok(()) => true,
                Err(why) => {
                    verdict[i] = Some(why);
                    false
                }
            });
        }
    }
    verdict
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
            gpus: task.gpus,
            devices: task.devices.clone(),
            volumes: task.volumes.clone(),
            // Run-time plugins see the image and priority too: their
            // verdicts are remembered per shape only with them.
            seen_by_plugins: profile.batched().then(|| (task.image.clone(), task.priority)),
        };
        if let Some(reason) = self.infeasible.get(&shape) {
            return Err(reason.clone());
        }
        let start = (crate::rng::mix(self.cluster.seed ^ (task.id.0 .0 as u64)) % (self.cluster.nodes.len().max(1) as u64)) as usize;
        // No node has that much CPU or memory free: no candidate to seek.
        let (cpu, memory) = self.cluster.most_free();
        let hopeless = (task.resources.cpu_millicores > cpu || task.resources.memory_mib > memory)
            && profile.filters.iter().any(|f| f.name() == crate::plugins::resources::NAME && !f.batched());
        let candidates = if hopeless { Vec::new() } else { self.feasible_candidates(task, profile, start) };
        let scored = match self.score_candidates(task, profile, &candidates) {
            Ok(scored) => scored,
            Err(failure) => {
                // A scorer that failed places nothing on a guess: the task
                // waits, naming the plugin and what it did.
                let unfit = Unfit {
                    nodes: self.cluster.nodes.len(),
                    rejections: vec![(failure, candidates.len())],
                    wait: Wait::Room,
                    asks: task.resources,
                    largest: Resources { cpu_millicores: 0, memory_mib: 0 },
                    asks_gpus: task.gpus,
                };
                self.infeasible.insert(shape, unfit.clone());
                return Err(unfit);
            }
        };
        // Highest score; on a tie, the candidate visited first.
        let best = candidates.iter().zip(&scored).fold(None, |best: Option<(usize, f64)>, (&i, &score)| match best {
            Some((_, b)) if b >= score => best,
            _ => Some((i, score)),
        });
        match best {
            Some((i, _)) => {
                self.cluster.assign(i, task);
                Ok(i)
            }
            None => {
                let unfit = if self.explain {
                    self.explain(task, profile)
                } else {
                    Unfit {
                        nodes: self.cluster.nodes.len(),
                        rejections: Vec::new(),
                        wait: Wait::Room,
                        asks: task.resources,
                        largest: Resources { cpu_millicores: 0, memory_mib: 0 },
                        asks_gpus: task.gpus,
                    }
                };
                self.infeasible.insert(shape, unfit.clone());
                Err(unfit)
            }
        }
    }

    /// The first `profile.candidates` nodes, in the profile's order, that
    /// every filter accepts. Batched filters (run-time plugins) see the
    /// nodes the others accepted in windows that double in size (starting
    /// at the number of candidates wanted), so that each crosses its
    /// boundary a few times per task instead of once per node; the nodes
    /// chosen are the same as if every filter ran node by node.
    fn feasible_candidates(&self, task: &PendingTask, profile: &Profile, start: usize) -> Vec<usize> {
        let want = profile.candidates;
        let mut candidates: Vec<usize> = Vec::with_capacity(want);
        let nodes = &self.cluster.nodes;
        if !profile.filters.iter().any(|f| f.batched()) {
            for i in self.cluster.candidates(profile.order, task, start) {
                if profile.filters.iter().all(|f| f.filter(task, &nodes[i]).is_ok()) {
                    candidates.push(i);
                    if candidates.len() >= want {
                        break;
                    }
                }
            }
            return candidates;
        }
        let mut window: Vec<usize> = Vec::with_capacity(want);
        let mut window_size = want.max(1);
        let mut verdicts = Vec::new();
        let mut flush = |window: &mut Vec<usize>, candidates: &mut Vec<usize>| {
            for filter in profile.filters.iter().filter(|f| f.batched()) {
                if window.is_empty() {
                    break;
                }
                let refs: Vec<&NodeSnapshot> = window.iter().map(|&i| &nodes[i]).collect();
                verdicts.clear();
                filter.filter_batch(task, &refs, &mut verdicts);
                let mut verdict = verdicts.iter();
                // A plugin that answered too few verdicts keeps none of the rest.
                window.retain(|_| matches!(verdict.next(), Some(Ok(()))));
            }
            for &i in window.iter() {
                if candidates.len() < want {
                    candidates.push(i);
                }
            }
            window.clear();
        };
        for i in self.cluster.candidates(profile.order, task, start) {
            if profile.filters.iter().filter(|f| !f.batched()).all(|f| f.filter(task, &nodes[i]).is_ok()) {
                window.push(i);
                if window.len() >= window_size {
                    flush(&mut window, &mut candidates);
                    if candidates.len() >= want {
                        return candidates;
                    }
                    window_size = (window_size * 2).min(MAX_WINDOW);
                }
            }
        }
        flush(&mut window, &mut candidates);
        candidates
    }

    /// Each candidate's total score (weight times each scorer's score, in
    /// the profile's order), keeping the best ones' parts when scores are
    /// recorded. Batched scorers score all candidates in one call.
    fn score_candidates(&mut self, task: &PendingTask, profile: &Profile, candidates: &[usize]) -> Result<Vec<f64>, Rejection> {
        let view = self.cluster.view();
        let nodes = &self.cluster.nodes;
        let mut totals = vec![0.0f64; candidates.len()];
        let mut parts: Vec<Vec<(String, f64)>> = if self.record_scores { vec![Vec::new(); candidates.len()] } else { Vec::new() };
        let mut batch = Vec::new();
        for (scorer, weight) in &profile.scorers {
            if scorer.batched() {
                if candidates.is_empty() {
                    continue;
                }
                let refs: Vec<&NodeSnapshot> = candidates.iter().map(|&i| &nodes[i]).collect();
                batch.clear();
                scorer.score_batch(task, &refs, &view, &mut batch)?;
                if batch.len() != candidates.len() {
                    return Err(Rejection::Other {
                        filter: scorer.name().to_string(),
                        reason: format!("answered {} scores for {} nodes", batch.len(), candidates.len()),
                    });
                }
            } else {
                batch.clear();
                batch.extend(candidates.iter().map(|&i| scorer.score(task, &nodes[i], &view)));
            }
            for (k, score) in batch.iter().enumerate() {
                let weighted = weight * score;
                totals[k] += weighted;
                if let Some(p) = parts.get_mut(k) {
                    p.push((scorer.name().to_string(), weighted));
                }
            }
        }
        if self.record_scores {
            let mut recorded: Vec<NodeScore> = candidates
                .iter()
                .zip(parts)
                .zip(&totals)
                .map(|((&i, scores), &total)| NodeScore { node_id: nodes[i].id.clone(), total, scores })
                .collect();
            recorded.sort_by(|a, b| b.total.total_cmp(&a.total));
            recorded.truncate(SCORES_KEPT);
            self.scores = recorded;
        }
        Ok(totals)
    }

    /// Counts, per reason, the nodes that turned the task down; when no
    /// node would take it even with nothing running on it, counts those
    /// reasons instead ([`Wait::NeverFits`]).
    fn explain(&mut self, task: &PendingTask, profile: &Profile) -> Unfit {
        let mut now: HashMap<Rejection, usize> = HashMap::new();
        for why in first_rejections(task, profile, &self.cluster.nodes).into_iter().flatten() {
            *now.entry(why).or_default() += 1;
        }
        let mut idle: HashMap<Rejection, usize> = HashMap::new();
        let mut fits_idle = self.cluster.nodes.is_empty();
        if !fits_idle {
            // The nodes as they would be with nothing running and ready:
            // taken apart in place (no copy), put back right after.
            let saved: Vec<_> = self
                .cluster
                .nodes
                .iter_mut()
                .map(|node| {
                    (
                        std::mem::replace(&mut node.ready, true),
                        std::mem::replace(&mut node.allocated, Resources { cpu_millicores: 0, memory_mib: 0 }),
                        std::mem::replace(&mut node.task_count, 0),
                        std::mem::replace(&mut node.gpus_allocated, 0),
                        std::mem::take(&mut node.label_counts),
                    )
                })
                .collect();
            for why in first_rejections(task, profile, &self.cluster.nodes) {
                match why {
                    Some(why) => *idle.entry(why).or_default() += 1,
                    None => fits_idle = true,
                }
            }
            for (node, (ready, allocated, task_count, gpus_allocated, label_counts)) in self.cluster.nodes.iter_mut().zip(saved) {
                node.ready = ready;
                node.allocated = allocated;
                node.task_count = task_count;
                node.gpus_allocated = gpus_allocated;
                node.label_counts = label_counts;
            }
        }
        let largest = |f: fn(&NodeSnapshot) -> u32| self.cluster.nodes.iter().map(f).max().unwrap_or(0);
        let largest = Resources { cpu_millicores: largest(|n| n.capacity.cpu_millicores), memory_mib: largest(|n| n.capacity.memory_mib) };
        let (counts, wait) = if fits_idle { (now, Wait::Room) } else { (idle, Wait::NeverFits) };
        let mut rejections: Vec<(Rejection, usize)> = counts.into_iter().collect();
        rejections.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Unfit { nodes: self.cluster.nodes.len(), rejections, wait, asks: task.resources, largest, asks_gpus: task.gpus }
    }

    /// The best candidates of the last placement, best first, when
    /// `record_scores` is on.
    pub fn take_scores(&mut self) -> Vec<NodeScore> {
        std::mem::take(&mut self.scores)
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
