//! Batch preparation: protobuf and raw RADIUS entries to validated, normalized records.
//!
//! Over ~400 lines because both entry forms normalize into one compact record here, next
//! to the content key that must hash them identically.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rustc_hash::{FxHashMap, FxHashSet};

use crate::proto::{self, Entry, WireError, MAX_ATTRIBUTE};
use crate::radius;

pub const STATUS_START: u8 = 1;
pub const STATUS_STOP: u8 = 2;
pub const STATUS_INTERIM: u8 = 3;
pub const STATUS_ON: u8 = 7;
pub const STATUS_OFF: u8 = 8;
/// Marks a quarantined record.
pub const STATUS_NONE: u8 = 0;

const US: i64 = 1_000_000;
/// The times a record may carry: from the Unix epoch (Event-Timestamp counts from it) to
/// the end of year 9999 (the last that ISO 8601 text, the API and the database all hold).
const MIN_TIME_US: i64 = 0;
const MAX_TIME_US: i64 = 253_402_300_799_999_999;

/// A byte range: in the batch bytes, or (with [`Span::ARENA`] set in `len`) in
/// [`Prepared::arena`] (text the core formatted, e.g. binary IP addresses).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub off: u32,
    pub len: u32,
}

impl Span {
    pub const ARENA: u32 = 1 << 31;
    #[must_use]
    pub fn is_empty(self) -> bool {
        self.len & !Self::ARENA == 0
    }
}

const HAS_INPUT: u8 = 1;
const HAS_OUTPUT: u8 = 2;
const INPUT_GW: u8 = 4;
const OUTPUT_GW: u8 = 8;
const HAS_TIME: u8 = 16;
const HAS_CAUSE: u8 = 32;
const SKEWED: u8 = 64;
const NO_EVENT_TIMESTAMP: u8 = 128;

/// One normalized accounting record (counters are 64-bit, gigawords folded in).
/// Compact (128 bytes): optional values are a presence bit plus a value.
#[derive(Debug, Clone, Copy, Default)]
pub struct Record {
    pub key: [u8; 16],
    input: u64,
    output: u64,
    /// Effective event time (clock-skew policy applied).
    pub event_us: i64,
    /// The other reading of the event time: arrival − Acct-Delay-Time when `event_us` is
    /// the Event-Timestamp, the Event-Timestamp when it was set aside as skewed, and
    /// `event_us` itself without one (or with one past the range of time). One session's
    /// records may be read either way (a NAS clock off by about the tolerance, a record
    /// delayed past it without Acct-Delay-Time saying so): either reading can place a
    /// record in its instance (`Engine::route`).
    pub alt_event_us: i64,
    pub arrival_us: i64,
    pub sid: Span,
    pub user: Span,
    pub calling: Span,
    pub framed: Span,
    /// Framed-IPv6-Prefix and Delegated-IPv6-Prefix, canonical text (`2001:db8::/56`).
    pub framed_prefix: Span,
    pub delegated_prefix: Span,
    /// Index into [`Prepared::nas_keys`]; `u32::MAX` when quarantined.
    pub nas: u32,
    session_time: u32,
    terminate_cause: u32,
    /// The entry's byte range in the batch.
    pub entry_off: u32,
    pub entry_len: u32,
    /// `STATUS_*`; `STATUS_NONE` when quarantined.
    pub status: u8,
    bits: u8,
}

impl Record {
    #[inline]
    fn opt<T>(&self, bit: u8, v: T) -> Option<T> {
        (self.bits & bit != 0).then_some(v)
    }
    #[must_use]
    pub fn input(&self) -> Option<u64> {
        self.opt(HAS_INPUT, self.input)
    }
    #[must_use]
    pub fn output(&self) -> Option<u64> {
        self.opt(HAS_OUTPUT, self.output)
    }
    /// Whether the record carried Input-Gigawords (no wrap can be inferred then).
    #[must_use]
    pub fn input_gw(&self) -> bool {
        self.bits & INPUT_GW != 0
    }
    #[must_use]
    pub fn output_gw(&self) -> bool {
        self.bits & OUTPUT_GW != 0
    }
    #[must_use]
    pub fn session_time(&self) -> Option<u32> {
        self.opt(HAS_TIME, self.session_time)
    }
    /// The session time a record stands at: a Start is at 0 whether or not it says so
    /// (most omit the attribute).
    #[must_use]
    pub fn time_in_session(&self) -> Option<u32> {
        match self.session_time() {
            None if self.status == STATUS_START => Some(0),
            t => t,
        }
    }
    /// The identity texts it carries: User-Name, Calling-Station-Id, Framed-IP-Address,
    /// Framed-IPv6-Prefix, Delegated-IPv6-Prefix.
    #[must_use]
    pub fn identity(&self) -> [Span; 5] {
        [
            self.user,
            self.calling,
            self.framed,
            self.framed_prefix,
            self.delegated_prefix,
        ]
    }
    #[must_use]
    pub fn terminate_cause(&self) -> Option<u32> {
        self.opt(HAS_CAUSE, self.terminate_cause)
    }
    /// Event-Timestamp disagreed with arrival − delay beyond the tolerance.
    #[must_use]
    pub fn skewed(&self) -> bool {
        self.bits & SKEWED != 0
    }
    /// The content key still lacks its time: a Start, or an Interim/Stop with a session
    /// time, sent without (trusted) Event-Timestamp is pinned by the start of the instance it
    /// belongs to ([`instance_key`]), which only `apply` knows.
    #[must_use]
    pub fn key_by_instance(&self) -> bool {
        self.timed_by_arrival()
            && (self.status == STATUS_START
                || (self.session_time().is_some()
                    && matches!(self.status, STATUS_STOP | STATUS_INTERIM)))
    }
    /// Sent without Event-Timestamp, or with a skewed one: the event time is arrival −
    /// Acct-Delay-Time.
    #[must_use]
    pub fn timed_by_arrival(&self) -> bool {
        self.bits & NO_EVENT_TIMESTAMP != 0
    }
    fn set<T: Default>(&mut self, bit: u8, v: Option<T>) -> T {
        match v {
            Some(x) => {
                self.bits |= bit;
                x
            }
            None => T::default(),
        }
    }
}

