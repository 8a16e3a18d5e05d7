//! Process-wide setup: logging, thread pool, device, exit codes.

use anyhow::{bail, Result};
use btx_model::burn::prelude::Device;

/// btx's own crates, the targets a bare level in `BTX_LOG` applies to.
const OWN_CRATES: [&str; 7] = [
    "btx",
    "btx_data",
    "btx_eval",
    "btx_mix",
    "btx_model",
    "btx_train",
    "btx_testkit",
];

/// The log filter for a `BTX_LOG` value: btx's crates at info, every dependency at warn. A bare
/// level (`debug`) sets btx's crates only; `target=level` directives (`cubecl=info`) are kept as
/// written, so a dependency logs more only when asked by name. Dependencies are held at warn
/// because some are loud at info: cubecl prints ~600k lines of LLVM IR per CUDA process.
pub fn log_filter(env: Option<&str>) -> String {
    let mut own = "info".to_string();
    let mut extra = vec![];
    for d in env.unwrap_or("").split(',').map(str::trim) {
        if d.is_empty() {
            continue;
        }
        if d.contains('=') {
            extra.push(d.to_string());
        } else {
            own = d.to_string();
        }
    }
    let mut f = vec!["warn".to_string()];
    f.extend(OWN_CRATES.iter().map(|c| format!("{c}={own}")));
    f.extend(extra);
    f.join(",")
}

