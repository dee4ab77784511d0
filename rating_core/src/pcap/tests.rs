//! Captures built byte by byte: classic pcap, pcapng in both byte orders, IP fragments.

use proptest::prelude::*;

use super::*;

const NAS: [u8; 4] = [192, 0, 2, 1];
const SERVER: [u8; 4] = [192, 0, 2, 254];
const NAS6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const SERVER6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe,
];
const T0: i64 = 1_700_000_000_000_000;
/// IPv4 More Fragments; fragment offsets are added in 8-octet units.
const MF: u16 = 0x2000;

fn udp(dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(40000_u16.to_be_bytes());
    out.extend(dport.to_be_bytes());
    out.extend((8 + payload.len() as u16).to_be_bytes());
    out.extend([0, 0]);
    out.extend(payload);
    out
}

/// An IPv4 packet: `frag` is the flags and offset field (0x2000 = More Fragments).
fn ipv4(source: [u8; 4], id: u16, frag: u16, protocol: u8, body: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x45, 0];
    ip.extend((20 + body.len() as u16).to_be_bytes());
    ip.extend(id.to_be_bytes());
    ip.extend(frag.to_be_bytes());
    ip.extend([64, protocol, 0, 0]);
    ip.extend(source);
    ip.extend(SERVER);
    ip.extend(body);
    ip
}

fn datagram(source: [u8; 4], payload: &[u8]) -> Vec<u8> {
    ipv4(source, 0, 0, UDP, &udp(1813, &request(payload)))
}

/// The IPv4 fragments of `body` cut at the given offsets (multiples of 8).
fn fragments(id: u16, body: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut bounds = vec![0];
    bounds.extend(cuts);
    bounds.push(body.len());
    bounds
        .windows(2)
        .map(|w| {
            let more = if w[1] < body.len() { MF } else { 0 };
            ipv4(NAS, id, more | (w[0] / 8) as u16, UDP, &body[w[0]..w[1]])
        })
        .collect()
}

fn ipv6(next: u8, body: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend((body.len() as u16).to_be_bytes());
    ip.extend([next, 64]);
    ip.extend(NAS6);
    ip.extend(SERVER6);
    ip.extend(body);
    ip
}

/// An extension header of the standard format: next header, length, then padding.
fn extension(next: u8, units: u8) -> Vec<u8> {
    let mut out = vec![next, units];
    out.resize(8 * (usize::from(units) + 1), 0);
    out
}

fn fragment_header(next: u8, offset: usize, more: bool, id: u32) -> Vec<u8> {
    let mut out = vec![next, 0];
    out.extend((offset as u16 | u16::from(more)).to_be_bytes());
    out.extend(id.to_be_bytes());
    out
}

/// The IPv6 fragments of a fragmentable part starting with header `next`, cut at offsets.
fn fragments6(id: u32, next: u8, part: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut bounds = vec![0];
    bounds.extend(cuts);
    bounds.push(part.len());
    bounds
        .windows(2)
        .map(|w| {
            let mut body = fragment_header(next, w[0], w[1] < part.len(), id);
            body.extend(&part[w[0]..w[1]]);
            ipv6(IPV6_FRAGMENT, &body)
        })
        .collect()
}

/// An Accounting-Request's octets as the reader returns them: its code (4), then `body`.
fn request(body: &[u8]) -> Vec<u8> {
    let mut out = vec![4];
    out.extend(body);
    out
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// A little-endian, microsecond, raw-IP classic capture of (seconds after T0, frame).
fn classic(frames: &[(i64, Vec<u8>)]) -> Vec<u8> {
    classic_of(101, frames)
}

/// A little-endian, microsecond classic capture of the link type.
fn classic_of(link_type: u32, frames: &[(i64, Vec<u8>)]) -> Vec<u8> {
    snapped(link_type, usize::MAX, frames)
}

/// A classic capture taken with this snaplen: each record holds at most `snaplen` octets of
/// its frame, and the frame's whole length.
fn snapped(link_type: u32, snaplen: usize, frames: &[(i64, Vec<u8>)]) -> Vec<u8> {
    let records: Vec<(i64, Vec<u8>, usize)> = frames
        .iter()
        .map(|(at, frame)| (*at, frame[..frame.len().min(snaplen)].to_vec(), frame.len()))
        .collect();
    records_of(link_type, &records)
}

/// A little-endian, microsecond classic capture of (seconds after T0, captured octets,
/// original length).
fn records_of(link_type: u32, records: &[(i64, Vec<u8>, usize)]) -> Vec<u8> {
    let mut out = Vec::new();
    for word in [0xa1b2_c3d4_u32, 0x0004_0002, 0, 0, 65535, link_type] {
        out.extend(word.to_le_bytes());
    }
    for (at, frame, original) in records {
        let us = T0 + at * 1_000_000;
        let len = frame.len() as u32;
        let words = [
            (us / 1_000_000) as u32,
            (us % 1_000_000) as u32,
            len,
            *original as u32,
        ];
        for word in words {
            out.extend(word.to_le_bytes());
        }
        out.extend(frame);
    }
    out
}

/// A little-endian, microsecond, raw-IP capture of one datagram per payload.
fn capture(payloads: &[&[u8]]) -> Vec<u8> {
    let frames: Vec<(i64, Vec<u8>)> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| (i as i64, datagram(NAS, p)))
        .collect();
    classic(&frames)
}

fn parsed(data: &[u8]) -> Capture {
    match read_capture(data) {
        Ok(capture) => capture,
        Err(error) => unreachable!("the capture was refused: {error}"),
    }
}

/// The requests' octets after their code (4, Accounting-Request), as [`request`] took them.
fn payloads(capture: &Capture) -> Vec<Vec<u8>> {
    capture
        .datagrams
        .iter()
        .map(|d| d.payload.strip_prefix(&[4]).unwrap_or(&d.payload).to_vec())
        .collect()
}

fn times(capture: &Capture) -> Vec<i64> {
    capture.datagrams.iter().map(|d| d.time_us).collect()
}

// --- classic pcap -----------------------------------------------------------------------

#[test]
fn complete_capture_reads_every_datagram() {
    let data = capture(&[b"one", b"two"]);
    let read = read_capture(&data);
    let payloads: Vec<&[u8]> = read
        .as_ref()
        .map(|c| c.datagrams.iter().map(|d| d.payload.as_slice()).collect())
        .unwrap_or_default();
    assert_eq!(payloads, [b"\x04one".as_slice(), b"\x04two".as_slice()]);
    assert_eq!(read.map(|c| c.truncated_at), Ok(None));
}

#[test]
fn truncated_record_keeps_the_complete_ones_before_it() {
    let data = capture(&[b"one", b"two"]);
    let second = 24 + 16 + datagram(NAS, b"one").len();
    // Cut inside the second record's body, inside its header, and right after the first.
    for end in [data.len() - 1, second + 7, second + 1] {
        let read = read_capture(&data[..end]);
        assert_eq!(
            read.as_ref().map(|c| (c.datagrams.len(), c.truncated_at)),
            Ok((1, Some(second)))
        );
    }
    assert_eq!(
        read_capture(&data[..second]).map(|c| (c.datagrams.len(), c.truncated_at)),
        Ok((1, None))
    );
}

