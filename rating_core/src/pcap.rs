//! Capture reader: RADIUS Accounting-Requests (UDP to 1813/1646) over IPv4/IPv6, from classic
//! pcap and pcapng files, with IPv4 and IPv6 fragments reassembled.

mod classic;
mod link;
mod ng;
mod reassembly;
mod window;

use std::fmt;
use std::io::Read;
use std::net::{Ipv4Addr, Ipv6Addr};

use link::{network_layer, LINK_TYPES};
use reassembly::{Fragment, Key, Reassembler};
pub use reassembly::{Incomplete, MEMORY_BYTES, TIMEOUT_US};
use window::Window;

/// One captured RADIUS accounting datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub payload: Vec<u8>,
    pub source: String,
    /// Capture time; for a reassembled datagram, that of the fragment that completed it.
    pub time_us: i64,
}

/// Why a capture could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PcapError {
    /// Neither a classic pcap nor a pcapng file.
    Magic,
    /// A classic pcap of a link type this reader does not decode.
    LinkType(u32),
    /// A pcapng block that breaks the format, at its byte offset.
    Block { at: usize, reason: String },
    /// A pcapng packet (at its block's offset) on an interface of a link type this reader
    /// does not decode.
    InterfaceLinkType {
        at: usize,
        interface: u32,
        link_type: u32,
    },
    /// An accounting request completed by a pcapng Simple Packet Block, which has no time.
    Untimed { at: usize },
    /// A pcapng packet whose time is outside what a 64-bit count of microseconds holds.
    Time { at: usize },
    /// A classic pcap record that breaks the format, at its byte offset.
    Record { at: usize, reason: String },
    /// The file could not be read (or ended before the length it had when opened).
    Io(String),
}

impl fmt::Display for PcapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Magic => write!(f, "pcap: not a classic pcap or pcapng file"),
            Self::LinkType(t) => write!(f, "pcap: unsupported link type {t}"),
            Self::Block { at, reason } => write!(f, "pcapng: block at byte {at}: {reason}"),
            Self::InterfaceLinkType {
                at,
                interface,
                link_type,
            } => write!(
                f,
                "pcapng: the packet at byte {at} is on interface {interface}, of link type \
                 {link_type}, which this reader does not decode"
            ),
            Self::Untimed { at } => write!(
                f,
                "pcapng: the Simple Packet Block at byte {at} holds an accounting request, and \
                 such a block has no capture time (its arrival cannot be known)"
            ),
            Self::Time { at } => write!(
                f,
                "pcapng: the packet at byte {at} has a capture time out of range"
            ),
            Self::Record { at, reason } => write!(f, "pcap: record at byte {at}: {reason}"),
            Self::Io(reason) => write!(f, "pcap: {reason}"),
        }
    }
}

impl std::error::Error for PcapError {}

const ACCOUNTING_PORTS: [u16; 2] = [1813, 1646];
/// The RADIUS code of an Accounting-Request, the only packets a replay sends.
const ACCOUNTING_REQUEST: u8 = 4;
const UDP: u8 = 17;
const IPV6_FRAGMENT: u8 = 44;
/// IPv6 extension headers with the standard length format (8-octet units after the first
/// 8): Hop-by-Hop, Routing, Destination Options, Mobility, HIP, Shim6, experimental.
const IPV6_EXTENSIONS: [u8; 8] = [0, 43, 60, 135, 139, 140, 253, 254];
/// IPv6 Authentication Header, whose length counts 4-octet units after the first 8.
const IPV6_AH: u8 = 51;

