//! The wire format between the engine and a WebAssembly plugin (ABI v1,
//! documented for authors in `docs/plugins.md`): one request per task per
//! plugin carrying the task and a batch of nodes, one answer per node.
//! Little-endian `u32`s, strings as a `u32` length and UTF-8 bytes; no
//! schema, no allocation in the guest beyond the buffer it is given.

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

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

/// Encodes a request into `out` (cleared first).
pub fn encode_request(out: &mut Vec<u8>, call: Call, task: &PendingTask, nodes: &[&NodeSnapshot]) {
    out.clear();
    put_u32(out, VERSION);
    put_u32(out, call as u32);
    put_str(out, &task.id.to_string());
    put_str(out, &task.project);
    put_str(out, &task.image);
    put_str(out, task.pool.as_deref().unwrap_or(""));
    put_u32(out, task.resources.cpu_millicores);
    put_u32(out, task.resources.memory_mib);
    put_u32(out, task.gpus);
    out.extend_from_slice(&task.priority.to_le_bytes());
    put_u32(out, task.constraints.len() as u32);
    for c in &task.constraints {
        put_str(out, &c.to_string());
    }
    put_u32(out, nodes.len() as u32);
    for node in nodes {
        put_str(out, &node.id);
        put_str(out, node.pool.as_deref().unwrap_or(""));
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
            put_u32(out, v);
        }
        put_u32(out, node.labels.len() as u32);
        for (k, v) in &node.labels {
            put_str(out, k);
            put_str(out, v);
        }
    }
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
    fn settings_are_flat_text() {
        let args: toml::Value = toml::from_str("label = \"licence.matlab\"\nmin = 2\nvalues = [\"a\", \"b\"]\n").unwrap();
        let bytes = encode_settings(Some(&args)).unwrap();
        assert_eq!(&bytes[..4], &3u32.to_le_bytes());
        let nested: toml::Value = toml::from_str("[t]\nx = 1\n").unwrap();
        assert!(encode_settings(Some(&nested)).unwrap_err().contains("flat"));
    }
}
