//! IPv4 and IPv6 fragment reassembly for the capture reader, bounded in time and memory.
//!
//! A datagram is keyed by (IP version, source, destination, protocol, identification) and
//! is whole when its last fragment (More Fragments clear) has given its length and the
//! fragments received cover every octet before it. It is returned by the fragment that
//! completes it, so it takes that fragment's capture time: the moment it was whole.
//! Fragments that overlap with the same octets are repeats (a capture on two interfaces
//! sees each one twice); fragments that disagree, or that cannot belong to one datagram,
//! make it conflicting. A completed datagram is remembered for the timeout so that the
//! repeats of its fragments are recognised rather than started as a new datagram.
//!
//! Nothing is dropped without being counted: a datagram that is not completed within
//! [`TIMEOUT_US`] of its first fragment, or by the end of the capture, counts as missing a
//! fragment, or as cut when the capture's snaplen cut one of its fragments short; one whose
//! fragments conflict counts as conflicting; one pushed out to keep the held bytes under the
//! memory limit counts as evicted. A datagram whose first fragment
//! shows it is not an accounting request (another protocol, port or RADIUS code) is not
//! counted.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::mem::size_of;

/// How long (capture time) the fragments of a datagram wait for the rest after its first
/// one arrived: RFC 8200's 60 s, the longest a receiving host waits.
pub const TIMEOUT_US: i64 = 60_000_000;

/// The bytes pending datagrams may hold at once (16,384 requests of 4 KiB in flight).
pub const MEMORY_BYTES: usize = 64 << 20;

/// Largest datagram (IPv4 total length, IPv6 payload length) a fragment may reach into.
const MAX_DATAGRAM: usize = 65_535;

/// What a datagram costs beyond its buffers: key, bookkeeping, its hash-map slot.
const ENTRY_BYTES: usize = 160;

/// The identity of a fragmented datagram. IPv4 addresses sit in the first 4 octets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub v6: bool,
    pub source: [u8; 16],
    pub destination: [u8; 16],
    /// IPv4 protocol; 0 for IPv6, whose Fragment header names the protocol per fragment.
    pub protocol: u8,
    pub id: u32,
}

/// One fragment as its IP header describes it.
#[derive(Debug, Clone, Copy)]
pub struct Fragment<'a> {
    pub key: Key,
    /// Offset of its data in the datagram, in octets.
    pub offset: usize,
    /// More Fragments: not the last one.
    pub more: bool,
    /// Length of its data by its IP header.
    pub length: usize,
    /// Its data as captured: shorter than `length` when the capture's snaplen cut it, or when
    /// the packet is malformed.
    pub bytes: &'a [u8],
    /// The capture's snaplen cut it short.
    pub cut: bool,
    /// The first header of the datagram's data (IPv4 protocol, IPv6 Fragment header's Next
    /// Header), used when the fragment is the first one.
    pub first_header: u8,
    /// For the first fragment (offset 0): whether its headers show an accounting request
    /// (Some(false): another protocol, port or RADIUS code), None when they do not say.
    pub accounting: Option<bool>,
}

/// Datagrams that were not reassembled, by reason; each counted once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Incomplete {
    /// A fragment never arrived (by the timeout or the end of the capture).
    pub missing: usize,
    /// Fragments disagree (overlaps with other octets, two lengths, past the maximum size).
    pub conflicting: usize,
    /// Dropped, oldest first, to keep the pending bytes under the memory limit.
    pub evicted: usize,
    /// Cut short by the capture's snaplen: a fragment of it (counted here instead of as
    /// missing), or the datagram itself when it was not fragmented (counted by the reader).
    pub cut: usize,
}

