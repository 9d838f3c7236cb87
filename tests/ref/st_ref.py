#!/usr/bin/env python3
"""Reference files for taper's safetensors reader/writer and config.json parser/writer.

  st_ref.py --out DIR            writes DIR/st/ (fixtures; committed as tests/fixtures/st/)
  st_ref.py --check-written DIR  checks what taper's C tests wrote under DIR
                                 ($TAPER_EXPORT_DIR/st when the C suite runs with it set)

Everything here comes from the `safetensors` library and transformers (versions pinned in
tests/ref/requirements.txt), never from taper, so the C tests compare against an independent
implementation.

--out DIR writes:
  st/basic.safetensors            safetensors.torch.save_file: F32, F16, BF16 (with subnormals,
                                  +-inf, NaN, -0, max), I64, BOOL, a scalar, an empty tensor,
                                  and __metadata__
  st/sharded/                     a tiny bf16 LlamaForCausalLM saved by save_pretrained with
                                  max_shard_size, i.e. model.safetensors.index.json + 2 shards
  st/<set>.expected.json          {"metadata": {...}, "tensors": [{"name", "dtype", "shape",
                                  "f32_offset"}]}; f32_offset (in floats) into the next file,
                                  null when the dtype does not convert to fp32
  st/<set>.expected.f32           expected fp32 values, raw little-endian, concatenated
  st/config/<case>/config.json    written by transformers' LlamaConfig / MistralConfig /
                                  Qwen2Config.save_pretrained, or by hand in the 4.x layout
  st/config/<case>/expected.json  the values transformers' AutoConfig reads back, named after
                                  tp_config's fields, plus n_params counted on a meta-device
                                  AutoModelForCausalLM

--check-written DIR reads (written by tests/test_safetensors.c and tests/test_config.c):
  DIR/st/written.safetensors, written.inputs.json, written.inputs.f32
      loads the file with safetensors, checks metadata, names, dtypes, shapes, header order,
      padding and alignment, and each value against torch's own rounding of the fp32 input
  DIR/config/<case>/config.json + expected.json
      AutoConfig must read the values the C side meant, and the meta-device model must have
      n_params parameters
  DIR/model/<case>/ config.json + model.safetensors (+ expected.json)
      AutoModelForCausalLM.from_pretrained must load it with no missing, unexpected or
      mismatched weights, and every parameter must equal the file's tensor
"""
import argparse
import json
import os
import shutil
import struct
import sys
import tempfile

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM,
                          MistralConfig, Qwen2Config)

ARCH = {"llama": 0, "mistral": 1, "qwen2": 2}
ROPE = {"default": 0, "llama3": 1, "linear": 2}
DTYPE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
         torch.bool: "BOOL"}
CONVERTIBLE = ("F32", "F16", "BF16")


# ---------------------------------------------------------------------------------------------
# safetensors fixtures

def special_f32():
    v = [1.0, -2.5, 3.4028234663852886e38, -3.4028234663852886e38, 1.401298464324817e-45,
         -1.401298464324817e-45, 1.1754943508222875e-38, 0.0, -0.0, float("inf"), float("-inf"),
         float("nan"), 1.0 / 3.0, 1e-20, 123456.789]
    return torch.tensor(v, dtype=torch.float32).reshape(3, 5)


def special_f16():
    v = [0.0, -0.0, 2.0 ** -24, -(2.0 ** -24), 2.0 ** -14 - 2.0 ** -24, 2.0 ** -14, 65504.0,
         -65504.0, float("inf"), float("-inf"), float("nan"), 1.0 / 3.0, -1.5, 0.1]
    return torch.tensor(v, dtype=torch.float32).to(torch.float16)


def special_bf16():
    v = [0.0, -0.0, 9.183549615799121e-41, -9.183549615799121e-41, 1.1754943508222875e-38,
         3.3895313892515355e38, -3.3895313892515355e38, float("inf"), float("-inf"),
         float("nan"), 1.0 / 3.0, -7.5]
    return torch.tensor(v, dtype=torch.float32).to(torch.bfloat16)


def write_expected(prefix, tensors, metadata):
    """tensors: list of (name, torch tensor) in the order to list them."""
    entries, chunks, off = [], [], 0
    for name, t in tensors:
        dt = DTYPE[t.dtype]
        e = {"name": name, "dtype": dt, "shape": list(t.shape), "f32_offset": None}
        if dt in CONVERTIBLE:
            a = t.to(torch.float32).contiguous().numpy().astype("<f4").ravel()
            e["f32_offset"] = off
            off += a.size
            chunks.append(a.tobytes())
        entries.append(e)
    with open(prefix + ".expected.json", "w") as f:
        json.dump({"metadata": metadata, "tensors": entries}, f, indent=1)
    with open(prefix + ".expected.f32", "wb") as f:
        f.write(b"".join(chunks))


