//! The `PyO3` layer: conversions and the one error mapping, nothing else.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use numpy::{Element, PyArray1, PyReadonlyArray1};
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::accounting::{self, ApplyOutput, EngineError, SessionTable, StrColumn};
use crate::money::{self, MoneyError};
use crate::pcap::{self, PcapError};
use crate::radius::{self, RadiusError};
use crate::record::Prepared;

create_exception!(
    _native,
    RatingError,
    PyValueError,
    "A value the rating core refused."
);

impl From<MoneyError> for PyErr {
    fn from(err: MoneyError) -> Self {
        RatingError::new_err(err.to_string())
    }
}

impl From<EngineError> for PyErr {
    fn from(err: EngineError) -> Self {
        RatingError::new_err(err.to_string())
    }
}

impl From<RadiusError> for PyErr {
    fn from(err: RadiusError) -> Self {
        RatingError::new_err(err.to_string())
    }
}

impl From<PcapError> for PyErr {
    fn from(err: PcapError) -> Self {
        RatingError::new_err(err.to_string())
    }
}

/// Parses a decimal string into integer units of 10^-scale, refusing any rounding.
#[pyfunction]
fn parse_units(text: &str, scale: u32) -> PyResult<i64> {
    Ok(money::parse_units(text, scale)?)
}

/// Formats integer units of 10^-scale as a decimal string.
#[pyfunction]
fn format_units(units: i64, scale: u32) -> String {
    money::format_units(units, scale)
}

/// Names of the session flag bits set in `flags`.
#[pyfunction]
fn flag_names(flags: u64) -> Vec<&'static str> {
    accounting::flag_names((flags & u64::from(u32::MAX)) as u32)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Decodes one Accounting-Request; with a secret, verifies its authenticator.
#[pyfunction]
#[pyo3(signature = (packet, secret))]
fn decode_radius<'py>(
    py: Python<'py>,
    packet: &[u8],
    secret: Option<&[u8]>,
) -> PyResult<Bound<'py, PyDict>> {
    let p = radius::frame(packet)?;
    if p.code != radius::CODE_ACCOUNTING_REQUEST {
        return Err(RadiusError::NotAccountingRequest(p.code).into());
    }
    if let Some(secret) = secret {
        if !radius::verify_request(&p, secret) {
            return Err(RadiusError::BadAuthenticator.into());
        }
    }
    let a = radius::parse_attrs(p.attributes)?;
    if a.status_type.is_none() {
        return Err(RatingError::new_err("missing Acct-Status-Type"));
    }
    let counter = |o: Option<u32>, g: Option<u32>| {
        o.map(|o| (u64::from(g.unwrap_or(0)) << 32) | u64::from(o))
    };
    let prefix = |v: Option<(u8, std::net::Ipv6Addr)>| v.map(|(len, ip)| format!("{ip}/{len}"));
    let d = PyDict::new(py);
    d.set_item("code", p.code)?;
    d.set_item("identifier", p.identifier)?;
    d.set_item("length", p.bytes.len())?;
    d.set_item("authenticator", PyBytes::new(py, p.authenticator))?;
    d.set_item("status_type", a.status_type)?;
    d.set_item("acct_session_id", a.acct_session_id.map(text))?;
    d.set_item("user_name", a.user_name.map(text))?;
    d.set_item("nas_ip_address", a.nas_ip_address.map(|ip| ip.to_string()))?;
    d.set_item(
        "nas_ipv6_address",
        a.nas_ipv6_address.map(|ip| ip.to_string()),
    )?;
    d.set_item("nas_identifier", a.nas_identifier.map(text))?;
    d.set_item("nas_port", a.nas_port)?;
    d.set_item("nas_port_id", a.nas_port_id.map(text))?;
    d.set_item("input_octets", a.input_octets)?;
    d.set_item("input_gigawords", a.input_gigawords)?;
    d.set_item("output_octets", a.output_octets)?;
    d.set_item("output_gigawords", a.output_gigawords)?;
    d.set_item("input_bytes", counter(a.input_octets, a.input_gigawords))?;
    d.set_item("output_bytes", counter(a.output_octets, a.output_gigawords))?;
    d.set_item("session_time_s", a.session_time_s)?;
    d.set_item("event_timestamp", a.event_timestamp_s)?;
    d.set_item("delay_time_s", a.delay_time_s)?;
    d.set_item("terminate_cause", a.terminate_cause)?;
    d.set_item(
        "framed_ip_address",
        a.framed_ip_address.map(|ip| ip.to_string()),
    )?;
    d.set_item("framed_ipv6_prefix", prefix(a.framed_ipv6_prefix))?;
    d.set_item("delegated_ipv6_prefix", prefix(a.delegated_ipv6_prefix))?;
    d.set_item("calling_station_id", a.calling_station_id.map(text))?;
    let classes = PyList::empty(py);
    for (ty, v) in radius::attributes(p.attributes) {
        if ty == 25 {
            classes.append(PyBytes::new(py, v))?;
        }
    }
    d.set_item("class", classes)?;
    Ok(d)
}

