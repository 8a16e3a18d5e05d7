//! Run-time choice of vector width for the element-wise kernels.
//!
//! The workspace builds for baseline x86-64 (SSE2) so that one binary runs on any machine; the
//! compiler then vectorises plain loops four lanes wide. [`simd_fn!`] compiles a function body
//! three times — AVX-512, AVX2 + FMA and baseline — and calls the widest the CPU has. The
//! versions compute the same bits: Rust never contracts `a * b + c` into an FMA nor reorders
//! float operations, so only how many lanes run at once differs. (The exp kernels in `vexp`
//! are written with intrinsics instead and pick their version the same way.)

use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

/// The instruction sets a kernel can be compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// AVX-512 F/VL/BW/DQ with AVX2 and FMA.
    V4,
    /// AVX2 and FMA.
    V3,
    /// Baseline x86-64 or another architecture.
    Base,
}

static LEVEL: AtomicU8 = AtomicU8::new(0);

/// The widest level this CPU runs (detected once). `BTX_SIMD=avx2|base` caps it, to compare
/// versions.
pub fn level() -> Level {
    match LEVEL.load(Relaxed) {
        1 => Level::V4,
        2 => Level::V3,
        3 => Level::Base,
        _ => {
            let l = cap(detect(), std::env::var("BTX_SIMD").ok().as_deref());
            LEVEL.store(
                match l {
                    Level::V4 => 1,
                    Level::V3 => 2,
                    Level::Base => 3,
                },
                Relaxed,
            );
            l
        }
    }
}

fn cap(found: Level, want: Option<&str>) -> Level {
    match (found, want) {
        (_, Some("base")) => Level::Base,
        (Level::V4, Some("avx2")) => Level::V3,
        (l, _) => l,
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Level {
    use std::is_x86_feature_detected as has;
    let v3 = has!("avx2") && has!("fma");
    if v3 && has!("avx512f") && has!("avx512vl") && has!("avx512bw") && has!("avx512dq") {
        Level::V4
    } else if v3 {
        Level::V3
    } else {
        Level::Base
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Level {
    Level::Base
}

/// Defines `fn name(args) -> ret { body }` compiled for each [`Level`] and dispatched at run
/// time. The body must not use `self`; arguments are passed by value to the chosen version.
/// Exported for kernels outside this crate (btx-train's fused AdamW).
#[macro_export]
macro_rules! simd_fn {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                /// # Safety
                /// Called only when `level()` reports AVX-512 (`V4`).
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                /// # Safety
                /// Called only when `level()` reports AVX2 and FMA (`V3`).
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                match $crate::simd::level() {
                    // SAFETY: `level` reports only instruction sets this CPU has.
                    $crate::simd::Level::V4 => return unsafe { v4($($arg),*) },
                    // SAFETY: as above.
                    $crate::simd::Level::V3 => return unsafe { v3($($arg),*) },
                    $crate::simd::Level::Base => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub use crate::simd_fn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_only_ever_narrows() {
        assert_eq!(cap(Level::V4, Some("avx2")), Level::V3);
        assert_eq!(cap(Level::V3, Some("avx2")), Level::V3);
        assert_eq!(cap(Level::Base, Some("avx2")), Level::Base);
        assert_eq!(cap(Level::V4, Some("base")), Level::Base);
        assert_eq!(cap(Level::V3, None), Level::V3);
    }
}
