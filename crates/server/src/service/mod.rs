//! The server's operations, apart from any one API: the REST handlers in
//! `api/` call them, and so will a second API (IronWorker compatibility),
//! schedules and arrays. Authorization (`Caller::can_access`) is decided
//! here, not by each caller, and errors are typed ([`TaskError`]) for each
//! API to render its own way.

pub mod codes;
pub mod schedules;
pub mod tasks;

pub use codes::CodeService;
pub use schedules::ScheduleService;
pub use tasks::{TaskError, TaskService};