#[test]
fn unknown_link_type_is_refused_when_the_capture_has_no_record() {
    let mut data = capture(&[]);
    data[20] = 7;
    assert_eq!(read_capture(&data), Err(PcapError::LinkType(7)));
}

#[test]
fn header_that_is_not_pcap_is_refused() {
    assert_eq!(
        read_capture(b"not a capture at all, no"),
        Err(PcapError::Magic)
    );
    assert_eq!(read_capture(&[0xd4, 0xc3, 0xb2]), Err(PcapError::Magic));
}

#[test]
fn classic_time_fraction_out_of_range_is_refused_naming_the_record() {
    let data = capture(&[b"one", b"two"]);
    let second = 24 + 16 + datagram(NAS, b"one").len();
    let with_fraction = |data: &[u8], fraction: u32| {
        let mut out = data.to_vec();
        out[second + 4..second + 8].copy_from_slice(&fraction.to_le_bytes());
        out
    };
    let refusal = |data: &[u8]| match read_capture(data) {
        Err(error @ PcapError::Record { .. }) => Some(error.to_string()),
        _ => None,
    };
    // Microseconds: up to 999,999; 1,000,000 or more is not a fraction of a second.
    let read = parsed(&with_fraction(&data, 999_999));
    assert_eq!(times(&read), [T0, T0 + 1_999_999]);
    for fraction in [1_000_000, u32::MAX] {
        assert_eq!(
            refusal(&with_fraction(&data, fraction)),
            Some(format!(
                "pcap: record at byte {second}: its fraction of a second is {fraction} \
                 microseconds, not under 1000000"
            )),
        );
    }
    // Nanoseconds (another magic number): up to 999,999,999.
    let mut nanos = data.clone();
    nanos[..4].copy_from_slice(&0xa1b2_3c4d_u32.to_le_bytes());
    let read = parsed(&with_fraction(&nanos, 999_999_999));
    assert_eq!(times(&read), [T0, T0 + 1_999_999]);
    let refused = refusal(&with_fraction(&nanos, 1_000_000_000));
    assert!(refused.is_some_and(|m| m.contains("1000000000 nanoseconds, not under")));
    // A last record cut short is not read: its time does not matter.
    let cut = with_fraction(&data, u32::MAX);
    assert_eq!(parsed(&cut[..cut.len() - 1]).truncated_at, Some(second));
}

#[test]
fn other_ports_and_protocols_are_skipped() {
    let frames = vec![
        (0, ipv4(NAS, 1, 0, UDP, &udp(53, b"dns"))),
        (1, ipv4(NAS, 2, 0, 6, &udp(1813, &request(b"tcp")))),
        (2, datagram(NAS, b"radius")),
        (3, ipv4(NAS, 3, 0, UDP, &udp(1646, &request(b"old port")))),
    ];
    let read = parsed(&classic(&frames));
    assert_eq!(payloads(&read), [b"radius".to_vec(), b"old port".to_vec()]);
    assert_eq!(read.incomplete, Incomplete::default());
}

#[test]
fn only_accounting_requests_are_read_from_the_accounting_ports() {
    // An Accounting-Response to a NAS whose own port is 1813 (or 1646), a Status-Server,
    // a datagram without a code, and the same for IPv6: not requests.
    let response = [5, 1, 0, 20]
        .iter()
        .chain(&[0; 16])
        .copied()
        .collect::<Vec<u8>>();
    let frames = vec![
        (0, datagram(NAS, b"request")),
        (1, ipv4(SERVER, 1, 0, UDP, &udp(1813, &response))),
        (2, ipv4(SERVER, 2, 0, UDP, &udp(1646, &response))),
        (3, ipv4(NAS, 3, 0, UDP, &udp(1813, &[12; 20]))),
        (4, ipv4(NAS, 4, 0, UDP, &udp(1813, &[]))),
        (5, ipv6(UDP, &udp(1813, &response))),
        (6, ipv6(UDP, &udp(1813, &request(b"request6")))),
    ];
    let read = parsed(&classic(&frames));
    assert_eq!(payloads(&read), [b"request".to_vec(), b"request6".to_vec()]);
    assert_eq!(read.datagrams[0].source, "192.0.2.1");
    // Fragmented, the same: not returned when whole, not counted when a fragment is missing.
    let mut big = vec![5];
    big.extend(payload(3000));
    let body = udp(1813, &big);
    let v4 = fragments(8, &body, &[1480]);
    let v6 = fragments6(9, UDP, &body, &[1448]);
    let frames = timed(&[v4[0].clone(), v4[1].clone(), v6[0].clone()], &[0, 1, 2]);
    let read = parsed(&classic(&frames));
    assert_eq!(read.datagrams, []);
    assert_eq!(read.incomplete, Incomplete::default());
    // Nor does one in a Simple Packet Block, which has no time, make the file refused.
    let mut ng = Ng::new(true);
    ng.interface(101, 0, &[]);
    ng.simple(&ipv4(SERVER, 1, 0, UDP, &udp(1813, &response)));
    ng.enhanced(0, ticks(T0), &datagram(NAS, b"timed"));
    assert_eq!(payloads(&parsed(&ng.out)), [b"timed".to_vec()]);
}

// --- link layers ------------------------------------------------------------------------

/// An Ethernet frame: the VLAN tags (TPID, VLAN id), then the ethertype and the payload.
fn tagged(tags: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for (tpid, vid) in tags {
        frame.extend(tpid.to_be_bytes());
        frame.extend(vid.to_be_bytes());
    }
    frame.extend(ethertype.to_be_bytes());
    frame.extend(payload);
    frame
}

/// An MPLS label stack of these labels (the last one the bottom of the stack), then `ip`.
fn labelled(labels: &[u32], ip: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, label) in labels.iter().enumerate() {
        let bottom = u32::from(i + 1 == labels.len());
        out.extend(((label << 12) | (bottom << 8) | 64).to_be_bytes());
    }
    out.extend(ip);
    out
}

/// A Linux cooked (SLL) frame of the protocol; `rest` follows the 16-octet header.
fn cooked(protocol: u16, rest: &[u8]) -> Vec<u8> {
    let mut frame = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0];
    frame.extend(protocol.to_be_bytes());
    frame.extend(rest);
    frame
}

/// A Linux cooked v2 (SLL2) frame of the protocol; `rest` follows the 20-octet header.
fn cooked2(protocol: u16, rest: &[u8]) -> Vec<u8> {
    let mut frame = protocol.to_be_bytes().to_vec();
    frame.extend([0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0]);
    frame.extend(rest);
    frame
}

/// A VLAN tag's remaining 4 octets (VLAN id, inner ethertype) and what follows.
fn tag(vid: u16, ethertype: u16, rest: &[u8]) -> Vec<u8> {
    let mut out = vid.to_be_bytes().to_vec();
    out.extend(ethertype.to_be_bytes());
    out.extend(rest);
    out
}

