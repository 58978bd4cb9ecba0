//! # The cluster model
//!
//! What Sluice knows about the cluster: Services, EndpointSlices and Nodes, reduced to the
//! fields load balancing needs and checked once, so [`crate::compile`] never parses a string.
//! Both sources produce it: [`crate::sources::manifest`] from YAML files, and [`crate::sources::kubernetes`] from a
//! Kubernetes watch. Both deserialize into `k8s-openapi` types first and convert with
//! [`Service::from_k8s`], [`EndpointSlice::from_k8s`] and [`Node::from_k8s`], so the two
//! sources accept and reject exactly the same objects.
//!
//! ## Design
//! - Plain data: no ids, no Arcs, no time. Ordered maps, so iteration (and therefore
//!   everything compiled from a model) is deterministic.
//! - Kubernetes defaults are applied here (namespace `default`, protocol TCP, targetPort =
//!   port, an endpoint's nil `ready` means ready, ...), and every rejection names the field
//!   (`spec.ports[0].targetPort`) in a [`ModelError`].
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as corev1;
use k8s_openapi::api::discovery::v1 as discoveryv1;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Label on an EndpointSlice naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label that keeps a Node out of external load balancers (its value is ignored).
pub const EXCLUDE_NODE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// The default ClientIP affinity timeout (3 hours), as in Kubernetes.
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10800;

/// Why a Kubernetes object cannot be used: the field and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ModelError {
    /// Dotted field path, e.g. `spec.ports[0].targetPort`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> ModelError {
    ModelError {
        field: field.into(),
        message: message.into(),
    }
}

/// `namespace/name` of a namespaced object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ObjectKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// A key from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// L4 protocol of a Service or EndpointSlice port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum L4Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP (parsed; Sluice does not forward it).
    Sctp,
}

impl L4Protocol {
    fn parse(s: Option<&str>, field: &str) -> Result<L4Protocol, ModelError> {
        match s.unwrap_or("TCP") {
            "TCP" | "" => Ok(L4Protocol::Tcp),
            "UDP" => Ok(L4Protocol::Udp),
            "SCTP" => Ok(L4Protocol::Sctp),
            other => Err(bad(
                field,
                format!("unknown protocol {other:?}; use TCP, UDP or SCTP"),
            )),
        }
    }

    /// Name as Kubernetes spells it.
    pub fn name(self) -> &'static str {
        match self {
            L4Protocol::Tcp => "TCP",
            L4Protocol::Udp => "UDP",
            L4Protocol::Sctp => "SCTP",
        }
    }
}

/// A Service port's `targetPort`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A named container port.
    Name(String),
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetPort::Number(n) => write!(f, "{n}"),
            TargetPort::Name(n) => write!(f, "{n}"),
        }
    }
}

/// One entry of `spec.ports`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ServicePort {
    /// The port's name (required by Kubernetes when there are several ports).
    pub name: Option<String>,
    /// TCP, UDP or SCTP.
    pub protocol: L4Protocol,
    /// The port on the VIP.
    pub port: u16,
    /// Where pods listen (defaults to `port`).
    pub target_port: TargetPort,
    /// The node port, if allocated.
    pub node_port: Option<u16>,
    /// `appProtocol` (e.g. `http`), if given.
    pub app_protocol: Option<String>,
}

impl ServicePort {
    /// Whether the port speaks HTTP: `appProtocol: http` (or `kubernetes.io/http`), else a name
    /// `http` or `http-*` (the convention service meshes use).
    pub fn is_http(&self) -> bool {
        match self.app_protocol.as_deref() {
            Some(a) => {
                a.eq_ignore_ascii_case("http") || a.eq_ignore_ascii_case("kubernetes.io/http")
            }
            None => self
                .name
                .as_deref()
                .is_some_and(|n| n == "http" || n.starts_with("http-")),
        }
    }
}

/// `spec.externalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum TrafficPolicy {
    /// Any ready node (or pod) may serve.
    Cluster,
    /// Only nodes with a ready local endpoint serve.
    Local,
}

/// An IP family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(a: IpAddr) -> IpFamily {
        if a.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }

    /// `IPv4` / `IPv6`, as Kubernetes spells it.
    pub fn name(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }
}