def make_basic(st_dir):
    g = torch.Generator().manual_seed(1)
    tensors = [
        ("f32_special", special_f32()),
        ("f16_special", special_f16()),
        ("bf16_special", special_bf16()),
        ("f16_normal", torch.randn(2, 3, 4, generator=g).to(torch.float16)),
        ("bf16_normal", torch.randn(5, 3, generator=g).to(torch.bfloat16)),
        ("f32_scalar", torch.tensor(42.5, dtype=torch.float32)),
        ("f32_empty", torch.zeros(0, 4, dtype=torch.float32)),
        ("i64_ids", torch.tensor([1, -2, 2 ** 40, 7], dtype=torch.int64)),
        ("bool_mask", torch.tensor([True, False, True])),
        ("model.layers.0.self_attn.q_proj.weight", torch.randn(4, 6, generator=g)),
    ]
    metadata = {"format": "pt", "source": "taper tests/ref/st_ref.py"}
    save_file(dict(tensors), os.path.join(st_dir, "basic.safetensors"), metadata=metadata)
    # expected tensors are listed in safe_open's order (sorted by name)
    with safe_open(os.path.join(st_dir, "basic.safetensors"), framework="pt") as f:
        order = list(f.keys())
        got = {k: f.get_tensor(k) for k in order}
    for name, t in tensors:  # the file must hold exactly what was given
        same = bits_equal(got[name], t) if t.is_floating_point() else torch.equal(got[name], t)
        assert same, name
    write_expected(os.path.join(st_dir, "basic"), [(k, got[k]) for k in order], metadata)


def make_sharded(st_dir):
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False, rms_norm_eps=1e-5)
    torch.manual_seed(2)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # norms are ones at init; make them informative
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
    model = model.to(torch.bfloat16)
    out = os.path.join(st_dir, "sharded")
    tmp = tempfile.mkdtemp()
    model.save_pretrained(tmp, max_shard_size="8KB")
    os.makedirs(out, exist_ok=True)
    for fn in sorted(os.listdir(tmp)):
        if fn.endswith(".safetensors") or fn.endswith(".index.json") or fn == "config.json":
            shutil.copy(os.path.join(tmp, fn), os.path.join(out, fn))
    shutil.rmtree(tmp)
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        wm = json.load(f)["weight_map"]
    assert len(set(wm.values())) >= 2, "expected a sharded save"
    tensors = []
    for name in sorted(wm):
        with safe_open(os.path.join(out, wm[name]), framework="pt") as f:
            tensors.append((name, f.get_tensor(name)))
    write_expected(os.path.join(st_dir, "sharded"), tensors, None)


# ---------------------------------------------------------------------------------------------
# config fixtures

def expected_from_config(cfg):
    """tp_config's fields as transformers understands the config, plus the parameter count."""
    rp = cfg.rope_parameters
    rt = rp.get("rope_type", "default")
    e = {
        "arch": ARCH[cfg.model_type],
        "n_layers": cfg.num_hidden_layers,
        "d_model": cfg.hidden_size,
        "n_heads": cfg.num_attention_heads,
        "n_kv_heads": cfg.num_key_value_heads,
        "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
        "d_ff": cfg.intermediate_size,
        "vocab": cfg.vocab_size,
        "max_pos": cfg.max_position_embeddings,
        "rope_theta": float(rp["rope_theta"]),
        "norm_eps": float(cfg.rms_norm_eps),
        "rope_scaling": ROPE[rt],
        "rope_factor": float(rp["factor"]) if rt != "default" else 0.0,  # unused -> 0
        "rope_low_freq": float(rp["low_freq_factor"]) if rt == "llama3" else 0.0,
        "rope_high_freq": float(rp["high_freq_factor"]) if rt == "llama3" else 0.0,
        "rope_orig_max_pos": int(rp["original_max_position_embeddings"]) if rt == "llama3" else 0,
        "tie_embeddings": int(bool(cfg.tie_word_embeddings)),
        "attn_bias": 1 if cfg.model_type == "qwen2" else int(bool(getattr(cfg, "attention_bias", False))),
    }
    for key, field in (("bos_token_id", "bos_id"), ("eos_token_id", "eos_id")):
        v = getattr(cfg, key, None)
        if isinstance(v, (list, tuple)):
            v = v[0] if v else None
        e[field] = -1 if v is None else int(v)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    e["n_params"] = sum(p.numel() for p in model.parameters())  # shared (tied) counted once
    e["class"] = type(model).__name__
    return e


