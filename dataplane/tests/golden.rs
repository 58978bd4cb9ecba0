//! Golden packets: (description, input bytes, expected verdict, expected output bytes), run in
//! order through one pipeline (later rows rely on flows earlier rows created). Expected outputs
//! are built independently with etherparse, which recomputes every checksum from scratch.
mod common;

use std::net::IpAddr;
use std::sync::Arc;

use common::*;
use etherparse::{Ethernet2Header, Ipv4Header, Ipv6Header, PacketBuilder};
use sluice_dataplane::pipeline::{
    NeighborEvent, PacketBuf, Pipeline, PipelineConfig, VecBuf, Verdict,
};
use sluice_dataplane::stats::{DropReason, WorkerStats};
use sluice_dataplane::wire::{arp, ethernet, icmp};

struct Case {
    desc: &'static str,
    input: Vec<u8>,
    verdict: Verdict,
    output: Option<Vec<u8>>,
}

fn ip(a: &str) -> IpAddr {
    a.parse().unwrap()
}

fn case(desc: &'static str, input: Vec<u8>, verdict: Verdict, output: Option<Vec<u8>>) -> Case {
    Case {
        desc,
        input,
        verdict,
        output,
    }
}

fn drop(desc: &'static str, input: Vec<u8>, r: DropReason) -> Case {
    case(desc, input, Verdict::Drop(r), None)
}

fn arp_frame(
    op: u16,
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
    eth_dst: [u8; 6],
) -> Vec<u8> {
    let mut b = vec![0u8; 42];
    ethernet::emit(&mut b, eth_dst, sha, ethernet::ethertype::ARP);
    arp::emit(&mut b[14..], op, sha, spa, tha, tpa);
    b
}

fn ipip4(inner_frame: &[u8], outer_src: [u8; 4], outer_dst: [u8; 4], mac: [u8; 6]) -> Vec<u8> {
    let inner = &inner_frame[14..];
    let mut out = Vec::new();
    Ethernet2Header {
        source: LB_MAC,
        destination: mac,
        ether_type: etherparse::EtherType::IPV4,
    }
    .write(&mut out)
    .unwrap();
    let mut h = Ipv4Header::new(
        inner.len() as u16,
        64,
        etherparse::IpNumber(4),
        outer_src,
        outer_dst,
    )
    .unwrap();
    h.dont_fragment = false;
    h.header_checksum = h.calc_header_checksum();
    h.write(&mut out).unwrap();
    out.extend_from_slice(inner);
    out
}

fn ipip6(inner_frame: &[u8], outer_src: [u8; 16], outer_dst: [u8; 16], mac: [u8; 6]) -> Vec<u8> {
    let inner = &inner_frame[14..];
    let mut out = Vec::new();
    Ethernet2Header {
        source: LB_MAC,
        destination: mac,
        ether_type: etherparse::EtherType::IPV6,
    }
    .write(&mut out)
    .unwrap();
    Ipv6Header {
        traffic_class: 0,
        flow_label: Default::default(),
        payload_length: inner.len() as u16,
        next_header: etherparse::IpNumber(41),
        hop_limit: 64,
        source: outer_src,
        destination: outer_dst,
    }
    .write(&mut out)
    .unwrap();
    out.extend_from_slice(inner);
    out
}

fn with_mac(frame: &[u8], dst: [u8; 6]) -> Vec<u8> {
    let mut v = frame.to_vec();
    v[0..6].copy_from_slice(&dst);
    v[6..12].copy_from_slice(&LB_MAC);
    v
}

fn icmp4_echo(dst: [u8; 4]) -> Vec<u8> {
    icmp4_echo_with(dst, 7, 1, b"ping")
}

fn icmp4_echo_with(dst: [u8; 4], id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4(CLIENT4, dst, 64)
        .icmpv4_echo_request(id, seq)
        .write(&mut v, data)
        .unwrap();
    v
}

fn icmp4_echo_reply(src: [u8; 4]) -> Vec<u8> {
    icmp4_echo_reply_with(src, 7, 1, b"ping")
}

