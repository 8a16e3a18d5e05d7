//! `btx-model`: a Llama / Mixtral decoder in burn whose numbers match Hugging Face transformers,
//! with checkpoint I/O in Hugging Face's formats and names.

pub mod attention;
pub mod config;
pub mod error;
pub mod fused;
pub mod generate;
pub mod io;
pub mod loss;
pub mod moa;
pub mod model;
pub mod moe;
pub mod names;
pub mod precision;
pub mod spec;

pub use burn;
pub use config::{AttnExpertsConfig, ModelConfig, MoeConfig, Routing, DEFAULT_TOP_K};
pub use error::{ModelError, Result};
pub use io::{HostTensor, TensorReader};
pub use model::{ForwardOpts, ForwardOut, KvCache, Model, Trunk};
pub use spec::ModelSpec;

/// Copies a float tensor to the host as f32 values (row-major).
pub fn to_vec<const D: usize>(t: burn::prelude::Tensor<D>) -> Vec<f32> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .expect("float tensor converts to f32")
}

/// A linear layer in Hugging Face's `[out, in]` layout: `x [N, in] · wᵀ`. The fused kernel on
/// flex, the composite `matmul` elsewhere (in the process's [`precision`]).
pub fn linear(
    x: burn::prelude::Tensor<2>,
    w: &burn::prelude::Tensor<2>,
) -> burn::prelude::Tensor<2> {
    match fused::linear::linear(x.clone(), w.clone()) {
        Some(y) => y,
        None => precision::matmul(x, w.clone().transpose()),
    }
}

/// Softmax over each row of `[N, E]`: the fused op on flex (a vectorised exp that takes a
/// masked score to 0 without libm's slow underflow path), burn's composite elsewhere.
pub fn softmax_rows(x: burn::prelude::Tensor<2>) -> burn::prelude::Tensor<2> {
    match fused::elementwise::softmax_rows(x.clone()) {
        Some(y) => y,
        None => burn::tensor::activation::softmax(x, 1),
    }
}

/// [`linear`] of one input by several weights (q, k, v; an MLP's gate and up). On flex the
/// input's gradient is summed inside the products' backward passes (see
/// [`fused::fan_in::FanIn`]) rather than by burn, one serial add per extra weight.
pub fn linears(
    x: burn::prelude::Tensor<2>,
    ws: &[&burn::prelude::Tensor<2>],
) -> Vec<burn::prelude::Tensor<2>> {
    if fused::on_flex(&x) {
        let fan = fused::fan_in::FanIn::new();
        return ws
            .iter()
            .map(|w| fused::linear::linear_shared(x.clone(), (*w).clone(), &fan).expect("on flex"))
            .collect();
    }
    ws.iter().map(|w| linear(x.clone(), w)).collect()
}

pub mod compare;
pub mod probe;
