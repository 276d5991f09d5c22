//! The autoscaler: grows and shrinks autoscaled pools with machines made by
//! provisioners (`shepherd-provision`). Leader only; every `interval` it
//!
//! 1. destroys failed machines, and fails creates whose agent never joined
//!    within the pool's `join_timeout` and machines whose node has been
//!    down that long;
//! 2. drains machines idle past the pool's `idle_time` (never below `min`,
//!    never one holding a task), and destroys drained ones once empty;
//! 3. makes machines up to each pool's `min`;
//! 4. plans a scale-up with the placement engine
//!    ([`shepherd_sched::autoscale::plan`]): the ready queued tasks placed
//!    on the nodes there are plus the machines being made, then what is
//!    left on candidate machines of each pool; it makes what the plan
//!    says, within `max`, `max_creating`, the cooldown and any backoff, and
//!    tells every waiting task why (its `reason`).
//!
//! A machine is recorded (`creating`) before its provisioner is called, so
//! a crash mid-create leaves a record. When it starts to lead, and every
//! 30 s, the autoscaler reconciles the store with each provisioner's
//! `list`: a listed machine with no record is destroyed; a joined machine
//! that is not listed fails and is destroyed; a `creating` one that is not
//! listed and that no create answered (a server died mid-create) is asked
//! for again with the same id and join token (a machine's token is an HMAC
//! of its id under a key the store keeps; creates are idempotent), so it is
//! never made twice nor forgotten; one made but not listed yet keeps its
//! place until its join timeout. A create that fails or times out counts
//! against its pool: it backs off (1 s, doubling, at most 5 min), and after
//! three failures in a row the pool is `failing` (API, metrics, an error
//! log) until a machine of it joins. Other pools go on.
//!
//! The files, by concern: `autoscaler.rs` holds the autoscaler's state, its
//! loop and the helpers every part shares; `round.rs` decides what one
//! round does to every pool (fail, drain, destroy, grow by the plan);
//! `lifecycle.rs` makes, drains, fails and destroys machines;
//! `reconcile.rs` squares the store with the provisioners' lists;
//! `backoff.rs` counts failed creates and backs a pool off; `status.rs`
//! is what the API shows of each pool.

mod autoscaler;
mod backoff;
pub mod config;
mod lifecycle;
mod reconcile;
mod round;
mod status;

pub use autoscaler::{AutoscaleError, AutoscaleParts, Autoscaler};
pub use status::PoolStatus;
