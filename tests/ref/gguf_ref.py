#!/usr/bin/env python3
"""Reference GGUF fixtures for tests/test_gguf.c, produced with gguf-py (pinned in
tests/ref/requirements.txt).

  gguf_ref.py --out DIR             writes DIR/gguf/ (small GGUF files written by GGUFWriter,
                                    gguf-py's dequantised values, gguf-py's quantisation of
                                    fixed inputs, metadata as gguf-py's GGUFReader sees it, and
                                    samples of the real model's tensors if it is present)
  gguf_ref.py --check-written FILE  reads a GGUF written by taper's writer test (test_gguf.c,
                                    gguf_writer_roundtrip, with TAPER_GGUF_WRITTEN=FILE) with
                                    gguf-py and checks metadata, layout and tensor bytes
                                    against the content that test defines; exit 1 on mismatch.

Text formats (one record per line, space separated):
  tensors.txt      GGUF TENSOR TYPE_ID N_DIMS NE0 NE1 NE2 NE3 N_ELEM F32_FILE
  *_meta.txt       H VERSION N_TENSORS N_KV ALIGNMENT DATA_OFFSET
                   S KEY VTYPE VALUE                  (scalar)
                   A KEY ELEM_VTYPE N K IDX VALUE ... (array: K listed elements)
                   VALUE: integers in decimal, floats as float.hex(), bools 0/1,
                   strings as hex of their UTF-8 bytes ("-" when empty)
  model_tensors.txt NAME TYPE_ID N_DIMS NE0 NE1 NE2 NE3 N_ELEM STRIDE SUM_HEX SUMSQ_HEX
                   (NAME.head.f32: first min(1024, N) values; NAME.strided.f32: values at
                   i*STRIDE for i < min(4096, N); sums in float64 over all values)
All .f32/.bin files are raw little-endian.
"""
import argparse
import os
import sys

import numpy as np
import gguf
from gguf import GGUFValueType as VT, GGMLQuantizationType as QT

SEED = 1234
MODEL_DEFAULT = os.path.join(os.environ.get("TAPER_CACHE", os.path.expanduser("~/.cache/taper")),
                             "SmolLM2-135M-Instruct.Q4_1.gguf")

# ---------------------------------------------------------------- metadata of types.gguf
# test_gguf.c checks several of these with literal values as well.
SCALARS = [
    ("t.u8", VT.UINT8, 200),
    ("t.i8", VT.INT8, -100),
    ("t.u16", VT.UINT16, 60000),
    ("t.i16", VT.INT16, -30000),
    ("t.u32", VT.UINT32, 4000000000),
    ("t.i32", VT.INT32, -2000000000),
    ("t.f32", VT.FLOAT32, 0.1),
    ("t.bool_true", VT.BOOL, True),
    ("t.bool_false", VT.BOOL, False),
    ("t.str", VT.STRING, "h\u00e9llo w\u00f6rld \u2713"),
    ("t.str_empty", VT.STRING, ""),
    ("t.u64", VT.UINT64, 18446744073709551615),
    ("t.i64", VT.INT64, -9223372036854775808),
    ("t.f64", VT.FLOAT64, -2.718281828459045),
]
ARRAYS = [
    ("a.u8", VT.UINT8, [0, 1, 255]),
    ("a.i8", VT.INT8, [-128, 0, 127]),
    ("a.u16", VT.UINT16, [0, 65535]),
    ("a.i16", VT.INT16, [-32768, 32767]),
    ("a.u32", VT.UINT32, [0, 4294967295, 7]),
    ("a.i32", VT.INT32, [-2147483648, 2147483647, -1]),
    ("a.f32", VT.FLOAT32, [1.5, -0.0, 3.4028234663852886e38, 1e-45]),
    ("a.bool", VT.BOOL, [True, False, True]),
    ("a.str", VT.STRING, ["a", "", "\u00fcn\u00efcode", "with space"]),
    ("a.u64", VT.UINT64, [0, 18446744073709551615]),
    ("a.i64", VT.INT64, [-9223372036854775808, 9223372036854775807]),
    ("a.f64", VT.FLOAT64, [0.5, -1e300, 5e-324]),
]