/// The Accounting-Response (code 5) that acknowledges `request`.
#[pyfunction]
fn accounting_response<'py>(
    py: Python<'py>,
    request: &[u8],
    secret: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    let resp = radius::accounting_response(request, secret)?;
    Ok(PyBytes::new(py, &resp))
}

type PcapColumns<'py> = (
    Vec<Bound<'py, PyBytes>>,
    Vec<String>,
    Bound<'py, PyArray1<i64>>,
    Option<usize>,
    Bound<'py, PyDict>,
);

type PcapChunk<'py> = (
    Vec<Bound<'py, PyBytes>>,
    Vec<String>,
    Bound<'py, PyArray1<i64>>,
);

/// (packets, sources, capture times in µs) of datagrams, in their order.
fn datagram_columns(py: Python<'_>, grams: Vec<pcap::Datagram>) -> PcapChunk<'_> {
    let packets = grams.iter().map(|g| PyBytes::new(py, &g.payload)).collect();
    let times: Vec<i64> = grams.iter().map(|g| g.time_us).collect();
    let sources = grams.into_iter().map(|g| g.source).collect();
    (packets, sources, PyArray1::from_vec(py, times))
}

fn incomplete_dict(py: Python<'_>, incomplete: pcap::Incomplete) -> PyResult<Bound<'_, PyDict>> {
    let counts = PyDict::new(py);
    counts.set_item("missing", incomplete.missing)?;
    counts.set_item("conflicting", incomplete.conflicting)?;
    counts.set_item("evicted", incomplete.evicted)?;
    counts.set_item("cut", incomplete.cut)?;
    Ok(counts)
}

/// RADIUS Accounting-Requests of a pcap or pcapng file's complete records: (packets,
/// sources, capture times in µs, byte offset of a last record cut short or None, counts of
/// datagrams that may hold requests and were not read whole, by reason).
#[pyfunction]
fn read_pcap<'py>(py: Python<'py>, data: &[u8]) -> PyResult<PcapColumns<'py>> {
    let capture = py.detach(|| pcap::read_capture(data))?;
    let (packets, sources, times) = datagram_columns(py, capture.datagrams);
    Ok((
        packets,
        sources,
        times,
        capture.truncated_at,
        incomplete_dict(py, capture.incomplete)?,
    ))
}

/// A capture file read a chunk of requests at a time (`pcap::CaptureStream`).
#[pyclass(frozen, module = "rating_core._native")]
struct CaptureReader {
    inner: Mutex<pcap::CaptureStream<File>>,
    length: usize,
}

impl CaptureReader {
    /// The one way the stream is read: with the GIL released and the stream locked.
    fn detached<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut pcap::CaptureStream<File>) -> Result<T, PcapError> + Send,
    ) -> PyResult<T> {
        py.detach(|| -> PyResult<T> {
            let mut stream = self
                .inner
                .lock()
                .map_err(|_| RatingError::new_err("capture reader poisoned"))?;
            Ok(f(&mut stream)?)
        })
    }
}

/// A scan's request count, distinct sources, and the sources a secret verified none of (with
/// how many of their requests were checked).
type ScanSummary = (usize, Vec<String>, Vec<(String, usize)>);

#[pymethods]
impl CaptureReader {
    #[new]
    #[pyo3(signature = (path, length=None))]
    fn new(py: Python<'_>, path: PathBuf, length: Option<u64>) -> PyResult<Self> {
        let (stream, length) = py.detach(move || -> PyResult<_> {
            let file = File::open(path)?;
            let size = file.metadata()?.len();
            let length = usize::try_from(length.map_or(size, |l| l.min(size)))
                .map_err(|_| RatingError::new_err("pcap: the file is too large to address"))?;
            Ok((pcap::CaptureStream::new(file, length)?, length))
        })?;
        Ok(Self {
            inner: Mutex::new(stream),
            length,
        })
    }

