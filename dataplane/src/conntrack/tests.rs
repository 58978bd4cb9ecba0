//! The flow table's tests: layout, lookups and inserts, expiry, eviction, and a model check.
use super::*;
use crate::hash::mix64;
use proptest::prelude::*;
use std::collections::HashMap;

type Value = [u32; 2];

fn v4(i: u32) -> V4Key {
    V4Key {
        src: (0x0a00_0000 | i).to_be_bytes(),
        dst: [192, 0, 2, 1],
        sport: (i % 50_000) as u16 + 1024,
        dport: 80,
        proto: 6,
    }
}

fn table(capacity: usize) -> Conntrack<V4Key, Value> {
    Conntrack::new(&ConntrackConfig {
        capacity,
        timeouts: Timeouts::default(),
    })
}

fn consistent<K: FlowKey, V: Copy>(t: &Conntrack<K, V>) {
    let s = t.stats();
    assert_eq!(
        t.len() as u64,
        s.inserts - s.evictions - s.expiries - s.removals,
        "{s:?}"
    );
    assert_eq!(t.entries_in(0, usize::MAX).count(), t.len());
    let tagged: u32 = t.tags.iter().map(|w| 8 - free_lanes(w).count_ones()).sum();
    assert_eq!(tagged as usize, t.len());
    for (i, s) in t.slots.iter().enumerate() {
        let tag = (t.tags[i / SLOTS_PER_BUCKET] >> ((i % SLOTS_PER_BUCKET) * 16)) as u16;
        assert_eq!(s.0.is_some(), tag != 0, "slot {i}");
    }
}

#[test]
fn sizes() {
    use std::mem::size_of;
    assert_eq!(size_of::<V4Key>(), 13);
    assert_eq!(size_of::<V6Key>(), 37);
    assert_eq!(size_of::<FlowState>(), 1);
    // The entry targets: at most 32 bytes for IPv4 with an 8-byte value...
    assert_eq!(size_of::<Entry<V4Key, u64>>(), 32);
    assert_eq!(size_of::<Entry<V4Key, [u32; 2]>>(), 28);
    assert_eq!(size_of::<Entry<V6Key, u64>>(), 56);
    assert_eq!(size_of::<Entry<V6Key, [u32; 2]>>(), 52);
    // ...`Option` is free (the `FlowState` niche)...
    assert_eq!(size_of::<Option<Entry<V4Key, u64>>>(), 32);
    assert_eq!(size_of::<Option<Entry<V6Key, u64>>>(), 56);
    // ...and a slot is aligned to 32 bytes (one cache line per entry), plus a 2-byte tag.
    assert_eq!(size_of::<Slot<V4Key, u64>>(), 32);
    assert_eq!(size_of::<Slot<V4Key, [u32; 2]>>(), 32);
    assert_eq!(size_of::<Slot<V6Key, u64>>(), 64);
    assert_eq!(Conntrack::<V4Key, [u32; 2]>::bytes_per_slot(), 34);
    assert_eq!(Conntrack::<V4Key, u64>::bytes_per_slot(), 34);
    assert_eq!(Conntrack::<V6Key, u64>::bytes_per_slot(), 66);
}

#[test]
fn capacity_rounding_and_bytes() {
    assert_eq!(table(0).capacity(), 16);
    assert_eq!(table(17).capacity(), 32);
    assert_eq!(table(1000).capacity(), 1024);
    assert_eq!(table(1024).capacity(), 1024);
    let t = table(1 << 16);
    assert_eq!(t.bytes(), (1 << 16) * 34 + std::mem::size_of_val(&t));
    assert!(t.is_empty());
}

#[test]
#[should_panic(expected = "above the maximum")]
fn capacity_limit() {
    let _ = table(MAX_CAPACITY + 1);
}

#[test]
fn lane_masks_name_slots() {
    // Lane i of a tag word is slot i of its bucket: what set_tag writes, lanes finds (with
    // the embryonic flag or without), embryonic_lanes finds when flagged.
    let mut t = table(64);
    for (i, stored) in [(3usize, 0x8001u16), (8 + 7, 0xffff), (16, 1)] {
        t.set_tag(i, stored);
        let b = i / SLOTS_PER_BUCKET;
        let tag = stored & TAG_BITS;
        assert_eq!(
            lanes(&t.tags[b], tag),
            1 << (i % SLOTS_PER_BUCKET),
            "slot {i}"
        );
        assert_eq!(first_lane(lanes(&t.tags[b], tag)), i % SLOTS_PER_BUCKET);
        assert_eq!(count_lanes(free_lanes(&t.tags[b])), 7);
        let flagged = if stored & EMBRYONIC != 0 {
            1 << (i % SLOTS_PER_BUCKET)
        } else {
            0
        };
        assert_eq!(embryonic_lanes(&t.tags[b]), flagged, "slot {i}");
        assert_eq!(t.stored(i), stored);
        t.set_tag(i, 0);
        assert_eq!(free_lanes(&t.tags[b]), 0xff);
    }
}

