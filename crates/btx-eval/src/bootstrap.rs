//! Confidence intervals by bootstrap over evaluation units (loss windows or task items) and
//! replicas (training seeds).
//!
//! Every method is evaluated on the same windows and task items, and replica r of every method
//! trains with the same seed offset, so one set of draws serves all methods: a draw picks
//! replicas with replacement and, per domain, units with replacement, and any statistic —
//! one method's loss, or the difference between two methods (paired) — is recomputed on it.
//! The interval is the percentile interval of those recomputations.

use btx_core::rng::Rng;

/// Bootstrap draws per interval.
pub const DRAWS: usize = 2000;
/// Two-sided confidence level.
pub const LEVEL: f64 = 0.95;

/// Observations of one quantity for one method: `[replica][domain]` → one value per unit
/// (a window's mean loss, or 1/0 for a task answered right or wrong).
pub type Obs<'a> = Vec<Vec<&'a [f64]>>;

/// One resample: which replicas, and per domain which units.
pub struct Draw {
    reps: Vec<usize>,
    units: Vec<Vec<usize>>,
}

impl Draw {
    /// Mean over the drawn replicas of the mean over the drawn units of domain `d`; None when
    /// `obs` does not have the shape the draws were made for.
    pub fn mean(&self, obs: &Obs, d: usize) -> Option<f64> {
        let mut total = 0.0;
        for &r in &self.reps {
            let v = obs.get(r)?.get(d)?;
            let idx = self.units.get(d)?;
            if idx.is_empty() || v.len() != idx.len() {
                return None;
            }
            total += idx.iter().map(|&i| v[i]).sum::<f64>() / idx.len() as f64;
        }
        Some(total / self.reps.len() as f64)
    }

    /// Mean over the drawn replicas of `f(replica, units)`, for a statistic that is not a mean
    /// of units (a minimum over experts): `f` computes it within one replica on the drawn
    /// units (`units[d]`: the drawn unit indices of domain d).
    pub fn per_replica(&self, f: impl Fn(usize, &[Vec<usize>]) -> Option<f64>) -> Option<f64> {
        let mut total = 0.0;
        for &r in &self.reps {
            total += f(r, &self.units)?;
        }
        Some(total / self.reps.len() as f64)
    }

    /// Mean over `domains` of [`Draw::mean`].
    pub fn mean_over(&self, obs: &Obs, domains: &[usize]) -> Option<f64> {
        if domains.is_empty() {
            return None;
        }
        let mut s = 0.0;
        for &d in domains {
            s += self.mean(obs, d)?;
        }
        Some(s / domains.len() as f64)
    }
}

/// The draws for one layout: `replicas` replicas, `units[d]` units in domain d.
pub struct Bootstrap {
    /// The identity draw: the point estimate is a statistic computed on it.
    whole: Draw,
    draws: Vec<Draw>,
}

impl Bootstrap {
    /// Deterministic draws (the same report for the same evaluations).
    pub fn new(replicas: usize, units: &[usize], seed: u64) -> Self {
        let mut rng = Rng::derive(seed, "bootstrap");
        let draws = (0..DRAWS)
            .map(|_| Draw {
                reps: (0..replicas).map(|_| rng.below(replicas)).collect(),
                units: units
                    .iter()
                    .map(|&n| (0..n).map(|_| rng.below(n.max(1))).collect())
                    .collect(),
            })
            .collect();
        Self {
            whole: Draw {
                reps: (0..replicas).collect(),
                units: units.iter().map(|&n| (0..n).collect()).collect(),
            },
            draws,
        }
    }

    pub fn replicas(&self) -> usize {
        self.whole.reps.len()
    }

    /// The statistic on all replicas and units, and its 95% percentile interval; None when
    /// the statistic cannot be computed (missing or misshapen observations).
    pub fn estimate(&self, f: impl Fn(&Draw) -> Option<f64>) -> Option<Estimate> {
        let value = f(&self.whole)?;
        let mut xs: Vec<f64> = Vec::with_capacity(self.draws.len());
        for d in &self.draws {
            xs.push(f(d)?);
        }
        xs.sort_by(f64::total_cmp);
        let q = |p: f64| xs[((p * (xs.len() - 1) as f64).round() as usize).min(xs.len() - 1)];
        let tail = (1.0 - LEVEL) / 2.0;
        Some(Estimate {
            value,
            ci: [q(tail), q(1.0 - tail)],
        })
    }
}

/// A point estimate with its confidence interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub value: f64,
    pub ci: [f64; 2],
}

/// What an interval of a difference says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finding {
    /// The whole interval is on the side the claim predicts.
    Holds,
    /// The whole interval is on the other side.
    DoesNotHold,
    /// The interval contains zero.
    WithinNoise,
}

impl Finding {
    /// `d` is a difference that the claim predicts to be positive.
    pub fn of_positive(d: &Estimate) -> Self {
        if d.ci[0] > 0.0 {
            Finding::Holds
        } else if d.ci[1] < 0.0 {
            Finding::DoesNotHold
        } else {
            Finding::WithinNoise
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Finding::Holds => "holds",
            Finding::DoesNotHold => "does not hold",
            Finding::WithinNoise => "within noise",
        }
    }

