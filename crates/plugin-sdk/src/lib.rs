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

/// Offsets in the request (ABI v1, `docs/plugins.md`).
mod layout {
    pub const HEADER: usize = 20;
    pub const TASK_RECORD: usize = 56;
    pub const NODE_RECORD: usize = 56;
    pub const LABEL_RECORD: usize = 16;
}

#[inline]
fn read_u32(bytes: &[u8], at: usize) -> u32 {
    match bytes.get(at..at + 4) {
        Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

/// The string a reference (offset, length) at `at` points to. The engine
/// writes only valid UTF-8 (Rust strings), so it is not checked again:
/// checking byte by byte in an interpreter is most of a call's time.
#[inline]
fn read_str(bytes: &[u8], at: usize) -> &str {
    let (start, len) = (read_u32(bytes, at) as usize, read_u32(bytes, at + 4) as usize);
    match bytes.get(start..start.saturating_add(len)) {
        // SAFETY: the engine encodes `&str`s only (see above).
        Some(b) => unsafe { core::str::from_utf8_unchecked(b) },
        None => "",
    }
}

/// A candidate node: a view of its fixed-size record in the request, each
/// field read where it is asked for (no parsing, no allocation).
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    request: &'a [u8],
    at: usize,
}

impl<'a> Node<'a> {
    #[inline]
    fn u32(&self, offset: usize) -> u32 {
        debug_assert!(self.at + offset + 4 <= self.request.len());
        // SAFETY: `Request::parse` checked that every node record lies in
        // the request, and `offset` is below the record's 56 bytes: one
        // load, where a checked read costs an interpreter several more.
        unsafe { core::ptr::read_unaligned(self.request.as_ptr().add(self.at + offset) as *const u32) }.to_le()
    }
    #[inline]
    pub fn id(&self) -> &'a str {
        read_str(self.request, self.at)
    }
    /// Its pool, if it is in one.
    #[inline]
    pub fn pool(&self) -> Option<&'a str> {
        let pool = read_str(self.request, self.at + 8);
        if pool.is_empty() {
            None
        } else {
            Some(pool)
        }
    }
    #[inline]
    pub fn capacity_cpu_millicores(&self) -> u32 {
        self.u32(16)
    }
    #[inline]
    pub fn capacity_memory_mib(&self) -> u32 {
        self.u32(20)
    }
    #[inline]
    pub fn allocated_cpu_millicores(&self) -> u32 {
        self.u32(24)
    }
    #[inline]
    pub fn allocated_memory_mib(&self) -> u32 {
        self.u32(28)
    }
    #[inline]
    pub fn task_count(&self) -> u32 {
        self.u32(32)
    }
    #[inline]
    pub fn max_tasks(&self) -> u32 {
        self.u32(36)
    }
    #[inline]
    pub fn gpus(&self) -> u32 {
        self.u32(40)
    }
    #[inline]
    pub fn gpus_allocated(&self) -> u32 {
        self.u32(44)
    }
    /// Free CPU (millicores).
    #[inline]
    pub fn free_cpu_millicores(&self) -> u32 {
        self.capacity_cpu_millicores().saturating_sub(self.allocated_cpu_millicores())
    }
    /// Free memory (MiB).
    #[inline]
    pub fn free_memory_mib(&self) -> u32 {
        self.capacity_memory_mib().saturating_sub(self.allocated_memory_mib())
    }
    /// Every label, sorted by key.
    #[inline]
    pub fn labels(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let (request, first, count) = (self.request, self.u32(48) as usize, self.u32(52) as usize);
        (0..count).map(move |i| {
            let at = first + i * layout::LABEL_RECORD;
            (read_str(request, at), read_str(request, at + 8))
        })
    }
    /// The value of label `key`.
    #[inline]
    pub fn label(&self, key: &str) -> Option<&'a str> {
        self.labels().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// A request: what it asks for, the task, and its nodes.
pub struct Request<'a> {
    /// 0: filter, 1: score.
    pub call: u32,
    pub task: Task<'a>,
    bytes: &'a [u8],
    nodes_at: usize,
    nodes: usize,
}