fn icmp4_echo_reply_with(src: [u8; 4], id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(LB_MAC, CLIENT_MAC)
        .ipv4(src, CLIENT4, 64)
        .icmpv4_echo_reply(id, seq)
        .write(&mut v, data)
        .unwrap();
    v
}

fn icmp6_echo(dst: [u8; 16], reply: bool) -> Vec<u8> {
    let mut v = Vec::new();
    if reply {
        PacketBuilder::ethernet2(LB_MAC, CLIENT_MAC)
            .ipv6(dst, CLIENT6, 64)
            .icmpv6_echo_reply(7, 1)
            .write(&mut v, b"ping6")
            .unwrap();
    } else {
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ipv6(CLIENT6, dst, 64)
            .icmpv6_echo_request(7, 1)
            .write(&mut v, b"ping6")
            .unwrap();
    }
    v
}

/// An ICMP "fragmentation needed" from a router, quoting `quoted` (an IPv4 packet).
fn frag_needed(router: [u8; 4], to: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4(router, to, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ))
        .write(&mut v, quoted)
        .unwrap();
    v
}

fn ns_frame(target: [u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; 86];
    let dst = icmp::solicited_node(target);
    ethernet::emit(
        &mut b,
        icmp::multicast_mac(dst),
        CLIENT_MAC,
        ethernet::ethertype::IPV6,
    );
    sluice_dataplane::wire::ipv6::emit(&mut b[14..], CLIENT6, dst, 58, 32, 255);
    icmp::emit_neighbor_solicit(&mut b[54..], target, CLIENT_MAC);
    let c = !sluice_dataplane::wire::checksum::fold(sluice_dataplane::wire::checksum::sum(
        sluice_dataplane::wire::checksum::pseudo_v6(CLIENT6, dst, 58, 32),
        &b[54..86],
    ));
    b[56..58].copy_from_slice(&c.to_be_bytes());
    b
}

fn na_frame(target: [u8; 16]) -> Vec<u8> {
    let mut v = Vec::new();
    Ethernet2Header {
        source: LB_MAC,
        destination: CLIENT_MAC,
        ether_type: etherparse::EtherType::IPV6,
    }
    .write(&mut v)
    .unwrap();
    let mut body = vec![0u8; 32];
    icmp::emit_neighbor_advert(
        &mut body,
        icmp::v6::NA_SOLICITED | icmp::v6::NA_OVERRIDE,
        target,
        LB_MAC,
    );
    let ipn = Ipv6Header {
        traffic_class: 0,
        flow_label: Default::default(),
        payload_length: 32,
        next_header: etherparse::IpNumber::IPV6_ICMP,
        hop_limit: 255,
        source: target,
        destination: CLIENT6,
    };
    ipn.write(&mut v).unwrap();
    let c = etherparse::Icmpv6Type::Unknown {
        type_u8: 136,
        code_u8: 0,
        bytes5to8: [body[4], body[5], body[6], body[7]],
    }
    .calc_checksum(target, CLIENT6, &body[8..])
    .unwrap();
    body[2..4].copy_from_slice(&c.to_be_bytes());
    v.extend_from_slice(&body);
    v
}

fn vlan_tcp4(vid: u16, dst: [u8; 4]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .single_vlan(vid.try_into().unwrap())
        .ipv4(CLIENT4, dst, 64)
        .tcp(40100, 80, 1, 1000)
        .syn()
        .write(&mut v, &[])
        .unwrap();
    v
}

fn fragment4(dst: [u8; 4], later: bool) -> Vec<u8> {
    let mut v = tcp4(CLIENT4, dst, 40200, 80, false, true, &[7; 16]);
    // mark as a fragment: MF for the first, offset 8 bytes for a later one
    let fo: u16 = if later { 1 } else { 0x2000 };
    v[14 + 6..14 + 8].copy_from_slice(&fo.to_be_bytes());
    let mut h = Ipv4Header::from_slice(&v[14..]).unwrap().0;
    h.header_checksum = h.calc_header_checksum();
    let mut hb = Vec::new();
    h.write(&mut hb).unwrap();
    v[14..34].copy_from_slice(&hb);
    v
}