/// A decoded, validated batch; touches no session state. It refers to the batch bytes
/// by offset (no copy): pass the same bytes to `text` and `entry_bytes`.
#[derive(Debug, Default, Clone)]
pub struct Prepared {
    pub batch_id: String,
    pub arena: Vec<u8>,
    pub records: Vec<Record>,
    /// `(entry index, reason)`, ascending.
    pub quarantine: Vec<(u32, String)>,
    /// Distinct NAS keys of non-quarantined records, sorted.
    pub nas_keys: Vec<String>,
    /// Length of the batch these offsets refer to (a mismatch yields empty text).
    pub batch_len: usize,
    /// `(entry index, Accounting-Response)` of every raw entry whose authenticator matched
    /// and which was not quarantined, ascending: what the collector relays to the NAS once
    /// the record is durable (RFC 2866: no response to a request that was not recorded).
    pub responses: Vec<(u32, [u8; 20])>,
}

impl Prepared {
    /// The text of a span.
    #[must_use]
    pub fn text<'a>(&'a self, batch: &'a [u8], s: Span) -> &'a [u8] {
        let (src, len) = if s.len & Span::ARENA != 0 {
            (self.arena.as_slice(), s.len & !Span::ARENA)
        } else {
            (batch, s.len)
        };
        src.get(s.off as usize..(s.off as usize + len as usize))
            .unwrap_or_default()
    }

    /// An entry's exact `AccountingEntry` bytes.
    #[must_use]
    pub fn entry_bytes<'a>(&self, batch: &'a [u8], r: &Record) -> &'a [u8] {
        batch
            .get(r.entry_off as usize..(r.entry_off + r.entry_len) as usize)
            .unwrap_or_default()
    }
}

/// Configuration `prepare` reads (secrets and clock-skew tolerance per NAS key).
pub trait PrepareConfig {
    /// Shared secret for a (canonical) source address.
    fn secret(&self, source: &str) -> Option<&[u8]>;
    /// Clock-skew tolerance for a NAS key, in seconds.
    fn skew_tolerance_s(&self, nas_key: &str) -> i64;
    /// The entries come from the ledger: their authenticators were verified when they
    /// were accepted, with the secret of that time, so a raw packet is decoded without
    /// one (and gets no Accounting-Response).
    fn ledger_replay(&self) -> bool {
        false
    }
}

/// Canonical text of an address (IPv4/IPv6 re-formatted; anything else as given). An
/// IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, how a dual-stack socket reports an IPv4
/// peer) is that IPv4 address.
#[must_use]
pub fn canonical_address(text: &str) -> String {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return ip.to_canonical().to_string();
    }
    // "192.0.2.1:1813" / "[2001:db8::1]:1813": the port is not part of a NAS identity.
    match text.parse::<std::net::SocketAddr>() {
        Ok(sa) => sa.ip().to_canonical().to_string(),
        Err(_) => text.to_owned(),
    }
}

#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

const S: [u64; 6] = [
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
    0x4528_21e6_38d0_1377,
    0xbe54_66cf_34e9_0c6c,
];

/// A fixed-seed 128-bit hash; stable across processes and versions (ledger primary key).
#[derive(Clone, Copy)]
struct KeyHasher {
    a: u64,
    b: u64,
}

impl KeyHasher {
    fn new() -> Self {
        Self { a: S[0], b: S[1] }
    }
    #[inline]
    fn word(&mut self, x: u64) {
        let t = fold(self.a ^ x, S[2]);
        self.a = self.b.rotate_left(23) ^ t;
        self.b = fold(self.b ^ x ^ S[3], S[4]).wrapping_add(t);
    }
    #[inline]
    fn bytes(&mut self, b: &[u8]) {
        self.word(b.len() as u64);
        self.chunks(b);
    }
    /// The bytes in 8-byte words (the caller hashes the length).
    #[inline]
    fn chunks(&mut self, b: &[u8]) {
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            self.word(u64::from_le_bytes(a));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut a = [0u8; 8];
            a[..rest.len()].copy_from_slice(rest);
            self.word(u64::from_le_bytes(a));
        }
    }
    // Inlined, as `content_key` is: a 16-byte result returned through memory is written as
    // two words and read back as one, a load that cannot be forwarded from the stores and
    // waits for them (a tenth of `prepare`'s samples).
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn finish(self) -> [u8; 16] {
        let x = fold(self.a ^ S[5], self.b ^ S[0]);
        let y = fold(self.b ^ S[1], x ^ S[2]) ^ self.a;
        let x = fold(x ^ S[3], y ^ S[4]);
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&x.to_le_bytes());
        out[8..].copy_from_slice(&y.to_le_bytes());
        out
    }
}

