//! Scale-up planning for autoscaled pools: how many new machines of each
//! pool the waiting tasks need. The tasks are placed by the real engine,
//! with their own profiles, first on the nodes there are (and the machines
//! being made, as empty nodes), then, for what is left, on candidate
//! machines of each pool one at a time: a candidate that takes no task is
//! not made (the Kubernetes cluster-autoscaler's binpacking estimate, with
//! Shepherd's own scheduler as the estimator). Pure like the rest of the
//! crate: the server's autoscaler and the simulator both call it.

use crate::model::{Hold, NodeSnapshot, PendingTask, Wait};
use crate::{Engine, QuotaLedger};
use shepherd_core::{Resources, TaskId};
use std::collections::{BTreeMap, HashMap, HashSet};

/// A pool that may grow, as the planner sees it.
#[derive(Debug, Clone)]
pub struct PoolOption {
    pub name: String,
    /// A new machine of the pool as a node: ready and empty, with the
    /// shape's capacity, task limit, labels and pool.
    pub template: NodeSnapshot,
    /// How many machines may be made now (its max, its creates in flight,
    /// cooldown and backoff all counted in).
    pub room: u32,
    /// Why `room` is 0 or small, for the reasons of the tasks it leaves
    /// waiting ("at its max of 3 machines").
    pub limited_by: Option<String>,
}

/// What the planner decided for one waiting task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScaleNote {
    /// It fits a node there is: nothing to make.
    Fits,
    /// It fits a machine of this pool being made: it waits for that one.
    Coming { pool: String },
    /// It waits for a new machine of this pool.
    NewMachine { pool: String },
    /// A machine of this pool could run it, but the pool may not grow now.
    Limited { pool: String, why: String },
    /// No pool's machines could run it, even empty: why, per pool.
    NoShape { pools: Vec<(String, String)> },
    /// Held by its project's quota (new machines would not help).
    Quota,
}

impl std::fmt::Display for ScaleNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScaleNote::Fits => f.write_str("fits the nodes there are"),
            ScaleNote::Coming { pool } => write!(f, "a new machine of pool {pool} is being made for it"),
            ScaleNote::NewMachine { pool } => write!(f, "a new machine of pool {pool} is being made for it"),
            ScaleNote::Limited { pool, why } => write!(f, "pool {pool} could run it but may not grow now: {why}"),
            ScaleNote::NoShape { pools } if pools.is_empty() => f.write_str("no autoscaled pool"),
            ScaleNote::NoShape { pools } => {
                let why: Vec<String> = pools.iter().map(|(pool, why)| format!("{pool}: {why}")).collect();
                write!(f, "no autoscaled pool's machine could ever run it ({})", why.join("; "))
            }
            ScaleNote::Quota => f.write_str("held by its project's quota"),
        }
    }
}

/// The plan: machines to make per pool, and a note per waiting task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScaleUp {
    /// New machines per pool (pools that need none are left out).
    pub create: BTreeMap<String, u32>,
    pub notes: HashMap<TaskId, ScaleNote>,
}