# byte offsets of the fp16 scale fields inside one block, as gguf-py's dequantize_blocks
# splits them (Q2_K: scales|qs|d|dmin, Q3_K: hmask|qs|scales|d, Q4_K/Q5_K: d|dmin|...,
# Q6_K: ql|qh|scales|d)
K_SCALE_FIELDS = {QT.Q2_K: [80, 82], QT.Q3_K: [108], QT.Q4_K: [0, 2], QT.Q5_K: [0, 2],
                  QT.Q6_K: [208], QT.Q4_0: [0], QT.Q4_1: [0, 2], QT.Q5_0: [0], QT.Q5_1: [0, 2],
                  QT.Q8_0: [0]}


def random_blocks(rng, qtype, n_blocks):
    """Random block bytes whose fp16 scale fields hold sane values (|d| in [1e-3, 0.5]);
    one block gets the smallest fp16 subnormal as its first scale."""
    _, tsize = gguf.GGML_QUANT_SIZES[qtype]
    b = rng.integers(0, 256, size=(n_blocks, tsize), dtype=np.uint8)
    for off in K_SCALE_FIELDS[qtype]:
        d = (rng.uniform(1e-3, 0.5, n_blocks) * rng.choice([-1, 1], n_blocks)).astype(np.float16)
        b[:, off:off + 2] = d.view(np.uint8).reshape(n_blocks, 2)
    first = K_SCALE_FIELDS[qtype][0]
    b[n_blocks // 2, first:first + 2] = np.array([1], dtype=np.uint16).view(np.uint8)
    return b


def q8_k_blocks(rng, n_blocks):
    """Q8_K: float32 d, int8 qs[256], int16 bsums[16] (sums of 16 qs each)."""
    d = rng.uniform(1e-3, 0.1, n_blocks).astype(np.float32) * rng.choice([-1, 1], n_blocks).astype(np.float32)
    qs = rng.integers(-128, 128, size=(n_blocks, 256), dtype=np.int8)
    bsums = qs.astype(np.int16).reshape(n_blocks, 16, 16).sum(axis=2).astype(np.int16)
    b = np.concatenate([d.reshape(-1, 1).view(np.uint8), qs.view(np.uint8), bsums.view(np.uint8)], axis=1)
    # gguf-py 0.19 has no Q8_K dequantiser: the reference is d * q computed here in float32
    ref = (d.reshape(-1, 1) * qs.astype(np.float32)).astype(np.float32)
    return b, ref


def fp_specials(dtype):
    v = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 65504.0, 1e-7, -3e-8]
    return np.array(v, dtype=dtype)


def build_types_tensors(rng):
    """(name, numpy array in numpy order or raw bytes, raw_dtype or None, expected override)"""
    out = []
    f32 = rng.standard_normal((3, 2, 5, 4)).astype(np.float32)
    f32.reshape(-1)[:10] = fp_specials(np.float32)
    f32.reshape(-1)[10] = np.float32(1e-40)           # fp32 subnormal
    out.append(("f32_4d", f32, None))
    f16 = (rng.standard_normal((3, 40)) * 4).astype(np.float16)
    f16.reshape(-1)[:10] = fp_specials(np.float16)
    f16.reshape(-1)[10] = np.float16(6e-8)              # fp16 subnormal
    out.append(("f16_2d", f16, None))
    bf = rng.standard_normal(96).astype(np.float32) * 3
    bf[:10] = fp_specials(np.float32)
    out.append(("bf16_1d", gguf.quants.quantize(bf, QT.BF16), QT.BF16))
    for name, qt, shape in [("q4_0", QT.Q4_0, (4, 64)), ("q4_1", QT.Q4_1, (4, 64)),
                            ("q5_0", QT.Q5_0, (3, 96)), ("q5_1", QT.Q5_1, (3, 96)),
                            ("q8_0_3d", QT.Q8_0, (2, 2, 64))]:
        x = (rng.standard_normal(shape) * rng.uniform(0.01, 3)).astype(np.float32)
        x.reshape(-1)[:32] = 0.0                          # an all-zero block (d = 0)
        out.append((name, gguf.quants.quantize(x, qt), qt))
    for name, qt, rows in [("q4_0_raw", QT.Q4_0, 3), ("q4_1_raw", QT.Q4_1, 3), ("q5_0_raw", QT.Q5_0, 3),
                           ("q5_1_raw", QT.Q5_1, 3), ("q8_0_raw", QT.Q8_0, 3)]:
        out.append((name, random_blocks(rng, qt, rows * 4).reshape(rows, -1), qt))
    for name, qt, rows, cols in [("q2_k", QT.Q2_K, 2, 512), ("q3_k", QT.Q3_K, 2, 512),
                                 ("q4_k", QT.Q4_K, 3, 256), ("q5_k", QT.Q5_K, 2, 512),
                                 ("q6_k", QT.Q6_K, 3, 256)]:
        nb = rows * cols // 256
        out.append((name, random_blocks(rng, qt, nb).reshape(rows, -1), qt))
    return out