#[test]
fn insert_lookup_remove() {
    let mut t = table(1024);
    let seed = 7;
    for i in 0..500 {
        let k = v4(i);
        assert_eq!(
            t.insert(
                k,
                k.flow_hash(seed),
                [i, 0],
                FlowState::TcpEstablished,
                0,
                Insert::Replace
            ),
            Inserted::New
        );
    }
    assert_eq!(t.len(), 500);
    for i in 0..500 {
        let k = v4(i);
        let e = t
            .lookup(&k, k.flow_hash(seed), NO_SLOT, 10, |_| {})
            .expect("present");
        assert_eq!(e.key(), &k);
        assert_eq!(e.value(), &[i, 0]);
        assert_eq!(e.last_seen_ms(), 10);
        e.value_mut()[1] = 9;
    }
    let k = v4(3);
    let h = k.flow_hash(seed);
    assert_eq!(
        t.lookup(&k, h, NO_SLOT, 11, |_| {}).unwrap().value(),
        &[3, 9]
    );
    assert_eq!(
        t.insert(k, h, [1, 1], FlowState::Udp, 12, Insert::Replace),
        Inserted::Replaced { old: [3, 9] }
    );
    assert_eq!(
        t.lookup(&k, h, NO_SLOT, 13, |_| {}).unwrap().state(),
        FlowState::Udp
    );
    assert!(t.remove(&k, h));
    assert!(!t.remove(&k, h));
    assert!(t.lookup(&k, h, NO_SLOT, 14, |_| {}).is_none());
    assert!(t
        .lookup(&v4(9999), v4(9999).flow_hash(seed), NO_SLOT, 14, |_| {})
        .is_none());
    assert_eq!(t.len(), 499);
    let s = *t.stats();
    assert_eq!(
        (s.hits, s.misses, s.inserts, s.replacements, s.removals),
        (502, 2, 500, 1, 1)
    );
    consistent(&t);
}

