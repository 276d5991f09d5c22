//! The tasks of one replayed pass in the server's order: at most
//! [`PASS_TASKS`](super::PASS_TASKS) read from the projects' queues taking
//! turns (each in its own order: priority, then arrival), ordered by fair
//! share. Read lazily: the tasks a pass never reaches (it stops after
//! [`PASS_MISSES`](super::PASS_MISSES) misses in a row, which on a full
//! cluster is after a few hundred) are never taken from their queues, so
//! a contended pass costs what it tries, not its 10,000. The order is the
//! one [`Engine::order`] gives the same batch (`FairMerge` is that order
//! one task at a time); while a task whose profile sorts its batch
//! (largest first) waits, a pass reads its whole batch.

use shepherd_core::Resources;
use shepherd_sched::fairness::FairMerge;
use shepherd_sched::{Engine, NodeSnapshot, PendingTask};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};

/// Each project's queue: (priority, Reverse(arrival sequence)).
pub(super) type Queues = BTreeMap<String, BinaryHeap<(i32, Reverse<u64>)>>;

pub(super) enum PassOrder<'a> {
    /// The fair order read lazily; how many each project (in name order)
    /// may still give to this pass.
    Lazy { merge: FairMerge<'a>, allot: Vec<(String, usize)> },
    /// The whole batch taken and ordered at once; what is left of it.
    Batch(VecDeque<u64>),
}

impl<'a> PassOrder<'a> {
    /// A pass over `queues` (at most `limit` tasks), with `usage` what each
    /// project holds and `nodes` the cluster.
    pub fn new(
        engine: &'a Engine,
        nodes: &[NodeSnapshot],
        usage: &'a HashMap<String, Resources>,
        queues: &mut Queues,
        task: impl Fn(u64) -> Option<PendingTask>,
        limit: usize,
        whole: bool,
    ) -> PassOrder<'a> {
        if whole {
            let batch = take_fairly(queues, limit);
            let batch: Vec<PendingTask> = batch.iter().filter_map(|k| task(*k)).collect();
            let ordered = engine.order(batch, nodes, usage);
            return PassOrder::Batch(ordered.iter().map(|t| t.id.0 .0 as u64).collect());
        }
        let lens: Vec<usize> = queues.values().map(BinaryHeap::len).collect();
        let allot = allotment(&lens, limit).into_iter().zip(queues.keys()).map(|(n, p)| (p.clone(), n)).collect();
        PassOrder::Lazy { merge: engine.fair_merge(nodes, usage), allot }
    }

    /// The next task's key, taken from its queue.
    pub fn next(&mut self, queues: &mut Queues, resources: impl Fn(u64) -> Option<Resources>) -> Option<u64> {
        match self {
            PassOrder::Batch(left) => left.pop_front(),
            PassOrder::Lazy { merge, allot } => {
                let heads: Vec<(usize, &str, i32)> = allot
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, n))| *n > 0)
                    .filter_map(|(i, (p, _))| queues.get(p).and_then(BinaryHeap::peek).map(|(prio, _)| (i, p.as_str(), *prio)))
                    .collect();
                let k = merge.pick(heads.iter().map(|(_, p, prio)| (*p, *prio)))?;
                let i = heads[k].0;
                let (_, Reverse(key)) = queues.get_mut(&allot[i].0)?.pop()?;
                allot[i].1 -= 1;
                if let Some(resources) = resources(key) {
                    merge.took(&allot[i].0, resources);
                }
                Some(key)
            }
        }
    }

    /// The keys taken for the pass and never reached (the batch's rest).
    pub fn untaken(self) -> Vec<u64> {
        match self {
            PassOrder::Batch(left) => left.into(),
            PassOrder::Lazy { .. } => Vec::new(),
        }
    }
}

/// How many of each queue (of `lens`) a pass of at most `limit` takes,
/// the queues taking one each in turn, in order: all of each while they
/// last, a level `c` every queue gets up to, and one more for the first
/// of the longer ones while room is left.
pub(super) fn allotment(lens: &[usize], limit: usize) -> Vec<usize> {
    if lens.iter().sum::<usize>() <= limit {
        return lens.to_vec();
    }
    let filled = |c: usize| lens.iter().map(|l| (*l).min(c)).sum::<usize>();
    let (mut low, mut high) = (0usize, lens.iter().copied().max().unwrap_or(0));
    while low < high {
        let mid = (low + high).div_ceil(2);
        if filled(mid) <= limit {
            low = mid;
        } else {
            high = mid - 1;
        }
    }
    let mut left = limit - filled(low);
    lens.iter()
        .map(|l| {
            let mut n = (*l).min(low);
            if *l > low && left > 0 {
                n += 1;
                left -= 1;
            }
            n
        })
        .collect()
}

/// Up to `limit` queued tasks, the projects taking turns, each in its own
/// order (priority, then arrival).
pub(super) fn take_fairly(queues: &mut Queues, limit: usize) -> Vec<u64> {
    let mut out = Vec::new();
    let mut projects: VecDeque<String> = queues.iter().filter(|(_, q)| !q.is_empty()).map(|(p, _)| p.clone()).collect();
    while out.len() < limit {
        let Some(project) = projects.pop_front() else { break };
        let Some(queue) = queues.get_mut(&project) else { continue };
        if let Some((_, Reverse(key))) = queue.pop() {
            out.push(key);
            if !queue.is_empty() {
                projects.push_back(project);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The allotment is what taking turns takes.
    #[test]
    fn the_allotment_is_what_taking_turns_takes() {
        for (lens, limit) in [
            (vec![5, 1, 9], 10),
            (vec![5, 1, 9], 15),
            (vec![5, 1, 9], 100),
            (vec![0, 3, 3], 4),
            (vec![10_000, 10_000, 3], 10_000),
            (vec![7], 3),
        ] {
            let mut queues: Queues = BTreeMap::new();
            let mut key = 0;
            for (i, n) in lens.iter().enumerate() {
                let queue = queues.entry(format!("p{i}")).or_default();
                for _ in 0..*n {
                    key += 1;
                    queue.push((0, Reverse(key)));
                }
            }
            let before: Vec<usize> = queues.values().map(BinaryHeap::len).collect();
            take_fairly(&mut queues, limit);
            let took: Vec<usize> = before.iter().zip(queues.values()).map(|(b, q)| b - q.len()).collect();
            assert_eq!(allotment(&lens, limit), took, "{lens:?} {limit}");
        }
    }
}
