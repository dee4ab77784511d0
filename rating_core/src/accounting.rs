//! Session instances, generations, deltas, dedup, stale sweep and NAS reboots (RADIUS.md).
//!
//! The engine holds the live state of one tenant. `apply` runs a prepared batch through
//! dedup ▸ session instance ▸ deltas ▸ hourly buckets ▸ flags and returns columnar output.
//!
//! Longer than the house ~400 lines on purpose: instance routing, the delta rules and the
//! session storage are one state machine; the output columns ride along.

use std::fmt;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::batch_keys::BatchKeys;
use crate::prefetch;
use crate::record::{
    self, PrepareConfig, Prepared, Record, STATUS_INTERIM, STATUS_NONE, STATUS_START, STATUS_STOP,
};
use crate::slot_index::SlotIndex;

pub const OUTCOME_ACCEPTED: u8 = 1;
pub const OUTCOME_DUPLICATE: u8 = 2;
pub const OUTCOME_LATE: u8 = 3;
pub const OUTCOME_QUARANTINED: u8 = 4;

pub const LOST_START: u32 = 1;
pub const COUNTER_RESET: u32 = 2;
pub const WRAP_INFERRED: u32 = 4;
pub const STOP_REGRESSION: u32 = 8;
pub const STALE_CLOSED: u32 = 16;
pub const LATE_STOP: u32 = 32;
pub const NAS_REBOOT_CLOSED: u32 = 64;
/// Accounting-On/Offs remembered per NAS (repeats, and sessions that started before one).
pub const ONOFF_MEMORY: usize = 8;
pub const CLOCK_SKEW: u32 = 128;
pub const INTERIM_AFTER_STOP: u32 = 256;
pub const GENERATION_FROM_START_GAP: u32 = 512;

/// Flag bits and their names, in bit order.
pub const FLAG_NAMES: [(u32, &str); 10] = [
    (LOST_START, "lost_start"),
    (COUNTER_RESET, "counter_reset"),
    (WRAP_INFERRED, "wrap_inferred"),
    (STOP_REGRESSION, "stop_regression"),
    (STALE_CLOSED, "stale_closed"),
    (LATE_STOP, "late_stop"),
    (NAS_REBOOT_CLOSED, "nas_reboot_closed"),
    (CLOCK_SKEW, "clock_skew"),
    (INTERIM_AFTER_STOP, "interim_after_stop"),
    (GENERATION_FROM_START_GAP, "generation_from_start_gap"),
];

/// Names of the flag bits set in `flags`.
#[must_use]
pub fn flag_names(flags: u32) -> Vec<&'static str> {
    FLAG_NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|&(_, name)| name)
        .collect()
}

const US: i64 = 1_000_000;
const HOUR_US: i64 = 3600 * US;
const NONE: u32 = u32::MAX;
/// `sweep` drops closed instances whose last update is older than this: late Stops,
/// interim-after-stop detection and generation numbering look back this far.
pub const CLOSED_RETENTION_US: i64 = 48 * HOUR_US;
/// How many records ahead `apply` prefetches a record's index line (see `Engine::touch`).
const PREFETCH_INDEX: usize = 16;
/// How many records ahead `apply` reads that index entry and prefetches the session.
const PREFETCH_SESSION: usize = 8;
/// Identity hashes of the records from the current one to `PREFETCH_INDEX` ahead.
const TAG_RING: usize = 32;
const _: () = assert!(
    TAG_RING > PREFETCH_INDEX && PREFETCH_INDEX > PREFETCH_SESSION && TAG_RING.is_power_of_two()
);
const WRAP: u64 = 1 << 32;
/// Event-Timestamp and Acct-Session-Time are whole seconds, so records of one session imply
/// starts up to this far apart: within it of an instance's start is that instance's start.
const START_SLACK_US: i64 = 2 * US;

/// Errors of engine operations (never of individual records: those are quarantined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// The batch bytes are not a `StreamAccountingRequest`.
    Wire(crate::proto::WireError),
    /// `load_sessions` columns are inconsistent.
    Columns(String),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Wire(e) => write!(
                f,
                "batch is not a StreamAccountingRequest: {}",
                e.describe(crate::proto::BATCH_FIELDS)
            ),
            Self::Columns(s) => write!(f, "session columns: {s}"),
        }
    }
}

impl std::error::Error for EngineError {}

/// Accounting policy of one NAS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NasPolicy {
    /// Input octets are download on this NAS.
    pub swap_direction: bool,
    /// A counter going down (no gigawords sent) is a 32-bit wrap, not a reset.
    pub infer_wrap: bool,
    pub interim_interval_s: u32,
    pub stale_multiplier: u32,
    pub grace_s: u32,
    /// Event-Timestamp is believed within this distance of arrival − delay; also the
    /// distance between implied start times beyond which a record starts a new generation.
    pub clock_skew_tolerance_s: u32,
}

impl Default for NasPolicy {
    fn default() -> Self {
        Self {
            swap_direction: false,
            infer_wrap: false,
            interim_interval_s: 600,
            stale_multiplier: 3,
            grace_s: 300,
            clock_skew_tolerance_s: 300,
        }
    }
}

impl NasPolicy {
    /// No update for longer than this closes a session as stale. Saturates: a policy
    /// whose threshold is past the range of time (k and the interval near 2^32) never
    /// closes a session, where the product wrapped negative and closed every one.
    #[must_use]
    pub fn stale_after_us(&self) -> i64 {
        i64::from(self.stale_multiplier)
            .saturating_mul(i64::from(self.interim_interval_s))
            .saturating_add(i64::from(self.grace_s))
            .saturating_mul(US)
    }
    fn gap_us(&self) -> i64 {
        i64::from(self.clock_skew_tolerance_s) * US
    }
}

const STATE_OPEN: u8 = 0;
const STATE_STOPPED: u8 = 1;
/// Closed without a Stop (stale sweep, NAS reboot, superseded generation).
const STATE_CLOSED_NO_STOP: u8 = 2;
/// A slot on the free list.
const STATE_FREE: u8 = 3;
/// Internal bit of `Session::flags` (never output): the slot has an `Engine::carry` entry.
const HAS_CARRY: u16 = 1 << 15;
/// Bit of `Session::flags` that is output and loaded but is not an anomaly (`flag_names`
/// skips it): the instance took a Stop. A row closed without a Stop (`stale_closed`,
/// `nas_reboot_closed`) and stopped later by a Stop without Acct-Terminate-Cause is told
/// apart by it when loaded, so an Interim after that Stop stays without usage.
pub const STOP_RECEIVED: u32 = 1 << 14;
/// Bit of `Session::flags` that is output and loaded but is not an anomaly: the instance's
/// start was read from a (trusted) Event-Timestamp, not from arrival − Acct-Delay-Time. A
/// record's other reading of its time ([`Record::alt_event_us`]) is compared only with
/// starts read the same way (`Engine::route`).
pub const START_BY_EVENT_TIMESTAMP: u32 = 1 << 13;
/// Bits of `Session::flags` that are output and loaded but are not anomalies: the input
/// (output) mark is the counter of a record at the instance's newest session time, in the
/// NAS's direction. A record older than that one with a counter above the mark (before any
/// reset or wrap) shows that the counter went down between the two: a reset (or a wrap)
/// delivered before the record it follows, counted as in arrival order (`Engine::update`).
/// Without the bit the mark came from an older record, and the newer ones carried no
/// counter in that direction (no Octets, a Stop's zeros): the older record raises the mark.
pub const MARK_IN_AT_NEWEST: u32 = 1 << 12;
pub const MARK_OUT_AT_NEWEST: u32 = 1 << 11;

/// One session instance: 80 bytes (asserted below), plus its session id in [`Strings`], an
/// 8-byte index entry, and an entry in `Engine::carry` only after a counter reset.
///
/// The engine keeps what the delta rules need. User-Name, Calling-Station-Id and
/// Framed-IP-Address are identity the database holds: output rows carry them from the
/// batch's records (see `Touched::text`), and the projection keeps the first it is given.
#[derive(Debug, Clone)]
struct Session {
    start_us: i64,
    stop_us: i64,
    last_update_us: i64,
    hwm_in: u64,
    hwm_out: u64,
    /// First 64 bits of the content key of the last record applied (a repeat of that
    /// record is a duplicate). Output and loaded as 16 bytes, the last 8 zero.
    last_key: u64,
    nas: u32,
    generation: u32,
    session_time: u32,
    terminate_cause: u32,
    /// Older instance of the same index chain (older generation or a shared tag).
    prev: u32,
    /// Output row of the current call (see `Touched::row`).
    row_tag: u32,
    /// Offset of the session id in [`Strings`] (at most 255 bytes; RADIUS allows 253).
    str_off: u32,
    /// Flag bits (ten defined; see `FLAG_NAMES`).
    flags: u16,
    sid_len: u8,
    state: u8,
}

impl Session {
    fn live(&self) -> bool {
        self.state != STATE_FREE
    }
}

/// Closed as stale (by a sweep, or superseded by a new generation): the session may have
/// gone on past its last update, so its end is unknown. One closed by an Accounting-On/Off
/// ended by then, and one with a Stop at its stop.
fn end_unknown(s: &Session) -> bool {
    s.state == STATE_CLOSED_NO_STOP
        && u32::from(s.flags) & (STALE_CLOSED | NAS_REBOOT_CLOSED) == STALE_CLOSED
}

/// Begun by a Start with a trusted Event-Timestamp: its start is that exact time (not
/// inferred from an update's session time, nor read from an arrival).
fn exact_start(s: &Session) -> bool {
    u32::from(s.flags) & (START_BY_EVENT_TIMESTAMP | LOST_START) == START_BY_EVENT_TIMESTAMP
}

/// Sent before the instance began, both read by the NAS's clock: the record's trusted
/// Event-Timestamp is older than a start read from a Start's ([`exact_start`]). Such a record
/// is another (older) session's.
fn sent_before_start(r: &Record, s: &Session) -> bool {
    !r.timed_by_arrival() && exact_start(s) && r.event_us < s.start_us
}

/// One buffer holding every session id (no allocation per session). Freed text is
/// garbage until `compact` rewrites the buffer.
#[derive(Default)]
struct Strings {
    data: Vec<u8>,
    garbage: usize,
}

/// `Session::sid_len` of an id of `LONG_SID` bytes or more: its length is the two bytes
/// (little-endian) before its text. A session id is at most 253 octets, but its text is
/// longer when it is not UTF-8 (each invalid octet is U+FFFD, three bytes): up to
/// `MAX_SID_TEXT`.
const LONG_SID: u8 = u8::MAX;
/// The longest session id text: 253 octets, each stored as U+FFFD.
pub const MAX_SID_TEXT: usize = 3 * 253;

impl Strings {
    fn store(&mut self, sid: &[u8]) -> (u32, u8) {
        let off = self.data.len() as u32;
        let sid = &sid[..sid.len().min(MAX_SID_TEXT)];
        if sid.len() < usize::from(LONG_SID) {
            self.data.extend_from_slice(sid);
            return (off, sid.len() as u8);
        }
        self.data
            .extend_from_slice(&(sid.len() as u16).to_le_bytes());
        self.data.extend_from_slice(sid);
        (off, LONG_SID)
    }

    /// Where `s`'s id is in `data`: (start of its text, length of its text, bytes it
    /// takes with its length prefix).
    fn span(&self, s: &Session) -> (usize, usize, usize) {
        let start = s.str_off as usize;
        if s.sid_len < LONG_SID {
            let n = usize::from(s.sid_len);
            return (start, n, n);
        }
        let n = self
            .data
            .get(start..start + 2)
            .map_or(0, |b| usize::from(u16::from_le_bytes([b[0], b[1]])));
        (start + 2, n, n + 2)
    }

    fn sid<'a>(&'a self, s: &Session) -> &'a [u8] {
        let (start, n, _) = self.span(s);
        self.data.get(start..start + n).unwrap_or_default()
    }

    fn release(&mut self, s: &Session) {
        self.garbage += self.span(s).2;
    }
}

/// Index tag of a session identity (NAS id, session id). Tags may collide: instances are
/// matched on the NAS id and the session id itself. Only ever held in memory, so a fast
/// multiply-fold over the id's words (one per 8 bytes) rather than the stable key hash.
#[inline]
fn sid_tag(nas: u32, sid: &[u8]) -> u32 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    const M: u64 = 0xbf58_476d_1ce4_e5b9;
    let mix = |a: u64, b: u64| {
        let r = u128::from(a) * u128::from(b);
        (r as u64) ^ ((r >> 64) as u64)
    };
    let mut h = (u64::from(nas) << 32 | (sid.len() as u64 & 0xffff_ffff)) ^ K;
    let mut chunks = sid.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = mix(h ^ u64::from_le_bytes(w), M);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = mix(h ^ u64::from_le_bytes(w), M);
    }
    let h = mix(h, K);
    (h ^ (h >> 32)) as u32
}

