//! # Log lines for conditions that last
//!
//! A failing API server, or a Service that stays pending, is one condition that lasts, not a
//! new event on every retry or every publish. [`Repeats`] turns a stream of occurrences into
//! the few lines an operator needs: the first one, a reminder at most once per interval with
//! how many were not logged meanwhile, and the end of the condition with how long it lasted.
//! It only decides; the caller logs, so each line keeps its own target, level and fields.
//! [`ProblemLog`] does the same for the problems of the compile report.
use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use tracing::{info, warn};

/// What to log for one occurrence (see [`Repeats::hit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The condition starts: log it.
    First,
    /// Still there after an interval: log a reminder that says how many occurrences went
    /// unlogged since the last line and since when the condition lasts.
    Reminder {
        /// Occurrences not logged since the last line.
        unlogged: u64,
        /// How long the condition has lasted.
        lasting: Duration,
    },
    /// A repeat inside the interval: log nothing (or at debug).
    Quiet,
}

/// The end of a condition (see [`Repeats::end`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// How many occurrences there were in all.
    pub occurrences: u64,
    /// How long it lasted.
    pub lasted: Duration,
}

#[derive(Debug, Clone)]
struct Entry {
    since: Instant,
    logged: Instant,
    unlogged: u64,
    total: u64,
}

/// Rate limits for the log lines of lasting conditions, one per key.
#[derive(Debug, Clone)]
pub struct Repeats<K> {
    every: Duration,
    entries: HashMap<K, Entry>,
}

impl<K: Hash + Eq + Clone> Repeats<K> {
    /// Reminders at most once per `every`.
    pub fn new(every: Duration) -> Self {
        Repeats {
            every,
            entries: HashMap::new(),
        }
    }

    /// One occurrence of `key`'s condition at `now`.
    pub fn hit(&mut self, key: &K, now: Instant) -> Verdict {
        let Some(e) = self.entries.get_mut(key) else {
            self.entries.insert(
                key.clone(),
                Entry {
                    since: now,
                    logged: now,
                    unlogged: 0,
                    total: 1,
                },
            );
            return Verdict::First;
        };
        e.total += 1;
        if now.saturating_duration_since(e.logged) >= self.every {
            let unlogged = e.unlogged;
            e.unlogged = 0;
            e.logged = now;
            Verdict::Reminder {
                unlogged,
                lasting: now.saturating_duration_since(e.since),
            }
        } else {
            e.unlogged += 1;
            Verdict::Quiet
        }
    }

    /// `key`'s condition is over; `Some` when it had started.
    pub fn end(&mut self, key: &K, now: Instant) -> Option<Ended> {
        self.entries.remove(key).map(|e| Ended {
            occurrences: e.total,
            lasted: now.saturating_duration_since(e.since),
        })
    }

    /// Ends every condition whose key `keep` rejects, returning them.
    pub fn end_unless(&mut self, now: Instant, keep: impl Fn(&K) -> bool) -> Vec<(K, Ended)> {
        let gone: Vec<K> = self.entries.keys().filter(|k| !keep(k)).cloned().collect();
        gone.into_iter()
            .filter_map(|k| self.end(&k, now).map(|e| (k, e)))
            .collect()
    }

    /// Whether `key`'s condition is going on.
    pub fn is_on(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }
}

/// `sluiced`'s log filter when `RUST_LOG` is not set: info and above, without kube-rs's
/// client, which logs every failed request (Sluice logs failures itself, rate-limited).
pub const DEFAULT_FILTER: &str = "info,kube_client=off";

/// How often a lasting failure (an API server that does not answer) is logged again.
pub const FAILURE_REMINDER: Duration = Duration::from_secs(30);
/// How often a lasting problem of the compile report (a pending Service) is logged again.
pub const PROBLEM_REMINDER: Duration = Duration::from_secs(600);

/// The log lines of the compile report's problems: each one when it appears (`service
/// problem`, warn), a reminder at most every [`PROBLEM_REMINDER`] while it lasts and Sluice
/// publishes, and its end (`service problem resolved`, info). A publish that changes
/// something else logs nothing about problems that were already there.
#[derive(Debug, Clone)]
pub struct ProblemLog {
    repeats: Repeats<(String, String)>,
}

impl Default for ProblemLog {
    fn default() -> Self {
        ProblemLog {
            repeats: Repeats::new(PROBLEM_REMINDER),
        }
    }
}

impl ProblemLog {
    /// Logs what changed given every problem in effect now, as (Service or `""` for
    /// problems of no Service, problem); returns how many lines it wrote.
    pub fn update(&mut self, now: Instant, problems: &[(String, String)]) -> usize {
        let mut lines = 0;
        for key in problems {
            let (service, problem) = key;
            match self.repeats.hit(key, now) {
                Verdict::First if service.is_empty() => warn!(problem = %problem, "problem"),
                Verdict::First => warn!(service = %service, problem = %problem, "service problem"),
                Verdict::Reminder { lasting, .. } => {
                    warn!(service = %service, problem = %problem, lasting_s = lasting.as_secs(), "problem persists")
                }
                Verdict::Quiet => continue,
            }
            lines += 1;
        }
        for ((service, problem), e) in self.repeats.end_unless(now, |k| problems.contains(k)) {
            info!(service = %service, problem = %problem, lasted_s = e.lasted.as_secs(), "service problem resolved");
            lines += 1;
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_logged_when_they_change_not_on_every_publish() {
        let t0 = Instant::now();
        let p = |s: &str, m: &str| (s.to_owned(), m.to_owned());
        let mut log = ProblemLog::default();
        let pending = vec![p("default/a", "no VIP"), p("default/b", "no VIP")];
        assert_eq!(log.update(t0, &pending), 2);
        // A hundred publishes for other reasons: nothing.
        for i in 1..=100 {
            assert_eq!(log.update(t0 + Duration::from_secs(i), &pending), 0);
        }
        // One is resolved, one appears.
        let now = vec![p("default/b", "no VIP"), p("", "next hop unresolved")];
        assert_eq!(log.update(t0 + Duration::from_secs(101), &now), 2);
        // After the reminder interval, one line each for what persists.
        assert_eq!(log.update(t0 + PROBLEM_REMINDER * 2, &now), 2);
    }

    #[test]
    fn first_then_quiet_then_a_reminder_then_the_end() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut r = Repeats::new(s(30));
        assert_eq!(r.hit(&"watch", t0), Verdict::First);
        assert!(r.is_on(&"watch"));
        for i in 1..=5 {
            assert_eq!(r.hit(&"watch", t0 + s(i)), Verdict::Quiet);
        }
        assert_eq!(
            r.hit(&"watch", t0 + s(31)),
            Verdict::Reminder {
                unlogged: 5,
                lasting: s(31)
            }
        );
        assert_eq!(r.hit(&"watch", t0 + s(32)), Verdict::Quiet);
        assert_eq!(
            r.end(&"watch", t0 + s(40)),
            Some(Ended {
                occurrences: 8,
                lasted: s(40)
            })
        );
        assert_eq!(r.end(&"watch", t0 + s(41)), None);
        assert_eq!(r.hit(&"watch", t0 + s(42)), Verdict::First);
        assert_eq!(r.hit(&"lease", t0 + s(42)), Verdict::First);
        let ended = r.end_unless(t0 + s(43), |k| *k == "lease");
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].0, "watch");
        assert!(r.is_on(&"lease"));
    }
}