impl Incomplete {
    #[must_use]
    pub fn total(&self) -> usize {
        self.missing + self.conflicting + self.evicted + self.cut
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Collecting,
    /// Its fragments disagree: it holds no data and takes in the rest of its fragments
    /// until it expires, so that it is counted once.
    Conflicting,
    /// Whole and returned; kept to recognise repeats of its fragments.
    Done,
}

#[derive(Debug)]
struct Pending {
    serial: u64,
    created_us: Option<i64>,
    state: State,
    data: Vec<u8>,
    /// Octet ranges received, sorted, disjoint and not touching.
    have: Vec<(usize, usize)>,
    /// The datagram's length, once its last fragment arrived.
    end: Option<usize>,
    first_header: Option<u8>,
    accounting: Option<bool>,
    /// A fragment of it was cut short by the capture's snaplen.
    cut: bool,
}

impl Pending {
    fn bytes(&self) -> usize {
        ENTRY_BYTES + self.data.capacity() + self.have.capacity() * size_of::<(usize, usize)>()
    }

    fn conflict(&mut self) {
        self.state = State::Conflicting;
        self.data = Vec::new();
        self.have = Vec::new();
    }

    /// Whether the fragment repeats octets of this completed datagram.
    fn repeats(&self, f: &Fragment<'_>) -> bool {
        let end = f.offset + f.length;
        self.end
            .is_some_and(|e| end <= e && (f.more || end == e) && (!f.more || f.length % 8 == 0))
            && self.data.get(f.offset..f.offset + f.bytes.len()) == Some(f.bytes)
    }

    /// Adds a fragment of a datagram still collecting; false when it conflicts.
    fn merge(&mut self, f: &Fragment<'_>) -> bool {
        let end = f.offset + f.length;
        if (f.more && f.length % 8 != 0) || end > MAX_DATAGRAM {
            return false;
        }
        match (f.more, self.end) {
            (true, Some(e)) if end > e => return false,
            (false, Some(e)) if end != e => return false,
            (false, None) => {
                if self.have.last().is_some_and(|&(_, e)| e > end) {
                    return false;
                }
                self.end = Some(end);
            }
            _ => {}
        }
        let (start, stop) = (f.offset, f.offset + f.bytes.len());
        if start == stop {
            return true;
        }
        // The ranges this fragment overlaps or touches: their octets must agree with it.
        let first = self.have.partition_point(|&(_, e)| e < start);
        let last = self.have.partition_point(|&(s, _)| s <= stop);
        let touched = self.have.get(first..last).unwrap_or_default();
        for &(s, e) in touched {
            let (lo, hi) = (s.max(start), e.min(stop));
            if lo < hi && self.data.get(lo..hi) != f.bytes.get(lo - start..hi - start) {
                return false;
            }
        }
        let merged = match (touched.first(), touched.last()) {
            (Some(a), Some(b)) => (a.0.min(start), b.1.max(stop)),
            _ => (start, stop),
        };
        if self.data.len() < stop {
            self.data.resize(stop, 0);
        }
        if let Some(slot) = self.data.get_mut(start..stop) {
            slot.copy_from_slice(f.bytes);
        }
        self.have.splice(first..last, [merged]);
        true
    }

    fn whole(&self) -> bool {
        match self.end {
            Some(0) => true,
            Some(e) => self.have == [(0, e)],
            None => false,
        }
    }
}

/// Why a pending datagram leaves without being completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaving {
    Expired,
    Evicted,
}

/// Fragments waiting for the rest of their datagram.
#[derive(Debug)]
pub struct Reassembler {
    pending: HashMap<Key, Pending>,
    /// Datagrams in the order they were started, for expiry and eviction; entries whose
    /// datagram has gone (or was started again) are skipped when they reach the front.
    order: VecDeque<(u64, Key)>,
    serial: u64,
    /// The time of the last timed packet: a packet without one is taken to start then.
    clock: Option<i64>,
    held_bytes: usize,
    limit_bytes: usize,
    incomplete: Incomplete,
}