#[test]
fn ethernet_requests_are_read_behind_any_vlan_tag_and_mpls_labels() {
    let v4 = |text: &[u8]| datagram(NAS, text);
    let v6 = |text: &[u8]| ipv6(UDP, &udp(1813, &request(text)));
    let frames = vec![
        (0, tagged(&[(0x8100, 10)], 0x0800, &v4(b"802.1Q"))),
        (
            1,
            tagged(&[(0x88a8, 10), (0x8100, 20)], 0x0800, &v4(b"802.1ad")),
        ),
        (
            2,
            tagged(&[(0x9100, 10), (0x8100, 20)], 0x0800, &v4(b"9100")),
        ),
        (3, tagged(&[(0x9100, 10)], 0x86dd, &v6(b"9100 alone"))),
        (4, tagged(&[], 0x8847, &labelled(&[100, 200], &v4(b"mpls")))),
        (
            5,
            tagged(&[(0x8100, 7)], 0x8848, &labelled(&[16], &v6(b"mpls6"))),
        ),
        // An Ethernet pseudowire's control word (first nibble 0) is not IP.
        (6, tagged(&[], 0x8847, &labelled(&[300], &[0; 4]))),
        // Another ethertype is not IP, even when its bytes look like it; nor is an IPv6
        // packet under the IPv4 ethertype.
        (7, tagged(&[], 0x0806, &v4(b"arp"))),
        (8, tagged(&[], 0x0800, &v6(b"v6 as v4"))),
    ];
    let read = parsed(&classic_of(1, &frames));
    assert_eq!(
        payloads(&read),
        [
            b"802.1Q".to_vec(),
            b"802.1ad".to_vec(),
            b"9100".to_vec(),
            b"9100 alone".to_vec(),
            b"mpls".to_vec(),
            b"mpls6".to_vec()
        ]
    );
    assert_eq!(read.datagrams[3].source, "2001:db8::1");
    // A label stack that never reaches its bottom, or a tag cut short, holds nothing.
    let mut endless = labelled(&[1, 2], &[]);
    endless[6] = 0;
    let frames = vec![
        (0, tagged(&[], 0x8847, &endless)),
        (1, tagged(&[], 0x9100, &[0])),
    ];
    assert_eq!(parsed(&classic_of(1, &frames)).datagrams, []);
}

#[test]
fn linux_cooked_frames_are_read_by_their_protocol() {
    let v4 = datagram(NAS, b"v4");
    let v6 = ipv6(UDP, &udp(1813, &request(b"v6")));
    for link_type in [113, 276] {
        let frame = |protocol, rest: &[u8]| {
            if link_type == 113 {
                cooked(protocol, rest)
            } else {
                cooked2(protocol, rest)
            }
        };
        let frames = vec![
            (0, frame(0x0800, &v4)),
            (1, frame(0x86dd, &v6)),
            (2, frame(0x8100, &tag(100, 0x0800, &v4))),
            (3, frame(0x88a8, &tag(100, 0x8100, &tag(200, 0x86dd, &v6)))),
            (4, frame(0x9100, &tag(100, 0x0800, &v4))),
            (5, frame(0x8847, &labelled(&[100], &v4))),
            // Not IP by its protocol, whatever its bytes: ARP, 802.2 LLC.
            (6, frame(0x0806, &v4)),
            (7, frame(0x0004, &v6)),
        ];
        let read = parsed(&classic_of(link_type, &frames));
        let expected: Vec<Vec<u8>> = ["v4", "v6", "v4", "v6", "v4", "v4"]
            .iter()
            .map(|text| text.as_bytes().to_vec())
            .collect();
        assert_eq!(payloads(&read), expected, "{link_type}");
    }
}

// --- IPv4 fragments ---------------------------------------------------------------------

fn timed(frags: &[Vec<u8>], order: &[usize]) -> Vec<(i64, Vec<u8>)> {
    order
        .iter()
        .enumerate()
        .map(|(t, &i)| (t as i64, frags[i].clone()))
        .collect()
}

#[test]
fn ipv4_fragments_in_order_make_one_datagram_at_the_last_fragment_time() {
    let body = udp(1813, &request(&payload(4000)));
    let frags = fragments(0x1234, &body, &[1480, 2960]);
    let read = parsed(&classic(&timed(&frags, &[0, 1, 2])));
    assert_eq!(payloads(&read), [payload(4000)]);
    assert_eq!(times(&read), [T0 + 2_000_000]);
    assert_eq!(read.datagrams[0].source, "192.0.2.1");
    assert_eq!(read.incomplete, Incomplete::default());
}

#[test]
fn ipv4_fragments_out_of_order_are_placed_by_the_one_that_completes_them() {
    let body = udp(1813, &request(&payload(4000)));
    let frags = fragments(9, &body, &[1480, 2960]);
    for order in [[2, 1, 0], [1, 2, 0], [0, 2, 1], [2, 0, 1]] {
        let frames = vec![
            (0, frags[order[0]].clone()),
            (1, datagram(NAS, b"between")),
            (2, frags[order[1]].clone()),
            (3, frags[order[2]].clone()),
        ];
        let read = parsed(&classic(&frames));
        assert_eq!(
            payloads(&read),
            [b"between".to_vec(), payload(4000)],
            "{order:?}"
        );
        assert_eq!(times(&read), [T0 + 1_000_000, T0 + 3_000_000]);
        assert_eq!(read.incomplete, Incomplete::default());
    }
}

#[test]
fn ipv4_fragments_seen_twice_make_one_datagram() {
    let body = udp(1813, &request(&payload(3000)));
    let frags = fragments(9, &body, &[1480]);
    // Each fragment twice (a capture on two interfaces), the repeats after completion too.
    for order in [[0, 0, 1, 1], [0, 1, 0, 1], [1, 0, 1, 0]] {
        let read = parsed(&classic(&timed(&frags, &order)));
        assert_eq!(payloads(&read), [payload(3000)], "{order:?}");
        assert_eq!(read.incomplete, Incomplete::default());
    }
}

#[test]
fn ipv4_overlapping_fragments_agree_or_conflict() {
    let body = udp(1813, &request(&payload(3000)));
    // A middle fragment [800, 2000) overlapping both halves with the same octets.
    let mut frags = fragments(5, &body, &[1480]);
    frags.push(ipv4(NAS, 5, MF + 100, UDP, &body[800..2000]));
    let read = parsed(&classic(&timed(&frags, &[0, 2, 1])));
    assert_eq!(payloads(&read), [payload(3000)]);
    // The same overlap with other octets: the datagram is not sent, and is counted.
    let mut other = body[800..2000].to_vec();
    other[700] ^= 0xff;
    frags[2] = ipv4(NAS, 5, MF + 100, UDP, &other);
    let read = parsed(&classic(&timed(&frags, &[0, 2, 1])));
    assert_eq!(payloads(&read), Vec::<Vec<u8>>::new());
    assert_eq!(
        read.incomplete,
        Incomplete {
            conflicting: 1,
            ..Incomplete::default()
        }
    );
}

#[test]
fn ipv4_fragments_that_cannot_be_one_datagram_conflict() {
    let body = udp(1813, &request(&payload(3000)));
    let frags = fragments(5, &body, &[1480]);
    let cases = [
        // Two last fragments ending in different places.
        vec![
            frags[1].clone(),
            ipv4(NAS, 5, 185, UDP, &body[1480..2000]),
            frags[0].clone(),
        ],
        // A fragment past the end a last one gave.
        vec![
            frags[1].clone(),
            ipv4(NAS, 5, MF + 400, UDP, &[0; 8]),
            frags[0].clone(),
        ],
        // A non-last fragment whose length is not a multiple of 8.
        vec![ipv4(NAS, 5, MF, UDP, &body[..1479]), frags[1].clone()],
        // Past 65,535 octets.
        vec![frags[0].clone(), ipv4(NAS, 5, 8189, UDP, &[0; 100])],
    ];
    for (i, frames) in cases.iter().enumerate() {
        let frames: Vec<(i64, Vec<u8>)> = frames.iter().map(|f| (0, f.clone())).collect();
        let read = parsed(&classic(&frames));
        assert_eq!(read.datagrams, [], "{i}");
        assert_eq!(read.incomplete.conflicting, 1, "{i}");
        assert_eq!(read.incomplete.total(), 1, "{i}");
    }
}

