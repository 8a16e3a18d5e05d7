//! Fused CPU kernels with handwritten backward passes for the `flex` backend. Each op checks at
//! run time that its inputs live on a flex device and otherwise returns `None`, so callers fall
//! back to the composite ops (the reference implementation, and what other backends run).
//! `BTX_COMPOSITE=1` forces the composite path everywhere (for comparisons).

pub mod adamw;
pub mod attention;
pub mod cross_entropy;
pub mod elementwise;
pub mod linear;
pub mod vexp;

use burn::prelude::*;

/// True when `t` lives on a flex device (with or without autodiff) and fused kernels are on.
pub fn on_flex<const D: usize>(t: &Tensor<D>) -> bool {
    use burn::backend::DispatchDevice;
    if composite_forced() {
        return false;
    }
    matches!(t.device().inner().as_dispatch(), DispatchDevice::Flex(_))
}

fn composite_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var_os("BTX_COMPOSITE").is_some_and(|v| v != "0"))
}
