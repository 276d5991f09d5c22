//! Machines the platform provisions itself (autoscaled pools): what one is,
//! the shape it is made in, and its lifecycle, decided in one place as
//! [`crate::node`] does for nodes.
//!
//! ```text
//!             joined            idle past its time      empty
//!  creating ─────────► joined ──────────────────► draining ─────► destroying ──► (gone)
//!     │                  │ ▲      work waits again    │               │
//!     │                  │ └──────────────────────────┘               │
//!     └── create failed, never joined, vanished ──► failed ──► destroying
//! ```
//!
//! A machine is recorded (`creating`) before its provider is asked to make
//! it, so a server that dies mid-create leaves a record that the next
//! leader reconciles against the provider's list: nothing is made twice or
//! forgotten.

use crate::{Resources, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a machine is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MachineState {
    /// Recorded, and its provider asked to make it; its agent has not joined yet.
    Creating,
    /// Its agent joined: an ordinary node of its pool.
    Joined,
    /// Idle past its pool's idle time: drained, destroyed once empty.
    Draining,
    /// Its provider is asked to destroy it.
    Destroying,
    /// Its create failed or timed out, or it vanished: it is destroyed.
    Failed,
}

/// Every state, in lifecycle order.
pub const MACHINE_STATES: [MachineState; 5] =
    [MachineState::Creating, MachineState::Joined, MachineState::Draining, MachineState::Destroying, MachineState::Failed];

impl MachineState {
    /// The stable name used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Creating => "creating",
            MachineState::Joined => "joined",
            MachineState::Draining => "draining",
            MachineState::Destroying => "destroying",
            MachineState::Failed => "failed",
        }
    }

    /// Parses [`MachineState::as_str`]'s names.
    pub fn parse(name: &str) -> Option<MachineState> {
        MACHINE_STATES.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether a machine may go from this state to `to` (the table the
    /// autoscaler's every change is checked against).
    pub fn can_become(self, to: MachineState) -> bool {
        use MachineState::*;
        matches!(
            (self, to),
            (Creating, Joined | Failed | Destroying)
                | (Joined, Draining | Failed | Destroying)
                | (Draining, Joined | Destroying | Failed)
                | (Destroying, Failed)
                | (Failed, Destroying)
        )
    }

    /// Whether the machine counts toward its pool's size (made or being
    /// made, not on its way out).
    pub fn counts(self) -> bool {
        matches!(self, MachineState::Creating | MachineState::Joined)
    }
}

impl std::fmt::Display for MachineState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a pool's machines are made as: the node they become.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachineShape {
    /// CPU the machine's node offers, in millicores.
    pub cpu_millicores: u32,
    /// Memory the machine's node offers, in MiB.
    pub memory_mib: u32,
    /// Most tasks at once on the machine's node.
    pub max_tasks: u32,
    /// Labels of the machine's node (besides `pool` and `machine`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl MachineShape {
    /// The CPU and memory the machine offers.
    pub fn capacity(&self) -> Resources {
        Resources { cpu_millicores: self.cpu_millicores, memory_mib: self.memory_mib }
    }
}

/// A provisioned machine as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// Shepherd's id (`m-…`), known before the provider makes it.
    pub id: String,
    /// The autoscaled pool it belongs to; its node carries `pool=<pool>`.
    pub pool: String,
    /// The provisioner that made it (a name from the autoscale configuration).
    pub provisioner: String,
    /// The provider's id for it (a container id, an instance id), once known.
    pub provider_id: Option<String>,
    pub state: MachineState,
    pub shape: MachineShape,
    /// A free-form cost label from the pool's configuration (e.g. `0.05/h`).
    pub cost: Option<String>,
    /// The node its agent registered as.
    pub node_id: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// When its provider said it was made.
    #[serde(default)]
    pub provisioned_at: Option<Timestamp>,
    pub joined_at: Option<Timestamp>,
    /// Why it failed, or the last error its provider gave.
    pub error: Option<String>,
    /// SHA-256 (hex) of its own join credential; the credential itself is
    /// handed to the provider only.
    pub join_token_sha256: String,
}

impl Machine {
    /// Moves it to `to` at `now`, if its lifecycle allows.
    pub fn become_(&mut self, to: MachineState, now: Timestamp) -> Result<(), IllegalMachineChange> {
        if self.state == to {
            return Ok(());
        }
        if !self.state.can_become(to) {
            return Err(IllegalMachineChange { from: self.state, to });
        }
        self.state = to;
        self.updated_at = now;
        Ok(())
    }
}

/// A machine state change its lifecycle does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {from} machine cannot become {to}")]
pub struct IllegalMachineChange {
    pub from: MachineState,
    pub to: MachineState,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for state in MACHINE_STATES {
            assert_eq!(MachineState::parse(state.as_str()), Some(state));
            assert_eq!(serde_json::to_string(&state).unwrap(), format!("\"{}\"", state.as_str()));
        }
        assert_eq!(MachineState::parse("gone"), None);
    }

    #[test]
    fn the_lifecycle_table() {
        use MachineState::*;
        let allowed = [
            (Creating, Joined),
            (Creating, Failed),
            (Creating, Destroying),
            (Joined, Draining),
            (Joined, Failed),
            (Joined, Destroying),
            (Draining, Joined),
            (Draining, Destroying),
            (Draining, Failed),
            (Destroying, Failed),
            (Failed, Destroying),
        ];
        for from in MACHINE_STATES {
            for to in MACHINE_STATES {
                assert_eq!(from.can_become(to), allowed.contains(&(from, to)), "{from} -> {to}");
            }
        }
        // Nothing goes back to creating, and destroying never comes back to work.
        assert!(MACHINE_STATES.iter().all(|s| !s.can_become(Creating)));
        assert!(!Destroying.can_become(Joined));
    }

    #[test]
    fn become_checks_the_table() {
        let mut m = Machine {
            id: "m-1".into(),
            pool: "burst".into(),
            provisioner: "local".into(),
            provider_id: None,
            state: MachineState::Creating,
            shape: MachineShape { cpu_millicores: 1000, memory_mib: 512, max_tasks: 8, labels: BTreeMap::new() },
            cost: None,
            node_id: None,
            created_at: Timestamp(1),
            updated_at: Timestamp(1),
            provisioned_at: None,
            joined_at: None,
            error: None,
            join_token_sha256: String::new(),
        };
        m.become_(MachineState::Joined, Timestamp(5)).unwrap();
        assert_eq!((m.state, m.updated_at), (MachineState::Joined, Timestamp(5)));
        assert_eq!(
            m.become_(MachineState::Creating, Timestamp(6)),
            Err(IllegalMachineChange { from: MachineState::Joined, to: MachineState::Creating })
        );
        m.become_(MachineState::Joined, Timestamp(7)).unwrap();
        assert_eq!(m.updated_at, Timestamp(5), "staying put changes nothing");
    }
}