/// 64-bit hash of a string (NAS keys), stable across processes.
#[must_use]
pub fn stable_hash(b: &[u8]) -> u64 {
    let mut h = KeyHasher::new();
    h.bytes(b);
    let k = h.finish();
    let mut a = [0u8; 8];
    a.copy_from_slice(&k[..8]);
    u64::from_le_bytes(a)
}

/// 128-bit identity of (engine NAS id, session id): `(index hash, check hash)`.
#[must_use]
pub fn identity_hash(nas: u32, sid: &[u8]) -> (u64, u64) {
    let mut h = KeyHasher::new();
    h.word(u64::from(nas));
    h.bytes(sid);
    let k = h.finish();
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&k[..8]);
    b.copy_from_slice(&k[8..]);
    (u64::from_le_bytes(a), u64::from_le_bytes(b))
}

/// The content key of RADIUS.md: NAS key, session id, status type, session time, both
/// counters, event time (Event-Timestamp as sent, else arrival − delay, whole seconds) and
/// terminate cause. Transport fields (delay, identifier, authenticator) are never part of it.
#[must_use]
#[allow(clippy::inline_always)] // See `KeyHasher::finish`.
#[inline(always)]
pub fn content_key(
    nas_hash: u64,
    sid: &[u8],
    status: u8,
    session_time: Option<u32>,
    input: Option<u64>,
    output: Option<u64>,
    key_time_s: i64,
    terminate_cause: Option<u32>,
) -> [u8; 16] {
    // Eight words: presence bits, small fields and the sid length share one word.
    let presence = u64::from(session_time.is_some())
        | u64::from(input.is_some()) << 1
        | u64::from(output.is_some()) << 2
        | u64::from(terminate_cause.is_some()) << 3;
    let mut h = KeyHasher::new();
    h.word(nas_hash);
    h.word(
        (sid.len() as u64 & 0xffff)
            | u64::from(status) << 16
            | presence << 24
            | u64::from(session_time.unwrap_or(0)) << 32,
    );
    h.chunks(sid);
    h.word(input.unwrap_or(0));
    h.word(output.unwrap_or(0));
    h.word(key_time_s as u64);
    h.word(u64::from(terminate_cause.unwrap_or(0)));
    h.finish()
}

/// The content key of a record whose time is its instance's start (see
/// [`Record::key_by_instance`]): `key` from `prepare`, completed with that start (µs).
/// A record's copies land on the same instance and get the same key; the same content in
/// another generation of a reused id does not.
#[must_use]
pub fn instance_key(key: &[u8; 16], start_us: i64) -> [u8; 16] {
    let mut h = KeyHasher::new();
    h.chunks(key);
    h.word(start_us as u64);
    h.finish()
}

fn counter(octets: Option<u32>, gigawords: Option<u32>) -> Option<u64> {
    octets.map(|o| (u64::from(gigawords.unwrap_or(0)) << 32) | u64::from(o))
}

/// Fields common to both entry forms, before NAS interning.
struct Fields<'a> {
    status: u32,
    sid: &'a [u8],
    /// `sid` is known to be UTF-8 (a protobuf string field, validated when decoded).
    sid_utf8: bool,
    user: &'a [u8],
    calling: &'a [u8],
    framed: FramedIp<'a>,
    /// Framed-IPv6-Prefix, Delegated-IPv6-Prefix.
    prefixes: [Prefix; 2],
    nas: NasId<'a>,
    input: Option<u64>,
    output: Option<u64>,
    input_gw: bool,
    output_gw: bool,
    session_time: Option<u32>,
    event_ts_us: Option<i64>,
    delay_s: u32,
    terminate_cause: Option<u32>,
    arrival_us: i64,
    /// A raw packet's Accounting-Response (its authenticator matched the secret).
    response: Option<[u8; 20]>,
}

enum FramedIp<'a> {
    Text(&'a [u8]),
    V4(std::net::Ipv4Addr),
}

#[derive(Clone, Copy)]
enum NasId<'a> {
    Text(&'a [u8]),
    V4(std::net::Ipv4Addr),
    V6(std::net::Ipv6Addr),
}

fn non_empty(v: Option<&[u8]>) -> Option<&[u8]> {
    v.filter(|b| !b.is_empty())
}

struct NasTable {
    text: FxHashMap<Vec<u8>, u32>,
    v4: FxHashMap<u32, u32>,
    v6: FxHashMap<u128, u32>,
    by_key: FxHashMap<String, u32>,
    keys: Vec<String>,
    hashes: Vec<u64>,
    tolerance_us: Vec<i64>,
}

impl NasTable {
    fn new() -> Self {
        Self {
            text: FxHashMap::default(),
            v4: FxHashMap::default(),
            v6: FxHashMap::default(),
            by_key: FxHashMap::default(),
            keys: Vec::new(),
            hashes: Vec::new(),
            tolerance_us: Vec::new(),
        }
    }

    fn add(&mut self, key: String, cfg: &dyn PrepareConfig) -> u32 {
        if let Some(&i) = self.by_key.get(&key) {
            return i;
        }
        let i = self.keys.len() as u32;
        self.hashes.push(stable_hash(key.as_bytes()));
        self.tolerance_us
            .push(cfg.skew_tolerance_s(&key).saturating_mul(US));
        self.by_key.insert(key.clone(), i);
        self.keys.push(key);
        i
    }

