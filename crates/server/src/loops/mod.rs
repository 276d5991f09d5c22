//! The server's long-running loops, each in its own module and all started
//! by `crate::cluster::Cluster::start`: leader election ([`leader`]),
//! placement ([`scheduler`]), the node watch ([`node_watch`]), heartbeats
//! into the store ([`heartbeats`]), the autoscaler ([`autoscale`]), webhook
//! delivery ([`webhooks`]), schedule firing ([`schedules`]), the event hub
//! ([`events`]), the relay of other servers' messages ([`relay`]) and the
//! dashboard's timeline ([`timeline`]) and the scheduler config's
//! reloads ([`reload`]).

pub mod autoscale;
pub mod events;
pub mod heartbeats;
pub mod leader;
pub mod node_watch;
pub mod relay;
pub mod reload;
pub mod retention;
pub mod scheduler;
pub mod schedules;
pub mod timeline;
pub mod webhooks;
