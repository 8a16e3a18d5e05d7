//! Keeping the pool's other workers awake through a train step.
//!
//! A train step is a long run of parallel kernels separated by short serial stretches on the
//! calling thread (graph bookkeeping, the router's host-side top-k, small ops). rayon puts an
//! idle worker to sleep after a few dozen fruitless polls, so in the longer stretches the other
//! workers fall asleep and the next kernel waits for a futex wake-up before they join it (~170
//! futex calls per MoE-S step at 2 threads). [`awake`] runs a closure while every other worker
//! of the pool polls for work instead, executing whatever it steals, as OpenMP runtimes spin
//! between parallel regions. Measured at 2 threads: futex calls per MoE-S step 173 → ~0; step
//! time M −2.1%, S −0.8%, MoE-S within noise (docs/performance.md).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Spinners running right now, and started while their step ran (process-wide), for the tests.
static RUNNING: AtomicUsize = AtomicUsize::new(0);
static STARTED: AtomicUsize = AtomicUsize::new(0);

/// How long a spinner polls without finding work before it leaves the worker to rayon's own
/// sleep. Some serial stretches of a MoE-S step at 2 threads are longer than 5 ms (futex calls
/// per step: 50 with a 5 ms limit, ~0 with 20 ms, 173 without spinners).
const IDLE_LIMIT: std::time::Duration = std::time::Duration::from_millis(20);

/// One `awake` with spinners at a time, process-wide: two steps running at once on one pool
/// (two trainers of a library user) could otherwise each hold the other's worker in a spinner
/// waiting for the other step to end.
static ACTIVE: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Set on a thread while it runs an `awake` closure: a spinner that reaches it (in a join
    /// wait inside its own step, or inside another trainer's step running on the same pool)
    /// returns at once instead of stalling that step until the spinner's step ends.
    static IN_STEP: Cell<bool> = const { Cell::new(false) };
}

/// Undoes `awake`'s marks when dropped, so the spinners stop even when the closure panics.
struct Marks {
    stop: Option<Arc<AtomicBool>>,
    was_in_step: bool,
}

impl Drop for Marks {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop {
            stop.store(true, Ordering::Release);
            ACTIVE.store(false, Ordering::Release);
        }
        IN_STEP.set(self.was_in_step);
    }
}

/// Runs `f` with the pool's other workers spinning for work rather than sleeping. Off the pool
/// (no current worker), with a single thread, or while another `awake` runs, `f` simply runs.
/// A pool shared with other work (a library user's) can see that work wait, not hang, while a
/// spinner holds its worker until the step ends.
pub fn awake<R>(f: impl FnOnce() -> R) -> R {
    if rayon::current_thread_index().is_none() || rayon::current_num_threads() < 2 {
        return f();
    }
    let first = ACTIVE
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_ok();
    let marks = Marks {
        stop: first.then(|| Arc::new(AtomicBool::new(false))),
        was_in_step: IN_STEP.replace(true),
    };
    if let Some(flag) = marks.stop.clone() {
        // A broadcast job reaches every worker (it is never stolen by another one).
        rayon::spawn_broadcast(move |_| {
            if IN_STEP.get() {
                return;
            }
            RUNNING.fetch_add(1, Ordering::AcqRel);
            if !flag.load(Ordering::Acquire) {
                STARTED.fetch_add(1, Ordering::AcqRel);
            }
            let mut idle = 0u32;
            let mut idle_since = None;
            while !flag.load(Ordering::Acquire) {
                if rayon::yield_now() == Some(rayon::Yield::Executed) {
                    idle = 0;
                    idle_since = None;
                    continue;
                }
                idle += 1;
                if idle < 64 {
                    std::hint::spin_loop();
                    continue;
                }
                // Give the core away if anything else wants it (more threads than cores); on
                // an otherwise idle core this returns at once.
                std::thread::yield_now();
                // Nothing to do for IDLE_LIMIT: stop. This also bounds the one hazard of a
                // spinner: a worker that stole a job of the step just before the broadcast
                // arrived can pick its spinner up while waiting inside that job, and the step
                // waits for the job; after IDLE_LIMIT of idleness the job goes on.
                let since = *idle_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > IDLE_LIMIT {
                    break;
                }
            }
            RUNNING.fetch_sub(1, Ordering::AcqRel);
        });
    }
    let out = f();
    drop(marks);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// The tests share the process-wide state (one `awake` with spinners at a time).
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn runs_parallel_work_and_releases_the_workers() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for _ in 0..20 {
            let s: u64 = pool.install(|| awake(|| (0..100_000u64).into_par_iter().sum()));
            assert_eq!(s, 99_999 * 100_000 / 2);
        }
        // While the closure keeps the pool busy the other workers spin (at least one of them
        // gets going: on a loaded machine a descheduled one may time out); a panic inside
        // still stops them, and the pool keeps serving work afterwards.
        pool.broadcast(|_| ()); // every worker past the spinners queued above
        let before = STARTED.load(Ordering::Acquire);
        let started = AtomicUsize::new(0);
        let r = pool.install(|| {
            std::panic::catch_unwind(|| {
                awake(|| {
                    let t0 = std::time::Instant::now();
                    while t0.elapsed().as_millis() < 50 {
                        (0..64).into_par_iter().for_each(|_| {
                            let t = std::time::Instant::now();
                            while t.elapsed().as_micros() < 20 {
                                std::hint::spin_loop();
                            }
                        });
                    }
                    started.store(STARTED.load(Ordering::Acquire) - before, Ordering::Release);
                    panic!("inside")
                })
            })
        });
        assert!(r.is_err());
        let n = started.load(Ordering::Acquire);
        assert!(
            (1..=2).contains(&n),
            "{n} spinners started for 2 other workers"
        );
        let s: u64 = pool.install(|| (0..1000u64).into_par_iter().sum());
        assert_eq!(s, 999 * 500);
        // No spinner is left running.
        let t0 = std::time::Instant::now();
        while RUNNING.load(Ordering::Acquire) != 0 {
            assert!(t0.elapsed().as_secs() < 20, "a worker is still spinning");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Two steps at once on one pool (two trainers of a library user): both finish. Spinners
    /// that nested inside the other step's waits stalled each other for good.
    #[test]
    fn concurrent_steps_on_one_pool_both_finish() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let pool = std::sync::Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap(),
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let p = pool.clone();
        std::thread::spawn(move || {
            // Uneven halves, so that the thread that forked waits (and looks for work,
            // spinners included) while the other half runs.
            let halves = || {
                rayon::join(
                    || 1u64,
                    || {
                        std::thread::sleep(std::time::Duration::from_micros(200));
                        2u64
                    },
                )
            };
            let step = || {
                (0..100)
                    .map(|_| awake(|| halves().0 + halves().1))
                    .sum::<u64>()
            };
            let sums = p.install(|| rayon::join(step, step));
            tx.send(sums).unwrap();
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(60));
        assert_eq!(got, Ok((300, 300)), "the two steps did not both finish");
    }
}
