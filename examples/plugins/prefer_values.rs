//! A scorer: prefer nodes whose label `label` has one of the `values`
//! (score 1), over nodes with another value or none (score 0); with
//! `ranked = true`, earlier values score higher (1, then less for each
//! later one). Built by `build.sh` into `prefer_values.wasm`.
//!
//! ```toml
//! [plugins.cheap_zones]
//! wasm = "examples/plugins/prefer_values.wasm"
//! [profiles.cheap]
//! scores = { cheap_zones = 2.0, spread = 1.0 }
//! [profiles.cheap.args.cheap_zones]
//! label = "zone"
//! values = ["eu-west-1a", "eu-west-1b"]
//! ```

use shepherd_plugin_sdk::{export, Node, Scorer, Settings, Task};

struct PreferValues {
    label: String,
    values: Vec<String>,
    ranked: bool,
}

impl Scorer for PreferValues {
    fn new(settings: &Settings) -> Result<Self, String> {
        let label = settings.get("label").ok_or("prefer_values needs `label`")?.to_string();
        let values: Vec<String> = settings.list("values").into_iter().map(str::to_string).collect();
        if values.is_empty() {
            return Err("prefer_values needs `values`".into());
        }
        Ok(PreferValues { label, values, ranked: settings.get("ranked") == Some("true") })
    }

    fn score(&self, _task: &Task, node: &Node) -> f64 {
        let value = match node.label(&self.label) {
            Some(v) => v,
            None => return 0.0,
        };
        match self.values.iter().position(|v| v == value) {
            Some(rank) if self.ranked => 1.0 - rank as f64 / self.values.len() as f64,
            Some(_) => 1.0,
            None => 0.0,
        }
    }
}

export!(score = PreferValues);
