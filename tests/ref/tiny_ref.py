"""Tiny random Llama-family and Gemma 3 models saved by transformers (safetensors + config.json)
and their logits, for the architecture paths the default model does not exercise: llama3 RoPE
scaling with positions past original_max_position_embeddings, linear RoPE scaling, Qwen2 q/k/v
biases, Mistral (with and without its sliding window), Qwen3 (per-head q/k norms, a sliding
window on its upper layers), Gemma 3 (GeGLU, (1 + w) and sandwich norms, scaled embeddings,
query_pre_attn_scalar, interleaved sliding / full layers with two RoPE bases and linear scaling
on the full ones), untied and tied embeddings, GQA. Writes OUT/tiny/<name>/ (an HF folder) and
OUT/tiny/<name>.logits.f32 (logits of ids 0..T-1 mod vocab, float32 LE) + OUT/tiny/index.json."""
import argparse
import json
import os

import torch
from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

T = 96
COMMON = dict(vocab_size=97, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5)
MODELS = {
    "llama3": (LlamaConfig, LlamaForCausalLM, dict(
        rope_theta=500000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 32})),
    "llama_linear": (LlamaConfig, LlamaForCausalLM, dict(
        rope_theta=10000.0, tie_word_embeddings=True, head_dim=12,
        rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(rope_theta=1000000.0, tie_word_embeddings=True)),
    "mistral": (MistralConfig, MistralForCausalLM, dict(rope_theta=10000.0, tie_word_embeddings=False,
                                                         sliding_window=None)),
    # positions 0..95 against a window of 24: most queries lose keys
    "mistral_window": (MistralConfig, MistralForCausalLM, dict(rope_theta=10000.0, tie_word_embeddings=False,
                                                                sliding_window=24)),
    # explicit head_dim 12 (4 * 12 != 32), q/k norms; layer 1 of 2 slides (window 20)
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(
        rope_theta=1000000.0, tie_word_embeddings=False, head_dim=12, use_sliding_window=True, sliding_window=20,
        max_window_layers=1)),
    # three layers: sliding, full, sliding; window 20; scores scaled by 24^-1/2 (not head_dim 16);
    # full layers: base 1e6 with linear scaling 2, sliding layers: base 10000
    "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM, dict(
        num_hidden_layers=3, head_dim=16, query_pre_attn_scalar=24, sliding_window=20, tie_word_embeddings=True,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    out = os.path.join(a.out, "tiny")
    os.makedirs(out, exist_ok=True)
    index = {"T": T, "models": []}
    for name, (cfg_cls, model_cls, extra) in MODELS.items():
        torch.manual_seed(len(name))
        cfg = cfg_cls(**{**COMMON, **extra}, attn_implementation="eager")
        m = model_cls(cfg).eval()
        with torch.no_grad():
            for p in m.parameters():  # larger than the default init so every op matters
                p.normal_(0, 0.3)
            ids = torch.arange(T)[None] * 7 % cfg.vocab_size
            logits = m(ids).logits[0].float()
        m.save_pretrained(os.path.join(out, name), safe_serialization=True)
        logits.numpy().astype("<f4").tofile(os.path.join(out, name + ".logits.f32"))
        index["models"].append({"name": name, "vocab": cfg.vocab_size})
        print(f"tiny_ref: {name}: {sum(p.numel() for p in m.parameters())} params")
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(index, f)


if __name__ == "__main__":
    main()
