//! HTTP extenders, as Kubernetes' scheduler extender: the engine posts the
//! task and a batch of candidate nodes as JSON (`POST URL/filter`,
//! `POST URL/score`; `docs/plugins.md`), one call per task per window of
//! nodes, over kept-alive connections, with a timeout and a circuit
//! breaker: after `disable_after` failures in a row no call is made for
//! `retry_after_seconds`, then one is tried again. What a failure does is
//! the operator's choice: `on_error = "reject"` (the task waits, with the
//! reason) or `"ignore"` (the extender is left out of that decision).

use crate::health::Health;
use serde::{Deserialize, Serialize};
use shepherd_sched::{ClusterView, FilterPlugin, NodeSnapshot, PendingTask, Rejection, ScorePlugin};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a failed call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Nodes are rejected (filter) or the task is not placed (score),
    /// with the failure as the reason.
    Reject,
    /// The extender keeps every node (filter) or scores none (score).
    Ignore,
}

/// The largest answer read.
const MAX_ANSWER: u64 = 4 << 20;

/// An extender; one per name, shared by the profiles that use it.
pub struct HttpExtender {
    name: String,
    base: String,
    agent: ureq::Agent,
    on_error: OnError,
    health: Arc<Health>,
}

#[derive(Serialize)]
struct Resources {
    cpu_millicores: u32,
    memory_mib: u32,
}

#[derive(Serialize)]
struct TaskJson<'a> {
    id: String,
    project: &'a str,
    image: &'a str,
    pool: Option<&'a str>,
    resources: Resources,
    gpus: u32,
    priority: i32,
    constraints: Vec<String>,
}

#[derive(Serialize)]
struct NodeJson<'a> {
    id: &'a str,
    pool: Option<&'a str>,
    labels: &'a BTreeMap<String, String>,
    capacity: Resources,
    allocated: Resources,
    task_count: u32,
    max_tasks: u32,
    gpus: u32,
    gpus_allocated: u32,
}

#[derive(Serialize)]
struct Request<'a> {
    task: TaskJson<'a>,
    nodes: Vec<NodeJson<'a>>,
    /// The profile's settings for this extender.
    args: &'a serde_json::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterAnswer {
    /// Node id → why it cannot take the task; nodes not named are kept.
    #[serde(default)]
    rejected: HashMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreAnswer {
    /// Node id → score in [0, 1]; nodes not named score 0.
    #[serde(default)]
    scores: HashMap<String, f64>,
}

impl HttpExtender {
    /// An extender at `url` (plain `http://`; its path is the prefix of
    /// `/filter` and `/score`).
    pub fn new(name: &str, url: &str, timeout: Duration, on_error: OnError, health: Arc<Health>) -> Result<HttpExtender, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("`http`: {e}"))?;
        if parsed.scheme() != "http" {
            return Err("`http`: only http:// extenders (put a TLS proxy on the extender's host for https)".into());
        }
        if parsed.query().is_some() || parsed.fragment().is_some() || !parsed.username().is_empty() {
            return Err("`http`: a base URL without query, fragment or user".into());
        }
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .max_idle_connections_per_host(4)
            .build();
        Ok(HttpExtender {
            name: name.to_string(),
            base: parsed.as_str().trim_end_matches('/').to_string(),
            agent: config.into(),
            on_error,
            health,
        })
    }

    fn post(&self, verb: &str, task: &PendingTask, nodes: &[&NodeSnapshot], args: &serde_json::Value) -> Result<Vec<u8>, String> {
        if let Some(why) = self.health.disabled() {
            return Err(why);
        }
        let started = Instant::now();
        let res = |r: shepherd_core::Resources| Resources { cpu_millicores: r.cpu_millicores, memory_mib: r.memory_mib };
        let request = Request {
            task: TaskJson {
                id: task.id.to_string(),
                project: &task.project,
                image: &task.image,
                pool: task.pool.as_deref(),
                resources: res(task.resources),
                gpus: task.gpus,
                priority: task.priority,
                constraints: task.constraints.iter().map(|c| c.to_string()).collect(),
            },
            nodes: nodes
                .iter()
                .map(|n| NodeJson {
                    id: &n.id,
                    pool: n.pool.as_deref(),
                    labels: &n.labels,
                    capacity: res(n.capacity),
                    allocated: res(n.allocated),
                    task_count: n.task_count,
                    max_tasks: n.max_tasks,
                    gpus: n.gpus,
                    gpus_allocated: n.gpus_allocated,
                })
                .collect(),
            args,
        };
        let result = (|| {
            let body = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
            let mut response = self.agent.post(&format!("{}/{verb}", self.base)).content_type("application/json").send(&body[..]).map_err(
                |e| match e {
                    ureq::Error::Timeout(_) => "timed out".to_string(),
                    e => format!("unreachable: {e}"),
                },
            )?;
            let status = response.status().as_u16();
            let answer =
                response.body_mut().with_config().limit(MAX_ANSWER).read_to_vec().map_err(|e| format!("answer unreadable: {e}"))?;
            if status != 200 {
                return Err(format!("answered HTTP {status}"));
            }
            Ok(answer)
        })();
        match &result {
            Ok(_) => self.health.succeeded(nodes.len(), started.elapsed()),
            Err(e) => self.health.failed(nodes.len(), started.elapsed(), e),
        }
        result
    }

    fn failure(&self, why: String) -> Rejection {
        Rejection::Other { filter: self.name.clone(), reason: why }
    }
}