/// `spec.ipFamilyPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum IpFamilyPolicy {
    /// One family.
    SingleStack,
    /// Both families where possible.
    PreferDualStack,
    /// Both families.
    RequireDualStack,
}

/// A Service, reduced to what load balancing needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Service {
    /// Namespace and name.
    pub key: ObjectKey,
    /// `spec.type` (`ClusterIP` when unset).
    pub service_type: String,
    /// `spec.loadBalancerClass`.
    pub load_balancer_class: Option<String>,
    /// `spec.ports`.
    pub ports: Vec<ServicePort>,
    /// `spec.loadBalancerIP` (deprecated in Kubernetes, still honoured).
    pub load_balancer_ip: Option<IpAddr>,
    /// IPs of `status.loadBalancer.ingress` (hostname-only entries are skipped).
    pub ingress_ips: Vec<IpAddr>,
    /// `spec.externalTrafficPolicy` (Cluster when unset).
    pub external_traffic_policy: TrafficPolicy,
    /// `spec.healthCheckNodePort`.
    pub health_check_node_port: Option<u16>,
    /// ClientIP affinity timeout in seconds (`None` for `sessionAffinity: None`).
    pub session_affinity_seconds: Option<u32>,
    /// `spec.loadBalancerSourceRanges` (networks, host bits cleared).
    pub source_ranges: Vec<IpNet>,
    /// `spec.ipFamilies` as given (may be empty; see [`Service::families`]).
    pub ip_families: Vec<IpFamily>,
    /// `spec.ipFamilyPolicy`.
    pub ip_family_policy: Option<IpFamilyPolicy>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// The Maglev table sizes the status leader recorded for the automatically sized
    /// frontends (condition [`CONDITION_MAGLEV_SIZE`]); empty when none is recorded.
    pub maglev_sizes: MaglevSizes,
}

/// Condition in which the status leader records the Maglev table size it chose for each
/// automatically sized frontend of a Service, so that every host keeps the same size
/// ([`sluice_dataplane::maglev::sticky_size`]).
pub const CONDITION_MAGLEV_SIZE: &str = "sluice.dev/MaglevSize";

/// Recorded Maglev table sizes by frontend (VIP, protocol, port): the message of condition
/// [`CONDITION_MAGLEV_SIZE`], written as `10.0.0.1:80/TCP=4099, [fd00::1]:80/TCP=4099`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MaglevSizes(pub BTreeMap<(IpAddr, L4Protocol, u16), u32>);

impl MaglevSizes {
    /// Reads a condition message. Entries that do not parse are skipped: the record is a hint
    /// that another host wrote, and the leader rewrites it with what it decides.
    pub fn parse(message: &str) -> MaglevSizes {
        let mut out = BTreeMap::new();
        for entry in message.split(',') {
            let Some((front, size)) = entry.trim().split_once('=') else {
                continue;
            };
            let Some((addr, proto)) = front.rsplit_once('/') else {
                continue;
            };
            let proto = match proto {
                "TCP" => L4Protocol::Tcp,
                "UDP" => L4Protocol::Udp,
                _ => continue,
            };
            let (Ok(addr), Ok(size)) = (addr.parse::<SocketAddr>(), size.parse::<u32>()) else {
                continue;
            };
            out.insert((addr.ip(), proto, addr.port()), size);
        }
        MaglevSizes(out)
    }

    /// The recorded size of one frontend.
    pub fn get(&self, vip: IpAddr, protocol: L4Protocol, port: u16) -> Option<u32> {
        self.0.get(&(vip, protocol, port)).copied()
    }
}

impl serde::Serialize for MaglevSizes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for MaglevSizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, ((vip, proto, port), size)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let addr = SocketAddr::new(*vip, *port);
            write!(f, "{sep}{addr}/{}={size}", proto.name())?;
        }
        Ok(())
    }
}

impl Service {
    /// Whether `spec.type` is `LoadBalancer`.
    pub fn is_load_balancer(&self) -> bool {
        self.service_type == "LoadBalancer"
    }

