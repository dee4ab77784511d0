//! Usage-rating core: pure Rust domain modules plus an optional `PyO3` layer.

pub mod accounting;
mod batch_keys;
pub mod money;
pub mod pcap;
mod prefetch;
pub mod proto;
pub mod radius;
pub mod record;
pub mod slot_index;

#[cfg(feature = "python")]
mod python;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
