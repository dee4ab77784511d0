//! Link layers: the IP packet a captured frame carries, found by its link type and then by
//! the ethertype (Ethernet, Linux cooked v1 and v2), through VLAN tags and MPLS labels.

use super::u16be;

/// Ethernet, null/loop, raw IP (12, 14, 101, 228, 229), Linux cooked v1 and v2.
pub const LINK_TYPES: [u32; 10] = [0, 1, 12, 14, 101, 108, 113, 228, 229, 276];

const IPV4: u16 = 0x0800;
const IPV6: u16 = 0x86dd;
/// VLAN tags: 802.1Q, 802.1ad (Q-in-Q), and 0x9100, the Q-in-Q outer tag from before 802.1ad.
const VLAN: [u16; 3] = [0x8100, 0x88a8, 0x9100];
/// MPLS unicast and multicast.
const MPLS: [u16; 2] = [0x8847, 0x8848];

/// The IP packet inside a frame of the link type (one of [`LINK_TYPES`]); None for a frame
/// of another protocol. Which IP version it is, its first nibble says.
pub fn network_layer(link_type: u32, frame: &[u8]) -> Option<&[u8]> {
    match link_type {
        // Ethernet: the ethertype after the two addresses.
        1 => by_ethertype(u16be(frame, 12)?, frame.get(14..)?),
        // Null/loop: a 4-octet address family (its values differ by OS), then IP.
        0 | 108 => frame.get(4..),
        101 | 228 | 229 | 12 | 14 => Some(frame),
        // Linux cooked: the protocol (an ethertype) ends the 16-octet header of v1 and
        // starts the 20-octet header of v2. VLAN tags the kernel took off are put back by
        // libpcap as the protocol (the TPID), then the rest of the tag.
        113 => by_ethertype(u16be(frame, 14)?, frame.get(16..)?),
        276 => by_ethertype(u16be(frame, 0)?, frame.get(20..)?),
        _ => None,
    }
}

/// The IP packet in `rest`, which the ethertype names; VLAN tags (the 2 octets of VLAN id
/// and the next ethertype) and MPLS label stacks are taken off first.
fn by_ethertype(mut ethertype: u16, mut rest: &[u8]) -> Option<&[u8]> {
    while VLAN.contains(&ethertype) {
        ethertype = u16be(rest, 2)?;
        rest = rest.get(4..)?;
    }
    let version = rest.first().map(|b| b >> 4);
    match ethertype {
        IPV4 if version == Some(4) => Some(rest),
        IPV6 if version == Some(6) => Some(rest),
        t if MPLS.contains(&t) => mpls(rest),
        _ => None,
    }
}

/// What follows an MPLS label stack (4-octet entries down to the one with the bottom of stack
/// bit): IP when its first nibble is 4 or 6, else (an Ethernet pseudowire's control word, an
/// associated channel) something this reader does not decode.
fn mpls(mut rest: &[u8]) -> Option<&[u8]> {
    loop {
        let bottom = rest.get(2)? & 1 != 0;
        rest = rest.get(4..)?;
        if bottom {
            return Some(rest);
        }
    }
}
