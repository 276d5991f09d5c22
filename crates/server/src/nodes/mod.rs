//! The nodes as the server sees them: how it reaches their agents
//! ([`links`], [`remote`], [`cluster_links`], [`dispatch`]), what the
//! scheduler knows of them ([`view`]), whether they are alive
//! ([`liveness`]), what the server takes from them ([`guard`]), and the
//! in-process agent's way into the store ([`backend`]).

pub mod backend;
pub mod cluster_links;
pub mod dispatch;
pub mod guard;
pub mod links;
pub mod liveness;
pub mod remote;
pub mod view;