impl Reassembler {
    #[must_use]
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            pending: HashMap::new(),
            order: VecDeque::new(),
            serial: 0,
            clock: None,
            held_bytes: 0,
            limit_bytes,
            incomplete: Incomplete::default(),
        }
    }

    /// Adds a fragment captured at `time_us` (None: a block without a time). Returns the
    /// whole datagram's data and its first header when this fragment completes it.
    pub fn add(&mut self, f: &Fragment<'_>, time_us: Option<i64>) -> Option<(u8, Vec<u8>)> {
        if let Some(now) = time_us {
            self.expire(now);
            self.clock = Some(now);
        }
        let started_us = time_us.or(self.clock);
        let mut whole = None;
        let before;
        let after;
        match self.pending.entry(f.key) {
            Entry::Occupied(mut slot) => {
                let p = slot.get_mut();
                before = p.bytes();
                if p.state == State::Done && p.repeats(f) {
                    return None;
                }
                if p.state == State::Done {
                    // Not a repeat: a new datagram with the same identification.
                    self.serial += 1;
                    *p = Self::start(self.serial, started_us);
                    self.order.push_back((self.serial, f.key));
                }
                Self::take(p, f, &mut whole);
                after = p.bytes();
            }
            Entry::Vacant(slot) => {
                self.serial += 1;
                let p = slot.insert(Self::start(self.serial, started_us));
                self.order.push_back((self.serial, f.key));
                before = 0;
                Self::take(p, f, &mut whole);
                after = p.bytes();
            }
        }
        self.held_bytes = self.held_bytes + after - before;
        while self.held_bytes + self.order.len() * size_of::<(u64, Key)>() > self.limit_bytes {
            if !self.leave_oldest(Leaving::Evicted, None) {
                break;
            }
        }
        whole
    }

    fn start(serial: u64, created_us: Option<i64>) -> Pending {
        Pending {
            serial,
            created_us,
            state: State::Collecting,
            data: Vec::new(),
            have: Vec::new(),
            end: None,
            first_header: None,
            accounting: None,
            cut: false,
        }
    }

    fn take(p: &mut Pending, f: &Fragment<'_>, whole: &mut Option<(u8, Vec<u8>)>) {
        p.cut |= f.cut;
        if f.offset == 0 {
            p.first_header = Some(f.first_header);
            if f.accounting.is_some() {
                p.accounting = f.accounting;
            }
        }
        if p.state != State::Collecting {
            return;
        }
        if !p.merge(f) {
            p.conflict();
            return;
        }
        if p.whole() {
            if let Some(first) = p.first_header {
                p.state = State::Done;
                p.data.truncate(p.end.unwrap_or(0));
                p.data.shrink_to_fit();
                *whole = Some((first, p.data.clone()));
            }
        }
    }

    /// Removes datagrams started more than the timeout before `now`, oldest first. One
    /// started before any packet had a time (Simple Packet Blocks) stops the scan: it
    /// leaves by eviction or at the end.
    fn expire(&mut self, now: i64) {
        while self.leave_oldest(Leaving::Expired, Some(now)) {}
    }

    /// Removes the oldest datagram (with `now`, only when it has expired by then), counting
    /// it; false when there was none to remove.
    fn leave_oldest(&mut self, why: Leaving, now: Option<i64>) -> bool {
        while let Some(&(serial, key)) = self.order.front() {
            let Some(p) = self.pending.get(&key).filter(|p| p.serial == serial) else {
                self.order.pop_front(); // gone, or started again since
                continue;
            };
            if let Some(now) = now {
                let expired = p
                    .created_us
                    .is_some_and(|c| now.saturating_sub(c) > TIMEOUT_US);
                if !expired {
                    return false;
                }
            }
            self.order.pop_front();
            if let Some(p) = self.pending.remove(&key) {
                self.held_bytes -= p.bytes();
                self.count(&p, why);
            }
            return true;
        }
        false
    }

    fn count(&mut self, p: &Pending, why: Leaving) {
        if p.accounting == Some(false) {
            return;
        }
        match (p.state, why) {
            (State::Done, _) => {}
            (State::Conflicting, _) => self.incomplete.conflicting += 1,
            (State::Collecting, Leaving::Expired) if p.cut => self.incomplete.cut += 1,
            (State::Collecting, Leaving::Expired) => self.incomplete.missing += 1,
            (State::Collecting, Leaving::Evicted) => self.incomplete.evicted += 1,
        }
    }

    /// The datagrams that were not reassembled, counting those still waiting as missing
    /// a fragment (the capture has ended).
    #[must_use]
    pub fn finish(mut self) -> Incomplete {
        for p in std::mem::take(&mut self.pending).into_values() {
            self.count(&p, Leaving::Expired);
        }
        self.incomplete
    }
}
