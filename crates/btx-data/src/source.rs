//! What the trainer pulls batches from. A source's cursor is plain JSON so the trainer can store
//! it in a checkpoint and a resumed run sees exactly the batches it would have seen.

use serde_json::Value;

/// A `[B, T]` batch of token ids, row-major; the loss predicts ids[t + 1] from ids[..= t].
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub ids: Vec<i64>,
    pub batch: usize,
    pub seq: usize,
    /// Which domain each row came from (an index into the source's domain list), if known.
    pub domains: Vec<usize>,
}

pub trait BatchSource: Send {
    /// The next batch; deterministic given the cursor.
    fn next_batch(&mut self) -> Batch;
    /// The cursor: everything needed to continue exactly from here.
    fn cursor(&self) -> Value;
    /// Restores a cursor saved by [`BatchSource::cursor`].
    fn restore(&mut self, cursor: &Value) -> Result<(), String>;
}

/// A fixed list of batches, served in order and cycling (golden runs, tests).
pub struct FixedBatches {
    pub batches: Vec<Batch>,
    pub pos: usize,
}

impl FixedBatches {
    pub fn new(batches: Vec<Batch>) -> Self {
        assert!(!batches.is_empty(), "FixedBatches needs at least one batch");
        Self { batches, pos: 0 }
    }
}

impl BatchSource for FixedBatches {
    fn next_batch(&mut self) -> Batch {
        let b = self.batches[self.pos % self.batches.len()].clone();
        self.pos += 1;
        b
    }

    fn cursor(&self) -> Value {
        serde_json::json!({ "pos": self.pos })
    }

    fn restore(&mut self, cursor: &Value) -> Result<(), String> {
        self.pos = cursor
            .get("pos")
            .and_then(|p| p.as_u64())
            .ok_or("cursor has no \"pos\"")? as usize;
        Ok(())
    }
}
