//! The operator tools: `ironboot storm` (emulated PXE storms), `ironboot bmc` (power and
//! boot through a BMC by hand), `ironboot omni check` (Omni credentials and
//! connectivity), and the hidden API the benchmarks drive.

#[doc(hidden)]
pub mod bench_api;
pub(crate) mod bmc;
pub(crate) mod omni_check;
pub(crate) mod storm;
