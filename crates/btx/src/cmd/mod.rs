pub mod bench;
pub mod data;
pub mod demo;
pub mod eval;
pub mod experts;
pub mod export;
pub mod forward;
pub mod generate;
pub mod import;
pub mod mix;
pub mod run;
pub mod selftest;
pub mod stage;
pub mod status;
pub mod train;

/// How a command writes a model: `--dtype` and `--max-shard-size`, the same on every command
/// that writes one (mix, export, train).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SaveArgs {
    /// Float type of the written weights: f32, bf16 or f16 (rounded once, to nearest-even).
    /// Default: the input model's (the seed's for mix; f32 for a model trained from scratch).
    #[arg(long, value_parser = parse_dtype)]
    pub dtype: Option<btx_model::io::OutDtype>,
    /// Largest safetensors shard, as transformers spells it (5GB, 500MB, 2GiB); a larger
    /// checkpoint is sharded with model.safetensors.index.json.
    #[arg(long, default_value = "5GB", value_parser = btx_model::io::parse_size)]
    pub max_shard_size: usize,
}

fn parse_dtype(s: &str) -> Result<btx_model::io::OutDtype, String> {
    btx_model::io::OutDtype::parse_float(s)
}

impl SaveArgs {
    /// The options, the dtype defaulting to the weights in `input` (f32 without one).
    pub fn resolve(
        &self,
        input: Option<&std::path::Path>,
    ) -> anyhow::Result<btx_model::io::SaveOpts> {
        let dtype = match (self.dtype, input) {
            (Some(d), _) => d,
            (None, Some(dir)) => btx_model::io::stored_dtype(dir)?,
            (None, None) => btx_model::io::OutDtype::F32,
        };
        Ok(btx_model::io::SaveOpts {
            dtype,
            max_shard_bytes: self.max_shard_size,
        })
    }
}