    #[inline]
    fn intern(&mut self, id: NasId<'_>, cfg: &dyn PrepareConfig) -> u32 {
        match id {
            NasId::Text(t) => {
                if let Some(&i) = self.text.get(t) {
                    return i;
                }
                let key = canonical_address(&storable_text(t));
                let i = self.add(key, cfg);
                self.text.insert(t.to_vec(), i);
                i
            }
            NasId::V4(ip) => {
                let k = u32::from(ip);
                if let Some(&i) = self.v4.get(&k) {
                    return i;
                }
                let i = self.add(ip.to_string(), cfg);
                self.v4.insert(k, i);
                i
            }
            NasId::V6(ip) => {
                let k = u128::from(ip);
                if let Some(&i) = self.v6.get(&k) {
                    return i;
                }
                let i = self.add(ip.to_canonical().to_string(), cfg);
                self.v6.insert(k, i);
                i
            }
        }
    }
}

fn push(arena: &mut Vec<u8>, b: &[u8]) -> Span {
    let off = arena.len() as u32;
    arena.extend_from_slice(b);
    Span {
        off,
        len: b.len() as u32 | Span::ARENA,
    }
}

/// A span of `b`, which must be a sub-slice of `batch`; text elsewhere goes to the arena.
#[allow(clippy::inline_always)] // Four per record; as a call it cost ~20 instructions more.
#[inline(always)]
fn span_in(batch: &[u8], arena: &mut Vec<u8>, b: &[u8]) -> Span {
    let base = batch.as_ptr() as usize;
    let at = b.as_ptr() as usize;
    if b.is_empty() {
        Span::default()
    } else if at >= base && at + b.len() <= base + batch.len() {
        Span {
            off: (at - base) as u32,
            len: b.len() as u32,
        }
    } else {
        push(arena, b)
    }
}

/// Text as the database stores it: invalid UTF-8 sequences and NUL octets (which
/// the database's text refuses) each become U+FFFD. Borrowed when there is neither.
pub(crate) fn storable_text(b: &[u8]) -> Cow<'_, str> {
    let text = String::from_utf8_lossy(b);
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        text
    }
}