def write_gguf(path, kvs, tensors, alignment=None):
    w = gguf.GGUFWriter(path, arch="taper-test")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, vt, val in kvs:
        if isinstance(val, list):
            w.add_key_value(key, val, VT.ARRAY, sub_type=vt)
        elif vt == VT.STRING:
            w.add_key_value(key, val, vt)   # add_string() silently drops empty strings
        else:
            w.add_key_value(key, val, vt)
    for name, arr, qt in tensors:
        if qt is None:
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, arr, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def fmt_val(vt, v):
    if vt == VT.STRING:
        b = v if isinstance(v, (bytes, bytearray)) else bytes(v)
        return b.hex() if b else "-"
    if vt in (VT.FLOAT32, VT.FLOAT64):
        return float(v).hex()
    if vt == VT.BOOL:
        return "1" if v else "0"
    return str(int(v))


def meta_lines(reader, max_list=64):
    """Every kv as gguf-py's reader decodes it."""
    lines = ["H %d %d %d %d %d" % (int(reader.fields["GGUF.version"].parts[0][0]), len(reader.tensors),
                                   int(reader.fields["GGUF.kv_count"].parts[0][0]), int(reader.alignment),
                                   int(reader.data_offset))]
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        vt = f.types[0]
        if vt == VT.ARRAY:
            et = f.types[-1]
            n = len(f.data)
            idx = list(range(n)) if n <= max_list else sorted(set([0, 1, n // 2, n - 1]))
            vals = []
            for i in idx:
                part = f.parts[f.data[i]]
                vals.append("%d %s" % (i, fmt_val(et, bytes(part) if et == VT.STRING else part[0])))
            lines.append("A %s %d %d %d %s" % (key, int(et), n, len(idx), " ".join(vals)))
        elif vt == VT.STRING:
            lines.append("S %s %d %s" % (key, int(vt), fmt_val(vt, bytes(f.parts[-1]))))
        else:
            lines.append("S %s %d %s" % (key, int(vt), fmt_val(vt, f.parts[-1][0])))
    return lines


def dequant(t):
    if t.tensor_type == QT.Q8_K:
        raise ValueError("no gguf-py Q8_K dequantiser")
    return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(-1)


def tensor_line(gname, t, fname):
    ne = [int(x) for x in t.shape] + [1] * (4 - len(t.shape))
    return "%s %s %d %d %d %d %d %d %d %s" % (gname, t.name, int(t.tensor_type), len(t.shape), *ne,
                                             int(t.n_elements), fname)


def make_fixtures(out):
    np.seterr(over="ignore")   # the 1e30 inputs overflow fp16 on purpose
    d = os.path.join(out, "gguf")
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(SEED)
    manifest = []

    # 1. every metadata type and every tensor type gguf-py can write
    tensors = build_types_tensors(rng)
    q8k_bytes, q8k_ref = q8_k_blocks(rng, 2)
    tensors.append(("q8_k", q8k_bytes, QT.Q8_K))
    write_gguf(os.path.join(d, "types.gguf"), SCALARS + ARRAYS, tensors)
    r = gguf.GGUFReader(os.path.join(d, "types.gguf"))
    for t in r.tensors:
        fname = "types.%s.f32" % t.name
        vals = q8k_ref.reshape(-1) if t.name == "q8_k" else dequant(t)
        assert vals.size == t.n_elements
        if t.tensor_type not in (QT.F32, QT.F16, QT.BF16):
            assert np.all(np.isfinite(vals)) and np.abs(vals).max() < 1e4, t.name   # scales were placed right
        vals.astype("<f4").tofile(os.path.join(d, fname))
        manifest.append(tensor_line("types.gguf", t, fname))
    with open(os.path.join(d, "types_meta.txt"), "w") as f:
        f.write("\n".join(meta_lines(r)) + "\n")

    # 2. non-default alignment, odd tensor sizes
    x7 = rng.standard_normal(7).astype(np.float32)
    x3 = rng.standard_normal(3).astype(np.float16)
    xq = gguf.quants.quantize(rng.standard_normal(64).astype(np.float32), QT.Q8_0)
    write_gguf(os.path.join(d, "align64.gguf"), [("t.note", VT.STRING, "aligned to 64")],
               [("odd_f32", x7, None), ("odd_f16", x3, None), ("q8", xq, QT.Q8_0)], alignment=64)
    r = gguf.GGUFReader(os.path.join(d, "align64.gguf"))
    assert r.alignment == 64
    for t in r.tensors:
        fname = "align64.%s.f32" % t.name
        dequant(t).astype("<f4").tofile(os.path.join(d, fname))
        manifest.append(tensor_line("align64.gguf", t, fname))
    with open(os.path.join(d, "align64_meta.txt"), "w") as f:
        f.write("\n".join(meta_lines(r)) + "\n")
    with open(os.path.join(d, "tensors.txt"), "w") as f:
        f.write("\n".join(manifest) + "\n")

    # 3. quantisation of fixed inputs: qin (finite, 32 blocks) -> Q8_0/F16/BF16;
    #    specials -> F16/BF16
    blocks = []
    for b in range(32):
        scale = [1.0, 1e-3, 50.0, 1e-30, 1e30, 0.0][b % 6]
        blocks.append(rng.standard_normal(32) * scale)
    qin = np.concatenate(blocks).astype(np.float32)
    qin[32 * 7: 32 * 8] = np.arange(32, dtype=np.float32) - 15.5   # x*id lands on .5: away from zero
    qin[32 * 8] = 127.0; qin[32 * 8 + 1: 32 * 8 + 6] = [2.5, -3.5, 0.5, -0.5, 126.5]
    qin[32 * 9: 32 * 10] = -np.abs(qin[32 * 9: 32 * 10])        # max |x| is negative
    qin.astype("<f4").tofile(os.path.join(d, "qin.f32"))
    gguf.quants.quantize(qin, QT.Q8_0).tofile(os.path.join(d, "qin.q8_0"))
    gguf.quants.quantize(qin, QT.F16).astype("<f2").tofile(os.path.join(d, "qin.f16"))
    gguf.quants.quantize(qin, QT.BF16).tofile(os.path.join(d, "qin.bf16"))
    sp = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 65504.0, 65519.996, 65520.0, 1e6,
                   3.4028234663852886e38, 6.1035156e-05, 6.0975552e-05, 5.9604645e-08, 2.9802322e-08,
                   2.9802326e-08, 8.940697e-08, 1e-40, -1e-40, 1.00048828125, 1.0009765625,
                   1.00146484375, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 1.0 + 2 ** -8 + 2 ** -20,
                   -2.0000002, 3.1415927, 1e-20], dtype=np.float32)
    sp = np.concatenate([sp, np.zeros(32 - sp.size % 32, dtype=np.float32)])
    sp.astype("<f4").tofile(os.path.join(d, "sin.f32"))
    gguf.quants.quantize(sp, QT.F16).astype("<f2").tofile(os.path.join(d, "sin.f16"))
    gguf.quants.quantize(sp, QT.BF16).tofile(os.path.join(d, "sin.bf16"))

    # 4. the real model, if present: metadata and samples of a few tensors
    model = os.environ.get("TAPER_MODEL") or MODEL_DEFAULT
    if not os.path.exists(model):
        print("gguf_ref: %s not found; model fixtures not (re)written" % model, file=sys.stderr)
        return
    r = gguf.GGUFReader(model)
    with open(os.path.join(d, "model_meta.txt"), "w") as f:
        f.write("\n".join(meta_lines(r, max_list=8)) + "\n")
    lines = []
    want = ["token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight",
            "blk.0.attn_norm.weight", "output_norm.weight"]
    by_name = {t.name: t for t in r.tensors}
    for name in want:
        t = by_name[name]
        v = dequant(t)
        n = v.size
        stride = max(1, n // 4096)
        v[:1024].astype("<f4").tofile(os.path.join(d, "model.%s.head.f32" % name))
        v[::stride][:4096].astype("<f4").tofile(os.path.join(d, "model.%s.strided.f32" % name))
        v64 = v.astype(np.float64)
        ne = [int(x) for x in t.shape] + [1] * (4 - len(t.shape))
        lines.append("%s %d %d %d %d %d %d %d %d %s %s" % (name, int(t.tensor_type), len(t.shape), *ne, n,
                                                         stride, float(v64.sum()).hex(),
                                                         float((v64 * v64).sum()).hex()))
    with open(os.path.join(d, "model_tensors.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


# ---------------------------------------------------------------- --check-written
# The content test_gguf.c's gguf_writer_roundtrip writes (keep the two in step).

def rt_value(k, n):
    """float32 ((i*7919 + k*131) % 2001 - 1000) / 64 * ((i / 32) % 3 + 1): exact in float32."""
    i = np.arange(n, dtype=np.int64)
    return (((i * 7919 + k * 131) % 2001 - 1000).astype(np.float32) / np.float32(64)
            * ((i // 32) % 3 + 1).astype(np.float32)).astype(np.float32)


RT_TENSORS = [  # name, ggml ne, type
    ("rt.f32", [8, 3], QT.F32),
    ("rt.f16", [16, 2, 2], QT.F16),
    ("rt.bf16", [5], QT.BF16),
    ("rt.q8_0", [64, 3], QT.Q8_0),
    ("rt.raw_q4_1", [32, 2], QT.Q4_1),
]
RT_SCALARS = [
    ("general.architecture", VT.STRING, "taper-rt".encode()),
    ("rt.u8", VT.UINT8, 250), ("rt.i8", VT.INT8, -7), ("rt.u16", VT.UINT16, 65000),
    ("rt.i16", VT.INT16, -32000), ("rt.u32", VT.UINT32, 3000000000), ("rt.i32", VT.INT32, -123456),
    ("rt.f32", VT.FLOAT32, float(np.float32(0.1))), ("rt.bool", VT.BOOL, True),
    ("rt.str", VT.STRING, "taper \u2713".encode()), ("rt.u64", VT.UINT64, 2 ** 64 - 2),
    ("rt.i64", VT.INT64, -2 ** 62), ("rt.f64", VT.FLOAT64, 1.0 / 3.0),
    ("rt.replaced", VT.STRING, b"second"),
]
RT_ARRAYS = [
    ("rt.arr_u8", VT.UINT8, [1, 2, 255]), ("rt.arr_i8", VT.INT8, [-128, 5]),
    ("rt.arr_u16", VT.UINT16, [65535, 0]), ("rt.arr_i16", VT.INT16, [-32768, 32767]),
    ("rt.arr_u32", VT.UINT32, [4294967295, 1]), ("rt.arr_i32", VT.INT32, [-1, 0, 2147483647]),
    ("rt.arr_f32", VT.FLOAT32, [0.5, -2.25]), ("rt.arr_bool", VT.BOOL, [True, False]),
    ("rt.arr_str", VT.STRING, [b"alpha", b"", "\u03b3\u03ac\u03bc\u03bc\u03b1".encode()]),
    ("rt.arr_u64", VT.UINT64, [2 ** 64 - 1, 0]), ("rt.arr_i64", VT.INT64, [-2 ** 63, 2 ** 63 - 1]),
    ("rt.arr_f64", VT.FLOAT64, [1e300, -5e-324]),
]


def check_written(path):
    errors = []

    def check(cond, msg):
        if not cond:
            errors.append(msg)

    r = gguf.GGUFReader(path)
    check(int(r.fields["GGUF.version"].parts[0][0]) == 3, "version is not 3")
    keys = [k for k in r.fields if not k.startswith("GGUF.")]
    want_keys = [k for k, _, _ in RT_SCALARS] + [k for k, _, _ in RT_ARRAYS]
    check(sorted(keys) == sorted(want_keys), "keys differ: %s vs %s" % (keys, want_keys))
    # rt.replaced was first set as uint32 then replaced: it keeps its first position
    check(keys.index("rt.replaced") == 1, "rt.replaced moved to position %d" % keys.index("rt.replaced"))
    for key, vt, val in RT_SCALARS:
        f = r.fields.get(key)
        if f is None:
            continue
        check(f.types == [vt], "%s: type %s, expected %s" % (key, f.types, vt.name))
        got = bytes(f.parts[-1]) if vt == VT.STRING else f.parts[-1][0].item()
        check(got == val, "%s: %r, expected %r" % (key, got, val))
    for key, et, vals in RT_ARRAYS:
        f = r.fields.get(key)
        if f is None:
            continue
        check(f.types == [VT.ARRAY, et], "%s: types %s" % (key, f.types))
        got = [bytes(f.parts[i]) if et == VT.STRING else f.parts[i][0].item() for i in f.data]
        check(got == vals, "%s: %r, expected %r" % (key, got, vals))
    check(r.alignment == 32 and r.data_offset % 32 == 0, "data offset %d not aligned" % r.data_offset)
    check(len(r.tensors) == len(RT_TENSORS), "%d tensors" % len(r.tensors))
    for k, ((name, ne, qt), t) in enumerate(zip(RT_TENSORS, r.tensors)):
        check(t.name == name, "tensor %d is %s, expected %s" % (k, t.name, name))
        check([int(x) for x in t.shape] == ne, "%s: shape %s, expected %s" % (name, list(t.shape), ne))
        check(t.tensor_type == qt, "%s: type %s, expected %s" % (name, t.tensor_type.name, qt.name))
        check((t.data_offset - r.data_offset) % 32 == 0, "%s: offset not aligned" % name)
        got = np.asarray(t.data).view(np.uint8).reshape(-1).tobytes()
        n = int(np.prod(ne))
        x = rt_value(k, n)
        if qt == QT.F32:
            want = x.astype("<f4").tobytes()
        elif qt == QT.F16:
            want = x.astype("<f2").tobytes()
        elif qt == QT.Q4_1:   # passed through as raw bytes: byte j = (j * 37 + 11) % 256
            want = bytes((j * 37 + 11) % 256 for j in range(n // 32 * 20))
        else:
            want = gguf.quants.quantize(x, qt).tobytes()
        check(got == want, "%s: stored bytes differ from the expected %s bytes (gguf-py's quantisation of the same input, or the raw pattern)" % (name, qt.name))
    if errors:
        for e in errors:
            print("check-written: " + e, file=sys.stderr)
        return 1
    print("check-written: %s ok (%d keys, %d tensors)" % (path, len(keys), len(r.tensors)))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write fixtures into OUT/gguf/")
    ap.add_argument("--check-written", metavar="FILE", help="verify a taper-written GGUF")
    a = ap.parse_args()
    if not a.out and not a.check_written:
        ap.error("give --out DIR and/or --check-written FILE")
    rc = 0
    if a.out:
        make_fixtures(a.out)
    if a.check_written:
        rc = check_written(a.check_written)
    return rc


if __name__ == "__main__":
    sys.exit(main())