struct NasState {
    key: String,
    seq: Option<i64>,
    policy: NasPolicy,
    /// Content keys of the NAS's recent Accounting-On/Off records (dedup of repeats).
    /// With each, its status, event time and whether it was timed by its arrival.
    last_onoff: Vec<([u8; 16], u8, i64, bool)>,
    /// The latest start of any stored instance of the NAS the engine does not hold
    /// (forgotten, or left out of a load); `i64::MIN` when it holds every instance ever
    /// applied or loaded, so a session id it does not hold has no stored instance either,
    /// and `i64::MAX` when it cannot tell.
    omitted_start_max: i64,
}

impl NasState {
    fn complete(&self) -> bool {
        self.omitted_start_max == i64::MIN
    }
}

/// Identity fields of a session row, in order: User-Name, Calling-Station-Id,
/// Framed-IP-Address, Framed-IPv6-Prefix, Delegated-IPv6-Prefix.
const IDENTITY_FIELDS: usize = 5;

/// A column of strings in one buffer (no allocation per row).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StrColumn {
    data: String,
    ends: Vec<usize>,
}

impl StrColumn {
    #[must_use]
    pub fn len(&self) -> usize {
        self.ends.len()
    }
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
    /// Row `i` (empty when out of range).
    #[must_use]
    pub fn get(&self, i: usize) -> &str {
        let start = if i == 0 {
            0
        } else {
            self.ends.get(i - 1).copied().unwrap_or(0)
        };
        let end = self.ends.get(i).copied().unwrap_or(start);
        self.data.get(start..end).unwrap_or_default()
    }
    /// Room for `rows` more rows of `bytes` more text.
    fn reserve(&mut self, rows: usize, bytes: usize) {
        self.data.reserve(bytes);
        self.ends.reserve(rows);
    }
    pub fn push(&mut self, v: &str) {
        self.data.push_str(v);
        self.ends.push(self.data.len());
    }
    /// Appends bytes as text: invalid UTF-8 and NUL (which the database's text refuses)
    /// replaced by U+FFFD, as the session id is in `prepare`.
    pub fn push_bytes(&mut self, v: &[u8]) {
        self.push(&record::storable_text(v));
    }
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// Builds a [`StrColumn`] from byte strings, validating UTF-8 once over the whole buffer
/// rather than once per row (rows are short; per-row validation cost ~12% of `apply`).
#[derive(Debug, Default)]
struct TextBuilder {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl TextBuilder {
    fn with_capacity(rows: usize, bytes: usize) -> Self {
        Self {
            data: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(rows),
        }
    }

    #[inline]
    fn push(&mut self, v: &[u8]) {
        self.data.extend_from_slice(v);
        self.ends.push(self.data.len());
    }

    /// The column; a row that is not UTF-8 on its own, or holds NUL, gets those bytes
    /// replaced, exactly as [`StrColumn::push_bytes`] would (valid rows always concatenate
    /// to valid text, but invalid rows may too, so row boundaries are checked as well).
    fn finish(self) -> StrColumn {
        let ends = self.ends;
        match String::from_utf8(self.data) {
            Ok(data)
                if memchr::memchr(0, data.as_bytes()).is_none()
                    && ends.iter().all(|&e| data.is_char_boundary(e)) =>
            {
                StrColumn { data, ends }
            }
            Ok(data) => Self::per_row(data.as_bytes(), &ends),
            Err(e) => Self::per_row(e.as_bytes(), &ends),
        }
    }

    fn per_row(data: &[u8], ends: &[usize]) -> StrColumn {
        let mut out = StrColumn::default();
        let mut start = 0;
        for &end in ends {
            out.push_bytes(&data[start..end]);
            start = end;
        }
        out
    }
}

impl<S: AsRef<str>> FromIterator<S> for StrColumn {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut c = Self::default();
        for v in iter {
            c.push(v.as_ref());
        }
        c
    }
}

/// Session instances in columns (output of `apply`, input of `load_sessions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionTable {
    pub nas_key: StrColumn,
    pub acct_session_id: StrColumn,
    pub generation: Vec<u32>,
    pub user_name: StrColumn,
    pub calling_station_id: StrColumn,
    pub framed_ip_address: StrColumn,
    pub framed_ipv6_prefix: StrColumn,
    pub delegated_ipv6_prefix: StrColumn,
    pub start_us: Vec<i64>,
    pub stop_us: Vec<i64>,
    pub last_update_us: Vec<i64>,
    pub session_time_s: Vec<u32>,
    pub input_bytes: Vec<u64>,
    pub output_bytes: Vec<u64>,
    pub hwm_input: Vec<u64>,
    pub hwm_output: Vec<u64>,
    pub last_key: Vec<[u8; 16]>,
    pub flags: Vec<u32>,
    pub terminate_cause: Vec<u32>,
    pub open: Vec<bool>,
}

impl SessionTable {
    #[must_use]
    pub fn len(&self) -> usize {
        self.generation.len()
    }
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.generation.is_empty()
    }

    /// Appends a row; its byte-string columns go to `text` (see [`SessionText::finish`]).
    fn push(
        &mut self,
        s: &Session,
        (in_bytes, out_bytes): (u64, u64),
        nas_key: &str,
        text: &mut SessionText,
        sid: &[u8],
        identity: [&[u8]; IDENTITY_FIELDS],
    ) {
        self.nas_key.push(nas_key);
        text.sid.push(sid);
        self.generation.push(s.generation);
        text.user.push(identity[0]);
        text.calling.push(identity[1]);
        text.framed.push(identity[2]);
        text.framed_prefix.push(identity[3]);
        text.delegated_prefix.push(identity[4]);
        self.start_us.push(s.start_us);
        self.stop_us
            .push(if s.state == STATE_OPEN { -1 } else { s.stop_us });
        self.last_update_us.push(s.last_update_us);
        self.session_time_s.push(s.session_time);
        self.input_bytes.push(in_bytes);
        self.output_bytes.push(out_bytes);
        self.hwm_input.push(s.hwm_in);
        self.hwm_output.push(s.hwm_out);
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&s.last_key.to_le_bytes());
        self.last_key.push(key);
        self.flags.push(u32::from(s.flags & !HAS_CARRY));
        self.terminate_cause.push(s.terminate_cause);
        self.open.push(s.state == STATE_OPEN);
    }

    fn reserve(&mut self, n: usize) {
        self.generation.reserve(n);
        self.start_us.reserve(n);
        self.stop_us.reserve(n);
        self.last_update_us.reserve(n);
        self.session_time_s.reserve(n);
        self.input_bytes.reserve(n);
        self.output_bytes.reserve(n);
        self.hwm_input.reserve(n);
        self.hwm_output.reserve(n);
        self.last_key.reserve(n);
        self.flags.reserve(n);
        self.terminate_cause.reserve(n);
        self.open.reserve(n);
    }

    fn check(&self) -> Result<(), EngineError> {
        let n = self.len();
        let lens = [
            self.nas_key.len(),
            self.acct_session_id.len(),
            self.user_name.len(),
            self.calling_station_id.len(),
            self.framed_ip_address.len(),
            self.framed_ipv6_prefix.len(),
            self.delegated_ipv6_prefix.len(),
            self.start_us.len(),
            self.stop_us.len(),
            self.last_update_us.len(),
            self.session_time_s.len(),
            self.input_bytes.len(),
            self.output_bytes.len(),
            self.hwm_input.len(),
            self.hwm_output.len(),
            self.last_key.len(),
            self.flags.len(),
            self.terminate_cause.len(),
            self.open.len(),
        ];
        if lens.iter().any(|&l| l != n) {
            return Err(EngineError::Columns(
                "columns have different lengths".into(),
            ));
        }
        Ok(())
    }
}

/// The byte-string columns of a [`SessionTable`] being built.
struct SessionText {
    sid: TextBuilder,
    user: TextBuilder,
    calling: TextBuilder,
    framed: TextBuilder,
    framed_prefix: TextBuilder,
    delegated_prefix: TextBuilder,
}

impl SessionText {
    /// Builders for `rows` rows of `sid_bytes` session-id bytes and `text_bytes` of each
    /// identity field's bytes (see [`IDENTITY_FIELDS`]).
    fn with_capacity(rows: usize, sid_bytes: usize, text_bytes: [usize; IDENTITY_FIELDS]) -> Self {
        Self {
            sid: TextBuilder::with_capacity(rows, sid_bytes),
            user: TextBuilder::with_capacity(rows, text_bytes[0]),
            calling: TextBuilder::with_capacity(rows, text_bytes[1]),
            framed: TextBuilder::with_capacity(rows, text_bytes[2]),
            framed_prefix: TextBuilder::with_capacity(rows, text_bytes[3]),
            delegated_prefix: TextBuilder::with_capacity(rows, text_bytes[4]),
        }
    }

    /// Installs the columns into `table` (whose other columns were pushed alongside).
    fn finish(self, table: &mut SessionTable) {
        debug_assert!(table.acct_session_id.is_empty() && table.user_name.is_empty());
        table.acct_session_id = self.sid.finish();
        table.user_name = self.user.finish();
        table.calling_station_id = self.calling.finish();
        table.framed_ip_address = self.framed.finish();
        table.framed_ipv6_prefix = self.framed_prefix.finish();
        table.delegated_ipv6_prefix = self.delegated_prefix.finish();
    }
}

/// Columnar result of `apply` or `sweep`.
#[derive(Debug, Clone, Default)]
pub struct ApplyOutput {
    pub outcome: Vec<u8>,
    pub content_key: Vec<[u8; 16]>,
    pub nas_index: Vec<i32>,
    pub session_index: Vec<i32>,
    pub event_us: Vec<i64>,
    pub arrival_us: Vec<i64>,
    pub status_type: Vec<u8>,
    pub quarantine: Vec<(u32, String)>,
    pub nas_keys: Vec<String>,
    pub nas_seq: Vec<i64>,
    pub sessions: SessionTable,
    pub bucket_session_index: Vec<i32>,
    pub bucket_hour_us: Vec<i64>,
    pub bucket_input_bytes: Vec<u64>,
    pub bucket_output_bytes: Vec<u64>,
    pub bucket_session_s: Vec<u64>,
    /// `(entry index or -1, session row or -1, flag bit, detail)`.
    pub anomalies: Vec<(i64, i64, u32, String)>,
    /// `(entry index, content key)`: a record timed by its arrival that began an instance,
    /// or went to one begun without a Start, is a copy of a record another instance of its
    /// id took if the ledger holds this key (see [`Engine::copy_of`]); the caller checks,
    /// and runs the batch again without such an entry.
    pub copy_candidates: Vec<(u32, [u8; 16])>,
}

/// A prepared batch with the bytes its spans refer to.
#[derive(Clone, Copy)]
struct Input<'a> {
    p: &'a Prepared,
    batch: &'a [u8],
}

impl<'a> Input<'a> {
    fn text(&self, s: record::Span) -> &'a [u8] {
        self.p.text(self.batch, s)
    }
}

/// Per-call scratch: which sessions and buckets the call touched.
#[derive(Default)]
struct Touched {
    rows: Vec<u32>,
    /// Per row: the identity fields ([`IDENTITY_FIELDS`]) from the first record of the call
    /// that carried each (empty: the projection keeps what it has), as ranges of
    /// `text_buf`, copied while the record is in cache.
    text: Vec<[record::Span; IDENTITY_FIELDS]>,
    text_buf: Vec<u8>,
    /// Per row: the hour and index of its most recent bucket (most records hit it).
    last_bucket: Vec<(i64, u32)>,
    bucket_of: FxHashMap<(u32, i64), u32>,
    /// The call's hourly buckets, copied to the output columns (exact size) at the end.
    buckets: Vec<Bucket>,
    anomalies: Vec<(i64, u32, u32, String)>,
    /// Text bytes of the rows so far (session ids, NAS keys, and each `text` field), so
    /// the output columns are allocated once at their final size.
    sid_bytes: usize,
    nas_bytes: usize,
    text_bytes: [usize; IDENTITY_FIELDS],
}

/// One hourly bucket of a row, being summed.
#[derive(Clone, Copy)]
struct Bucket {
    hour: i64,
    input: u64,
    output: u64,
    secs: u64,
    row: i32,
}