    /// A claim made of several parts: it holds when every part holds, does not hold when any
    /// part does not, and is within noise otherwise.
    pub fn all(parts: &[Finding]) -> Option<Finding> {
        if parts.is_empty() {
            None
        } else if parts.contains(&Finding::DoesNotHold) {
            Some(Finding::DoesNotHold)
        } else if parts.iter().all(|p| *p == Finding::Holds) {
            Some(Finding::Holds)
        } else {
            Some(Finding::WithinNoise)
        }
    }
}

impl std::fmt::Display for Estimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.3} [{:.3}, {:.3}]",
            self.value, self.ci[0], self.ci[1]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(v: &[Vec<Vec<f64>>]) -> Vec<Vec<Vec<f64>>> {
        v.to_vec()
    }

    #[test]
    fn interval_covers_the_mean_and_shrinks_with_more_units() {
        let mut rng = Rng::new(7);
        let make = |n: usize, rng: &mut Rng| -> Vec<f64> {
            (0..n).map(|_| 1.0 + 0.5 * rng.normal()).collect()
        };
        let small = obs(&[vec![make(16, &mut rng)]]);
        let large = obs(&[vec![make(1024, &mut rng)]]);
        let width = |o: &Vec<Vec<Vec<f64>>>| {
            let b = Bootstrap::new(1, &[o[0][0].len()], 1);
            let view: Obs = o
                .iter()
                .map(|r| r.iter().map(Vec::as_slice).collect())
                .collect();
            let e = b.estimate(|d| d.mean(&view, 0)).unwrap();
            assert!(e.ci[0] <= e.value && e.value <= e.ci[1], "{e}");
            e.ci[1] - e.ci[0]
        };
        let (ws, wl) = (width(&small), width(&large));
        // Width ~ 4 sigma / sqrt(n): 0.5 for 16 units, 0.06 for 1024.
        assert!(ws > 0.3 && ws < 0.7, "{ws}");
        assert!(wl > 0.04 && wl < 0.09, "{wl}");
    }

    #[test]
    fn paired_differences_see_through_shared_unit_difficulty() {
        // Windows differ a lot in difficulty; B is A + 0.01 on every window. Unpaired, 0.01 is
        // lost in the spread of the windows; paired, the difference is exactly 0.01.
        let a: Vec<f64> = (0..32).map(|i| (i % 7) as f64).collect();
        let b: Vec<f64> = a.iter().map(|x| x + 0.01).collect();
        let (va, vb): (Obs, Obs) = (vec![vec![&a]], vec![vec![&b]]);
        let boot = Bootstrap::new(1, &[32], 3);
        let d = boot
            .estimate(|x| Some(x.mean(&vb, 0)? - x.mean(&va, 0)?))
            .unwrap();
        assert!(
            (d.ci[0] - 0.01).abs() < 1e-9 && (d.ci[1] - 0.01).abs() < 1e-9,
            "{d}"
        );
        assert_eq!(Finding::of_positive(&d), Finding::Holds);
        let ea = boot.estimate(|x| x.mean(&va, 0)).unwrap();
        assert!(ea.ci[1] - ea.ci[0] > 0.5, "{ea}");
    }

    #[test]
    fn replicas_that_disagree_widen_the_interval() {
        // Two replicas: one says B is better by 0.1, the other that it is worse by 0.1. The
        // windows alone would call either replica significant; together they are noise.
        let a = vec![1.0; 64];
        let b1 = vec![0.9; 64];
        let b2 = vec![1.1; 64];
        let va: Obs = vec![vec![&a], vec![&a]];
        let vb: Obs = vec![vec![&b1], vec![&b2]];
        let boot = Bootstrap::new(2, &[64], 5);
        let d = boot
            .estimate(|x| Some(x.mean(&va, 0)? - x.mean(&vb, 0)?))
            .unwrap();
        assert_eq!(Finding::of_positive(&d), Finding::WithinNoise, "{d}");
        assert!(d.value.abs() < 1e-12);
    }

    #[test]
    fn misshapen_observations_give_no_interval() {
        let a = vec![1.0; 10];
        let v: Obs = vec![vec![&a]];
        let boot = Bootstrap::new(1, &[12], 5);
        assert!(boot.estimate(|x| x.mean(&v, 0)).is_none());
        let boot2 = Bootstrap::new(2, &[10], 5);
        assert!(boot2.estimate(|x| x.mean(&v, 0)).is_none());
    }

    #[test]
    fn combined_findings() {
        use Finding::*;
        assert_eq!(Finding::all(&[Holds, Holds]), Some(Holds));
        assert_eq!(Finding::all(&[Holds, WithinNoise]), Some(WithinNoise));
        assert_eq!(Finding::all(&[Holds, DoesNotHold]), Some(DoesNotHold));
        assert_eq!(Finding::all(&[]), None);
    }
}
