//! A node's lifecycle: its states and the one function that decides every
//! change of state, as `lifecycle` does for tasks. The server's node
//! registration, drain, failure detection and the in-process node's
//! recovery all go through [`NodeState::next`].
//!
//! ```text
//!            drain                 missed heartbeats
//!   ready ─────────► draining ───────────────────────► down
//!     ▲  ◄── register (a drain survives it) ──┘          │
//!     └───────── register / fenced ◄─────────────────────┘
//! ```

/// Health of a node as the cluster sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// Takes new tasks.
    Ready,
    /// Takes no new tasks; its running ones finish.
    Draining,
    /// Missed its heartbeats: its attempts were given away.
    Down,
}

/// Something that happened to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeEvent {
    /// Its agent registered (first time, or again after a restart or
    /// being declared down; it reconciles before any new work).
    Registered,
    /// An admin drained it.
    Drain,
    /// It stayed silent past the node timeout.
    MissedHeartbeats,
    /// An in-process node found down fenced its attempts.
    Fenced,
}

/// A node event that makes no sense in the node's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node is {}: {event:?} does not apply", state.as_str())]
pub struct IllegalNodeEvent {
    pub state: NodeState,
    pub event: NodeEvent,
}

impl NodeState {
    /// The stable name used in the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Ready => "ready",
            NodeState::Draining => "draining",
            NodeState::Down => "down",
        }
    }

    /// Parses [`NodeState::as_str`]'s names.
    pub fn parse(name: &str) -> Option<NodeState> {
        [NodeState::Ready, NodeState::Draining, NodeState::Down].into_iter().find(|s| s.as_str() == name)
    }

    /// The state after `event`: the node lifecycle's only decision.
    pub fn next(self, event: NodeEvent) -> Result<NodeState, IllegalNodeEvent> {
        use NodeEvent::*;
        use NodeState::*;
        match (self, event) {
            // A drain outlives the agent's restarts and reconnects.
            (Draining, Registered) => Ok(Draining),
            (_, Registered) => Ok(Ready),
            (_, Drain) => Ok(Draining),
            (Ready | Draining, MissedHeartbeats) => Ok(Down),
            (Down, Fenced) => Ok(Ready),
            (state, event) => Err(IllegalNodeEvent { state, event }),
        }
    }

    /// Whether some event moves a node from `self` to `to` (staying put included).
    pub fn can_become(self, to: NodeState) -> bool {
        [NodeEvent::Registered, NodeEvent::Drain, NodeEvent::MissedHeartbeats, NodeEvent::Fenced]
            .into_iter()
            .any(|event| self.next(event) == Ok(to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use NodeEvent::*;
    use NodeState::*;

    #[test]
    fn every_state_and_event() {
        let expected = [
            (Ready, Registered, Ok(Ready)),
            (Ready, Drain, Ok(Draining)),
            (Ready, MissedHeartbeats, Ok(Down)),
            (Ready, Fenced, Err(())),
            (Draining, Registered, Ok(Draining)),
            (Draining, Drain, Ok(Draining)),
            (Draining, MissedHeartbeats, Ok(Down)),
            (Draining, Fenced, Err(())),
            (Down, Registered, Ok(Ready)),
            (Down, Drain, Ok(Draining)),
            (Down, MissedHeartbeats, Err(())),
            (Down, Fenced, Ok(Ready)),
        ];
        for (state, event, to) in expected {
            assert_eq!(state.next(event).map_err(|_| ()), to, "{state:?} + {event:?}");
        }
    }

    #[test]
    fn every_pair_of_states() {
        let table = [
            (Ready, Ready, true),
            (Ready, Draining, true),
            (Ready, Down, true),
            (Draining, Ready, false),
            (Draining, Draining, true),
            (Draining, Down, true),
            (Down, Ready, true),
            (Down, Draining, true),
            (Down, Down, false),
        ];
        for (from, to, allowed) in table {
            assert_eq!(from.can_become(to), allowed, "{from:?} -> {to:?}");
        }
        for state in [Ready, Draining, Down] {
            assert_eq!(NodeState::parse(state.as_str()), Some(state));
        }
    }
}
