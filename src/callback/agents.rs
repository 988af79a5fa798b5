//! The agents pool: who can take a call now, and how long the queue will take.
//!
//! An agent is *available* when signed in, not paused, under their maximum of concurrent calls and out of wrap-up.
//! An agent being called counts as on a call (so two requests never ring the same agent past their maximum). After a
//! call the agent is in wrap-up for the configured time. Selection takes, among available agents that have every
//! skill the request asks for, the one idle the longest. An agent who misses (no answer, busy, reject) too many
//! calls in a row is paused automatically. The pool also keeps the last handling times to estimate waits.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use super::Time;

/// How many recent handling times the wait estimate averages.
const RECENT_HANDLING: usize = 50;
/// Handling time assumed before any call was handled.
pub const DEFAULT_HANDLING: Duration = Duration::from_secs(180);

/// A configured agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// Unique name.
    pub name: String,
    /// Where to call them (SIP URI or number, given to the call layer as is).
    pub uri: String,
    /// Skills.
    pub skills: BTreeSet<String>,
    /// Maximum concurrent calls (at least 1).
    pub max_concurrent: u32,
}

impl AgentConfig {
    /// An agent with one concurrent call and the given skills.
    pub fn new(name: &str, uri: &str, skills: &[&str]) -> Self {
        AgentConfig {
            name: name.to_owned(),
            uri: uri.to_owned(),
            skills: skills.iter().map(|s| (*s).to_owned()).collect(),
            max_concurrent: 1,
        }
    }
}

/// Pool policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentsPolicy {
    /// Time after a call before the agent is offered another.
    pub wrap_up: Duration,
    /// Consecutive misses that pause an agent; `None` never pauses.
    pub max_consecutive_misses: Option<u32>,
}

impl Default for AgentsPolicy {
    fn default() -> Self {
        AgentsPolicy {
            wrap_up: Duration::from_secs(30),
            max_consecutive_misses: Some(3),
        }
    }
}

/// An agent's presence as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AgentStatus {
    /// Not signed in.
    SignedOut,
    /// Paused (by hand, or `auto` after missed calls).
    Paused {
        /// Paused automatically.
        auto: bool,
    },
    /// At their maximum of calls (ringing or talking).
    Busy {
        /// Calls in progress.
        calls: u32,
    },
    /// In wrap-up after a call.
    WrapUp {
        /// End of wrap-up.
        until: Time,
    },
    /// Can take a call.
    Available,
}

/// Errors from the agents API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// No agent with that name.
    #[error("unknown agent {0}")]
    Unknown(String),
    /// Two agents with the same name in the configuration.
    #[error("duplicate agent {0}")]
    Duplicate(String),
}

#[derive(Debug, Clone)]
struct Agent {
    config: AgentConfig,
    signed_in: bool,
    paused: Option<bool>,
    calls: u32,
    wrap_up_until: Option<Time>,
    idle_since: Time,
    consecutive_misses: u32,
}

impl Agent {
    fn has_skills(&self, skills: &BTreeSet<String>) -> bool {
        skills.is_subset(&self.config.skills)
    }

    fn present(&self) -> bool {
        self.signed_in && self.paused.is_none()
    }

    fn free_slots(&self, now: Time) -> u32 {
        if !self.present() || self.wrap_up_until.is_some_and(|t| t > now) {
            return 0;
        }
        self.config.max_concurrent.max(1).saturating_sub(self.calls)
    }
}

/// The pool of agents.
#[derive(Debug, Clone)]
pub struct Agents {
    agents: Vec<Agent>,
    policy: AgentsPolicy,
    recent: VecDeque<Duration>,
}

impl Agents {
    /// The configured agents, all signed in and idle since `now`.
    pub fn new(
        configs: Vec<AgentConfig>,
        policy: AgentsPolicy,
        now: Time,
    ) -> Result<Self, AgentError> {
        let mut names = BTreeSet::new();
        let mut agents = Vec::with_capacity(configs.len());
        for config in configs {
            if !names.insert(config.name.clone()) {
                return Err(AgentError::Duplicate(config.name));
            }
            agents.push(Agent {
                config,
                signed_in: true,
                paused: None,
                calls: 0,
                wrap_up_until: None,
                idle_since: now,
                consecutive_misses: 0,
            });
        }
        Ok(Agents {
            agents,
            policy,
            recent: VecDeque::new(),
        })
    }

    fn get(&mut self, name: &str) -> Result<&mut Agent, AgentError> {
        self.agents
            .iter_mut()
            .find(|a| a.config.name == name)
            .ok_or_else(|| AgentError::Unknown(name.to_owned()))
    }