#[test]
fn ipv4_fragments_never_completed_are_counted_unless_they_are_not_requests() {
    let body = udp(1813, &request(&payload(4000)));
    let frags = fragments(1, &body, &[1480, 2960]);
    let other = fragments(2, &udp(53, &payload(3000)), &[1480]);
    let tcp = ipv4(NAS, 3, MF, 6, &payload(1480));
    let frames = vec![
        (0, frags[0].clone()),
        (1, frags[2].clone()), // the middle one never comes
        (2, other[0].clone()), // another port: not counted
        (3, tcp),              // not UDP: not even held
        (4, datagram(NAS, b"whole")),
    ];
    let read = parsed(&classic(&frames));
    assert_eq!(payloads(&read), [b"whole".to_vec()]);
    assert_eq!(
        read.incomplete,
        Incomplete {
            missing: 1,
            ..Incomplete::default()
        }
    );
    // Without its first fragment, nothing says it was not a request: counted.
    let read = parsed(&classic(&timed(&other, &[1])));
    assert_eq!(read.incomplete.missing, 1);
}

#[test]
fn ipv4_fragments_expire_after_the_timeout_and_the_identification_is_reused() {
    let first = fragments(77, &udp(1813, &request(&payload(3000))), &[1480]);
    let second = fragments(77, &udp(1813, &request(&payload(2000))), &[1480]);
    let frames = vec![
        (0, first[0].clone()),
        (61, second[0].clone()), // 61 s later: the first has expired
        (62, second[1].clone()),
    ];
    let read = parsed(&classic(&frames));
    assert_eq!(payloads(&read), [payload(2000)]);
    assert_eq!(read.incomplete.missing, 1);
    // Within the timeout, the second datagram's first fragment (its UDP length differs)
    // conflicts with the first's.
    let frames = vec![
        (0, first[0].clone()),
        (59, second[0].clone()),
        (60, first[1].clone()),
    ];
    let read = parsed(&classic(&frames));
    assert_eq!(read.datagrams, []);
    assert_eq!(read.incomplete.conflicting, 1);
}

#[test]
fn ipv4_fragments_over_the_memory_limit_evict_the_oldest() {
    let a = fragments(1, &udp(1813, &request(&payload(1000))), &[504]);
    let b = fragments(2, &udp(1813, &request(&payload(3000))), &[1480]);
    let frames = timed(
        &[a[0].clone(), b[0].clone(), b[1].clone(), a[1].clone()],
        &[0, 1, 2, 3],
    );
    let data = classic(&frames);
    // Room for about 2 KiB: `a` (500 octets held) is evicted when `b` (1480) starts; `b`
    // is whole at its second fragment; `a`'s last fragment then waits alone.
    let read = read_capture_within(&data, 2048).map(|c| (payloads(&c), c.incomplete));
    assert_eq!(
        read,
        Ok((
            vec![payload(3000)],
            Incomplete {
                missing: 1,
                evicted: 1,
                ..Incomplete::default()
            }
        ))
    );
    assert_eq!(
        read_capture_within(&data, 1 << 20).map(|c| c.datagrams.len()),
        Ok(2)
    );
}

#[test]
fn datagrams_cut_by_the_snaplen_are_counted_not_returned() {
    let mut response = vec![5];
    response.extend(payload(100));
    let frames = vec![
        (0, datagram(NAS, b"short enough")),                 // 42 octets
        (1, datagram(NAS, &payload(100))),                   // cut inside the request
        (2, ipv4(NAS, 1, 0, UDP, &udp(53, &payload(100)))),  // another port
        (3, ipv4(SERVER, 2, 0, UDP, &udp(1813, &response))), // another code
        (4, ipv4(NAS, 3, 0, 6, &payload(100))),              // not UDP
        (5, ipv6(UDP, &udp(1813, &request(&payload(100))))), // cut inside the request
    ];
    let read = parsed(&snapped(101, 60, &frames));
    assert_eq!(payloads(&read), [b"short enough".to_vec()]);
    assert_eq!(
        read.incomplete,
        Incomplete {
            cut: 2,
            ..Incomplete::default()
        }
    );
    // Only what follows the datagram was cut (an Ethernet frame check sequence): whole.
    let mut frame = ethernet_frame(&datagram(NAS, b"whole"));
    let datagram_end = frame.len();
    frame.extend([0xde, 0xad, 0xbe, 0xef]);
    let read = parsed(&snapped(1, datagram_end, &[(0, frame)]));
    assert_eq!(payloads(&read), [b"whole".to_vec()]);
    assert_eq!(read.incomplete, Incomplete::default());
}

#[test]
fn fragment_cut_by_the_snaplen_leaves_its_datagram_cut() {
    let body = udp(1813, &request(&payload(3000)));
    let frags = fragments(4, &body, &[1480]); // 1500 and 1541 octets
    let frames = timed(&frags, &[0, 1]);
    let read = parsed(&snapped(101, 1500, &frames));
    assert_eq!(read.datagrams, []);
    assert_eq!(
        read.incomplete,
        Incomplete {
            cut: 1,
            ..Incomplete::default()
        }
    );
    // Every fragment cut (the first one too, after its UDP header): counted once.
    assert_eq!(parsed(&snapped(101, 100, &frames)).incomplete.cut, 1);
    // The same over IPv6; and a datagram whose first fragment shows another port.
    let v6 = fragments6(5, UDP, &body, &[1448]);
    let dns = fragments(6, &udp(53, &payload(3000)), &[1480]);
    let frames = timed(
        &[v6[0].clone(), v6[1].clone(), dns[0].clone(), dns[1].clone()],
        &[0, 1, 2, 3],
    );
    assert_eq!(parsed(&snapped(101, 1000, &frames)).incomplete.cut, 1);
    // A cut fragment also captured whole (on another interface) completes its datagram.
    let records = vec![
        (0, frags[0].clone(), frags[0].len()),
        (1, frags[1][..600].to_vec(), frags[1].len()),
        (2, frags[1].clone(), frags[1].len()),
    ];
    let read = parsed(&records_of(101, &records));
    assert_eq!(payloads(&read), [payload(3000)]);
    assert_eq!(read.incomplete, Incomplete::default());
    // A frame shorter than its IP header says, but not cut by the capture, is malformed: its
    // datagram is missing a fragment, as before.
    let read = parsed(&classic(&[
        (0, frags[0].clone()),
        (1, frags[1][..600].to_vec()),
    ]));
    assert_eq!(read.incomplete.missing, 1);
}

