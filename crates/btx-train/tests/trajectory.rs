//! The golden PyTorch trajectory on the fused flex path (see `golden/mod.rs`).

mod golden;

#[test]
fn reproduces_the_pytorch_trajectory() {
    golden::check_trajectory();
}