/// The RST Sluice answers a segment of an unknown NAT flow with: IPv4, no options, TTL 64,
/// ident 0, DF clear; RST alone, or RST|ACK with `ack`.
fn rst4(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    with_ack: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    Ethernet2Header {
        source: LB_MAC,
        destination: CLIENT_MAC,
        ether_type: etherparse::EtherType::IPV4,
    }
    .write(&mut out)
    .unwrap();
    let mut t = etherparse::TcpHeader::new(sport, dport, seq, 0);
    t.rst = true;
    t.ack = with_ack;
    t.acknowledgment_number = ack;
    let mut h = Ipv4Header::new(
        t.header_len() as u16,
        64,
        etherparse::IpNumber::TCP,
        src,
        dst,
    )
    .unwrap();
    h.dont_fragment = false;
    h.header_checksum = h.calc_header_checksum();
    t.checksum = t.calc_checksum_ipv4(&h, &[]).unwrap();
    h.write(&mut out).unwrap();
    t.write(&mut out).unwrap();
    out
}

/// The same over IPv6 (hop limit 64).
fn rst6(
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    with_ack: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    Ethernet2Header {
        source: LB_MAC,
        destination: CLIENT_MAC,
        ether_type: etherparse::EtherType::IPV6,
    }
    .write(&mut out)
    .unwrap();
    let mut t = etherparse::TcpHeader::new(sport, dport, seq, 0);
    t.rst = true;
    t.ack = with_ack;
    t.acknowledgment_number = ack;
    let h = Ipv6Header {
        traffic_class: 0,
        flow_label: Default::default(),
        payload_length: t.header_len() as u16,
        next_header: etherparse::IpNumber::TCP,
        hop_limit: 64,
        source: src,
        destination: dst,
    };
    t.checksum = t.calc_checksum_ipv6(&h, &[]).unwrap();
    h.write(&mut out).unwrap();
    t.write(&mut out).unwrap();
    out
}

/// A segment of an unknown NAT flow: answered with RFC 793's RST by default (a segment with
/// ACK gets `seq = SEG.ACK`; one without gets RST|ACK with `ack = SEG.SEQ + SEG.LEN`, FIN
/// counted), never for a RST; dropped and counted with `reset_unknown_flows` off.
#[test]
fn unknown_nat_flow_is_reset() {
    let snap = snapshot(1);
    let stats = Arc::new(WorkerStats::new(1024));
    let mut pipe = Pipeline::new(&PipelineConfig::default(), stats.clone());
    let vip1 = [192, 0, 2, 1];
    let v6vip = v6("2001:db8::1");
    let mut fin6 = tcp6(CLIENT6, v6vip, 40500, 80, false, b"abc");
    fin6[54 + 13] |= 0x01; // FIN: SEG.LEN = 3 + 1
    let mut fixed = fin6.clone();
    fix_tcp6_checksum(&mut fixed);
    let mut rst_in = tcp4(CLIENT4, vip1, 40998, 80, false, true, &[]);
    rst_in[14 + 20 + 13] |= 0x04;
    let cases = vec![
        case(
            "nat v4 ACK + data without a flow",
            tcp4(CLIENT4, vip1, 40997, 80, false, true, b"data"),
            Verdict::Tx,
            Some(rst4(vip1, CLIENT4, 80, 40997, 1, 0, false)),
        ),
        case(
            "nat v6 FIN without ACK, without a flow",
            fixed,
            Verdict::Tx,
            Some(rst6(v6vip, CLIENT6, 80, 40500, 0, 1004, true)),
        ),
        drop(
            "a RST of an unknown flow is not answered",
            rst_in,
            DropReason::TcpNoFlow,
        ),
    ];
    run(&mut pipe, &snap, cases, false);
    assert_eq!(
        stats.tcp_resets.load(std::sync::atomic::Ordering::Relaxed),
        2
    );

    let off = PipelineConfig {
        reset_unknown_flows: false,
        ..PipelineConfig::default()
    };
    let mut pipe = Pipeline::new(&off, Arc::new(WorkerStats::new(1024)));
    let cases = vec![drop(
        "reset_unknown_flows off: dropped",
        tcp4(CLIENT4, vip1, 40996, 80, false, true, &[]),
        DropReason::TcpNoFlow,
    )];
    run(&mut pipe, &snap, cases, false);
}

