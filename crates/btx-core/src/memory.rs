//! The machine's memory, for the checks that refuse a request which cannot fit before
//! allocating any of it (see btx-model's `budget`).

/// Total physical memory (`MemTotal` in /proc/meminfo), in bytes; `None` where it cannot be
/// read (not Linux, a sandbox without /proc).
pub fn machine_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `bytes` as GiB with one decimal, e.g. "7.8 GiB".
pub fn gib(bytes: f64) -> String {
    format!("{:.1} GiB", bytes / (1u64 << 30) as f64)
}
