//! `btx-eval`: how good is a model on each domain — held-out loss, exact-match tasks,
//! Branch-Train-Merge ensembles, routing analysis, plots and the report.

pub mod bootstrap;
pub mod cost;
pub mod evaluate;
pub mod findings;
pub mod input;
pub mod lm;
pub mod optout;
pub mod plots;
pub mod render;
pub mod routing;
pub mod text;

pub use evaluate::{evaluate, EvalResult, EvalSpec};
pub use lm::{Ensemble, Lm, Weighting};
