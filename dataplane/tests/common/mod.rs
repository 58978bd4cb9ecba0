//! Shared fixtures for the dataplane's integration tests: a snapshot with one frontend per
//! method and family, and packet builders on etherparse (an independent implementation, so the
//! expected bytes cross-check our parsing and incremental checksums).
#![allow(dead_code, missing_docs)]

use std::net::IpAddr;
use std::sync::Arc;

use etherparse::{
    Ethernet2Header, IpNumber, Ipv4Header, Ipv6Header, PacketBuilder, TcpHeader, UdpHeader,
};
use sluice_dataplane::maglev::{MaglevBackend, MaglevTable};
use sluice_dataplane::snapshot::{
    Backend, BackendState, Cidr, Frontend, Local, Method, Protocol, Snapshot, SynProxy,
};

pub const LB_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
pub const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xaa];
pub const CLIENT4: [u8; 4] = [10, 9, 9, 9];
pub const CLIENT6: [u8; 16] = [0xfd, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
pub const LB4: [u8; 4] = [10, 0, 0, 2];
pub const NAT4: [u8; 4] = [10, 0, 0, 3];
pub const LB6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
pub const NAT6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];
pub const NAT_PORT_MIN: u16 = 20000;

pub fn bmac(id: u32) -> [u8; 6] {
    [2, 0, 0, 0, 1, id as u8]
}

pub fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

pub fn backend(id: u32, addr: &str, port: u16) -> Backend {
    Backend {
        id,
        addr: addr.parse().unwrap(),
        port,
        mac: Some(bmac(id)),
        weight: 1,
        state: BackendState::Active,
    }
}

pub fn frontend(
    id: u32,
    vip: &str,
    port: u16,
    protocol: Protocol,
    method: Method,
    backends: Vec<u32>,
) -> Frontend {
    let names: Vec<String> = backends.iter().map(|b| format!("backend-{b}")).collect();
    let mb: Vec<MaglevBackend<'_>> = names
        .iter()
        .map(|n| MaglevBackend { id: n, weight: 1 })
        .collect();
    Frontend {
        id,
        service: Arc::from(format!("default/svc{id}")),
        vip: vip.parse().unwrap(),
        port,
        protocol,
        method,
        affinity_ms: None,
        source_ranges: vec![],
        flow_limit: None,
        source_flow_limit: None,
        syn_proxy: SynProxy::Off,
        backends,
        maglev: Arc::new(MaglevTable::build(&mb, 1021, 42).unwrap()),
    }
}

pub fn local() -> Local {
    Local {
        mac: LB_MAC,
        ipv4: vec![LB4],
        ipv6: vec![LB6],
        nat_ipv4: vec![NAT4],
        nat_ipv6: vec![NAT6],
        nat_port_min: NAT_PORT_MIN,
        nat_port_max: 29999,
        nat_ipv4_peers: 0,
        nat_ipv6_peers: 0,
        mtu: 1500,
    }
}