/// Whether `b` holds a NUL octet, a word at a time (these texts are a few words long; the
/// byte-wise search cost more than the rest of the record's text handling).
#[allow(clippy::inline_always)] // Once per record, for the session id.
#[inline(always)]
fn has_nul(b: &[u8]) -> bool {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let Some(last) = b.len().checked_sub(8) else {
        return b.contains(&0);
    };
    // Whole words, the last one overlapping its predecessor.
    let mut at = 0;
    loop {
        let start = at.min(last);
        let word = b
            .get(start..start + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map_or(0, u64::from_le_bytes);
        if word.wrapping_sub(LOW) & !word & HIGH != 0 {
            return true;
        }
        if start == last {
            return false;
        }
        at += 8;
    }
}

/// The field's text, quoted for an error message (at most 64 characters of it).
fn quoted(text: &[u8]) -> String {
    let t = String::from_utf8_lossy(text);
    match t.char_indices().nth(64) {
        Some((cut, _)) => format!("{:?}...", &t[..cut]),
        None => format!("{t:?}"),
    }
}

/// Per-batch scratch of `prepare`'s decoded entries, reused from one to the next.
#[derive(Default)]
struct Scratch<'a> {
    slots: proto::RecordSlots<'a>,
    /// Addresses found well-formed earlier in the batch, by kind: a NAS's address comes in
    /// each of its records, and parsing an IPv6 or `address:port` text is costly.
    addresses: FxHashSet<(AddressKind, &'a [u8])>,
}

/// Checks an address field of a decoded record (empty: absent). A dotted quad is checked
/// in place; other text once per batch.
#[allow(clippy::inline_always)] // Most records leave most address fields out.
#[inline(always)]
fn check_address<'a>(
    field: &str,
    text: &'a [u8],
    kind: AddressKind,
    seen: &mut FxHashSet<(AddressKind, &'a [u8])>,
) -> Result<(), String> {
    if text.is_empty() {
        return Ok(());
    }
    check_present_address(field, text, kind, seen)
}

#[inline(never)]
fn check_present_address<'a>(
    field: &str,
    text: &'a [u8],
    kind: AddressKind,
    seen: &mut FxHashSet<(AddressKind, &'a [u8])>,
) -> Result<(), String> {
    // (A dotted quad is an IP address and an IPv4 address, never an IPv6 one.)
    if kind != AddressKind::V6 && is_ipv4(text) {
        return Ok(());
    }
    if seen.contains(&(kind, text)) {
        return Ok(());
    }
    parse_address(field, text, kind)?;
    seen.insert((kind, text));
    Ok(())
}

/// Whether `t` is an IPv4 address as `Ipv4Addr::from_str` reads one: four decimal numbers
/// up to 255 joined by dots, without signs, spaces or leading zeros ("0" itself is fine).
fn is_ipv4(t: &[u8]) -> bool {
    let digit = |c: u8| c.is_ascii_digit();
    let mut parts = t.split(|&c| c == b'.');
    for _ in 0..4 {
        let ok = match parts.next() {
            Some(&[a]) => digit(a),
            Some(&[a, b]) => a != b'0' && digit(a) && digit(b),
            Some(&[a, b, c]) => {
                a != b'0' && digit(a) && digit(b) && digit(c) && (a, b, c) <= (b'2', b'5', b'5')
            }
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    parts.next().is_none()
}

/// Parses an address field (not empty) with the standard library's parsers.
#[inline(never)]
fn parse_address(field: &str, text: &[u8], kind: AddressKind) -> Result<(), String> {
    let t = std::str::from_utf8(text).unwrap_or_default();
    let (ok, what) = match kind {
        AddressKind::V4 => (t.parse::<Ipv4Addr>().is_ok(), "an IPv4 address"),
        AddressKind::V6 => (t.parse::<Ipv6Addr>().is_ok(), "an IPv6 address"),
        // A packet's source, with or without its port.
        AddressKind::Source => (
            t.parse::<IpAddr>().is_ok() || t.parse::<std::net::SocketAddr>().is_ok(),
            "an IP address",
        ),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{field}: not {what}: {}", quoted(text)))
    }
}

/// An IPv6 prefix field of a decoded record (empty: absent) as (length, network).
/// "address/length" in any IPv6 notation, or a bare address (/128); bits past the length
/// are cleared, as a raw packet's are ([`radius::ipv6_network`]).
#[inline]
fn ipv6_prefix(field: &str, text: &[u8]) -> Result<Prefix, String> {
    if text.is_empty() {
        return Ok(Prefix::NONE);
    }
    parse_ipv6_prefix(field, text).map(Prefix::from)
}

/// An IPv6 prefix field of a record: (length, network), `len` [`Prefix::ABSENT`] when the
/// record has none. A plain value that is written and copied whole: as an
/// `Option<(u8, Ipv6Addr)>` (18 bytes, byte-aligned) the absent case was a one-byte store
/// copied on with wider loads, and every record waited on that store in `prepare`.
#[derive(Clone, Copy)]
struct Prefix {
    net: u128,
    len: u32,
}

impl Prefix {
    const ABSENT: u32 = u32::MAX;
    const NONE: Self = Self {
        net: 0,
        len: Self::ABSENT,
    };

    fn from(p: Option<(u8, Ipv6Addr)>) -> Self {
        p.map_or(Self::NONE, |(len, net)| Self {
            net: u128::from(net),
            len: u32::from(len),
        })
    }

    fn get(self) -> Option<(u8, Ipv6Addr)> {
        (self.len != Self::ABSENT).then(|| (self.len as u8, Ipv6Addr::from(self.net)))
    }
}

/// `ipv6_prefix` of a present field, out of line: most records have none.
#[inline(never)]
fn parse_ipv6_prefix(field: &str, text: &[u8]) -> Result<Option<(u8, Ipv6Addr)>, String> {
    let t = std::str::from_utf8(text).unwrap_or_default();
    let (address, length) = t.split_once('/').unwrap_or((t, "128"));
    // Digits only (`parse` alone would take "+56").
    let length = (length.bytes().all(|b| b.is_ascii_digit()))
        .then(|| length.parse::<u8>().ok())
        .flatten()
        .filter(|&l| l <= 128);
    match (address.parse::<Ipv6Addr>(), length) {
        (Ok(ip), Some(len)) => Ok(Some((len, radius::ipv6_network(ip, len)))),
        _ => Err(format!("{field}: not an IPv6 prefix: {}", quoted(text))),
    }
}

/// A prefix's canonical text in the arena: the address as RFC 5952 writes it (what
/// `server.validation` stores for a static IPv6 identity), then "/length".
fn push_prefix(arena: &mut Vec<u8>, prefix: Option<(u8, Ipv6Addr)>) -> Span {
    use std::io::Write;
    let Some((len, ip)) = prefix else {
        return Span::default();
    };
    let off = arena.len();
    // Writing to a Vec cannot fail.
    let _ = write!(arena, "{ip}/{len}");
    Span {
        off: off as u32,
        len: (arena.len() - off) as u32 | Span::ARENA,
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum AddressKind {
    V4,
    V6,
    Source,
}

/// A decoded entry's fields; `body` is a sub-slice of `batch`, read in place there (the
/// bytes after a record let its varints be read a word at a time).
fn from_proto<'a>(
    batch: &'a [u8],
    body: &'a [u8],
    default_arrival_us: i64,
    scratch: &mut Scratch<'a>,
) -> Result<Fields<'a>, String> {
    let at = (body.as_ptr() as usize).wrapping_sub(batch.as_ptr() as usize);
    let r = if at <= batch.len() && body.len() <= batch.len() - at {
        proto::decode_record_in(batch, at, at + body.len(), &mut scratch.slots)
    } else {
        proto::decode_record(body)
    }
    .map_err(|e| e.describe(proto::RECORD_FIELDS))?;
    let seen = &mut scratch.addresses;
    check_address(
        "nas_ip_address",
        r.nas_ip_address.unwrap_or_default(),
        AddressKind::V4,
        seen,
    )?;
    check_address(
        "nas_ipv6_address",
        r.nas_ipv6_address.unwrap_or_default(),
        AddressKind::V6,
        seen,
    )?;
    check_address(
        "framed_ip_address",
        r.framed_ip_address,
        AddressKind::V4,
        seen,
    )?;
    check_address(
        "source_address",
        r.source_address,
        AddressKind::Source,
        seen,
    )?;
    let prefixes = [
        ipv6_prefix("framed_ipv6_prefix", r.framed_ipv6_prefix)?,
        ipv6_prefix("delegated_ipv6_prefix", r.delegated_ipv6_prefix)?,
    ];
    let nas = if let Some(id) = non_empty(r.nas_identifier) {
        NasId::Text(id)
    } else if let Some(ip) = non_empty(r.nas_ipv6_address) {
        NasId::Text(ip)
    } else if let Some(ip) = non_empty(r.nas_ip_address) {
        NasId::Text(ip)
    } else {
        NasId::Text(r.source_address)
    };
    Ok(Fields {
        status: r.status_type,
        sid: r.acct_session_id,
        sid_utf8: true,
        user: r.user_name,
        calling: r.calling_station_id,
        framed: FramedIp::Text(r.framed_ip_address),
        prefixes,
        nas,
        input: counter(r.input_octets, r.input_gigawords),
        output: counter(r.output_octets, r.output_gigawords),
        input_gw: r.input_gigawords.is_some(),
        output_gw: r.output_gigawords.is_some(),
        session_time: r.session_time_s,
        event_ts_us: r.event_timestamp_us,
        delay_s: r.delay_time_s.unwrap_or(0),
        terminate_cause: r.terminate_cause,
        arrival_us: r.arrival_us.unwrap_or(default_arrival_us),
        response: None,
    })
}

fn from_raw<'a>(
    buf: &'a [u8],
    default_arrival_us: i64,
    cfg: &dyn PrepareConfig,
) -> Result<Fields<'a>, String> {
    let raw = proto::decode_raw(buf).map_err(|e| e.describe(proto::RAW_FIELDS))?;
    let p = radius::frame(raw.packet).map_err(|e| e.to_string())?;
    if p.code != radius::CODE_ACCOUNTING_REQUEST {
        return Err(radius::RadiusError::NotAccountingRequest(p.code).to_string());
    }
    let secret = if cfg.ledger_replay() {
        None
    } else {
        let source = canonical_address(&String::from_utf8_lossy(raw.source_address));
        let Some(secret) = cfg.secret(&source) else {
            return Err(format!(
                "radius: no shared secret for source address {source:?}"
            ));
        };
        if !radius::verify_request(&p, secret) {
            return Err(radius::RadiusError::BadAuthenticator.to_string());
        }
        Some(secret)
    };
    let a = radius::parse_attrs(p.attributes).map_err(|e| e.to_string())?;
    let nas = if let Some(id) = non_empty(a.nas_identifier) {
        NasId::Text(id)
    } else if let Some(ip) = a.nas_ipv6_address {
        NasId::V6(ip)
    } else if let Some(ip) = a.nas_ip_address {
        NasId::V4(ip)
    } else {
        NasId::Text(raw.source_address)
    };
    if a.status_type == Some(0) {
        // (0 below stands for "no Acct-Status-Type".)
        return Err("unknown Acct-Status-Type 0".into());
    }
    Ok(Fields {
        status: a.status_type.unwrap_or(0),
        sid: a.acct_session_id.unwrap_or_default(),
        sid_utf8: false,
        user: a.user_name.unwrap_or_default(),
        calling: a.calling_station_id.unwrap_or_default(),
        framed: match a.framed_ip_address {
            Some(ip) => FramedIp::V4(ip),
            None => FramedIp::Text(b""),
        },
        prefixes: [
            Prefix::from(a.framed_ipv6_prefix),
            Prefix::from(a.delegated_ipv6_prefix),
        ],
        nas,
        input: counter(a.input_octets, a.input_gigawords),
        output: counter(a.output_octets, a.output_gigawords),
        input_gw: a.input_gigawords.is_some(),
        output_gw: a.output_gigawords.is_some(),
        session_time: a.session_time_s,
        event_ts_us: a.event_timestamp_s.map(|s| i64::from(s) * US),
        delay_s: a.delay_time_s.unwrap_or(0),
        terminate_cause: a.terminate_cause,
        arrival_us: raw.arrival_us.unwrap_or(default_arrival_us),
        response: secret.map(|secret| radius::response_to(&p, secret)),
    })
}

fn nas_is_empty(id: NasId<'_>) -> bool {
    matches!(id, NasId::Text(t) if t.is_empty())
}

/// The registered Acct-Status-Types (RFC 2866, RFC 2867) that are not session or NAS
/// accounting: tunnel records and Failed. They are quarantined like unknown ones, under
/// their name.
fn status_name(status: u32) -> Option<&'static str> {
    Some(match status {
        9 => "Tunnel-Start",
        10 => "Tunnel-Stop",
        11 => "Tunnel-Reject",
        12 => "Tunnel-Link-Start",
        13 => "Tunnel-Link-Stop",
        14 => "Tunnel-Link-Reject",
        15 => "Failed",
        _ => return None,
    })
}

