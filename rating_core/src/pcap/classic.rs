//! Classic pcap (libpcap's format): a file header naming the byte order, the time
//! resolution (micro- or nanoseconds) and the link type, then records of a capture time,
//! captured and original lengths, and the frame.

use std::io::Read;

use super::window::Window;
use super::{PcapError, Reader, LINK_TYPES};

/// What a classic pcap's file header says of its records.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    little: bool,
    nanos: bool,
    link_type: u32,
}

/// Offset of the first record.
pub const FIRST_RECORD: usize = 24;

impl Header {
    /// Reads the file header.
    pub fn read<R: Read>(input: &mut Window<R>) -> Result<Self, PcapError> {
        let header = input.get(0, FIRST_RECORD)?.ok_or(PcapError::Magic)?;
        let magic = [header[0], header[1], header[2], header[3]];
        let (little, nanos) = match magic {
            [0xd4, 0xc3, 0xb2, 0xa1] => (true, false),
            [0xa1, 0xb2, 0xc3, 0xd4] => (false, false),
            [0x4d, 0x3c, 0xb2, 0xa1] => (true, true),
            [0xa1, 0xb2, 0x3c, 0x4d] => (false, true),
            _ => return Err(PcapError::Magic),
        };
        let mut face = Self {
            little,
            nanos,
            link_type: 0,
        };
        face.link_type = face.u32at(header, 20).ok_or(PcapError::Magic)? & 0x0fff_ffff;
        if !LINK_TYPES.contains(&face.link_type) {
            return Err(PcapError::LinkType(face.link_type));
        }
        Ok(face)
    }

    fn u32at(self, b: &[u8], at: usize) -> Option<u32> {
        let a: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(if self.little {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        })
    }

    /// Reads the record at `pos` into `reader`: the offset of the next one, or None when the
    /// file ends inside it.
    pub fn record<R: Read>(
        self,
        input: &mut Window<R>,
        pos: usize,
        reader: &mut Reader,
    ) -> Result<Option<usize>, PcapError> {
        let Some(rec) = input.get(pos, 16)? else {
            return Ok(None);
        };
        let fields = (
            self.u32at(rec, 0),
            self.u32at(rec, 4),
            self.u32at(rec, 8),
            self.u32at(rec, 12),
        );
        let (Some(secs), Some(fraction), Some(caplen), Some(original)) = fields else {
            return Ok(None);
        };
        let (caplen, original) = (caplen as usize, original as usize);
        let Some(frame) = input.get(pos + 16, caplen)? else {
            return Ok(None);
        };
        let (per_second, unit) = if self.nanos {
            (1_000_000_000, "nanoseconds")
        } else {
            (1_000_000, "microseconds")
        };
        // A fraction past a second is no time a writer meant: carrying it into the seconds
        // would move the arrival (by up to 4,294 s), which rating and clock-skew checks use.
        if fraction >= per_second {
            return Err(PcapError::Record {
                at: pos,
                reason: format!(
                    "its fraction of a second is {fraction} {unit}, not under {per_second}"
                ),
            });
        }
        let micros = if self.nanos {
            fraction / 1000
        } else {
            fraction
        };
        let time_us = i64::from(secs) * 1_000_000 + i64::from(micros);
        let cut = caplen < original;
        reader.packet(self.link_type, frame, Some(time_us), pos, cut)?;
        Ok(Some(pos + 16 + caplen))
    }
}
