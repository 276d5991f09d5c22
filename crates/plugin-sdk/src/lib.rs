//! # shepherd-plugin-sdk
//!
//! Write a Shepherd scheduling plugin in Rust: implement [`Filter`] or
//! [`Scorer`] (or both, on two types), export it with [`export!`], and
//! compile to `wasm32-unknown-unknown` as a `cdylib`. The engine calls the
//! plugin once per task with a batch of candidate nodes (ABI v1,
//! `docs/plugins.md`); this crate decodes the request, calls your code per
//! node and encodes the answer. It is `#![no_std]` (with `alloc`) and has
//! no dependencies; it builds with Rust 1.63 (Debian's `rustc` with
//! `libstd-rust-dev-wasm32`).
//!
//! ```ignore
//! use shepherd_plugin_sdk::{export, Filter, Node, Settings, Task, Verdict};
//!
//! struct NeedsLabel { label: String }
//!
//! impl Filter for NeedsLabel {
//!     fn new(settings: &Settings) -> Result<Self, String> {
//!         Ok(NeedsLabel { label: settings.get("label").ok_or("needs `label`")?.into() })
//!     }
//!     fn filter(&self, _task: &Task, node: &Node) -> Verdict {
//!         match node.label(&self.label) {
//!             Some(_) => Verdict::Keep,
//!             None => Verdict::Reject(format!("no {}", self.label)),
//!         }
//!     }
//! }
//!
//! export!(filter = NeedsLabel);
//! ```

#![no_std]
#![allow(clippy::missing_safety_doc)]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

/// The ABI version this crate speaks.
pub const ABI_VERSION: u32 = 1;

/// The task being placed.
#[derive(Debug, Clone)]
pub struct Task<'a> {
    /// For logs only: verdicts are remembered per task shape within a pass,
    /// so they must not depend on the id.
    pub id: &'a str,
    pub project: &'a str,
    pub image: &'a str,
    /// The pool it runs in, if any.
    pub pool: Option<&'a str>,
    pub cpu_millicores: u32,
    pub memory_mib: u32,
    pub gpus: u32,
    pub priority: i32,
    /// Its placement constraints as written (`node.labels.zone==a`).
    pub constraints: Vec<&'a str>,
}

/// A candidate node.
#[derive(Debug, Clone)]
pub struct Node<'a> {
    pub id: &'a str,
    pub pool: Option<&'a str>,
    pub capacity_cpu_millicores: u32,
    pub capacity_memory_mib: u32,
    pub allocated_cpu_millicores: u32,
    pub allocated_memory_mib: u32,
    pub task_count: u32,
    pub max_tasks: u32,
    pub gpus: u32,
    pub gpus_allocated: u32,
    /// Its labels as encoded (read lazily: most plugins look at one).
    labels: &'a [u8],
    labels_count: u32,
}

impl<'a> Node<'a> {
    /// The value of label `key`.
    pub fn label(&self, key: &str) -> Option<&'a str> {
        self.labels().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
    /// Every label, sorted by key.
    pub fn labels(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let mut r = Reader { bytes: self.labels };
        (0..self.labels_count).map_while(move |_| Some((r.str()?, r.str()?)))
    }
    /// Free CPU (millicores).
    pub fn free_cpu_millicores(&self) -> u32 {
        self.capacity_cpu_millicores.saturating_sub(self.allocated_cpu_millicores)
    }
    /// Free memory (MiB).
    pub fn free_memory_mib(&self) -> u32 {
        self.capacity_memory_mib.saturating_sub(self.allocated_memory_mib)
    }
}

/// A plugin's settings from the profile (`[profiles.P.args.NAME]`), flat:
/// every value as text, lists joined with commas.
#[derive(Debug, Clone, Default)]
pub struct Settings<'a> {
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Settings<'a> {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
    /// The items of a list (or of one comma-separated value).
    pub fn list(&self, key: &str) -> Vec<&'a str> {
        match self.get(key) {
            Some(v) if !v.is_empty() => v.split(',').collect(),
            _ => Vec::new(),
        }
    }
    /// Every key and value.
    pub fn pairs(&self) -> &[(&'a str, &'a str)] {
        &self.pairs
    }
}

/// A filter's verdict on one node.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Keep,
    /// Why the node cannot take the task (at most 256 bytes; shown in the
    /// task's reason: "3 rejected by NAME: why").
    Reject(String),
}

