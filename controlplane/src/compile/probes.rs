//! How a Service's backends are probed: `[health]`, overridden per Service by the
//! `sluice.dev/health-check-*` annotations (a probe port, which gives UDP backends a health
//! signal; the kind and path; timing and thresholds).

use std::net::{IpAddr, SocketAddr};

use crate::config::{HealthConfig, HealthKind};
use crate::health::{ProbeTarget, ProbeTiming};
use crate::model::{L4Protocol, Service, ServicePort};

/// Annotation: the port probed on every backend's address instead of the backend's own port;
/// UDP backends are probed only with it.
pub const ANNOTATION_HEALTH_PORT: &str = "sluice.dev/health-check-port";
/// Annotation: `tcp` or `http` (with a probe port the default is `tcp`).
pub const ANNOTATION_HEALTH_KIND: &str = "sluice.dev/health-check-kind";
/// Annotation: the path of `http` probes (starts with `/`).
pub const ANNOTATION_HEALTH_PATH: &str = "sluice.dev/health-check-path";
/// Annotation: milliseconds between two probes of one backend.
pub const ANNOTATION_HEALTH_INTERVAL: &str = "sluice.dev/health-check-interval-ms";
/// Annotation: milliseconds one probe may take.
pub const ANNOTATION_HEALTH_TIMEOUT: &str = "sluice.dev/health-check-timeout-ms";
/// Annotation: consecutive successes that bring a down backend up.
pub const ANNOTATION_HEALTH_RISE: &str = "sluice.dev/health-check-rise";
/// Annotation: consecutive failures that take a backend down.
pub const ANNOTATION_HEALTH_FALL: &str = "sluice.dev/health-check-fall";

/// A Service's probes after its annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ProbeSpec {
    /// `[health] enabled`.
    enabled: bool,
    /// The probe port, if the Service names one.
    port: Option<u16>,
    /// The kind the Service asks for, if any.
    kind: Option<HealthKind>,
    /// `[health] kind`.
    default_kind: HealthKind,
    /// The HTTP path.
    path: String,
    /// The Service's timing, if it sets any of it.
    timing: Option<ProbeTiming>,
}