    /// The bytes of the file that are read: its length when opened, or `length` if less.
    #[getter]
    fn length(&self) -> usize {
        self.length
    }

    /// The next requests (at least one, at most `max_requests`), or None at the end.
    fn next_chunk<'py>(
        &self,
        py: Python<'py>,
        max_requests: usize,
    ) -> PyResult<Option<PcapChunk<'py>>> {
        let grams = self.detached(py, |s| s.next_chunk(max_requests))?;
        Ok((!grams.is_empty()).then(|| datagram_columns(py, grams)))
    }

    /// Reads the rest of the capture keeping only its requests' count and distinct sources.
    /// With `secret`, also the sources it cannot be the secret of: each with how many of its
    /// requests are framed well enough to check, when there are some and `secret` verifies
    /// none of them (a wrong `--secret`, found before it is set for anyone).
    #[pyo3(signature = (secret=None))]
    fn scan(&self, py: Python<'_>, secret: Option<&[u8]>) -> PyResult<ScanSummary> {
        self.detached(py, |stream| {
            // Per source: requests whose authenticator could be checked, and those it verified.
            let mut sources: BTreeMap<String, (usize, usize)> = BTreeMap::new();
            let mut count = 0;
            loop {
                let chunk = stream.next_chunk(4096)?;
                if chunk.is_empty() {
                    break;
                }
                count += chunk.len();
                for g in chunk {
                    let checked = secret.and_then(|secret| {
                        radius::frame(&g.payload)
                            .ok()
                            .map(|p| radius::verify_request(&p, secret))
                    });
                    let seen = sources.entry(g.source).or_default();
                    if let Some(verified) = checked {
                        seen.0 += 1;
                        seen.1 += usize::from(verified);
                    }
                }
            }
            let unverified = sources
                .iter()
                .filter(|(_, &(checked, verified))| checked > 0 && verified == 0)
                .map(|(source, &(checked, _))| (source.clone(), checked))
                .collect();
            Ok((count, sources.into_keys().collect(), unverified))
        })
    }

    #[getter]
    fn done(&self, py: Python<'_>) -> PyResult<bool> {
        self.detached(py, |s| Ok(s.is_done()))
    }

    #[getter]
    fn truncated_at(&self, py: Python<'_>) -> PyResult<Option<usize>> {
        self.detached(py, |s| Ok(s.truncated_at()))
    }

    #[getter]
    fn incomplete<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let counts = self.detached(py, |s| Ok(s.incomplete()))?;
        incomplete_dict(py, counts)
    }
}

#[pyclass(frozen, name = "NasPolicy", module = "rating_core._native")]
#[derive(Clone, Copy)]
struct PyNasPolicy {
    inner: accounting::NasPolicy,
}

#[pymethods]
impl PyNasPolicy {
    #[new]
    #[pyo3(signature = (*, swap_direction=false, infer_wrap=false, interim_interval_s=600, stale_multiplier=3, grace_s=300, clock_skew_tolerance_s=300))]
    fn new(
        swap_direction: bool,
        infer_wrap: bool,
        interim_interval_s: u32,
        stale_multiplier: u32,
        grace_s: u32,
        clock_skew_tolerance_s: u32,
    ) -> Self {
        Self {
            inner: accounting::NasPolicy {
                swap_direction,
                infer_wrap,
                interim_interval_s,
                stale_multiplier,
                grace_s,
                clock_skew_tolerance_s,
            },
        }
    }
    #[getter]
    fn swap_direction(&self) -> bool {
        self.inner.swap_direction
    }
    #[getter]
    fn infer_wrap(&self) -> bool {
        self.inner.infer_wrap
    }
    #[getter]
    fn interim_interval_s(&self) -> u32 {
        self.inner.interim_interval_s
    }
    #[getter]
    fn stale_multiplier(&self) -> u32 {
        self.inner.stale_multiplier
    }
    #[getter]
    fn grace_s(&self) -> u32 {
        self.inner.grace_s
    }
    #[getter]
    fn clock_skew_tolerance_s(&self) -> u32 {
        self.inner.clock_skew_tolerance_s
    }
    fn __repr__(&self) -> String {
        let p = self.inner;
        format!(
            "NasPolicy(swap_direction={}, infer_wrap={}, interim_interval_s={}, stale_multiplier={}, grace_s={}, clock_skew_tolerance_s={})",
            if p.swap_direction { "True" } else { "False" },
            if p.infer_wrap { "True" } else { "False" },
            p.interim_interval_s,
            p.stale_multiplier,
            p.grace_s,
            p.clock_skew_tolerance_s
        )
    }
}

