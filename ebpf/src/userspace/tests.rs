//! The userspace data plane's pure parts: checksum completion, the saved table, and rules the
//! shared fixture table (`tests/main_program.rs`) does not reach: ACK wraps, old ACKs, stale
//! SYNs.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use etherparse::PacketBuilder;

use super::packet::{self, finish_tcp_checksum};
use super::{decode_table, encode_entry, MAGIC};
use crate::types::{Encap, FlowKey, FlowSeed, FlowTarget, FlowValue, MainCounter};

const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 100, 7), 40_000);
const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 80);
const LOCAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const PARTICIPANT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);

/// An Ethernet frame of a client segment with these fields.
fn segment(seq: u32, ack: u32, window: u16, syn: bool, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(CLIENT.ip().octets(), VIP.ip().octets(), 64)
        .tcp(CLIENT.port(), VIP.port(), seq, window)
        .ack(ack);
    let b = if syn { b.syn() } else { b };
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

fn run(flows: &mut HashMap<FlowKey, FlowValue>, frame: &[u8]) -> packet::Outcome {
    let (mut out, mut scratch) = (Vec::new(), Vec::new());
    packet::process(flows, frame, false, LOCAL, Encap::Ipip, 7, &mut out, &mut scratch)
}

#[test]
fn an_unfinished_tcp_checksum_is_completed_to_the_right_value() {
    let frame = segment(1000, 5000, 512, false, b"GET / HTTP/1.1\r\n\r\n!");
    let good = frame[14..].to_vec();
    let mut partial = good.clone();
    // What a sender leaves for offload: the pseudo-header sum, not complemented.
    let tcp_len = (good.len() - 20) as u32;
    let mut sum: u32 = 0;
    for w in [0xc612u32, 0x6407, 0xcb00, 0x710a, 6, tcp_len] {
        sum += w;
    }
    let sum = ((sum & 0xffff) + (sum >> 16)) as u16;
    partial[36..38].copy_from_slice(&sum.to_be_bytes());
    assert_ne!(partial, good);
    finish_tcp_checksum(&mut partial);
    assert_eq!(partial, good);
}

#[test]
fn ack_wraps_are_counted_and_old_acks_leave_window_and_ack_alone() {
    let key = FlowKey::new(CLIENT, VIP);
    let mut flows = HashMap::from([(key, FlowValue::frozen_seeded(FlowSeed { snd_nxt: 0xffff_ff00, rcv_nxt: 10 }).with_forward(PARTICIPANT))]);
    let o = run(&mut flows, &segment(10, 0x0000_0100, 300, false, b""));
    assert_eq!((o.send, o.counters.clone()), (Some(PARTICIPANT), vec![]));
    let v = flows[&key];
    assert_eq!((v.last_ack(), v.ack_wraps(), v.last_window()), (0x100, 1, 300));
    // An older ACK (before the wrap) is forwarded but changes nothing observed.
    run(&mut flows, &segment(10, 0xffff_ff80, 999, false, b""));
    let v = flows[&key];
    assert_eq!((v.last_ack(), v.ack_wraps(), v.last_window(), v.packets()), (0x100, 1, 300, 2));
    assert_eq!(v.acked_position(0xffff_ff00), Some(0x1_0000_0100));
}

#[test]
fn a_syn_on_an_ended_flow_removes_the_entry_and_passes() {
    let key = FlowKey::new(CLIENT, VIP);
    let mut flows = HashMap::from([(key, FlowValue::forward(PARTICIPANT))]);
    // A SYN on a live flow is forwarded (the participant's stack answers it).
    let o = run(&mut flows, &segment(1, 0, 100, true, b""));
    assert_eq!(o.send, Some(PARTICIPANT));
    let mut fin = segment(2, 3, 100, false, b"");
    fin[14 + 20 + 13] |= 0x01; // FIN (checksum no longer matters: nothing validates it here)
    run(&mut flows, &fin);
    assert!(flows[&key].fin_seen());
    let syn = {
        let mut s = segment(50, 0, 100, true, b"");
        s[14 + 20 + 13] = 0x02; // SYN only
        s
    };
    let o = run(&mut flows, &syn);
    assert_eq!(o, packet::Outcome { counters: vec![MainCounter::PassStaleSyn], send: None, released: Some(key) });
    assert!(flows.is_empty());
}

#[test]
fn the_saved_table_reads_back_and_a_damaged_one_is_refused() {
    let a = FlowKey::new(CLIENT, VIP);
    let b = FlowKey::new(SocketAddrV4::new(Ipv4Addr::new(198, 18, 9, 9), 1), VIP);
    let mut forwarded = FlowValue::frozen_seeded(FlowSeed { snd_nxt: 77, rcv_nxt: 88 }).with_forward(PARTICIPANT);
    forwarded.observe(0x10, 88, 99, 5, 0, None, 40, 1);
    let mut buf = MAGIC.to_vec();
    encode_entry(&mut buf, &a, &forwarded);
    encode_entry(&mut buf, &b, &FlowValue::frozen());
    let table = decode_table(&buf).unwrap();
    assert_eq!(table.len(), 2);
    let ra = table[&a];
    assert_eq!(ra.target(), Some(FlowTarget::Forward(PARTICIPANT)));
    assert_eq!((ra.has_ack(), ra.last_ack(), ra.client_next_seq()), (true, 99, Some(88)));
    let rb = table[&b];
    assert_eq!((rb.target(), rb.has_ack(), rb.client_next_seq()), (Some(FlowTarget::Frozen), false, None));
    assert!(decode_table(&buf[..buf.len() - 1]).is_none(), "truncated");
    assert!(decode_table(b"BATONXX1").is_none(), "bad magic");
    let mut bad_state = buf.clone();
    bad_state[8 + 12] = 9;
    assert!(decode_table(&bad_state).is_none(), "unknown state");
}
