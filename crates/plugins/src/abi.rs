//! The wire format between the engine and a WebAssembly plugin (ABI v1,
//! documented for authors in `docs/plugins.md`): one request per task per
//! plugin carrying the task and a batch of nodes, one answer per node.
//! Little-endian `u32`s. The request is laid out for an interpreter: a
//! fixed-size record per node (a guest reads a field at a constant offset,
//! with no parsing), strings as (offset, length) references into a string
//! area at the end, labels as an array of such pairs.

use shepherd_sched::{NodeSnapshot, PendingTask};

/// The version a plugin declares by exporting `shepherd_abi_v1`.
pub const VERSION: u32 = 1;
/// What the request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Filter = 0,
    Score = 1,
}

/// The longest reason a filter may give, in bytes.
pub const MAX_REASON: usize = 256;

/// Bytes of the header: version, call, node count, task offset, nodes offset.
pub const HEADER: usize = 20;
/// Bytes of the task record.
pub const TASK_RECORD: usize = 56;
/// Bytes of one node record.
pub const NODE_RECORD: usize = 56;
/// Bytes of one label (key and value references).
pub const LABEL_RECORD: usize = 16;

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

/// Writes into a request sized in advance: fixed fields at a cursor,
/// strings at a second cursor in the string area (each field referring to
/// its string by offset and length). One allocation, no growth checks.
struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
    next_string: usize,
}

impl Writer<'_> {
    fn u32(&mut self, v: u32) {
        self.out[self.at..self.at + 4].copy_from_slice(&v.to_le_bytes());
        self.at += 4;
    }
    fn str(&mut self, s: &str) {
        self.u32(self.next_string as u32);
        self.u32(s.len() as u32);
        self.out[self.next_string..self.next_string + s.len()].copy_from_slice(s.as_bytes());
        self.next_string += s.len();
    }
}

/// The layout of one request: its sizes, and the strings the task's
/// fields become, computed before it is written (into the guest's memory,
/// in place: no intermediate buffer).
pub struct Plan {
    id: [u8; ulid::ULID_LEN],
    constraints: Vec<String>,
    nodes_at: usize,
    labels_at: usize,
    constraints_at: usize,
    strings_at: usize,
    len: usize,
}