    /// The families the Service wants VIPs for: `spec.ipFamilies` when given; else both for a
    /// dual-stack `ipFamilyPolicy`; else the family of `spec.loadBalancerIP`; else IPv4.
    pub fn families(&self) -> Vec<IpFamily> {
        if !self.ip_families.is_empty() {
            return self.ip_families.clone();
        }
        match self.ip_family_policy {
            Some(IpFamilyPolicy::PreferDualStack | IpFamilyPolicy::RequireDualStack) => {
                vec![IpFamily::V4, IpFamily::V6]
            }
            _ => vec![self.load_balancer_ip.map_or(IpFamily::V4, IpFamily::of)],
        }
    }

    /// Converts a Kubernetes Service.
    ///
    /// # Errors
    /// [`ModelError`] naming the first invalid field.
    pub fn from_k8s(svc: &corev1::Service) -> Result<Service, ModelError> {
        let key = namespaced_key(&svc.metadata)?;
        let spec = svc.spec.clone().unwrap_or_default();
        let service_type = spec.type_.clone().unwrap_or_else(|| "ClusterIP".to_owned());
        if !matches!(
            service_type.as_str(),
            "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
        ) {
            return Err(bad(
                "spec.type",
                format!("unknown type {service_type:?}; use LoadBalancer (or ClusterIP, NodePort, ExternalName)"),
            ));
        }
        let mut ports = Vec::new();
        for (i, p) in spec.ports.iter().flatten().enumerate() {
            let f = |n: &str| format!("spec.ports[{i}].{n}");
            let port = port_number(p.port, &f("port"))?;
            let protocol = L4Protocol::parse(p.protocol.as_deref(), &f("protocol"))?;
            let target_port = match &p.target_port {
                None => TargetPort::Number(port),
                Some(IntOrString::Int(0)) => TargetPort::Number(port),
                Some(IntOrString::Int(n)) => TargetPort::Number(port_number(*n, &f("targetPort"))?),
                Some(IntOrString::String(s)) if s.is_empty() => TargetPort::Number(port),
                Some(IntOrString::String(s)) => match s.parse::<i32>() {
                    Ok(n) => TargetPort::Number(port_number(n, &f("targetPort"))?),
                    Err(_) if is_port_name(s) => TargetPort::Name(s.clone()),
                    Err(_) => {
                        return Err(bad(
                            f("targetPort"),
                            format!(
                                "{s:?} is neither a port number nor a port name (1-15 lower-case letters, digits \
                                 and '-', with at least one letter)"
                            ),
                        ))
                    }
                },
            };
            let node_port = match p.node_port {
                None | Some(0) => None,
                Some(n) => Some(port_number(n, &f("nodePort"))?),
            };
            let name = p.name.clone().filter(|n| !n.is_empty());
            if let Some(prev) = ports
                .iter()
                .position(|q: &ServicePort| q.port == port && q.protocol == protocol)
            {
                return Err(bad(
                    f("port"),
                    format!(
                        "{} {port} is also spec.ports[{prev}]; each port/protocol may appear once",
                        protocol.name()
                    ),
                ));
            }
            if let Some(n) = &name {
                if let Some(prev) = ports
                    .iter()
                    .position(|q: &ServicePort| q.name.as_ref() == Some(n))
                {
                    return Err(bad(
                        f("name"),
                        format!("name {n:?} is also spec.ports[{prev}]; port names must be unique"),
                    ));
                }
            }
            ports.push(ServicePort {
                name,
                protocol,
                port,
                target_port,
                node_port,
                app_protocol: p.app_protocol.clone().filter(|a| !a.is_empty()),
            });
        }
        if ports.len() > 1 {
            if let Some(i) = ports.iter().position(|p| p.name.is_none()) {
                return Err(bad(
                    format!("spec.ports[{i}].name"),
                    "is required when a Service has more than one port; name every port (e.g. \"http\")",
                ));
            }
        }
        if service_type == "LoadBalancer" && ports.is_empty() {
            return Err(bad(
                "spec.ports",
                "a Service of type LoadBalancer needs at least one port; add e.g. {port: 80, targetPort: 8080}",
            ));
        }
        let load_balancer_ip = match spec.load_balancer_ip.as_deref() {
            None | Some("") => None,
            Some(s) => Some(parse_ip(s, "spec.loadBalancerIP")?),
        };
        let mut ingress_ips = Vec::new();
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref());
        for (i, ing) in ingress.into_iter().flatten().enumerate() {
            if let Some(ip) = ing.ip.as_deref().filter(|s| !s.is_empty()) {
                ingress_ips.push(parse_ip(
                    ip,
                    &format!("status.loadBalancer.ingress[{i}].ip"),
                )?);
            }
        }
        let external_traffic_policy = match spec.external_traffic_policy.as_deref() {
            None | Some("") | Some("Cluster") => TrafficPolicy::Cluster,
            Some("Local") => TrafficPolicy::Local,
            Some(other) => {
                return Err(bad(
                    "spec.externalTrafficPolicy",
                    format!("unknown policy {other:?}; use Cluster or Local"),
                ))
            }
        };
        let health_check_node_port = match spec.health_check_node_port {
            None | Some(0) => None,
            Some(n) => Some(port_number(n, "spec.healthCheckNodePort")?),
        };
        let session_affinity_seconds = match spec.session_affinity.as_deref() {
            None | Some("") | Some("None") => None,
            Some("ClientIP") => {
                let t = spec
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds);
                match t {
                    None => Some(DEFAULT_AFFINITY_SECONDS),
                    Some(t @ 1..=86400) => Some(t as u32),
                    Some(t) => {
                        return Err(bad(
                            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                            format!("{t} is out of range; use 1..=86400 (default 10800)"),
                        ))
                    }
                }
            }
            Some(other) => {
                return Err(bad(
                    "spec.sessionAffinity",
                    format!("unknown affinity {other:?}; use None or ClientIP"),
                ))
            }
        };
        let mut source_ranges = Vec::new();
        for (i, r) in spec
            .load_balancer_source_ranges
            .iter()
            .flatten()
            .enumerate()
        {
            let field = format!("spec.loadBalancerSourceRanges[{i}]");
            let net = r.trim().parse::<IpNet>().map_err(|_| {
                bad(
                    &field,
                    format!(
                        "{r:?} is not a CIDR; write it as \"203.0.113.0/24\" or \"2001:db8::/32\""
                    ),
                )
            })?;
            source_ranges.push(net.trunc());
        }
        let mut ip_families = Vec::new();
        for (i, f) in spec.ip_families.iter().flatten().enumerate() {
            let fam = match f.as_str() {
                "IPv4" => IpFamily::V4,
                "IPv6" => IpFamily::V6,
                other => {
                    return Err(bad(
                        format!("spec.ipFamilies[{i}]"),
                        format!("unknown family {other:?}; use IPv4 or IPv6"),
                    ))
                }
            };
            if ip_families.contains(&fam) {
                return Err(bad(
                    format!("spec.ipFamilies[{i}]"),
                    format!("{f} is listed twice"),
                ));
            }
            ip_families.push(fam);
        }
        let ip_family_policy = match spec.ip_family_policy.as_deref() {
            None | Some("") => None,
            Some("SingleStack") => Some(IpFamilyPolicy::SingleStack),
            Some("PreferDualStack") => Some(IpFamilyPolicy::PreferDualStack),
            Some("RequireDualStack") => Some(IpFamilyPolicy::RequireDualStack),
            Some(other) => {
                return Err(bad(
                    "spec.ipFamilyPolicy",
                    format!("unknown policy {other:?}; use SingleStack, PreferDualStack or RequireDualStack"),
                ))
            }
        };
        if ip_family_policy == Some(IpFamilyPolicy::SingleStack) && ip_families.len() > 1 {
            return Err(bad(
                "spec.ipFamilies",
                "lists two families but ipFamilyPolicy is SingleStack; use PreferDualStack or list one family",
            ));
        }
        Ok(Service {
            key,
            service_type,
            load_balancer_class: spec.load_balancer_class.clone().filter(|c| !c.is_empty()),
            ports,
            load_balancer_ip,
            ingress_ips,
            external_traffic_policy,
            health_check_node_port,
            session_affinity_seconds,
            source_ranges,
            ip_families,
            ip_family_policy,
            annotations: svc.metadata.annotations.clone().unwrap_or_default(),
            maglev_sizes: svc
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .find(|c| c.type_ == CONDITION_MAGLEV_SIZE)
                .map(|c| MaglevSizes::parse(&c.message))
                .unwrap_or_default(),
        })
    }
}

