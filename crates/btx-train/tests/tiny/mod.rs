//! The tiny model the trainer tests train: vocab 61, d 32, 2 layers, 4 heads (2 KV), and with
//! `moe` four experts, top-2; and fixed random batches for it. Shared by the trainer's tests.

use btx_core::rng::Rng;
use btx_data::{Batch, FixedBatches};
use btx_model::config::{MoeConfig, Routing};
use btx_model::ModelConfig;

#[allow(dead_code)] // not every test binary that includes this module uses it
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

/// `n` batches of 2 x 16 random token ids (vocabulary 61), the same for every call.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn batches(n: usize) -> FixedBatches {
    let mut r = Rng::new(5);
    FixedBatches::new(
        (0..n)
            .map(|_| Batch {
                ids: (0..2 * 16).map(|_| r.below(61) as i64).collect(),
                batch: 2,
                seq: 16,
                domains: vec![],
            })
            .collect(),
    )
}
