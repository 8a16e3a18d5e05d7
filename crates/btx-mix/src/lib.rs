//! `btx-mix`: building MoE models from dense ones — BTX MiX (with split, blend and router
//! initialisation), sparse upcycling, and weight averaging.

pub mod add;
pub mod average;
pub mod error;
pub mod fit;
pub mod merge;
pub mod router;
pub mod source;
pub mod spec;

pub use average::average;
pub use btx_core::outdir::Existing;
pub use error::{MixError, Result};
pub use merge::{check_expert_names, mix, upcycle, MixSummary};
pub use source::check_compatible;
pub use spec::{
    AttnMix, ExpertShape, FitTarget, MixOptions, MixPatch, MixSpec, NonFfn, RouterInit,
    RouterInitKind, RouterRows, RoutingMode,
};