/// A decoded, validated batch; touches no session state.
#[pyclass(frozen, module = "rating_core._native")]
struct PreparedBatch {
    inner: Arc<Prepared>,
    /// The batch bytes the prepared offsets refer to (kept, not copied).
    batch: Py<PyBytes>,
}

#[pymethods]
impl PreparedBatch {
    #[getter]
    fn batch_id(&self) -> &str {
        &self.inner.batch_id
    }
    #[getter]
    fn nas_keys(&self) -> Vec<String> {
        self.inner.nas_keys.clone()
    }
    /// Content key per entry (V16; all-zero when quarantined), for the ledger lookup.
    #[getter]
    fn content_key<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let keys: Vec<[u8; 16]> = self.inner.records.iter().map(|r| r.key).collect();
        void16(py, &keys)
    }
    /// `(entry index, Accounting-Response)` of each raw entry that authenticated and was
    /// not quarantined, ascending: relay one only once its record is durable.
    #[getter]
    fn responses<'py>(&self, py: Python<'py>) -> Vec<(u32, Bound<'py, PyBytes>)> {
        self.inner
            .responses
            .iter()
            .map(|(i, r)| (*i, PyBytes::new(py, r)))
            .collect()
    }
    /// `(entry index, reason)` of each quarantined entry, ascending.
    #[getter]
    fn quarantine(&self) -> Vec<(u32, String)> {
        self.inner.quarantine.clone()
    }
    fn __len__(&self) -> usize {
        self.inner.records.len()
    }
}

fn void16<'py>(py: Python<'py>, keys: &[[u8; 16]]) -> PyResult<Bound<'py, PyAny>> {
    let flat: Vec<u8> = keys.iter().flatten().copied().collect();
    let np = py.import("numpy")?;
    np.call_method1("frombuffer", (PyBytes::new(py, &flat), "V16"))?
        .call_method0("copy")
}

fn col<T: Element + Copy>(obj: &Bound<'_, PyAny>, dtype: &str) -> PyResult<Vec<T>> {
    let np = obj.py().import("numpy")?;
    let arr = np.call_method1("ascontiguousarray", (obj, dtype))?;
    let ro: PyReadonlyArray1<'_, T> = arr.extract()?;
    Ok(ro.as_slice()?.to_vec())
}

fn keys_col(obj: &Bound<'_, PyAny>) -> PyResult<Vec<[u8; 16]>> {
    let np = obj.py().import("numpy")?;
    let arr = np.call_method1("ascontiguousarray", (obj, "V16"))?;
    let raw: Vec<u8> = arr.call_method0("tobytes")?.extract()?;
    Ok(raw
        .chunks_exact(16)
        .map(|c| {
            let mut k = [0u8; 16];
            k.copy_from_slice(c);
            k
        })
        .collect())
}

/// Session instances, one row per index, all arrays of equal length.
#[pyclass(frozen, module = "rating_core._native")]
struct SessionColumns {
    inner: SessionTable,
}

#[pymethods]
impl SessionColumns {
    #[getter]
    fn nas_key(&self) -> Vec<&str> {
        self.inner.nas_key.iter().collect()
    }
    #[getter]
    fn acct_session_id(&self) -> Vec<&str> {
        self.inner.acct_session_id.iter().collect()
    }
    #[getter]
    fn generation<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u32>> {
        PyArray1::from_slice(py, &self.inner.generation)
    }
    #[getter]
    fn user_name(&self) -> Vec<&str> {
        self.inner.user_name.iter().collect()
    }
    #[getter]
    fn calling_station_id(&self) -> Vec<&str> {
        self.inner.calling_station_id.iter().collect()
    }
    #[getter]
    fn framed_ip_address(&self) -> Vec<&str> {
        self.inner.framed_ip_address.iter().collect()
    }
    #[getter]
    fn framed_ipv6_prefix(&self) -> Vec<&str> {
        self.inner.framed_ipv6_prefix.iter().collect()
    }
    #[getter]
    fn delegated_ipv6_prefix(&self) -> Vec<&str> {
        self.inner.delegated_ipv6_prefix.iter().collect()
    }
    #[getter]
    fn start_us<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        PyArray1::from_slice(py, &self.inner.start_us)
    }
    #[getter]
    fn stop_us<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        PyArray1::from_slice(py, &self.inner.stop_us)
    }
    #[getter]
    fn last_update_us<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        PyArray1::from_slice(py, &self.inner.last_update_us)
    }
    #[getter]
    fn session_time_s<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u32>> {
        PyArray1::from_slice(py, &self.inner.session_time_s)
    }
    #[getter]
    fn input_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        PyArray1::from_slice(py, &self.inner.input_bytes)
    }
    #[getter]
    fn output_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        PyArray1::from_slice(py, &self.inner.output_bytes)
    }
    #[getter]
    fn hwm_input<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        PyArray1::from_slice(py, &self.inner.hwm_input)
    }
    #[getter]
    fn hwm_output<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        PyArray1::from_slice(py, &self.inner.hwm_output)
    }
    #[getter]
    fn last_key<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        void16(py, &self.inner.last_key)
    }
    #[getter]
    fn flags<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u32>> {
        PyArray1::from_slice(py, &self.inner.flags)
    }
    #[getter]
    fn terminate_cause<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u32>> {
        PyArray1::from_slice(py, &self.inner.terminate_cause)
    }
    #[getter]
    fn open<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<bool>> {
        PyArray1::from_slice(py, &self.inner.open)
    }
    fn __len__(&self) -> usize {
        self.inner.len()
    }
}

