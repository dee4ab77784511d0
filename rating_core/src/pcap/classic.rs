//! Classic pcap (libpcap's format): a file header naming the byte order, the time
//! resolution (micro- or nanoseconds) and the link type, then records of a capture time,
//! captured and original lengths, and the frame.

use super::{PcapError, Reader, LINK_TYPES};

/// A classic pcap's records; the offset of a last record cut short, if any.
pub fn read(data: &[u8], reader: &mut Reader) -> Result<Option<usize>, PcapError> {
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
    let mut pos = 24;
    let (per_second, unit) = if nanos {
        (1_000_000_000, "nanoseconds")
    } else {
        (1_000_000, "microseconds")
    };
    while pos < data.len() {
        let Some((secs, fraction, frame, original)) = record(data, pos, &u32at) else {
            return Ok(Some(pos));
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
        let time_us =
            i64::from(secs) * 1_000_000 + i64::from(if nanos { fraction / 1000 } else { fraction });
        let cut = frame.len() < original;
        reader.packet(linktype, frame, Some(time_us), pos, cut)?;
        pos += 16 + frame.len();
    }
    Ok(None)
}

/// The capture time (seconds and their fraction, as written), frame (as captured) and
/// original length of the record at `pos`; None when the file ends inside it.
fn record<'a>(
    data: &'a [u8],
    pos: usize,
    u32at: &impl Fn(&[u8], usize) -> Option<u32>,
) -> Option<(u32, u32, &'a [u8], usize)> {
    let rec = data.get(pos..pos.checked_add(16)?)?;
    let caplen = u32at(rec, 8)? as usize;
    let original = u32at(rec, 12)? as usize;
    let frame = data.get(pos + 16..(pos + 16).checked_add(caplen)?)?;
    Some((u32at(rec, 0)?, u32at(rec, 4)?, frame, original))
}
