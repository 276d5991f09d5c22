//! The server's operations, apart from any one API: the REST handlers
//! (`http::v1`), the IronWorker API (`http::ironworker`) and the agent API
//! (`http::agent`) are thin translations over them, and schedules fire
//! through them. Authorization (`Caller::can_access`) is decided here, not
//! by each caller, and errors are typed ([`ServiceError`], [`AgentError`]) for
//! each API to render its own way.

pub mod agents;
pub mod audit;
pub mod auth;
pub mod codes;
pub mod error;
pub mod images;
pub mod nodes;
pub mod overview;
pub mod projects;
pub mod schedules;
pub mod tasks;
pub mod volumes;
pub mod workflows;

pub use agents::{AgentError, AgentService};
pub use codes::CodeService;
pub use error::{Refusal, ServiceError};
pub use images::ImageService;
pub use nodes::NodeService;
pub use projects::ProjectService;
pub use schedules::ScheduleService;
pub use tasks::TaskService;
pub use volumes::VolumeService;
