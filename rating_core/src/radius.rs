//! RADIUS Accounting-Request framing, attributes and authenticators (RFC 2865/2866/2869/3162).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use md5::{Digest, Md5};

/// Smallest and largest RADIUS packet (RFC 2865 section 3).
pub const MIN_LENGTH: usize = 20;
pub const MAX_LENGTH: usize = 4096;
pub const CODE_ACCOUNTING_REQUEST: u8 = 4;
pub const CODE_ACCOUNTING_RESPONSE: u8 = 5;

/// Why a packet was refused (each is a quarantine reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RadiusError {
    /// Fewer than 20 bytes: not even a header.
    TooShort(usize),
    /// Length field outside 20..=4096.
    BadLength(usize),
    /// The datagram is shorter than its Length field.
    Truncated { declared: usize, received: usize },
    /// A TLV shorter than 2 or running past Length.
    BadAttribute { offset: usize },
    /// Code other than Accounting-Request.
    NotAccountingRequest(u8),
    /// An attribute whose value has the wrong size for its type.
    WrongLength { attribute: u8, length: usize },
    /// An RFC 3162 prefix attribute whose Prefix-Length is over 128.
    BadPrefixLength { attribute: u8, prefix_length: u8 },
    /// A single-valued attribute appearing twice.
    Repeated(u8),
    /// Request Authenticator does not match the shared secret.
    BadAuthenticator,
}

impl fmt::Display for RadiusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort(n) => {
                write!(f, "radius: datagram of {n} bytes is shorter than a header")
            }
            Self::BadLength(n) => write!(f, "radius: Length {n} outside 20..4096"),
            Self::Truncated { declared, received } => write!(
                f,
                "radius: datagram of {received} bytes is shorter than its Length {declared}"
            ),
            Self::BadAttribute { offset } => {
                write!(f, "radius: attribute at offset {offset} has a bad length")
            }
            Self::NotAccountingRequest(c) => {
                write!(f, "radius: code {c} is not Accounting-Request")
            }
            Self::WrongLength { attribute, length } => write!(
                f,
                "radius: attribute {attribute} has a value of {length} bytes (wrong length)"
            ),
            Self::BadPrefixLength {
                attribute,
                prefix_length,
            } => write!(
                f,
                "radius: attribute {attribute} has a Prefix-Length of {prefix_length} (over 128)"
            ),
            Self::Repeated(a) => write!(f, "radius: attribute {a} repeated"),
            Self::BadAuthenticator => write!(f, "radius: bad Request Authenticator"),
        }
    }
}

impl std::error::Error for RadiusError {}

/// A framed packet: header fields and the attribute bytes (padding removed).
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    pub code: u8,
    pub identifier: u8,
    pub authenticator: &'a [u8],
    pub attributes: &'a [u8],
    /// The packet up to Length (what the authenticator covers).
    pub bytes: &'a [u8],
}

/// Checks header framing and TLV boundaries.
///
/// # Errors
/// [`RadiusError`] for any framing rule of RFC 2865 section 3 / 5.
pub fn frame(data: &[u8]) -> Result<Packet<'_>, RadiusError> {
    if data.len() < MIN_LENGTH {
        return Err(RadiusError::TooShort(data.len()));
    }
    let declared = usize::from(u16::from_be_bytes([data[2], data[3]]));
    if !(MIN_LENGTH..=MAX_LENGTH).contains(&declared) {
        return Err(RadiusError::BadLength(declared));
    }
    let Some(bytes) = data.get(..declared) else {
        return Err(RadiusError::Truncated {
            declared,
            received: data.len(),
        });
    };
    let attributes = &bytes[MIN_LENGTH..];
    let mut pos = 0;
    while pos < attributes.len() {
        let len = attributes.get(pos + 1).map_or(0, |&l| usize::from(l));
        if len < 2 || pos + len > attributes.len() {
            return Err(RadiusError::BadAttribute {
                offset: MIN_LENGTH + pos,
            });
        }
        pos += len;
    }
    Ok(Packet {
        code: bytes[0],
        identifier: bytes[1],
        authenticator: &bytes[4..20],
        attributes,
        bytes,
    })
}