#[test]
fn fragments_from_other_sources_are_other_datagrams() {
    let body = udp(1813, &request(&payload(3000)));
    let frags = fragments(4, &body, &[1480]);
    let mut elsewhere = frags[1].clone();
    elsewhere[12..16].copy_from_slice(&[192, 0, 2, 2]);
    let read = parsed(&classic(&timed(&[frags[0].clone(), elsewhere], &[0, 1])));
    assert_eq!(read.datagrams, []);
    assert_eq!(read.incomplete.missing, 2);
}

// --- IPv6 -------------------------------------------------------------------------------

#[test]
fn ipv6_extension_headers_are_walked_to_udp() {
    let mut body = extension(60, 0); // Hop-by-Hop, then Destination Options
    body.extend(extension(43, 1)); // then Routing (16 octets)
    body.extend(extension(51, 0)); // then an Authentication Header...
    body.extend([UDP, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // ...of 12 octets, then UDP
    body.extend(udp(1813, &request(b"behind extensions")));
    let frames = vec![
        (0, ipv6(0, &body)),
        (1, ipv6(UDP, &udp(1813, &request(b"direct")))),
        (
            2,
            ipv6(
                60,
                &[&extension(6, 0)[..], &udp(1813, &request(b"tcp"))[..]].concat(),
            ),
        ),
        (
            3,
            ipv6(
                60,
                &[&extension(59, 0)[..], &udp(1813, &request(b"none"))[..]].concat(),
            ),
        ),
        (4, ipv6(50, &udp(1813, &request(b"esp")))),
    ];
    let read = parsed(&classic(&frames));
    assert_eq!(
        payloads(&read),
        [b"behind extensions".to_vec(), b"direct".to_vec()]
    );
    assert_eq!(read.datagrams[0].source, "2001:db8::1");
}

#[test]
fn ipv6_fragments_are_reassembled_in_any_order() {
    // The fragmentable part: Destination Options, then UDP.
    let mut part = extension(UDP, 0);
    part.extend(udp(1813, &request(&payload(4000))));
    let frags = fragments6(0xdead_beef, 60, &part, &[1448, 2896]);
    let orders = [
        vec![0, 1, 2],
        vec![2, 0, 1],
        vec![1, 2, 0],
        vec![1, 1, 2, 2, 0],
    ];
    for order in orders {
        let mut frames = timed(&frags, &order);
        // Another datagram's fragment (another identification) in between.
        frames.push((
            9,
            fragments6(1, UDP, &udp(1813, &request(&payload(2000))), &[1448])[0].clone(),
        ));
        let read = parsed(&classic(&frames));
        assert_eq!(payloads(&read), [payload(4000)], "{order:?}");
        assert_eq!(times(&read), [T0 + (order.len() as i64 - 1) * 1_000_000]);
        assert_eq!(read.incomplete.missing, 1, "{order:?}");
    }
}

#[test]
fn ipv6_fragment_header_after_hop_by_hop_and_atomic_fragments() {
    let part = udp(1813, &request(&payload(3000)));
    let frags: Vec<Vec<u8>> = fragments6(3, UDP, &part, &[1448])
        .into_iter()
        .map(|f| {
            // Hop-by-Hop before the Fragment header.
            let mut body = extension(IPV6_FRAGMENT, 0);
            body.extend(&f[40..]);
            ipv6(0, &body)
        })
        .collect();
    let mut atomic = fragment_header(UDP, 0, false, 8);
    atomic.extend(udp(1813, &request(b"atomic")));
    let frames = vec![
        (0, frags[1].clone()),
        (1, ipv6(IPV6_FRAGMENT, &atomic)),
        (2, frags[0].clone()),
    ];
    let read = parsed(&classic(&frames));
    assert_eq!(payloads(&read), [b"atomic".to_vec(), payload(3000)]);
}

#[test]
fn ipv6_fragments_of_other_traffic_are_not_counted() {
    // TCP is never held; UDP to another port is held but not counted when incomplete.
    let tcp = fragments6(5, 6, &payload(3000), &[1448]);
    let dns = fragments6(6, UDP, &udp(53, &payload(3000)), &[1448]);
    let wanted = fragments6(7, UDP, &udp(1813, &request(&payload(3000))), &[1448]);
    let frames = timed(
        &[tcp[0].clone(), dns[0].clone(), wanted[0].clone()],
        &[0, 1, 2],
    );
    let read = parsed(&classic(&frames));
    assert_eq!(read.datagrams, []);
    assert_eq!(
        read.incomplete,
        Incomplete {
            missing: 1,
            ..Incomplete::default()
        }
    );
}

// --- properties -------------------------------------------------------------------------

proptest! {
    #[test]
    fn any_split_in_any_order_with_repeats_gives_the_datagram_back(
        len in 9_usize..5000,
        cuts in prop::collection::vec(1_usize..700, 0..8),
        order in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
    ) {
        let body = udp(1813, &request(&payload(len)));
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c * 8).filter(|&c| c < body.len()).collect();
        bounds.sort_unstable();
        bounds.dedup();
        let frags = fragments(3, &body, &bounds);
        // Every fragment once, in a shuffled order, plus repeats.
        let mut sequence: Vec<usize> = (0..frags.len()).collect();
        for (i, pick) in order.iter().enumerate() {
            let a = pick.index(sequence.len());
            let b = i % sequence.len();
            sequence.swap(b, a);
            if i % 3 == 0 {
                sequence.push(pick.index(frags.len()));
            }
        }
        let read = parsed(&classic(&timed(&frags, &sequence)));
        // A datagram in one piece is not a fragment: each copy is read, as before.
        let copies = if frags.len() == 1 { sequence.len() } else { 1 };
        prop_assert_eq!(payloads(&read), vec![payload(len); copies]);
        prop_assert_eq!(read.incomplete, Incomplete::default());
    }
}

// --- pcapng -----------------------------------------------------------------------------

/// One Ethernet frame carrying `ip`.
fn ethernet_frame(ip: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    frame.extend(ip);
    frame
}

#[test]
fn pcapng_is_read_in_either_byte_order() {
    for little in [true, false] {
        let mut ng = Ng::new(little);
        ng.interface(101, 0, &[]);
        ng.enhanced(0, ticks(T0), &datagram(NAS, b"one"));
        ng.block(5, &[0; 16]); // interface statistics: skipped
        ng.enhanced(0, ticks(T0 + 250), &datagram([192, 0, 2, 9], b"two"));
        let read = parsed(&ng.out);
        assert_eq!(
            payloads(&read),
            [b"one".to_vec(), b"two".to_vec()],
            "{little}"
        );
        assert_eq!(times(&read), [T0, T0 + 250]);
        assert_eq!(read.datagrams[1].source, "192.0.2.9");
        assert_eq!(read.truncated_at, None);
    }
}

#[test]
fn pcapng_times_follow_each_interface_resolution_and_offset() {
    let mut ng = Ng::new(true);
    ng.interface(101, 0, &[(9, vec![9])]); // nanoseconds
    ng.interface(
        101,
        0,
        &[(9, vec![0x80 + 20]), (14, 1000_i64.to_le_bytes().to_vec())],
    );
    ng.interface(101, 0, &[(9, vec![0])]); // seconds
    let ns = 1_700_000_000_123_456_789_u64;
    ng.enhanced(0, ns, &datagram(NAS, b"ns"));
    // 2^-20 s: 1,700,000,000.5 s is 1,700,000,000 × 2^20 + 2^19 ticks; plus 1000 s.
    ng.enhanced(
        1,
        (1_700_000_000_u64 << 20) + (1 << 19),
        &datagram(NAS, b"binary"),
    );
    ng.enhanced(2, 1_700_000_000, &datagram(NAS, b"seconds"));
    let read = parsed(&ng.out);
    assert_eq!(
        times(&read),
        [
            1_700_000_000_123_456,
            1_700_001_000_500_000,
            1_700_000_000_000_000
        ]
    );
}

#[test]
fn pcapng_big_endian_offset_and_extreme_resolutions_do_not_overflow() {
    let mut ng = Ng::new(false);
    ng.interface(101, 0, &[(14, (-5_i64).to_be_bytes().to_vec())]);
    ng.interface(101, 0, &[(9, vec![0x7f])]); // 10^-127 s: every time is 0
    ng.interface(101, 0, &[(9, vec![0xff])]); // 2^-127 s
    ng.enhanced(0, ticks(T0), &datagram(NAS, b"a"));
    ng.enhanced(1, u64::MAX, &datagram(NAS, b"b"));
    ng.enhanced(2, u64::MAX, &datagram(NAS, b"c"));
    assert_eq!(times(&parsed(&ng.out)), [T0 - 5_000_000, 0, 0]);
    // Microseconds past what an i64 holds: refused, naming the block.
    let mut ng = Ng::new(true);
    ng.interface(101, 0, &[]);
    let at = ng.enhanced(0, u64::MAX, &datagram(NAS, b"far"));
    assert_eq!(read_capture(&ng.out), Err(PcapError::Time { at }));
}

#[test]
fn pcapng_interfaces_keep_their_own_link_types() {
    let mut ng = Ng::new(true);
    ng.interface(1, 65535, &[]); // Ethernet
    ng.interface(101, 65535, &[]); // raw IP
    ng.interface(147, 65535, &[]); // a link type not decoded, with no packet: harmless
    ng.enhanced(0, ticks(T0), &ethernet_frame(&datagram(NAS, b"ether")));
    ng.enhanced(1, ticks(T0 + 1), &datagram(NAS, b"raw"));
    ng.obsolete(
        0,
        ticks(T0 + 2),
        &ethernet_frame(&datagram(NAS, b"old block")),
    );
    let read = parsed(&ng.out);
    assert_eq!(
        payloads(&read),
        [b"ether".to_vec(), b"raw".to_vec(), b"old block".to_vec()]
    );
    assert_eq!(times(&read), [T0, T0 + 1, T0 + 2]);
    // A packet on the interface whose link type is not decoded is refused.
    let at = ng.enhanced(2, ticks(T0 + 3), &datagram(NAS, b"?"));
    assert_eq!(
        read_capture(&ng.out),
        Err(PcapError::InterfaceLinkType {
            at,
            interface: 2,
            link_type: 147
        })
    );
}

#[test]
fn pcapng_sections_each_have_their_byte_order_and_interfaces() {
    let mut ng = Ng::new(true);
    ng.interface(1, 0, &[]);
    ng.enhanced(0, ticks(T0), &ethernet_frame(&datagram(NAS, b"first")));
    ng.section(false);
    ng.interface(101, 0, &[(9, vec![9])]);
    ng.enhanced(0, ticks(T0) * 1000, &datagram(NAS, b"second"));
    let read = parsed(&ng.out);
    assert_eq!(payloads(&read), [b"first".to_vec(), b"second".to_vec()]);
    assert_eq!(times(&read), [T0, T0]);
    // Interfaces do not carry over into a new section.
    ng.section(true);
    let at = ng.enhanced(0, ticks(T0), &datagram(NAS, b"third"));
    assert!(matches!(read_capture(&ng.out), Err(PcapError::Block { at: a, .. }) if a == at));
}

#[test]
fn pcapng_simple_packet_with_a_request_is_refused_and_others_are_skipped() {
    let mut ng = Ng::new(true);
    ng.interface(101, 0, &[]);
    ng.enhanced(0, ticks(T0), &datagram(NAS, b"timed"));
    ng.simple(&ipv4(NAS, 1, 0, UDP, &udp(53, b"dns")));
    let read = parsed(&ng.out);
    assert_eq!(payloads(&read), [b"timed".to_vec()]);
    let at = ng.simple(&datagram(NAS, b"untimed"));
    assert_eq!(read_capture(&ng.out), Err(PcapError::Untimed { at }));
}

#[test]
fn pcapng_simple_packet_fragment_takes_the_time_of_the_fragment_that_completes_it() {
    let body = udp(1813, &request(&payload(3000)));
    let frags = fragments(7, &body, &[1480]);
    let mut ng = Ng::new(false);
    ng.interface(101, 0, &[]);
    ng.simple(&frags[0]);
    ng.enhanced(0, ticks(T0 + 9), &frags[1]);
    let read = parsed(&ng.out);
    assert_eq!(payloads(&read), [payload(3000)]);
    assert_eq!(times(&read), [T0 + 9]);
}

#[test]
fn pcapng_packets_cut_by_the_snaplen_are_counted_not_returned() {
    // A Simple Packet Block is cut to its interface's snaplen: 39 octets, 30 captured (its
    // UDP header to 1813 and 2 octets). Counted, so it needs no time: no refusal.
    let mut ng = Ng::new(true);
    ng.interface(101, 30, &[]);
    ng.simple(&datagram(NAS, b"0123456789"));
    let read = parsed(&ng.out);
    assert_eq!(read.datagrams, []);
    assert_eq!(read.incomplete.cut, 1);
    // An Enhanced (or obsolete) Packet Block says its original length.
    let mut ng = Ng::new(false);
    ng.interface(1, 0, &[]);
    let frame = ethernet_frame(&datagram(NAS, &payload(200)));
    ng.enhanced_cut(0, ticks(T0), &frame[..100], frame.len());
    ng.enhanced(0, ticks(T0 + 1), &ethernet_frame(&datagram(NAS, b"whole")));
    let read = parsed(&ng.out);
    assert_eq!(payloads(&read), [b"whole".to_vec()]);
    assert_eq!(read.incomplete.cut, 1);
}

#[test]
fn pcapng_unknown_blocks_are_skipped_by_their_length() {
    let mut ng = Ng::new(true);
    ng.block(0x0bad, b"custom block, copied");
    ng.interface(101, 0, &[(2, b"eth0".to_vec()), (12, b"Linux".to_vec())]);
    ng.block(4, &[0, 0, 0, 0]); // name resolution
    ng.block(0x4000_0bad, &[1; 40]);
    ng.block(10, &[2; 7]); // decryption secrets
    ng.enhanced(0, ticks(T0), &datagram(NAS, b"after them"));
    assert_eq!(payloads(&parsed(&ng.out)), [b"after them".to_vec()]);
}

#[test]
fn pcapng_block_cut_short_ends_the_capture_as_truncated() {
    let mut ng = Ng::new(true);
    ng.interface(101, 0, &[]);
    ng.enhanced(0, ticks(T0), &datagram(NAS, b"one"));
    let second = ng.enhanced(0, ticks(T0 + 1), &datagram(NAS, b"two"));
    let data = ng.out.clone();
    for end in [data.len() - 1, second + 20, second + 6, second + 1] {
        let read = parsed(&data[..end]);
        assert_eq!(payloads(&read), [b"one".to_vec()], "{end}");
        assert_eq!(read.truncated_at, Some(second));
    }
    assert_eq!(parsed(&data[..second]).truncated_at, None);
    // A section header cut before its byte-order magic, first or later.
    assert_eq!(parsed(&data[..10]).truncated_at, Some(0));
    let mut ng = Ng::new(true);
    ng.interface(101, 0, &[]);
    let at = ng.section(false);
    assert_eq!(parsed(&ng.out[..at + 9]).truncated_at, Some(at));
}

#[test]
fn pcapng_malformed_blocks_are_refused_naming_them() {
    let mut ng = Ng::new(true);
    ng.interface(101, 0, &[]);
    let at = ng.out.len();
    ng.enhanced(0, ticks(T0), &datagram(NAS, b"one"));
    let block_error = |data: &[u8]| match read_capture(data) {
        Err(PcapError::Block { at, reason }) => Some((at, reason)),
        _ => None,
    };
    // A length that is not a multiple of 4, one under 12, a closing length that differs.
    for (offset, value) in [(4, 61_u32), (4, 8), (ng.out.len() - 4 - at, 64)] {
        let mut data = ng.out.clone();
        data[at + offset..at + offset + 4].copy_from_slice(&value.to_le_bytes());
        assert_eq!(
            block_error(&data).map(|e| e.0),
            Some(at),
            "{offset} {value}"
        );
    }
    // A captured length past the block.
    let mut data = ng.out.clone();
    data[at + 20..at + 24].copy_from_slice(&500_u32.to_le_bytes());
    assert_eq!(block_error(&data).map(|e| e.0), Some(at));
    // An if_tsresol of two bytes.
    let mut bad = Ng::new(true);
    let idb = bad.interface(101, 0, &[(9, vec![6, 6])]);
    assert_eq!(block_error(&bad.out).map(|e| e.0), Some(idb));
    // Another major version.
    let mut data = Ng::new(true).out;
    data[12] = 2;
    assert!(block_error(&data).is_some_and(|e| e.1.contains("version 2.0")));
    // A first section with an unknown byte-order magic is not pcapng at all.
    let mut data = Ng::new(true).out;
    data[8] = 0;
    assert_eq!(read_capture(&data), Err(PcapError::Magic));
}

/// A pcapng file written block by block in one byte order.
struct Ng {
    little: bool,
    out: Vec<u8>,
}

impl Ng {
    fn new(little: bool) -> Self {
        let mut ng = Self {
            little,
            out: Vec::new(),
        };
        ng.section(little);
        ng
    }

    fn u16(&self, v: u16) -> [u8; 2] {
        if self.little {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        }
    }

    fn u32(&self, v: u32) -> [u8; 4] {
        if self.little {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        }
    }

    /// Appends a block of this type; the body is padded to 32 bits. Returns its offset.
    fn block(&mut self, kind: u32, body: &[u8]) -> usize {
        let at = self.out.len();
        let mut body = body.to_vec();
        body.resize(body.len().next_multiple_of(4), 0);
        let length = self.u32(body.len() as u32 + 12);
        let kind = self.u32(kind);
        self.out.extend(kind);
        self.out.extend(length);
        self.out.extend(body);
        self.out.extend(length);
        at
    }

    /// Starts a new section in the given byte order (with an `shb_userappl` option).
    fn section(&mut self, little: bool) -> usize {
        self.little = little;
        let mut body = self.u32(0x1a2b_3c4d).to_vec();
        body.extend(self.u16(1));
        body.extend(self.u16(0));
        body.extend([0xff; 8]); // section length unknown
        body.extend(self.option(4, b"tests"));
        body.extend([0; 4]);
        self.block(0x0a0d_0d0a, &body)
    }

    fn option(&self, code: u16, value: &[u8]) -> Vec<u8> {
        let mut out = self.u16(code).to_vec();
        out.extend(self.u16(value.len() as u16));
        out.extend(value);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    /// An interface; `options` are (code, value) pairs.
    fn interface(&mut self, link_type: u16, snaplen: u32, options: &[(u16, Vec<u8>)]) -> usize {
        let mut body = self.u16(link_type).to_vec();
        body.extend([0, 0]);
        body.extend(self.u32(snaplen));
        for (code, value) in options {
            body.extend(self.option(*code, value));
        }
        if !options.is_empty() {
            body.extend([0; 4]);
        }
        self.block(1, &body)
    }

    fn enhanced(&mut self, interface: u32, ticks: u64, frame: &[u8]) -> usize {
        self.enhanced_cut(interface, ticks, frame, frame.len())
    }

    /// An Enhanced Packet Block of a frame of `original` octets, `frame` captured.
    fn enhanced_cut(&mut self, interface: u32, ticks: u64, frame: &[u8], original: usize) -> usize {
        let mut body = self.u32(interface).to_vec();
        body.extend(self.u32((ticks >> 32) as u32));
        body.extend(self.u32(ticks as u32));
        body.extend(self.u32(frame.len() as u32));
        body.extend(self.u32(original as u32));
        body.extend(frame);
        body.resize(body.len().next_multiple_of(4), 0);
        body.extend(self.option(1, b"a comment"));
        body.extend([0; 4]);
        self.block(6, &body)
    }

    fn obsolete(&mut self, interface: u16, ticks: u64, frame: &[u8]) -> usize {
        let mut body = self.u16(interface).to_vec();
        body.extend(self.u16(0));
        body.extend(self.u32((ticks >> 32) as u32));
        body.extend(self.u32(ticks as u32));
        body.extend(self.u32(frame.len() as u32));
        body.extend(self.u32(frame.len() as u32));
        body.extend(frame);
        self.block(2, &body)
    }

    fn simple(&mut self, frame: &[u8]) -> usize {
        let mut body = self.u32(frame.len() as u32).to_vec();
        body.extend(frame);
        self.block(3, &body)
    }
}

fn ticks(us: i64) -> u64 {
    us as u64
}

#[test]
fn pcapng_with_fragments_over_two_interfaces() {
    // The capture a BNG's collector writes: Ethernet and Linux cooked, IPv4 and IPv6.
    let v4 = fragments(21, &udp(1813, &request(&payload(4096))), &[1480, 2960]);
    let v6 = fragments6(22, UDP, &udp(1813, &request(&payload(3500))), &[1448, 2896]);
    let cooked = |ip: &[u8]| {
        let mut frame = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0, 0x86, 0xdd];
        frame.extend(ip);
        frame
    };
    for little in [true, false] {
        let mut ng = Ng::new(little);
        ng.interface(1, 262_144, &[(9, vec![9])]);
        ng.interface(113, 262_144, &[]);
        let ns = ticks(T0) * 1000;
        ng.enhanced(0, ns, &ethernet_frame(&v4[0]));
        ng.enhanced(1, ticks(T0 + 1), &cooked(&v6[2]));
        ng.enhanced(0, ns + 2000, &ethernet_frame(&v4[2]));
        ng.enhanced(1, ticks(T0 + 3), &cooked(&v6[0]));
        ng.enhanced(0, ns + 4000, &ethernet_frame(&v4[1]));
        ng.enhanced(1, ticks(T0 + 5), &cooked(&v6[1]));
        let read = parsed(&ng.out);
        assert_eq!(payloads(&read), [payload(4096), payload(3500)]);
        assert_eq!(times(&read), [T0 + 4, T0 + 5]);
        assert_eq!(read.datagrams[1].source, "2001:db8::1");
    }
}

proptest! {
    #[test]
    fn damaged_captures_never_panic(
        little in any::<bool>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..12),
        cut in any::<prop::sample::Index>(),
    ) {
        let v4 = fragments(21, &udp(1813, &request(&payload(3000))), &[1480]);
        let v6 = fragments6(22, 60, &[&extension(UDP, 0)[..], &udp(1813, &request(&payload(2000)))[..]].concat(), &[1448]);
        let mut ng = Ng::new(little);
        ng.interface(101, 0, &[(9, vec![9])]);
        ng.interface(1, 0, &[]);
        for f in v4.iter().chain(&v6) {
            ng.enhanced(0, 1, f);
            ng.enhanced(1, 2, &ethernet_frame(f));
            ng.simple(f);
        }
        let mut data = ng.out;
        for (at, byte) in edits {
            let i = at.index(data.len());
            data[i] = byte;
        }
        data.truncate(cut.index(data.len() + 1));
        let _ = read_capture_within(&data, 8192);
        let mut classic_data = classic(&timed(&[v4[0].clone(), v6[1].clone(), v4[1].clone()], &[0, 1, 2]));
        let i = cut.index(classic_data.len());
        classic_data[i] ^= 0x55;
        let _ = read_capture(&classic_data);
    }
}