/// A filter: which nodes can take a task.
pub trait Filter: Sized {
    /// Made once per profile that uses the plugin, from its settings; an
    /// `Err` refuses the configuration (the message goes to the log).
    fn new(settings: &Settings) -> Result<Self, String>;
    /// The verdict for one node.
    fn filter(&self, task: &Task, node: &Node) -> Verdict;
}

/// A scorer: how good each node is for a task, in [0, 1].
pub trait Scorer: Sized {
    /// As [`Filter::new`].
    fn new(settings: &Settings) -> Result<Self, String>;
    /// The score of one node, in [0, 1] (anything else fails the call).
    fn score(&self, task: &Task, node: &Node) -> f64;
}

/// Writes a line to the server's log (rate-limited there).
pub fn log(message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        #[link(wasm_import_module = "shepherd")]
        extern "C" {
            #[link_name = "log"]
            fn shepherd_log(ptr: *const u8, len: usize);
        }
        // SAFETY: the host reads `len` bytes at `ptr` from this module's memory.
        unsafe { shepherd_log(message.as_ptr(), message.len()) }
    }
    #[cfg(not(target_arch = "wasm32"))]
    let _ = message;
}

/// Decoding of the engine's bytes (ABI v1).
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads `bytes` from the start.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }
    /// A little-endian u32.
    pub fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A length-prefixed UTF-8 string. The engine writes only valid
    /// UTF-8 (Rust strings), so it is not checked again here: checking
    /// byte by byte in an interpreter is most of a call's time.
    pub fn str(&mut self) -> Option<&'a str> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        // SAFETY: the engine encodes `&str`s only (see above).
        Some(unsafe { core::str::from_utf8_unchecked(bytes) })
    }
    fn skip_str(&mut self) -> Option<()> {
        let len = self.u32()? as usize;
        self.take(len).map(|_| ())
    }
    /// A request: the call (0 filter, 1 score), the task, the nodes.
    pub fn request(&mut self) -> Option<(u32, Task<'a>, Vec<Node<'a>>)> {
        if self.u32()? != ABI_VERSION {
            return None;
        }
        let call = self.u32()?;
        let (id, project, image, pool) = (self.str()?, self.str()?, self.str()?, self.str()?);
        let (cpu, mem, gpus) = (self.u32()?, self.u32()?, self.u32()?);
        let priority = self.u32()? as i32;
        let count = self.u32()? as usize;
        let mut constraints = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            constraints.push(self.str()?);
        }
        let task = Task {
            id,
            project,
            image,
            pool: if pool.is_empty() { None } else { Some(pool) },
            cpu_millicores: cpu,
            memory_mib: mem,
            gpus,
            priority,
            constraints,
        };
        let n = self.u32()? as usize;
        let mut nodes = Vec::with_capacity(n.min(self.bytes.len() / 48 + 1));
        for _ in 0..n {
            let (id, pool) = (self.str()?, self.str()?);
            let mut v = [0u32; 8];
            for slot in v.iter_mut() {
                *slot = self.u32()?;
            }
            let labels_count = self.u32()?;
            let start = self.bytes;
            for _ in 0..labels_count {
                self.skip_str()?;
                self.skip_str()?;
            }
            let labels = &start[..start.len() - self.bytes.len()];
            nodes.push(Node {
                id,
                pool: if pool.is_empty() { None } else { Some(pool) },
                capacity_cpu_millicores: v[0],
                capacity_memory_mib: v[1],
                allocated_cpu_millicores: v[2],
                allocated_memory_mib: v[3],
                task_count: v[4],
                max_tasks: v[5],
                gpus: v[6],
                gpus_allocated: v[7],
                labels,
                labels_count,
            });
        }
        Some((call, task, nodes))
    }
    /// Settings: key/value pairs.
    pub fn settings(&mut self) -> Option<Settings<'a>> {
        let n = self.u32()? as usize;
        let mut pairs = Vec::with_capacity(n.min(256));
        for _ in 0..n {
            pairs.push((self.str()?, self.str()?));
        }
        Some(Settings { pairs })
    }
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Encodes a filter's answer.
pub fn encode_verdicts(out: &mut Vec<u8>, verdicts: &[Verdict]) {
    out.clear();
    put_u32(out, verdicts.len() as u32);
    let mut reasons: Vec<&str> = Vec::new();
    for v in verdicts {
        let code = match v {
            Verdict::Keep => 0,
            Verdict::Reject(why) => match reasons.iter().position(|r| *r == why.as_str()) {
                Some(i) => i + 1,
                None => {
                    reasons.push(why);
                    reasons.len()
                }
            },
        };
        put_u32(out, code as u32);
    }
    put_u32(out, reasons.len() as u32);
    for r in reasons {
        put_u32(out, r.len() as u32);
        out.extend_from_slice(r.as_bytes());
    }
}