/// Builds `SessionColumns` from database rows (for `Engine.load_sessions`). The engine
/// loads no identity text, so the IPv6 prefixes may be left out (empty on every row).
#[pyfunction]
#[pyo3(signature = (nas_key, acct_session_id, generation, user_name, calling_station_id, framed_ip_address, start_us, stop_us, last_update_us, session_time_s, input_bytes, output_bytes, hwm_input, hwm_output, last_key, flags, terminate_cause, open, framed_ipv6_prefix=None, delegated_ipv6_prefix=None))]
fn make_sessions(
    nas_key: Vec<String>,
    acct_session_id: Vec<String>,
    generation: &Bound<'_, PyAny>,
    user_name: Vec<String>,
    calling_station_id: Vec<String>,
    framed_ip_address: Vec<String>,
    start_us: &Bound<'_, PyAny>,
    stop_us: &Bound<'_, PyAny>,
    last_update_us: &Bound<'_, PyAny>,
    session_time_s: &Bound<'_, PyAny>,
    input_bytes: &Bound<'_, PyAny>,
    output_bytes: &Bound<'_, PyAny>,
    hwm_input: &Bound<'_, PyAny>,
    hwm_output: &Bound<'_, PyAny>,
    last_key: &Bound<'_, PyAny>,
    flags: &Bound<'_, PyAny>,
    terminate_cause: &Bound<'_, PyAny>,
    open: &Bound<'_, PyAny>,
    framed_ipv6_prefix: Option<Vec<String>>,
    delegated_ipv6_prefix: Option<Vec<String>>,
) -> PyResult<SessionColumns> {
    let rows = nas_key.len();
    let text_or_empty = |column: Option<Vec<String>>| match column {
        Some(values) => values.into_iter().collect::<StrColumn>(),
        None => std::iter::repeat_n("", rows).collect::<StrColumn>(),
    };
    let inner = SessionTable {
        nas_key: nas_key.into_iter().collect::<StrColumn>(),
        acct_session_id: acct_session_id.into_iter().collect::<StrColumn>(),
        generation: col(generation, "uint32")?,
        user_name: user_name.into_iter().collect::<StrColumn>(),
        calling_station_id: calling_station_id.into_iter().collect::<StrColumn>(),
        framed_ip_address: framed_ip_address.into_iter().collect::<StrColumn>(),
        framed_ipv6_prefix: text_or_empty(framed_ipv6_prefix),
        delegated_ipv6_prefix: text_or_empty(delegated_ipv6_prefix),
        start_us: col(start_us, "int64")?,
        stop_us: col(stop_us, "int64")?,
        last_update_us: col(last_update_us, "int64")?,
        session_time_s: col(session_time_s, "uint32")?,
        input_bytes: col(input_bytes, "uint64")?,
        output_bytes: col(output_bytes, "uint64")?,
        hwm_input: col(hwm_input, "uint64")?,
        hwm_output: col(hwm_output, "uint64")?,
        last_key: keys_col(last_key)?,
        flags: col(flags, "uint32")?,
        terminate_cause: col(terminate_cause, "uint32")?,
        open: col(open, "bool")?,
    };
    let n = inner.len();
    let lens = [
        inner.nas_key.len(),
        inner.acct_session_id.len(),
        inner.user_name.len(),
        inner.calling_station_id.len(),
        inner.framed_ip_address.len(),
        inner.framed_ipv6_prefix.len(),
        inner.delegated_ipv6_prefix.len(),
        inner.start_us.len(),
        inner.stop_us.len(),
        inner.last_update_us.len(),
        inner.session_time_s.len(),
        inner.input_bytes.len(),
        inner.output_bytes.len(),
        inner.hwm_input.len(),
        inner.hwm_output.len(),
        inner.last_key.len(),
        inner.flags.len(),
        inner.terminate_cause.len(),
        inner.open.len(),
    ];
    if lens.iter().any(|&l| l != n) {
        return Err(RatingError::new_err(
            "session columns: columns have different lengths",
        ));
    }
    Ok(SessionColumns { inner })
}