impl Plan {
    /// The request's size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no bytes (never: the header alone is 20).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Plans a request for `task` and `nodes`.
pub fn plan(task: &PendingTask, nodes: &[&NodeSnapshot]) -> Plan {
    let mut id = [0u8; ulid::ULID_LEN];
    task.id.0.array_to_str(&mut id);
    let constraints: Vec<String> = task.constraints.iter().map(|c| c.to_string()).collect();
    let nodes_at = HEADER + TASK_RECORD;
    let labels_at = nodes_at + nodes.len() * NODE_RECORD;
    let mut label_count = 0;
    let mut string_bytes = id.len()
        + task.project.len()
        + task.image.len()
        + task.pool.as_deref().map_or(0, str::len)
        + constraints.iter().map(String::len).sum::<usize>();
    for node in nodes {
        label_count += node.labels.len();
        string_bytes += node.id.len() + node.pool.as_deref().map_or(0, str::len);
        string_bytes += node.labels.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    }
    let constraints_at = labels_at + label_count * LABEL_RECORD;
    let strings_at = constraints_at + constraints.len() * 8;
    Plan { id, constraints, nodes_at, labels_at, constraints_at, strings_at, len: strings_at + string_bytes }
}

/// Writes the request `plan` describes into `out` (exactly `plan.len()`
/// bytes, every one written):
///
/// ```text
/// header  u32 version, u32 call, u32 n_nodes, u32 task_offset (20), u32 nodes_offset
/// task    ref id, ref project, ref image, ref pool, u32 cpu_millicores, u32 memory_mib,
///         u32 gpus, i32 priority, u32 constraints_offset, u32 n_constraints   (56 bytes)
/// nodes   n × { ref id, ref pool, u32 capacity_cpu, u32 capacity_memory,
///         u32 allocated_cpu, u32 allocated_memory, u32 task_count, u32 max_tasks,
///         u32 gpus, u32 gpus_allocated, u32 labels_offset, u32 n_labels }     (56 bytes each)
/// labels  { ref key, ref value } × every node's labels, sorted by key per node
/// constraints  ref × n_constraints
/// strings the bytes every ref points into
/// ```
///
/// A `ref` is a `u32` offset from the request's start and a `u32` length.
pub fn write_request(out: &mut [u8], plan: &Plan, call: Call, task: &PendingTask, nodes: &[&NodeSnapshot]) {
    debug_assert_eq!(out.len(), plan.len);
    // ULIDs are ASCII.
    let id = std::str::from_utf8(&plan.id).unwrap_or("");
    let task_strings = [id, &task.project, &task.image, task.pool.as_deref().unwrap_or("")];
    let mut w = Writer { out, at: 0, next_string: plan.strings_at };
    for v in [VERSION, call as u32, nodes.len() as u32, HEADER as u32, plan.nodes_at as u32] {
        w.u32(v);
    }
    for s in task_strings {
        w.str(s);
    }
    for v in [task.resources.cpu_millicores, task.resources.memory_mib, task.gpus, task.priority as u32] {
        w.u32(v);
    }
    w.u32(plan.constraints_at as u32);
    w.u32(plan.constraints.len() as u32);
    let mut label_index = plan.labels_at;
    for node in nodes {
        w.str(&node.id);
        w.str(node.pool.as_deref().unwrap_or(""));
        for v in [
            node.capacity.cpu_millicores,
            node.capacity.memory_mib,
            node.allocated.cpu_millicores,
            node.allocated.memory_mib,
            node.task_count,
            node.max_tasks,
            node.gpus,
            node.gpus_allocated,
        ] {
            w.u32(v);
        }
        w.u32(label_index as u32);
        w.u32(node.labels.len() as u32);
        label_index += node.labels.len() * LABEL_RECORD;
    }
    for node in nodes {
        for (k, v) in &node.labels {
            w.str(k);
            w.str(v);
        }
    }
    for c in &plan.constraints {
        w.str(c);
    }
    debug_assert_eq!((w.at, w.next_string), (plan.strings_at, plan.len));
}

/// Plans and writes a request into `out` (for tests and other hosts).
pub fn encode_request(out: &mut Vec<u8>, call: Call, task: &PendingTask, nodes: &[&NodeSnapshot]) {
    let plan = plan(task, nodes);
    out.clear();
    out.resize(plan.len, 0);
    write_request(out, &plan, call, task, nodes);
}

/// A plugin's settings (`[profiles.P.args.NAME]`), flat: every value as
/// text (arrays joined with commas). Nested tables are refused.
pub fn encode_settings(args: Option<&toml::Value>) -> Result<Vec<u8>, String> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    match args {
        None => {}
        Some(toml::Value::Table(table)) => {
            for (key, value) in table {
                pairs.push((key.clone(), flat(key, value)?));
            }
        }
        Some(_) => return Err("settings must be a table".into()),
    }
    let mut out = Vec::new();
    put_u32(&mut out, pairs.len() as u32);
    for (k, v) in &pairs {
        put_str(&mut out, k);
        put_str(&mut out, v);
    }
    Ok(out)
}

fn flat(key: &str, value: &toml::Value) -> Result<String, String> {
    Ok(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(items) => {
            let parts: Result<Vec<String>, String> = items
                .iter()
                .map(|v| match v {
                    toml::Value::Table(_) | toml::Value::Array(_) => Err(format!("`{key}`: lists hold plain values only")),
                    v => flat(key, v),
                })
                .collect();
            parts?.join(",")
        }
        toml::Value::Table(_) => return Err(format!("`{key}`: settings are flat (no tables)")),
    })
}

/// Reads a little-endian answer.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Result<u32, String> {
        let (head, rest) = self.bytes.split_at_checked(4).ok_or("the answer ends early")?;
        self.bytes = rest;
        Ok(u32::from_le_bytes([head[0], head[1], head[2], head[3]]))
    }
    fn f64(&mut self) -> Result<f64, String> {
        let (head, rest) = self.bytes.split_at_checked(8).ok_or("the answer ends early")?;
        self.bytes = rest;
        let mut b = [0u8; 8];
        b.copy_from_slice(head);
        Ok(f64::from_le_bytes(b))
    }
    fn str(&mut self, max: usize) -> Result<&'a str, String> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(format!("a reason of {len} bytes (at most {max})"));
        }
        let (head, rest) = self.bytes.split_at_checked(len).ok_or("the answer ends early")?;
        self.bytes = rest;
        std::str::from_utf8(head).map_err(|_| "a reason that is not UTF-8".to_string())
    }
}