fn u16be(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn u32be(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// The accounting requests of a capture, where it stops short, and the datagrams that could
/// not be read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub datagrams: Vec<Datagram>,
    /// Byte offset of a last record or block cut short (a capture killed mid-write), if
    /// any: the datagrams are those of every complete record before it.
    pub truncated_at: Option<usize>,
    /// Datagrams that may hold accounting requests and were not read whole: cut short by the
    /// capture's snaplen, or fragmented and not reassembled.
    pub incomplete: Incomplete,
}

/// Reads the accounting requests of every complete record of a classic pcap or pcapng
/// capture, in capture order (a fragmented one where its last fragment is), and says where
/// a record cut short ends it (nothing after it is read) and how many datagrams could not be
/// read whole.
///
/// # Errors
/// [`PcapError`] for a bad header, an unknown link type, a malformed pcapng block or
/// classic record (a fraction of a second out of range), a pcapng time out of range, or an
/// accounting request without a capture time.
pub fn read_capture(data: &[u8]) -> Result<Capture, PcapError> {
    read_capture_within(data, MEMORY_BYTES)
}

/// [`read_capture`] with pending fragments holding at most `limit_bytes`.
///
/// # Errors
/// As [`read_capture`].
pub fn read_capture_within(data: &[u8], limit_bytes: usize) -> Result<Capture, PcapError> {
    let mut stream = CaptureStream::within(data, data.len(), limit_bytes)?;
    let datagrams = stream.next_chunk(usize::MAX)?;
    Ok(Capture {
        datagrams,
        truncated_at: stream.truncated_at(),
        incomplete: stream.incomplete(),
    })
}

/// The format of the records being read.
enum Format {
    Classic(classic::Header),
    Ng(ng::Blocks),
}

/// A capture read a chunk of requests at a time, in the order and with the outcome of
/// [`read_capture`]: the source is read forwards through a window (the record being read
/// and what follows it, 1 MiB at a time), and the fragments waiting for the rest of their
/// datagram are held as [`read_capture`] holds them (at most [`MEMORY_BYTES`]), so its memory
/// does not grow with the capture.
pub struct CaptureStream<R> {
    input: Window<R>,
    format: Format,
    /// Offset of the next record or block.
    pos: usize,
    reader: Reader,
    /// Set when the capture has been read to its end (or to a record cut short).
    done: Option<Done>,
}

/// How a capture read to its end ended.
#[derive(Debug, Clone, Copy)]
struct Done {
    truncated_at: Option<usize>,
    incomplete: Incomplete,
}

impl<R: Read> CaptureStream<R> {
    /// Starts reading the first `len` bytes of `source` (a capture's length when opened;
    /// what is appended later is not read), checking the file header.
    ///
    /// # Errors
    /// [`PcapError::Magic`], [`PcapError::LinkType`] for a classic header, or
    /// [`PcapError::Io`].
    pub fn new(source: R, len: usize) -> Result<Self, PcapError> {
        Self::within(source, len, MEMORY_BYTES)
    }

    /// [`CaptureStream::new`] with pending fragments holding at most `limit_bytes`.
    ///
    /// # Errors
    /// As [`CaptureStream::new`].
    pub fn within(source: R, len: usize, limit_bytes: usize) -> Result<Self, PcapError> {
        Self::windowed(source, len, limit_bytes, window::READ_BYTES)
    }

    /// [`CaptureStream::within`] reading `read_bytes` at a time (tests read a few at a time).
    fn windowed(
        source: R,
        len: usize,
        limit_bytes: usize,
        read_bytes: usize,
    ) -> Result<Self, PcapError> {
        let mut input = Window::new(source, len, read_bytes);
        let (format, pos) = if input.get(0, 4)? == Some(ng::MAGIC.as_slice()) {
            (Format::Ng(ng::Blocks::new()), 0)
        } else {
            let header = classic::Header::read(&mut input)?;
            (Format::Classic(header), classic::FIRST_RECORD)
        };
        Ok(Self {
            input,
            format,
            pos,
            reader: Reader {
                datagrams: Vec::new(),
                reassembly: Some(Reassembler::new(limit_bytes)),
                cut: 0,
            },
            done: None,
        })
    }

    /// The next requests in capture order: at least one and at most `max` (and at least one
    /// whatever `max`), or none once the capture has been read to its end or to a record
    /// cut short.
    ///
    /// # Errors
    /// As [`read_capture`], and [`PcapError::Io`] when the file cannot be read. The stream
    /// ends at an error: the requests of the records before it were returned by earlier
    /// calls.
    pub fn next_chunk(&mut self, max: usize) -> Result<Vec<Datagram>, PcapError> {
        while self.done.is_none() && self.reader.datagrams.len() < max.max(1) {
            match self.step() {
                Ok(true) => {}
                Ok(false) => self.finish(None),
                Err(error) => {
                    self.finish(None);
                    return Err(error);
                }
            }
        }
        Ok(std::mem::take(&mut self.reader.datagrams))
    }

    /// Reads one record or block; false at the end of the capture (or at a record it ends
    /// inside, whose offset is kept).
    fn step(&mut self) -> Result<bool, PcapError> {
        if self.input.ends_at(self.pos) {
            return Ok(false);
        }
        self.input.release(self.pos);
        let next = match &mut self.format {
            Format::Classic(header) => header.record(&mut self.input, self.pos, &mut self.reader),
            Format::Ng(blocks) => blocks.block(&mut self.input, self.pos, &mut self.reader),
        }?;
        if let Some(next) = next {
            self.pos = next;
            return Ok(true);
        }
        self.finish(Some(self.pos));
        Ok(false)
    }

    fn finish(&mut self, truncated_at: Option<usize>) {
        if self.done.is_some() {
            return;
        }
        let mut incomplete = self
            .reader
            .reassembly
            .take()
            .map(Reassembler::finish)
            .unwrap_or_default();
        incomplete.cut += self.reader.cut;
        self.done = Some(Done {
            truncated_at,
            incomplete,
        });
    }

    /// Whether the capture has been read to its end (or stopped at an error).
    pub fn is_done(&self) -> bool {
        self.done.is_some()
    }

    /// Byte offset of a last record or block cut short, once the stream has ended there.
    pub fn truncated_at(&self) -> Option<usize> {
        self.done.and_then(|d| d.truncated_at)
    }

    /// The datagrams that may hold requests and were not read whole, once the stream has
    /// ended (nothing before: fragments still pending may complete).
    pub fn incomplete(&self) -> Incomplete {
        self.done.map(|d| d.incomplete).unwrap_or_default()
    }
}

/// What the records of either format feed: the requests found so far, the fragments
/// waiting for the rest of their datagram, and the datagrams (not fragmented) that may
/// hold requests and were cut short by the capture's snaplen.
struct Reader {
    datagrams: Vec<Datagram>,
    /// Taken when the capture ends, to count what it still holds.
    reassembly: Option<Reassembler>,
    cut: usize,
}

impl Reader {
    /// Takes one captured frame (`at`: its record's offset; no time: a Simple Packet Block;
    /// `cut`: captured shorter than it was, by the capture's snaplen).
    fn packet(
        &mut self,
        link_type: u32,
        frame: &[u8],
        time_us: Option<i64>,
        at: usize,
        cut: bool,
    ) -> Result<(), PcapError> {
        let Some(ip) = network_layer(link_type, frame) else {
            return Ok(());
        };
        let found = match ip.first().map(|b| b >> 4) {
            Some(4) => self.ipv4(ip, time_us, cut),
            Some(6) => self.ipv6(ip, time_us, cut),
            _ => None,
        };
        if let Some((source, payload)) = found {
            let time_us = time_us.ok_or(PcapError::Untimed { at })?;
            self.datagrams.push(Datagram {
                payload,
                source,
                time_us,
            });
        }
        Ok(())
    }

    /// Counts a datagram (not a fragment) the snaplen cut short, unless what was captured of
    /// it shows it is not an accounting request. Returns nothing to send.
    fn cut_short(&mut self, request: Option<bool>) -> Option<(String, Vec<u8>)> {
        if request != Some(false) {
            self.cut += 1;
        }
        None
    }

    fn ipv4(&mut self, ip: &[u8], time_us: Option<i64>, cut: bool) -> Option<(String, Vec<u8>)> {
        let ihl = usize::from(ip.first()? & 0x0f) * 4;
        let total = usize::from(u16be(ip, 2)?);
        let frag = u16be(ip, 6)?;
        if *ip.get(9)? != UDP || ihl < 20 {
            return None;
        }
        let source: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
        let body = ip.get(ihl..total.min(ip.len()))?;
        // The snaplen ended the frame inside the datagram (not only in what follows it).
        let cut = cut && ip.len() < total;
        let address = Ipv4Addr::from(source).to_string();
        let (offset, more) = (usize::from(frag & 0x1fff) * 8, frag & 0x2000 != 0);
        if offset == 0 && !more {
            if cut {
                return self.cut_short(shows_request(body));
            }
            return Some((address, accounting(body)?.to_vec()));
        }
        let destination: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
        let fragment = Fragment {
            key: Key {
                v6: false,
                source: widen(source),
                destination: widen(destination),
                protocol: UDP,
                id: u32::from(u16be(ip, 4)?),
            },
            offset,
            more,
            length: total - ihl,
            bytes: body,
            cut,
            first_header: UDP,
            accounting: if offset == 0 {
                shows_request(body)
            } else {
                None
            },
        };
        let (_, whole) = self.reassembly.as_mut()?.add(&fragment, time_us)?;
        Some((address, accounting(&whole)?.to_vec()))
    }

    fn ipv6(&mut self, ip: &[u8], time_us: Option<i64>, cut: bool) -> Option<(String, Vec<u8>)> {
        let length = usize::from(u16be(ip, 4)?);
        let source: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
        let body = ip.get(40..(40 + length).min(ip.len()))?;
        let cut = cut && ip.len() < 40 + length;
        let address = Ipv6Addr::from(source).to_string();
        let at = match headers(*ip.get(6)?, body) {
            Chain::Udp(udp) if cut => return self.cut_short(shows_request(udp)),
            Chain::Udp(udp) => return Some((address, accounting(udp)?.to_vec())),
            Chain::Fragment(at) => at,
            // Cut inside its extension headers: nothing says it is not a request.
            Chain::Short if cut => return self.cut_short(None),
            Chain::Other | Chain::Short => return None,
        };
        let Some(header) = body.get(at..at + 8) else {
            return if cut { self.cut_short(None) } else { None };
        };
        let next = *header.first()?;
        let field = u16be(header, 2)?;
        let (offset, more) = (usize::from(field & 0xfff8), field & 1 != 0);
        let bytes = body.get(at + 8..)?;
        if offset == 0 && !more {
            // An atomic fragment (RFC 6946): a whole datagram.
            return match headers(next, bytes) {
                Chain::Udp(udp) if cut => self.cut_short(shows_request(udp)),
                Chain::Udp(udp) => Some((address, accounting(udp)?.to_vec())),
                Chain::Short if cut => self.cut_short(None),
                _ => None,
            };
        }
        if next != UDP && next != IPV6_AH && !IPV6_EXTENSIONS.contains(&next) {
            return None; // TCP, ICMPv6, ESP, ...: never an accounting request
        }
        let fragment = Fragment {
            key: Key {
                v6: true,
                source,
                destination: ip.get(24..40)?.try_into().ok()?,
                protocol: 0,
                id: u32be(header, 4)?,
            },
            offset,
            more,
            length: length.checked_sub(at + 8)?,
            bytes,
            cut,
            first_header: next,
            accounting: if offset == 0 {
                match headers(next, bytes) {
                    Chain::Udp(udp) => shows_request(udp),
                    Chain::Fragment(_) | Chain::Other => Some(false),
                    Chain::Short => None,
                }
            } else {
                None
            },
        };
        let (first, whole) = self.reassembly.as_mut()?.add(&fragment, time_us)?;
        match headers(first, &whole) {
            Chain::Udp(udp) => Some((address, accounting(udp)?.to_vec())),
            _ => None,
        }
    }
}

fn widen(v4: [u8; 4]) -> [u8; 16] {
    let mut out = [0; 16];
    out[..4].copy_from_slice(&v4);
    out
}

/// Where a chain of IPv6 headers leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chain<'a> {
    /// A UDP header and what follows it.
    Udp(&'a [u8]),
    /// A Fragment header, at this offset.
    Fragment(usize),
    /// Another protocol (or ESP, or No Next Header).
    Other,
    /// The bytes end inside the chain.
    Short,
}

/// Walks the IPv6 headers in `bytes`, the first of them of type `next`.
fn headers(mut next: u8, bytes: &[u8]) -> Chain<'_> {
    let mut at = 0;
    loop {
        let units = match next {
            UDP => return bytes.get(at..).map_or(Chain::Short, Chain::Udp),
            IPV6_FRAGMENT => return Chain::Fragment(at),
            IPV6_AH => bytes.get(at + 1).map(|&n| (usize::from(n) + 2) * 4),
            n if IPV6_EXTENSIONS.contains(&n) => {
                bytes.get(at + 1).map(|&n| (usize::from(n) + 1) * 8)
            }
            _ => return Chain::Other,
        };
        let (Some(length), Some(&following)) = (units, bytes.get(at)) else {
            return Chain::Short;
        };
        next = following;
        at += length;
    }
}

/// The RADIUS payload of a UDP datagram to an accounting port, when it is an
/// Accounting-Request (its first octet, the code, is 4). An Accounting-Response to a NAS
/// whose own port is 1813, a Status-Server, an empty datagram: none is a request.
fn accounting(udp: &[u8]) -> Option<&[u8]> {
    let dport = u16be(udp, 2)?;
    let ulen = usize::from(u16be(udp, 4)?);
    if !ACCOUNTING_PORTS.contains(&dport) || ulen < 8 {
        return None;
    }
    let payload = udp.get(8..ulen.min(udp.len()))?;
    (payload.first() == Some(&ACCOUNTING_REQUEST)).then_some(payload)
}

/// Whether the start of a UDP datagram (a first fragment) shows an accounting request:
/// Some(false) for another port or RADIUS code, None when too little of it is there to say.
fn shows_request(udp: &[u8]) -> Option<bool> {
    let port = u16be(udp, 2)?;
    let code = udp.get(8);
    Some(ACCOUNTING_PORTS.contains(&port) && code.is_none_or(|&c| c == ACCOUNTING_REQUEST))
}

#[cfg(test)]
mod tests;
