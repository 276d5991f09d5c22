//! A filter: keep only nodes that have the label named in the profile's
//! settings (`label = "licence.matlab"`), and, if `value` is given, whose
//! label has that value. Built by `build.sh` into `label_filter.wasm`.
//!
//! ```toml
//! [plugins.licences]
//! wasm = "examples/plugins/label_filter.wasm"
//! [profiles.licensed]
//! filters = ["node_ready", "resources", "licences"]
//! scores = { binpack = 1.0 }
//! [profiles.licensed.args.licences]
//! label = "licence.matlab"
//! ```

use shepherd_plugin_sdk::{export, Filter, Node, Settings, Task, Verdict};

struct LabelFilter {
    label: String,
    value: Option<String>,
}

impl Filter for LabelFilter {
    fn new(settings: &Settings) -> Result<Self, String> {
        let label = settings.get("label").ok_or("label_filter needs `label` in its settings")?;
        Ok(LabelFilter { label: label.to_string(), value: settings.get("value").map(str::to_string) })
    }

    fn filter(&self, _task: &Task, node: &Node) -> Verdict {
        match (node.label(&self.label), &self.value) {
            (None, _) => Verdict::Reject(format!("no {} left", self.label)),
            (Some(v), Some(want)) if v != want => Verdict::Reject(format!("{} is not {}", self.label, want)),
            _ => Verdict::Keep,
        }
    }
}

export!(filter = LabelFilter);
