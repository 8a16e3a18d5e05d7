//! Graceful stop: SIGTERM, SIGINT and SIGUSR1 (Slurm's pre-timeout warning) ask the trainer to
//! write a checkpoint at the end of the current step and exit, so a requeued job resumes there.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Installs the handlers (idempotent).
pub fn install() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGUSR1] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// For tests: pretend a signal arrived.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// For tests: forget a stop asked for earlier in this process.
pub fn clear_stop() {
    STOP.store(false, Ordering::SeqCst);
}
