//! `btx-eval`: how good is a model on each domain.

pub mod loss;

pub use loss::{domain_loss, LossResult};