/// A filter's answer: for each node, `None` (keep) or the reason it gave.
pub fn decode_filter(bytes: &[u8], nodes: usize) -> Result<Vec<Option<String>>, String> {
    let mut r = Reader { bytes };
    let n = r.u32()? as usize;
    if n != nodes {
        return Err(format!("answered {n} verdicts for {nodes} nodes"));
    }
    let mut codes = Vec::with_capacity(n);
    for _ in 0..n {
        codes.push(r.u32()? as usize);
    }
    let reasons_count = r.u32()? as usize;
    if reasons_count > nodes {
        return Err(format!("{reasons_count} reasons for {nodes} nodes"));
    }
    let mut reasons = Vec::with_capacity(reasons_count);
    for _ in 0..reasons_count {
        let reason = r.str(MAX_REASON)?;
        if reason.chars().any(char::is_control) {
            return Err("a reason with control characters".into());
        }
        reasons.push(reason.to_string());
    }
    if !r.bytes.is_empty() {
        return Err(format!("{} bytes after the answer", r.bytes.len()));
    }
    codes
        .into_iter()
        .map(|code| match code {
            0 => Ok(None),
            k => reasons.get(k - 1).cloned().map(Some).ok_or_else(|| format!("reason {k} of {reasons_count}")),
        })
        .collect()
}