/// An empty `SessionColumns`.
#[pyfunction]
fn empty_sessions() -> SessionColumns {
    SessionColumns {
        inner: SessionTable::default(),
    }
}

/// Columnar result of `Engine.apply` / `Engine.sweep`.
#[pyclass(frozen, module = "rating_core._native")]
struct ApplyResult {
    out: ApplyOutput,
    prepared: Option<(Arc<Prepared>, Py<PyBytes>)>,
    sessions: Py<SessionColumns>,
}

#[pymethods]
impl ApplyResult {
    #[getter]
    fn outcome<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u8>> {
        PyArray1::from_slice(py, &self.out.outcome)
    }
    #[getter]
    fn content_key<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        void16(py, &self.out.content_key)
    }
    #[getter]
    fn copy_entry<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        let entries: Vec<i64> = self
            .out
            .copy_candidates
            .iter()
            .map(|&(i, _)| i64::from(i))
            .collect();
        PyArray1::from_vec(py, entries)
    }
    #[getter]
    fn copy_key<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let keys: Vec<[u8; 16]> = self.out.copy_candidates.iter().map(|&(_, k)| k).collect();
        void16(py, &keys)
    }
    #[getter]
    fn nas_index<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i32>> {
        PyArray1::from_slice(py, &self.out.nas_index)
    }
    #[getter]
    fn session_index<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i32>> {
        PyArray1::from_slice(py, &self.out.session_index)
    }
    #[getter]
    fn event_us<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        PyArray1::from_slice(py, &self.out.event_us)
    }
    #[getter]
    fn arrival_us<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        PyArray1::from_slice(py, &self.out.arrival_us)
    }
    #[getter]
    fn status_type<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u8>> {
        PyArray1::from_slice(py, &self.out.status_type)
    }
    #[getter]
    fn entry_bytes<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        match &self.prepared {
            Some((p, batch)) => {
                let data = batch.as_bytes(py);
                p.records
                    .iter()
                    .map(|r| PyBytes::new(py, p.entry_bytes(data, r)))
                    .collect()
            }
            None => Vec::new(),
        }
    }
    #[getter]
    fn quarantine(&self) -> Vec<(u32, String)> {
        self.out.quarantine.clone()
    }
    #[getter]
    fn nas_keys(&self) -> Vec<String> {
        self.out.nas_keys.clone()
    }
    #[getter]
    fn nas_seq<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        PyArray1::from_slice(py, &self.out.nas_seq)
    }
    #[getter]
    fn sessions(&self, py: Python<'_>) -> Py<SessionColumns> {
        self.sessions.clone_ref(py)
    }
    #[getter]
    fn bucket_session_index<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i32>> {
        PyArray1::from_slice(py, &self.out.bucket_session_index)
    }
    #[getter]
    fn bucket_hour_us<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        PyArray1::from_slice(py, &self.out.bucket_hour_us)
    }
    #[getter]
    fn bucket_input_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        PyArray1::from_slice(py, &self.out.bucket_input_bytes)
    }
    #[getter]
    fn bucket_output_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        PyArray1::from_slice(py, &self.out.bucket_output_bytes)
    }
    #[getter]
    fn bucket_session_s<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        PyArray1::from_slice(py, &self.out.bucket_session_s)
    }
    #[getter]
    fn anomalies(&self) -> Vec<(i64, i64, u32, String)> {
        self.out.anomalies.clone()
    }
}

fn result(
    py: Python<'_>,
    mut out: ApplyOutput,
    prepared: Option<(Arc<Prepared>, Py<PyBytes>)>,
) -> PyResult<ApplyResult> {
    let table = std::mem::take(&mut out.sessions);
    let sessions = Py::new(py, SessionColumns { inner: table })?;
    Ok(ApplyResult {
        out,
        prepared,
        sessions,
    })
}

