//! What a run's evaluations support: every method's loss and accuracy with 95% intervals
//! (bootstrap over evaluation windows or task items and replicas, `crate::bootstrap`), paired
//! differences between methods, the verdict on each of the paper's claims, and the diagnosis
//! (how much of each expert's gain survives in each method, forgetting, ablations).

mod diagnosis;
mod estimates;
mod verdicts;

pub use diagnosis::diagnosis;
pub use estimates::Stats;
pub use verdicts::{own_share, verdicts, Verdict};

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::evaluate::{Average, DomainEval, EvalResult};
    use crate::input::{MethodCompute, MethodResult, ReportInput};
    use crate::routing::{RoutingReport, WindowShares};
    use verdicts::load_balancing;

    /// A method whose windows on domain d have losses `base[d] + wiggle` (the same wiggle for
    /// every method, as windows of one text are alike in difficulty for all models).
    fn method(name: &str, base: &[(&str, f64)], noise: f64) -> MethodResult {
        let domains: BTreeMap<String, DomainEval> = base
            .iter()
            .map(|(d, l)| {
                let w: Vec<f64> = (0..32)
                    .map(|i| l + 0.3 * ((i % 5) as f64 - 2.0) + noise * ((i % 3) as f64 - 1.0))
                    .collect();
                (
                    d.to_string(),
                    DomainEval {
                        loss: w.iter().sum::<f64>() / 32.0,
                        perplexity: 1.0,
                        loss_tokens: 32 * 63,
                        accuracy: Some(0.0),
                        tasks: 10,
                        tasks_unfit: 0,
                        samples: vec![],
                        window_losses: w,
                        task_correct: vec![false; 10],
                        chance: Some(0.1),
                    },
                )
            })
            .collect();
        MethodResult {
            name: name.into(),
            eval: EvalResult {
                average: Average {
                    loss: base.iter().map(|x| x.1).sum::<f64>() / base.len() as f64,
                    accuracy: Some(0.0),
                },
                domains,
                forward_passes_per_token: 1,
                active_params: 1,
                total_params: 1,
            },
            compute: MethodCompute::default(),
        }
    }

    fn input(btx_vs_dense: f64) -> ReportInput {
        let ms = vec![
            method("seed", &[("a", 2.0), ("b", 2.0)], 0.0),
            method("expert:a", &[("a", 1.0), ("b", 2.5)], 0.0),
            method("expert:b", &[("a", 2.5), ("b", 1.0)], 0.0),
            method("dense", &[("a", 1.5), ("b", 1.5)], 0.01),
            method(
                "btx",
                &[("a", 1.5 - btx_vs_dense), ("b", 1.5 - btx_vs_dense)],
                0.02,
            ),
        ];
        ReportInput {
            title: "t".into(),
            domains: vec!["a".into(), "b".into()],
            expert_domains: vec!["a".into(), "b".into()],
            replicas: vec![ms],
            ..Default::default()
        }
    }

    #[test]
    fn the_core_claim_follows_the_interval_not_the_sign() {
        // BTX clearly ahead of dense: holds. Clearly behind: does not hold (never "partly",
        // whatever the other parts say). A hair apart: within noise.
        for (gap, want) in [
            (0.2, "holds"),
            (-0.2, "does not hold"),
            (0.0005, "within noise"),
        ] {
            let i = input(gap);
            let st = Stats::new(&i);
            let v = verdicts(&st);
            assert_eq!(v[0].status, "holds", "{:?}", v[0]);
            let claim2 = &v[1];
            if want == "within noise" {
                // The seed part and the kept-gain part hold, the dense part is noise.
                assert_eq!(claim2.status, "within noise", "{claim2:?}");
            } else {
                assert_eq!(claim2.status, want, "{claim2:?}");
            }
            assert!(claim2.evidence.contains('['), "{}", claim2.evidence);
            assert!(v[2].status.starts_with("not tested"), "{:?}", v[2]);
            assert!(v[4].status.starts_with("not tested"), "{:?}", v[4]);
        }
    }

    #[test]
    fn tasks_at_the_floor_are_left_out_of_accuracy_averages() {
        let i = input(0.1);
        let st = Stats::new(&i);
        // Every method answers nothing: no domain is solvable, there is no average accuracy.
        assert_eq!(st.solvable, vec![false, false]);
        assert!(st.avg_acc("btx").is_none());
        assert_eq!(st.chance, vec![Some(0.1), Some(0.1)]);
    }

    #[test]
    fn kept_gain_is_a_share_of_the_experts_gain() {
        let i = input(0.0);
        let st = Stats::new(&i);
        // seed 2.0, expert 1.0, btx 1.5 on domain a: half the gain.
        let k = st.gain_kept("btx", "a").unwrap();
        assert!((k.value - 0.5).abs() < 2e-3, "{k}");
        assert!(diagnosis(&st).contains("btx 50%"), "{}", diagnosis(&st));
    }

    /// A method that mixes other experts (FFN-only) keeps a share of *their* gain, said so; an
    /// oracle's sentence carries the paired difference to the method's own router.
    #[test]
    fn kept_gain_is_measured_against_the_experts_a_method_mixes() {
        let mut i = input(0.0);
        i.replicas[0].extend([
            method("expert-ffn:a", &[("a", 1.8), ("b", 2.0)], 0.0),
            method("expert-ffn:b", &[("a", 2.0), ("b", 1.8)], 0.0),
            method("mix:ffn", &[("a", 1.9), ("b", 1.9)], 0.0),
            method("oracle:mix:ffn", &[("a", 1.8), ("b", 1.8)], 0.0),
        ]);
        for m in ["mix:ffn", "oracle:mix:ffn"] {
            i.experts_of.insert(
                m.into(),
                [("a", "expert-ffn:a"), ("b", "expert-ffn:b")]
                    .iter()
                    .map(|(d, e)| (d.to_string(), e.to_string()))
                    .collect(),
            );
        }
        let st = Stats::new(&i);
        // seed 2.0, expert-ffn 1.8, mix 1.9: half of the FFN-only experts' gain (a tenth of
        // the full experts').
        let k = st.gain_kept("mix:ffn", "a").unwrap();
        assert!((k.value - 0.5).abs() < 2e-3, "{k}");
        assert!((st.gain_kept("oracle:mix:ffn", "a").unwrap().value - 1.0).abs() < 2e-3);
        assert_eq!(st.kept_basis("mix:ffn"), " of expert-ffn's");
        assert_eq!(st.kept_basis("btx"), "");
        let d = diagnosis(&st);
        assert!(d.contains("mix:ffn 100% of expert-ffn's (its own router: 50%; its loss − the oracle's +0.1000"), "{d}");
    }

    /// Routing of two replicas over domains a, b (one layer, experts a and b): `share(d, w)`
    /// is the share of expert a among domain d's tokens in window w (top-1 and top-k alike).
    fn routed(share: impl Fn(usize, usize) -> f64, per_window: bool) -> Vec<RoutingReport> {
        use crate::routing::DomainRouting;
        (0..2)
            .map(|_| {
                let mut r = RoutingReport {
                    num_experts: 2,
                    top_k: 1,
                    dead_threshold: 0.01,
                    ..Default::default()
                };
                for (d, name) in ["a", "b"].iter().enumerate() {
                    let ws: Vec<WindowShares> = (0..16)
                        .map(|w| {
                            let p = vec![vec![share(d, w), 1.0 - share(d, w)]];
                            WindowShares {
                                top1: p.clone(),
                                topk: p,
                            }
                        })
                        .collect();
                    let mean = ws.iter().map(|w| w.top1[0][0]).sum::<f64>() / 16.0;
                    let whole = vec![vec![mean, 1.0 - mean]];
                    r.domains.insert(
                        name.to_string(),
                        DomainRouting {
                            top1_share: whole.clone(),
                            topk_share: whole,
                            entropy: vec![0.5],
                            tokens: 16 * 8,
                            windows: if per_window { ws } else { vec![] },
                            ..Default::default()
                        },
                    );
                }
                r
            })
            .collect()
    }

    #[test]
    fn the_load_balancing_claim_rests_on_intervals() {
        let wobble = |w: usize| 0.02 * ((w % 3) as f64 - 1.0);
        // With load balancing: each domain's tokens mostly go to its own expert, both experts
        // get half the tokens overall.
        let balanced = routed(|d, w| if d == 0 { 0.7 } else { 0.3 } + wobble(w), true);
        // Without: expert a takes 95% of everything.
        let collapsed = routed(|_, w| 0.95 + wobble(w) / 4.0, true);
        let verdict = |with: Vec<RoutingReport>, without: Vec<RoutingReport>| {
            let mut i = input(0.0);
            i.routing_replicas.insert("btx".into(), with);
            i.routing_replicas.insert("btx:no-lb".into(), without);
            load_balancing(&Stats::new(&i))
        };
        let v = verdict(balanced.clone(), collapsed);
        assert_eq!(v.status, "holds", "{v:?}");
        assert!(
            v.evidence.contains("smallest share +44.8 points ["),
            "{}",
            v.evidence
        );
        // The same routing with and without: the gap is exactly zero, within noise.
        let v = verdict(balanced.clone(), balanced.clone());
        assert_eq!(v.status, "within noise", "{v:?}");
        // Expert b starves with load balancing too: the smallest share is below the
        // dead-expert threshold beyond noise.
        let starved = routed(|_, w| 0.995 + wobble(w) / 10.0, true);
        let v = verdict(starved, routed(|_, _| 1.0, true));
        assert_eq!(v.status, "does not hold", "{v:?}");
        // Analyses without per-window shares give no verdict.
        let v = verdict(
            routed(|d, _| [0.7, 0.3][d], false),
            routed(|_, _| 0.9, false),
        );
        assert!(v.status.starts_with("not tested"), "{v:?}");
    }
}
