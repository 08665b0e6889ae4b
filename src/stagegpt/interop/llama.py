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

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from stagegpt.errors import StagegptError
from stagegpt.fileio import check_replaceable, read_json
from stagegpt.interop.gpt2 import model_config_from, read_hf_weights, write_hf_dir
from stagegpt.model import ModelConfig
from stagegpt.model.stages import RMS_EPS, LanguageModel, Llama
from stagegpt.train.checkpoints import (
    CONFIG_FILE,
    empty_model,
    load_weights_into,
    unique_weights,
)

# Llama config switches that change the computation, with the value stage 9 computes.
FIXED = {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
         "rms_norm_eps": RMS_EPS, "rope_scaling": None, "pretraining_tp": 1}
# What transformers' LlamaConfig takes when a key is absent: an absent key is this value
# (an absent or null num_key_value_heads is num_attention_heads: one per query head).
LLAMA_DEFAULTS = {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
                  "rms_norm_eps": 1e-6, "rope_scaling": None, "pretraining_tp": 1,
                  "rope_theta": 10_000.0, "vocab_size": 32_000, "hidden_size": 4096,
                  "intermediate_size": 11_008, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "max_position_embeddings": 2048,
                  "tie_word_embeddings": False, "attention_dropout": 0.0}
# ModelConfig's fields under their LlamaConfig names
LLAMA_KEYS = {"vocab_size": "vocab_size", "block_size": "max_position_embeddings",
              "n_embd": "hidden_size", "n_layer": "num_hidden_layers",
              "n_head": "num_attention_heads", "n_kv_head": "num_key_value_heads",
              "mlp_hidden": "intermediate_size", "tie_head": "tie_word_embeddings",
              "dropout": "attention_dropout"}
# Buffers older Llama files store that hold nothing learned (recomputed from the config).
UNLEARNED = ("self_attn.rotary_emb.inv_freq",)

RENAME = {"ln_1": "input_layernorm", "attn.c_proj": "self_attn.o_proj",
          "ln_2": "post_attention_layernorm", "mlp.c_gate": "mlp.gate_proj",
          "mlp.c_fc": "mlp.up_proj", "mlp.c_proj": "mlp.down_proj"}


def llama_config(config: ModelConfig) -> dict[str, Any]:
    """The config.json of a LlamaForCausalLM with stage 9's shape and `config`."""
    return {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "vocab_size": config.vocab_size, "hidden_size": config.n_embd,
        "intermediate_size": config.swiglu_hidden(),
        "num_hidden_layers": config.n_layer, "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads(),
        "max_position_embeddings": config.block_size, "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
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
    kv = c.kv_heads() * (c.n_embd // c.n_head)
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
        if name.endswith(UNLEARNED):
            continue
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


def config_from_llama(hf: Any, source: Path) -> ModelConfig:
    """Map a LlamaConfig dict onto ModelConfig, refusing variants stage 9 does not compute."""
    if not isinstance(hf, dict) or hf.get("model_type") != "llama":
        raise StagegptError(f"{source} is not a Hugging Face Llama config")
    for key, value in FIXED.items():
        given = hf.get(key, LLAMA_DEFAULTS[key])
        if given != value:
            said = f"{key} = {given!r:.40}" if key in hf else f"{key} is unset (so {given!r})"
            raise StagegptError(f"{source}: {said} but stage 9 computes {value!r}; this "
                                "Llama variant cannot load into stage 9")
    given = {key: hf.get(key, LLAMA_DEFAULTS.get(key)) for key in LLAMA_KEYS.values()}
    heads = given["num_attention_heads"]
    config = model_config_from(
        source, {k: v for k, v in LLAMA_KEYS.items() if k != v},
        vocab_size=given["vocab_size"], block_size=given["max_position_embeddings"],
        n_embd=given["hidden_size"], n_layer=given["num_hidden_layers"], n_head=heads,
        n_kv_head=heads if given["num_key_value_heads"] is None else given["num_key_value_heads"],
        rope_theta=rope_theta(hf, source), mlp_hidden=given["intermediate_size"], bias=False,
        tie_head=given["tie_word_embeddings"], dropout=given["attention_dropout"] or 0.0)
    if hf.get("head_dim") not in (None, config.n_embd // config.n_head):
        raise StagegptError(f"{source}: head_dim = {hf['head_dim']!r:.40} is not hidden_size / "
                            "num_attention_heads; stage 9 cannot load it")
    return config


def rope_theta(hf: dict, source: Path) -> Any:
    """The rotary base of a Llama config: transformers 5 keeps it in `rope_parameters`
    (with the rope type), older files at the top level. Scaled rotary types are refused."""
    rope = hf.get("rope_parameters")
    if rope is None:
        return hf.get("rope_theta", LLAMA_DEFAULTS["rope_theta"])
    if not isinstance(rope, dict):
        raise StagegptError(f"{source}: rope_parameters must be an object, got "
                            f"{type(rope).__name__}")
    if rope.get("rope_type", "default") != "default":
        raise StagegptError(f"{source}: rope_type = {rope.get('rope_type')!r:.40} (scaled "
                            "rotary positions) but stage 9 computes 'default'; this Llama "
                            "variant cannot load into stage 9")
    theta = rope.get("rope_theta", hf.get("rope_theta", LLAMA_DEFAULTS["rope_theta"]))
    if "rope_theta" in hf and hf["rope_theta"] != theta:
        raise StagegptError(f"{source}: rope_theta = {hf['rope_theta']!r:.40} but "
                            f"rope_parameters says {theta!r:.40}; make them agree")
    return theta


def save_llama_dir(directory: str | Path, model: LanguageModel, overwrite: bool = False) -> Path:
    """Write `model` (stage 9) as a Hugging Face Llama dir in one atomic step (an existing
    `directory` is replaced only with `overwrite=True`)."""
    check_replaceable(directory, overwrite)
    weights = weights_to_llama(model)  # refuses every stage but 9
    return write_hf_dir(directory, llama_config(model.config), weights)


def load_llama_model(directory: str | Path) -> Llama:
    """A Hugging Face Llama dir as a stage 9 model (on the CPU, in eval mode)."""
    directory = Path(directory)
    config = config_from_llama(read_json(directory / CONFIG_FILE, "Hugging Face config"),
                               directory / CONFIG_FILE)
    hf_weights, source = read_hf_weights(directory)
    model = empty_model(Llama.stage, config)  # every value comes from the file
    try:
        weights = weights_from_llama(hf_weights, config)
    except (KeyError, ValueError, RuntimeError) as err:
        raise StagegptError(f"{source} is not a complete LlamaForCausalLM of its config.json "
                            f"({type(err).__name__}: {str(err)[:60]})") from None
    load_weights_into(model, weights, source)
    return model.eval()