/// Encodes a scorer's answer.
pub fn encode_scores(out: &mut Vec<u8>, scores: &[f64]) {
    out.clear();
    put_u32(out, scores.len() as u32);
    for s in scores {
        out.extend_from_slice(&s.to_le_bytes());
    }
}

/// What [`export!`] expands to call; not for direct use.
#[doc(hidden)]
pub mod rt {
    use super::*;
    use core::cell::UnsafeCell;

    /// A global for a single-threaded WebAssembly instance.
    pub struct Slot<T>(UnsafeCell<Option<T>>);
    // SAFETY: a WebAssembly instance runs one call at a time on one thread.
    unsafe impl<T> Sync for Slot<T> {}
    #[allow(clippy::new_without_default)]
    impl<T> Slot<T> {
        pub const fn new() -> Slot<T> {
            Slot(UnsafeCell::new(None))
        }
        #[allow(clippy::mut_from_ref)]
        pub unsafe fn get(&self) -> &mut Option<T> {
            &mut *self.0.get()
        }
    }

    static INPUT: Slot<Vec<u8>> = Slot::new();
    static OUTPUT: Slot<Vec<u8>> = Slot::new();

    /// A buffer of `len` bytes for the host to write the next request into.
    pub unsafe fn alloc(len: i32) -> i32 {
        let buf = INPUT.get().get_or_insert_with(Vec::new);
        let len = len.max(0) as usize;
        // Grown (and zeroed) only when too small: zeroing the buffer at
        // every call costs an interpreter more than the rest of the call.
        // The request is the first `len` bytes, all written by the host.
        if buf.len() < len {
            buf.resize(len, 0);
        }
        buf.as_mut_ptr() as i32
    }

    unsafe fn input<'a>(len: i32) -> &'a [u8] {
        match INPUT.get() {
            Some(buf) => &buf[..(len.max(0) as usize).min(buf.len())],
            None => &[],
        }
    }

    fn answer(out: &[u8]) -> i64 {
        ((out.as_ptr() as u32 as i64) << 32) | out.len() as i64
    }

    /// `shepherd_init`: makes the plugin from its settings.
    pub unsafe fn init<T>(slot: &Slot<T>, len: i32, make: fn(&Settings) -> Result<T, String>) -> i32 {
        let settings = match Reader::new(input(len)).settings() {
            Some(s) => s,
            None => return 2,
        };
        match make(&settings) {
            Ok(made) => {
                *slot.get() = Some(made);
                0
            }
            Err(why) => {
                log(&why);
                1
            }
        }
    }

    /// `shepherd_filter`.
    pub unsafe fn filter<T: Filter>(slot: &Slot<T>, len: i32) -> i64 {
        let out = OUTPUT.get().get_or_insert_with(Vec::new);
        out.clear();
        if slot.get().is_none() {
            if let Ok(made) = T::new(&Settings::default()) {
                *slot.get() = Some(made);
            }
        }
        if let (Some(plugin), Some((_, task, nodes))) = (slot.get().as_ref(), Reader::new(input(len)).request()) {
            let verdicts: Vec<Verdict> = nodes.iter().map(|n| plugin.filter(&task, n)).collect();
            encode_verdicts(out, &verdicts);
        }
        answer(out)
    }

    /// `shepherd_score`.
    pub unsafe fn score<T: Scorer>(slot: &Slot<T>, len: i32) -> i64 {
        let out = OUTPUT.get().get_or_insert_with(Vec::new);
        out.clear();
        if slot.get().is_none() {
            if let Ok(made) = T::new(&Settings::default()) {
                *slot.get() = Some(made);
            }
        }
        if let (Some(plugin), Some((_, task, nodes))) = (slot.get().as_ref(), Reader::new(input(len)).request()) {
            let scores: Vec<f64> = nodes.iter().map(|n| plugin.score(&task, n)).collect();
            encode_scores(out, &scores);
        }
        answer(out)
    }
}

