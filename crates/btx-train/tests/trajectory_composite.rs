//! The golden PyTorch trajectory with `BTX_COMPOSITE=1`: the composite ops and optimizer path,
//! which backends other than flex (CUDA) run, must reproduce it too. Its own test binary, as
//! the setting is read once per process.

mod golden;

#[test]
fn composite_ops_reproduce_the_pytorch_trajectory() {
    std::env::set_var("BTX_COMPOSITE", "1");
    golden::check_trajectory();
}