/// A scorer's answer: a score in [0, 1] for each node.
pub fn decode_scores(bytes: &[u8], nodes: usize, out: &mut Vec<f64>) -> Result<(), String> {
    let mut r = Reader { bytes };
    let n = r.u32()? as usize;
    if n != nodes {
        return Err(format!("answered {n} scores for {nodes} nodes"));
    }
    for _ in 0..n {
        let score = r.f64()?;
        if !(0.0..=1.0).contains(&score) {
            return Err(format!("a score of {score} (scores are in [0, 1])"));
        }
        out.push(score);
    }
    if !r.bytes.is_empty() {
        return Err(format!("{} bytes after the answer", r.bytes.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter_answer(codes: &[u32], reasons: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        put_u32(&mut out, codes.len() as u32);
        codes.iter().for_each(|c| put_u32(&mut out, *c));
        put_u32(&mut out, reasons.len() as u32);
        reasons.iter().for_each(|r| put_str(&mut out, r));
        out
    }

    #[test]
    fn answers_are_checked_to_the_byte() {
        assert_eq!(
            decode_filter(&filter_answer(&[0, 1, 1], &["no licence"]), 3).unwrap(),
            vec![None, Some("no licence".into()), Some("no licence".into())]
        );
        assert!(decode_filter(&filter_answer(&[0, 1], &["x"]), 3).unwrap_err().contains("2 verdicts for 3"));
        assert!(decode_filter(&filter_answer(&[2], &["x"]), 1).unwrap_err().contains("reason 2 of 1"));
        assert!(decode_filter(&filter_answer(&[1], &["a\nb"]), 1).unwrap_err().contains("control"));
        assert!(decode_filter(&filter_answer(&[1], &[&"x".repeat(300)]), 1).unwrap_err().contains("300 bytes"));
        let mut trailing = filter_answer(&[0], &[]);
        trailing.push(0);
        assert!(decode_filter(&trailing, 1).is_err());
        assert!(decode_filter(&[1, 0], 1).is_err());
        let scores = |v: &[f64]| {
            let mut out = Vec::new();
            put_u32(&mut out, v.len() as u32);
            v.iter().for_each(|s| out.extend_from_slice(&s.to_le_bytes()));
            out
        };
        let mut got = Vec::new();
        decode_scores(&scores(&[0.0, 0.5, 1.0]), 3, &mut got).unwrap();
        assert_eq!(got, vec![0.0, 0.5, 1.0]);
        for bad in [f64::NAN, -0.1, 1.5, f64::INFINITY] {
            assert!(decode_scores(&scores(&[bad]), 1, &mut Vec::new()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_node_field_is_at_a_constant_offset() {
        let mut task =
            PendingTask::new(shepherd_core::TaskId(ulid::Ulid(7)), shepherd_core::Resources { cpu_millicores: 250, memory_mib: 64 });
        task.constraints = vec![shepherd_core::Constraint::parse("node.labels.zone==a").unwrap()];
        let mut nodes: Vec<NodeSnapshot> = (0..3)
            .map(|i| NodeSnapshot::new(format!("node-{i}"), shepherd_core::Resources { cpu_millicores: 1000 * (i + 1), memory_mib: 512 }))
            .collect();
        nodes[1].labels.insert("zone".into(), "a".into());
        nodes[1].labels.insert("arch".into(), "arm".into());
        let refs: Vec<&NodeSnapshot> = nodes.iter().collect();
        let mut out = Vec::new();
        encode_request(&mut out, Call::Score, &task, &refs);
        let u = |at: usize| u32::from_le_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]) as usize;
        let text = |at: usize| std::str::from_utf8(&out[u(at)..u(at) + u(at + 4)]).unwrap().to_string();
        assert_eq!((u(0), u(4), u(8), u(12)), (1, 1, 3, HEADER));
        assert_eq!(text(HEADER), task.id.to_string());
        assert_eq!(u(HEADER + 32), 250);
        assert_eq!(text(u(HEADER + 48)), "node.labels.zone==a");
        let node = |i: usize| u(16) + i * NODE_RECORD;
        assert_eq!(text(node(2)), "node-2");
        assert_eq!(u(node(2) + 16), 3000);
        assert_eq!(u(node(1) + 52), 2);
        let labels = u(node(1) + 48);
        assert_eq!(
            (text(labels), text(labels + 8), text(labels + 16), text(labels + 24)),
            ("arch".into(), "arm".into(), "zone".into(), "a".into())
        );
        assert_eq!(u(node(2) + 52), 0);
    }

    #[test]
    fn settings_are_flat_text() {
        let args: toml::Value = toml::from_str("label = \"licence.matlab\"\nmin = 2\nvalues = [\"a\", \"b\"]\n").unwrap();
        let bytes = encode_settings(Some(&args)).unwrap();
        assert_eq!(&bytes[..4], &3u32.to_le_bytes());
        let nested: toml::Value = toml::from_str("[t]\nx = 1\n").unwrap();
        assert!(encode_settings(Some(&nested)).unwrap_err().contains("flat"));
    }
}

/// The engine's encoding read back by the authors' SDK (run natively): every
/// field of every node, for random tasks and clusters.
#[cfg(test)]
mod conformance {
    use super::*;
    use proptest::prelude::*;
    use shepherd_core::{Resources, TaskId};

    fn arb_node() -> impl Strategy<Value = NodeSnapshot> {
        (
            "[a-z0-9é-]{1,12}",
            proptest::option::of("[a-z]{0,6}"),
            any::<[u32; 8]>(),
            proptest::collection::btree_map("[a-z.]{1,8}", "[ -~é]{0,10}", 0..5),
        )
            .prop_map(|(id, pool, v, labels)| {
                let mut n = NodeSnapshot::new(id, Resources { cpu_millicores: v[0], memory_mib: v[1] });
                n.pool = pool.filter(|p| !p.is_empty());
                n.allocated = Resources { cpu_millicores: v[2], memory_mib: v[3] };
                (n.task_count, n.max_tasks, n.gpus, n.gpus_allocated) = (v[4], v[5], v[6], v[7]);
                n.labels = labels;
                n
            })
    }

    proptest! {
        #[test]
        fn the_sdk_reads_what_the_engine_writes(
            nodes in proptest::collection::vec(arb_node(), 0..20),
            project in "[a-z]{1,10}", image in "[ -~]{0,20}", priority in any::<i32>(), zone in proptest::option::of("[a-z]{1,4}"),
        ) {
            let mut task = PendingTask::new(TaskId(ulid::Ulid(42)), Resources { cpu_millicores: 100, memory_mib: 7 });
            (task.project, task.image, task.priority, task.gpus) = (project, image, priority, 3);
            if let Some(z) = &zone {
                task.constraints = vec![shepherd_core::Constraint::parse(&format!("node.labels.zone=={z}")).unwrap()];
            }
            let refs: Vec<&NodeSnapshot> = nodes.iter().collect();
            let mut out = Vec::new();
            encode_request(&mut out, Call::Filter, &task, &refs);
            let request = shepherd_plugin_sdk::Request::parse(&out).expect("parses");
            prop_assert_eq!(request.call, 0);
            prop_assert_eq!(request.task.id, task.id.to_string());
            prop_assert_eq!((request.task.project, request.task.image, request.task.priority), (task.project.as_str(), task.image.as_str(), priority));
            prop_assert_eq!((request.task.cpu_millicores, request.task.memory_mib, request.task.gpus, request.task.pool), (100, 7, 3, None));
            prop_assert_eq!(request.task.constraints.len(), task.constraints.len());
            prop_assert_eq!(request.len(), nodes.len());
            for (got, want) in request.nodes().zip(&nodes) {
                prop_assert_eq!(got.id(), want.id.as_str());
                prop_assert_eq!(got.pool(), want.pool.as_deref());
                prop_assert_eq!(
                    [got.capacity_cpu_millicores(), got.capacity_memory_mib(), got.allocated_cpu_millicores(), got.allocated_memory_mib(), got.task_count(), got.max_tasks(), got.gpus(), got.gpus_allocated()],
                    [want.capacity.cpu_millicores, want.capacity.memory_mib, want.allocated.cpu_millicores, want.allocated.memory_mib, want.task_count, want.max_tasks, want.gpus, want.gpus_allocated]
                );
                let labels: Vec<(String, String)> = got.labels().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                let expected: Vec<(String, String)> = want.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                prop_assert_eq!(labels, expected);
            }
        }
    }
}