// --- read a chunk at a time ---------------------------------------------------------------

/// A source that gives at most `step` bytes per read, as a pipe or a slow disk may.
struct Dribble<'a> {
    data: &'a [u8],
    step: usize,
}

impl std::io::Read for Dribble<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// The chunks a stream gave, where it ended cut short, and what it could not read whole.
type Chunked = (Vec<Vec<Datagram>>, Option<usize>, Incomplete);

/// The chunks of `data` read `max` requests at a time through a window refilled `window`
/// bytes (from reads of at most `step`) at a time; the truncation offset and the counts.
fn chunked(data: &[u8], max: usize, window: usize, step: usize) -> Result<Chunked, PcapError> {
    let source = Dribble { data, step };
    let mut stream = CaptureStream::windowed(source, data.len(), MEMORY_BYTES, window)?;
    let mut chunks = Vec::new();
    loop {
        let chunk = stream.next_chunk(max)?;
        if chunk.is_empty() {
            break;
        }
        chunks.push(chunk);
    }
    assert!(stream.is_done());
    Ok((chunks, stream.truncated_at(), stream.incomplete()))
}

/// Asserts that every way of reading `data` a chunk at a time gives [`read_capture`]'s
/// requests, in its order, and its truncation and counts (or its error).
fn assert_chunks_equal_whole(data: &[u8]) {
    let whole = read_capture(data);
    for max in [1, 2, 3, 7, usize::MAX] {
        for (window, step) in [(1, 1), (5, 3), (64, 7), (1500, 1 << 20), (1 << 20, 1 << 20)] {
            let read = chunked(data, max, window, step);
            let label = format!("max {max}, window {window}, step {step}");
            match (&whole, read) {
                (Ok(whole), Ok((chunks, truncated_at, incomplete))) => {
                    assert!(
                        chunks.iter().all(|c| !c.is_empty() && c.len() <= max),
                        "{label}"
                    );
                    assert_eq!(chunks.concat(), whole.datagrams, "{label}");
                    assert_eq!(truncated_at, whole.truncated_at, "{label}");
                    assert_eq!(incomplete, whole.incomplete, "{label}");
                }
                (Err(whole), Err(error)) => assert_eq!(&error, whole, "{label}"),
                (whole, read) => unreachable!("{label}: {whole:?} but {read:?}"),
            }
        }
    }
}

