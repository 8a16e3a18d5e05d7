//! One input gradient for a tensor that several fused ops read.
//!
//! burn sums the gradients a tensor receives from its consumers in `Gradients::register`: one
//! add per extra consumer, on the calling thread (flex adds below 4M elements on one core), with
//! the other cores idle. q, k and v all read the same normed activations, and so do an MLP's
//! gate and up projections: two or one full serial passes per layer. Ops built with a shared
//! [`FanIn`] instead write their share of the gradient straight into one buffer inside their
//! own parallel kernels (the first overwrites it, the others add into it, as a product's
//! accumulate mode does for free), and the last one hands the sum to burn.

use std::sync::{Arc, Mutex};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};

use super::kernels::gemm::Dst;

/// The summed input gradient of a tensor read by several ops built with this `FanIn`.
///
/// Each such op whose input needs a gradient announces itself when it is built
/// ([`FanIn::expect`]) and adds its share in its backward pass; the last share hands the sum
/// to burn. So a consumer that is built but whose output never reaches the loss would leave
/// the sum unregistered: every op built with a `FanIn` must feed the loss (the model's blocks
/// do by construction). Dropping a `FanIn` with some but not all shares in reports it.
#[derive(Debug, Default)]
pub struct FanIn {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Consumers announced by [`FanIn::expect`].
    expected: usize,
    /// Consumers whose share is in `buf`.
    seen: usize,
    buf: Vec<f32>,
}

impl FanIn {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Announces one more consumer whose backward pass will add a share, if `x` (its input)
    /// needs a gradient; returns whether it does.
    pub(crate) fn expect(
        &self,
        x: &<Autodiff<Flex> as burn::backend::BackendTypes>::FloatTensorPrimitive,
    ) -> bool {
        let tracked = matches!(
            Probe
                .prepare::<NoCheckpointing>([x.node()])
                .compute_bound()
                .stateful(),
            OpsKind::Tracked(_)
        );
        if tracked {
            self.state.lock().expect("FanIn lock").expected += 1;
        }
        tracked
    }

    /// Adds one consumer's share: `write(dst, mode)` must write (`Dst::Write`, the first
    /// consumer: `dst` is uninitialised) or add into (`Dst::Accumulate`) all `len` elements at
    /// `dst`. Returns the finished sum to the last consumer.
    pub(crate) fn add(&self, len: usize, write: impl FnOnce(*mut f32, Dst)) -> Option<Vec<f32>> {
        let mut st = self.state.lock().expect("FanIn lock");
        let mode = if st.seen == 0 {
            st.buf = Vec::with_capacity(len);
            Dst::Write
        } else {
            assert_eq!(
                st.buf.len(),
                len,
                "FanIn consumers disagree on the gradient size"
            );
            Dst::Accumulate
        };
        write(st.buf.as_mut_ptr(), mode);
        // SAFETY: `write` initialised all `len` elements (the first time; later they already were).
        unsafe { st.buf.set_len(len) };
        st.seen += 1;
        assert!(
            st.seen <= st.expected,
            "more FanIn shares than announced consumers"
        );
        (st.seen == st.expected).then(|| std::mem::take(&mut st.buf))
    }
}

/// One consumer's share of an input gradient: into `fan` when there is one (returning the sum
/// to the last consumer), else into a fresh buffer. `write` as for [`FanIn::add`].
pub(crate) fn share(
    fan: Option<&FanIn>,
    len: usize,
    write: impl FnOnce(*mut f32, Dst),
) -> Option<Vec<f32>> {
    match fan {
        Some(fan) => fan.add(len, write),
        None => {
            let mut buf: Vec<f32> = Vec::with_capacity(len);
            write(buf.as_mut_ptr(), Dst::Write);
            // SAFETY: `write` initialised every element.
            unsafe { buf.set_len(len) };
            Some(buf)
        }
    }
}

impl Drop for FanIn {
    /// Not a panic: burn drops graph nodes late (in a later backward pass, possibly on another
    /// thread), where a panic would point at the wrong place.
    fn drop(&mut self) {
        if let Ok(st) = self.state.get_mut() {
            if st.seen != 0 && st.seen != st.expected {
                // Not eprintln!: it panics when stderr cannot be written (a full disk).
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "btx error: a gradient fan-in got {} of its {} shares; an op sharing its \
                     input did not reach the loss, and that input's gradient was lost",
                    st.seen,
                    st.expected
                );
            }
        }
    }
}

/// An op that is never finished: preparing it tells whether its input needs a gradient.
#[derive(Debug)]
struct Probe;

impl Backward<Flex, 1> for Probe {
    type State = ();

    fn backward(self, _: Ops<(), 1>, _: &mut Gradients, _: &mut Checkpointer) {}
}
