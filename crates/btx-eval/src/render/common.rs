//! Lookups and number formats both renderings of the report use.

use crate::input::{MethodResult, ReportInput};

pub(super) fn get<'a>(ms: &'a [MethodResult], name: &str) -> Option<&'a MethodResult> {
    ms.iter().find(|m| m.name == name)
}

pub(super) fn avg_loss(ms: &[MethodResult], name: &str) -> Option<f64> {
    get(ms, name).map(|m| m.eval.average.loss)
}

/// Half the spread (max - min) of a method's average loss over replicas; 0 with one replica.
pub(super) fn half_range(input: &ReportInput, name: &str) -> f64 {
    let v: Vec<f64> = input
        .replicas
        .iter()
        .filter_map(|r| avg_loss(r, name))
        .collect();
    if v.len() < 2 {
        return 0.0;
    }
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    (hi - lo) / 2.0
}

/// 1234567 → "1.23M": counts and FLOPs in tables and on axes.
pub(crate) fn fmt_big(x: f64) -> String {
    if x >= 1e12 {
        format!("{:.2}T", x / 1e12)
    } else if x >= 1e9 {
        format!("{:.2}G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}
