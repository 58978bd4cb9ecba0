//! Deserializers shared by the sections: addresses, networks and ranges parsed into typed
//! values with messages that say what to write instead.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::de::{Deserializer, Error as _};
use serde::Deserialize;
use sluice_dataplane::snapshot::Method;

use super::IpRange;

pub(super) fn de_method<'de, D: Deserializer<'de>>(d: D) -> Result<Method, D::Error> {
    let s = String::deserialize(d)?;
    Method::parse(&s).ok_or_else(|| {
        D::Error::custom(format!(
            "unknown forwarding method {s:?}; use one of \"nat\", \"dsr-l2\", \"dsr-ipip\""
        ))
    })
}

pub(super) fn de_list<'de, D, T>(
    d: D,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
{
    let v = Vec::<String>::deserialize(d)?;
    v.iter()
        .enumerate()
        .map(|(i, s)| parse(s).map_err(|e| D::Error::custom(format!("element {i}: {e}"))))
        .collect()
}

pub(super) fn parse_v4_iface(s: &str) -> Result<Ipv4Net, String> {
    s.trim().parse::<Ipv4Net>().map_err(|_| {
        format!("{s:?} is not an IPv4 address with a prefix length; write it as \"10.99.0.2/24\"")
    })
}

pub(super) fn parse_v6_iface(s: &str) -> Result<Ipv6Net, String> {
    s.trim().parse::<Ipv6Net>().map_err(|_| {
        format!("{s:?} is not an IPv6 address with a prefix length; write it as \"fd00:99::2/64\"")
    })
}

pub(super) fn parse_net(s: &str) -> Result<IpNet, String> {
    let n = if s.contains('/') {
        s.trim().parse::<IpNet>().map_err(|_| {
            format!("{s:?} is not a CIDR; write it as \"10.99.0.96/27\" or \"fd00:99::100/120\"")
        })?
    } else {
        let a: IpAddr = s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a CIDR; write it as \"10.99.0.96/27\""))?;
        IpNet::from(a)
    };
    if n.trunc() != n {
        return Err(format!(
            "{s:?} has host bits set; write the network address, \"{}\"",
            n.trunc()
        ));
    }
    Ok(n)
}

pub(super) fn de_v4_ifaces<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Ipv4Net>, D::Error> {
    de_list(d, parse_v4_iface)
}

pub(super) fn de_v6_ifaces<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Ipv6Net>, D::Error> {
    de_list(d, parse_v6_iface)
}

pub(super) fn de_nets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    de_list(d, parse_net)
}

pub(super) fn de_ranges<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpRange>, D::Error> {
    de_list(d, IpRange::parse)
}
