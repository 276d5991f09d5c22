//! The built-in `spread` scorer written as a plugin, for measuring what
//! the WebAssembly boundary costs (bench/plugins.sh): prefer the node
//! that would be least loaded after placing the task, by its most used
//! resource. Built by `build.sh` into `spread.wasm`.

use shepherd_plugin_sdk::{export, Node, Scorer, Settings, Task};

struct Spread;

// Comparisons rather than f64::max/min: on wasm32 those are calls into a
// software fmax/fmin (NaN rules), each a function call in an interpreter.
fn share(used: u32, asked: u32, capacity: u32) -> f64 {
    let share = (used as f64 + asked as f64) / capacity.max(1) as f64;
    if share > 1.0 {
        1.0
    } else if share > 0.0 {
        share
    } else {
        0.0
    }
}

impl Scorer for Spread {
    fn new(_: &Settings) -> Result<Self, String> {
        Ok(Spread)
    }

    fn score(&self, task: &Task, node: &Node) -> f64 {
        let cpu = share(node.allocated_cpu_millicores(), task.cpu_millicores, node.capacity_cpu_millicores());
        let memory = share(node.allocated_memory_mib(), task.memory_mib, node.capacity_memory_mib());
        1.0 - if cpu > memory { cpu } else { memory }
    }
}

export!(score = Spread);