/// Exports a filter, a scorer, or both as the plugin's ABI functions:
/// `export!(filter = MyFilter);`, `export!(score = MyScorer);`,
/// `export!(filter = MyFilter, score = MyScorer);`.
#[macro_export]
macro_rules! export {
    (filter = $f:ty) => {
        $crate::export!(@common);
        static SHEPHERD_FILTER: $crate::rt::Slot<$f> = $crate::rt::Slot::new();
        #[no_mangle]
        pub extern "C" fn shepherd_init(_ptr: i32, len: i32) -> i32 {
            unsafe { $crate::rt::init(&SHEPHERD_FILTER, len, <$f as $crate::Filter>::new) }
        }
        #[no_mangle]
        pub extern "C" fn shepherd_filter(_ptr: i32, len: i32) -> i64 {
            unsafe { $crate::rt::filter(&SHEPHERD_FILTER, len) }
        }
    };
    (score = $s:ty) => {
        $crate::export!(@common);
        static SHEPHERD_SCORER: $crate::rt::Slot<$s> = $crate::rt::Slot::new();
        #[no_mangle]
        pub extern "C" fn shepherd_init(_ptr: i32, len: i32) -> i32 {
            unsafe { $crate::rt::init(&SHEPHERD_SCORER, len, <$s as $crate::Scorer>::new) }
        }
        #[no_mangle]
        pub extern "C" fn shepherd_score(_ptr: i32, len: i32) -> i64 {
            unsafe { $crate::rt::score(&SHEPHERD_SCORER, len) }
        }
    };
    (filter = $f:ty, score = $s:ty) => {
        $crate::export!(@common);
        static SHEPHERD_FILTER: $crate::rt::Slot<$f> = $crate::rt::Slot::new();
        static SHEPHERD_SCORER: $crate::rt::Slot<$s> = $crate::rt::Slot::new();
        #[no_mangle]
        pub extern "C" fn shepherd_init(_ptr: i32, len: i32) -> i32 {
            unsafe {
                match $crate::rt::init(&SHEPHERD_FILTER, len, <$f as $crate::Filter>::new) {
                    0 => $crate::rt::init(&SHEPHERD_SCORER, len, <$s as $crate::Scorer>::new),
                    code => code,
                }
            }
        }
        #[no_mangle]
        pub extern "C" fn shepherd_filter(_ptr: i32, len: i32) -> i64 {
            unsafe { $crate::rt::filter(&SHEPHERD_FILTER, len) }
        }
        #[no_mangle]
        pub extern "C" fn shepherd_score(_ptr: i32, len: i32) -> i64 {
            unsafe { $crate::rt::score(&SHEPHERD_SCORER, len) }
        }
    };
    (@common) => {
        #[no_mangle]
        pub extern "C" fn shepherd_abi_v1() {}
        #[no_mangle]
        pub extern "C" fn shepherd_alloc(len: i32) -> i32 {
            unsafe { $crate::rt::alloc(len) }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn verdicts_share_their_reasons() {
        let mut out = Vec::new();
        encode_verdicts(&mut out, &[Verdict::Keep, Verdict::Reject("no x".into()), Verdict::Reject("no x".into())]);
        let mut r = Reader::new(&out);
        assert_eq!((r.u32(), r.u32(), r.u32(), r.u32()), (Some(3), Some(0), Some(1), Some(1)));
        assert_eq!((r.u32(), r.str()), (Some(1), Some("no x")));
        let settings = {
            let mut b = Vec::new();
            for v in [1u32, 5] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.extend_from_slice(b"label");
            b.extend_from_slice(&3u32.to_le_bytes());
            b.extend_from_slice(b"a,b");
            b
        };
        let s = Reader::new(&settings).settings().unwrap();
        assert_eq!(s.get("label"), Some("a,b"));
        assert_eq!(s.list("label"), vec!["a", "b"]);
        // A truncated request is refused, not misread.
        assert!(Reader::new(&[1, 0, 0, 0, 0]).request().is_none());
    }
}