/// The golden snapshot: one frontend per method and family, plus policy cases.
pub fn snapshot(generation: u64) -> Snapshot {
    let mut unresolved = backend(5, "10.0.1.5", 8080);
    unresolved.mac = None;
    let mut acl = frontend(6, "192.0.2.4", 80, Protocol::Tcp, Method::Nat, vec![1]);
    acl.source_ranges = vec![Cidr::parse("10.9.0.0/16").unwrap()];
    let mut aff = frontend(
        9,
        "192.0.2.7",
        80,
        Protocol::Tcp,
        Method::DsrL2,
        vec![1, 2, 4],
    );
    aff.affinity_ms = Some(10_800_000);
    Snapshot::new(
        generation,
        42,
        vec![
            frontend(0, "192.0.2.1", 80, Protocol::Tcp, Method::Nat, vec![1]),
            frontend(1, "192.0.2.1", 53, Protocol::Udp, Method::Nat, vec![2]),
            frontend(2, "192.0.2.2", 80, Protocol::Tcp, Method::DsrL2, vec![1]),
            frontend(3, "192.0.2.3", 80, Protocol::Tcp, Method::DsrIpip, vec![2]),
            frontend(4, "2001:db8::1", 80, Protocol::Tcp, Method::Nat, vec![3]),
            frontend(
                5,
                "2001:db8::2",
                80,
                Protocol::Tcp,
                Method::DsrIpip,
                vec![3],
            ),
            acl,
            frontend(7, "192.0.2.5", 80, Protocol::Tcp, Method::Nat, vec![]),
            frontend(8, "192.0.2.6", 80, Protocol::Tcp, Method::Nat, vec![5]),
            aff,
            frontend(10, "2001:db8::3", 53, Protocol::Udp, Method::DsrL2, vec![3]),
        ],
        vec![
            backend(1, "10.0.1.1", 8080),
            backend(2, "10.0.1.2", 8080),
            backend(3, "fd00:1::1", 8080),
            backend(4, "10.0.1.4", 8080),
            unresolved,
        ],
        local(),
        1024,
    )
    .unwrap()
}

pub fn tcp4(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    syn: bool,
    ack: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 65535);
    if syn {
        b = b.syn();
    }
    if ack {
        b = b.ack(1);
    }
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

pub fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut v, payload)
        .unwrap();
    v
}

pub fn tcp6(
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    syn: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv6(src, dst, 64)
        .tcp(sport, dport, 1000, 65535);
    if syn {
        b = b.syn();
    }
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

pub fn udp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv6(src, dst, 64)
        .udp(sport, dport)
        .write(&mut v, payload)
        .unwrap();
    v
}

/// Re-serialises `frame` (Ethernet + IPv4/IPv6 + TCP/UDP) with new MACs, addresses and ports,
/// computing every checksum from scratch with etherparse.
pub fn rewritten(
    frame: &[u8],
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let (eth, rest) = Ethernet2Header::from_slice(frame).unwrap();
    let eth = Ethernet2Header {
        source: eth_src,
        destination: eth_dst,
        ..eth
    };
    let mut out = Vec::new();
    eth.write(&mut out).unwrap();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let (mut ip, l4) = Ipv4Header::from_slice(rest).unwrap();
            let l4 = &l4[..ip.payload_len().unwrap() as usize];
            ip.source = s.octets();
            ip.destination = d.octets();
            ip.header_checksum = ip.calc_header_checksum();
            ip.write(&mut out).unwrap();
            write_l4(
                &mut out,
                ip.protocol,
                l4,
                sport,
                dport,
                |t, p| t.calc_checksum_ipv4(&ip, p).unwrap(),
                |u, p| u.calc_checksum_ipv4(&ip, p).unwrap(),
            );
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let (mut ip, l4) = Ipv6Header::from_slice(rest).unwrap();
            let l4 = &l4[..ip.payload_length as usize];
            ip.source = s.octets();
            ip.destination = d.octets();
            ip.write(&mut out).unwrap();
            write_l4(
                &mut out,
                ip.next_header,
                l4,
                sport,
                dport,
                |t, p| t.calc_checksum_ipv6(&ip, p).unwrap(),
                |u, p| u.calc_checksum_ipv6(&ip, p).unwrap(),
            );
        }
        _ => panic!("mixed families"),
    }
    out
}

