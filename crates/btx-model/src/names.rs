//! Hugging Face tensor names and shapes, derived from the config: the single name map used by
//! loading, saving, gradients, freezing and merging.

use crate::config::{Family, ModelConfig};

/// One parameter as Hugging Face names and shapes it (`[out, in]` for linear weights).
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl ParamSpec {
    fn new(name: String, shape: &[usize]) -> Self {
        Self {
            name,
            shape: shape.to_vec(),
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Which part of the model a parameter belongs to; merging and freezing decide by this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// Feed-forward weights: dense `mlp.*` or one Mixtral expert (`experts.E.w1/w2/w3`).
    Ffn { layer: usize, expert: Option<usize> },
    /// The MoE router `block_sparse_moe.gate.weight`.
    Router { layer: usize },
    /// One attention expert's projection (`self_attn.experts.E.{q,k,v,o}_proj.weight`); `proj`
    /// is the dense model's name of the same matrix (`q_proj` ...).
    AttnExpert {
        layer: usize,
        expert: usize,
        proj: &'static str,
    },
    /// The attention experts' router `self_attn.router.weight`.
    AttnRouter { layer: usize },
    /// Everything else: embeddings, attention, norms, LM head.
    Shared,
}

pub fn layer_prefix(layer: usize) -> String {
    format!("model.layers.{layer}")
}

/// The name of an FFN matrix: `w` is 1 (gate), 2 (down) or 3 (up), Mixtral's numbering.
pub fn ffn_name(layer: usize, expert: Option<usize>, w: usize) -> String {
    let p = layer_prefix(layer);
    match expert {
        Some(e) => format!("{p}.block_sparse_moe.experts.{e}.w{w}.weight"),
        None => {
            let proj = match w {
                1 => "gate_proj",
                2 => "down_proj",
                3 => "up_proj",
                _ => panic!("w must be 1, 2 or 3"),
            };
            format!("{p}.mlp.{proj}.weight")
        }
    }
}

pub fn router_name(layer: usize) -> String {
    format!("{}.block_sparse_moe.gate.weight", layer_prefix(layer))
}

/// A dense attention projection (`proj` is `q_proj`, `k_proj`, `v_proj` or `o_proj`), or with
/// `expert` that attention expert's own.
pub fn attn_name(layer: usize, expert: Option<usize>, proj: &str) -> String {
    let p = layer_prefix(layer);
    match expert {
        Some(e) => format!("{p}.self_attn.experts.{e}.{proj}.weight"),
        None => format!("{p}.self_attn.{proj}.weight"),
    }
}

/// The bias of a dense attention projection (Qwen2's `q_proj`, `k_proj`, `v_proj`).
pub fn attn_bias_name(layer: usize, proj: &str) -> String {
    format!("{}.self_attn.{proj}.bias", layer_prefix(layer))
}

/// Qwen3's RMSNorm weight over each query (`which` = `q_norm`) or key (`k_norm`) head.
pub fn qk_norm_name(layer: usize, which: &str) -> String {
    format!("{}.self_attn.{which}.weight", layer_prefix(layer))
}

pub fn attn_router_name(layer: usize) -> String {
    format!("{}.self_attn.router.weight", layer_prefix(layer))
}

const ATTN_PROJS: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];

/// Classifies an HF parameter name.
pub fn param_kind(name: &str) -> ParamKind {
    let Some(rest) = name.strip_prefix("model.layers.") else {
        return ParamKind::Shared;
    };
    let (layer, rest) = rest.split_once('.').unwrap_or((rest, ""));
    let Ok(layer) = layer.parse::<usize>() else {
        return ParamKind::Shared;
    };
    if rest.starts_with("mlp.") {
        return ParamKind::Ffn {
            layer,
            expert: None,
        };
    }
    if rest == "block_sparse_moe.gate.weight" {
        return ParamKind::Router { layer };
    }
    if rest == "self_attn.router.weight" {
        return ParamKind::AttnRouter { layer };
    }
    if let Some(e) = rest.strip_prefix("self_attn.experts.") {
        let mut parts = e.split('.');
        let expert = parts.next().and_then(|x| x.parse().ok());
        let proj = parts
            .next()
            .and_then(|p| ATTN_PROJS.iter().find(|&&q| q == p));
        if let (Some(expert), Some(proj)) = (expert, proj) {
            return ParamKind::AttnExpert {
                layer,
                expert,
                proj,
            };
        }
    }
    if let Some(e) = rest.strip_prefix("block_sparse_moe.experts.") {
        let expert = e.split('.').next().and_then(|x| x.parse().ok());
        return ParamKind::Ffn { layer, expert };
    }
    ParamKind::Shared
}

/// Qwen2-MoE and Qwen3-MoE name their experts and router as `mlp.experts.E.{gate,up,down}_proj`
/// and `mlp.gate` where btx (and Mixtral) say `block_sparse_moe.experts.E.w{1,3,2}` and
/// `block_sparse_moe.gate`: btx keeps one set of names inside (freezing globs, merging, `grad.*`)
/// and renames at the checkpoint's edge, on reading ([`from_disk`]) and writing ([`disk_name`]).
fn qwen_moe(cfg: &ModelConfig) -> bool {
    cfg.is_moe() && cfg.family != Family::Llama
}

/// The name `name` (btx's) has in the checkpoint files of a model with this config.
pub fn disk_name(cfg: &ModelConfig, name: &str) -> String {
    if !qwen_moe(cfg) {
        return name.to_string();
    }
    let Some((head, rest)) = name.split_once(".block_sparse_moe.") else {
        return name.to_string();
    };
    if rest == "gate.weight" {
        return format!("{head}.mlp.gate.weight");
    }
    if let Some(e) = rest.strip_prefix("experts.") {
        if let Some((e, w)) = e.split_once('.') {
            let proj = match w {
                "w1.weight" => "gate_proj",
                "w2.weight" => "down_proj",
                "w3.weight" => "up_proj",
                _ => return name.to_string(),
            };
            return format!("{head}.mlp.experts.{e}.{proj}.weight");
        }
    }
    name.to_string()
}

/// What a tensor of the files is to btx: one of its parameters (by btx's name), or a tensor that
/// contributes nothing and is left unread: Qwen2-MoE's shared expert of size 0 (whose output
/// is zero whatever its gate).
#[derive(Clone, Debug, PartialEq)]
pub enum OnDisk {
    Param(String),
    Inert,
}

/// Reads a file's tensor name as btx's ([`disk_name`]'s inverse); `shape` tells the inert
/// shared expert (size 0, which the config reader requires) from a real one.
pub fn from_disk(cfg: &ModelConfig, name: &str, shape: &[usize]) -> OnDisk {
    if !qwen_moe(cfg) {
        return OnDisk::Param(name.to_string());
    }
    let Some((head, rest)) = name.split_once(".mlp.") else {
        return OnDisk::Param(name.to_string());
    };
    if cfg.family == Family::Qwen2 {
        let zero_size = shape.contains(&0);
        let inert = match rest {
            "shared_expert.gate_proj.weight"
            | "shared_expert.up_proj.weight"
            | "shared_expert.down_proj.weight" => zero_size,
            "shared_expert_gate.weight" => shape == [1, cfg.hidden_size],
            _ => false,
        };
        if inert {
            return OnDisk::Inert;
        }
    }
    if rest == "gate.weight" {
        return OnDisk::Param(format!("{head}.block_sparse_moe.gate.weight"));
    }
    if let Some(e) = rest.strip_prefix("experts.") {
        if let Some((e, proj)) = e.split_once('.') {
            let w = match proj {
                "gate_proj.weight" => "w1",
                "down_proj.weight" => "w2",
                "up_proj.weight" => "w3",
                _ => return OnDisk::Param(name.to_string()),
            };
            return OnDisk::Param(format!("{head}.block_sparse_moe.experts.{e}.{w}.weight"));
        }
    }
    OnDisk::Param(name.to_string())
}

/// Tensors the family's class has that btx's model does not, written with zeros so that
/// transformers finds every parameter it builds: Qwen2-MoE's shared expert of size 0 and its
/// gate, per layer.
pub fn disk_extras(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    if !(qwen_moe(cfg) && cfg.family == Family::Qwen2) {
        return vec![];
    }
    let d = cfg.hidden_size;
    let mut v = vec![];
    for l in 0..cfg.num_layers {
        let p = layer_prefix(l);
        v.push((
            format!("{p}.mlp.shared_expert.gate_proj.weight"),
            vec![0, d],
        ));
        v.push((format!("{p}.mlp.shared_expert.up_proj.weight"), vec![0, d]));
        v.push((
            format!("{p}.mlp.shared_expert.down_proj.weight"),
            vec![d, 0],
        ));
        v.push((format!("{p}.mlp.shared_expert_gate.weight"), vec![1, d]));
    }
    v
}

/// All parameters of a model with this config, in a fixed order (the order of checkpoints,
/// optimizer state and `grad.*` outputs).
pub fn param_specs(cfg: &ModelConfig) -> Vec<ParamSpec> {
    let d = cfg.hidden_size;
    let f = cfg.intermediate_size;
    let mut v = vec![ParamSpec::new(
        "model.embed_tokens.weight".into(),
        &[cfg.vocab_size, d],
    )];
    for l in 0..cfg.num_layers {
        let p = layer_prefix(l);
        v.push(ParamSpec::new(format!("{p}.input_layernorm.weight"), &[d]));
        let shape = |proj: &str| match proj {
            "k_proj" | "v_proj" => [cfg.kv_dim(), d],
            "o_proj" => [d, cfg.q_dim()],
            _ => [cfg.q_dim(), d],
        };
        match &cfg.attn_experts {
            None => {
                for proj in ATTN_PROJS {
                    v.push(ParamSpec::new(attn_name(l, None, proj), &shape(proj)));
                }
                // Qwen2's biases, then Qwen3's per-head norms (ModelConfig::validate keeps
                // both away from attention experts).
                if cfg.qkv_bias {
                    for proj in ["q_proj", "k_proj", "v_proj"] {
                        v.push(ParamSpec::new(attn_bias_name(l, proj), &[shape(proj)[0]]));
                    }
                }
                if cfg.qk_norm {
                    for which in ["q_norm", "k_norm"] {
                        v.push(ParamSpec::new(qk_norm_name(l, which), &[cfg.head_dim]));
                    }
                }
            }
            // The router, the shared K/V (if any), then each expert's own projections.
            Some(a) => {
                v.push(ParamSpec::new(attn_router_name(l), &[a.num_experts, d]));
                if a.shared_kv {
                    for proj in ["k_proj", "v_proj"] {
                        v.push(ParamSpec::new(attn_name(l, None, proj), &shape(proj)));
                    }
                }
                for e in 0..a.num_experts {
                    for proj in ATTN_PROJS {
                        if a.shared_kv && matches!(proj, "k_proj" | "v_proj") {
                            continue;
                        }
                        v.push(ParamSpec::new(attn_name(l, Some(e), proj), &shape(proj)));
                    }
                }
            }
        }
        v.push(ParamSpec::new(
            format!("{p}.post_attention_layernorm.weight"),
            &[d],
        ));
        match &cfg.moe {
            None => push_ffn(&mut v, l, None, d, f),
            Some(m) => {
                v.push(ParamSpec::new(router_name(l), &[m.num_experts, d]));
                for e in 0..m.num_experts {
                    push_ffn(&mut v, l, Some(e), d, f);
                }
            }
        }
    }
    v.push(ParamSpec::new("model.norm.weight".into(), &[d]));
    if !cfg.tie_word_embeddings {
        v.push(ParamSpec::new(
            "lm_head.weight".into(),
            &[cfg.vocab_size, d],
        ));
    }
    v
}

fn push_ffn(v: &mut Vec<ParamSpec>, l: usize, e: Option<usize>, d: usize, f: usize) {
    v.push(ParamSpec::new(ffn_name(l, e, 1), &[f, d]));
    v.push(ParamSpec::new(ffn_name(l, e, 2), &[d, f]));
    v.push(ParamSpec::new(ffn_name(l, e, 3), &[f, d]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(
            param_kind("model.layers.3.mlp.up_proj.weight"),
            ParamKind::Ffn {
                layer: 3,
                expert: None
            }
        );
        assert_eq!(
            param_kind("model.layers.1.block_sparse_moe.experts.2.w3.weight"),
            ParamKind::Ffn {
                layer: 1,
                expert: Some(2)
            }
        );
        assert_eq!(
            param_kind("model.layers.0.block_sparse_moe.gate.weight"),
            ParamKind::Router { layer: 0 }
        );
        assert_eq!(
            param_kind("model.layers.0.self_attn.q_proj.weight"),
            ParamKind::Shared
        );
        assert_eq!(param_kind("lm_head.weight"), ParamKind::Shared);
        assert_eq!(
            param_kind("model.layers.2.self_attn.experts.1.o_proj.weight"),
            ParamKind::AttnExpert {
                layer: 2,
                expert: 1,
                proj: "o_proj"
            }
        );
        assert_eq!(
            param_kind("model.layers.2.self_attn.router.weight"),
            ParamKind::AttnRouter { layer: 2 }
        );
        // Shared keys/values of the shared-KV variant are averaged like any dense weight.
        assert_eq!(
            param_kind("model.layers.2.self_attn.k_proj.weight"),
            ParamKind::Shared
        );
    }
}