/// Decodes and validates a serialized `StreamAccountingRequest`.
///
/// # Errors
/// A [`WireError`] only when the outer message is malformed; defects inside an entry
/// quarantine that entry.
#[inline(never)] // One call per batch; kept whole for profiles.
pub fn prepare(
    batch: &[u8],
    default_arrival_us: i64,
    cfg: &dyn PrepareConfig,
) -> Result<Prepared, WireError> {
    // Offsets are 31-bit (the top bit of a span length marks the arena).
    if batch.len() >= Span::ARENA as usize {
        return Err(WireError::Length);
    }
    let split = proto::split_batch(batch)?;
    let mut out = Prepared {
        batch_id: split.batch_id,
        arena: Vec::new(),
        records: Vec::with_capacity(split.entries.len()),
        quarantine: Vec::new(),
        nas_keys: Vec::new(),
        batch_len: batch.len(),
        responses: Vec::new(),
    };
    let mut nas = NasTable::new();
    let mut scratch = Scratch::default();
    for (index, &(start, end)) in split.entries.iter().enumerate() {
        let entry = &batch[start..end];
        // Filled in place (a 104-byte record copied into the vector cost ~30 moves).
        out.records.push(Record {
            entry_off: start as u32,
            entry_len: (end - start) as u32,
            nas: u32::MAX,
            arrival_us: default_arrival_us,
            event_us: default_arrival_us,
            alt_event_us: default_arrival_us,
            ..Record::default()
        });
        let Some(rec) = out.records.last_mut() else {
            continue;
        };
        match prepare_one(
            batch,
            entry,
            default_arrival_us,
            cfg,
            &mut nas,
            &mut out.arena,
            &mut scratch,
            rec,
        ) {
            Ok(response) => {
                if let Some(response) = response {
                    out.responses.push((index as u32, response));
                }
            }
            Err(reason) => {
                rec.status = STATUS_NONE;
                rec.nas = u32::MAX;
                rec.key = [0; 16];
                out.quarantine.push((index as u32, reason));
            }
        }
    }
    // Sort the NAS keys and renumber the records' indices.
    let mut order: Vec<u32> = (0..nas.keys.len() as u32).collect();
    order.sort_by(|&a, &b| nas.keys[a as usize].cmp(&nas.keys[b as usize]));
    let mut rank = vec![0u32; order.len()];
    for (new, &old) in order.iter().enumerate() {
        rank[old as usize] = new as u32;
    }
    // (Another pass over every record only when first appearance is not sorted order.)
    if rank
        .iter()
        .enumerate()
        .any(|(new, &old)| new != old as usize)
    {
        for r in &mut out.records {
            if r.nas != u32::MAX {
                r.nas = rank[r.nas as usize];
            }
        }
    }
    out.nas_keys = order
        .iter()
        .map(|&o| nas.keys[o as usize].clone())
        .collect();
    Ok(out)
}

