//! Who is asking: a person, a workload, or an agent acting for a person.

use serde::{Deserialize, Serialize};

/// The agent acting for the subject (RFC 8693 `act`, or `azp`/`client_id`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Actor {
    /// The acting agent's subject (the `act` claim's `sub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The agent's OAuth client id (`azp` / `client_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Earlier actors of a nested `act` chain, nearest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
}

impl Actor {
    /// An actor known by its subject.
    pub fn new(subject: impl Into<String>) -> Self {
        Actor { subject: Some(subject.into()), client_id: None, chain: Vec::new() }
    }

    /// The name decisions show: the subject, else the client id.
    pub fn name(&self) -> &str {
        self.subject.as_deref().or(self.client_id.as_deref()).unwrap_or("")
    }
}

/// The caller a decision is made for.
///
/// ```
/// use policy_core::{Actor, Identity};
/// let alice = Identity::new("alice@example.com").with_groups(["developers"]);
/// let agent = alice.clone().with_actor(Actor::new("copilot-7"));
/// assert!(alice.actor.is_none());
/// assert_eq!(agent.actor.as_ref().map(Actor::name), Some("copilot-7"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    /// The person or workload (the token's subject claim).
    pub subject: String,
    /// Groups the subject belongs to.
    pub groups: Vec<String>,
    /// The agent acting for the subject, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
}

impl Identity {
    /// An identity with no groups and no actor.
    pub fn new(subject: impl Into<String>) -> Self {
        Identity { subject: subject.into(), groups: Vec::new(), actor: None }
    }

    /// Replaces the groups.
    #[must_use]
    pub fn with_groups<I, S>(mut self, groups: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.groups = groups.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the acting agent.
    #[must_use]
    pub fn with_actor(mut self, actor: Actor) -> Self {
        self.actor = Some(actor);
        self
    }
}
