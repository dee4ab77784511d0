//! pcapng blocks (draft-ietf-opsawg-pcapng): sections in either byte order, each with its
//! interfaces (link type, snaplen, time resolution and offset), and the packets of Enhanced,
//! Simple and (obsolete) Packet Blocks. Other blocks are skipped by their length.

use std::io::Read;

use super::window::Window;
use super::{PcapError, Reader, LINK_TYPES};

/// The Section Header Block's type, the same in either byte order.
pub const MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

const SECTION: u32 = 0x0a0d_0d0a;
const INTERFACE: u32 = 1;
const PACKET: u32 = 2;
const SIMPLE_PACKET: u32 = 3;
const ENHANCED_PACKET: u32 = 6;
const IF_TSRESOL: u16 = 9;
const IF_TSOFFSET: u16 = 14;

#[derive(Debug, Clone, Copy)]
struct Order {
    little: bool,
}

impl Order {
    fn u16(self, b: &[u8], at: usize) -> Option<u16> {
        let a: [u8; 2] = b.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(if self.little {
            u16::from_le_bytes(a)
        } else {
            u16::from_be_bytes(a)
        })
    }

    fn u32(self, b: &[u8], at: usize) -> Option<u32> {
        let a: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(if self.little {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        })
    }

    fn i64(self, a: [u8; 8]) -> i64 {
        if self.little {
            i64::from_le_bytes(a)
        } else {
            i64::from_be_bytes(a)
        }
    }
}

/// Units per second of an interface's timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolution {
    /// 10^n
    Decimal(u8),
    /// 2^n
    Binary(u8),
}

#[derive(Debug, Clone, Copy)]
struct Interface {
    link_type: u32,
    snaplen: u32,
    resolution: Resolution,
    /// `if_tsoffset`: seconds added to every timestamp.
    offset_s: i64,
}

impl Interface {
    /// A timestamp of this interface in µs since 1970 (rounded down), if an i64 holds it.
    fn time_us(&self, ticks: u64) -> Option<i64> {
        let t = i128::from(ticks);
        let us = match self.resolution {
            Resolution::Decimal(n) if n <= 6 => t * 10_i128.pow(u32::from(6 - n)),
            Resolution::Decimal(n) => 10_i128.checked_pow(u32::from(n - 6)).map_or(0, |d| t / d),
            Resolution::Binary(n) => (t * 1_000_000).checked_shr(u32::from(n)).unwrap_or(0),
        };
        i64::try_from(us + i128::from(self.offset_s) * 1_000_000).ok()
    }
}

fn malformed(at: usize, reason: impl Into<String>) -> PcapError {
    PcapError::Block {
        at,
        reason: reason.into(),
    }
}

/// The state a pcapng file's blocks are read with: the byte order and interfaces of the
/// current section.
#[derive(Debug, Clone)]
pub struct Blocks {
    order: Order,
    interfaces: Vec<Interface>,
}

impl Blocks {
    pub fn new() -> Self {
        Self {
            order: Order { little: true },
            interfaces: Vec::new(),
        }
    }

    /// Reads the block at `pos` into `reader`: the offset of the next one, or None when the
    /// file ends inside it.
    pub fn block<R: Read>(
        &mut self,
        input: &mut Window<R>,
        pos: usize,
        reader: &mut Reader,
    ) -> Result<Option<usize>, PcapError> {
        let Some((kind, body)) = block(input, pos, &mut self.order)? else {
            return Ok(None);
        };
        let order = self.order;
        match kind {
            SECTION => {
                section(body, order, pos)?;
                self.interfaces.clear();
            }
            INTERFACE => self.interfaces.push(interface(body, order, pos)?),
            ENHANCED_PACKET | PACKET => {
                // EPB: interface (32 bits); PB: interface (16), drops count (16). Then the
                // timestamp's high and low words, captured and original lengths (captured
                // under original: cut by the snaplen).
                let id = if kind == PACKET {
                    order.u16(body, 0).map(u32::from)
                } else {
                    order.u32(body, 0)
                };
                let fields = (
                    id,
                    order.u32(body, 4),
                    order.u32(body, 8),
                    order.u32(body, 12),
                    order.u32(body, 16),
                );
                let (Some(id), Some(high), Some(low), Some(captured), Some(original)) = fields
                else {
                    return Err(malformed(pos, "packet block shorter than its fields"));
                };
                let frame = body
                    .get(20..20 + captured as usize)
                    .ok_or_else(|| malformed(pos, "captured length runs past the block"))?;
                let face = described(&self.interfaces, id, pos)?;
                let ticks = (u64::from(high) << 32) | u64::from(low);
                let time_us = face.time_us(ticks).ok_or(PcapError::Time { at: pos })?;
                let cut = captured < original;
                reader.packet(face.link_type, frame, Some(time_us), pos, cut)?;
            }
            SIMPLE_PACKET => {
                // Interface 0; captured length = min(original length, snaplen, the block).
                let face = described(&self.interfaces, 0, pos)?;
                let original = order
                    .u32(body, 0)
                    .ok_or_else(|| malformed(pos, "simple packet block without its length"))?;
                let mut captured = (original as usize).min(body.len().saturating_sub(4));
                if face.snaplen != 0 {
                    captured = captured.min(face.snaplen as usize);
                }
                let frame = body.get(4..4 + captured).unwrap_or_default();
                let cut = captured < original as usize;
                reader.packet(face.link_type, frame, None, pos, cut)?;
            }
            _ => {} // statistics, name resolution, custom, ...: nothing to replay
        }
        Ok(Some(pos + body.len() + 12))
    }
}