/// One profile's use of an extender (its settings as JSON).
pub struct HttpPlugin {
    pub(crate) extender: Arc<HttpExtender>,
    pub(crate) args: serde_json::Value,
}

impl HttpPlugin {
    fn decode_filter(&self, bytes: &[u8], nodes: &[&NodeSnapshot]) -> Result<HashMap<String, String>, String> {
        let answer: FilterAnswer = serde_json::from_slice(bytes).map_err(|e| format!("answered garbage: {e}"))?;
        if let Some(unknown) = answer.rejected.keys().find(|id| !nodes.iter().any(|n| &n.id == *id)) {
            return Err(format!("answered garbage: rejected node {unknown:?}, which it was not asked about"));
        }
        if answer.rejected.values().any(|r| r.len() > crate::abi::MAX_REASON || r.chars().any(char::is_control)) {
            return Err("answered garbage: a reason over 256 bytes or with control characters".into());
        }
        Ok(answer.rejected)
    }
}

impl FilterPlugin for HttpPlugin {
    fn name(&self) -> &str {
        &self.extender.name
    }
    fn filter(&self, task: &PendingTask, node: &NodeSnapshot) -> Result<(), Rejection> {
        shepherd_sched::plugin::filter_one(self, task, node)
    }
    fn batched(&self) -> bool {
        true
    }
    fn filter_batch(&self, task: &PendingTask, nodes: &[&NodeSnapshot], out: &mut Vec<Result<(), Rejection>>) {
        let answer = self.extender.post("filter", task, nodes, &self.args).and_then(|bytes| {
            let decoded = self.decode_filter(&bytes, nodes);
            if let Err(e) = &decoded {
                self.extender.health.record_failure(e);
            }
            decoded
        });
        match answer {
            Ok(mut rejected) => out.extend(nodes.iter().map(|n| match rejected.remove(&n.id) {
                Some(reason) => Err(self.extender.failure(reason)),
                None => Ok(()),
            })),
            Err(_) if self.extender.on_error == OnError::Ignore => out.extend(nodes.iter().map(|_| Ok(()))),
            Err(why) => {
                let rejection = self.extender.failure(why);
                out.extend(nodes.iter().map(|_| Err(rejection.clone())));
            }
        }
    }
}

impl ScorePlugin for HttpPlugin {
    fn name(&self) -> &str {
        &self.extender.name
    }
    fn score(&self, task: &PendingTask, node: &NodeSnapshot, cluster: &ClusterView<'_>) -> f64 {
        shepherd_sched::plugin::score_one(self, task, node, cluster)
    }
    fn batched(&self) -> bool {
        true
    }
    fn score_batch(&self, task: &PendingTask, nodes: &[&NodeSnapshot], _: &ClusterView<'_>, out: &mut Vec<f64>) -> Result<(), Rejection> {
        let answer = self.extender.post("score", task, nodes, &self.args).and_then(|bytes| {
            let decoded: Result<ScoreAnswer, String> = serde_json::from_slice(&bytes).map_err(|e| format!("answered garbage: {e}"));
            let checked = decoded.and_then(|a| {
                if let Some((id, s)) = a.scores.iter().find(|(_, s)| !(0.0..=1.0).contains(*s)) {
                    return Err(format!("answered garbage: score {s} for {id:?} (scores are in [0, 1])"));
                }
                if let Some(id) = a.scores.keys().find(|id| !nodes.iter().any(|n| &n.id == *id)) {
                    return Err(format!("answered garbage: scored node {id:?}, which it was not asked about"));
                }
                Ok(a.scores)
            });
            if let Err(e) = &checked {
                self.extender.health.record_failure(e);
            }
            checked
        });
        match answer {
            Ok(scores) => {
                out.extend(nodes.iter().map(|n| scores.get(&n.id).copied().unwrap_or(0.0)));
                Ok(())
            }
            Err(_) if self.extender.on_error == OnError::Ignore => {
                out.extend(nodes.iter().map(|_| 0.0));
                Ok(())
            }
            Err(why) => Err(self.extender.failure(why)),
        }
    }
}
