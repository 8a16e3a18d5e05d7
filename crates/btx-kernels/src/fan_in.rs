//! One input gradient for a tensor that several fused ops read.
//!
//! burn sums the gradients a tensor receives from its consumers in `Gradients::register`: one
//! add per extra consumer, on the calling thread (flex adds below 4M elements on one core), with
//! the other cores idle. q, k and v all read the same normed activations, and so do an MLP's
//! gate and up projections: two or one full serial passes per layer. Ops built with a shared
//! [`FanIn`] instead write their share of the gradient straight into one buffer inside their
//! own parallel kernels (the first overwrites it, the others add into it, as a product's
//! accumulate mode does for free), and the last one hands the sum to burn.
//!
//! The bookkeeping only: whether an op's input needs a gradient at all is burn's to say, so
//! btx-model's `fused` asks the graph and then calls [`FanIn::announce`].

use std::sync::{Arc, Mutex};

use crate::gemm::Dst;

/// The summed input gradient of a tensor read by several ops built with this `FanIn`.
///
/// Each such op whose input needs a gradient announces itself when it is built
/// ([`FanIn::announce`]) and adds its share in its backward pass; the last share hands the sum
/// to burn. So a consumer that is built but whose output never reaches the loss would leave
/// the sum unregistered: every op built with a `FanIn` must feed the loss (the model's blocks
/// do by construction). Dropping a `FanIn` with some but not all shares in reports it.
#[derive(Debug, Default)]
pub struct FanIn {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Consumers announced by [`FanIn::announce`].
    expected: usize,
    /// Consumers whose share is in `buf`.
    seen: usize,
    buf: Vec<f32>,
}

impl FanIn {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Announces one more consumer whose backward pass will add a share (call it only for a
    /// consumer whose input needs a gradient: the sum is handed over when every announced
    /// share is in).
    pub fn announce(&self) {
        self.state.lock().expect("FanIn lock").expected += 1;
    }

    /// Adds one consumer's share through `write(dst, mode)`. Returns the finished sum to the
    /// last consumer.
    ///
    /// # Safety
    /// `write` must write (`Dst::Write`, the first consumer: `dst` is uninitialised) or add into
    /// (`Dst::Accumulate`) all `len` elements at `dst`, and nothing past them.
    pub unsafe fn add(&self, len: usize, write: impl FnOnce(*mut f32, Dst)) -> Option<Vec<f32>> {
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
        // SAFETY: per the contract, `write` initialised all `len` elements (the first time;
        // later they already were).
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
/// to the last consumer), else into a fresh buffer.
///
/// # Safety
/// As for [`FanIn::add`]: `write` writes or adds into exactly the `len` elements at `dst`.
pub unsafe fn share(
    fan: Option<&FanIn>,
    len: usize,
    write: impl FnOnce(*mut f32, Dst),
) -> Option<Vec<f32>> {
    match fan {
        // SAFETY: the caller's contract is `add`'s.
        Some(fan) => unsafe { fan.add(len, write) },
        None => {
            let mut buf: Vec<f32> = Vec::with_capacity(len);
            write(buf.as_mut_ptr(), Dst::Write);
            // SAFETY: per the contract, `write` initialised every element.
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