fn prepare_one<'a>(
    batch: &'a [u8],
    entry: &'a [u8],
    default_arrival_us: i64,
    cfg: &dyn PrepareConfig,
    nas: &mut NasTable,
    arena: &mut Vec<u8>,
    scratch: &mut Scratch<'a>,
    rec: &mut Record,
) -> Result<Option<[u8; 20]>, String> {
    let f = match proto::decode_entry(entry).map_err(|e| e.describe(proto::ENTRY_FIELDS))? {
        Entry::Decoded(b) => from_proto(batch, b, default_arrival_us, scratch)?,
        Entry::Raw(b) => from_raw(b, default_arrival_us, cfg)?,
        Entry::Empty => return Err("entry has neither a decoded record nor a raw packet".into()),
    };
    if !(MIN_TIME_US..=MAX_TIME_US).contains(&f.arrival_us) {
        return Err(format!(
            "arrival_time out of range (1970-01-01 to 9999-12-31 UTC): {} s",
            f.arrival_us.div_euclid(US)
        ));
    }
    rec.arrival_us = f.arrival_us;
    let status = match f.status {
        0 => return Err("missing Acct-Status-Type".into()),
        1 | 2 | 3 | 7 | 8 => f.status as u8,
        s => {
            return Err(match status_name(s) {
                Some(name) => format!("Acct-Status-Type {s} ({name}) is not session accounting"),
                None => format!("unknown Acct-Status-Type {s}"),
            })
        }
    };
    let is_session = matches!(status, STATUS_START | STATUS_STOP | STATUS_INTERIM);
    if is_session && f.sid.is_empty() {
        return Err("missing Acct-Session-Id".into());
    }
    if nas_is_empty(f.nas) {
        return Err(
            "no NAS identity (no NAS-Identifier, NAS-IP(v6)-Address or source address)".into(),
        );
    }
    let framed_text = match f.framed {
        FramedIp::Text(t) => t,
        FramedIp::V4(_) => b"",
    };
    // A session id is identity, held and stored as text: one that is not UTF-8 is taken as
    // the database stores it (each invalid sequence replaced by U+FFFD), so the engine finds
    // the instance again after a reload. The content key keeps the exact bytes.
    // (ASCII first: a word at a time, where the general check costs ~200 instructions.)
    // A NUL octet (legal in a RADIUS string; PostgreSQL's text cannot hold it) is stored as
    // U+FFFD likewise, in every text field.
    let lossy_sid = if (f.sid_utf8 || f.sid.is_ascii() || std::str::from_utf8(f.sid).is_ok())
        && !has_nul(f.sid)
    {
        None
    } else {
        Some(storable_text(f.sid).into_owned())
    };
    let sid_text = lossy_sid.as_ref().map_or(f.sid, |t| t.as_bytes());
    let nas_text = match f.nas {
        NasId::Text(t) => t,
        NasId::V4(_) | NasId::V6(_) => b"",
    };
    for (name, text) in [
        ("Acct-Session-Id", f.sid),
        ("User-Name", f.user),
        ("Calling-Station-Id", f.calling),
        ("Framed-IP-Address", framed_text),
        ("NAS identity", nas_text),
    ] {
        if text.len() > MAX_ATTRIBUTE {
            return Err(format!(
                "{name} longer than a RADIUS attribute allows ({MAX_ATTRIBUTE} bytes)"
            ));
        }
    }
    let n = nas.intern(f.nas, cfg);
    let base = f
        .arrival_us
        .checked_sub(i64::from(f.delay_s) * US)
        .filter(|&t| t >= MIN_TIME_US)
        .ok_or_else(|| "arrival_time - Acct-Delay-Time is before 1970-01-01".to_string())?;
    let tol = nas.tolerance_us[n as usize];
    let (event_us, alt_event_us, skewed) = match f.event_ts_us {
        // (An Event-Timestamp before 1970 or past 9999 disagrees with any arrival there is.)
        Some(ts)
            if ts.abs_diff(base) <= tol.unsigned_abs()
                && (MIN_TIME_US..=MAX_TIME_US).contains(&ts) =>
        {
            (ts, base, false)
        }
        Some(ts) if (MIN_TIME_US..=MAX_TIME_US).contains(&ts) => (base, ts, true),
        Some(_) => (base, base, true),
        None => (base, base, false),
    };
    // Event time in the key: the NAS's Event-Timestamp. Without one, arrival − delay
    // differs between a record's copies (two collectors' clocks, a retransmit's whole-second
    // Acct-Delay-Time), so a Start, or an Interim/Stop with a session time, is pinned by the
    // start of its instance instead (`apply` completes the key: `instance_key`); anything
    // else by arrival − delay in whole seconds. A skewed Event-Timestamp is not the event's
    // time (a NAS whose clock is stuck, at 1970 after a reboot without a clock source, sends
    // one value in every record, which would make a second reboot's Accounting-On or a
    // reused id's Start a copy of the first): such a record is keyed as one without it.
    let trusted_ts = f.event_ts_us.filter(|_| !skewed);
    let by_instance = trusted_ts.is_none()
        && (status == STATUS_START
            || (f.session_time.is_some() && matches!(status, STATUS_STOP | STATUS_INTERIM)));
    let key_time_s = match trusted_ts {
        Some(ts) => ts.div_euclid(US),
        None if by_instance => i64::MIN,
        None => base.div_euclid(US),
    };
    if trusted_ts.is_none() {
        rec.bits |= NO_EVENT_TIMESTAMP;
    }
    rec.status = status;
    rec.nas = n;
    rec.sid = span_in(batch, arena, sid_text); // text outside the batch goes to the arena
                                               // (A NUL in these is replaced when the output columns are built: `TextBuilder`.)
    rec.user = span_in(batch, arena, f.user);
    rec.calling = span_in(batch, arena, f.calling);
    rec.framed = match f.framed {
        FramedIp::Text(t) => span_in(batch, arena, t),
        FramedIp::V4(ip) => push(arena, ip.to_string().as_bytes()),
    };
    rec.framed_prefix = push_prefix(arena, f.prefixes[0].get());
    rec.delegated_prefix = push_prefix(arena, f.prefixes[1].get());
    rec.input = rec.set(HAS_INPUT, f.input);
    rec.output = rec.set(HAS_OUTPUT, f.output);
    if f.input_gw {
        rec.bits |= INPUT_GW;
    }
    if f.output_gw {
        rec.bits |= OUTPUT_GW;
    }
    rec.session_time = rec.set(HAS_TIME, f.session_time);
    rec.event_us = event_us;
    rec.alt_event_us = alt_event_us;
    if skewed {
        rec.bits |= SKEWED;
    }
    rec.terminate_cause = rec.set(HAS_CAUSE, f.terminate_cause);
    rec.key = content_key(
        nas.hashes[n as usize],
        f.sid,
        status,
        f.session_time,
        f.input,
        f.output,
        key_time_s,
        f.terminate_cause,
    );
    Ok(f.response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_nul_finds_a_nul_at_every_position_and_only_a_nul() {
        for len in 0..=24 {
            // Bytes that are not NUL but trip naive word tricks (0x80, 0x01, 0xFF).
            let base: Vec<u8> = (0..len).map(|i| [0x80, 0x01, 0xFF, b'a'][i % 4]).collect();
            assert!(!has_nul(&base), "len {len}");
            for at in 0..len {
                let mut b = base.clone();
                b[at] = 0;
                assert!(has_nul(&b), "len {len}, NUL at {at}");
            }
        }
    }

    /// The canonical text a decoded prefix field is stored as, or the quarantine reason.
    fn stored(text: &str) -> Result<String, String> {
        let mut arena = Vec::new();
        let span = push_prefix(
            &mut arena,
            ipv6_prefix("framed_ipv6_prefix", text.as_bytes())?.get(),
        );
        let p = Prepared {
            arena,
            ..Prepared::default()
        };
        Ok(String::from_utf8_lossy(p.text(&[], span)).into_owned())
    }

    #[test]
    fn decoded_ipv6_prefixes_are_stored_canonical() {
        for (given, canonical) in [
            ("2001:db8:1200::/56", "2001:db8:1200::/56"),
            ("2001:0DB8:1200:0000::/056", "2001:db8:1200::/56"),
            ("2001:db8::1/64", "2001:db8::/64"),
            ("2001:db8::1", "2001:db8::1/128"),
            ("::/0", "::/0"),
            ("2001:db8:0:1:1:1:1:1/128", "2001:db8:0:1:1:1:1:1/128"),
            ("::ffff:192.0.2.1/128", "::ffff:192.0.2.1/128"),
        ] {
            assert_eq!(stored(given).as_deref(), Ok(canonical), "{given}");
        }
        assert_eq!(stored("").as_deref(), Ok(""));
    }

    #[test]
    fn decoded_ipv6_prefix_names_its_field_when_it_is_not_one() {
        for bad in [
            "2001:db8::/129",
            "2001:db8::/",
            "2001:db8::/+56",
            "2001:db8::/56/1",
            "192.0.2.0/24",
            "2001:db8::1%eth0/64",
            "prefix",
        ] {
            let reason = stored(bad).err().unwrap_or_default();
            assert!(
                reason.starts_with("framed_ipv6_prefix: not an IPv6 prefix"),
                "{bad}: {reason}"
            );
        }
    }
}