impl Touched {
    fn clear(&mut self) {
        self.rows.clear();
        self.text.clear();
        self.text_buf.clear();
        self.last_bucket.clear();
        self.bucket_of.clear();
        self.buckets.clear();
        self.anomalies.clear();
        self.sid_bytes = 0;
        self.nas_bytes = 0;
        self.text_bytes = [0; IDENTITY_FIELDS];
    }
    /// The output row of session `s` (in `slot`), assigned on first touch through its
    /// `row_tag` (valid when it points at a row that holds this slot); `nas_len` is the
    /// length of its NAS key.
    fn row(&mut self, slot: u32, s: &mut Session, nas_len: usize) -> i32 {
        let r = s.row_tag as usize;
        if self.rows.get(r) == Some(&slot) {
            return r as i32;
        }
        let r = self.rows.len();
        self.rows.push(slot);
        self.text.push([record::Span::default(); IDENTITY_FIELDS]);
        self.last_bucket.push((i64::MIN, u32::MAX));
        self.sid_bytes += usize::from(s.sid_len);
        self.nas_bytes += nas_len;
        s.row_tag = r as u32;
        r as i32
    }

    /// Identity for the projection: the first value of the call for each field (the
    /// projection keeps the first it ever got, e.g. a User-Name after a lost Start).
    /// A User-Name or Calling-Station-Id of white space only names nobody: it is left out,
    /// so a later record's name fills the field.
    fn merge_identity(&mut self, row: i32, r: &Record, p: Input<'_>) {
        let text = &mut self.text[row as usize];
        for (field, ((have, new), total)) in text
            .iter_mut()
            .zip(r.identity())
            .zip(&mut self.text_bytes)
            .enumerate()
        {
            if have.is_empty() && !new.is_empty() {
                let bytes = p.text(new);
                if field < 2 && bytes.iter().all(|b| b" \t\n\r\x0b\x0c".contains(b)) {
                    continue;
                }
                *have = record::Span {
                    off: self.text_buf.len() as u32,
                    len: bytes.len() as u32,
                };
                self.text_buf.extend_from_slice(bytes);
                *total += bytes.len();
            }
        }
    }

    /// Adds usage of row `row` (instance `slot`) to its bucket for the hour of `event_us`.
    #[allow(clippy::inline_always)] // Per record: as it was before it was a function.
    #[inline(always)]
    fn add_usage(
        &mut self,
        slot: u32,
        row: i32,
        event_us: i64,
        (din, dout, dsecs): (u64, u64, u64),
    ) {
        let hour = event_us.div_euclid(HOUR_US) * HOUR_US;
        let (last_hour, last_idx) = self.last_bucket[row as usize];
        let b = if last_hour == hour {
            last_idx as usize
        } else {
            let next = self.buckets.len() as u32;
            // The map only holds rows with buckets in several hours: the first bucket of a
            // row lives in `last_bucket` alone until the row moves to another hour.
            let b = if last_idx == u32::MAX {
                next
            } else {
                self.bucket_of.entry((slot, last_hour)).or_insert(last_idx);
                *self.bucket_of.entry((slot, hour)).or_insert(next)
            };
            if b == next {
                self.buckets.push(Bucket {
                    hour,
                    input: 0,
                    output: 0,
                    secs: 0,
                    row,
                });
            }
            self.last_bucket[row as usize] = (hour, b);
            b as usize
        };
        let bucket = &mut self.buckets[b];
        bucket.input = bucket.input.saturating_add(din);
        bucket.output = bucket.output.saturating_add(dout);
        bucket.secs += dsecs;
    }

    fn lookup(&self, slot: u32, tag: u32) -> i32 {
        if self.rows.get(tag as usize) == Some(&slot) {
            tag as i32
        } else {
            -1
        }
    }
}

/// What a record older than its instance's newest one adds in one direction (see
/// `Engine::update`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Gain {
    None,
    /// Its counter is above the mark, which came from an older record: the mark rises.
    Raise(u64),
    /// Its counter is above the newest record's: that much usage (and the flag) before a
    /// reset or wrap between the two; the mark stays the newest record's.
    Behind(u64, u32),
}

#[derive(Clone, Copy)]
enum Target {
    Create {
        lost_start: bool,
        gap: bool,
        close: Option<u32>,
    },
    Existing(u32),
    Late(u32),
}

/// Secrets and NAS policies: everything `prepare` reads. Kept apart from the sessions so
/// a batch can be prepared while another is applied.
#[derive(Debug, Clone, Default)]
pub struct Config {
    default_policy: NasPolicy,
    policies: FxHashMap<String, NasPolicy>,
    secrets: FxHashMap<String, Vec<u8>>,
    ledger_replay: bool,
}

impl Config {
    #[must_use]
    pub fn new(default_policy: NasPolicy) -> Self {
        Self {
            default_policy,
            ..Self::default()
        }
    }

    /// Sets the shared secret for packets from `source_address`.
    pub fn set_secret(&mut self, source_address: &str, secret: &[u8]) {
        self.secrets
            .insert(record::canonical_address(source_address), secret.to_vec());
    }

    /// Sets the policy of one NAS key.
    pub fn set_policy(&mut self, nas_key: &str, policy: NasPolicy) {
        self.policies.insert(nas_key.to_owned(), policy);
    }

    /// Marks the batches as replayed from the ledger (`rating rebuild`): raw packets were
    /// authenticated when they were accepted and are decoded without a secret, since the
    /// secret in force now may not be the one they were sent with.
    pub fn set_ledger_replay(&mut self, on: bool) {
        self.ledger_replay = on;
    }

    /// The policy in force for a NAS key.
    #[must_use]
    pub fn policy(&self, nas_key: &str) -> NasPolicy {
        self.policies
            .get(nas_key)
            .copied()
            .unwrap_or(self.default_policy)
    }

    /// Decodes and validates a batch (touches no session state).
    ///
    /// # Errors
    /// [`EngineError::Wire`] when the outer message is malformed.
    pub fn prepare(&self, batch: &[u8], default_arrival_us: i64) -> Result<Prepared, EngineError> {
        record::prepare(batch, default_arrival_us, self).map_err(EngineError::Wire)
    }
}

impl PrepareConfig for Config {
    fn secret(&self, source: &str) -> Option<&[u8]> {
        self.secrets.get(source).map(Vec::as_slice)
    }
    fn skew_tolerance_s(&self, nas_key: &str) -> i64 {
        i64::from(self.policy(nas_key).clock_skew_tolerance_s)
    }
    fn ledger_replay(&self) -> bool {
        self.ledger_replay
    }
}

/// The accounting state of one tenant: NAS policies, secrets and live sessions.
#[derive(Default)]
pub struct Engine {
    config: Config,
    nas: Vec<NasState>,
    nas_ids: FxHashMap<String, u32>,
    sessions: Vec<Session>,
    free: Vec<u32>,
    index: SlotIndex,
    strings: Strings,
    /// Per slot, after a counter reset: usage total − high-water mark, both directions
    /// (wrapping). Without an entry a session's usage equals its high-water marks.
    carry: FxHashMap<u32, (u64, u64)>,
    live: usize,
    /// Per-call scratch kept between calls so its memory is reused.
    touched: Touched,
    /// The call's content keys, each with the batch record that took it.
    seen: BatchKeys,
}

impl Engine {
    #[must_use]
    pub fn new(default_policy: NasPolicy) -> Self {
        Self {
            config: Config::new(default_policy),
            ..Self::default()
        }
    }

    /// Secrets and policies (what `prepare` reads).
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Sets the shared secret for packets from `source_address`.
    pub fn set_secret(&mut self, source_address: &str, secret: &[u8]) {
        self.config.set_secret(source_address, secret);
    }

    /// See [`Config::set_ledger_replay`].
    pub fn set_ledger_replay(&mut self, on: bool) {
        self.config.set_ledger_replay(on);
    }

    /// Sets the policy of one NAS key.
    pub fn set_policy(&mut self, nas_key: &str, policy: NasPolicy) {
        self.config.set_policy(nas_key, policy);
        if let Some(&id) = self.nas_ids.get(nas_key) {
            self.nas[id as usize].policy = policy;
        }
    }

    /// The policy in force for a NAS key.
    #[must_use]
    pub fn policy(&self, nas_key: &str) -> NasPolicy {
        self.config.policy(nas_key)
    }

    /// Decodes and validates a batch (no session state is touched).
    ///
    /// # Errors
    /// [`EngineError::Wire`] when the outer message is malformed.
    pub fn prepare(&self, batch: &[u8], default_arrival_us: i64) -> Result<Prepared, EngineError> {
        self.config.prepare(batch, default_arrival_us)
    }

    /// Sequence applied for a NAS; `None` when the engine holds no state for it.
    #[must_use]
    pub fn nas_seq(&self, nas_key: &str) -> Option<i64> {
        self.nas_ids
            .get(nas_key)
            .and_then(|&id| self.nas[id as usize].seq)
    }

    /// Number of session instances held (open and closed).
    #[must_use]
    pub fn session_count(&self) -> usize {
        self.live
    }

    /// Number of open session instances held.
    #[must_use]
    pub fn open_count(&self) -> usize {
        self.sessions
            .iter()
            .filter(|s| s.state == STATE_OPEN)
            .count()
    }

