//! The server's operations, apart from any one API: the REST handlers
//! (`http::v1`), the IronWorker API (`http::ironworker`) and the agent API
//! (`http::agent`) are thin translations over them, and schedules fire
//! through them. Authorization (`Caller::can_access`) is decided here, not
//! by each caller, and errors are typed ([`TaskError`], [`AgentError`]) for
//! each API to render its own way.

pub mod agents;
pub mod auth;
pub mod codes;
pub mod overview;
pub mod schedules;
pub mod tasks;

pub use agents::{AgentError, AgentService};
pub use codes::CodeService;
pub use schedules::ScheduleService;
pub use tasks::{TaskError, TaskService};