/// Recomputes the TCP checksum of an Ethernet + IPv6 (no extension headers) + TCP frame.
fn fix_tcp6_checksum(f: &mut [u8]) {
    let ip = Ipv6Header::from_slice(&f[14..]).unwrap().0;
    let (t, payload) = etherparse::TcpHeader::from_slice(&f[54..]).unwrap();
    let payload = payload.to_vec();
    let c = t.calc_checksum_ipv6(&ip, &payload).unwrap();
    f[54 + 16..54 + 18].copy_from_slice(&c.to_be_bytes());
}

/// Runs the table one packet at a time (`burst == false`, `Pipeline::process`) or as the
/// worker does, in bursts of 32 (`Pipeline::process_burst`).
fn run(
    pipe: &mut Pipeline,
    snap: &sluice_dataplane::snapshot::Snapshot,
    cases: Vec<Case>,
    burst: bool,
) {
    let mut bufs: Vec<VecBuf> = cases.iter().map(|c| VecBuf::new(&c.input)).collect();
    let mut verdicts = Vec::new();
    for (chunk_no, chunk) in bufs.chunks_mut(32).enumerate() {
        if burst {
            let mut v = [Verdict::Tx; 32];
            let v = &mut v[..chunk.len()];
            pipe.process_burst(snap, chunk, 1000 + chunk_no as u32 * 32, v);
            verdicts.extend_from_slice(v);
            continue;
        }
        for (j, b) in chunk.iter_mut().enumerate() {
            let i = chunk_no * 32 + j;
            verdicts.push(pipe.process(snap, b, 1000 + i as u32));
        }
    }
    for (i, (c, b)) in cases.into_iter().zip(bufs).enumerate() {
        let v = verdicts[i];
        assert_eq!(v, c.verdict, "row {i}: {}", c.desc);
        if let Some(want) = c.output {
            assert_eq!(b.data(), &want[..], "row {i}: {} (output bytes)", c.desc);
            if b.data().len() >= 34
                && (b.data()[12..14] == [8, 0] || b.data()[12..14] == [0x86, 0xdd])
            {
                assert_checksums_valid(b.data());
            }
        }
    }
}

#[test]
fn golden_table() {
    golden(false);
}

/// The same table through the worker's burst path, which parses and hashes each packet once in
/// the prefetch pass and reuses the result.
#[test]
fn golden_table_burst_path() {
    golden(true);
}