impl ProbeSpec {
    /// Reads the annotations of `svc` over `cfg`; a bad value is reported in `probs` and the
    /// configured value used.
    pub(super) fn parse(cfg: &HealthConfig, svc: &Service, probs: &mut Vec<String>) -> Self {
        let get = |k: &str| svc.annotations.get(k).map(|v| v.trim());
        let mut spec = ProbeSpec {
            enabled: cfg.enabled,
            port: None,
            kind: None,
            default_kind: cfg.kind,
            path: cfg.http_path.clone(),
            timing: None,
        };
        if let Some(v) = get(ANNOTATION_HEALTH_PORT) {
            match v.parse::<u16>() {
                Ok(p) if p > 0 => spec.port = Some(p),
                _ => probs.push(format!(
                    "annotation {ANNOTATION_HEALTH_PORT}: {v:?} is not a port 1..=65535 \
                     (probing the backends' own ports; UDP ones are not probed)"
                )),
            }
        }
        if let Some(v) = get(ANNOTATION_HEALTH_KIND) {
            match v {
                "tcp" => spec.kind = Some(HealthKind::Tcp),
                "http" => spec.kind = Some(HealthKind::Http),
                _ => probs.push(format!(
                    "annotation {ANNOTATION_HEALTH_KIND}: unknown kind {v:?}; use tcp or http \
                     (using [health] kind)"
                )),
            }
        }
        if let Some(v) = get(ANNOTATION_HEALTH_PATH) {
            if v.starts_with('/') {
                spec.path = v.to_owned();
            } else {
                probs.push(format!(
                    "annotation {ANNOTATION_HEALTH_PATH}: {v:?} does not start with '/' \
                     (using {:?})",
                    spec.path
                ));
            }
        }
        let mut timing = ProbeTiming::from(cfg);
        let mut any = false;
        let mut number = |key: &str, min: u64, max: u64, slot: &mut u64| {
            let Some(v) = get(key) else { return };
            match v.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => {
                    *slot = n;
                    any = true;
                }
                _ => probs.push(format!(
                    "annotation {key}: {v:?} is not a number {min}..={max} (using {slot})"
                )),
            }
        };
        number(
            ANNOTATION_HEALTH_INTERVAL,
            10,
            3_600_000,
            &mut timing.interval_ms,
        );
        number(
            ANNOTATION_HEALTH_TIMEOUT,
            10,
            3_600_000,
            &mut timing.timeout_ms,
        );
        let (mut rise, mut fall) = (u64::from(timing.rise), u64::from(timing.fall));
        number(ANNOTATION_HEALTH_RISE, 1, 100, &mut rise);
        number(ANNOTATION_HEALTH_FALL, 1, 100, &mut fall);
        // Bounded to 1..=100 above.
        timing.rise = rise as u32;
        timing.fall = fall as u32;
        if any {
            spec.timing = Some(timing);
        }
        spec
    }

    /// The probe of the backend at `addr`, serving port `port` of `sp`; `None`: not probed
    /// (health checks off, or a UDP port and no probe port).
    pub(super) fn target(&self, addr: IpAddr, port: u16, sp: &ServicePort) -> Option<ProbeTarget> {
        if !self.enabled {
            return None;
        }
        let (port, http) = match (self.port, self.kind) {
            // A probe port speaks what the Service says, else TCP.
            (Some(p), kind) => (p, kind == Some(HealthKind::Http)),
            (None, _) if sp.protocol != L4Protocol::Tcp => return None,
            (None, Some(kind)) => (port, kind == HealthKind::Http),
            // [health] kind = "http" probes only the ports that speak HTTP.
            (None, None) => (port, self.default_kind == HealthKind::Http && sp.is_http()),
        };
        let addr = SocketAddr::new(addr, port);
        let t = if http {
            ProbeTarget::http(addr, self.path.clone())
        } else {
            ProbeTarget::tcp(addr)
        };
        Some(t.with_timing(self.timing))
    }

    /// The Service's timing, for probes it does not choose the port of (a node's
    /// `healthCheckNodePort`).
    pub(super) fn timing(&self) -> Option<ProbeTiming> {
        self.timing
    }

    /// Whether health checks are on.
    pub(super) fn enabled(&self) -> bool {
        self.enabled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::ProbeKind;

    fn svc(annotations: &[(&str, &str)]) -> Service {
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  namespace: default\n  \
             annotations: {{{}}}\nspec:\n  type: LoadBalancer\n  ports:\n  - port: 80\n",
            annotations
                .iter()
                .map(|(k, v)| format!("{k:?}: {v:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let m = crate::sources::manifest::parse_str(&yaml, "s.yaml").unwrap();
        m.model.services.into_values().next().unwrap()
    }

    fn port(protocol: L4Protocol, name: &str) -> ServicePort {
        ServicePort {
            name: Some(name.to_owned()),
            protocol,
            port: 80,
            target_port: crate::model::TargetPort::Number(80),
            node_port: None,
            app_protocol: None,
        }
    }

    const A: &str = "10.0.1.1";

    #[test]
    fn udp_backends_are_probed_only_with_a_probe_port() {
        let cfg = HealthConfig::default();
        let mut probs = Vec::new();
        let plain = ProbeSpec::parse(&cfg, &svc(&[]), &mut probs);
        let udp = port(L4Protocol::Udp, "dns");
        assert_eq!(plain.target(A.parse().unwrap(), 53, &udp), None);
        let spec = ProbeSpec::parse(&cfg, &svc(&[(ANNOTATION_HEALTH_PORT, "8080")]), &mut probs);
        let t = spec.target(A.parse().unwrap(), 53, &udp).unwrap();
        assert_eq!(t, ProbeTarget::tcp("10.0.1.1:8080".parse().unwrap()));
        // The probe port replaces a TCP backend's own port too.
        let tcp = port(L4Protocol::Tcp, "web");
        assert_eq!(spec.target(A.parse().unwrap(), 9000, &tcp), Some(t));
        assert!(probs.is_empty(), "{probs:?}");
    }

    #[test]
    fn kind_path_and_timing_from_annotations() {
        let cfg = HealthConfig::default();
        let mut probs = Vec::new();
        let spec = ProbeSpec::parse(
            &cfg,
            &svc(&[
                (ANNOTATION_HEALTH_PORT, "10256"),
                (ANNOTATION_HEALTH_KIND, "http"),
                (ANNOTATION_HEALTH_PATH, "/ready"),
                (ANNOTATION_HEALTH_INTERVAL, "200"),
                (ANNOTATION_HEALTH_FALL, "1"),
            ]),
            &mut probs,
        );
        assert!(probs.is_empty(), "{probs:?}");
        let t = spec
            .target(A.parse().unwrap(), 53, &port(L4Protocol::Udp, "dns"))
            .unwrap();
        assert_eq!(t.addr, "10.0.1.1:10256".parse().unwrap());
        assert_eq!(
            t.kind,
            ProbeKind::Http {
                path: "/ready".to_owned()
            }
        );
        let timing = t.timing.unwrap();
        assert_eq!(
            (
                timing.interval_ms,
                timing.timeout_ms,
                timing.rise,
                timing.fall
            ),
            (200, cfg.timeout_ms, cfg.rise, 1),
            "unset values come from [health]"
        );
        // Without a timing annotation the target runs with the checker's settings.
        let spec = ProbeSpec::parse(&cfg, &svc(&[(ANNOTATION_HEALTH_KIND, "http")]), &mut probs);
        let t = spec
            .target(A.parse().unwrap(), 8080, &port(L4Protocol::Tcp, "echo"))
            .unwrap();
        assert_eq!(t, ProbeTarget::http("10.0.1.1:8080".parse().unwrap(), "/"));
    }

    #[test]
    fn bad_values_are_reported_and_ignored() {
        let cfg = HealthConfig::default();
        let mut probs = Vec::new();
        let spec = ProbeSpec::parse(
            &cfg,
            &svc(&[
                (ANNOTATION_HEALTH_PORT, "0"),
                (ANNOTATION_HEALTH_KIND, "icmp"),
                (ANNOTATION_HEALTH_PATH, "ready"),
                (ANNOTATION_HEALTH_RISE, "zero"),
                (ANNOTATION_HEALTH_TIMEOUT, "5"),
            ]),
            &mut probs,
        );
        assert_eq!(probs.len(), 5, "{probs:?}");
        for key in [
            ANNOTATION_HEALTH_PORT,
            ANNOTATION_HEALTH_KIND,
            ANNOTATION_HEALTH_PATH,
            ANNOTATION_HEALTH_RISE,
            ANNOTATION_HEALTH_TIMEOUT,
        ] {
            assert!(probs.iter().any(|p| p.contains(key)), "{key}: {probs:?}");
        }
        assert_eq!(
            spec,
            ProbeSpec::parse(&cfg, &svc(&[]), &mut Vec::new()),
            "as if unannotated"
        );
    }

    #[test]
    fn disabled_health_checks_probe_nothing() {
        let cfg = HealthConfig {
            enabled: false,
            ..HealthConfig::default()
        };
        let spec = ProbeSpec::parse(
            &cfg,
            &svc(&[(ANNOTATION_HEALTH_PORT, "8080")]),
            &mut Vec::new(),
        );
        let tcp = port(L4Protocol::Tcp, "http");
        assert_eq!(spec.target(A.parse().unwrap(), 80, &tcp), None);
    }
}