    /// Bytes the engine holds for its sessions (capacity of every structure that grows with
    /// them, per-call scratch included): what the memory benchmark reports per session.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        let t = &self.touched;
        self.sessions.capacity() * std::mem::size_of::<Session>()
            + self.free.capacity() * 4
            + self.index.heap_bytes()
            + self.strings.data.capacity()
            + self.carry.capacity() * 24
            + self.seen.heap_bytes()
            + t.rows.capacity() * 4
            + t.text.capacity() * std::mem::size_of::<[record::Span; IDENTITY_FIELDS]>()
            + t.text_buf.capacity()
            + t.last_bucket.capacity() * 16
            + t.bucket_of.capacity() * 24
            + t.buckets.capacity() * std::mem::size_of::<Bucket>()
    }

    /// Usage totals of a session: high-water marks plus the carry of any counter reset.
    fn totals(&self, slot: u32) -> (u64, u64) {
        let s = &self.sessions[slot as usize];
        if s.flags & HAS_CARRY == 0 {
            return (s.hwm_in, s.hwm_out);
        }
        let (ci, co) = self.carry.get(&slot).copied().unwrap_or_default();
        (s.hwm_in.wrapping_add(ci), s.hwm_out.wrapping_add(co))
    }

    fn set_totals(&mut self, slot: u32, (total_in, total_out): (u64, u64)) {
        let s = &mut self.sessions[slot as usize];
        let carry = (
            total_in.wrapping_sub(s.hwm_in),
            total_out.wrapping_sub(s.hwm_out),
        );
        if carry != (0, 0) {
            s.flags |= HAS_CARRY;
            self.carry.insert(slot, carry);
        } else if s.flags & HAS_CARRY != 0 {
            s.flags &= !HAS_CARRY;
            self.carry.remove(&slot);
        }
    }

    fn intern_nas(&mut self, key: &str) -> u32 {
        if let Some(&id) = self.nas_ids.get(key) {
            return id;
        }
        let id = self.nas.len() as u32;
        self.nas.push(NasState {
            key: key.to_owned(),
            seq: None,
            policy: self.policy(key),
            last_onoff: Vec::new(),
            omitted_start_max: i64::MIN,
        });
        self.nas_ids.insert(key.to_owned(), id);
        id
    }

    fn same_identity(&self, s: &Session, nas: u32, sid: &[u8]) -> bool {
        s.nas == nas && short_eq(self.strings.sid(s), sid)
    }

    /// Newest instance of (nas, sid).
    fn find_head(&self, tag: u32, nas: u32, sid: &[u8]) -> Option<u32> {
        let mut slot = self.index.get(tag)?;
        while slot != NONE {
            let s = &self.sessions[slot as usize];
            if self.same_identity(s, nas, sid) {
                return Some(slot);
            }
            slot = s.prev;
        }
        None
    }

    /// The instance of `head`'s id that started last (the head itself unless an older
    /// session was found after a newer one; on a tie, the higher generation).
    fn latest(&self, head: u32) -> u32 {
        let first = &self.sessions[head as usize];
        let sid = self.strings.sid(first);
        let mut best = head;
        let mut slot = first.prev;
        while slot != NONE {
            let s = &self.sessions[slot as usize];
            if self.same_identity(s, first.nas, sid)
                && s.start_us > self.sessions[best as usize].start_us
            {
                best = slot;
            }
            slot = s.prev;
        }
        best
    }

    /// The instance of (nas, sid), from its newest `head`, that a record with start time
    /// `implied` belongs to: its start is within `gap` of `implied` and, if it is closed,
    /// it had not ended before `implied` (or `implied` is its own start, rounded: a
    /// Start-only instance closed without a Stop ended at its start). Of several, the
    /// closest start (the newest on a tie): a late record of an old generation must not
    /// land in the next one. An instance closed as stale has no known end (its Stop may
    /// still come), so it takes any record within `gap` of its start, as an open one does.
    ///
    /// `r`, the record (when given), may rule instances out by its trusted Event-Timestamp
    /// (see `chain_match_read`).
    fn chain_match(
        &self,
        head: u32,
        sid: &[u8],
        implied: i64,
        gap: i64,
        r: Option<&Record>,
    ) -> Option<u32> {
        self.chain_match_read(head, sid, implied, gap, None, r)
    }

    /// [`Engine::chain_match`] among the instances whose start was read from an
    /// Event-Timestamp (`Some(true)`), from arrival − delay (`Some(false)`), or any (`None`).
    ///
    /// A record `r` with a trusted Event-Timestamp is read by the NAS's clock, as the start
    /// of an instance begun by a Start with one ([`exact_start`]) is:
    /// - it is not that instance's when it is older than its start (a reused id's older
    ///   session, delivered after the newer one's Start, however close their starts);
    /// - a Start is that instance's only at its very start: a copy of that Start carries the
    ///   same Event-Timestamp (and is a duplicate by content), so another time is another
    ///   session's Start, however close.
    fn chain_match_read(
        &self,
        head: u32,
        sid: &[u8],
        implied: i64,
        gap: i64,
        by_event_timestamp: Option<bool>,
        r: Option<&Record>,
    ) -> Option<u32> {
        let not_its_own = |s: &Session| {
            r.is_some_and(|r| {
                sent_before_start(r, s)
                    || (r.status == STATUS_START
                        && !r.timed_by_arrival()
                        && exact_start(s)
                        && s.start_us != implied)
            })
        };
        let nas = self.sessions[head as usize].nas;
        let mut best: Option<(u64, u32)> = None;
        let mut slot = head;
        while slot != NONE {
            let s = &self.sessions[slot as usize];
            let distance = s.start_us.abs_diff(implied);
            // `head` is an instance of the id (its newest): only older ones are compared.
            if (slot == head || self.same_identity(s, nas, sid))
                && by_event_timestamp
                    .is_none_or(|b| (u32::from(s.flags) & START_BY_EVENT_TIMESTAMP != 0) == b)
                && distance <= gap.unsigned_abs()
                && !self.reboot_between(nas, implied, s.start_us)
                && !not_its_own(s)
                && (s.state == STATE_OPEN
                    || end_unknown(s)
                    || implied <= s.stop_us
                    || distance <= START_SLACK_US.unsigned_abs()
                    || self.began_before_its_reboot(s, implied))
                && best.is_none_or(|(d, _)| distance < d)
            {
                best = Some((distance, slot));
            }
            slot = s.prev;
        }
        best.map(|(_, slot)| slot)
    }

    /// A reboot the engine remembers lies between a record's implied start and an
    /// instance's start (`implied` < On/Off event ≤ `start`, more than 2 s apart): the
    /// record's session began before the reboot and the instance at or after it, so the
    /// record is not that instance's, however close their starts (within the tolerance).
    fn reboot_between(&self, nas: u32, implied: i64, start: i64) -> bool {
        start.saturating_sub(implied) > START_SLACK_US
            && self.nas[nas as usize]
                .last_onoff
                .iter()
                .any(|&(_, _, event_us, _)| implied < event_us && event_us <= start)
    }

    /// An instance closed by an Accounting-On/Off ended by that reboot, the first the
    /// engine remembers after its start: a record implying a start before it is its own
    /// (a NAS may count session time from a few seconds after its Start).
    fn began_before_its_reboot(&self, s: &Session, implied: i64) -> bool {
        s.state == STATE_CLOSED_NO_STOP
            && u32::from(s.flags) & NAS_REBOOT_CLOSED != 0
            && self.nas[s.nas as usize]
                .last_onoff
                .iter()
                .map(|&(_, _, event_us, _)| event_us)
                .filter(|&e| e > s.start_us)
                .min()
                .is_some_and(|reboot| implied < reboot)
    }

    /// Rewrites the text buffer without freed text once it is mostly garbage.
    fn compact(&mut self) {
        let text = &mut self.strings;
        if text.garbage < 1 << 20 || text.garbage * 2 < text.data.len() {
            return;
        }
        let mut data = Vec::with_capacity(text.data.len() - text.garbage);
        for s in self.sessions.iter_mut().filter(|s| s.live()) {
            let start = s.str_off as usize;
            let bytes = text
                .data
                .get(start..start + text.span(s).2)
                .unwrap_or_default();
            s.str_off = data.len() as u32;
            data.extend_from_slice(bytes);
        }
        text.data = data;
        text.garbage = 0;
    }

    /// Prefetches the session for `h` and its session id (compared on lookup). The index
    /// line was prefetched `PREFETCH_INDEX − PREFETCH_SESSION` records before.
    #[inline]
    fn touch(&self, tag: u32) {
        if let Some(slot) = self.index.get(tag) {
            if let Some(s) = self.sessions.get(slot as usize) {
                prefetch::read(s);
                if let Some(b) = self.strings.data.get(s.str_off as usize) {
                    prefetch::read(b);
                }
            }
        }
    }

    fn alloc(&mut self, s: Session) -> u32 {
        self.live += 1;
        if let Some(slot) = self.free.pop() {
            self.sessions[slot as usize] = s;
            slot
        } else {
            self.sessions.push(s);
            (self.sessions.len() - 1) as u32
        }
    }

    fn insert_tagged(&mut self, mut s: Session, tag: u32) -> u32 {
        s.prev = self.index.get(tag).unwrap_or(NONE);
        let slot = self.alloc(s);
        self.index.insert(tag, slot);
        slot
    }

    /// Inserts a stored instance of `sid` below the newer generations of the id that the
    /// engine holds (a recalled old generation), so that the first instance of an id along
    /// its chain stays its newest. `None` when the engine already holds that generation.
    fn insert_stored(&mut self, mut s: Session, sid: &[u8]) -> Option<u32> {
        let sid = &sid[..sid.len().min(MAX_SID_TEXT)];
        let tag = sid_tag(s.nas, sid);
        // The last instance of the id with a newer generation: `s` goes right after it.
        let mut above = NONE;
        let mut slot = self.index.get(tag).unwrap_or(NONE);
        while slot != NONE {
            let c = &self.sessions[slot as usize];
            if self.same_identity(c, s.nas, sid) {
                if c.generation == s.generation {
                    return None;
                }
                if c.generation > s.generation {
                    above = slot;
                }
            }
            slot = c.prev;
        }
        (s.str_off, s.sid_len) = self.strings.store(sid);
        if above == NONE {
            return Some(self.insert_tagged(s, tag));
        }
        s.prev = self.sessions[above as usize].prev;
        let new = self.alloc(s);
        self.sessions[above as usize].prev = new;
        Some(new)
    }

    fn remove(&mut self, slot: u32) {
        let (h, prev) = {
            let s = &self.sessions[slot as usize];
            if !s.live() {
                return;
            }
            (sid_tag(s.nas, self.strings.sid(s)), s.prev)
        };
        match self.index.get(h) {
            Some(head) if head == slot => {
                if prev == NONE {
                    self.index.remove(h);
                } else {
                    self.index.insert(h, prev);
                }
            }
            Some(mut cur) => {
                while cur != NONE {
                    let next = self.sessions[cur as usize].prev;
                    if next == slot {
                        self.sessions[cur as usize].prev = prev;
                        break;
                    }
                    cur = next;
                }
            }
            None => {}
        }
        let s = &mut self.sessions[slot as usize];
        s.state = STATE_FREE;
        self.strings.release(s);
        s.sid_len = 0;
        self.carry.remove(&slot);
        self.free.push(slot);
        self.live -= 1;
    }

    fn slots_of(&self, nas: u32) -> Vec<u32> {
        self.sessions
            .iter()
            .enumerate()
            .filter(|(_, s)| s.live() && s.nas == nas)
            .map(|(i, _)| i as u32)
            .collect()
    }

    /// Drops the state of these NASes (the next batch reloads it from the database).
    pub fn forget_nas(&mut self, nas_keys: &[String]) {
        for key in nas_keys {
            let Some(&id) = self.nas_ids.get(key.as_str()) else {
                continue;
            };
            for slot in self.slots_of(id) {
                self.remove(slot);
            }
            let n = &mut self.nas[id as usize];
            n.seq = None;
            n.omitted_start_max = i64::MAX;
            n.last_onoff.clear();
        }
        self.compact();
    }

    /// Replaces the engine's state for one NAS with the database's. `omitted_start_max`:
    /// `None` when the rows are every instance stored for the NAS (none of its session ids
    /// has instances the engine is not given: see [`Engine::unknown_sessions`]), else the
    /// latest start of a stored instance left out (`i64::MAX` when unknown; see
    /// [`Engine::unmatched_sessions`]).
    ///
    /// # Errors
    /// [`EngineError::Columns`] when the columns disagree in length or name another NAS.
    pub fn load_sessions(
        &mut self,
        nas_key: &str,
        seq: i64,
        t: &SessionTable,
        omitted_start_max: Option<i64>,
    ) -> Result<(), EngineError> {
        Self::check_rows(t)?;
        if let Some(bad) = t.nas_key.iter().find(|&k| k != nas_key) {
            return Err(EngineError::Columns(format!(
                "row of NAS {bad:?} loaded for NAS {nas_key:?}"
            )));
        }
        let id = self.intern_nas(nas_key);
        for slot in self.slots_of(id) {
            self.remove(slot);
        }
        self.insert_rows(t, |_| true);
        self.compact();
        let n = &mut self.nas[id as usize];
        n.seq = Some(seq);
        n.omitted_start_max = omitted_start_max.map_or(i64::MIN, |v| v.max(i64::MIN + 1));
        n.last_onoff.clear();
        Ok(())
    }

    /// Gives the engine the NAS's latest accepted Accounting-On/Offs from the ledger
    /// (content key, status type, event time, whether it was timed by its arrival; oldest
    /// first), after [`Engine::load_sessions`]: a record of a session that started before one
    /// of them, applied later, finds its session already over (see `apply`), and a copy of
    /// one timed by its own arrival in another second is a repeat, as on the engine that
    /// applied the On/Off. Only the last [`ONOFF_MEMORY`] are kept.
    pub fn recall_onoffs(&mut self, nas_key: &str, onoffs: &[([u8; 16], u8, i64, bool)]) {
        let id = self.intern_nas(nas_key);
        let recent = &mut self.nas[id as usize].last_onoff;
        recent.clear();
        let skip = onoffs.len().saturating_sub(ONOFF_MEMORY);
        recent.extend_from_slice(&onoffs[skip..]);
    }

    /// The engine's id of each batch NAS it may have forgotten instances of; `None` when
    /// there is none (the common case: nothing to recall).
    fn incomplete_nas(&self, p: &Prepared) -> Option<Vec<Option<u32>>> {
        let map: Vec<Option<u32>> = p
            .nas_keys
            .iter()
            .map(|k| {
                self.nas_ids
                    .get(k.as_str())
                    .copied()
                    .filter(|&id| !self.nas[id as usize].complete())
            })
            .collect();
        map.iter().any(Option::is_some).then_some(map)
    }

    /// `(NAS key, session id)` of the batch's session records that the engine holds no
    /// instance of, on NASes whose older instances it may have forgotten (closed ones are
    /// dropped after [`CLOSED_RETENTION_US`], and a reload reads a window): each distinct
    /// pair once, in batch order. Before `apply`, the caller gives the engine the newest
    /// stored instance of each ([`Engine::add_sessions`]), so that a reused id continues
    /// its generations instead of starting at 1 again over a stored instance, and a late
    /// record still finds the instance it belongs to.
    #[must_use]
    pub fn unknown_sessions(&self, p: &Prepared, batch: &[u8]) -> Vec<(String, String)> {
        let input = Input { p, batch };
        let Some(nas_map) = self.incomplete_nas(p) else {
            return Vec::new();
        };
        let mut seen: FxHashSet<(u32, &[u8])> = FxHashSet::default();
        let mut out = Vec::new();
        for r in &p.records {
            if !matches!(r.status, STATUS_START | STATUS_STOP | STATUS_INTERIM) {
                continue;
            }
            let Some(nas) = nas_map.get(r.nas as usize).copied().flatten() else {
                continue;
            };
            let sid = input.text(r.sid);
            if self.find_head(sid_tag(nas, sid), nas, sid).is_none() && seen.insert((nas, sid)) {
                out.push((
                    p.nas_keys[r.nas as usize].clone(),
                    String::from_utf8_lossy(sid).into_owned(),
                ));
            }
        }
        out
    }

    /// `(NAS key, session id, lo, hi)` for the batch's Starts, Interims and Stops whose instance
    /// may be one the engine forgot (or was not loaded with): a stored instance it does not
    /// hold could start closer to the record's implied start than any instance it holds
    /// (or within the NAS's tolerance of it, when none does); or, for an Interim or Stop
    /// timed by its arrival that no held instance takes, any that started before it (it may
    /// be a copy of that one's record: [`Engine::copy_of`]). Each id once, in batch order,
    /// with the range `[lo, hi]` (µs) such an instance's start lies in. Call it after the
    /// newest instances ([`Engine::unknown_sessions`]) were added, and add the stored
    /// instances of each id that start in its range: a late record then lands on its own
    /// generation, as if the engine had never forgotten any.
    #[must_use]
    pub fn unmatched_sessions(
        &self,
        p: &Prepared,
        batch: &[u8],
    ) -> Vec<(String, String, i64, i64)> {
        let input = Input { p, batch };
        let Some(nas_map) = self.incomplete_nas(p) else {
            return Vec::new();
        };
        let mut at: FxHashMap<(u32, &[u8]), usize> = FxHashMap::default();
        let mut out: Vec<(String, String, i64, i64)> = Vec::new();
        for r in &p.records {
            if !matches!(r.status, STATUS_START | STATUS_STOP | STATUS_INTERIM) {
                continue;
            }
            let Some(nas) = nas_map.get(r.nas as usize).copied().flatten() else {
                continue;
            };
            let n = &self.nas[nas as usize];
            // A Start is at session time 0 whether or not it says so (as in `apply`).
            let Some(time) = r.time_in_session() else {
                continue;
            };
            let gap = n.policy.gap_us();
            let sid = input.text(r.sid);
            let implied_start = r.event_us.saturating_sub(i64::from(time) * US);
            // Both readings of its time, each against the instances `route` compares it
            // with (the other only with starts read its way); a reading whose every
            // possible instance is held needs none.
            let readings = [
                (implied_start, None),
                (
                    r.alt_event_us.saturating_sub(i64::from(time) * US),
                    Some(r.timed_by_arrival()),
                ),
            ]
            .map(|(im, read)| {
                (im.saturating_sub(gap) <= n.omitted_start_max).then_some((im, read))
            });
            let readings = &readings[..if r.alt_event_us == r.event_us { 1 } else { 2 }];
            // An Interim or Stop timed by its arrival that no held instance takes may be a
            // copy of a record of any older instance ([`Engine::copy_of`]): every one the
            // engine forgot.
            let may_copy = r.status != STATUS_START && r.key_by_instance();
            if readings.iter().all(Option::is_none) && !may_copy {
                continue;
            }
            let head = self.find_head(sid_tag(nas, sid), nas, sid);
            let copy = may_copy
                && head.is_none_or(|h| {
                    self.chain_match(h, sid, implied_start, gap, Some(r))
                        .is_none()
                });
            let mut ranges: Vec<(i64, i64)> = Vec::new();
            if copy {
                ranges.push((i64::MIN, implied_start.min(n.omitted_start_max)));
            }
            if let Some(head) = head {
                for &(implied, read) in readings.iter().flatten() {
                    let held = self.chain_match_read(head, sid, implied, gap, read, Some(r));
                    let reach = held.map_or(gap, |m| {
                        self.sessions[m as usize]
                            .start_us
                            .abs_diff(implied)
                            .try_into()
                            .unwrap_or(gap)
                    });
                    if reach == 0 {
                        // Generations of an id start strictly later one after the other:
                        // none ties.
                        continue;
                    }
                    let lo = implied.saturating_sub(reach);
                    let hi = implied.saturating_add(reach).min(n.omitted_start_max);
                    if lo <= hi {
                        ranges.push((lo, hi));
                    }
                }
            }
            for (lo, hi) in ranges {
                if let Some(&k) = at.get(&(nas, sid)) {
                    let e = &mut out[k];
                    (e.2, e.3) = (e.2.min(lo), e.3.max(hi));
                } else {
                    at.insert((nas, sid), out.len());
                    out.push((
                        p.nas_keys[r.nas as usize].clone(),
                        String::from_utf8_lossy(sid).into_owned(),
                        lo,
                        hi,
                    ));
                }
            }
        }
        out
    }

    /// Adds stored instances the engine does not hold (rows of generations it holds are
    /// skipped: its own state is newer); an older generation goes below the newer ones.
    /// Rows may name several NASes; a NAS's sequence is not changed.
    ///
    /// # Errors
    /// [`EngineError::Columns`] when the columns disagree in length.
    pub fn add_sessions(&mut self, t: &SessionTable) -> Result<(), EngineError> {
        Self::check_rows(t)?;
        for key in t.nas_key.iter() {
            if !self.nas_ids.contains_key(key) {
                // Given some of its instances, not all: the engine holds only what it adds.
                let id = self.intern_nas(key);
                self.nas[id as usize].omitted_start_max = i64::MAX;
            }
        }
        self.insert_rows(t, |_| true);
        Ok(())
    }

    fn check_rows(t: &SessionTable) -> Result<(), EngineError> {
        t.check()?;
        // Identity text (user, calling station, framed IP, IPv6 prefixes) stays in the
        // database: not loaded.
        if t.acct_session_id.iter().any(|v| v.len() > MAX_SID_TEXT) {
            return Err(EngineError::Columns(format!(
                "acct_session_id longer than {MAX_SID_TEXT} bytes (253 octets, each U+FFFD)"
            )));
        }
        Ok(())
    }

    /// Inserts the rows `keep` selects, oldest generation first (the newest heads its chain).
    fn insert_rows(&mut self, t: &SessionTable, keep: impl Fn(usize) -> bool) {
        let mut order: Vec<usize> = (0..t.len()).filter(|&i| keep(i)).collect();
        order.sort_by(|&a, &b| {
            (t.nas_key.get(a), t.acct_session_id.get(a), t.generation[a]).cmp(&(
                t.nas_key.get(b),
                t.acct_session_id.get(b),
                t.generation[b],
            ))
        });
        for i in order {
            let state = if t.open[i] {
                STATE_OPEN
            } else if t.flags[i] & STOP_RECEIVED != 0
                || t.terminate_cause[i] != 0
                || t.flags[i] & (STALE_CLOSED | NAS_REBOOT_CLOSED) == 0
            {
                STATE_STOPPED
            } else {
                STATE_CLOSED_NO_STOP
            };
            let s = Session {
                start_us: t.start_us[i],
                stop_us: t.stop_us[i],
                last_update_us: t.last_update_us[i],
                hwm_in: t.hwm_input[i],
                hwm_out: t.hwm_output[i],
                last_key: key_prefix(&t.last_key[i]),
                nas: self.intern_nas(t.nas_key.get(i)),
                generation: t.generation[i],
                session_time: t.session_time_s[i],
                terminate_cause: t.terminate_cause[i],
                prev: NONE,
                row_tag: u32::MAX,
                str_off: 0,
                flags: t.flags[i] as u16 & !HAS_CARRY,
                sid_len: 0,
                state,
            };
            // A generation the engine holds already keeps its own (newer) state.
            if let Some(slot) = self.insert_stored(s, t.acct_session_id.get(i).as_bytes()) {
                self.set_totals(slot, (t.input_bytes[i], t.output_bytes[i]));
            }
        }
    }

    /// The output row of the session in `slot` (see [`Touched::row`]).
    fn row_of(&mut self, t: &mut Touched, slot: u32) -> i32 {
        let s = &mut self.sessions[slot as usize];
        t.row(slot, s, self.nas[s.nas as usize].key.len())
    }

    fn close_no_stop(&mut self, slot: u32, flag: u32) {
        let s = &mut self.sessions[slot as usize];
        s.state = STATE_CLOSED_NO_STOP;
        s.stop_us = s.last_update_us;
        s.flags |= flag as u16;
    }

    /// Runs a prepared batch: dedup, sessions, deltas, buckets, flags.
    pub fn apply(&mut self, p: &Prepared, batch: &[u8]) -> ApplyOutput {
        self.apply_known(p, batch, None)
    }

    /// Like [`Engine::apply`], with the ledger's verdict: entries whose `known` flag is set
    /// already have their content key in the ledger, so they are duplicates and touch nothing.
    pub fn apply_known(
        &mut self,
        p: &Prepared,
        batch: &[u8],
        known: Option<&[bool]>,
    ) -> ApplyOutput {
        let input = Input { p, batch };
        let n = p.records.len();
        let mut out = ApplyOutput {
            outcome: Vec::with_capacity(n),
            content_key: Vec::with_capacity(n),
            nas_index: Vec::with_capacity(n),
            session_index: Vec::with_capacity(n),
            event_us: Vec::with_capacity(n),
            arrival_us: Vec::with_capacity(n),
            status_type: Vec::with_capacity(n),
            quarantine: p.quarantine.clone(),
            nas_keys: p.nas_keys.clone(),
            ..ApplyOutput::default()
        };
        let nas_map: Vec<u32> = p.nas_keys.iter().map(|k| self.intern_nas(k)).collect();
        let mut t = std::mem::take(&mut self.touched);
        t.clear();
        let mut seen = std::mem::take(&mut self.seen);
        seen.reset(n);
        // Identity hashes a few records ahead, so the loop can prefetch the index line, the
        // session and this batch's key slot of a record before it gets there: at a million
        // sessions those are cache misses, and prefetches (which do not wait) overlap them
        // with the current record's work. The hashes wait in a ring (no per-call allocation).
        let tag_of = |r: &Record| match r.status {
            STATUS_START | STATUS_STOP | STATUS_INTERIM => {
                sid_tag(nas_map[r.nas as usize], input.text(r.sid))
            }
            _ => 0,
        };
        let mut copies = Vec::new();
        // Two stages: the index line first, then (once it is in) the session it names.
        let mut tags = [0u32; TAG_RING];
        for (j, r) in p.records.iter().enumerate().take(PREFETCH_INDEX) {
            tags[j] = tag_of(r);
            self.index.prefetch(tags[j]);
        }
        for &tag in tags.iter().take(PREFETCH_SESSION.min(p.records.len())) {
            self.touch(tag);
        }
        for (i, r) in p.records.iter().enumerate() {
            let tag = tags[i % TAG_RING];
            if let Some(far) = p.records.get(i + PREFETCH_INDEX) {
                let ahead = tag_of(far);
                tags[(i + PREFETCH_INDEX) % TAG_RING] = ahead;
                self.index.prefetch(ahead);
            }
            if let Some(near) = p.records.get(i + PREFETCH_SESSION) {
                self.touch(tags[(i + PREFETCH_SESSION) % TAG_RING]);
                // Where its content key goes in this batch's keys (the final key differs
                // only for records that take another instance's start).
                seen.prefetch(&near.key);
                // The record's identity text, copied to its row: its batch bytes were read
                // long ago (prepare) and are out of cache in a large batch (hashing the
                // session id above has loaded that one).
                for span in [near.user, near.calling] {
                    if let Some(b) = input.text(span).first() {
                        prefetch::read(b);
                    }
                }
            }
            out.event_us.push(r.event_us);
            out.arrival_us.push(r.arrival_us);
            out.status_type.push(r.status);
            if r.status == STATUS_NONE {
                out.outcome.push(OUTCOME_QUARANTINED);
                out.content_key.push([0; 16]);
                out.nas_index.push(-1);
                out.session_index.push(-1);
                continue;
            }
            let nas = nas_map[r.nas as usize];
            // A session record's instance is decided once: its key may take that start.
            let routed = matches!(r.status, STATUS_START | STATUS_STOP | STATUS_INTERIM)
                .then(|| self.route(r, nas, tag, input.text(r.sid)))
                .map(|(head, target)| {
                    let is_seen = |key: &[u8; 16]| seen.get(key, &out.content_key).is_some();
                    let sid = input.text(r.sid);
                    let target = self
                        .copy_of(i, r, head, target, sid, is_seen, &mut copies)
                        .unwrap_or(target);
                    (head, target)
                });
            let key = routed
                .as_ref()
                .map_or(r.key, |(_, target)| self.final_key(r, target));
            out.content_key.push(key);
            out.nas_index.push(r.nas as i32);
            let in_ledger = known.is_some_and(|k| k.get(i).copied().unwrap_or(false));
            let (outcome, slot) = if in_ledger {
                (OUTCOME_DUPLICATE, NONE)
            } else if let Some(slot) = seen
                .get(&key, &out.content_key)
                .map(|j| out.session_index[j as usize])
            {
                let slot = if slot < 0 {
                    NONE
                } else {
                    t.rows[slot as usize]
                };
                (OUTCOME_DUPLICATE, slot)
            } else {
                let (o, slot) = match routed {
                    None => self.on_off(i, r, nas, &mut t),
                    Some((head, target)) => {
                        let (o, slot) =
                            self.session_record(i, r, &key, nas, tag, head, target, input, &mut t);
                        if o == OUTCOME_LATE && slot != NONE {
                            self.note_skew(i, slot, r, &mut t);
                        }
                        (o, slot)
                    }
                };
                if o != OUTCOME_DUPLICATE {
                    seen.insert(&key, i as u32, &out.content_key);
                }
                (o, slot)
            };
            out.outcome.push(outcome);
            out.session_index.push(if slot == NONE {
                -1
            } else {
                self.row_of(&mut t, slot)
            });
        }
        for &id in &nas_map {
            let st = &mut self.nas[id as usize];
            let seq = st.seq.unwrap_or(0) + 1;
            st.seq = Some(seq);
            out.nas_seq.push(seq);
        }
        out.copy_candidates = copies;
        self.finish(&mut out, &mut t);
        self.touched = t;
        self.seen = seen;
        self.compact();
        out
    }

    fn finish(&self, out: &mut ApplyOutput, t: &mut Touched) {
        out.sessions.reserve(t.rows.len());
        out.sessions.nas_key.reserve(t.rows.len(), t.nas_bytes);
        let mut text_columns = SessionText::with_capacity(t.rows.len(), t.sid_bytes, t.text_bytes);
        // At a million sessions the rows' sessions have left the cache since the loop: the
        // session a few rows ahead is prefetched, then its session id once it is in.
        let session_at = |j: usize| t.rows.get(j).and_then(|&k| self.sessions.get(k as usize));
        for j in 0..PREFETCH_INDEX {
            if let Some(s) = session_at(j) {
                prefetch::read(s);
            }
        }
        for (j, (&slot, spans)) in t.rows.iter().zip(&t.text).enumerate() {
            if let Some(ahead) = session_at(j + PREFETCH_INDEX) {
                prefetch::read(ahead);
            }
            if let Some(b) = session_at(j + PREFETCH_SESSION)
                .and_then(|near| self.strings.data.get(near.str_off as usize))
            {
                prefetch::read(b);
            }
            let s = &self.sessions[slot as usize];
            let text = |span: record::Span| {
                let start = span.off as usize;
                t.text_buf
                    .get(start..start + span.len as usize)
                    .unwrap_or_default()
            };
            out.sessions.push(
                s,
                self.totals(slot),
                &self.nas[s.nas as usize].key,
                &mut text_columns,
                self.strings.sid(s),
                spans.map(text),
            );
        }
        text_columns.finish(&mut out.sessions);
        out.bucket_session_index = t.buckets.iter().map(|b| b.row).collect();
        out.bucket_hour_us = t.buckets.iter().map(|b| b.hour).collect();
        out.bucket_input_bytes = t.buckets.iter().map(|b| b.input).collect();
        out.bucket_output_bytes = t.buckets.iter().map(|b| b.output).collect();
        out.bucket_session_s = t.buckets.iter().map(|b| b.secs).collect();
        let anomalies = std::mem::take(&mut t.anomalies);
        out.anomalies = anomalies
            .into_iter()
            .map(|(entry, slot, flag, detail)| {
                let row = if slot == NONE {
                    -1
                } else {
                    i64::from(t.lookup(slot, self.sessions[slot as usize].row_tag))
                };
                (entry, row, flag, detail)
            })
            .collect();
    }

    fn on_off(&mut self, i: usize, r: &Record, nas: u32, t: &mut Touched) -> (u8, u32) {
        // A copy timed by its arrival (no Event-Timestamp) may land in another whole second
        // than the original: within 2 s of an On/Off of the same kind so timed, it is that one.
        let repeat =
            self.nas[nas as usize]
                .last_onoff
                .iter()
                .any(|&(key, status, event_us, by_arrival)| {
                    key == r.key
                        || (by_arrival
                            && r.timed_by_arrival()
                            && status == r.status
                            && event_us.abs_diff(r.event_us) <= START_SLACK_US.unsigned_abs())
                });
        if repeat {
            return (OUTCOME_DUPLICATE, NONE);
        }
        for slot in self.slots_of(nas) {
            let s = &self.sessions[slot as usize];
            if s.state == STATE_OPEN && s.start_us < r.event_us {
                self.close_by_reboot(i, slot, t, "closed by Accounting-On/Off at its last update");
            }
        }
        if r.skewed() {
            t.anomalies
                .push((i as i64, NONE, CLOCK_SKEW, skew_detail(r)));
        }
        let recent = &mut self.nas[nas as usize].last_onoff;
        if recent.len() >= ONOFF_MEMORY {
            recent.remove(0);
        }
        recent.push((r.key, r.status, r.event_us, r.timed_by_arrival()));
        (OUTCOME_ACCEPTED, NONE)
    }

    /// The start time a record implies (event − session time; a Start is at time 0).
    fn implied_start(r: &Record) -> Option<i64> {
        r.time_in_session()
            .map(|st| r.event_us.saturating_sub(i64::from(st) * US))
    }

    /// The start implied by the other reading of the record's time
    /// ([`Record::alt_event_us`]), when there is one.
    fn alt_implied_start(r: &Record) -> Option<i64> {
        (r.alt_event_us != r.event_us)
            .then(|| r.time_in_session())
            .flatten()
            .map(|st| r.alt_event_us.saturating_sub(i64::from(st) * US))
    }

    /// Which instance a session record belongs to (docs/accounting-engine.md), and the
    /// id's head; changes nothing.
    fn route(&self, r: &Record, nas: u32, tag: u32, sid: &[u8]) -> (Option<u32>, Target) {
        let gap = self.nas[nas as usize].policy.gap_us();
        let implied = Self::implied_start(r);
        let head = self.find_head(tag, nas, sid);
        let target = match head {
            None => Target::Create {
                lost_start: r.status != STATUS_START,
                gap: false,
                close: None,
            },
            Some(h) => {
                // Decisions are against the instance that started last; the head has the
                // highest generation, which is the same one unless an older session was
                // found after a newer one (its generation is the next number all the same).
                let cur = self.latest(h);
                let c = &self.sessions[cur as usize];
                // A record that started far before the latest instance belongs to an older
                // one: its own if the engine holds it, else a session nobody saw start.
                let trusted_start = r.status == STATUS_START && !r.timed_by_arrival();
                let older = |im: i64, lost_start: bool| match self.chain_match_read(
                    h,
                    sid,
                    im,
                    gap,
                    None,
                    Some(r),
                ) {
                    Some(m) => Target::Existing(m),
                    None => Target::Create {
                        lost_start,
                        gap: false,
                        close: None,
                    },
                };
                // Both exact (a trusted Start against an instance a trusted Start began):
                // not a copy, which would carry the same Event-Timestamp; a Start before
                // that instance's is an older session's.
                let exact = trusted_start && exact_start(c);
                // (Or before a reboot the latest instance began after: RADIUS.md's On/Off
                // ends every session that started before it, so theirs is another session.
                // Or, exact, before its start at all.)
                let far_before = |im: i64| {
                    im < c.start_us.saturating_sub(gap)
                        || self.reboot_between(nas, im, c.start_us)
                        || (exact && im < c.start_us)
                };
                // A Start more than 2 s from the instance's start and after its last update
                // is not that instance's own Start (delayed or retransmitted): the id was
                // reused, by a NAS that rebooted (its Accounting-On may still be on its way)
                // or lost the Stop.
                // Unless the instance has no session time yet and the Start is within the
                // tolerance of its start: then it may be a copy of its own Start (timed by
                // its arrival, through another collector's clock) or follow an Interim sent
                // at session time 0, and a second generation would split one session.
                let copy_possible = !exact
                    && c.session_time == 0
                    && r.event_us.abs_diff(c.start_us) <= gap.unsigned_abs()
                    && (c.state == STATE_OPEN || end_unknown(c));
                // A trusted Event-Timestamp is exact: a copy of the instance's own Start
                // carries the same one (and is a duplicate by content), so another time is
                // another session's Start, however close (a NAS reusing the id a second
                // after the Stop). The 2 s are for a Start timed by its arrival and for an
                // instance whose start was inferred from an update (lost Start).
                let own_slack = if r.timed_by_arrival() || u32::from(c.flags) & LOST_START != 0 {
                    START_SLACK_US.unsigned_abs()
                } else {
                    0
                };
                let reused = r.event_us.abs_diff(c.start_us) > own_slack
                    && r.event_us > c.last_update_us
                    && !copy_possible;
                if r.status == STATUS_START {
                    if c.state == STATE_OPEN {
                        match implied {
                            Some(im) if im > c.start_us.saturating_add(gap) => Target::Create {
                                lost_start: false,
                                gap: true,
                                close: Some(cur),
                            },
                            Some(im) if far_before(im) => older(im, false),
                            _ if reused => Target::Create {
                                lost_start: false,
                                gap: false,
                                close: Some(cur),
                            },
                            _ => Target::Existing(cur),
                        }
                    } else if reused
                        || (r.event_us.abs_diff(c.start_us) > own_slack
                            && r.event_us > c.start_us
                            && r.event_us >= c.stop_us
                            && !copy_possible)
                    {
                        // A NAS may reuse the id in the very second the old one stopped; a
                        // Start at the closed instance's own start (rounded: a retransmit
                        // timed by its arrival) is that instance's.
                        Target::Create {
                            lost_start: false,
                            gap: false,
                            close: None,
                        }
                    } else {
                        match implied {
                            Some(im) if far_before(im) => older(im, false),
                            _ => Target::Existing(cur),
                        }
                    }
                } else {
                    match implied {
                        None => Target::Existing(cur),
                        Some(im) => {
                            if let Some(m) = self.chain_match(h, sid, im, gap, Some(r)) {
                                Target::Existing(m)
                            } else if im > c.start_us.saturating_add(gap) {
                                let close = (c.state == STATE_OPEN).then_some(cur);
                                Target::Create {
                                    lost_start: true,
                                    gap: true,
                                    close,
                                }
                            } else if (c.state != STATE_OPEN && im > c.stop_us)
                                || far_before(im)
                                || sent_before_start(r, c)
                            {
                                // Started after the newest instance ended, or long before it
                                // began, or sent before its Start (both by the NAS's clock):
                                // a session whose Start was lost, not an update of it.
                                Target::Create {
                                    lost_start: true,
                                    gap: false,
                                    close: None,
                                }
                            } else {
                                Target::Late(cur)
                            }
                        }
                    }
                }
            }
        };
        // A record would begin an instance, but the other reading of its time places it in
        // one whose start was read that way: it is that one's (one session's records read
        // the two ways imply starts about the NAS's skew apart, which a second generation
        // would count twice). Only starts read the same way: against one read the record's
        // way, the other reading is off by the skew, and would take a reused id's new
        // session into the old one.
        let target = match (target, head, Self::alt_implied_start(r), implied) {
            // (Readings within 2 s of each other are one reading: the rules above hold.)
            (Target::Create { .. }, Some(h), Some(alt), Some(im))
                if alt.abs_diff(im) > START_SLACK_US.unsigned_abs() =>
            {
                // The other reading is the Event-Timestamp when the record is timed by its
                // arrival, and arrival − delay when it is timed by its Event-Timestamp.
                self.chain_match_read(h, sid, alt, gap, Some(r.timed_by_arrival()), Some(r))
                    .map_or(target, Target::Existing)
            }
            _ => target,
        };
        (head, target)
    }

    /// Whether a record that `route` would begin an instance with, or send to one begun
    /// without a Start (`target`), is an unchanged copy of one another instance of its id
    /// took; `Some(that instance)` when the engine can tell. RFC 5080 lets a NAS resend a
    /// request as it was, Acct-Delay-Time not updated: timed by its arrival, a copy
    /// delivered more than the tolerance after the original implies a start that much
    /// later, and would open a generation that counts it again. An Interim or Stop
    /// with a session time whose content (status, session time, both counters, cause) is a
    /// record's of an instance is that record: pinned by that instance's start, its key is
    /// the record's. The instance's last record and this batch's (`is_seen`) are known
    /// here; the keys of older records of the id's instances go to `candidates`,
    /// `(i, key)`, for the caller to look up in the ledger (several copies in one batch
    /// all name theirs: the first may begin an instance the others then go to).
    /// (Not a Start: every Start of an id has the same content, so a reused id's Start
    /// would be taken for a copy of the first one's.)
    #[allow(clippy::too_many_arguments)]
    fn copy_of(
        &self,
        i: usize,
        r: &Record,
        head: Option<u32>,
        target: Target,
        sid: &[u8],
        is_seen: impl Fn(&[u8; 16]) -> bool,
        candidates: &mut Vec<(u32, [u8; 16])>,
    ) -> Option<Target> {
        let head = head?;
        if r.status == STATUS_START || !r.key_by_instance() {
            return None;
        }
        // (Against the instance it goes to, its key is the copy's: the usual dedup.) An
        // instance whose Start was seen is not checked: an update of it with another
        // instance's content is a reused id's session repeating it, as far as anyone can
        // tell; one begun by an update may have been begun by another copy.
        let own = match target {
            Target::Existing(slot) | Target::Late(slot) => {
                if u32::from(self.sessions[slot as usize].flags) & LOST_START == 0 {
                    return None;
                }
                slot
            }
            Target::Create { .. } => NONE,
        };
        let nas = self.sessions[head as usize].nas;
        let first = candidates.len();
        let mut slot = head;
        while slot != NONE {
            let s = &self.sessions[slot as usize];
            if slot != own && (slot == head || self.same_identity(s, nas, sid)) {
                let key = record::instance_key(&r.key, s.start_us);
                if s.last_key == key_prefix(&key) || is_seen(&key) {
                    candidates.truncate(first);
                    return Some(Target::Existing(slot));
                }
                candidates.push((i as u32, key));
            }
            slot = s.prev;
        }
        None
    }

    /// The record's content key: as prepared, or completed with the start of the instance
    /// it belongs to, `target` (`Record::key_by_instance`).
    fn final_key(&self, r: &Record, target: &Target) -> [u8; 16] {
        if !r.key_by_instance() {
            return r.key;
        }
        let start = match *target {
            Target::Existing(slot) | Target::Late(slot) => self.sessions[slot as usize].start_us,
            Target::Create { .. } => Self::implied_start(r).unwrap_or(r.event_us),
        };
        record::instance_key(&r.key, start)
    }

    /// Applies a session record to the instance `route` chose (`head`: the id's head).
    fn session_record(
        &mut self,
        i: usize,
        r: &Record,
        key: &[u8; 16],
        nas: u32,
        tag: u32,
        head: Option<u32>,
        target: Target,
        p: Input<'_>,
        t: &mut Touched,
    ) -> (u8, u32) {
        let sid = p.text(r.sid);
        let policy = self.nas[nas as usize].policy;
        let implied = Self::implied_start(r);
        match target {
            Target::Late(slot) => (OUTCOME_LATE, slot),
            Target::Create {
                lost_start,
                gap: is_gap,
                close,
            } => {
                if let Some(old) = close {
                    self.close_no_stop(old, STALE_CLOSED);
                    self.row_of(t, old);
                    t.anomalies.push((
                        i as i64,
                        old,
                        STALE_CLOSED,
                        "superseded by a new generation; closed at its last update".into(),
                    ));
                }
                let generation = head.map_or(1, |h| self.sessions[h as usize].generation + 1);
                let mut flags = 0;
                if lost_start {
                    flags |= LOST_START;
                }
                if is_gap {
                    flags |= GENERATION_FROM_START_GAP;
                }
                if !r.timed_by_arrival() {
                    flags |= START_BY_EVENT_TIMESTAMP;
                }
                let mut s = Session {
                    start_us: implied.unwrap_or(r.event_us),
                    stop_us: -1,
                    last_update_us: r.event_us,
                    hwm_in: 0,
                    hwm_out: 0,
                    last_key: 0,
                    nas,
                    generation,
                    session_time: 0,
                    terminate_cause: 0,
                    prev: NONE,
                    row_tag: u32::MAX,
                    str_off: 0,
                    flags: flags as u16,
                    sid_len: 0,
                    state: STATE_OPEN,
                };
                (s.str_off, s.sid_len) = self.strings.store(sid);
                let slot = self.insert_tagged(s, tag);
                for bit in [LOST_START, GENERATION_FROM_START_GAP] {
                    if flags & bit != 0 {
                        t.anomalies
                            .push((i as i64, slot, bit, flag_detail(bit).into()));
                    }
                }
                let o = self.update(i, slot, r, key, policy, p, t);
                self.close_if_rebooted(i, slot, t);
                (o, slot)
            }
            Target::Existing(slot) => {
                let (state, last_key, session_time, flags) = {
                    let s = &self.sessions[slot as usize];
                    (s.state, s.last_key, s.session_time, u32::from(s.flags))
                };
                if last_key == key_prefix(key) {
                    return (OUTCOME_DUPLICATE, slot);
                }
                match (state, r.status) {
                    (STATE_OPEN, _)
                    | (STATE_STOPPED, STATUS_STOP)
                    | (STATE_CLOSED_NO_STOP, STATUS_STOP | STATUS_INTERIM) => {
                        (self.update(i, slot, r, key, policy, p, t), slot)
                    }
                    // An Interim from before the Stop, delivered after it, is older than
                    // what the instance has: the delta rules decide (`update`). So is one
                    // at the Stop's session time when neither mark is a counter the newest
                    // records carried (a Stop with zeros, or without Octets, has no
                    // counter information): sent in the Stop's second, it holds the
                    // session's last counters, which count whichever of the two came first.
                    (STATE_STOPPED, STATUS_INTERIM)
                        if r.session_time().is_some_and(|st| {
                            st < session_time
                                || (st == session_time
                                    && flags & (MARK_IN_AT_NEWEST | MARK_OUT_AT_NEWEST) == 0)
                        }) =>
                    {
                        (self.update(i, slot, r, key, policy, p, t), slot)
                    }
                    (STATE_STOPPED, STATUS_INTERIM) => {
                        self.sessions[slot as usize].flags |= INTERIM_AFTER_STOP as u16;
                        self.row_of(t, slot);
                        t.anomalies.push((
                            i as i64,
                            slot,
                            INTERIM_AFTER_STOP,
                            flag_detail(INTERIM_AFTER_STOP).into(),
                        ));
                        (OUTCOME_LATE, slot)
                    }
                    _ => (OUTCOME_LATE, slot),
                }
            }
        }
    }

    /// A new instance that started before an Accounting-On/Off the engine applied earlier
    /// (its record arrived after the reboot's) was over by then: closed as that On/Off
    /// would have closed it, so the outcome does not depend on which arrived first.
    fn close_if_rebooted(&mut self, i: usize, slot: u32, t: &mut Touched) {
        let s = &self.sessions[slot as usize];
        let rebooted = s.state == STATE_OPEN
            && self.nas[s.nas as usize]
                .last_onoff
                .iter()
                .any(|&(_, _, event_us, _)| s.start_us < event_us);
        if rebooted {
            self.close_by_reboot(
                i,
                slot,
                t,
                "started before an Accounting-On/Off applied earlier; closed at its last update",
            );
        }
    }

    /// Closes an open instance as a NAS reboot does (`nas_reboot_closed`), entry `i`'s doing.
    fn close_by_reboot(&mut self, i: usize, slot: u32, t: &mut Touched, detail: &str) {
        self.close_no_stop(slot, NAS_REBOOT_CLOSED);
        self.row_of(t, slot);
        t.anomalies
            .push((i as i64, slot, NAS_REBOOT_CLOSED, detail.into()));
    }

    /// A late record changes nothing, but a skewed clock is the NAS's: its session is
    /// flagged (once) as an applied record's would be.
    fn note_skew(&mut self, i: usize, slot: u32, r: &Record, t: &mut Touched) {
        let s = &mut self.sessions[slot as usize];
        if !r.skewed() || u32::from(s.flags) & CLOCK_SKEW != 0 {
            return;
        }
        s.flags |= CLOCK_SKEW as u16;
        t.row(slot, s, self.nas[s.nas as usize].key.len());
        t.anomalies
            .push((i as i64, slot, CLOCK_SKEW, skew_detail(r)));
    }

    /// Applies one record to an instance: the delta rules of RADIUS.md.
    fn update(
        &mut self,
        i: usize,
        slot: u32,
        r: &Record,
        key: &[u8; 16],
        policy: NasPolicy,
        p: Input<'_>,
        t: &mut Touched,
    ) -> u8 {
        // (A Start is at session time 0: after an update with a session time it is older
        // than what we have.)
        if r.time_in_session()
            .is_some_and(|st| st < self.sessions[slot as usize].session_time)
        {
            // Older than what we have. While the instance has seen no reset or wrap, a
            // counter above its mark still counts, or the session's usage would depend on
            // the order its records arrived in. If an older record set the mark, counters
            // only grow until a reset, so the records after this one carried no counter in
            // that direction (no Octets, or a Stop's zeros on Lost-Carrier): the mark rises.
            // If the newest record set it, that record's counter is below this older one's:
            // the counter went down between them, and this record brings the usage before
            // that reset (or wrap), as it would have in order.
            let s = &self.sessions[slot as usize];
            let flags = u32::from(s.flags);
            let monotonic = flags & (COUNTER_RESET | WRAP_INFERRED) == 0;
            let gain = |c: Option<u64>, gw: bool, hwm: u64, at_newest: u32| match c {
                Some(c) if monotonic && c > hwm => {
                    if flags & at_newest == 0 {
                        Gain::Raise(c - hwm)
                    } else if policy.infer_wrap && !gw && c < WRAP {
                        Gain::Behind(WRAP, WRAP_INFERRED)
                    } else {
                        Gain::Behind(c, COUNTER_RESET)
                    }
                }
                _ => Gain::None,
            };
            let gains = (
                gain(r.input(), r.input_gw(), s.hwm_in, MARK_IN_AT_NEWEST),
                gain(r.output(), r.output_gw(), s.hwm_out, MARK_OUT_AT_NEWEST),
            );
            // A Stop older than what an instance without one has: the records past it were
            // sent after it (Interim-Updates after Stop, delivered first). It still ends
            // the instance.
            let ends = r.status == STATUS_STOP && s.state != STATE_STOPPED;
            let gained = gains != (Gain::None, Gain::None);
            if gained {
                self.raise_marks(i, slot, r, gains, policy, p, t);
            } else if r.identity().iter().any(|f| !f.is_empty()) {
                // No usage and no state; but a name it carries still fills an empty identity
                // field (a NAS that names the user only in its Start, delivered late).
                let s = &mut self.sessions[slot as usize];
                let row = t.row(slot, s, self.nas[s.nas as usize].key.len());
                t.merge_identity(row, r, p);
            }
            if ends {
                self.stop_behind(i, slot, r, t);
            }
            return if gained || ends {
                OUTCOME_ACCEPTED
            } else {
                OUTCOME_LATE
            };
        }
        let (total_in, total_out) = self.totals(slot);
        let s = &mut self.sessions[slot as usize];
        let t_up = r.session_time().is_some_and(|st| st > s.session_time);
        // The marks follow the NAS's own counters (Acct-Input/Output as sent); the policy's
        // swap applies to the deltas, so a swap turned on or off mid-session changes the
        // direction of later usage and counts nothing twice.
        let is_stop = r.status == STATUS_STOP;
        let wrap = policy.infer_wrap;
        let (d_nas_in, hin, fin) = delta(s.hwm_in, r.input(), r.input_gw(), t_up, is_stop, wrap);
        let (d_nas_out, hout, fout) =
            delta(s.hwm_out, r.output(), r.output_gw(), t_up, is_stop, wrap);
        let (din, dout) = if policy.swap_direction {
            (d_nas_out, d_nas_in)
        } else {
            (d_nas_in, d_nas_out)
        };
        let dsecs = match r.session_time() {
            Some(st) if t_up => u64::from(st - s.session_time),
            _ => 0,
        };
        // Whether each mark is now the counter of a record at the newest session time
        // (MARK_IN_AT_NEWEST): a Stop's zero is no information, and a mark raised by a
        // record without a session time is not known to be the newest.
        let at_newest = |c: Option<u64>, old: u64, new: u64, bit: u32| {
            let is_newest = c == Some(new) && !(is_stop && c == Some(0));
            let set = if t_up {
                is_newest
            } else if new != old {
                is_newest && r.session_time() == Some(s.session_time)
            } else {
                u32::from(s.flags) & bit != 0
            };
            if set {
                bit
            } else {
                0
            }
        };
        let newest = at_newest(r.input(), s.hwm_in, hin, MARK_IN_AT_NEWEST)
            | at_newest(r.output(), s.hwm_out, hout, MARK_OUT_AT_NEWEST);
        s.flags = (u32::from(s.flags) & !(MARK_IN_AT_NEWEST | MARK_OUT_AT_NEWEST) | newest) as u16;
        s.hwm_in = hin;
        s.hwm_out = hout;
        if let Some(st) = r.session_time() {
            s.session_time = s.session_time.max(st);
        }
        let old_flags = u32::from(s.flags);
        let mut new_flags = fin | fout;
        if is_stop && t_up && r.input() == Some(0) && r.output() == Some(0) {
            // 0/0 after the session went on (a NAS that sends zeros on Lost-Carrier), also
            // when nothing was counted before: RADIUS.md flags a Stop with zeros.
            new_flags |= STOP_REGRESSION;
        }
        if r.skewed() {
            new_flags |= CLOCK_SKEW;
        }
        s.last_update_us = s.last_update_us.max(r.event_us);
        s.last_key = key_prefix(key);
        if s.state == STATE_CLOSED_NO_STOP {
            new_flags |= LATE_STOP;
            s.stop_us = s.last_update_us;
        }
        // The first Stop of an open or closed-without-Stop instance records the real stop; a
        // second Stop only goes through the delta rules.
        if is_stop && s.state != STATE_STOPPED {
            new_flags |= STOP_RECEIVED;
            s.state = STATE_STOPPED;
            // Never before the start or an update the instance took (`last_update_us`,
            // which includes this Stop): they can be read by different clocks (a Start
            // timed by arrival, a Stop by a trusted Event-Timestamp running behind; a Stop
            // set aside as skewed and timed by a collector's clock an hour behind).
            s.stop_us = s.last_update_us.max(s.start_us);
            s.terminate_cause = r.terminate_cause().unwrap_or(0);
        } else if is_stop && t_up {
            // A Stop resent with more session time: the session went on until it.
            s.stop_us = s.stop_us.max(r.event_us);
        }
        s.flags |= new_flags as u16;
        let row = t.row(slot, s, self.nas[s.nas as usize].key.len());
        t.merge_identity(row, r, p);
        self.set_totals(
            slot,
            (total_in.saturating_add(din), total_out.saturating_add(dout)),
        );
        if din | dout | dsecs != 0 {
            t.add_usage(slot, row, r.event_us, (din, dout, dsecs));
        }
        for bit in [
            COUNTER_RESET,
            WRAP_INFERRED,
            STOP_REGRESSION,
            CLOCK_SKEW,
            LATE_STOP,
        ] {
            // Clock skew is a property of the NAS: report it once per session, not per record.
            if new_flags & bit != 0 && !(bit == CLOCK_SKEW && old_flags & CLOCK_SKEW != 0) {
                let detail = if bit == CLOCK_SKEW {
                    skew_detail(r)
                } else {
                    flag_detail(bit).into()
                };
                t.anomalies.push((i as i64, slot, bit, detail));
            }
        }
        OUTCOME_ACCEPTED
    }

    /// Applies the counters of a record older than the instance's session time that are
    /// above its marks (`gains`, in the NAS's directions; see `update`). A raise lifts the
    /// mark; a reset or wrap behind the newest record keeps it and adds the usage before the
    /// reset (the whole counter) or the wrap (2³²), and is flagged. The usage goes to the
    /// hour of the record's event time. Nothing else changes: the session time, the last
    /// update and the state are the newer records'.
    #[cold]
    #[inline(never)]
    fn raise_marks(
        &mut self,
        i: usize,
        slot: u32,
        r: &Record,
        (gain_in, gain_out): (Gain, Gain),
        policy: NasPolicy,
        p: Input<'_>,
        t: &mut Touched,
    ) {
        let (total_in, total_out) = self.totals(slot);
        let s = &mut self.sessions[slot as usize];
        let mut flags = 0;
        let mut apply = |g: Gain, hwm: &mut u64| match g {
            Gain::None => 0,
            Gain::Raise(d) => {
                *hwm += d;
                d
            }
            Gain::Behind(d, flag) => {
                flags |= flag;
                d
            }
        };
        let gain_in = apply(gain_in, &mut s.hwm_in);
        let gain_out = apply(gain_out, &mut s.hwm_out);
        s.flags |= flags as u16;
        let (din, dout) = if policy.swap_direction {
            (gain_out, gain_in)
        } else {
            (gain_in, gain_out)
        };
        let row = t.row(slot, s, self.nas[s.nas as usize].key.len());
        t.merge_identity(row, r, p);
        self.set_totals(
            slot,
            (total_in.saturating_add(din), total_out.saturating_add(dout)),
        );
        t.add_usage(slot, row, r.event_us, (din, dout, 0));
        for bit in [COUNTER_RESET, WRAP_INFERRED] {
            if flags & bit != 0 {
                t.anomalies
                    .push((i as i64, slot, bit, flag_detail(bit).into()));
            }
        }
        self.note_skew(i, slot, r, t);
    }

    /// Ends an instance with a Stop older than records it took (see `update`): those were
    /// Interim-Updates sent after the Stop and delivered before it. Their usage was counted
    /// when they came and stays (the engine keeps no history to take it back), so the stop is
    /// the last update, as for a session closed without a Stop, and the instance is flagged
    /// `interim_after_stop`; the Stop's terminate cause is recorded. Without this the
    /// instance stayed open until the stale sweep, and the Stop was lost.
    #[cold]
    #[inline(never)]
    fn stop_behind(&mut self, i: usize, slot: u32, r: &Record, t: &mut Touched) {
        let s = &mut self.sessions[slot as usize];
        let late = s.state == STATE_CLOSED_NO_STOP;
        s.state = STATE_STOPPED;
        s.stop_us = s.last_update_us.max(s.start_us);
        s.terminate_cause = r.terminate_cause().unwrap_or(0);
        let mut flags = STOP_RECEIVED | INTERIM_AFTER_STOP;
        if late {
            flags |= LATE_STOP;
        }
        s.flags |= flags as u16;
        t.row(slot, s, self.nas[s.nas as usize].key.len());
        t.anomalies.push((
            i as i64,
            slot,
            INTERIM_AFTER_STOP,
            "Stop delivered after an Interim-Update sent after it; closed at its last update, \
             whose usage stays counted"
                .into(),
        ));
        if late {
            t.anomalies
                .push((i as i64, slot, LATE_STOP, flag_detail(LATE_STOP).into()));
        }
        self.note_skew(i, slot, r, t);
    }

    /// Closes sessions with no update for k × interim interval + grace, at their last update.
    pub fn sweep(&mut self, as_of_us: i64) -> ApplyOutput {
        let mut t = Touched::default();
        let mut touched_nas: Vec<u32> = Vec::new();
        for slot in 0..self.sessions.len() as u32 {
            let s = &self.sessions[slot as usize];
            if s.state != STATE_OPEN {
                continue;
            }
            let policy = self.nas[s.nas as usize].policy;
            if as_of_us.saturating_sub(s.last_update_us) > policy.stale_after_us() {
                let nas = s.nas;
                self.close_no_stop(slot, STALE_CLOSED);
                self.row_of(&mut t, slot);
                t.anomalies
                    .push((-1, slot, STALE_CLOSED, flag_detail(STALE_CLOSED).into()));
                if !touched_nas.contains(&nas) {
                    touched_nas.push(nas);
                }
            }
        }
        touched_nas.sort_by(|&a, &b| self.nas[a as usize].key.cmp(&self.nas[b as usize].key));
        let mut out = ApplyOutput::default();
        for id in touched_nas {
            let st = &mut self.nas[id as usize];
            let seq = st.seq.unwrap_or(0) + 1;
            st.seq = Some(seq);
            out.nas_keys.push(st.key.clone());
            out.nas_seq.push(seq);
        }
        self.finish(&mut out, &mut t);
        // Forget closed instances nothing will touch any more (their rows are durable); an
        // id's newest generation only with every instance of the id: a held older one (a
        // session found after the newer one began, still open) would number the id's next
        // instance from itself, with the forgotten one's number.
        let forgettable = |s: &Session| {
            s.live()
                && s.state != STATE_OPEN
                && as_of_us.saturating_sub(s.last_update_us) > CLOSED_RETENTION_US
        };
        for slot in 0..self.sessions.len() as u32 {
            let s = &self.sessions[slot as usize];
            if !forgettable(s) {
                continue;
            }
            if self.index.get(sid_tag(s.nas, self.strings.sid(s))) == Some(slot) {
                let mut older = s.prev;
                while older != NONE && forgettable(&self.sessions[older as usize]) {
                    older = self.sessions[older as usize].prev;
                }
                if older != NONE {
                    continue;
                }
            }
            let n = &mut self.nas[s.nas as usize];
            n.omitted_start_max = n.omitted_start_max.max(s.start_us).max(i64::MIN + 1);
            self.remove(slot);
        }
        self.compact();
        out
    }
}