/// `addressType` of an EndpointSlice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum AddressType {
    /// IPv4 addresses.
    IPv4,
    /// IPv6 addresses.
    IPv6,
    /// Host names (not used by Sluice; such slices carry no endpoints in the model).
    Fqdn,
}

/// One endpoint of a slice, with Kubernetes' nil-condition defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Endpoint {
    /// Addresses (all of the slice's family).
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready` (nil counts as true).
    pub ready: bool,
    /// `conditions.serving` (nil counts as `ready`).
    pub serving: bool,
    /// `conditions.terminating` (nil counts as false).
    pub terminating: bool,
    /// `nodeName`.
    pub node_name: Option<String>,
}

/// One port of a slice.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct EndpointPort {
    /// The name (equal to the Service port's name for controller-made slices).
    pub name: Option<String>,
    /// The port the endpoints listen on.
    pub port: Option<u16>,
    /// TCP, UDP or SCTP.
    pub protocol: L4Protocol,
}

/// An EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct EndpointSlice {
    /// Namespace and name.
    pub key: ObjectKey,
    /// The Service named by label `kubernetes.io/service-name` (same namespace).
    pub service: Option<String>,
    /// The address family.
    pub address_type: AddressType,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Ports.
    pub ports: Vec<EndpointPort>,
}

impl EndpointSlice {
    /// Converts a Kubernetes EndpointSlice.
    ///
    /// # Errors
    /// [`ModelError`] naming the first invalid field.
    pub fn from_k8s(s: &discoveryv1::EndpointSlice) -> Result<EndpointSlice, ModelError> {
        let key = namespaced_key(&s.metadata)?;
        let address_type = match s.address_type.as_str() {
            "IPv4" => AddressType::IPv4,
            "IPv6" => AddressType::IPv6,
            "FQDN" => AddressType::Fqdn,
            other => {
                return Err(bad(
                    "addressType",
                    format!("unknown address type {other:?}; use IPv4 or IPv6"),
                ))
            }
        };
        let service = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .cloned()
            .filter(|n| !n.is_empty());
        let mut endpoints = Vec::new();
        if address_type != AddressType::Fqdn {
            for (i, e) in s.endpoints.iter().flatten().enumerate() {
                let mut addresses = Vec::new();
                for (j, a) in e.addresses.iter().enumerate() {
                    let field = format!("endpoints[{i}].addresses[{j}]");
                    let ip = parse_ip(a, &field)?;
                    if (address_type == AddressType::IPv4) != ip.is_ipv4() {
                        return Err(bad(
                            field,
                            format!("{ip} does not match addressType {:?}; put it in a slice of its own family", s.address_type),
                        ));
                    }
                    addresses.push(ip);
                }
                let c = e.conditions.clone().unwrap_or_default();
                let ready = c.ready.unwrap_or(true);
                endpoints.push(Endpoint {
                    addresses,
                    ready,
                    serving: c.serving.unwrap_or(ready),
                    terminating: c.terminating.unwrap_or(false),
                    node_name: e.node_name.clone().filter(|n| !n.is_empty()),
                });
            }
        }
        let mut ports = Vec::new();
        for (i, p) in s.ports.iter().flatten().enumerate() {
            let port = match p.port {
                None => None,
                Some(n) => Some(port_number(n, &format!("ports[{i}].port"))?),
            };
            ports.push(EndpointPort {
                name: p.name.clone().filter(|n| !n.is_empty()),
                port,
                protocol: L4Protocol::parse(
                    p.protocol.as_deref(),
                    &format!("ports[{i}].protocol"),
                )?,
            });
        }
        Ok(EndpointSlice {
            key,
            service,
            address_type,
            endpoints,
            ports,
        })
    }
}

/// A Node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Node {
    /// Name.
    pub name: String,
    /// `status.addresses` of type InternalIP.
    pub internal_ips: Vec<IpAddr>,
    /// The Ready condition is True (a node with no Ready condition at all counts as ready:
    /// hand-written manifests describe nodes the operator vouches for).
    pub ready: bool,
    /// Has the `node.kubernetes.io/exclude-from-external-load-balancers` label.
    pub excluded: bool,
}

impl Node {
    /// Converts a Kubernetes Node.
    ///
    /// # Errors
    /// [`ModelError`] naming the first invalid field.
    pub fn from_k8s(n: &corev1::Node) -> Result<Node, ModelError> {
        let name = n
            .metadata
            .name
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("metadata.name", "is missing; every Node needs a name"))?;
        let status = n.status.clone().unwrap_or_default();
        let mut internal_ips = Vec::new();
        for (i, a) in status.addresses.iter().flatten().enumerate() {
            if a.type_ == "InternalIP" {
                internal_ips.push(parse_ip(
                    &a.address,
                    &format!("status.addresses[{i}].address"),
                )?);
            }
        }
        let ready = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .is_none_or(|c| c.status == "True");
        let excluded = n
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(EXCLUDE_NODE_LABEL));
        Ok(Node {
            name,
            internal_ips,
            ready,
            excluded,
        })
    }
}

/// Everything a source knows about the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Model {
    /// Services by namespace/name.
    pub services: BTreeMap<ObjectKey, Service>,
    /// EndpointSlices by namespace/name.
    pub endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, Node>,
}

impl Model {
    /// The EndpointSlices of Service `svc` (same namespace, label `kubernetes.io/service-name`).
    pub fn slices_of<'a>(
        &'a self,
        svc: &'a ObjectKey,
    ) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        self.endpoint_slices.values().filter(move |s| {
            s.key.namespace == svc.namespace && s.service.as_deref() == Some(svc.name.as_str())
        })
    }
}

fn namespaced_key(m: &ObjectMeta) -> Result<ObjectKey, ModelError> {
    let name = m
        .name
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad("metadata.name", "is missing; every object needs a name"))?;
    let namespace = m
        .namespace
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    Ok(ObjectKey { namespace, name })
}

fn port_number(n: i32, field: &str) -> Result<u16, ModelError> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad(field, format!("{n} is not a port number; use 1..=65535")))
}

/// Kubernetes' IANA_SVC_NAME: 1-15 of `[a-z0-9-]`, a letter somewhere, no `-` at either end
/// and no `--`.
fn is_port_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn parse_ip(s: &str, field: &str) -> Result<IpAddr, ModelError> {
    s.trim()
        .parse()
        .map_err(|_| bad(field, format!("{s:?} is not an IP address")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use corev1::{ServicePort as KPort, ServiceSpec};

    fn svc(spec: ServiceSpec) -> corev1::Service {
        corev1::Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                ..Default::default()
            },
            spec: Some(spec),
            status: None,
        }
    }

    fn kport(name: &str, port: i32) -> KPort {
        KPort {
            name: Some(name.into()),
            port,
            ..Default::default()
        }
    }

    #[test]
    fn service_defaults() {
        let s = Service::from_k8s(&svc(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            ports: Some(vec![kport("http", 80)]),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(s.key, ObjectKey::new("default", "web"));
        assert_eq!(s.ports[0].protocol, L4Protocol::Tcp);
        assert_eq!(s.ports[0].target_port, TargetPort::Number(80));
        assert_eq!(s.external_traffic_policy, TrafficPolicy::Cluster);
        assert_eq!(s.families(), vec![IpFamily::V4]);
        assert!(s.is_load_balancer());
    }

    #[test]
    fn service_errors_name_fields() {
        let e = Service::from_k8s(&svc(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            ..Default::default()
        }))
        .unwrap_err();
        assert_eq!(e.field, "spec.ports");
        let e = Service::from_k8s(&svc(ServiceSpec {
            ports: Some(vec![kport("a", 70000)]),
            ..Default::default()
        }))
        .unwrap_err();
        assert_eq!(e.field, "spec.ports[0].port");
        let e = Service::from_k8s(&svc(ServiceSpec {
            ports: Some(vec![kport("a", 80)]),
            load_balancer_source_ranges: Some(vec!["10.0.0.0/8".into(), "nope".into()]),
            ..Default::default()
        }))
        .unwrap_err();
        assert_eq!(e.field, "spec.loadBalancerSourceRanges[1]");
        let e = Service::from_k8s(&svc(ServiceSpec {
            ports: Some(vec![kport("a", 80), kport("b", 80)]),
            ..Default::default()
        }))
        .unwrap_err();
        assert_eq!(e.field, "spec.ports[1].port");
        let e = Service::from_k8s(&svc(ServiceSpec {
            ports: Some(vec![kport("a", 80)]),
            session_affinity: Some("ClientIP".into()),
            session_affinity_config: Some(corev1::SessionAffinityConfig {
                client_ip: Some(corev1::ClientIPConfig {
                    timeout_seconds: Some(0),
                }),
            }),
            ..Default::default()
        }))
        .unwrap_err();
        assert_eq!(
            e.field,
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds"
        );
    }

    #[test]
    fn port_names() {
        assert!(is_port_name("http") && is_port_name("web-8080") && is_port_name("h2c"));
        assert!(
            !is_port_name("0x-")
                && !is_port_name("HTTP")
                && !is_port_name("a--b")
                && !is_port_name("123")
        );
        assert!(!is_port_name("a-very-long-port-name"));
    }

    #[test]
    fn families_inference() {
        let mut s = Service::from_k8s(&svc(ServiceSpec {
            ports: Some(vec![kport("a", 80)]),
            ip_family_policy: Some("PreferDualStack".into()),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(s.families(), vec![IpFamily::V4, IpFamily::V6]);
        s.ip_family_policy = None;
        s.load_balancer_ip = Some("fd00::1".parse().unwrap());
        assert_eq!(s.families(), vec![IpFamily::V6]);
    }

    #[test]
    fn maglev_sizes_round_trip_and_skip_what_does_not_parse() {
        let mut m = MaglevSizes::default();
        m.0.insert(("10.0.0.1".parse().unwrap(), L4Protocol::Tcp, 80), 4099);
        m.0.insert(("fd00::1".parse().unwrap(), L4Protocol::Udp, 53), 1031);
        let text = m.to_string();
        assert_eq!(text, "10.0.0.1:80/TCP=4099, [fd00::1]:53/UDP=1031");
        assert_eq!(MaglevSizes::parse(&text), m);
        let garbled = format!(
            "{text}, 10.0.0.2:80/SCTP=4099, nonsense, 10.0.0.3:99999/TCP=1, 10.0.0.4:80/TCP=x"
        );
        assert_eq!(MaglevSizes::parse(&garbled), m);
        // A Service's status carries the record into the model.
        let mut svc = corev1::Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        svc.status = Some(corev1::ServiceStatus {
            conditions: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                    type_: CONDITION_MAGLEV_SIZE.into(),
                    status: "True".into(),
                    reason: "AutoSized".into(),
                    message: text,
                    last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                    ),
                    observed_generation: None,
                },
            ]),
            ..Default::default()
        });
        let got = Service::from_k8s(&svc).unwrap();
        assert_eq!(
            got.maglev_sizes
                .get("10.0.0.1".parse().unwrap(), L4Protocol::Tcp, 80),
            Some(4099)
        );
        assert_eq!(
            got.maglev_sizes
                .get("10.0.0.1".parse().unwrap(), L4Protocol::Udp, 80),
            None
        );
    }

    #[test]
    fn endpoint_conditions_defaults() {
        let s = discoveryv1::EndpointSlice {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("default".into()),
                labels: Some([(SERVICE_NAME_LABEL.to_owned(), "web".to_owned())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(vec![
                discoveryv1::Endpoint {
                    addresses: vec!["10.0.0.1".into()],
                    ..Default::default()
                },
                discoveryv1::Endpoint {
                    addresses: vec!["10.0.0.2".into()],
                    conditions: Some(discoveryv1::EndpointConditions {
                        ready: Some(false),
                        serving: None,
                        terminating: Some(true),
                    }),
                    ..Default::default()
                },
            ]),
            ports: None,
        };
        let m = EndpointSlice::from_k8s(&s).unwrap();
        assert_eq!(m.service.as_deref(), Some("web"));
        assert!(m.endpoints[0].ready && m.endpoints[0].serving && !m.endpoints[0].terminating);
        assert!(!m.endpoints[1].ready && !m.endpoints[1].serving && m.endpoints[1].terminating);

        let mut bad_family = s.clone();
        bad_family.endpoints.as_mut().unwrap()[0].addresses = vec!["fd00::1".into()];
        assert_eq!(
            EndpointSlice::from_k8s(&bad_family).unwrap_err().field,
            "endpoints[0].addresses[0]"
        );
    }
}
