//! Classic pcap reader: RADIUS accounting requests (UDP to 1813/1646) over IPv4/IPv6.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// One captured RADIUS accounting datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub payload: Vec<u8>,
    pub source: String,
    pub time_us: i64,
}

/// Why a capture could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PcapError {
    /// Not a classic pcap file (pcapng is not supported).
    Magic,
    /// A link type this reader does not decode.
    LinkType(u32),
}

impl fmt::Display for PcapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Magic => write!(f, "pcap: not a classic pcap file"),
            Self::LinkType(t) => write!(f, "pcap: unsupported link type {t}"),
        }
    }
}

impl std::error::Error for PcapError {}

const ACCOUNTING_PORTS: [u16; 2] = [1813, 1646];

/// Ethernet, null/loop, raw IP (12, 14, 101, 228, 229), Linux cooked v1 and v2.
const LINK_TYPES: [u32; 10] = [0, 1, 12, 14, 101, 108, 113, 228, 229, 276];

fn u16be(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// The accounting requests of a capture, and where it stops short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub datagrams: Vec<Datagram>,
    /// Byte offset of a last record cut short (a capture killed mid-write), if any: the
    /// datagrams are those of every complete record before it.
    pub truncated_at: Option<usize>,
}

/// Reads the accounting requests of every complete record of a capture, in capture order,
/// and says where a record cut short ends it (nothing after it is read).
///
/// # Errors
/// [`PcapError`] for a bad header or an unknown link type.
pub fn read_capture(data: &[u8]) -> Result<Capture, PcapError> {
    let header = data.get(..24).ok_or(PcapError::Magic)?;
    let magic = [header[0], header[1], header[2], header[3]];
    let (le, nanos) = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] => (true, false),
        [0xa1, 0xb2, 0xc3, 0xd4] => (false, false),
        [0x4d, 0x3c, 0xb2, 0xa1] => (true, true),
        [0xa1, 0xb2, 0x3c, 0x4d] => (false, true),
        _ => return Err(PcapError::Magic),
    };
    let u32at = |b: &[u8], at: usize| -> Option<u32> {
        let a: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        })
    };
    let linktype = u32at(header, 20).ok_or(PcapError::Magic)? & 0x0fff_ffff;
    if !LINK_TYPES.contains(&linktype) {
        return Err(PcapError::LinkType(linktype));
    }
    let mut datagrams = Vec::new();
    let mut pos = 24;
    while pos < data.len() {
        let Some((time_us, frame)) = record(data, pos, &u32at, nanos) else {
            return Ok(Capture {
                datagrams,
                truncated_at: Some(pos),
            });
        };
        pos += 16 + frame.len();
        let ip = match linktype {
            1 => ethernet(frame),
            0 | 108 => frame.get(4..),
            101 | 228 | 229 | 12 | 14 => Some(frame),
            113 => frame.get(16..),
            276 => frame.get(20..),
            _ => None, // refused above
        };
        if let Some((source, payload)) = ip.and_then(udp_to_accounting) {
            datagrams.push(Datagram {
                payload: payload.to_vec(),
                source,
                time_us,
            });
        }
    }
    Ok(Capture {
        datagrams,
        truncated_at: None,
    })
}

/// The capture time (µs) and frame of the record at `pos`; None when the file ends inside it.
fn record<'a>(
    data: &'a [u8],
    pos: usize,
    u32at: &impl Fn(&[u8], usize) -> Option<u32>,
    nanos: bool,
) -> Option<(i64, &'a [u8])> {
    let rec = data.get(pos..pos.checked_add(16)?)?;
    let secs = i64::from(u32at(rec, 0)?);
    let frac = i64::from(u32at(rec, 4)?);
    let caplen = u32at(rec, 8)? as usize;
    let frame = data.get(pos + 16..(pos + 16).checked_add(caplen)?)?;
    Some((
        secs * 1_000_000 + if nanos { frac / 1000 } else { frac },
        frame,
    ))
}

fn ethernet(frame: &[u8]) -> Option<&[u8]> {
    let mut at = 12;
    let mut ty = u16be(frame, at)?;
    while ty == 0x8100 || ty == 0x88a8 {
        at += 4;
        ty = u16be(frame, at)?;
    }
    frame.get(at + 2..)
}

fn udp_to_accounting(ip: &[u8]) -> Option<(String, &[u8])> {
    let version = ip.first()? >> 4;
    let (source, udp) = match version {
        4 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16be(ip, 2)?);
            let frag = u16be(ip, 6)?;
            if *ip.get(9)? != 17 || frag & 0x3fff != 0 || ihl < 20 {
                return None;
            }
            let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            (
                Ipv4Addr::from(src).to_string(),
                ip.get(ihl..total.min(ip.len()))?,
            )
        }
        6 => {
            if *ip.get(6)? != 17 {
                return None;
            }
            let len = usize::from(u16be(ip, 4)?);
            let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            (
                Ipv6Addr::from(src).to_string(),
                ip.get(40..(40 + len).min(ip.len()))?,
            )
        }
        _ => return None,
    };
    let dport = u16be(udp, 2)?;
    let ulen = usize::from(u16be(udp, 4)?);
    if !ACCOUNTING_PORTS.contains(&dport) || ulen < 8 {
        return None;
    }
    Some((source, udp.get(8..ulen.min(udp.len()))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(source: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let udp_len = 8 + payload.len() as u16;
        let mut ip = vec![0x45, 0];
        ip.extend((20 + udp_len).to_be_bytes());
        ip.extend([0, 0, 0, 0, 64, 17, 0, 0]);
        ip.extend(source);
        ip.extend([192, 0, 2, 254]);
        ip.extend(40000_u16.to_be_bytes());
        ip.extend(1813_u16.to_be_bytes());
        ip.extend(udp_len.to_be_bytes());
        ip.extend([0, 0]);
        ip.extend(payload);
        ip
    }

    /// A little-endian, microsecond, raw-IP capture of one datagram per payload.
    fn capture(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for word in [0xa1b2_c3d4_u32, 0x0004_0002, 0, 0, 65535, 101] {
            out.extend(word.to_le_bytes());
        }
        for (i, payload) in payloads.iter().enumerate() {
            let frame = datagram([192, 0, 2, 1], payload);
            let len = frame.len() as u32;
            for word in [1_700_000_000 + i as u32, 250, len, len] {
                out.extend(word.to_le_bytes());
            }
            out.extend(frame);
        }
        out
    }

    #[test]
    fn complete_capture_reads_every_datagram() {
        let data = capture(&[b"one", b"two"]);
        let read = read_capture(&data);
        let payloads: Vec<&[u8]> = read
            .as_ref()
            .map(|c| c.datagrams.iter().map(|d| d.payload.as_slice()).collect())
            .unwrap_or_default();
        assert_eq!(payloads, [b"one".as_slice(), b"two".as_slice()]);
        assert_eq!(read.map(|c| c.truncated_at), Ok(None));
    }

    #[test]
    fn truncated_record_keeps_the_complete_ones_before_it() {
        let data = capture(&[b"one", b"two"]);
        let second = 24 + 16 + datagram([192, 0, 2, 1], b"one").len();
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
}
