//! The in-tree plugins, one file each. `registry.rs` lists them by name.

pub mod anti_affinity;
pub mod balanced;
pub mod binpack;
pub mod constraints;
pub mod dedicated;
pub mod devices;
pub mod image_locality;
pub mod node_ready;
pub mod pool;
pub mod random;
pub mod resources;
pub mod spread;
pub mod task_limit;
pub mod topology_spread;
pub mod volume_locality;
pub mod warm_locality;

use crate::model::{NodeSnapshot, PendingTask};

/// CPU and memory shares of the node in use once `task` is added, each in [0, 1].
pub(crate) fn shares_after(task: &PendingTask, node: &NodeSnapshot) -> (f64, f64) {
    let cpu = f64::from(node.allocated.cpu_millicores + task.resources.cpu_millicores) / f64::from(node.capacity.cpu_millicores.max(1));
    let mem = f64::from(node.allocated.memory_mib + task.resources.memory_mib) / f64::from(node.capacity.memory_mib.max(1));
    (cpu.clamp(0.0, 1.0), mem.clamp(0.0, 1.0))
}