pub fn init_logging() {
    let env = std::env::var("BTX_LOG").ok();
    let filter = tracing_subscriber::EnvFilter::try_new(log_filter(env.as_deref()))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_filter(None)));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Sets up the global thread pool: `threads` workers (default: RAYON_NUM_THREADS, else all
/// cores), with room for deep stacks since commands run on a worker (see [`on_pool`]).
pub fn init_threads(threads: Option<usize>) -> Result<()> {
    let n = threads.unwrap_or(0);
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .stack_size(64 << 20)
        .build_global()
        .map_err(|e| anyhow::anyhow!("cannot set up {n} threads: {e}"))
}

/// Runs `f` on a worker of the global pool and waits for it. Every parallel kernel called from
/// outside the pool is handed to it through a sleeping latch (a futex round trip per call,
/// thousands per train step; 1-3% of a preset-S step); from a worker it is a plain call.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// The compute device for `name`, checked to be usable: on `cuda`, a driver and a GPU must be
/// there (cubecl would otherwise panic in a worker thread at the first kernel).
pub fn device(name: &str) -> Result<Device> {
    check_device_name(name)?;
    match name {
        #[cfg(feature = "cuda")]
        "cuda" => {
            cuda::check()?;
            Ok(Device::cuda(0))
        }
        _ => Ok(Device::flex()),
    }
}

/// Whether `name` is a device this build has, without touching it (for commands that only
/// hand the device on, e.g. `btx run --executor slurm` on a head node with no GPU).
pub fn check_device_name(name: &str) -> Result<()> {
    match name {
        "cpu" | "flex" => Ok(()),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(()),
        #[cfg(not(feature = "cuda"))]
        "cuda" => bail!(
            "this btx was built without CUDA\nhint: build one with `scripts/build-cuda.sh` (Debian 12: LLVM from apt, no other download), then use target/cuda/btx"
        ),
        other => bail!("unknown device {other:?} (cpu or cuda)"),
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use anyhow::{bail, Result};

    /// Loads the NVIDIA driver the way cudarc will and asks it for GPUs; checks that the
    /// kernels' math library (libdevice) is where cubecl looks for it.
    pub fn check() -> Result<()> {
        type Init = unsafe extern "C" fn(u32) -> i32;
        type Count = unsafe extern "C" fn(*mut i32) -> i32;
        // SAFETY: dlopen/dlsym get NUL-terminated names; cuInit and cuDeviceGetCount have these
        // C signatures in every CUDA driver API version; the library stays loaded (cudarc
        // loads the same one), so the function pointers stay valid.
        let (init_rc, count_rc, n) = unsafe {
            let mut lib = std::ptr::null_mut();
            for name in [c"libcuda.so.1", c"libcuda.so"] {
                lib = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
                if !lib.is_null() {
                    break;
                }
            }
            if lib.is_null() {
                bail!("--device cuda: no NVIDIA driver on this machine (libcuda.so.1 not found)\nhint: run on a machine with an NVIDIA GPU and its driver, or use --device cpu");
            }
            let init = libc::dlsym(lib, c"cuInit".as_ptr());
            let count = libc::dlsym(lib, c"cuDeviceGetCount".as_ptr());
            if init.is_null() || count.is_null() {
                bail!("--device cuda: libcuda.so.1 has no cuInit/cuDeviceGetCount\nhint: reinstall the NVIDIA driver");
            }
            let init: Init = std::mem::transmute::<*mut libc::c_void, Init>(init);
            let count: Count = std::mem::transmute::<*mut libc::c_void, Count>(count);
            let init_rc = init(0);
            let mut n = 0i32;
            let count_rc = if init_rc == 0 { count(&mut n) } else { 0 };
            (init_rc, count_rc, n)
        };
        if init_rc != 0 || count_rc != 0 || n == 0 {
            let visible = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "unset".into());
            bail!("--device cuda: the NVIDIA driver sees no usable GPU (cuInit {init_rc}, cuDeviceGetCount {count_rc}, {n} GPUs; CUDA_VISIBLE_DEVICES {visible})\nhint: check nvidia-smi, and that CUDA_VISIBLE_DEVICES names GPUs that exist");
        }
        // cubecl's search: $CUDA_PATH, else these roots.
        let roots: Vec<std::path::PathBuf> = match std::env::var("CUDA_PATH") {
            Ok(p) => vec![p.into()],
            Err(_) => ["/usr/local/cuda", "/opt/cuda", "/usr/lib/cuda", "/usr"]
                .iter()
                .map(Into::into)
                .collect(),
        };
        if !roots
            .iter()
            .any(|r| r.join("nvvm/libdevice/libdevice.10.bc").is_file())
        {
            bail!("--device cuda: libdevice.10.bc (the GPU kernels' math library) is not in {}\nhint: set CUDA_PATH to a CUDA toolkit, or to the nvidia/cuda_nvcc directory of the PyPI wheel nvidia-cuda-nvcc-cu12 (it holds nvvm/libdevice)", roots.iter().map(|r| format!("{}/nvvm/libdevice", r.display())).collect::<Vec<_>>().join(", "));
        }
        Ok(())
    }
}

/// Where a process computes, as stage.json, manifest.json and `btx status` show it: `cpu`, or
/// `cuda` with the GPUs it was given (`cuda:3` when `CUDA_VISIBLE_DEVICES=3`, as `btx run
/// --gpus` and Slurm's `--gres` set it).
pub fn device_label(device: &str) -> String {
    match (device, std::env::var("CUDA_VISIBLE_DEVICES")) {
        ("cuda", Ok(v)) if !v.trim().is_empty() => format!("cuda:{}", v.trim()),
        (d, _) => d.to_string(),
    }
}

/// Exit code 75 (EX_TEMPFAIL) when a run stopped early on a signal with a checkpoint written,
/// so schedulers can tell "requeue me" from "failed".
pub const EXIT_STOPPED: i32 = 75;

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::EnvFilter;

    #[test]
    fn dependencies_log_warnings_unless_named() {
        let f = log_filter(None);
        assert!(f.starts_with("warn,"), "{f}");
        assert!(
            f.contains("btx_model=info") && f.contains("btx=info"),
            "{f}"
        );
        let f = log_filter(Some("debug"));
        assert!(
            f.starts_with("warn,") && f.contains("btx_eval=debug"),
            "{f}"
        );
        assert!(!f.contains("info"), "{f}");
        let f = log_filter(Some("warn, cubecl=info"));
        assert!(
            f.contains("btx_mix=warn") && f.ends_with(",cubecl=info"),
            "{f}"
        );
        for v in [None, Some("debug"), Some("cubecl_cuda=trace,error")] {
            let f = log_filter(v);
            EnvFilter::try_new(&f).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
    }
}
