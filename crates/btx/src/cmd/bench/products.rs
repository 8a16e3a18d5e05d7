//! The matrix products of a train step: their shapes (`step_gemms`), the matmul floor they
//! would take alone on hot or cold caches, and `--products`: each product recorded inside real
//! steps set against the same call replayed alone.

use std::time::Instant;

use btx_kernels::instrument::gemm_clock::{self, Call};
use btx_kernels::{gemm, tile_mm};
use btx_model::ModelConfig;

/// The middle of `v` (sorted in place; the upper middle for an even count).
pub(super) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One kind of matrix product in a train step: `count` calls of `[m x k] [k x n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepProduct {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub count: usize,
    /// An attention block, which the step runs on the tile kernel where it can.
    pub block: bool,
}

/// The matrix products of one train step of `cfg` (linears forward and backward, attention
/// blocks as the fused kernel computes them, the experts' rows at their average count).
pub fn step_gemms(cfg: &ModelConfig, batch: usize, seq: usize) -> Vec<StepProduct> {
    let n = batch * seq;
    let d = cfg.hidden_size;
    let mut g = vec![];
    // y = x W^T with x [rows, i], W [o, i]: forward, dX, dW.
    let linear = |g: &mut Vec<StepProduct>, rows: usize, i: usize, o: usize, count: usize| {
        if rows == 0 {
            return;
        }
        for (m, k, n) in [(rows, i, o), (rows, o, i), (o, rows, i)] {
            g.push(StepProduct {
                m,
                k,
                n,
                count,
                block: false,
            });
        }
    };
    let l = cfg.num_layers;
    linear(&mut g, n, d, cfg.q_dim(), 2 * l);
    linear(&mut g, n, d, cfg.kv_dim(), 2 * l);
    let (t, hd, bh) = (seq, cfg.head_dim, batch * cfg.num_heads * l);
    // Attention as the fused kernel computes it: blocks of 64 query rows against the keys they
    // can see. Forward S = QKᵀ, O = PV; backward dP = dO Vᵀ, dQ = dS K, and per block of 64
    // keys dK = dSᵀ Q, dV = Pᵀ dO over the rows that see them.
    let blk = 64;
    let mut r0 = 0;
    while r0 < t {
        let rows = blk.min(t - r0);
        let cols = r0 + rows;
        for (m, k, n) in [(rows, hd, cols), (rows, cols, hd), (rows, t - r0, hd)] {
            g.push(StepProduct {
                m,
                k,
                n,
                count: 2 * bh,
                block: true,
            });
        }
        r0 += rows;
    }
    match &cfg.moe {
        None => linear(&mut g, n, d, cfg.intermediate_size, 3 * l),
        Some(m) => {
            let active = match m.routing {
                btx_model::Routing::TopK => m.top_k,
                btx_model::Routing::Soft => m.num_experts,
                _ => 1,
            };
            let per_expert = n * active / m.num_experts;
            linear(
                &mut g,
                per_expert,
                d,
                cfg.intermediate_size,
                3 * l * m.num_experts,
            );
            linear(&mut g, n, d, m.num_experts, l);
        }
    }
    linear(&mut g, n, d, cfg.vocab_size, 1);
    g
}

/// The step's products by call (shape and layout), in-step time against the same call alone.
pub(super) fn print_products(steps: usize, threads: usize) {
    let calls = gemm_clock::calls();
    let per_step = |x: f64| x / steps.max(1) as f64 * 1e3;
    let mut rows: Vec<(gemm_clock::Call, f64, f64, u64)> = calls
        .iter()
        .map(|&(c, n, s)| (c, per_step(s), per_step(replay(&c) * n as f64), n))
        .collect();
    rows.sort_by(|x, y| (y.1 - y.2).total_cmp(&(x.1 - x.2)));
    let (step, alone) = rows.iter().fold((0.0, 0.0), |(a, b), r| (a + r.1, b + r.2));
    errln!(
        "products per step ({threads} thread(s); single-core calls summed over threads): {step:.1} ms in the step, {alone:.1} ms alone on hot caches ({:.3}x)",
        step / alone
    );
    errln!("  in-step ms   alone ms  ratio  calls  m x n x k  [dst_rs; A rs,cs; B rs,cs]");
    for (c, st, al, n) in rows.iter().take(20) {
        errln!(
            "  {st:>10.2} {al:>10.2} {:>6.3} {:>6} {} x {} x {}  [{}; {},{}; {},{}]{}{}",
            st / al,
            n / steps.max(1) as u64,
            c.m,
            c.n,
            c.k,
            c.dst_rs,
            c.a.0,
            c.a.1,
            c.b.0,
            c.b.1,
            if c.acc { " acc" } else { "" },
            if c.parallel { " spread" } else { "" },
        );
    }
}

/// Seconds the matrix products of one train step take on their own (contiguous operands,
/// median of repeats): the floor a step's time is measured against. Each product runs as the
/// step would run it alone: one gemm call, spread over the pool when worth it; an attention
/// block on the faster of gemm and the tile kernel (which the step uses where the CPU has
/// AVX-512), so that a faster kernel in the step lowers the floor with it.
///
/// `Caches::Hot` repeats each call on the same operands (they stay in cache): the floor.
/// `Caches::Cold` gives every call its own operands and output from a ring of more than twice
/// the L3 (64 MB), so each starts with its data in memory, as a step's activations are when
/// they outgrow the caches: what the same products cost when nothing is reused from cache.
pub fn matmul_floor(cfg: &ModelConfig, batch: usize, seq: usize, caches: Caches) -> f64 {
    step_gemms(cfg, batch, seq)
        .into_iter()
        .map(|p| {
            // One product's operands at a time (a cold ring is 64 MB).
            let mut f = FloorProduct::new(p, caches);
            let mut ts: Vec<f64> = (0..3).map(|_| f.round()).collect();
            median(&mut ts) * p.count as f64
        })
        .sum()
}

/// The hot floor taken in sweeps, one round of every product each, so that it can be
/// measured between train steps: a step and the sweep right after it see the machine in the
/// same state. (On this shared machine both move by ±3% from run to run, mostly not together:
/// with the floor measured after all the steps, six runs gave MoE-S ratios of 1.19-1.24.)
pub(super) struct HotFloor(Vec<FloorProduct>);

impl HotFloor {
    pub(super) fn new(cfg: &ModelConfig, batch: usize, seq: usize) -> Self {
        HotFloor(
            step_gemms(cfg, batch, seq)
                .into_iter()
                .map(|p| FloorProduct::new(p, Caches::Hot))
                .collect(),
        )
    }

    /// Seconds of one step's products, one round of each.
    pub(super) fn sweep(&mut self) -> f64 {
        self.0
            .iter_mut()
            .map(|f| f.round() * f.p.count as f64)
            .sum()
    }
}

/// One of the floor's products with its operands (`sets` of them for a cold ring), warmed up.
struct FloorProduct {
    p: StepProduct,
    sets: usize,
    a: Vec<Vec<f32>>,
    b: Vec<Vec<f32>>,
    c: Vec<Vec<f32>>,
    /// Calls per round: enough work to time (~0.2 GFLOP), and every set at least once.
    calls: usize,
}

impl FloorProduct {
    fn new(p: StepProduct, caches: Caches) -> Self {
        let (m, k, n) = (p.m, p.k, p.n);
        let sets = match caches {
            Caches::Hot => 1,
            Caches::Cold => (RING_BYTES / (4 * (m * k + k * n + m * n))).clamp(2, 4096),
        };
        let fill = |len: usize, q: usize, s: usize| -> Vec<f32> {
            (0..len).map(|i| ((i + s) % q) as f32 * 0.01).collect()
        };
        let reps = ((2e8 / (2.0 * (m * k * n) as f64)).ceil() as usize).clamp(3, 200);
        let mut f = FloorProduct {
            p,
            sets,
            a: (0..sets).map(|s| fill(m * k, 13, s)).collect(),
            b: (0..sets).map(|s| fill(k * n, 7, s)).collect(),
            c: (0..sets).map(|_| vec![0f32; m * n]).collect(),
            calls: reps.max(sets),
        };
        // One pass with each kernel first: warms up and maps every page.
        for i in 0..f.calls {
            f.gemm(i);
            if f.tiled() {
                f.tile(i);
            }
        }
        f
    }

    /// Where the step runs this product on the tile kernel.
    fn tiled(&self) -> bool {
        self.p.block && tile_mm::available()
    }

    fn gemm(&mut self, i: usize) {
        let (s, StepProduct { m, k, n, .. }) = (i % self.sets, self.p);
        gemm::product_into(
            &mut self.c[s],
            [m, n, k],
            (&self.a[s], k, 1),
            (&self.b[s], n, 1),
        );
        std::hint::black_box(&mut self.c[s]);
    }

    fn tile(&mut self, i: usize) {
        let (s, StepProduct { m, k, n, .. }) = (i % self.sets, self.p);
        // SAFETY: only called where `tiled` (AVX-512 checked); a, b and c hold m*k, k*n and
        // m*n elements, the row-major extents of the strides given.
        unsafe {
            tile_mm::product(
                [m, n, k],
                self.c[s].as_mut_ptr(),
                n,
                false,
                (self.a[s].as_ptr(), k, 1),
                (self.b[s].as_ptr(), n),
                1.0,
            )
        };
        std::hint::black_box(&mut self.c[s]);
    }

    /// Seconds per call over one round of `calls` calls: gemm's, or the faster of gemm's
    /// and the tile kernel's where the step uses the tile kernel. On hot caches, one untimed
    /// call first brings the operands back (a sweep ran every other product in between).
    fn round(&mut self) -> f64 {
        let time = |f: &mut Self, tile: bool| {
            let run = |f: &mut Self, i: usize| {
                if tile {
                    f.tile(i)
                } else {
                    f.gemm(i)
                }
            };
            if f.sets == 1 {
                run(f, 0);
            }
            let t0 = std::time::Instant::now();
            for i in 0..f.calls {
                run(f, i);
            }
            t0.elapsed().as_secs_f64() / f.calls as f64
        };
        let g = time(self, false);
        if self.tiled() {
            g.min(time(self, true))
        } else {
            g
        }
    }
}

/// Steps paired with a sweep of the hot floor each (see [`HotFloor`]).
pub(super) const FLOOR_ROUNDS: usize = 7;

/// Where [`matmul_floor`]'s operands come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caches {
    Hot,
    Cold,
}

/// Bytes of operands [`Caches::Cold`] cycles through per product: twice this machine's 32 MB
/// L3 (more than most CPUs' last-level cache a core can use).
const RING_BYTES: usize = 64 << 20;

/// Median seconds of a recorded product run alone, repeatedly, on hot operands (fresh data).
fn replay(c: &Call) -> f64 {
    let extent = |rows: usize, cols: usize, (rs, cs): (usize, usize)| {
        (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs + 1
    };
    let a: Vec<f32> = (0..extent(c.m, c.k, c.a))
        .map(|i| (i % 13) as f32 * 0.01)
        .collect();
    let b: Vec<f32> = (0..extent(c.k, c.n, c.b))
        .map(|i| (i % 7) as f32 * 0.01)
        .collect();
    let mut dst = vec![0f32; extent(c.m, c.n, (c.dst_rs, 1))];
    let mode = if c.acc {
        gemm::Dst::Accumulate
    } else {
        gemm::Dst::Write
    };
    let mut run = || {
        // SAFETY: every buffer spans the extent its strides reach (and a tile call was
        // recorded only where the tile kernel is available, with contiguous B rows).
        unsafe {
            if c.tile {
                tile_mm::product(
                    [c.m, c.n, c.k],
                    dst.as_mut_ptr(),
                    c.dst_rs,
                    c.acc,
                    (a.as_ptr(), c.a.0, c.a.1),
                    (b.as_ptr(), c.b.0),
                    1.0,
                );
                return;
            }
            gemm::write_product_strided(
                dst.as_mut_ptr(),
                c.dst_rs,
                [c.m, c.n, c.k],
                (&a, c.a.0, c.a.1),
                (&b, c.b.0, c.b.1),
                1.0,
                mode,
                c.parallel,
            )
        }
    };
    run();
    let flops = 2.0 * (c.m * c.n * c.k) as f64;
    let reps = ((5e7 / flops).ceil() as usize).clamp(3, 2000);
    let mut ts: Vec<f64> = (0..5)
        .map(|_| {
            let t0 = Instant::now();
            for _ in 0..reps {
                run();
            }
            t0.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    ts.sort_by(f64::total_cmp);
    ts[2]
}
