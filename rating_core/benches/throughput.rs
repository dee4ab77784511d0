//! Rust-only throughput probe:
//! `cargo bench --features mimalloc --bench throughput -- OPEN_SESSIONS [ROUNDS [BATCH [addresses]]]`
//! (default 1,000,000 sessions, 8 rounds of batches of 200,000 Interim-Updates; with
//! `addresses`, each record also carries the NAS's IPv4 and source address and the
//! session's Framed-IP-Address, as NASes that send NAS-IP-Address do).
#![allow(clippy::cast_precision_loss)] // Timing printouts only.

use std::time::Instant;

use rating_core::accounting::{Engine, NasPolicy};
use rating_core::proto::write;

const US: i64 = 1_000_000;
const T0: i64 = 1_700_000_000 * US;

fn record(i: u64, status: u64, t: u64, counters: Option<(u64, u64)>, addresses: bool) -> Vec<u8> {
    let mut m = Vec::with_capacity(128);
    write::uint(&mut m, 1, status);
    write::bytes(&mut m, 2, format!("{i:016X}").as_bytes());
    write::bytes(&mut m, 3, format!("user{i}@isp.example").as_bytes());
    if addresses {
        let nas = format!("192.0.2.{}", 10 + i % 16);
        write::bytes(&mut m, 4, nas.as_bytes());
        write::bytes(&mut m, 7, nas.as_bytes());
        let framed = format!("100.{}.{}.{}", 64 + (i >> 16 & 63), i >> 8 & 255, i & 255);
        write::bytes(&mut m, 18, framed.as_bytes());
    }
    write::bytes(&mut m, 6, format!("bng-{:02}", i % 16).as_bytes());
    write::bytes(
        &mut m,
        21,
        format!(
            "02-00-00-{:02X}-{:02X}-{:02X}",
            i >> 16 & 255,
            i >> 8 & 255,
            i & 255
        )
        .as_bytes(),
    );
    if let Some((inp, out)) = counters {
        write::uint(&mut m, 10, inp & 0xffff_ffff);
        write::uint(&mut m, 11, inp >> 32);
        write::uint(&mut m, 12, out & 0xffff_ffff);
        write::uint(&mut m, 13, out >> 32);
    }
    write::uint(&mut m, 14, t);
    let at = T0 + t as i64 * US;
    write::timestamp(&mut m, 15, at);
    write::timestamp(&mut m, 23, at);
    let mut e = Vec::with_capacity(m.len() + 4);
    write::bytes(&mut e, 1, &m);
    e
}

fn batch(entries: impl Iterator<Item = Vec<u8>>) -> Vec<u8> {
    let mut b = Vec::new();
    write::bytes(&mut b, 1, b"bench");
    for e in entries {
        write::bytes(&mut b, 2, &e);
    }
    b
}

fn main() {
    let pool: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let rounds: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(8);
    let size: u64 = std::env::args()
        .nth(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let addresses = std::env::args().nth(4).is_some_and(|a| a == "addresses");
    let mut engine = Engine::new(NasPolicy::default());
    let mut lo = 0;
    while lo < pool {
        let hi = (lo + 100_000).min(pool);
        let b = batch((lo..hi).map(|i| record(i, 1, 0, None, addresses)));
        let p = engine.prepare(&b, T0).unwrap_or_default();
        engine.apply(&p, &b);
        lo = hi;
    }
    let mut next = 0u64;
    let batches: Vec<Vec<u8>> = (0..rounds)
        .map(|_| {
            let b = batch((next..next + size).map(|k| {
                let i = k % pool;
                let lap = k / pool + 1;
                record(
                    i,
                    3,
                    600 * lap,
                    Some((lap * 7_000_000 + i, lap * 90_000_000 + i)),
                    addresses,
                )
            }));
            next += size;
            b
        })
        .collect();
    for (round, b) in batches.iter().enumerate() {
        let t0 = Instant::now();
        let p = engine.prepare(b, T0).unwrap_or_default();
        let t1 = Instant::now();
        let out = engine.apply(&p, b);
        let t2 = Instant::now();
        println!(
            "round {round}: prepare {:.1} ns/rec, apply {:.1} ns/rec, total {:.2} M rec/s ({} rows)",
            (t1 - t0).as_nanos() as f64 / size as f64,
            (t2 - t1).as_nanos() as f64 / size as f64,
            size as f64 / (t2 - t0).as_secs_f64() / 1e6,
            out.sessions.len()
        );
    }
}
