//! The padding_idx gradient on the composite path (burn's select, what other backends and
//! bf16 run), which masks the lookup itself. Its own test binary: BTX_COMPOSITE is read once
//! per process, so it is set before any op runs and only this binary's one test sees it.

mod pad;

#[test]
fn the_composite_lookup_skips_the_pad_row_as_torch_does() {
    std::env::set_var("BTX_COMPOSITE", "1");
    use btx_model::burn::prelude::*;
    let probe = Tensor::<2>::zeros([1, 1], &Device::flex());
    assert!(
        !btx_model::ops::fused_available(&probe),
        "the composite path is on"
    );
    pad::untied_pad_row_gets_no_gradient();
    pad::tied_pad_row_gets_the_heads_gradient_only();
    pad::a_batch_without_the_pad_id_is_unchanged();
}