/// The accounting state of one tenant: NAS policies, secrets and live sessions.
#[pyclass(frozen, name = "Engine", module = "rating_core._native")]
struct PyEngine {
    inner: Mutex<accounting::Engine>,
    /// A copy of the engine's secrets and policies: `prepare` reads it without waiting for
    /// an `apply` that holds the sessions.
    config: RwLock<accounting::Config>,
}

impl PyEngine {
    fn lock(&self) -> PyResult<MutexGuard<'_, accounting::Engine>> {
        self.inner
            .lock()
            .map_err(|_| RatingError::new_err("engine state poisoned by an earlier failure"))
    }

    fn config_mut(&self) -> PyResult<std::sync::RwLockWriteGuard<'_, accounting::Config>> {
        self.config
            .write()
            .map_err(|_| RatingError::new_err("engine configuration poisoned"))
    }

    /// The one way long engine calls run: with the GIL released and the engine locked.
    fn detached<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut accounting::Engine) -> T + Send,
    ) -> PyResult<T> {
        py.detach(|| -> PyResult<T> { Ok(f(&mut *self.lock()?)) })
    }
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (default_policy=None, *, ledger_replay=false))]
    fn new(default_policy: Option<PyRef<'_, PyNasPolicy>>, ledger_replay: bool) -> Self {
        let policy = default_policy.map(|p| p.inner).unwrap_or_default();
        let mut engine = accounting::Engine::new(policy);
        let mut config = accounting::Config::new(policy);
        engine.set_ledger_replay(ledger_replay);
        config.set_ledger_replay(ledger_replay);
        Self {
            inner: Mutex::new(engine),
            config: RwLock::new(config),
        }
    }

    fn set_secret(&self, source_address: &str, secret: &[u8]) -> PyResult<()> {
        self.lock()?.set_secret(source_address, secret);
        self.config_mut()?.set_secret(source_address, secret);
        Ok(())
    }

    fn set_policy(&self, nas_key: &str, policy: &Bound<'_, PyNasPolicy>) -> PyResult<()> {
        self.lock()?.set_policy(nas_key, policy.get().inner);
        self.config_mut()?.set_policy(nas_key, policy.get().inner);
        Ok(())
    }

    /// Decodes a serialized `StreamAccountingRequest`; GIL released.
    fn prepare(
        &self,
        py: Python<'_>,
        batch: &Bound<'_, PyBytes>,
        default_arrival_us: i64,
    ) -> PyResult<PreparedBatch> {
        let data = batch.as_bytes();
        let prepared = py.detach(|| -> PyResult<Prepared> {
            let config = self
                .config
                .read()
                .map_err(|_| RatingError::new_err("engine configuration poisoned"))?;
            Ok(config.prepare(data, default_arrival_us)?)
        })?;
        Ok(PreparedBatch {
            inner: Arc::new(prepared),
            batch: batch.clone().unbind(),
        })
    }

    fn nas_seq(&self, nas_key: &str) -> PyResult<Option<i64>> {
        Ok(self.lock()?.nas_seq(nas_key))
    }

    #[pyo3(signature = (nas_key, seq, sessions, *, complete=false, omitted_start_max_us=None))]
    fn load_sessions(
        &self,
        nas_key: &str,
        seq: i64,
        sessions: &Bound<'_, SessionColumns>,
        complete: bool,
        omitted_start_max_us: Option<i64>,
    ) -> PyResult<()> {
        let omitted = (!complete).then(|| omitted_start_max_us.unwrap_or(i64::MAX));
        Ok(self
            .lock()?
            .load_sessions(nas_key, seq, &sessions.get().inner, omitted)?)
    }

    /// The NAS's latest accepted Accounting-On/Offs, oldest first: `(content key (16
    /// bytes), status type, event time µs, timed by its arrival)`.
    fn recall_onoffs(&self, nas_key: &str, onoffs: Vec<(Vec<u8>, u8, i64, bool)>) -> PyResult<()> {
        let mut rows = Vec::with_capacity(onoffs.len());
        for (key, status, event_us, by_arrival) in onoffs {
            let key: [u8; 16] = key.as_slice().try_into().map_err(|_| {
                PyValueError::new_err(format!(
                    "onoffs: a content key has 16 bytes, not {}",
                    key.len()
                ))
            })?;
            rows.push((key, status, event_us, by_arrival));
        }
        self.lock()?.recall_onoffs(nas_key, &rows);
        Ok(())
    }

    /// `(nas_key, acct_session_id)` pairs of the batch the engine may have forgotten.
    fn unknown_sessions(
        &self,
        py: Python<'_>,
        prepared: &Bound<'_, PreparedBatch>,
    ) -> PyResult<Vec<(String, String)>> {
        let p = Arc::clone(&prepared.get().inner);
        let batch = prepared.get().batch.clone_ref(py);
        let data = batch.as_bytes(py);
        self.detached(py, |e| e.unknown_sessions(&p, data))
    }

    /// `(nas_key, acct_session_id, lo_us, hi_us)`: ids whose forgotten older generations
    /// starting in `[lo_us, hi_us]` the batch's records may belong to.
    fn unmatched_sessions(
        &self,
        py: Python<'_>,
        prepared: &Bound<'_, PreparedBatch>,
    ) -> PyResult<Vec<(String, String, i64, i64)>> {
        let p = Arc::clone(&prepared.get().inner);
        let batch = prepared.get().batch.clone_ref(py);
        let data = batch.as_bytes(py);
        self.detached(py, |e| e.unmatched_sessions(&p, data))
    }

    fn add_sessions(&self, sessions: &Bound<'_, SessionColumns>) -> PyResult<()> {
        Ok(self.lock()?.add_sessions(&sessions.get().inner)?)
    }

    #[allow(clippy::needless_pass_by_value)] // PyO3 extracts a Python list into an owned Vec.
    fn forget_nas(&self, nas_keys: Vec<String>) -> PyResult<()> {
        self.lock()?.forget_nas(&nas_keys);
        Ok(())
    }

    /// Dedup, sessions, deltas, buckets, flags; GIL released.
    #[pyo3(signature = (prepared, known=None))]
    fn apply(
        &self,
        py: Python<'_>,
        prepared: &Bound<'_, PreparedBatch>,
        known: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<ApplyResult> {
        let p = Arc::clone(&prepared.get().inner);
        let batch = prepared.get().batch.clone_ref(py);
        let data = batch.as_bytes(py);
        let known: Option<Vec<bool>> = known.map(|k| col(k, "bool")).transpose()?;
        if known.as_ref().is_some_and(|k| k.len() != p.records.len()) {
            return Err(RatingError::new_err(
                "known: one flag per entry of the batch",
            ));
        }
        let out = self.detached(py, |e| e.apply_known(&p, data, known.as_deref()))?;
        result(py, out, Some((p, batch)))
    }

    /// Closes stale sessions at their last update time (entry arrays are empty).
    fn sweep(&self, py: Python<'_>, as_of_us: i64) -> PyResult<ApplyResult> {
        let out = self.detached(py, |e| e.sweep(as_of_us))?;
        result(py, out, None)
    }

    fn session_count(&self) -> PyResult<usize> {
        Ok(self.lock()?.session_count())
    }

    /// Bytes the engine holds for its sessions (capacities, per-call scratch included).
    fn heap_bytes(&self) -> PyResult<usize> {
        Ok(self.lock()?.heap_bytes())
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("RatingError", m.py().get_type::<RatingError>())?;
    m.add("OUTCOME_ACCEPTED", accounting::OUTCOME_ACCEPTED)?;
    m.add("OUTCOME_DUPLICATE", accounting::OUTCOME_DUPLICATE)?;
    m.add("OUTCOME_LATE", accounting::OUTCOME_LATE)?;
    m.add("OUTCOME_QUARANTINED", accounting::OUTCOME_QUARANTINED)?;
    m.add("ONOFF_MEMORY", accounting::ONOFF_MEMORY)?;
    m.add_function(wrap_pyfunction!(parse_units, m)?)?;
    m.add_function(wrap_pyfunction!(format_units, m)?)?;
    m.add_function(wrap_pyfunction!(flag_names, m)?)?;
    m.add_function(wrap_pyfunction!(decode_radius, m)?)?;
    m.add_function(wrap_pyfunction!(accounting_response, m)?)?;
    m.add_function(wrap_pyfunction!(read_pcap, m)?)?;
    m.add_function(wrap_pyfunction!(make_sessions, m)?)?;
    m.add_function(wrap_pyfunction!(empty_sessions, m)?)?;
    m.add_class::<PyNasPolicy>()?;
    m.add_class::<PreparedBatch>()?;
    m.add_class::<SessionColumns>()?;
    m.add_class::<ApplyResult>()?;
    m.add_class::<PyEngine>()?;
    m.add_class::<CaptureReader>()?;
    Ok(())
}