/// Iterates `(type, value)` over well-framed attribute bytes.
pub fn attributes(attrs: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let ty = *attrs.get(pos)?;
        let len = usize::from(*attrs.get(pos + 1)?);
        let value = attrs.get(pos + 2..pos + len)?;
        pos += len.max(2);
        Some((ty, value))
    })
}

/// MD5(Code ‖ Id ‖ Length ‖ `middle` ‖ attributes ‖ secret).
fn authenticator(header: &[u8], middle: &[u8], attributes: &[u8], secret: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(header);
    h.update(middle);
    h.update(attributes);
    h.update(secret);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize());
    out
}

/// Whether an Accounting-Request's authenticator matches `secret` (RFC 2866 section 3).
#[must_use]
pub fn verify_request(p: &Packet<'_>, secret: &[u8]) -> bool {
    authenticator(&p.bytes[..4], &[0u8; 16], p.attributes, secret) == p.authenticator
}

/// The Accounting-Response (code 5, no attributes) acknowledging `request`.
///
/// # Errors
/// [`RadiusError`] when the request is not a well-framed packet.
pub fn accounting_response(request: &[u8], secret: &[u8]) -> Result<Vec<u8>, RadiusError> {
    Ok(response_to(&frame(request)?, secret).to_vec())
}

/// The Accounting-Response (code 5, same identifier, no attributes) to a framed request:
/// Authenticator = MD5(5 ‖ Id ‖ Length ‖ Request Authenticator ‖ secret).
#[must_use]
pub fn response_to(request: &Packet<'_>, secret: &[u8]) -> [u8; 20] {
    let header = [CODE_ACCOUNTING_RESPONSE, request.identifier, 0, 20];
    let mut out = [0u8; 20];
    out[..4].copy_from_slice(&header);
    out[4..].copy_from_slice(&authenticator(&header, request.authenticator, &[], secret));
    out
}

/// The attributes the accounting engine uses, validated for size and repetition.
#[derive(Debug, Default, Clone)]
pub struct Attrs<'a> {
    pub status_type: Option<u32>,
    pub acct_session_id: Option<&'a [u8]>,
    pub user_name: Option<&'a [u8]>,
    pub nas_ip_address: Option<Ipv4Addr>,
    pub nas_ipv6_address: Option<Ipv6Addr>,
    pub nas_identifier: Option<&'a [u8]>,
    pub nas_port: Option<u32>,
    pub nas_port_id: Option<&'a [u8]>,
    pub input_octets: Option<u32>,
    pub input_gigawords: Option<u32>,
    pub output_octets: Option<u32>,
    pub output_gigawords: Option<u32>,
    pub session_time_s: Option<u32>,
    pub event_timestamp_s: Option<u32>,
    pub delay_time_s: Option<u32>,
    pub terminate_cause: Option<u32>,
    pub framed_ip_address: Option<Ipv4Addr>,
    pub framed_ipv6_prefix: Option<(u8, Ipv6Addr)>,
    pub delegated_ipv6_prefix: Option<(u8, Ipv6Addr)>,
    pub calling_station_id: Option<&'a [u8]>,
    /// Message-Authenticator (80, RFC 3579): 16 octets, at most once. The Request
    /// Authenticator already covers it in an Accounting-Request, so it is not checked
    /// further.
    pub message_authenticator: Option<&'a [u8]>,
    pub class_count: u32,
}

fn int(ty: u8, v: &[u8]) -> Result<u32, RadiusError> {
    match <[u8; 4]>::try_from(v) {
        Ok(a) => Ok(u32::from_be_bytes(a)),
        Err(_) => Err(RadiusError::WrongLength {
            attribute: ty,
            length: v.len(),
        }),
    }
}

