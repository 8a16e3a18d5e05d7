//! The golden 6-step PyTorch run (testdata/hf-tiny/llama/trajectory.*), replayed by
//! `btx_train::golden`. Shared by the test on the fused path and the one with
//! `BTX_COMPOSITE=1`.

use std::path::PathBuf;

use btx_model::burn::prelude::*;

/// Trains the golden run and checks every step and the final weights against it.
pub fn check_trajectory() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/hf-tiny/llama");
    let r = btx_train::golden::replay(&dir, &Device::flex()).unwrap();
    for (s, st) in r.steps.iter().enumerate() {
        println!(
            "step {s}: loss {:.6} (golden {:.6}, rel {:.1e}) lr rel {:.1e} gnorm rel {:.1e}",
            st.loss, st.golden_loss, st.rel_loss, st.rel_lr, st.rel_grad_norm
        );
    }
    let w = r.worst_weight.as_ref().unwrap();
    println!(
        "final weights: worst max-abs diff {:.2e} ({})",
        w.max_abs, w.name
    );
    assert_eq!(r.steps.len(), 6);
    assert!(r.failures.is_empty(), "{:#?}", r.failures);
}