/// Byte equality for short strings, inline (a `memcmp` call costs more than the compare).
#[inline]
fn short_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |v: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(v);
        u64::from_le_bytes(w)
    };
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let same_tail = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .all(|(x, y)| x == y);
    same_tail && a8.zip(b8).all(|(x, y)| word(x) == word(y))
}

fn key_prefix(k: &[u8; 16]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&k[..8]);
    u64::from_le_bytes(a)
}

/// `(delta, new high-water mark, flag)` for one direction.
fn delta(
    hwm: u64,
    c: Option<u64>,
    gigawords: bool,
    t_up: bool,
    is_stop: bool,
    infer_wrap: bool,
) -> (u64, u64, u32) {
    match c {
        None => (0, hwm, if is_stop { STOP_REGRESSION } else { 0 }),
        Some(c) if c >= hwm => (c - hwm, c, 0),
        Some(c) => {
            let wrap_ok = infer_wrap && !gigawords && hwm < WRAP && t_up;
            if is_stop && c == 0 {
                // Some NASes send 0/0 on Lost-Carrier: no information, the mark stays.
                (0, hwm, STOP_REGRESSION)
            } else if wrap_ok {
                (WRAP - hwm + c, c, WRAP_INFERRED)
            } else if t_up {
                (c, c, COUNTER_RESET)
            } else if is_stop {
                (0, hwm, STOP_REGRESSION)
            } else {
                (0, hwm, 0)
            }
        }
    }
}