/// The type and body (between the two length fields) of the block at `pos`, reading a
/// Section Header Block's byte order into `order`; None when the file ends inside it.
fn block<'a, R: Read>(
    input: &'a mut Window<R>,
    pos: usize,
    order: &mut Order,
) -> Result<Option<(u32, &'a [u8])>, PcapError> {
    if input.get(pos, 4)? == Some(MAGIC.as_slice()) {
        let Some(magic) = input.get(pos + 8, 4)? else {
            return Ok(None);
        };
        order.little = match magic {
            [0x4d, 0x3c, 0x2b, 0x1a] => true,
            [0x1a, 0x2b, 0x3c, 0x4d] => false,
            _ if pos == 0 => return Err(PcapError::Magic),
            _ => {
                return Err(malformed(
                    pos,
                    "section header with an unknown byte-order magic",
                ))
            }
        };
    }
    let Some(head) = input.get(pos, 8)? else {
        return Ok(None);
    };
    let (Some(kind), Some(length)) = (order.u32(head, 0), order.u32(head, 4)) else {
        return Ok(None);
    };
    let length = length as usize;
    if length < 12 || length % 4 != 0 {
        return Err(malformed(
            pos,
            format!("block length {length} is not a multiple of 4 of at least 12"),
        ));
    }
    let Some(block) = input.get(pos, length)? else {
        return Ok(None);
    };
    if order.u32(block, length - 4) != Some(length as u32) {
        return Err(malformed(
            pos,
            "the block's closing length differs from its opening one",
        ));
    }
    Ok(block.get(8..length - 4).map(|body| (kind, body)))
}

/// Checks a Section Header Block's body: version 1.x (a reader must not guess at another).
fn section(body: &[u8], order: Order, at: usize) -> Result<(), PcapError> {
    let (Some(major), Some(minor)) = (order.u16(body, 4), order.u16(body, 6)) else {
        return Err(malformed(at, "section header shorter than its fields"));
    };
    if body.len() < 16 {
        return Err(malformed(at, "section header shorter than its fields"));
    }
    if major != 1 {
        return Err(malformed(
            at,
            format!("section of pcapng version {major}.{minor} (this reader knows 1.x)"),
        ));
    }
    Ok(())
}

/// An Interface Description Block: link type, snaplen, `if_tsresol` and `if_tsoffset`.
fn interface(body: &[u8], order: Order, at: usize) -> Result<Interface, PcapError> {
    let (Some(link_type), Some(snaplen)) = (order.u16(body, 0), order.u32(body, 4)) else {
        return Err(malformed(
            at,
            "interface description shorter than its fields",
        ));
    };
    let mut face = Interface {
        link_type: u32::from(link_type),
        snaplen,
        resolution: Resolution::Decimal(6),
        offset_s: 0,
    };
    let mut options = body.get(8..).unwrap_or_default();
    while let (Some(code), Some(length)) = (order.u16(options, 0), order.u16(options, 2)) {
        if code == 0 {
            break; // opt_endofopt
        }
        let length = usize::from(length);
        let value = options
            .get(4..4 + length)
            .ok_or_else(|| malformed(at, format!("option {code} runs past the block")))?;
        match (code, value) {
            (IF_TSRESOL, &[v]) => {
                face.resolution = if v & 0x80 == 0 {
                    Resolution::Decimal(v)
                } else {
                    Resolution::Binary(v & 0x7f)
                };
            }
            (IF_TSOFFSET, &[a, b, c, d, e, f, g, h]) => {
                face.offset_s = order.i64([a, b, c, d, e, f, g, h]);
            }
            (IF_TSRESOL | IF_TSOFFSET, _) => {
                return Err(malformed(
                    at,
                    format!("option {code} has a value of {length} bytes"),
                ));
            }
            _ => {}
        }
        options = options
            .get(4 + length.next_multiple_of(4)..)
            .unwrap_or_default();
    }
    Ok(face)
}

/// The interface a packet names, which its section must have described, of a link type
/// this reader decodes.
fn described(interfaces: &[Interface], id: u32, at: usize) -> Result<Interface, PcapError> {
    let face = interfaces.get(id as usize).copied().ok_or_else(|| {
        malformed(
            at,
            format!("packet on interface {id}, not described in its section"),
        )
    })?;
    if !LINK_TYPES.contains(&face.link_type) {
        return Err(PcapError::InterfaceLinkType {
            at,
            interface: id,
            link_type: face.link_type,
        });
    }
    Ok(face)
}
