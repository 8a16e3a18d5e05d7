//! The tiny model the trainer tests train: vocab 61, d 32, 2 layers, 4 heads (2 KV), and with
//! `moe` four experts, top-2. Shared by `trainer.rs` and `precision.rs`.

use btx_model::config::{MoeConfig, Routing};
use btx_model::ModelConfig;

pub fn cfg(moe: bool) -> ModelConfig {
    let mut c = ModelConfig::llama(61, 32, 48, 2, 4, 2, 64);
    if moe {
        c.moe = Some(MoeConfig {
            num_experts: 4,
            top_k: 2,
            routing: Routing::TopK,
        });
    }
    c
}
