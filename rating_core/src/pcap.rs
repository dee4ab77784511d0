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
    /// A record header or body past the end of the file.
    Truncated,
    /// A link type this reader does not decode.
    LinkType(u32),
}

impl fmt::Display for PcapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Magic => write!(f, "pcap: not a classic pcap file"),
            Self::Truncated => write!(f, "pcap: truncated record"),
            Self::LinkType(t) => write!(f, "pcap: unsupported link type {t}"),
        }
    }
}

impl std::error::Error for PcapError {}

const ACCOUNTING_PORTS: [u16; 2] = [1813, 1646];

fn u16be(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Reads the accounting requests of a capture, in capture order.
///
/// # Errors
/// [`PcapError`] for a bad header, a truncated record or an unknown link type.
pub fn read(data: &[u8]) -> Result<Vec<Datagram>, PcapError> {
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
    let mut out = Vec::new();
    let mut pos = 24;
    while pos < data.len() {
        let rec = data.get(pos..pos + 16).ok_or(PcapError::Truncated)?;
        let secs = i64::from(u32at(rec, 0).ok_or(PcapError::Truncated)?);
        let frac = i64::from(u32at(rec, 4).ok_or(PcapError::Truncated)?);
        let caplen = u32at(rec, 8).ok_or(PcapError::Truncated)? as usize;
        let frame = data
            .get(pos + 16..pos + 16 + caplen)
            .ok_or(PcapError::Truncated)?;
        pos += 16 + caplen;
        let time_us = secs * 1_000_000 + if nanos { frac / 1000 } else { frac };
        let ip = match linktype {
            1 => ethernet(frame),
            0 | 108 => frame.get(4..),
            101 | 228 | 229 | 12 | 14 => Some(frame),
            113 => frame.get(16..),
            276 => frame.get(20..),
            t => return Err(PcapError::LinkType(t)),
        };
        if let Some((source, payload)) = ip.and_then(udp_to_accounting) {
            out.push(Datagram {
                payload: payload.to_vec(),
                source,
                time_us,
            });
        }
    }
    Ok(out)
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