#[test]
fn v6_keys() {
    let mut t: Conntrack<V6Key, u64> = Conntrack::new(&ConntrackConfig::default());
    let mut k = V6Key {
        src: [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        ..V6Key::default()
    };
    k.dst = k.src;
    k.dst[15] = 2;
    k.sport = 5000;
    k.dport = 443;
    k.proto = 17;
    let h = k.flow_hash(1);
    assert_eq!(
        t.insert(k, h, 42, FlowState::Udp, 0, Insert::Replace),
        Inserted::New
    );
    let mut other = k;
    other.sport = 5001;
    assert!(t
        .lookup(&other, other.flow_hash(1), NO_SLOT, 1, |_| {})
        .is_none());
    assert_eq!(
        t.lookup(&k, h, NO_SLOT, 1, |_| {}).map(|e| *e.value()),
        Some(42)
    );
    assert_eq!(t.capacity(), DEFAULT_CAPACITY);
}

#[test]
fn prefetch_helpers_point_at_the_right_places() {
    let mut t = table(1024);
    let k = v4(5);
    let h = k.flow_hash(2);
    let _ = t.insert(k, h, [5, 5], FlowState::Udp, 0, Insert::Replace);
    t.prefetch(h);
    let slot = t.prefetch_entry(h);
    assert_eq!(t.slots[slot as usize].0.map(|e| *e.key()), Some(k));
    assert_eq!(
        slot as usize / SLOTS_PER_BUCKET,
        t.buckets(h).0,
        "an empty table puts the entry in its first bucket"
    );
    let other = v4(6).flow_hash(2);
    assert_eq!(t.prefetch_entry(other), NO_SLOT, "no tag match, no slot");
    // The slot an insert prefetches is the one it fills.
    let (b1, b2) = t.buckets(other);
    let (b, free) = t.insert_bucket(b1, b2);
    let at = b * SLOTS_PER_BUCKET + first_lane(free);
    assert_eq!(t.prefetch_insert(other) as usize, at, "a free slot");
    let _ = t.insert(v4(6), other, [6, 6], FlowState::Udp, 0, Insert::New);
    assert_eq!(t.slots[at].0.map(|e| *e.key()), Some(v4(6)));
    // Two full buckets: the insert's victims (four lines of the first bucket) are prefetched.
    let mut full = table(16);
    for i in 0..16 {
        let _ = full.insert(v4(i), crowded(i), [i, 0], FlowState::Udp, 0, Insert::New);
    }
    assert_eq!(full.insert_bucket(0, 1).1, 0, "both buckets full");
    assert_eq!(
        full.prefetch_insert(crowded(99)),
        NO_SLOT,
        "both buckets full"
    );
}

/// `insert_at` takes the slot `prefetch_insert` named while it is free and one of the key's;
/// a slot taken since, another bucket's slot or none are ignored: the entry is placed as by
/// `insert`, and found either way.
#[test]
fn insert_at_takes_the_prefetched_slot() {
    let mut t = table(1024);
    let (k, h) = (v4(1), v4(1).flow_hash(2));
    let at = t.prefetch_insert(h);
    let (b1, b2) = t.buckets(h);
    // Another free slot of the same bucket, named as the hint: taken.
    let other = at + 1;
    assert_eq!(
        t.insert_at(k, h, [1, 0], FlowState::Udp, 0, Insert::New, other),
        Inserted::New
    );
    assert_eq!(t.slots[other as usize].0.map(|e| *e.key()), Some(k));
    // A slot taken since: ignored.
    let (k2, h2) = (v4(2), v4(2).flow_hash(2));
    let _ = t.insert_at(k2, h2, [2, 0], FlowState::Udp, 0, Insert::New, other);
    assert_eq!(t.get(&k2, h2).map(|e| *e.value()), Some([2, 0]));
    assert_eq!(t.slots[other as usize].0.map(|e| *e.key()), Some(k));
    // A slot of neither bucket, and NO_SLOT: ignored.
    for (i, hint) in [(3u32, 0u32), (4, NO_SLOT)] {
        let (ki, hi) = (v4(i), v4(i).flow_hash(2));
        let (c1, c2) = t.buckets(hi);
        let hint = if c1 != 0 && c2 != 0 { hint } else { NO_SLOT };
        let _ = t.insert_at(ki, hi, [i, 0], FlowState::Udp, 0, Insert::New, hint);
        let slot = t.prefetch_entry(hi) as usize / SLOTS_PER_BUCKET;
        assert!(slot == c1 || slot == c2, "key {i} in its buckets");
        assert_eq!(t.get(&ki, hi).map(|e| *e.value()), Some([i, 0]));
    }
    assert!(b1 != b2);
    consistent(&t);
}

#[test]
fn slot_hints_and_insert_new() {
    let mut t = table(1024);
    let keys: Vec<(V4Key, u64)> = (0..300).map(|i| (v4(i), v4(i).flow_hash(2))).collect();
    for (i, (k, h)) in keys.iter().enumerate() {
        assert!(t.lookup(k, *h, NO_SLOT, 0, |_| {}).is_none());
        assert_eq!(
            t.insert(*k, *h, [i as u32, 0], FlowState::Udp, 0, Insert::New),
            Inserted::New
        );
    }
    consistent(&t);
    for (i, (k, h)) in keys.iter().enumerate() {
        // The hint a second-pass prefetch gives is the entry's slot.
        let slot = t.prefetch_entry(*h);
        assert_eq!(t.slots[slot as usize].0.map(|e| *e.key()), Some(*k));
        let got = t.lookup(k, *h, slot, 1, |_| {}).map(|e| e.value()[0]);
        assert_eq!(got, Some(i as u32));
        // A wrong or stale hint (another flow's slot, no slot, out of range) gives the same
        // answer by the search.
        let other = t.prefetch_entry(keys[(i + 1) % keys.len()].1);
        for hint in [other, NO_SLOT, u32::MAX - 1] {
            let got = t.lookup(k, *h, hint, 1, |_| {}).map(|e| e.value()[0]);
            assert_eq!(got, Some(i as u32), "hint {hint}");
        }
    }
    // An expired entry at the hinted slot is freed and reported, as by a plain lookup.
    let (k, h) = keys[0];
    let slot = t.prefetch_entry(h);
    let mut gone = None;
    let late = Timeouts::default().udp_ms + EPOCH_MS;
    assert!(t
        .lookup(&k, h, slot, late, |e| gone = Some(e.value()[0]))
        .is_none());
    assert_eq!(gone, Some(0));
    assert_eq!(t.prefetch_entry(h), NO_SLOT);
    consistent(&t);
    // Insert::IfAbsent: once, and not over a present key (whose value stays).
    assert_eq!(
        t.insert(k, h, [7, 7], FlowState::Udp, late, Insert::IfAbsent),
        Inserted::New
    );
    assert_eq!(
        t.insert(k, h, [8, 8], FlowState::Udp, late, Insert::IfAbsent),
        Inserted::Kept
    );
    assert_eq!(t.get(&k, h).map(|e| *e.value()), Some([7, 7]));
    let (k1, h1) = keys[1];
    assert_eq!(
        t.insert(k1, h1, [9, 9], FlowState::Udp, late, Insert::IfAbsent),
        Inserted::Kept
    );
    consistent(&t);
}

#[test]
fn timeouts_follow_state() {
    let to = Timeouts::default();
    let mut t = table(1024);
    let states = FlowState::ALL;
    for (i, &s) in states.iter().enumerate() {
        let k = v4(i as u32);
        let _ = t.insert(k, k.flow_hash(0), [0; 2], s, 0, Insert::Replace);
    }
    // Timeouts run from the end of the epoch an entry was last seen in (all seen at 0 here).
    let end = EPOCH_MS - 1;
    // A SYN entry lives 5 s, then expire() frees it.
    assert_eq!(t.expire(end + to.tcp_syn_ms - 1, usize::MAX, |_| {}), 0);
    assert_eq!(t.expire(end + to.tcp_syn_ms, usize::MAX, |_| {}), 1);
    assert!(!t.contains(&v4(0), v4(0).flow_hash(0)));
    assert_eq!(t.expire(end + to.udp_ms, usize::MAX, |_| {}), 2); // UDP and other: 30 s
    assert_eq!(t.expire(end + to.tcp_closing_ms, usize::MAX, |_| {}), 1); // closing: 60 s
    assert_eq!(t.len(), 1);
    // Established: 300 s; a lookup refreshes it.
    let k = v4(1);
    let h = k.flow_hash(0);
    let seen = end + to.tcp_established_ms - 1;
    assert!(t.lookup(&k, h, NO_SLOT, seen, |_| {}).is_some());
    assert_eq!(t.expire(end + to.tcp_established_ms, usize::MAX, |_| {}), 0);
    let end = seen | (EPOCH_MS - 1);
    assert!(t
        .lookup(&k, h, NO_SLOT, end + to.tcp_established_ms - 1, |_| {})
        .is_some());
    // Found expired by a lookup: a miss, freed, counted.
    let end = (end + to.tcp_established_ms - 1) | (EPOCH_MS - 1);
    assert!(t
        .lookup(&k, h, NO_SLOT, end + to.tcp_established_ms, |_| {})
        .is_none());
    assert!(t.is_empty());
    assert_eq!(t.stats().expiries, 5);
    assert_eq!(t.stats().misses, 1);
    consistent(&t);

    // A handshake completing moves the entry to the established timeout.
    let k = v4(77);
    let h = k.flow_hash(0);
    let _ = t.insert(k, h, [0; 2], FlowState::TcpSynSent, 1000, Insert::Replace);
    t.lookup(&k, h, NO_SLOT, 1001, |_| {})
        .unwrap()
        .set_state(FlowState::TcpEstablished);
    assert_eq!(t.expire(1001 + to.tcp_syn_ms * 10, usize::MAX, |_| {}), 0);
    assert_eq!(to.get(FlowState::Udp), 30_000);
}

/// A lookup says whether it is an entry's first of an epoch, and entries last seen in the same
/// epoch and state expire at the same moment (what lets a NAT flow refresh its other half only
/// once an epoch).
#[test]
fn entries_of_one_epoch_expire_together() {
    let to = Timeouts::default();
    let mut t = table(64);
    let (a, b) = (v4(5), v4(6));
    let (ha, hb) = (a.flow_hash(0), b.flow_hash(0));
    let _ = t.insert(a, ha, [0; 2], FlowState::Udp, 100, Insert::New);
    let _ = t.insert(b, hb, [0; 2], FlowState::Udp, 900, Insert::New);
    let first = |t: &mut Conntrack<V4Key, Value>, now| {
        t.lookup_epoch(&a, ha, NO_SLOT, now, |_| {}).map(|(_, f)| f)
    };
    assert_eq!(first(&mut t, 200), Some(false));
    assert_eq!(first(&mut t, EPOCH_MS), Some(true));
    assert_eq!(first(&mut t, EPOCH_MS + 5), Some(false));
    assert!(same_epoch(EPOCH_MS, 2 * EPOCH_MS - 1) && !same_epoch(EPOCH_MS - 1, EPOCH_MS));
    // a was last seen at EPOCH_MS + 5; b, seen at 900, is refreshed in the same epoch.
    assert!(t
        .lookup(&b, hb, NO_SLOT, 2 * EPOCH_MS - 1, |_| {})
        .is_some());
    let end = 2 * EPOCH_MS - 1;
    assert_eq!(t.expire(end + to.udp_ms - 1, usize::MAX, |_| {}), 0);
    let left =
        |t: &Conntrack<V4Key, Value>, k: &V4Key, h| t.remaining_ms(t.get(k, h).unwrap(), end);
    assert_eq!(left(&t, &a, ha), to.udp_ms);
    assert_eq!(left(&t, &b, hb), to.udp_ms);
    assert_eq!(t.expire(end + to.udp_ms, usize::MAX, |_| {}), 2);
    consistent(&t);
}

#[test]
fn expire_is_amortised() {
    let mut t = table(1024); // 128 buckets
    for i in 0..600 {
        let k = v4(i);
        let _ = t.insert(
            k,
            k.flow_hash(3),
            [0; 2],
            FlowState::Udp,
            0,
            Insert::Replace,
        );
    }
    let mut freed = 0;
    let mut seen = Vec::new();
    for _ in 0..16 {
        freed += t.expire(60_000, 8, |e| seen.push(e.key().src));
    }
    assert_eq!(freed, 600);
    assert_eq!(seen.len(), 600);
    assert!(t.is_empty());
    assert_eq!(t.expire(60_000, 1_000_000, |_| {}), 0);
    consistent(&t);
}

/// A handshake never evicts an established flow: it evicts the oldest embryonic flow of
/// either bucket, then a closing one, and is refused when both buckets hold only established
/// flows; an established newcomer evicts embryonic flows first. Counted by kind.
#[test]
fn handshakes_never_evict_established_flows() {
    let mut t = table(16); // 2 buckets: every key's buckets are {0, 1}
    for i in 0..16 {
        let _ = t.insert(
            v4(i),
            crowded(i),
            [i, 0],
            FlowState::TcpEstablished,
            i,
            Insert::New,
        );
    }
    let syn = |t: &mut Conntrack<V4Key, Value>, i: u32, now: u32| {
        let predicted = predicted_victim(t, i, FlowState::TcpSynSent, now);
        let r = t.insert(
            v4(i),
            crowded(i),
            [i, 0],
            FlowState::TcpSynSent,
            now,
            Insert::Replace,
        );
        check_victim(predicted, &r);
        r
    };
    assert_eq!(syn(&mut t, 100, 50), Inserted::Refused);
    assert!(!t.contains(&v4(100), crowded(100)));
    assert_eq!((t.stats().refusals, t.stats().evictions), (1, 0));
    // Two flows of the second bucket become embryonic (SYN seen again) and closing.
    t.lookup(&v4(5), crowded(5), NO_SLOT, 60, |_| {})
        .unwrap()
        .set_state(FlowState::TcpClosing);
    let _ = syn(&mut t, 7, 70);
    // The embryonic flow goes first, although the closing one is older...
    assert_eq!(
        syn(&mut t, 101, 80),
        Inserted::Evicted {
            key: v4(7),
            value: [7, 0]
        }
    );
    // ...and so does each new embryonic flow, while one is there to evict.
    assert_eq!(
        syn(&mut t, 102, 90),
        Inserted::Evicted {
            key: v4(101),
            value: [101, 0]
        }
    );
    assert_eq!(
        syn(&mut t, 103, 100),
        Inserted::Evicted {
            key: v4(102),
            value: [102, 0]
        }
    );
    // An established newcomer takes the embryonic flow's slot, then the closing one's, and
    // only then evicts the oldest established flow.
    let est = |t: &mut Conntrack<V4Key, Value>, i: u32, now: u32| {
        let predicted = predicted_victim(t, i, FlowState::TcpEstablished, now);
        let r = t.insert(
            v4(i),
            crowded(i),
            [i, 0],
            FlowState::TcpEstablished,
            now,
            Insert::New,
        );
        check_victim(predicted, &r);
        r
    };
    assert_eq!(
        est(&mut t, 104, 110),
        Inserted::Evicted {
            key: v4(103),
            value: [103, 0]
        }
    );
    assert_eq!(
        est(&mut t, 105, 120),
        Inserted::Evicted {
            key: v4(5),
            value: [5, 0]
        }
    );
    assert_eq!(
        est(&mut t, 106, 130),
        Inserted::Evicted {
            key: v4(0),
            value: [0, 0]
        }
    );
    assert_eq!(syn(&mut t, 107, 140), Inserted::Refused);
    let s = t.stats();
    assert_eq!(
        (
            s.evictions,
            s.evictions_embryonic,
            s.evictions_established,
            s.refusals
        ),
        (6, 4, 1, 2)
    );
    consistent(&t);
}

/// The embryonic flag of a slot follows its entry's state as of the last insert or lookup;
/// an insert into full buckets takes a flagged embryonic entry without a scan, skips (and
/// clears) a flag gone stale, and never evicts an established flow through one.
#[test]
fn embryonic_flags_follow_the_state() {
    let mut t = table(16); // 2 buckets: every key's buckets are {0, 1}
    let flagged = |t: &Conntrack<V4Key, Value>| {
        embryonic_lanes(&t.tags[0]) | embryonic_lanes(&t.tags[1]) << SLOTS_PER_BUCKET
    };
    let slot = |t: &Conntrack<V4Key, Value>, i: u32| t.find(&v4(i), crowded(i)).unwrap();
    for i in 0..16 {
        let _ = t.insert(
            v4(i),
            crowded(i),
            [i, 0],
            FlowState::TcpSynSent,
            i,
            Insert::New,
        );
    }
    assert_eq!(flagged(&t), 0xffff);
    // Key 3's handshake completes: its flag goes at its first lookup of a later epoch (not
    // before). Key 4's completes with no lookup after it: its flag is stale.
    for i in [3, 4] {
        t.lookup(&v4(i), crowded(i), NO_SLOT, 20, |_| {})
            .unwrap()
            .set_state(FlowState::TcpEstablished);
    }
    assert_eq!(flagged(&t), 0xffff);
    assert!(t.lookup(&v4(3), crowded(3), NO_SLOT, 21, |_| {}).is_some());
    assert_eq!(flagged(&t), 0xffff);
    assert!(t
        .lookup(&v4(3), crowded(3), NO_SLOT, EPOCH_MS + 21, |_| {})
        .is_some());
    assert_eq!(t.stored(slot(&t, 3)) & EMBRYONIC, 0);
    assert_ne!(t.stored(slot(&t, 4)) & EMBRYONIC, 0);
    // New handshakes evict embryonic flows only, as predicted, whatever their order.
    for i in 100..140 {
        let predicted = predicted_victim(&t, i, FlowState::TcpSynSent, 30);
        let r = t.insert(
            v4(i),
            crowded(i),
            [i, 0],
            FlowState::TcpSynSent,
            30,
            Insert::New,
        );
        check_victim(predicted, &r);
        match r {
            Inserted::Evicted { key, .. } => assert!(key != v4(3) && key != v4(4), "{key:?}"),
            other => panic!("{other:?}"),
        }
    }
    assert!(t.contains(&v4(3), crowded(3)) && t.contains(&v4(4), crowded(4)));
    // Every flow's handshake completes, none looked up since: all flags stale. A handshake
    // is refused, and the stale flags are cleared on the way.
    let keys: Vec<u32> = t
        .occupied()
        .map(|e| u32::from_be_bytes(e.key().src) & 0xff_ffff)
        .collect();
    for i in keys {
        if let Some(e) = t.lookup(&v4(i), crowded(i), NO_SLOT, 40, |_| {}) {
            e.set_state(FlowState::TcpEstablished);
        }
    }
    assert_ne!(flagged(&t), 0);
    let predicted = predicted_victim(&t, 200, FlowState::TcpSynSent, 50);
    let r = t.insert(
        v4(200),
        crowded(200),
        [200, 0],
        FlowState::TcpSynSent,
        50,
        Insert::New,
    );
    check_victim(predicted, &r);
    assert_eq!(r, Inserted::Refused);
    assert_eq!(flagged(&t), 0);
    assert_eq!(t.stats().evictions_established, 0);
    consistent(&t);
}

/// Flows with different hashes spread their evictions over all the flagged slots of their
/// buckets (an order rotated by the tag), rather than evicting the same slot each time.
#[test]
fn flagged_evictions_spread_over_the_buckets() {
    let mut t = table(16);
    let mut lanes_hit = 0u32;
    for i in 0..400u32 {
        let h = mix64(u64::from(i));
        let predicted = t.victim(h, FlowState::TcpSynSent, 0).map(|e| *e.key());
        let before: Vec<Option<V4Key>> = (0..16).map(|s| t.slots[s].0.map(|e| *e.key())).collect();
        let r = t.insert(v4(i), h, [i, 0], FlowState::TcpSynSent, 0, Insert::New);
        if let Inserted::Evicted { key, .. } = r {
            assert_eq!(predicted, Some(key));
            let lane = before.iter().position(|k| *k == Some(key)).unwrap();
            lanes_hit |= 1 << lane;
        }
    }
    assert_eq!(lanes_hit, 0xffff);
    consistent(&t);
}

/// What [`Conntrack::victim`] predicts for inserting key `i` (of [`crowded`]) in `state` at
/// `now`: `Some(None)` for no eviction; `None` when the key is present (an insert replaces it,
/// which the prediction, made for new flows, does not cover).
fn predicted_victim(
    t: &Conntrack<V4Key, Value>,
    i: u32,
    state: FlowState,
    now: u32,
) -> Option<Option<V4Key>> {
    (!t.contains(&v4(i), crowded(i))).then(|| t.victim(crowded(i), state, now).map(|e| *e.key()))
}

/// The prediction of [`predicted_victim`] names the entry the insert evicted, if any.
fn check_victim(predicted: Option<Option<V4Key>>, r: &Inserted<V4Key, Value>) {
    if let Some(p) = predicted {
        let evicted = match r {
            Inserted::Evicted { key, .. } => Some(*key),
            _ => None,
        };
        assert_eq!(p, evicted, "predicted victim, for {r:?}");
    }
}

/// All keys in the two buckets of a 2-bucket table, with one shared tag.
fn crowded(i: u32) -> u64 {
    (0xabcd << 48) | u64::from(i)
}

#[test]
fn full_buckets_evict_the_oldest() {
    let mut t = table(16); // 2 buckets: every key's buckets are {0, 1}
    for i in 0..16 {
        assert_eq!(
            t.insert(
                v4(i),
                crowded(i),
                [i, 0],
                FlowState::TcpEstablished,
                i * 10,
                Insert::Replace
            ),
            Inserted::New
        );
    }
    // Both buckets are scanned: key 0 (seen at 0) is the oldest; refreshing it and key 1
    // makes key 3 (30) the oldest... after key 2 (20), which is refreshed too.
    for i in [0, 1, 2] {
        assert!(t.lookup(&v4(i), crowded(i), NO_SLOT, 500, |_| {}).is_some());
    }
    let predicted = predicted_victim(&t, 101, FlowState::TcpEstablished, 600);
    assert_eq!(predicted, Some(Some(v4(3))));
    let r = t.insert(
        v4(101),
        crowded(101),
        [101, 0],
        FlowState::TcpEstablished,
        600,
        Insert::Replace,
    );
    assert!(r.evicted());
    assert_eq!(
        r,
        Inserted::Evicted {
            key: v4(3),
            value: [3, 0]
        }
    );
    assert!(!t.contains(&v4(3), crowded(3)));
    assert!(t.contains(&v4(101), crowded(101)));
    assert_eq!(t.stats().evictions, 1);
    assert_eq!(t.len(), 16);
    // With an expired SYN entry among them, it is reused instead of evicting.
    let _ = t.insert(
        v4(2),
        crowded(2),
        [2, 0],
        FlowState::TcpSynSent,
        600,
        Insert::Replace,
    );
    let late = (600 | (EPOCH_MS - 1)) + 5_000;
    // An expired entry is reused: no victim.
    assert_eq!(predicted_victim(&t, 100, FlowState::Udp, late), Some(None));
    let r = t.insert(
        v4(100),
        crowded(100),
        [100, 0],
        FlowState::Udp,
        late,
        Insert::Replace,
    );
    assert_eq!(
        r,
        Inserted::Expired {
            key: v4(2),
            value: [2, 0]
        }
    );
    assert_eq!(t.stats().evictions, 1);
    assert_eq!(t.stats().expiries, 1);
    consistent(&t);
}

#[test]
fn clock_wrap_is_harmless() {
    let mut t = table(64);
    let start = u32::MAX - 1_000;
    let k = v4(1);
    let h = k.flow_hash(0);
    let _ = t.insert(k, h, [1, 1], FlowState::Udp, start, Insert::Replace);
    // 29 s later, across the wrap: still live.
    let later = start.wrapping_add(29_000);
    assert!(later < start);
    assert!(t.lookup(&k, h, NO_SLOT, later, |_| {}).is_some());
    let end = later | (EPOCH_MS - 1);
    assert_eq!(t.expire(end.wrapping_add(29_999), usize::MAX, |_| {}), 0);
    assert_eq!(t.expire(end.wrapping_add(30_000), usize::MAX, |_| {}), 1);
    // Eviction order across the wrap: the entry seen before the wrap is the oldest.
    let mut t = table(16);
    for i in 0..16 {
        let _ = t.insert(
            v4(i),
            crowded(i),
            [0; 2],
            FlowState::TcpEstablished,
            start.wrapping_add(i * 100),
            Insert::Replace,
        );
    }
    let r = t.insert(
        v4(98),
        crowded(98),
        [0; 2],
        FlowState::TcpEstablished,
        start.wrapping_add(2_000),
        Insert::Replace,
    );
    assert_eq!(
        r,
        Inserted::Evicted {
            key: v4(0),
            value: [0; 2]
        }
    );
}

#[test]
fn loaded_table_keeps_almost_everything() {
    // Two choices and one cuckoo step: at 90% load nothing is evicted.
    let mut t = table(1 << 16);
    let n = (1 << 16) * 9 / 10;
    let mut evicted = 0;
    for i in 0..n {
        let k = v4(i);
        evicted += u32::from(
            t.insert(
                k,
                k.flow_hash(11),
                [0; 2],
                FlowState::TcpEstablished,
                0,
                Insert::Replace,
            )
            .evicted(),
        );
    }
    assert_eq!(evicted, 0, "evictions at 90% load");
    assert!(t.stats().relocations > 0);
    consistent(&t);
}

/// The occupancy figures of docs/dataplane-tables.md:
/// `cargo test -p sluice-dataplane --release --lib conntrack::tests::occupancy_report -- --ignored --nocapture`
#[test]
#[ignore = "a report, slow in debug builds"]
fn occupancy_report() {
    let capacity = 1 << 20;
    for pct in [50, 80, 90, 95, 100] {
        let mut t = table(capacity);
        let n = (capacity * pct / 100) as u32;
        for i in 0..n {
            let k = V4Key {
                src: i.to_be_bytes(),
                ..v4(0)
            };
            let _ = t.insert(
                k,
                k.flow_hash(5),
                [0; 2],
                FlowState::Udp,
                0,
                Insert::Replace,
            );
        }
        let s = t.stats();
        println!(
            "{pct:>3}% of {capacity} slots: {} evictions ({:.4}% of inserts), {} relocations",
            s.evictions,
            s.evictions as f64 * 100.0 / f64::from(n),
            s.relocations
        );
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Insert(u32, FlowState),
    Lookup(u32),
    Remove(u32),
    Advance(u32),
    Expire(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let state = prop::sample::select(FlowState::ALL.to_vec());
    prop_oneof![
        4 => (0..48u32, state).prop_map(|(k, s)| Op::Insert(k, s)),
        3 => (0..48u32).prop_map(Op::Lookup),
        1 => (0..48u32).prop_map(Op::Remove),
        2 => (0..12_000u32).prop_map(Op::Advance),
        1 => (0..6usize).prop_map(Op::Expire),
    ]
}

/// A hash that crowds 48 keys into 4 buckets and gives many of them the same tag.
fn test_hash(k: u32) -> u64 {
    let h = mix64(u64::from(k));
    if k.is_multiple_of(3) {
        (h & !(0xffff << 48)) | (0x1234 << 48)
    } else {
        h
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Model test against a `HashMap`: no live entry is ever lost unless both of the new
    /// key's buckets were full (and then only the oldest of its first bucket), expired entries are reported as
    /// such, and the counters add up.
    #[test]
    fn never_loses_a_live_entry(ops in prop::collection::vec(op(), 1..300)) {
        let timeouts = Timeouts { tcp_syn_ms: 2_000, tcp_established_ms: 40_000, tcp_closing_ms: 5_000, udp_ms: 10_000, other_ms: 0 };
        let mut t: Conntrack<V4Key, Value> = Conntrack::new(&ConntrackConfig { capacity: 32, timeouts });
        // key -> (value, state, last seen)
        let mut model: HashMap<u32, (Value, FlowState, u32)> = HashMap::new();
        let mut now = u32::MAX - 50_000; // wraps during most runs
        let live = |m: &(Value, FlowState, u32), now: u32| (now.wrapping_sub(m.2 | (EPOCH_MS - 1)) as i32) < timeouts.get(m.1) as i32;
        let id = |k: &V4Key| u32::from_be_bytes(k.src) & 0xff_ffff;
        for (n, op) in ops.into_iter().enumerate() {
            match op {
                Op::Insert(k, s) => {
                    let h = test_hash(k);
                    let (b1, b2) = t.buckets(h);
                    let full = free_lanes(&t.tags[b1]) == 0 && free_lanes(&t.tags[b2]) == 0;
                    // An insert into two full buckets picks its victim among both.
                    let in_buckets: Vec<u32> = [b1, b2]
                        .iter()
                        .flat_map(|&b| &t.slots[b * SLOTS_PER_BUCKET..(b + 1) * SLOTS_PER_BUCKET])
                        .filter_map(|s| s.0.as_ref()).map(|e| id(e.key())).collect();
                    let present = model.contains_key(&k);
                    let value = [k, n as u32];
                    let got = t.insert(v4(k), h, value, s, now, Insert::Replace);
                    let refused = matches!(got, Inserted::Refused);
                    match got {
                        Inserted::New => prop_assert!(!model.contains_key(&k)),
                        Inserted::Kept => prop_assert!(false, "Insert::Replace kept an entry"),
                        Inserted::Replaced { old } => prop_assert_eq!(Some(old), model.get(&k).map(|m| m.0)),
                        Inserted::Expired { key, value } => {
                            prop_assert!(full);
                            let m = model.remove(&id(&key)).unwrap();
                            prop_assert_eq!(m.0, value);
                            prop_assert!(!live(&m, now));
                        }
                        Inserted::Evicted { key, value } => {
                            prop_assert!(full, "evicted while a bucket had room");
                            let m = model.remove(&id(&key)).unwrap();
                            prop_assert_eq!(m.0, value);
                            prop_assert!(live(&m, now));
                            // A handshake never evicts an established flow.
                            prop_assert!(Rank::of(s) != Rank::Embryonic || Rank::of(m.1) != Rank::Established);
                            // An embryonic victim may be any embryonic entry (found from the
                            // tags' flags, no scan). Any other victim: nothing in the buckets was
                            // expired, and it was the lowest ranked, the least recently seen
                            // among equals.
                            if Rank::of(m.1) != Rank::Embryonic {
                                let rank = |x: &(Value, FlowState, u32)| (Rank::of(x.1), now.wrapping_sub(x.2) as i32);
                                for other in in_buckets.iter().filter(|&&o| o != id(&key)) {
                                    let o = &model[other];
                                    prop_assert!(live(o, now));
                                    prop_assert!(rank(o) <= rank(&m));
                                }
                            }
                        }
                        Inserted::Refused => {
                            prop_assert!(full && !present);
                            prop_assert_eq!(Rank::of(s), Rank::Embryonic);
                            for other in &in_buckets {
                                let o = &model[other];
                                prop_assert!(live(o, now));
                                prop_assert_eq!(Rank::of(o.1), Rank::Established);
                            }
                        }
                    }
                    if !refused {
                        model.insert(k, (value, s, now));
                    }
                }
                Op::Lookup(k) => {
                    let got = t.lookup(&v4(k), test_hash(k), NO_SLOT, now, |_| {}).map(|e| *e.value());
                    match model.get_mut(&k) {
                        Some(m) if live(m, now) => {
                            prop_assert_eq!(got, Some(m.0));
                            m.2 = now;
                        }
                        Some(_) => {
                            prop_assert_eq!(got, None);
                            model.remove(&k);
                        }
                        None => prop_assert_eq!(got, None),
                    }
                }
                Op::Remove(k) => prop_assert_eq!(t.remove(&v4(k), test_hash(k)), model.remove(&k).is_some()),
                Op::Advance(ms) => now = now.wrapping_add(ms),
                Op::Expire(buckets) => {
                    let mut freed = Vec::new();
                    let count = t.expire(now, buckets, |e| freed.push(id(e.key())));
                    prop_assert_eq!(count, freed.len());
                    for k in freed {
                        let m = model.remove(&k).unwrap();
                        prop_assert!(!live(&m, now));
                    }
                }
            }
            // Every entry of the model, live or not yet freed, is in the table, and nothing else.
            prop_assert_eq!(t.len(), model.len());
            for k in model.keys() {
                prop_assert!(t.contains(&v4(*k), test_hash(*k)), "lost key {}", k);
            }
            consistent(&t);
        }
    }
}

/// The fuzzer's occupancy invariant fires when the counter, the tags or the counters disagree
/// with the entries held.
#[test]
fn check_occupancy_fires() {
    let mut t: Conntrack<V4Key, u32> = Conntrack::new(&ConntrackConfig {
        capacity: 64,
        ..Default::default()
    });
    let k = Key::new([1, 2, 3, 4], [5, 6, 7, 8], 1, 2, 6);
    let _ = t.insert(k, k.flow_hash(0), 7, FlowState::Udp, 0, Insert::New);
    t.check_occupancy().unwrap();
    t.len += 1;
    assert!(t.check_occupancy().unwrap_err().contains("len 2 but 1"));
    t.len -= 1;
    t.stats.inserts += 1;
    assert!(t
        .check_occupancy()
        .unwrap_err()
        .contains("inserts - evictions"));
    t.stats.inserts -= 1;
    t.check_occupancy().unwrap();
    // A tag set over a free slot.
    let free = (0..t.tags.len())
        .find(|&b| t.tags[b] == 0)
        .expect("a free bucket");
    t.tags[free] = 1;
    assert!(t
        .check_occupancy()
        .unwrap_err()
        .contains(&format!("bucket {free}")));
    t.tags[free] = 0;
    t.clear();
    t.check_occupancy().unwrap();
    assert!(t.is_empty());
}

/// The invariant checks' scan through the tags finds the entries a scan of every slot finds.
#[test]
fn occupied_finds_every_entry() {
    let mut t: Conntrack<V4Key, u32> = Conntrack::new(&ConntrackConfig {
        capacity: 64,
        ..Default::default()
    });
    for i in 0..80u16 {
        let k = Key::new([1, 2, 3, 4], [5, 6, 7, 8], i, 2, 6);
        let _ = t.insert(
            k,
            k.flow_hash(9),
            u32::from(i),
            FlowState::Udp,
            0,
            Insert::New,
        );
        if i % 7 == 0 {
            t.remove(&k, k.flow_hash(9));
        }
        t.check_occupancy().unwrap();
        let all: Vec<u32> = t.entries_in(0, usize::MAX).map(|e| *e.value()).collect();
        let found: Vec<u32> = t.occupied().map(|e| *e.value()).collect();
        assert_eq!(found, all);
    }
    assert!(t.len() > 40);
}