fn set<T>(slot: &mut Option<T>, ty: u8, v: T) -> Result<(), RadiusError> {
    if slot.is_some() {
        return Err(RadiusError::Repeated(ty));
    }
    *slot = Some(v);
    Ok(())
}

/// RFC 3162 prefix: Reserved(1) Prefix-Length(1) Prefix(0..16), bits past the length zero-filled.
/// The network is canonical: bits past the length that a NAS set anyway (RFC 3162 says
/// they must be zero) are cleared, as the detail-file reader does for the same attribute.
fn prefix(ty: u8, v: &[u8]) -> Result<(u8, Ipv6Addr), RadiusError> {
    let wrong = RadiusError::WrongLength {
        attribute: ty,
        length: v.len(),
    };
    if v.len() >= 2 && v.len() <= 18 && v[1] > 128 {
        return Err(RadiusError::BadPrefixLength {
            attribute: ty,
            prefix_length: v[1],
        });
    }
    if v.len() < 2 || v.len() > 18 || usize::from(v[1]).div_ceil(8) > v.len() - 2 {
        return Err(wrong);
    }
    let mut a = [0u8; 16];
    a[..v.len() - 2].copy_from_slice(&v[2..]);
    Ok((v[1], ipv6_network(Ipv6Addr::from(a), v[1])))
}

/// The first address of the /`len` network holding `ip` (`len` at most 128).
#[must_use]
pub fn ipv6_network(ip: Ipv6Addr, len: u8) -> Ipv6Addr {
    let mask = u128::MAX
        .checked_shl(128 - u32::from(len.min(128)))
        .unwrap_or(0);
    Ipv6Addr::from(u128::from(ip) & mask)
}

/// Reads the usage attributes of well-framed attribute bytes.
///
/// # Errors
/// [`RadiusError::WrongLength`] or [`RadiusError::Repeated`].
pub fn parse_attrs(attrs: &[u8]) -> Result<Attrs<'_>, RadiusError> {
    let mut a = Attrs::default();
    for (ty, v) in attributes(attrs) {
        match ty {
            1 => set(&mut a.user_name, ty, v)?,
            4 => {
                let ip = <[u8; 4]>::try_from(v).map_err(|_| RadiusError::WrongLength {
                    attribute: ty,
                    length: v.len(),
                })?;
                set(&mut a.nas_ip_address, ty, Ipv4Addr::from(ip))?;
            }
            5 => set(&mut a.nas_port, ty, int(ty, v)?)?,
            8 => {
                let ip = <[u8; 4]>::try_from(v).map_err(|_| RadiusError::WrongLength {
                    attribute: ty,
                    length: v.len(),
                })?;
                set(&mut a.framed_ip_address, ty, Ipv4Addr::from(ip))?;
            }
            25 => a.class_count += 1,
            31 => set(&mut a.calling_station_id, ty, v)?,
            32 => set(&mut a.nas_identifier, ty, v)?,
            40 => set(&mut a.status_type, ty, int(ty, v)?)?,
            41 => set(&mut a.delay_time_s, ty, int(ty, v)?)?,
            42 => set(&mut a.input_octets, ty, int(ty, v)?)?,
            43 => set(&mut a.output_octets, ty, int(ty, v)?)?,
            44 => set(&mut a.acct_session_id, ty, v)?,
            46 => set(&mut a.session_time_s, ty, int(ty, v)?)?,
            47 | 48 => {
                // Packet counters are never rated, but a wrong size is still malformed.
                int(ty, v)?;
            }
            49 => set(&mut a.terminate_cause, ty, int(ty, v)?)?,
            52 => set(&mut a.input_gigawords, ty, int(ty, v)?)?,
            53 => set(&mut a.output_gigawords, ty, int(ty, v)?)?,
            55 => set(&mut a.event_timestamp_s, ty, int(ty, v)?)?,
            80 => {
                if v.len() != 16 {
                    return Err(RadiusError::WrongLength {
                        attribute: ty,
                        length: v.len(),
                    });
                }
                set(&mut a.message_authenticator, ty, v)?;
            }
            87 => set(&mut a.nas_port_id, ty, v)?,
            95 => {
                let ip = <[u8; 16]>::try_from(v).map_err(|_| RadiusError::WrongLength {
                    attribute: ty,
                    length: v.len(),
                })?;
                set(&mut a.nas_ipv6_address, ty, Ipv6Addr::from(ip))?;
            }
            97 => set(&mut a.framed_ipv6_prefix, ty, prefix(ty, v)?)?,
            123 => set(&mut a.delegated_ipv6_prefix, ty, prefix(ty, v)?)?,
            _ => {}
        }
    }
    Ok(a)
}

