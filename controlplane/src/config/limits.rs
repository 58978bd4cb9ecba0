//! `[limits]`: new-flow rate limits (token buckets) per frontend and per source prefix, and
//! the parser of the `sluice.dev/new-flow-limit*` annotations that override them per Service.

use serde::Deserialize;
use sluice_dataplane::pipeline::SourceLimitConfig;
use sluice_dataplane::snapshot::FlowLimit;

/// The highest new-flow rate a limit may name (per second, whole host).
pub const MAX_FLOW_RATE: u32 = 100_000_000;

/// The largest source bucket table (per worker).
pub const MAX_SOURCE_BUCKETS: usize = 1 << 24;

/// `[limits]`: new-flow budgets. Every rate is for the whole host, divided among the workers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// New flows per second each frontend (VIP, protocol, port) admits; 0: no limit. The
    /// `sluice.dev/new-flow-limit` annotation overrides it per Service. Default: 0.
    pub new_flows_per_vip: u32,
    /// The most new flows a frontend admits at once after a quiet spell; 0: one second's
    /// worth (`new_flows_per_vip`). Default: 0.
    pub new_flows_per_vip_burst: u32,
    /// New flows per second one source prefix may open to one frontend; 0: no limit. The
    /// `sluice.dev/new-flow-limit-per-source` annotation overrides it per Service. Default: 0.
    pub new_flows_per_source: u32,
    /// The burst of `new_flows_per_source`; 0: one second's worth. Default: 0.
    pub new_flows_per_source_burst: u32,
    /// The prefix length that groups IPv4 sources (1 to 32). Default: 24.
    pub source_prefix_v4: u8,
    /// The prefix length that groups IPv6 sources (1 to 128). Default: 64.
    pub source_prefix_v6: u8,
    /// Source buckets per worker, a power of two (8 bytes each, allocated zeroed: only the
    /// buckets in use take memory). Default: 65536.
    pub source_buckets: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            new_flows_per_vip: 0,
            new_flows_per_vip_burst: 0,
            new_flows_per_source: 0,
            new_flows_per_source_burst: 0,
            source_prefix_v4: 24,
            source_prefix_v6: 64,
            source_buckets: 1 << 16,
        }
    }
}

impl LimitsConfig {
    /// The default per-frontend limit as (rate, burst); rate 0: none.
    pub fn vip(&self) -> RateBurst {
        RateBurst {
            rate: self.new_flows_per_vip,
            burst: self.new_flows_per_vip_burst,
        }
    }

    /// The default per-source-prefix limit as (rate, burst); rate 0: none.
    pub fn source(&self) -> RateBurst {
        RateBurst {
            rate: self.new_flows_per_source,
            burst: self.new_flows_per_source_burst,
        }
    }

    /// The workers' source bucket tables; `seed` spreads prefixes over the buckets.
    pub fn source_buckets(&self, seed: u64) -> SourceLimitConfig {
        SourceLimitConfig {
            prefix_v4: self.source_prefix_v4,
            prefix_v6: self.source_prefix_v6,
            buckets: self.source_buckets,
            seed,
        }
    }

    /// The checks of `[limits]`: `(key, message)` of the first problem.
    pub(super) fn check(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((format!("limits.{k}"), m));
        for (k, rate, bk, burst) in [
            (
                "new_flows_per_vip",
                self.new_flows_per_vip,
                "new_flows_per_vip_burst",
                self.new_flows_per_vip_burst,
            ),
            (
                "new_flows_per_source",
                self.new_flows_per_source,
                "new_flows_per_source_burst",
                self.new_flows_per_source_burst,
            ),
        ] {
            if rate > MAX_FLOW_RATE {
                return err(
                    k,
                    format!("{rate} is out of range; use 0 (no limit) to {MAX_FLOW_RATE} new flows per second"),
                );
            }
            if burst > FlowLimit::MAX_BURST {
                return err(
                    bk,
                    format!(
                        "{burst} is out of range; use 0 (one second's worth) to {}",
                        FlowLimit::MAX_BURST
                    ),
                );
            }
            if rate == 0 && burst != 0 {
                return err(
                    bk,
                    format!("{burst} is set but limits.{k} is 0 (no limit); set limits.{k} too, or remove {bk}"),
                );
            }
        }
        if !(1..=32).contains(&self.source_prefix_v4) {
            return err(
                "source_prefix_v4",
                format!(
                    "{} is out of range; use 1..=32 (default 24)",
                    self.source_prefix_v4
                ),
            );
        }
        if !(1..=128).contains(&self.source_prefix_v6) {
            return err(
                "source_prefix_v6",
                format!(
                    "{} is out of range; use 1..=128 (default 64)",
                    self.source_prefix_v6
                ),
            );
        }
        let n = self.source_buckets;
        if n == 0 || n > MAX_SOURCE_BUCKETS || !n.is_power_of_two() {
            return err(
                "source_buckets",
                format!(
                    "{n} is not a power of two from 1 to {MAX_SOURCE_BUCKETS}; use e.g. {} (default 65536)",
                    n.clamp(1, MAX_SOURCE_BUCKETS).next_power_of_two().min(MAX_SOURCE_BUCKETS)
                ),
            );
        }
        Ok(())
    }
}

/// A host-wide new-flow limit: `rate` per second (0: none), bursts of `burst` (0: `rate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateBurst {
    /// New flows per second; 0: no limit.
    pub rate: u32,
    /// The bucket size; 0: one second's worth.
    pub burst: u32,
}

impl RateBurst {
    /// One worker's share among `workers` (`None`: no limit).
    pub fn per_worker(self, workers: usize) -> Option<FlowLimit> {
        FlowLimit::per_worker(self.rate, self.burst, workers)
    }

    /// Parses an annotation's value: `RATE` or `RATE,BURST` (`0`: no limit).
    ///
    /// # Errors
    /// What is wrong with the value, without the fix (the caller names the annotation).
    pub fn parse(v: &str) -> Result<RateBurst, String> {
        let (r, b) = match v.split_once(',') {
            Some((r, b)) => (r.trim(), Some(b.trim())),
            None => (v.trim(), None),
        };
        let rate: u32 = r
            .parse()
            .ok()
            .filter(|r| *r <= MAX_FLOW_RATE)
            .ok_or_else(|| format!("rate {r:?} is not a number 0..={MAX_FLOW_RATE}"))?;
        let burst: u32 = match b {
            None => 0,
            Some(b) => b
                .parse()
                .ok()
                .filter(|b| (1..=FlowLimit::MAX_BURST).contains(b))
                .ok_or_else(|| {
                    format!("burst {b:?} is not a number 1..={}", FlowLimit::MAX_BURST)
                })?,
        };
        if rate == 0 && burst != 0 {
            return Err("a burst without a rate (rate 0 is no limit)".to_owned());
        }
        Ok(RateBurst { rate, burst })
    }

    /// In words, for the compile report.
    pub fn describe(self) -> String {
        match (self.rate, self.burst) {
            (0, _) => "no limit".to_owned(),
            (r, 0) => format!("{r} per second"),
            (r, b) => format!("{r} per second, bursts of {b}"),
        }
    }
}