#[test]
fn chunks_concatenated_equal_the_whole_read_across_fragment_reassembly() {
    // Fragments of two datagrams interleaved with whole ones, out of order, so that the
    // reassembly spans chunk boundaries; a datagram missing a fragment; a cut last record.
    let a = fragments(31, &udp(1813, &request(&payload(4000))), &[1480, 2960]);
    let b = fragments(32, &udp(1813, &request(&payload(3000))), &[1480]);
    let lost = fragments(33, &udp(1813, &request(&payload(2000))), &[1480]);
    let frames = vec![
        (0, a[1].clone()),
        (1, datagram(NAS, b"one")),
        (2, b[0].clone()),
        (3, a[0].clone()),
        (4, lost[0].clone()),
        (5, datagram(NAS, b"two")),
        (6, datagram([192, 0, 2, 2], b"three")),
        (7, b[1].clone()),
        (8, a[2].clone()),
        (9, datagram(NAS, b"four")),
    ];
    let data = classic(&frames);
    let read = parsed(&data);
    assert_eq!(read.datagrams.len(), 6);
    assert_eq!(read.incomplete.missing, 1);
    assert_chunks_equal_whole(&data);
    let last = data.len() - 16 - datagram(NAS, b"four").len();
    for end in [data.len() - 1, last + 5, last] {
        assert_chunks_equal_whole(&data[..end]);
    }
}