/// Lossless-enough text of an octet string attribute (invalid UTF-8 replaced).
#[must_use]
pub fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0))
            .collect()
    }

    const GOLDEN: &str = "042a005bc0468ee46f4d6f5bdd5eb5ca28d854262806000000032c0a30303030303031410107616c6963650406c00002012e0600000e102a06000003e83406000000012b06ffffffff35060000000237066553ff10290600000000";

    #[test]
    fn golden_packet_verifies_and_answers() {
        let data = unhex(GOLDEN);
        let p = frame(&data).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(verify_request(&p, b"testing123"));
        assert!(!verify_request(&p, b"testing124"));
        let a = parse_attrs(p.attributes).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(a.status_type, Some(3));
        assert_eq!(a.acct_session_id, Some(&b"0000001A"[..]));
        assert_eq!(a.input_octets, Some(1000));
        assert_eq!(a.input_gigawords, Some(1));
        assert_eq!(a.output_octets, Some(u32::MAX));
        assert_eq!(a.output_gigawords, Some(2));
        let resp = accounting_response(&data, b"testing123").unwrap_or_default();
        assert_eq!(resp, unhex("052a0014d9e4d3c16591d8cceb1ac30dfbb7658c"));
    }

    #[test]
    fn ipv6_prefixes_read_as_canonical_networks() {
        let parsed = |v: &[u8]| {
            let mut attrs = vec![97, (v.len() + 2) as u8];
            attrs.extend_from_slice(v);
            parse_attrs(&attrs).map(|a| a.framed_ipv6_prefix)
        };
        let net = |s: &str| s.parse::<Ipv6Addr>().unwrap_or(Ipv6Addr::UNSPECIFIED);
        // Only the octets the length needs (RFC 3162), or all 16.
        let short = [0, 56, 0x20, 0x01, 0x0d, 0xb8, 0x12, 0x00, 0x00];
        assert_eq!(
            parsed(&short).ok(),
            Some(Some((56, net("2001:db8:1200::"))))
        );
        let mut full = vec![0, 56];
        full.extend_from_slice(&net("2001:db8:1200::").octets());
        assert_eq!(parsed(&full).ok(), Some(Some((56, net("2001:db8:1200::")))));
        // Bits past the length are cleared; /0 and /128 are whole.
        full[10] = 0xff;
        full[17] = 1;
        assert_eq!(parsed(&full).ok(), Some(Some((56, net("2001:db8:1200::")))));
        assert_eq!(parsed(&[0, 0]).ok(), Some(Some((0, Ipv6Addr::UNSPECIFIED))));
        full[1] = 128;
        assert_eq!(
            parsed(&full).ok(),
            Some(Some((128, net("2001:db8:1200:0:ff00::1"))))
        );
        // Too long a length, or fewer octets than it needs, is malformed.
        assert!(parsed(&[0, 129, 0]).is_err());
        assert!(parsed(&[0, 64, 0x20, 0x01]).is_err());
    }

    #[test]
    fn padding_is_ignored_and_short_datagram_rejected() {
        let mut data = unhex(GOLDEN);
        data.extend_from_slice(&[0, 0, 0]);
        assert!(frame(&data).is_ok());
        data.truncate(50);
        assert!(matches!(frame(&data), Err(RadiusError::Truncated { .. })));
    }
}