fn flag_detail(bit: u32) -> &'static str {
    match bit {
        LOST_START => "no Start seen; start inferred as event time - session time",
        COUNTER_RESET => "counter went down while session time went up; counted from zero",
        WRAP_INFERRED => "counter went down on a NAS without gigawords; 32-bit wrap inferred",
        STOP_REGRESSION => {
            "Stop without counters, with zeros or with lower ones at no later session time; high-water mark kept"
        }
        STALE_CLOSED => "no update within k x interim interval + grace; closed at last update",
        LATE_STOP => "update after the session was closed without a Stop; delta applied",
        INTERIM_AFTER_STOP => "Interim-Update after Stop; ignored",
        GENERATION_FROM_START_GAP => "implied start far from the open instance's start",
        _ => "",
    }
}

fn skew_detail(r: &Record) -> String {
    format!(
        "Event-Timestamp disagrees with arrival - delay; event time {} us used",
        r.event_us
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn session_stays_compact() {
        // 80 bytes per session plus its session id and index entry (benchmarks/RESULTS.md).
        assert!(std::mem::size_of::<super::Session>() <= 80);
        println!("Session is {} bytes", std::mem::size_of::<super::Session>());
    }

    #[test]
    fn text_columns_read_back_as_rows_pushed_one_by_one() {
        use super::{StrColumn, TextBuilder};
        let cases: [&[&[u8]]; 4] = [
            &[b"alice", b"", "bj\u{f6}rn".as_bytes()],
            &[b"ok", b"bad\xff", b"ok"],
            // Each row alone is invalid; together the two would be a valid "\u{e9}".
            &[b"x\xc3", b"\xa9y"],
            &[],
        ];
        for rows in cases {
            let mut built = TextBuilder::with_capacity(rows.len(), 0);
            let mut expected = StrColumn::default();
            for row in rows {
                built.push(row);
                expected.push_bytes(row);
            }
            let built = built.finish();
            assert_eq!(built, expected);
            assert_eq!(built.len(), rows.len());
        }
    }
}