CONFIG_CASES = {
    # SmolLM2-135M shape: tied embeddings, GQA 9/3, head_dim 64
    "llama_smollm2": lambda: LlamaConfig(
        architectures=["LlamaForCausalLM"], vocab_size=49152, hidden_size=576,
        intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2),
    # Llama 3.2 1B shape: llama3 RoPE scaling, explicit head_dim, eos list
    "llama32_llama3_rope": lambda: LlamaConfig(
        architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=2048,
        intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
        tie_word_embeddings=True, bos_token_id=128000, eos_token_id=[128001, 128008, 128009]),
    # linear RoPE, head_dim that differs from hidden/heads, untied
    "llama_linear_headdim": lambda: LlamaConfig(
        architectures=["LlamaForCausalLM"], vocab_size=1000, hidden_size=128,
        intermediate_size=344, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        head_dim=48, max_position_embeddings=4096,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
        rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0),
    # Mistral 7B v0.3 shape: no sliding window, GQA 32/8
    "mistral_v03": lambda: MistralConfig(
        architectures=["MistralForCausalLM"], vocab_size=32768, hidden_size=4096,
        intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
        rope_theta=1000000.0, rms_norm_eps=1e-5, sliding_window=None, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2),
    # Qwen2.5 0.5B shape: biases, tied, window configured but not used
    "qwen25_05b": lambda: Qwen2Config(
        architectures=["Qwen2ForCausalLM"], vocab_size=151936, hidden_size=896,
        intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False,
        sliding_window=32768, max_window_layers=21, bos_token_id=151643, eos_token_id=151645),
    # small Qwen2 with no bos/eos (null in the file)
    "qwen2_small_nulls": lambda: Qwen2Config(
        architectures=["Qwen2ForCausalLM"], vocab_size=512, hidden_size=64, intermediate_size=160,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        max_position_embeddings=1024, tie_word_embeddings=False),
}

# Layouts transformers 4.x wrote (top-level rope_theta, rope_scaling, torch_dtype); not produced
# by a 5.24 Config class, so written by hand and read back through AutoConfig for the expectation.
LEGACY_CASES = {
    "legacy_llama31_8b": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False,
        "attention_dropout": 0.0, "bos_token_id": 128000, "eos_token_id": 128001,
        "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
        "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": False,
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.43.0.dev0", "use_cache": True, "vocab_size": 128256},
    "legacy_linear_type_key": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
        "intermediate_size": 688, "num_hidden_layers": 2, "num_attention_heads": 8,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-06, "vocab_size": 3000,
        "rope_scaling": {"type": "linear", "factor": 4.0}, "bos_token_id": 1, "eos_token_id": 2,
        "torch_dtype": "float16", "transformers_version": "4.31.0"},
}