    /// Names of all agents, in configuration order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.agents.iter().map(|a| a.config.name.as_str())
    }

    /// The agent's configuration.
    pub fn config(&self, name: &str) -> Option<&AgentConfig> {
        self.agents
            .iter()
            .find(|a| a.config.name == name)
            .map(|a| &a.config)
    }

    /// Signs an agent in (idle from `now`).
    pub fn sign_in(&mut self, name: &str, now: Time) -> Result<(), AgentError> {
        let a = self.get(name)?;
        if !a.signed_in {
            a.signed_in = true;
            a.idle_since = now;
        }
        Ok(())
    }

    /// Signs an agent out (calls in progress go on).
    pub fn sign_out(&mut self, name: &str) -> Result<(), AgentError> {
        self.get(name)?.signed_in = false;
        Ok(())
    }

    /// Pauses an agent by hand.
    pub fn pause(&mut self, name: &str) -> Result<(), AgentError> {
        self.get(name)?.paused = Some(false);
        Ok(())
    }

    /// Resumes a paused agent (also clears the miss count).
    pub fn resume(&mut self, name: &str, now: Time) -> Result<(), AgentError> {
        let a = self.get(name)?;
        if a.paused.take().is_some() {
            a.idle_since = a.idle_since.max(now);
        }
        a.consecutive_misses = 0;
        Ok(())
    }

    /// The agent's status at `now`.
    pub fn status(&self, name: &str, now: Time) -> Option<AgentStatus> {
        let a = self.agents.iter().find(|a| a.config.name == name)?;
        Some(if !a.signed_in {
            AgentStatus::SignedOut
        } else if let Some(auto) = a.paused {
            AgentStatus::Paused { auto }
        } else if a.calls >= a.config.max_concurrent.max(1) {
            AgentStatus::Busy { calls: a.calls }
        } else if let Some(until) = a.wrap_up_until.filter(|t| *t > now) {
            AgentStatus::WrapUp { until }
        } else {
            AgentStatus::Available
        })
    }

    /// The available agent with every skill in `skills`, not in `exclude`, idle the longest.
    pub fn select(
        &self,
        skills: &BTreeSet<String>,
        exclude: &BTreeSet<String>,
        now: Time,
    ) -> Option<&str> {
        self.agents
            .iter()
            .filter(|a| {
                a.free_slots(now) > 0 && a.has_skills(skills) && !exclude.contains(&a.config.name)
            })
            .min_by_key(|a| a.idle_since)
            .map(|a| a.config.name.as_str())
    }

    /// Marks a call to the agent as started (ringing counts as busy).
    pub fn reserve(&mut self, name: &str) -> Result<(), AgentError> {
        let a = self.get(name)?;
        a.calls = a.calls.saturating_add(1);
        Ok(())
    }

    /// The agent answered: clears the miss count.
    pub fn answered(&mut self, name: &str) -> Result<(), AgentError> {
        self.get(name)?.consecutive_misses = 0;
        Ok(())
    }

    /// The agent did not take a call; returns `true` if this paused them automatically.
    pub fn missed(&mut self, name: &str) -> Result<bool, AgentError> {
        let max = self.policy.max_consecutive_misses;
        let a = self.get(name)?;
        a.calls = a.calls.saturating_sub(1);
        a.consecutive_misses = a.consecutive_misses.saturating_add(1);
        if max.is_some_and(|m| a.consecutive_misses >= m) && a.paused.is_none() {
            a.paused = Some(true);
            return Ok(true);
        }
        Ok(false)
    }

    /// A call to the agent was withdrawn (the visitor left): no penalty, no wrap-up.
    pub fn withdrawn(&mut self, name: &str) -> Result<(), AgentError> {
        let a = self.get(name)?;
        a.calls = a.calls.saturating_sub(1);
        Ok(())
    }

    /// A call the agent took ended; `handled` is its talk time if a conversation took place (recorded for waits).
    pub fn released(
        &mut self,
        name: &str,
        now: Time,
        handled: Option<Duration>,
    ) -> Result<(), AgentError> {
        let wrap_up = self.policy.wrap_up;
        let a = self.get(name)?;
        a.calls = a.calls.saturating_sub(1);
        let until = super::add(now, wrap_up);
        a.wrap_up_until = Some(until);
        a.idle_since = until;
        if let Some(h) = handled {
            if self.recent.len() >= RECENT_HANDLING {
                self.recent.pop_front();
            }
            self.recent.push_back(h.saturating_add(wrap_up));
        }
        Ok(())
    }

    /// The next instant an agent leaves wrap-up (after `now`), for the dispatcher's timer.
    pub fn next_wrap_up_end(&self, now: Time) -> Option<Time> {
        self.agents
            .iter()
            .filter_map(|a| a.wrap_up_until)
            .filter(|t| *t > now)
            .min()
    }

    /// Mean of recent handling times (talk + wrap-up), or [`DEFAULT_HANDLING`].
    pub fn mean_handling(&self) -> Duration {
        let n = u32::try_from(self.recent.len()).unwrap_or(u32::MAX);
        if n == 0 {
            return DEFAULT_HANDLING;
        }
        self.recent.iter().sum::<Duration>() / n
    }

    /// Estimated wait for a request with `skills` that has `ahead` requests before it.
    ///
    /// With `free` slots open now among present agents with the skills, and `capacity` slots in total, a request
    /// with `ahead < free` is served at once; otherwise it waits `(ahead - free) / capacity + 1` mean handling
    /// times. `None` when no present agent has the skills.
    pub fn estimated_wait(
        &self,
        skills: &BTreeSet<String>,
        ahead: usize,
        now: Time,
    ) -> Option<Duration> {
        let able = || {
            self.agents
                .iter()
                .filter(|a| a.present() && a.has_skills(skills))
        };
        let capacity: u64 = able()
            .map(|a| u64::from(a.config.max_concurrent.max(1)))
            .sum();
        if capacity == 0 {
            return None;
        }
        let free: u64 = able().map(|a| u64::from(a.free_slots(now))).sum();
        let ahead = u64::try_from(ahead).unwrap_or(u64::MAX);
        if ahead < free {
            return Some(Duration::ZERO);
        }
        let rounds = u32::try_from((ahead - free) / capacity + 1).unwrap_or(u32::MAX);
        Some(self.mean_handling().saturating_mul(rounds))
    }

    /// Share of present agents' slots in use, in `[0, 1]` (0 when nobody is present).
    pub fn occupancy(&self) -> f64 {
        let present = || self.agents.iter().filter(|a| a.present() || a.calls > 0);
        let capacity: u32 = present().map(|a| a.config.max_concurrent.max(1)).sum();
        let used: u32 = present()
            .map(|a| a.calls.min(a.config.max_concurrent.max(1)))
            .sum();
        if capacity == 0 {
            0.0
        } else {
            f64::from(used) / f64::from(capacity)
        }
    }
}
