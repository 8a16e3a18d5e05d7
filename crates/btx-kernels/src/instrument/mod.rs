//! Measurement for `btx bench`: the time spent inside matrix products, call by call, and the
//! core's FMA peak. Nothing here changes a result; [`gemm_clock`] is off unless a benchmark
//! turns it on.

pub mod gemm_clock;
pub mod peak;
