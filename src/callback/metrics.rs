//! Metrics of the callback service, rendered in the Prometheus text exposition format (version 0.0.4).
//!
//! Counters and histograms are fed from the request events ([`Metrics::observe`]), so they count exactly what the
//! store records. Written by hand: the format is a few lines of text, and the `prometheus` crate would bring a global
//! registry, protobuf and a lock per metric for a handful of numbers owned by one dispatcher.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::agents::{AgentStatus, Agents};
use super::event::{EventKind, MissReason, RequestEvent};
use super::Time;

/// Bucket bounds (seconds) for waits.
const WAIT_BOUNDS: [f64; 10] = [
    5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// A cumulative histogram with fixed bounds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    counts: [u64; WAIT_BOUNDS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    /// Records one value in seconds.
    pub fn observe(&mut self, secs: f64) {
        for (b, c) in WAIT_BOUNDS.iter().zip(self.counts.iter_mut()) {
            if secs <= *b {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }

    /// Number of values.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of values (seconds).
    pub fn sum(&self) -> f64 {
        self.sum
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in WAIT_BOUNDS.iter().zip(self.counts.iter()) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// Service counters and histograms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// Requests submitted.
    pub requests: u64,
    /// Calls placed to visitors.
    pub visitor_calls: u64,
    /// Visitors who answered.
    pub reached: u64,
    /// Visitor–agent bridges.
    pub connected: u64,
    /// Completed conversations.
    pub completed: u64,
    /// Missed requests by reason.
    pub missed: BTreeMap<&'static str, u64>,
    /// Cancelled requests.
    pub cancelled: u64,
    /// Agent calls not taken.
    pub agent_failures: u64,
    /// From due time to bridge.
    pub time_to_connect: Histogram,
    /// Visitor hold time before the bridge.
    pub hold: Histogram,
}

fn miss_label(r: MissReason) -> &'static str {
    match r {
        MissReason::RetriesExhausted => "retries_exhausted",
        MissReason::MaxHold => "max_hold",
        MissReason::VisitorHungUp => "visitor_hung_up",
        MissReason::Interrupted => "interrupted",
    }
}

impl Metrics {
    /// Accounts for one event.
    pub fn observe(&mut self, ev: &RequestEvent) {
        match &ev.kind {
            EventKind::Submitted => self.requests += 1,
            EventKind::CallingVisitor { .. } => self.visitor_calls += 1,
            EventKind::VisitorAnswered => self.reached += 1,
            EventKind::Connected {
                hold,
                time_to_connect,
                ..
            } => {
                self.connected += 1;
                self.hold.observe(hold.as_secs_f64());
                self.time_to_connect.observe(time_to_connect.as_secs_f64());
            }
            EventKind::Completed { .. } => self.completed += 1,
            EventKind::Missed { reason } => {
                *self.missed.entry(miss_label(*reason)).or_default() += 1
            }
            EventKind::Cancelled => self.cancelled += 1,
            EventKind::AgentFailed { .. } => self.agent_failures += 1,
            _ => {}
        }
    }

    /// Renders the metrics and the agents' state at `now`.
    pub fn render(&self, agents: &Agents, now: Time) -> String {
        let mut out = String::new();
        let counters = [
            (
                "rappel_callback_requests_total",
                "Callback requests submitted.",
                self.requests,
            ),
            (
                "rappel_callback_visitor_calls_total",
                "Calls placed to visitors.",
                self.visitor_calls,
            ),
            (
                "rappel_callback_visitors_reached_total",
                "Visitors who answered.",
                self.reached,
            ),
            (
                "rappel_callback_connected_total",
                "Visitors connected to an agent.",
                self.connected,
            ),
            (
                "rappel_callback_completed_total",
                "Conversations completed.",
                self.completed,
            ),
            (
                "rappel_callback_cancelled_total",
                "Requests cancelled.",
                self.cancelled,
            ),
            (
                "rappel_callback_agent_failures_total",
                "Agent calls not taken.",
                self.agent_failures,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let name = "rappel_callback_missed_total";
        let _ = writeln!(
            out,
            "# HELP {name} Requests missed, by reason.\n# TYPE {name} counter"
        );
        for r in [
            MissReason::RetriesExhausted,
            MissReason::MaxHold,
            MissReason::VisitorHungUp,
            MissReason::Interrupted,
        ] {
            let label = miss_label(r);
            let _ = writeln!(
                out,
                "{name}{{reason=\"{label}\"}} {}",
                self.missed.get(label).copied().unwrap_or(0)
            );
        }
        self.time_to_connect.render(
            &mut out,
            "rappel_callback_time_to_connect_seconds",
            "From due time to the bridge.",
        );
        self.hold.render(
            &mut out,
            "rappel_callback_hold_seconds",
            "Visitor hold time before the bridge.",
        );
        let name = "rappel_callback_agent_occupancy_ratio";
        let _ = writeln!(
            out,
            "# HELP {name} Share of present agents' call slots in use.\n# TYPE {name} gauge\n{name} {}",
            agents.occupancy()
        );
        let mut by_status: BTreeMap<&str, u64> =
            ["signed_out", "paused", "busy", "wrap_up", "available"]
                .into_iter()
                .map(|s| (s, 0))
                .collect();
        for n in agents.names() {
            let s = match agents.status(n, now) {
                Some(AgentStatus::SignedOut) => "signed_out",
                Some(AgentStatus::Paused { .. }) => "paused",
                Some(AgentStatus::Busy { .. }) => "busy",
                Some(AgentStatus::WrapUp { .. }) => "wrap_up",
                _ => "available",
            };
            *by_status.entry(s).or_default() += 1;
        }
        let name = "rappel_callback_agents";
        let _ = writeln!(out, "# HELP {name} Agents by status.\n# TYPE {name} gauge");
        for (s, v) in by_status {
            let _ = writeln!(out, "{name}{{status=\"{s}\"}} {v}");
        }
        out
    }
}