fn golden(burst: bool) {
    let snap = snapshot(1);
    let stats = Arc::new(WorkerStats::new(1024));
    let mut pipe = Pipeline::new(&PipelineConfig::default(), stats.clone());
    let vip1 = [192, 0, 2, 1];
    let syn = tcp4(CLIENT4, vip1, 40000, 80, true, false, &[]);
    let synack_from_backend = {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(bmac(1), LB_MAC)
            .ipv4([10, 0, 1, 1], NAT4, 64)
            .tcp(8080, NAT_PORT_MIN, 5000, 65535)
            .syn()
            .ack(1001)
            .write(&mut v, &[])
            .unwrap();
        v
    };
    let udp = udp4(CLIENT4, vip1, 5353, 53, b"query");
    let dsr_syn = tcp4(CLIENT4, [192, 0, 2, 2], 40001, 80, true, false, b"x");
    let ipip_syn = tcp4(CLIENT4, [192, 0, 2, 3], 40002, 80, true, false, b"hello");
    let v6vip = v6("2001:db8::1");
    let v6syn = tcp6(CLIENT6, v6vip, 40003, 80, true, &[]);
    let v6ipip = tcp6(CLIENT6, v6("2001:db8::2"), 40004, 80, true, b"six");
    let vlan = vlan_tcp4(100, [192, 0, 2, 2]);
    let vlan_nat = vlan_tcp4(42, vip1);
    // An ARP request for a VIP, tagged VLAN 42 (802.1ad outer TPID: QinQ is refused alike).
    let mut vlan_arp = arp_frame(
        arp::OP_REQUEST,
        CLIENT_MAC,
        CLIENT4,
        [0; 6],
        vip1,
        ethernet::BROADCAST,
    );
    vlan_arp.splice(12..12, [0x88, 0xa8, 0x00, 42]);
    let mut truncated = syn.clone();
    truncated.truncate(40);
    let mut not_for_us = syn.clone();
    not_for_us[0..6].copy_from_slice(&[2, 9, 9, 9, 9, 9]);
    let mut lldp = syn.clone();
    lldp[12..14].copy_from_slice(&[0x88, 0xcc]);
    let mut bad_csum = syn.clone();
    bad_csum[24] ^= 0xff;
    let mut gre = syn.clone();
    gre[23] = 47;
    {
        let mut h = Ipv4Header::from_slice(&gre[14..]).unwrap().0;
        h.header_checksum = h.calc_header_checksum();
        let mut hb = Vec::new();
        h.write(&mut hb).unwrap();
        gre[14..34].copy_from_slice(&hb);
    }
    // The quoted packet of a DSR reply (VIP:80 -> client:40001) that a router could not forward.
    let mut quoted = Vec::new();
    PacketBuilder::ipv4([192, 0, 2, 2], CLIENT4, 64)
        .tcp(80, 40001, 9, 1000)
        .write(&mut quoted, &[0; 8])
        .unwrap();
    let icmp_err = frag_needed([10, 9, 0, 1], [192, 0, 2, 2], &quoted);
    let mut quoted_unknown = Vec::new();
    PacketBuilder::ipv4([192, 0, 2, 2], CLIENT4, 64)
        .tcp(80, 49999, 9, 1000)
        .write(&mut quoted_unknown, &[0; 8])
        .unwrap();
    let icmp_err_unknown = frag_needed([10, 9, 0, 1], [192, 0, 2, 2], &quoted_unknown);
    let mut timestamp = icmp4_echo(vip1);
    timestamp[34] = 13;
    let big = tcp4(
        CLIENT4,
        [192, 0, 2, 3],
        40005,
        80,
        true,
        false,
        &[0u8; 1450],
    );
    let v6udp = udp6(CLIENT6, v6("2001:db8::3"), 5000, 53, b"dns6");

    let cases = vec![
        case(
            "nat v4 TCP SYN: destination to backend, source to NAT address and the worker's first port",
            syn.clone(),
            Verdict::Tx,
            Some(rewritten(&syn, LB_MAC, bmac(1), ip("10.0.0.3"), ip("10.0.1.1"), NAT_PORT_MIN, 8080)),
        ),
        case(
            "nat v4 reply from backend translated back to VIP:80 -> client",
            synack_from_backend.clone(),
            Verdict::Tx,
            Some(rewritten(&synack_from_backend, LB_MAC, CLIENT_MAC, ip("192.0.2.1"), ip("10.9.9.9"), 80, 40000)),
        ),
        case(
            "nat v4 ACK of the tracked flow keeps its NAT port",
            tcp4(CLIENT4, vip1, 40000, 80, false, true, b"GET /"),
            Verdict::Tx,
            Some(rewritten(
                &tcp4(CLIENT4, vip1, 40000, 80, false, true, b"GET /"),
                LB_MAC,
                bmac(1),
                ip("10.0.0.3"),
                ip("10.0.1.1"),
                NAT_PORT_MIN,
                8080,
            )),
        ),
        case(
            "nat v4 ACK without a tracked flow: RST with seq = its ACK",
            tcp4(CLIENT4, vip1, 40999, 80, false, true, b"lost"),
            Verdict::Tx,
            Some(rst4(vip1, CLIENT4, 80, 40999, 1, 0, false)),
        ),
        case(
            "nat v4 UDP to another backend: its destination's own port cursor, so the first port too",
            udp.clone(),
            Verdict::Tx,
            Some(rewritten(&udp, LB_MAC, bmac(2), ip("10.0.0.3"), ip("10.0.1.2"), NAT_PORT_MIN, 8080)),
        ),
        case("dsr-l2: only MACs change", dsr_syn.clone(), Verdict::Tx, Some(with_mac(&dsr_syn, bmac(1)))),
        drop("802.1Q-tagged SYN to a dsr-l2 VIP (no VLAN configured)", vlan, DropReason::VlanTagged),
        drop("802.1Q-tagged SYN to a nat VIP (no VLAN configured)", vlan_nat, DropReason::VlanTagged),
        drop("802.1ad-tagged ARP request for a VIP (no VLAN configured)", vlan_arp, DropReason::VlanTagged),
        case(
            "dsr-ipip v4: IPv4-in-IPv4 from our address to the backend",
            ipip_syn.clone(),
            Verdict::Tx,
            Some(ipip4(&ipip_syn, LB4, [10, 0, 1, 2], bmac(2))),
        ),
        case(
            "nat v6 TCP SYN",
            v6syn.clone(),
            Verdict::Tx,
            Some(rewritten(&v6syn, LB_MAC, bmac(3), ip("fd00::3"), ip("fd00:1::1"), NAT_PORT_MIN, 8080)),
        ),
        case(
            "dsr-ipip v6: IPv6-in-IPv6",
            v6ipip.clone(),
            Verdict::Tx,
            Some(ipip6(&v6ipip, LB6, v6("fd00:1::1"), bmac(3))),
        ),
        case("dsr-l2 v6 UDP", v6udp.clone(), Verdict::Tx, Some(with_mac(&v6udp, bmac(3)))),
        case(
            "ARP request for a VIP is answered",
            arp_frame(arp::OP_REQUEST, CLIENT_MAC, CLIENT4, [0; 6], vip1, ethernet::BROADCAST),
            Verdict::Tx,
            Some(arp_frame(arp::OP_REPLY, LB_MAC, vip1, CLIENT_MAC, CLIENT4, CLIENT_MAC)),
        ),
        case(
            "ARP request for our own address is answered",
            arp_frame(arp::OP_REQUEST, CLIENT_MAC, CLIENT4, [0; 6], LB4, ethernet::BROADCAST),
            Verdict::Tx,
            Some(arp_frame(arp::OP_REPLY, LB_MAC, LB4, CLIENT_MAC, CLIENT4, CLIENT_MAC)),
        ),
        drop(
            "ARP request for someone else",
            arp_frame(arp::OP_REQUEST, CLIENT_MAC, CLIENT4, [0; 6], [10, 9, 9, 1], ethernet::BROADCAST),
            DropReason::ArpNotOurs,
        ),
        case(
            "ARP reply from a backend goes to the control plane",
            arp_frame(arp::OP_REPLY, bmac(1), [10, 0, 1, 1], LB_MAC, LB4, LB_MAC),
            Verdict::Neighbor(NeighborEvent {
                ip: ip("10.0.1.1"),
                mac: bmac(1),
            }),
            None,
        ),
        case(
            "neighbour solicitation for a v6 VIP is answered with an advertisement",
            ns_frame(v6vip),
            Verdict::Tx,
            Some(na_frame(v6vip)),
        ),
        drop("neighbour solicitation for someone else", ns_frame(v6("fd00::77")), DropReason::NdpNotOurs),
        case("ICMP echo to a VIP is answered", icmp4_echo(vip1), Verdict::Tx, Some(icmp4_echo_reply(vip1))),
        // Found by the fuzzer: a reply whose words sum to zero needs checksum 0xffff (0x0000
        // does not verify).
        case(
            "ICMP echo with identifier, sequence and data all zero gets a reply that verifies",
            icmp4_echo_with(vip1, 0, 0, &[0; 4]),
            Verdict::Tx,
            Some(icmp4_echo_reply_with(vip1, 0, 0, &[0; 4])),
        ),
        case("ICMPv6 echo to a VIP is answered", icmp6_echo(v6vip, false), Verdict::Tx, Some(icmp6_echo(v6vip, true))),
        case(
            "ICMP fragmentation-needed quoting a tracked dsr-l2 flow goes to its backend",
            icmp_err.clone(),
            Verdict::Tx,
            Some(with_mac(&icmp_err, bmac(1))),
        ),
        drop("ICMP error quoting an unknown flow", icmp_err_unknown, DropReason::IcmpErrorNoFlow),
        drop("ICMP timestamp request", timestamp, DropReason::IcmpUnsupported),
        drop(
            "source outside loadBalancerSourceRanges",
            tcp4([10, 8, 0, 1], [192, 0, 2, 4], 40000, 80, true, false, &[]),
            DropReason::SourceDenied,
        ),
        case(
            "source inside loadBalancerSourceRanges (the second flow to backend 1: its cursor's next port)",
            tcp4(CLIENT4, [192, 0, 2, 4], 40010, 80, true, false, &[]),
            Verdict::Tx,
            Some(rewritten(
                &tcp4(CLIENT4, [192, 0, 2, 4], 40010, 80, true, false, &[]),
                LB_MAC,
                bmac(1),
                ip("10.0.0.3"),
                ip("10.0.1.1"),
                NAT_PORT_MIN + 1,
                8080,
            )),
        ),
        drop("VIP port not served", tcp4(CLIENT4, vip1, 40000, 81, true, false, &[]), DropReason::PortNotServed),
        drop("not a VIP", tcp4(CLIENT4, [192, 0, 2, 99], 40000, 80, true, false, &[]), DropReason::NoVip),
        drop("Service without backends", tcp4(CLIENT4, [192, 0, 2, 5], 40000, 80, true, false, &[]), DropReason::NoBackend),
        drop(
            "backend whose next hop is unresolved",
            tcp4(CLIENT4, [192, 0, 2, 6], 40000, 80, true, false, &[]),
            DropReason::NextHopUnresolved,
        ),
        drop("truncated frame", truncated, DropReason::Malformed),
        drop("unicast frame for another MAC", not_for_us, DropReason::NotForUs),
        drop("LLDP", lldp, DropReason::UnsupportedL3),
        drop("bad IPv4 header checksum", bad_csum, DropReason::BadIpChecksum),
        drop("GRE to a VIP", gre, DropReason::UnsupportedL4),
        drop("fragment to a nat VIP", fragment4(vip1, false), DropReason::NatFragment),
        case(
            "later fragment to a dsr-l2 VIP: balanced by 3-tuple",
            fragment4([192, 0, 2, 2], true),
            Verdict::Tx,
            Some(with_mac(&fragment4([192, 0, 2, 2], true), bmac(1))),
        ),
        drop(
            "packet to a NAT address matching no flow",
            tcp4([10, 0, 1, 1], NAT4, 8080, 20500, false, true, &[]),
            DropReason::NatNoFlow,
        ),
        drop("dsr-ipip packet that would exceed the MTU once encapsulated", big, DropReason::TooBig),
    ];
    let n = cases.len();
    run(&mut pipe, &snap, cases, burst);
    assert!(n >= 35);
    // Every drop above was counted under its own reason.
    for r in [
        DropReason::ArpNotOurs,
        DropReason::NdpNotOurs,
        DropReason::IcmpErrorNoFlow,
        DropReason::IcmpUnsupported,
        DropReason::SourceDenied,
        DropReason::PortNotServed,
        DropReason::NoVip,
        DropReason::NoBackend,
        DropReason::NextHopUnresolved,
        DropReason::Malformed,
        DropReason::NotForUs,
        DropReason::UnsupportedL3,
        DropReason::BadIpChecksum,
        DropReason::UnsupportedL4,
        DropReason::NatFragment,
        DropReason::NatNoFlow,
        DropReason::TooBig,
    ] {
        assert_eq!(stats.drops_of(r), 1, "{}", r.name());
    }
    assert_eq!(
        stats.drops_of(DropReason::VlanTagged),
        3,
        "three tagged frames"
    );
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(stats.nat_replies.load(Relaxed), 1);
    assert_eq!(stats.echo_replies.load(Relaxed), 3);
    assert_eq!(stats.neighbor_replies.load(Relaxed), 3);
    assert_eq!(stats.icmp_errors_forwarded.load(Relaxed), 1);
    // The ACK of an unknown NAT flow was answered with a RST, not dropped.
    assert_eq!(stats.drops_of(DropReason::TcpNoFlow), 0);
    assert_eq!(stats.tcp_resets.load(Relaxed), 1);
}

