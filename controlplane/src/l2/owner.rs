//! # Who owns a VIP
//!
//! Rendezvous (highest random weight) hashing, as MetalLB's L2 mode does: every host scores
//! each (host, VIP) pair with the same fixed hash and the live candidate with the highest
//! score owns the VIP. Hosts that see the same live set agree without talking; a host that
//! leaves moves only its own VIPs, and one that returns takes back only those.
//!
//! The hash is FNV-1a over `host \0 vip` finished with SplitMix64's mixer: fixed here, so every
//! build and every host scores alike (`std`'s hasher promises no such thing).
use std::net::IpAddr;

fn score(host: &str, vip: IpAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    host.bytes().for_each(&mut eat);
    eat(0);
    match vip {
        IpAddr::V4(a) => a.octets().into_iter().for_each(&mut eat),
        IpAddr::V6(a) => a.octets().into_iter().for_each(&mut eat),
    }
    // SplitMix64's finaliser spreads FNV's weak low bits.
    let mut z = h;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The owner of `vip` among `candidates` (the live hosts that can serve it), or `None` when
/// there is none. Ties (never seen in practice) go to the smaller name.
pub fn owner<'a>(vip: IpAddr, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|h| (score(h, vip), std::cmp::Reverse(h)))
        .max()
        .map(|(_, std::cmp::Reverse(h))| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vips(n: u32) -> Vec<IpAddr> {
        (0..n)
            .map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a62_6400 + i)))
            .collect()
    }

    #[test]
    fn same_answer_whatever_the_order() {
        for v in vips(50) {
            assert_eq!(owner(v, ["a", "b", "c"]), owner(v, ["c", "a", "b"]));
        }
        assert_eq!(owner(vips(1)[0], []), None);
    }

    #[test]
    fn spread_and_minimal_movement() {
        let all = ["h1", "h2", "h3"];
        let vs = vips(3000);
        let mut count = [0usize; 3];
        for v in &vs {
            let o = owner(*v, all).unwrap();
            count[all.iter().position(|h| *h == o).unwrap()] += 1;
        }
        for c in count {
            assert!((800..=1200).contains(&c), "{count:?}");
        }
        // h2 leaves: only its VIPs move; when it returns, exactly those come back.
        for v in &vs {
            let before = owner(*v, all).unwrap();
            let after = owner(*v, ["h1", "h3"]).unwrap();
            if before != "h2" {
                assert_eq!(before, after, "{v} moved though its owner stayed");
            }
        }
    }

    #[test]
    fn fixed_scores() {
        // The hash is part of the protocol between hosts: a change would make hosts of
        // different versions disagree on owners. Values from an independent Python model.
        let v4: IpAddr = "10.98.100.1".parse().unwrap();
        let v6: IpAddr = "fd00:98:100::1".parse().unwrap();
        assert_eq!(score("h1", v4), 0x9a14_1a52_daad_4e31);
        assert_eq!(score("h2", v4), 0x6a2b_755c_6230_2ad6);
        assert_eq!(score("h1", v6), 0x858a_a857_cd25_7b75);
        assert_eq!(owner(v4, ["h1", "h2"]), Some("h1"));
    }
}