/// Plans a scale-up. `nodes`: the cluster as the scheduler sees it;
/// `coming`: machines being made, as the empty nodes they will be; `usage`
/// and `quota` as for a scheduling pass; `tasks`: the queued tasks ready to
/// run.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    engine: &Engine,
    mut nodes: Vec<NodeSnapshot>,
    coming_nodes: Vec<NodeSnapshot>,
    usage: &HashMap<String, Resources>,
    quota: QuotaLedger,
    tasks: Vec<PendingTask>,
    pools: &[PoolOption],
    seed: u64,
) -> ScaleUp {
    let mut out = ScaleUp::default();
    let by_id: HashMap<TaskId, PendingTask> = tasks.iter().map(|t| (t.id, t.clone())).collect();
    let coming: HashMap<String, String> =
        coming_nodes.iter().map(|n| (n.id.clone(), n.pool.clone().unwrap_or_default())).collect::<HashMap<_, _>>();
    nodes.extend(coming_nodes);
    let now = engine.pass(nodes, usage.clone(), quota, seed).place(tasks);
    for placed in &now.placements {
        let note = match coming.get(&placed.node_id) {
            Some(pool) => ScaleNote::Coming { pool: pool.clone() },
            None => ScaleNote::Fits,
        };
        out.notes.insert(placed.task_id, note);
    }
    // Tasks in queue order (the pass's), the quota's aside.
    let mut waiting: Vec<PendingTask> = Vec::new();
    for unplaced in now.unplaced {
        match unplaced.hold {
            Hold::Quota(_) => {
                out.notes.insert(unplaced.task_id, ScaleNote::Quota);
            }
            Hold::Unfit(_) => waiting.extend(by_id.get(&unplaced.task_id).cloned()),
        }
    }
    let mut no_shape: HashMap<TaskId, Vec<(String, String)>> = HashMap::new();
    let mut limited: HashMap<TaskId, (String, String)> = HashMap::new();
    for pool in pools {
        if waiting.is_empty() {
            break;
        }
        // Which tasks a machine of this pool could run at all.
        let probe = engine.place_batch(vec![pool.template.clone()], waiting.clone(), usage, seed);
        let never: HashMap<TaskId, String> = probe
            .unplaced
            .into_iter()
            .filter(|u| u.wait() == Wait::NeverFits)
            .map(|u| (u.task_id, crate::Hold::to_string(&u.hold)))
            .collect();
        let (mut fitting, rest): (Vec<PendingTask>, Vec<PendingTask>) = waiting.into_iter().partition(|t| !never.contains_key(&t.id));
        for task in &rest {
            no_shape.entry(task.id).or_default().push((pool.name.clone(), never[&task.id].clone()));
        }
        // One candidate machine at a time, while candidates take tasks.
        let mut made = 0;
        while made < pool.room && !fitting.is_empty() {
            let mut candidate = pool.template.clone();
            candidate.id = format!("{}#new{made}", pool.template.id);
            let placed = engine.place_batch(vec![candidate], fitting.clone(), usage, seed.wrapping_add(u64::from(made)));
            if placed.placements.is_empty() {
                break;
            }
            let took: HashSet<TaskId> = placed.placements.iter().map(|p| p.task_id).collect();
            for id in &took {
                out.notes.insert(*id, ScaleNote::NewMachine { pool: pool.name.clone() });
            }
            fitting.retain(|t| !took.contains(&t.id));
            made += 1;
        }
        if made > 0 {
            out.create.insert(pool.name.clone(), made);
        }
        let why = pool.limited_by.clone().unwrap_or_else(|| format!("{made} new machines are all it may make now"));
        for task in &fitting {
            limited.entry(task.id).or_insert_with(|| (pool.name.clone(), why.clone()));
        }
        // What this pool could not take, a later pool may.
        waiting = fitting.into_iter().chain(rest).collect();
    }
    for task in waiting {
        let note = match limited.remove(&task.id) {
            Some((pool, why)) => ScaleNote::Limited { pool, why },
            None => ScaleNote::NoShape { pools: no_shape.remove(&task.id).unwrap_or_default() },
        };
        out.notes.insert(task.id, note);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn res(cpu: u32, mem: u32) -> Resources {
        Resources { cpu_millicores: cpu, memory_mib: mem }
    }

    fn template(pool: &str, cpu: u32, mem: u32) -> NodeSnapshot {
        let mut node = NodeSnapshot::new(format!("{pool}-template"), res(cpu, mem));
        node.pool = Some(pool.to_string());
        node.labels = BTreeMap::from([("pool".to_string(), pool.to_string())]);
        node
    }

    fn tasks(n: usize, pool: &str, cpu: u32, mem: u32) -> Vec<PendingTask> {
        let mut gen = ulid::Generator::new();
        (0..n)
            .map(|_| {
                let mut t = PendingTask::new(TaskId::generate(&mut gen, shepherd_core::Timestamp(1)), res(cpu, mem));
                t.pool = Some(pool.to_string());
                t
            })
            .collect()
    }

    fn option(pool: &str, room: u32) -> PoolOption {
        PoolOption { name: pool.into(), template: template(pool, 2000, 4096), room, limited_by: None }
    }

    #[test]
    fn exactly_as_many_machines_as_the_tasks_fill() {
        let engine = Engine::default();
        // 60 tasks of 100 millicores: 20 per 2-core machine, so three.
        let plan = super::plan(
            &engine,
            Vec::new(),
            Vec::new(),
            &HashMap::new(),
            QuotaLedger::default(),
            tasks(60, "burst", 100, 64),
            &[option("burst", 10)],
            7,
        );
        assert_eq!(plan.create, BTreeMap::from([("burst".to_string(), 3)]));
        assert_eq!(plan.notes.len(), 60);
        assert!(plan.notes.values().all(|n| *n == ScaleNote::NewMachine { pool: "burst".into() }));
        // 61 need a fourth.
        let plan = plan_for(61, 10);
        assert_eq!(plan.create["burst"], 4);
    }

    fn plan_for(n: usize, room: u32) -> ScaleUp {
        super::plan(
            &Engine::default(),
            Vec::new(),
            Vec::new(),
            &HashMap::new(),
            QuotaLedger::default(),
            tasks(n, "burst", 100, 64),
            &[option("burst", room)],
            1,
        )
    }

    #[test]
    fn never_more_than_the_room_and_the_rest_say_why() {
        let mut pools = vec![option("burst", 2)];
        pools[0].limited_by = Some("at its max of 2 machines".into());
        let plan = super::plan(
            &Engine::default(),
            Vec::new(),
            Vec::new(),
            &HashMap::new(),
            QuotaLedger::default(),
            tasks(60, "burst", 100, 64),
            &pools,
            1,
        );
        assert_eq!(plan.create["burst"], 2);
        let limited: Vec<&ScaleNote> = plan.notes.values().filter(|n| matches!(n, ScaleNote::Limited { .. })).collect();
        assert_eq!(limited.len(), 20);
        assert!(limited[0].to_string().contains("at its max of 2 machines"), "{}", limited[0]);
        assert!(plan_for(10, 0).create.is_empty());
    }

    #[test]
    fn what_fits_the_nodes_there_are_makes_nothing() {
        let mut node = template("burst", 2000, 4096);
        node.id = "n1".into();
        let plan = super::plan(
            &Engine::default(),
            vec![node],
            Vec::new(),
            &HashMap::new(),
            QuotaLedger::default(),
            tasks(20, "burst", 100, 64),
            &[option("burst", 5)],
            1,
        );
        assert!(plan.create.is_empty());
        assert!(plan.notes.values().all(|n| *n == ScaleNote::Fits));
        // 25: the node takes 20, one new machine the other 5.
        let mut node = template("burst", 2000, 4096);
        node.id = "n1".into();
        let plan = super::plan(
            &Engine::default(),
            vec![node],
            Vec::new(),
            &HashMap::new(),
            QuotaLedger::default(),
            tasks(25, "burst", 100, 64),
            &[option("burst", 5)],
            1,
        );
        assert_eq!(plan.create["burst"], 1);
    }

    #[test]
    fn a_task_no_shape_fits_makes_nothing_and_says_why() {
        let mut all = tasks(3, "burst", 100, 64);
        all.extend(tasks(2, "burst", 100, 100_000));
        let plan =
            super::plan(&Engine::default(), Vec::new(), Vec::new(), &HashMap::new(), QuotaLedger::default(), all, &[option("burst", 3)], 1);
        assert_eq!(plan.create["burst"], 1, "only the small tasks count");
        let never: Vec<String> = plan.notes.values().filter(|n| matches!(n, ScaleNote::NoShape { .. })).map(|n| n.to_string()).collect();
        assert_eq!(never.len(), 2);
        assert!(never[0].contains("burst") && never[0].contains("memory"), "{}", never[0]);
        // Only unfittable tasks: nothing at all.
        let plan = super::plan(
            &Engine::default(),
            Vec::new(),
            Vec::new(),
            &HashMap::new(),
            QuotaLedger::default(),
            tasks(4, "burst", 100, 100_000),
            &[option("burst", 3)],
            1,
        );
        assert!(plan.create.is_empty());
        // A task of another pool: no autoscaled pool's machine would take it.
        let plan = super::plan(
            &Engine::default(),
            Vec::new(),
            Vec::new(),
            &HashMap::new(),
            QuotaLedger::default(),
            tasks(1, "gpu", 100, 64),
            &[option("burst", 3)],
            1,
        );
        assert!(plan.create.is_empty());
        assert!(plan.notes.values().next().unwrap().to_string().contains("pool"));
    }

    #[test]
    fn tasks_that_fit_machines_being_made_wait_for_them() {
        let mut coming = template("burst", 2000, 4096);
        coming.id = "m-1".into();
        let plan = super::plan(
            &Engine::default(),
            Vec::new(),
            vec![coming],
            &HashMap::new(),
            QuotaLedger::default(),
            tasks(25, "burst", 100, 64),
            &[option("burst", 5)],
            1,
        );
        assert_eq!(plan.create["burst"], 1, "the coming machine takes 20");
        let coming = plan.notes.values().filter(|n| **n == ScaleNote::Coming { pool: "burst".into() }).count();
        assert_eq!(coming, 20);
    }

    #[test]
    fn quota_holds_make_nothing() {
        let all = tasks(10, "burst", 100, 64);
        let limits = HashMap::from([("default".to_string(), shepherd_core::ProjectLimits { max_running: Some(0), ..Default::default() })]);
        let quota = QuotaLedger::new(HashMap::new(), limits);
        let plan = super::plan(&Engine::default(), Vec::new(), Vec::new(), &HashMap::new(), quota, all, &[option("burst", 3)], 1);
        assert!(plan.create.is_empty());
        assert!(plan.notes.values().all(|n| *n == ScaleNote::Quota));
    }

    #[test]
    fn pools_are_tried_in_order_and_each_takes_what_it_can() {
        let mut all = tasks(30, "burst", 100, 64);
        all.extend(tasks(5, "big", 1500, 64));
        let pools = [option("burst", 3), option("big", 3)];
        let plan = super::plan(&Engine::default(), Vec::new(), Vec::new(), &HashMap::new(), QuotaLedger::default(), all, &pools, 1);
        assert_eq!(plan.create, BTreeMap::from([("burst".to_string(), 2), ("big".to_string(), 3)]));
    }
}