#[test]
fn chunks_concatenated_equal_the_whole_read_of_pcapng_sections_and_errors() {
    let v4 = fragments(21, &udp(1813, &request(&payload(4096))), &[1480, 2960]);
    for little in [true, false] {
        let mut ng = Ng::new(little);
        ng.interface(1, 262_144, &[(9, vec![9])]);
        let ns = ticks(T0) * 1000;
        ng.enhanced(0, ns, &ethernet_frame(&v4[0]));
        ng.enhanced(0, ns + 1000, &ethernet_frame(&datagram(NAS, b"one")));
        ng.enhanced(0, ns + 2000, &ethernet_frame(&v4[2]));
        ng.section(!little);
        ng.little = !little;
        ng.interface(101, 0, &[]);
        ng.enhanced(0, ticks(T0 + 3), &v4[1]); // completes the datagram of the first section
        ng.enhanced(0, ticks(T0 + 4), &datagram(NAS, b"two"));
        assert_eq!(parsed(&ng.out).datagrams.len(), 3);
        assert_chunks_equal_whole(&ng.out);
        assert_chunks_equal_whole(&ng.out[..ng.out.len() - 3]);
        // An error after requests: the chunks before it, then the error.
        let at = ng.simple(&datagram(NAS, b"untimed"));
        assert_eq!(read_capture(&ng.out), Err(PcapError::Untimed { at }));
        assert_chunks_equal_whole(&ng.out);
    }
}

#[test]
fn a_stream_stops_with_an_error_when_the_file_is_shorter_than_when_opened() {
    let data = capture(&[b"one", b"two"]);
    let mut stream = CaptureStream::new(&data[..data.len() - 2], data.len())
        .and_then(|mut s| s.next_chunk(usize::MAX).map(|c| (c.len(), s.is_done())));
    assert!(
        matches!(&stream, Err(PcapError::Io(reason)) if reason.contains("shorter")),
        "{stream:?}"
    );
    stream = CaptureStream::new(data.as_slice(), data.len() - 2)
        .and_then(|mut s| s.next_chunk(usize::MAX).map(|c| (c.len(), s.is_done())));
    assert_eq!(
        stream,
        Ok((1, true)),
        "what was appended after opening is not read"
    );
}