/// The burst cache never applies one packet's parse to another: a burst whose packet at an
/// index has the same length as the last burst's packet there is processed from its own parse
/// (a stale `nat` parse would rewrite a `dsr-l2` packet's addresses).
#[test]
fn burst_cache_is_not_reused_across_bursts() {
    let snap = snapshot(1);
    let mut pipe = Pipeline::new(&PipelineConfig::default(), Arc::new(WorkerStats::new(1024)));
    // Burst A: two nat SYNs.
    let a: Vec<Vec<u8>> = (0..2)
        .map(|i| tcp4(CLIENT4, [192, 0, 2, 1], 41000 + i, 80, true, false, &[]))
        .collect();
    let mut bufs: Vec<VecBuf> = a.iter().map(|f| VecBuf::new(f)).collect();
    let mut v = [Verdict::Drop(DropReason::Malformed); 2];
    pipe.process_burst(&snap, &mut bufs, 10, &mut v);
    assert_eq!(v, [Verdict::Tx; 2]);
    // Burst B: at index 1 a dsr-l2 SYN of the same length as A's second packet.
    let x = tcp4(CLIENT4, [192, 0, 2, 1], 41005, 80, true, false, &[]);
    let y = tcp4(CLIENT4, [192, 0, 2, 2], 41006, 80, true, false, &[]);
    assert_eq!(y.len(), a[1].len());
    let mut bufs = [VecBuf::new(&x), VecBuf::new(&y)];
    pipe.process_burst(&snap, &mut bufs, 11, &mut v);
    assert_eq!(v, [Verdict::Tx; 2]);
    // dsr-l2: only the destination MAC changed.
    assert_eq!(bufs[1].data(), &with_mac(&y, bmac(1))[..]);
}

