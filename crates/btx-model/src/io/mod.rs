//! Safetensors reading (single file or sharded with `model.safetensors.index.json`, memory-mapped)
//! and streaming writing (the header is computed from the shapes up front, tensors are appended as
//! they are produced, so a writer never holds more than one tensor).

mod read;
mod tensor;
mod write;

pub use read::{read_all, TensorReader};
pub use tensor::{HostTensor, INDEX_FILE, SINGLE_FILE};
pub use write::{
    parse_size, plan_shards, write_checkpoint, write_checkpoint_as, write_checkpoint_with,
    write_model_checkpoint, write_tensors, OutDtype, SaveOpts, StreamWriter, TensorSink,
    DEFAULT_MAX_SHARD_BYTES,
};

/// The float dtype of the model in `dir` (see [`TensorReader::weights_dtype`]), read from its
/// config and headers only.
pub fn stored_dtype(dir: &std::path::Path) -> crate::error::Result<OutDtype> {
    let cfg = crate::config::ModelConfig::load(&dir.join("config.json"))?;
    Ok(TensorReader::open_for(dir, &cfg)?.weights_dtype())
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::SafeTensors;

    fn tmpdir(tag: &str) -> btx_testkit::Scratch {
        btx_testkit::Scratch::new(&format!("io-{tag}"))
    }

    #[test]
    fn sharded_round_trip_is_bit_exact() {
        let d = tmpdir("shard");
        let specs: Vec<(String, Vec<usize>)> =
            (0..5).map(|i| (format!("t{i}"), vec![3, 7 + i])).collect();
        let vals: Vec<Vec<f32>> = specs
            .iter()
            .enumerate()
            .map(|(i, (_, s))| {
                (0..s.iter().product::<usize>())
                    .map(|j| (i * 1000 + j) as f32 * 0.37 - 1e-7)
                    .collect()
            })
            .collect();
        write_checkpoint(&d, &specs, 100, |i| Ok(vals[i].clone())).unwrap();
        assert!(d.join(INDEX_FILE).exists());
        let r = TensorReader::open(&d).unwrap();
        for (i, (n, s)) in specs.iter().enumerate() {
            let t = r.read(n).unwrap();
            assert_eq!(&t.shape, s);
            let a: Vec<u32> = t.data.iter().map(|x| x.to_bits()).collect();
            let b: Vec<u32> = vals[i].iter().map(|x| x.to_bits()).collect();
            assert_eq!(a, b);
        }
        // Rewriting as a single file removes the stale index.
        write_checkpoint(&d, &specs, usize::MAX, |i| Ok(vals[i].clone())).unwrap();
        assert!(!d.join(INDEX_FILE).exists());
        // The reference reader accepts what we write.
        let bytes = std::fs::read(d.join(SINGLE_FILE)).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), 5);
    }

    #[test]
    fn writer_refuses_out_of_order_tensors() {
        let d = tmpdir("order");
        let mut w = StreamWriter::create(
            &d.join("x.safetensors"),
            vec![
                ("a".into(), OutDtype::F32, vec![2]),
                ("b".into(), OutDtype::F32, vec![2]),
            ],
        )
        .unwrap();
        let e = w.write_f32("b", &[1.0, 2.0]).unwrap_err().to_string();
        assert!(e.contains("expected tensor \"a\""), "{e}");
    }
}