fn write_l4(
    out: &mut Vec<u8>,
    proto: IpNumber,
    l4: &[u8],
    sport: u16,
    dport: u16,
    tcp_sum: impl Fn(&TcpHeader, &[u8]) -> u16,
    udp_sum: impl Fn(&UdpHeader, &[u8]) -> u16,
) {
    if proto == IpNumber::TCP {
        let (mut t, payload) = TcpHeader::from_slice(l4).unwrap();
        t.source_port = sport;
        t.destination_port = dport;
        t.checksum = tcp_sum(&t, payload);
        t.write(out).unwrap();
        out.extend_from_slice(payload);
    } else if proto == IpNumber::UDP {
        let (mut u, payload) = UdpHeader::from_slice(l4).unwrap();
        u.source_port = sport;
        u.destination_port = dport;
        u.checksum = udp_sum(&u, payload);
        u.write(out).unwrap();
        out.extend_from_slice(payload);
    } else {
        panic!("not tcp/udp");
    }
}

/// Verifies every checksum in a frame with etherparse (IPv4 header, TCP/UDP/ICMP).
pub fn assert_checksums_valid(frame: &[u8]) {
    let p = etherparse::SlicedPacket::from_ethernet(frame).expect("etherparse parses our output");
    let net = p.net.expect("ip layer");
    match (&net, &p.transport) {
        (etherparse::NetSlice::Ipv4(ip), t) => {
            let h = ip.header().to_header();
            assert_eq!(
                h.header_checksum,
                h.calc_header_checksum(),
                "IPv4 header checksum"
            );
            match t {
                Some(etherparse::TransportSlice::Tcp(tcp)) => {
                    assert_eq!(
                        tcp.checksum(),
                        tcp.to_header()
                            .calc_checksum_ipv4(&h, tcp.payload())
                            .unwrap(),
                        "TCP checksum"
                    )
                }
                Some(etherparse::TransportSlice::Udp(u)) if u.checksum() != 0 => {
                    assert_eq!(
                        u.checksum(),
                        u.to_header().calc_checksum_ipv4(&h, u.payload()).unwrap(),
                        "UDP checksum"
                    )
                }
                Some(etherparse::TransportSlice::Icmpv4(i)) => {
                    assert_eq!(
                        i.checksum(),
                        i.icmp_type().calc_checksum(i.payload()),
                        "ICMP checksum"
                    )
                }
                _ => {}
            }
        }
        (etherparse::NetSlice::Ipv6(ip), t) => {
            let h = ip.header().to_header();
            match t {
                Some(etherparse::TransportSlice::Tcp(tcp)) => {
                    assert_eq!(
                        tcp.checksum(),
                        tcp.to_header()
                            .calc_checksum_ipv6(&h, tcp.payload())
                            .unwrap(),
                        "TCP checksum"
                    )
                }
                Some(etherparse::TransportSlice::Udp(u)) => {
                    assert_eq!(
                        u.checksum(),
                        u.to_header().calc_checksum_ipv6(&h, u.payload()).unwrap(),
                        "UDP checksum"
                    )
                }
                Some(etherparse::TransportSlice::Icmpv6(i)) => assert_eq!(
                    i.checksum(),
                    i.icmp_type()
                        .calc_checksum(h.source, h.destination, i.payload())
                        .unwrap(),
                    "ICMPv6 checksum"
                ),
                _ => {}
            }
        }
    }
}

/// A pipeline with the default configuration and room for 1024 backend ids.
pub fn pipeline() -> sluice_dataplane::pipeline::Pipeline {
    use sluice_dataplane::pipeline::{Pipeline, PipelineConfig};
    Pipeline::new(
        &PipelineConfig::default(),
        Arc::new(sluice_dataplane::stats::WorkerStats::new(1024)),
    )
}

/// Runs `frame` through `pipe` at `now_ms`: the verdict and the frame as it left.
pub fn run(
    pipe: &mut sluice_dataplane::pipeline::Pipeline,
    snap: &Snapshot,
    frame: Vec<u8>,
    now_ms: u32,
) -> (sluice_dataplane::pipeline::Verdict, Vec<u8>) {
    use sluice_dataplane::pipeline::{PacketBuf, VecBuf};
    let mut b = VecBuf::new(&frame);
    let v = pipe.process(snap, &mut b, now_ms);
    (v, b.data().to_vec())
}