impl<'a> Request<'a> {
    /// Reads a request; `None` if it is not ABI v1 or its node records do
    /// not fit in it.
    pub fn parse(bytes: &'a [u8]) -> Option<Request<'a>> {
        if read_u32(bytes, 0) != ABI_VERSION || bytes.len() < layout::HEADER + layout::TASK_RECORD {
            return None;
        }
        let (call, nodes, at, nodes_at) =
            (read_u32(bytes, 4), read_u32(bytes, 8) as usize, read_u32(bytes, 12) as usize, read_u32(bytes, 16) as usize);
        if nodes_at.checked_add(nodes.checked_mul(layout::NODE_RECORD)?)? > bytes.len() {
            return None;
        }
        let pool = read_str(bytes, at + 24);
        let (constraints_at, constraints_count) = (read_u32(bytes, at + 48) as usize, read_u32(bytes, at + 52) as usize);
        let task = Task {
            id: read_str(bytes, at),
            project: read_str(bytes, at + 8),
            image: read_str(bytes, at + 16),
            pool: if pool.is_empty() { None } else { Some(pool) },
            cpu_millicores: read_u32(bytes, at + 32),
            memory_mib: read_u32(bytes, at + 36),
            gpus: read_u32(bytes, at + 40),
            priority: read_u32(bytes, at + 44) as i32,
            constraints: (0..constraints_count.min(1024)).map(|i| read_str(bytes, constraints_at + i * 8)).collect(),
        };
        Some(Request { call, task, bytes, nodes_at, nodes })
    }
    /// How many nodes it carries.
    #[inline]
    pub fn len(&self) -> usize {
        self.nodes
    }
    /// Whether it carries no node.
    pub fn is_empty(&self) -> bool {
        self.nodes == 0
    }
    /// The nodes, in order.
    #[inline]
    pub fn nodes(&self) -> impl Iterator<Item = Node<'a>> + 'a {
        let (request, first) = (self.bytes, self.nodes_at);
        (0..self.nodes).map(move |i| Node { request, at: first + i * layout::NODE_RECORD })
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

/// Sequential decoding (the settings, ABI v1).
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
    /// A length-prefixed UTF-8 string.
    pub fn str(&mut self) -> Option<&'a str> {
        let len = self.u32()? as usize;
        core::str::from_utf8(self.take(len)?).ok()
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

#[inline]
fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
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

    /// `shepherd_filter`: verdicts written as they come, reasons after.
    pub unsafe fn filter<T: Filter>(slot: &Slot<T>, len: i32) -> i64 {
        let out = OUTPUT.get().get_or_insert_with(Vec::new);
        out.clear();
        if slot.get().is_none() {
            if let Ok(made) = T::new(&Settings::default()) {
                *slot.get() = Some(made);
            }
        }
        if let (Some(plugin), Some(request)) = (slot.get().as_ref(), Request::parse(input(len))) {
            put_u32(out, request.len() as u32);
            let mut reasons: Vec<String> = Vec::new();
            for node in request.nodes() {
                let code = match plugin.filter(&request.task, &node) {
                    Verdict::Keep => 0,
                    Verdict::Reject(why) => match reasons.iter().position(|r| *r == why) {
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
            for r in &reasons {
                put_u32(out, r.len() as u32);
                out.extend_from_slice(r.as_bytes());
            }
        }
        answer(out)
    }

    /// `shepherd_score`: scores written as they come.
    pub unsafe fn score<T: Scorer>(slot: &Slot<T>, len: i32) -> i64 {
        let out = OUTPUT.get().get_or_insert_with(Vec::new);
        out.clear();
        if slot.get().is_none() {
            if let Ok(made) = T::new(&Settings::default()) {
                *slot.get() = Some(made);
            }
        }
        if let (Some(plugin), Some(request)) = (slot.get().as_ref(), Request::parse(input(len))) {
            put_u32(out, request.len() as u32);
            for node in request.nodes() {
                out.extend_from_slice(&plugin.score(&request.task, &node).to_le_bytes());
            }
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
    fn settings_are_read_in_order_and_truncated_requests_refused() {
        let mut b = Vec::new();
        for v in [1u32, 5] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(b"label");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(b"a,b");
        let s = Reader::new(&b).settings().unwrap();
        assert_eq!(s.get("label"), Some("a,b"));
        assert_eq!(s.list("label"), vec!["a", "b"]);
        assert!(Reader::new(&b[..10]).settings().is_none());
        // A request whose node records would run past its end is refused, not misread.
        let mut request = vec![0u8; 76];
        request[0] = 1;
        request[8] = 2; // two nodes
        request[12] = 20;
        request[16] = 76;
        assert!(Request::parse(&request).is_none());
        request[8] = 0;
        assert_eq!(Request::parse(&request).map(|r| r.len()), Some(0));
    }
}
