//! `btx-model`: a Llama / Mixtral decoder in burn whose numbers match Hugging Face transformers,
//! with checkpoint I/O in Hugging Face's formats and names.

pub mod attention;
pub mod budget;
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
pub mod ops;
pub mod precision;
pub mod spec;

pub use burn;
pub use config::{
    expert_name_problem, AttnExpertsConfig, ModelConfig, MoeConfig, Routing, DEFAULT_TOP_K,
    GENERALIST,
};
pub use error::{ModelError, Result};
pub use io::{HostTensor, TensorReader};
pub use model::forward::{ForwardOpts, ForwardOut, KvCache, Trunk};
pub use model::Model;
pub use ops::{linear, linears, softmax_rows};
pub use spec::ModelSpec;

/// Copies a float tensor to the host as f32 values (row-major).
pub fn to_vec<const D: usize>(t: burn::prelude::Tensor<D>) -> Vec<f32> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .expect("float tensor converts to f32")
}

pub mod compare;
pub mod probe;
