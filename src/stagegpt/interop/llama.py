"""Stage 9 as a Hugging Face Llama (`LlamaForCausalLM`), and back.

Stage 9 is Llama module for module; only the names and the fused q/k/v differ:

    stagegpt stage 9                       Hugging Face LlamaForCausalLM
    wte.weight                             model.embed_tokens.weight
    h.{i}.ln_1.weight                      model.layers.{i}.input_layernorm.weight
    h.{i}.attn.c_attn.weight (rows q|k|v)  model.layers.{i}.self_attn.{q,k,v}_proj.weight
    h.{i}.attn.c_proj.weight               model.layers.{i}.self_attn.o_proj.weight
    h.{i}.ln_2.weight                      model.layers.{i}.post_attention_layernorm.weight
    h.{i}.mlp.c_gate / c_fc / c_proj       model.layers.{i}.mlp.gate_proj / up_proj / down_proj
    ln_f.weight                            model.norm.weight
    lm_head.weight                         lm_head.weight (absent from ours when tied)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from stagegpt.errors import StagegptError
from stagegpt.model import ModelConfig
from stagegpt.model.stages import RMS_EPS, LanguageModel, Llama
from stagegpt.train.checkpoints import unique_weights

RENAME = {"ln_1": "input_layernorm", "attn.c_proj": "self_attn.o_proj",
          "ln_2": "post_attention_layernorm", "mlp.c_gate": "mlp.gate_proj",
          "mlp.c_fc": "mlp.up_proj", "mlp.c_proj": "mlp.down_proj"}


def llama_config(config: ModelConfig) -> dict[str, Any]:
    """The config.json of a LlamaForCausalLM with stage 9's shape and `config`."""
    return {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "vocab_size": config.vocab_size, "hidden_size": config.n_embd,
        "intermediate_size": config.mlp_hidden or round(8 * config.n_embd / 3),
        "num_hidden_layers": config.n_layer, "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head or config.n_head,
        "max_position_embeddings": config.block_size, "rope_theta": config.rope_theta,
        "rms_norm_eps": RMS_EPS, "hidden_act": "silu", "attention_bias": False,
        "mlp_bias": False, "tie_word_embeddings": config.tie_head,
        "attention_dropout": config.dropout, "bos_token_id": None, "eos_token_id": None,
    }


def weights_to_llama(model: LanguageModel) -> dict[str, Tensor]:
    """Stage 9's weights under LlamaForCausalLM's names (c_attn split into q, k, v)."""
    if model.stage != Llama.stage:
        raise StagegptError(f"only stage 9 has Llama's architecture; this model is stage "
                            f"{model.stage}", "model")
    c = model.config
    kv = (c.n_kv_head or c.n_head) * (c.n_embd // c.n_head)
    out = {}
    for name, tensor in unique_weights(model).items():
        tensor = tensor.detach().cpu()
        if name == "wte.weight":
            out["model.embed_tokens.weight"] = tensor
        elif name == "ln_f.weight":
            out["model.norm.weight"] = tensor
        elif name == "lm_head.weight":
            out["lm_head.weight"] = tensor
        elif name.endswith("attn.c_attn.weight"):
            prefix = "model.layers." + name.split(".")[1] + ".self_attn."
            q, k, v = tensor.split([c.n_embd, kv, kv])
            out.update({prefix + "q_proj.weight": q, prefix + "k_proj.weight": k,
                        prefix + "v_proj.weight": v})
        else:
            _, layer, rest = name.split(".", 2)
            part = rest.removesuffix(".weight")
            out[f"model.layers.{layer}.{RENAME[part]}.weight"] = tensor
    return {k: v.contiguous() for k, v in out.items()}


def weights_from_llama(weights: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """LlamaForCausalLM's weights under stage 9's names: the inverse of weights_to_llama."""
    back = {value: key for key, value in RENAME.items()}
    out = {}
    for name, tensor in weights.items():
        if name == "model.embed_tokens.weight":
            out["wte.weight"] = tensor
        elif name == "model.norm.weight":
            out["ln_f.weight"] = tensor
        elif name == "lm_head.weight":
            if not config.tie_head:
                out["lm_head.weight"] = tensor
        elif ".self_attn." in name and name.endswith(("q_proj.weight", "k_proj.weight",
                                                     "v_proj.weight")):
            continue  # joined below
        else:
            _, _, layer, rest = name.split(".", 3)
            out[f"h.{layer}.{back[rest.removesuffix('.weight')]}.weight"] = tensor
    for i in range(config.n_layer):
        prefix = f"model.layers.{i}.self_attn."
        out[f"h.{i}.attn.c_attn.weight"] = torch.cat(
            [weights[prefix + p + "_proj.weight"] for p in "qkv"])
    return out