/// L2 mode: for a VIP another host owns, ARP and neighbour solicitations go unanswered
/// (counted), while our own address is still answered and the VIP's traffic still forwarded.
#[test]
fn l2_silent_vips_are_not_answered_but_forwarded() {
    let mut snap = snapshot(1);
    let vip1 = [192, 0, 2, 1];
    let v6vip = v6("2001:db8::1");
    snap.set_l2_silent(["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()]);
    let stats = Arc::new(WorkerStats::new(1024));
    let mut pipe = Pipeline::new(&PipelineConfig::default(), stats.clone());
    let syn = tcp4(CLIENT4, vip1, 40000, 80, true, false, &[]);
    let cases = vec![
        drop(
            "ARP request for a VIP another host owns",
            arp_frame(
                arp::OP_REQUEST,
                CLIENT_MAC,
                CLIENT4,
                [0; 6],
                vip1,
                ethernet::BROADCAST,
            ),
            DropReason::VipNotOwned,
        ),
        drop(
            "neighbour solicitation for a v6 VIP another host owns",
            ns_frame(v6vip),
            DropReason::VipNotOwned,
        ),
        case(
            "ARP request for our own address is still answered",
            arp_frame(
                arp::OP_REQUEST,
                CLIENT_MAC,
                CLIENT4,
                [0; 6],
                LB4,
                ethernet::BROADCAST,
            ),
            Verdict::Tx,
            Some(arp_frame(
                arp::OP_REPLY,
                LB_MAC,
                LB4,
                CLIENT_MAC,
                CLIENT4,
                CLIENT_MAC,
            )),
        ),
        case(
            "ARP request for a VIP we own (192.0.2.2) is answered",
            arp_frame(
                arp::OP_REQUEST,
                CLIENT_MAC,
                CLIENT4,
                [0; 6],
                [192, 0, 2, 2],
                ethernet::BROADCAST,
            ),
            Verdict::Tx,
            Some(arp_frame(
                arp::OP_REPLY,
                LB_MAC,
                [192, 0, 2, 2],
                CLIENT_MAC,
                CLIENT4,
                CLIENT_MAC,
            )),
        ),
        case(
            "a SYN to the silent VIP is still forwarded",
            syn,
            Verdict::Tx,
            None,
        ),
    ];
    run(&mut pipe, &snap, cases, false);
    assert_eq!(
        stats.drops[DropReason::VipNotOwned as usize].load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}