def make_configs(st_dir):
    root = os.path.join(st_dir, "config")
    for name, make in CONFIG_CASES.items():
        d = os.path.join(root, name)
        os.makedirs(d, exist_ok=True)
        make().save_pretrained(d)
        for extra in os.listdir(d):
            if extra not in ("config.json",):
                os.remove(os.path.join(d, extra))
    for name, cfg in LEGACY_CASES.items():
        d = os.path.join(root, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        e = expected_from_config(AutoConfig.from_pretrained(d))
        with open(os.path.join(d, "expected.json"), "w") as f:
            json.dump(e, f, indent=1)


# ---------------------------------------------------------------------------------------------
# --check-written

class Checker:
    def __init__(self):
        self.n_ok = 0
        self.fails = []

    def check(self, cond, msg):
        if cond:
            self.n_ok += 1
        else:
            self.fails.append(msg)
            print("FAIL:", msg, file=sys.stderr)


def bits_equal(a, b):
    """Bitwise equality of two tensors of one dtype, NaNs matching any NaN."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.numel() == 0:
        return True
    nan = torch.isnan(a.float())
    if not torch.equal(nan, torch.isnan(b.float())):
        return False
    ia = a.contiguous().view(torch.int16 if a.element_size() == 2 else torch.int32)
    ib = b.contiguous().view(torch.int16 if b.element_size() == 2 else torch.int32)
    return torch.equal(ia[~nan], ib[~nan])


def check_written_st(ck, d):
    path = os.path.join(d, "written.safetensors")
    with open(os.path.join(d, "written.inputs.json")) as f:
        spec = json.load(f)
    inputs = np.fromfile(os.path.join(d, "written.inputs.f32"), dtype="<f4")
    tdt = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}

    raw = open(path, "rb").read()
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + hlen].decode("utf-8"), object_pairs_hook=lambda kv: kv)
    ck.check(hlen % 8 == 0, f"{path}: header length {hlen} is not a multiple of 8")
    ck.check(raw[8:8 + hlen].rstrip(b" ").endswith(b"}"), f"{path}: header padding is not spaces")
    names = [k for k, _ in header if k != "__metadata__"]
    ck.check(names == [t["name"] for t in spec["tensors"]],
             f"{path}: header order {names} != order added")
    for k, v in header:
        if k == "__metadata__":
            continue
        v = dict(v)
        esz = 4 if v["dtype"] == "F32" else 2
        ck.check(v["data_offsets"][0] % esz == 0, f"{path}: {k} starts unaligned")

    with safe_open(path, framework="pt") as f:
        ck.check(f.metadata() == spec["metadata"],
                 f"{path}: metadata {f.metadata()} != {spec['metadata']}")
        ck.check(sorted(f.keys()) == sorted(t["name"] for t in spec["tensors"]),
                 f"{path}: names {sorted(f.keys())}")
        for t in spec["tensors"]:
            name = t["name"]
            if name not in f.keys():
                continue
            got = f.get_tensor(name)
            n = int(np.prod(t["shape"])) if t["shape"] else 1
            src = torch.from_numpy(inputs[t["offset"]:t["offset"] + n].copy()).reshape(t["shape"])
            want = src.to(tdt[t["dtype"]])  # torch's own round-to-nearest-even
            ck.check(got.dtype == want.dtype, f"{path}: {name}: dtype {got.dtype} != {want.dtype}")
            ck.check(list(got.shape) == t["shape"], f"{path}: {name}: shape {list(got.shape)}")
            ck.check(bits_equal(got, want), f"{path}: {name}: values differ from torch's rounding")


def check_written_config(ck, d):
    with open(os.path.join(d, "expected.json")) as f:
        want = json.load(f)
    with open(os.path.join(d, "config.json")) as f:
        text = json.load(f)
    cfg = AutoConfig.from_pretrained(d)
    got = expected_from_config(cfg)
    for k, v in want.items():
        if k in ("class",):
            continue
        g = got.get(k)
        if isinstance(v, float) or isinstance(g, float):
            same = np.float32(g) == np.float32(v)
        else:
            same = g == v
        ck.check(same, f"{d}: {k}: transformers reads {g!r}, taper meant {v!r}")
    ck.check(got["class"] == text["architectures"][0],
             f"{d}: AutoModelForCausalLM builds {got['class']}, architectures says "
             f"{text['architectures'][0]}")


def check_written_model(ck, d):
    model, info = AutoModelForCausalLM.from_pretrained(d, output_loading_info=True,
                                                       dtype=torch.float32)
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        ck.check(not info.get(k), f"{d}: {k}: {info.get(k)}")
    params = dict(model.named_parameters(remove_duplicate=False))
    with safe_open(os.path.join(d, "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
        for name in keys:
            ck.check(name in params and torch.equal(params[name].detach(), f.get_tensor(name).float()),
                     f"{d}: parameter {name} differs from the file")
    if model.config.tie_word_embeddings:
        ck.check(model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(),
                 f"{d}: lm_head is not tied")
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    ck.check(bool(torch.isfinite(logits).all()), f"{d}: forward gives non-finite logits")


def guarded(ck, fn, d):
    """Runs one check; an exception (transformers refusing the files) is a failure."""
    try:
        fn(ck, d)
    except Exception as e:  # noqa: BLE001 - any refusal counts
        msg = str(e).strip().splitlines()
        ck.check(False, f"{d}: {type(e).__name__}: {msg[-1] if msg else ''}")


def check_written(root):
    ck = Checker()
    st_dir = os.path.join(root, "st")
    if os.path.exists(os.path.join(st_dir, "written.safetensors")):
        guarded(ck, check_written_st, st_dir)
    else:
        ck.check(False, f"{st_dir}/written.safetensors is missing")
    cdir = os.path.join(root, "config")
    cases = sorted(os.listdir(cdir)) if os.path.isdir(cdir) else []
    ck.check(len(cases) > 0, f"no configs under {cdir}")
    for name in cases:
        guarded(ck, check_written_config, os.path.join(cdir, name))
    mdir = os.path.join(root, "model")
    models = sorted(os.listdir(mdir)) if os.path.isdir(mdir) else []
    ck.check(len(models) > 0, f"no models under {mdir}")
    for name in models:
        guarded(ck, check_written_model, os.path.join(mdir, name))
    print(f"st_ref --check-written {root}: {ck.n_ok} checks ok, {len(ck.fails)} failed "
          f"({len(cases)} configs, {len(models)} models)")
    return 1 if ck.fails else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--out", help="write fixtures to OUT/st/")
    g.add_argument("--check-written", metavar="DIR", help="check files taper wrote under DIR")
    a = ap.parse_args()
    if a.check_written:
        sys.exit(check_written(a.check_written))
    st_dir = os.path.join(a.out, "st")
    if os.path.isdir(st_dir):
        shutil.rmtree(st_dir)
    os.makedirs(st_dir)
    torch.manual_seed(0)
    make_basic(st_dir)
    make_sharded(st_dir)
    make_configs(st_dir)
    print(f"wrote {st_dir}")


if __name__ == "__main__":
    main()
