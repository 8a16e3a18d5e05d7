//! Sets `cfg(host_avx512)` when the machine building btx has AVX-512 (F, VL, BW, DQ), so tests
//! of the AVX-512 kernels are `#[ignore]`d with a reason where they cannot run, and fail (rather
//! than return early) where they can but the kernels are not picked.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(host_avx512)");
    println!("cargo::rerun-if-changed=build.rs");
    #[cfg(target_arch = "x86_64")]
    {
        use std::is_x86_feature_detected as has;
        let host_is_target = std::env::var("HOST").ok() == std::env::var("TARGET").ok();
        if host_is_target
            && has!("avx512f")
            && has!("avx512vl")
            && has!("avx512bw")
            && has!("avx512dq")
        {
            println!("cargo::rustc-cfg=host_avx512");
        }
    }
}
