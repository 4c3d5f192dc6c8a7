"""Multi-head attention (attention_forward, attention_backward) over packed sequences with
lengths, causal and window bounds, dense masks, fused strided q/k/v and dropout, against one
float64 NumPy reference (forward and backward), PyTorch (SDPA, nn.MultiheadAttention, float64
autograd) and one thread; bad bounds and shapes."""
import math
import os
import subprocess
import sys
import zlib
from typing import NamedTuple, Optional

import numpy as np
import pytest

from _shared import (THREAD_ATOL, THREAD_RTOL, TORCH_ATOL, TORCH_RTOL, assert_close, assert_grad_close,
                      bad_input_params, check_bad_input, f32, i32, make_rng, one_blas_thread, requires_torch,
                      t64, zeros)
from cyformer._engine import attention, linear

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - torch is a test dependency
    torch = None


# --------------------------------------------------------------------------------------
# cases: the forward scenarios (gaps between sequences, fused views) and the backward cases
# --------------------------------------------------------------------------------------

# q: query lengths; k: key lengths (absent = self-attention over the same rows).
ATTN_SCENARIOS = {
    "self_lengths": dict(q=[5, 1, 13], H=3, dk=7),
    "self_causal": dict(q=[6, 17, 3], H=2, dk=5, causal=True),
    "self_window": dict(q=[9, 4, 12], H=2, dk=6, window=2),
    "self_causal_window": dict(q=[11, 7], H=4, dk=3, causal=True, window=3),
    "window0": dict(q=[5, 8], H=1, dk=9, window=0),
    "cross": dict(q=[4, 9, 1], k=[11, 3, 6], H=3, dk=5),
    "cross_causal_prefix": dict(q=[3, 5], k=[10, 8], H=2, dk=6, causal=True),
    "cross_causal_q_gt_k": dict(q=[6, 4], k=[3, 4], H=2, dk=4, causal=True),
    "decode_causal": dict(q=[1, 1, 1], k=[1, 7, 20], H=4, dk=6, causal=True),
    "decode_causal_window": dict(q=[1, 1], k=[9, 30], H=2, dk=5, causal=True, window=4),
    "cross_window": dict(q=[5, 2], k=[12, 9], H=2, dk=3, window=1),
    "long_full": dict(q=[70, 3], H=2, dk=5),
    "long_causal": dict(q=[45, 33], H=1, dk=12, causal=True),
    "long_cross_window": dict(q=[40], k=[75], H=2, dk=3, window=10),
    "mask_broadcast": dict(q=[7, 5, 9], H=2, dk=5, mask="bcast"),
    "mask_per_batch": dict(q=[4, 6], k=[8, 5], H=3, dk=4, mask="batch"),
    "mask_2d": dict(q=[5, 5], H=2, dk=3, mask="2d"),
    "mask_causal": dict(q=[10, 6], H=2, dk=5, causal=True, mask="batch"),
    "mask_window": dict(q=[9, 12], H=1, dk=6, window=2, mask="bcast"),
    "mask_oversize": dict(q=[3, 6], k=[7, 2], H=2, dk=5, mask="oversize"),
    "mask_uint8": dict(q=[6, 8], H=2, dk=5, mask="uint8"),
    "mask_long": dict(q=[70], H=1, dk=5, mask="batch"),
    "empty_sequences": dict(q=[0, 4, 3], k=[5, 0, 3], H=2, dk=5),
    "custom_scale": dict(q=[6, 3], H=3, dk=4, scale=0.3),
    "dk1": dict(q=[4, 7], H=5, dk=1),
    "single_head": dict(q=[9], H=1, dk=24, causal=True),
    # head widths the AVX-512 row body takes (multiples of 16 up to 128): decoding's one query
    # against 1-47 keys (one block of 16, a tail, several blocks), short rows, masks, windows
    "decode_dk64": dict(q=[1, 1, 1, 1], k=[1, 15, 16, 33], H=2, dk=64, causal=True),
    "cross_dk16_mask": dict(q=[3, 2], k=[17, 40], H=2, dk=16, mask="batch"),
    "short_dk32": dict(q=[4, 2], k=[9, 16], H=3, dk=32),
    "decode_dk128_window": dict(q=[1, 1], k=[20, 47], H=1, dk=128, causal=True, window=5),
    "decode_dk48": dict(q=[1, 1, 1], k=[2, 31, 18], H=2, dk=48),
}


def _pack(lengths, gap):
    starts, pos = [], 0
    for length in lengths:
        starts.append(pos)
        pos += length + gap
    return np.array(starts, np.int32), pos


def make_attention_case(name, fused, seed_extra=()):
    """Packed q/k/v (gaps between sequences), NaN-filled out, bounds and optional mask."""
    sc = ATTN_SCENARIOS[name]
    rng = make_rng("attn", name, fused, *seed_extra)
    H, dk = sc["H"], sc["dk"]
    d = H * dk
    self_attn = "k" not in sc
    q_len = np.array(sc["q"], np.int32)
    k_len = np.array(sc.get("k", sc["q"]), np.int32)
    q_start, nq = _pack(q_len, 1)
    if self_attn:
        k_start, nk = q_start.copy(), nq
    else:
        k_start, nk = _pack(k_len, 2)
    if fused and self_attn:
        buf = f32(rng.standard_normal((nq, 3 * d)))
        q, k, v = buf[:, :d], buf[:, d:2 * d], buf[:, 2 * d:]
    elif fused:
        q = f32(rng.standard_normal((nq, d + 3)))[:, 2:2 + d]
        kv = f32(rng.standard_normal((nk, 2 * d)))
        k, v = kv[:, :d], kv[:, d:]
    else:
        q = f32(rng.standard_normal((nq, d)))
        k = f32(rng.standard_normal((nk, d)))
        v = f32(rng.standard_normal((nk, d)))
    q *= np.float32(1.5)  # peakier softmax (in place: fused views stay strided)
    obuf = np.full((nq, d + 3 if fused else d), np.nan, np.float32)
    out = obuf[:, 2:2 + d] if fused else obuf
    B = len(q_len)
    Tq, Tk = max(int(q_len.max()), 1), max(int(k_len.max()), 1)
    mask = None
    kind = sc.get("mask")
    if kind is not None:
        if kind == "bcast":
            mask = rng.random((1, Tq, Tk)) < 0.7
        elif kind in ("batch", "uint8"):
            mask = rng.random((B, Tq, Tk)) < 0.7
        elif kind == "2d":
            mask = rng.random((Tq, Tk)) < 0.7
        elif kind == "oversize":
            mask = rng.random((B, Tq + 3, Tk + 5)) < 0.7
        mask[..., 0, :] = False  # a fully masked query row
        if kind == "uint8":
            mask = mask.astype(np.uint8) * np.uint8(7)  # any nonzero value means "attend"
    return dict(q=q, k=k, v=v, out=out, obuf=obuf, q_start=q_start, q_len=q_len,
                k_start=k_start, k_len=k_len, H=H, dk=dk, d=d,
                scale=sc.get("scale", -1.0), causal=sc.get("causal", False),
                window=sc.get("window", -1), mask=mask, Tq=Tq, Tk=Tk)


def _packed(lengths):
    """(starts, lengths) of sequences packed back to back."""
    return _pack(lengths, 0)[0], np.asarray(lengths, np.int32)


# The backward cases: sequences packed back to back, the default scale.
ATTN_CASES = {
    "padding": dict(ql=[5, 40, 1], kl=[7, 35, 2], causal=False, window=-1, mask=False),
    "causal": dict(ql=[5, 70, 1], kl=[5, 70, 1], causal=True, window=-1, mask=False),
    "window": dict(ql=[9, 45], kl=[9, 45], causal=False, window=3, mask=False),
    "causal_window": dict(ql=[9, 45], kl=[9, 45], causal=True, window=4, mask=False),
    "dense_mask": dict(ql=[6, 33], kl=[8, 30], causal=False, window=-1, mask=True),
    "empty_keys": dict(ql=[4, 3], kl=[0, 5], causal=False, window=-1, mask=False),
}


def _attention_case(name, H=3, dk_=4):
    """q, k, v, dout, bounds, H, causal, window and mask of one backward case."""
    case = ATTN_CASES[name]
    rng = make_rng("attn-bw", name)
    qs, ql = _packed(case["ql"])
    ks, kl = _packed(case["kl"])
    d = H * dk_
    q, k, v = (f32(rng.standard_normal((int(n), d))) for n in (ql.sum(), kl.sum(), kl.sum()))
    dout = f32(rng.standard_normal(q.shape))
    mask = (rng.random((len(ql), max(ql), max(kl))) > 0.3) if case["mask"] else None
    if mask is not None:
        mask[0, 1] = False  # one query that sees nothing
    return q, k, v, dout, qs, ql, ks, kl, H, case["causal"], case["window"], mask


# --------------------------------------------------------------------------------------
# the reference: forward and backward
# --------------------------------------------------------------------------------------

def allowed(lq, lk, causal, window, mask, b):
    """[lq, lk] bool: which keys query i may attend (position i + lk - lq)."""
    pos = np.arange(lq)[:, None] + (lk - lq)
    j = np.arange(lk)[None, :]
    ok = np.ones((lq, lk), bool)
    if causal:
        ok &= j <= pos
    if window >= 0:
        ok &= np.abs(pos - j) <= window
    if mask is not None:
        m = np.asarray(mask)
        if m.ndim == 2:
            m = m[None]
        ok &= m[0 if m.shape[0] == 1 else b, :lq, :lk] != 0
    return ok


class AttentionRef(NamedTuple):
    out: np.ndarray               # [Nq, d]; NaN in rows no sequence writes
    probs: Optional[np.ndarray]   # probs_shape, zeros where no probability is written
    dq: Optional[np.ndarray]      # given dout; zero in rows no sequence reads
    dk: Optional[np.ndarray]
    dv: Optional[np.ndarray]


def ref_attention(q, k, v, q_start, q_len, k_start, k_len, H, scale=-1.0, causal=False, window=-1,
                  mask=None, dout=None, probs_shape=None):
    """float64 forward and, given ``dout``, the hand-written backward, sequence by sequence,
    head by head: the one attention reference of the forward and the backward tests."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    dh = q.shape[1] // H
    scale = scale if scale >= 0 else 1.0 / math.sqrt(dh)
    out = np.full(q.shape, np.nan)
    probs = None if probs_shape is None else np.zeros(probs_shape)
    grads = dout is not None
    dq, dk, dv = (np.zeros(a.shape) for a in (q, k, v)) if grads else (None, None, None)
    for b in range(len(q_len)):
        qs, lq, ks, lk = int(q_start[b]), int(q_len[b]), int(k_start[b]), int(k_len[b])
        ok = allowed(lq, lk, causal, window, mask, b)
        live = ok.any(axis=1)
        for h in range(H):
            cols = slice(h * dh, (h + 1) * dh)
            Q, K, V = q[qs:qs + lq, cols], k[ks:ks + lk, cols], v[ks:ks + lk, cols]
            s = np.where(ok, Q @ K.T * scale, -np.inf)
            p = np.zeros((lq, lk))
            if live.any():
                sl = s[live]
                e = np.exp(sl - sl.max(axis=1, keepdims=True))
                p[live] = e / e.sum(axis=1, keepdims=True)
            out[qs:qs + lq, cols] = p @ V
            if probs is not None:
                probs[b, h, :lq, :lk] = p
            if grads:
                dO = dout[qs:qs + lq, cols].astype(np.float64)
                dP = dO @ V.T
                dS = p * (dP - (p * dP).sum(axis=1, keepdims=True))
                dq[qs:qs + lq, cols] = dS @ K * scale
                dk[ks:ks + lk, cols] = dS.T @ Q * scale
                dv[ks:ks + lk, cols] = p.T @ dO
    return AttentionRef(out, probs, dq, dk, dv)


def ref_case(c, **kw):
    """ref_attention of a make_attention_case case."""
    return ref_attention(c["q"], c["k"], c["v"], c["q_start"], c["q_len"], c["k_start"], c["k_len"], c["H"],
                         scale=c["scale"], causal=c["causal"], window=c["window"], mask=c["mask"], **kw)


# --------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------

def run_attention(c, probs=None, n_threads=1, out=None):
    attention.attention_forward(c["q"], c["k"], c["v"], c["out"] if out is None else out,
                                c["q_start"], c["q_len"], c["k_start"], c["k_len"], c["H"],
                                scale=c["scale"], causal=c["causal"], window=c["window"],
                                mask=c["mask"], probs=probs, n_threads=n_threads)


@pytest.mark.parametrize("fused", [False, True], ids=["separate", "fused_strided"])
@pytest.mark.parametrize("name", list(ATTN_SCENARIOS))
def test_attention_matches_numpy(name, fused):
    c = make_attention_case(name, fused)
    B = len(c["q_len"])
    # probs may be larger than needed; the caller provides zeros.
    probs = np.zeros((B, c["H"], c["Tq"] + 1, c["Tk"] + 2), np.float32)
    want_out, want_probs, *_ = ref_case(c, probs_shape=probs.shape)
    run_attention(c, probs=probs)
    # Rows of no sequence stay NaN (untouched); fully masked rows are zeros, not stale.
    assert_close(c["out"], want_out)
    assert_close(probs, want_probs)
    if fused:  # columns of the wider output buffer outside the view are untouched
        assert np.isnan(c["obuf"][:, :2]).all() and np.isnan(c["obuf"][:, 2 + c["d"]:]).all()
    # Asking for probs does not change the output beyond rounding: without probs, inference
    # takes the tiled kernels (online softmax, another summation order), with them the rows.
    out2 = np.full(c["out"].shape, np.nan, np.float32)
    run_attention(c, out=out2)
    assert_close(out2, c["out"])
    if not attention._tile_config()[5] or attention.tile_kernels() == "sgemm":
        np.testing.assert_array_equal(out2, c["out"])


def test_attention_fully_masked_rows_are_zero():
    rng = make_rng("attn-masked")
    q = f32(rng.standard_normal((6, 8)))
    kv = f32(rng.standard_normal((4, 8)))
    out = np.full((6, 8), np.nan, np.float32)
    mask = np.zeros((1, 6, 4), bool)
    mask[0, 2:4, 1] = True
    probs = np.zeros((1, 2, 6, 4), np.float32)
    attention.attention_forward(q, kv, kv, out, i32(0), i32(6), i32(0), i32(4), 2,
                                mask=mask, probs=probs)
    for i in (0, 1, 4, 5):
        np.testing.assert_array_equal(out[i], 0.0)
        np.testing.assert_array_equal(probs[0, :, i], 0.0)
    # A row that sees exactly one key copies that key's value row.
    assert_close(out[2], kv[1])
    np.testing.assert_array_equal(probs[0, :, 2:4, 1], 1.0)
    # Causal with more queries than keys: queries at negative positions see nothing.
    out = np.full((6, 8), np.nan, np.float32)
    attention.attention_forward(q, kv, kv, out, i32(0), i32(6), i32(0), i32(4), 2, causal=True)
    np.testing.assert_array_equal(out[:2], 0.0)
    assert_close(out[2], kv[0])


@pytest.mark.parametrize("name", ["self_causal", "long_full", "mask_causal", "cross_window",
                                  "decode_causal"])
def test_attention_threads_agree(name):
    c = make_attention_case(name, True, seed_extra=("threads",))
    B = len(c["q_len"])
    results = []
    with one_blas_thread():
        for nt in (1, 2, 3):
            out = np.full(c["out"].shape, np.nan, np.float32)
            probs = np.zeros((B, c["H"], c["Tq"], c["Tk"]), np.float32)
            run_attention(c, probs=probs, n_threads=nt, out=out)
            results.append((out, probs))
    for out, probs in results[1:]:
        np.testing.assert_allclose(out, results[0][0], rtol=THREAD_RTOL, atol=THREAD_ATOL)
        np.testing.assert_allclose(probs, results[0][1], rtol=THREAD_RTOL, atol=THREAD_ATOL)


@requires_torch
@pytest.mark.parametrize("name", list(ATTN_SCENARIOS))
def test_attention_matches_torch_sdpa(name):
    c = make_attention_case(name, False, seed_extra=("sdpa",))
    run_attention(c)
    H, dk = c["H"], c["dk"]
    scale = c["scale"] if c["scale"] >= 0 else None
    for b in range(len(c["q_len"])):
        qs, lq, ks, lk = (int(c[n][b]) for n in ("q_start", "q_len", "k_start", "k_len"))
        ok = allowed(lq, lk, c["causal"], c["window"], c["mask"], b)
        live = ok.any(axis=1)  # SDPA gives NaN for rows that see nothing
        if lq == 0 or not live.any():
            continue

        def heads(a, s, n):
            return torch.from_numpy(np.ascontiguousarray(a[s:s + n])).view(n, H, dk).transpose(0, 1)[None]

        want = F.scaled_dot_product_attention(
            heads(c["q"], qs, lq), heads(c["k"], ks, lk), heads(c["v"], ks, lk),
            attn_mask=torch.from_numpy(ok), scale=scale)
        want = want[0].transpose(0, 1).reshape(lq, H * dk).numpy()
        np.testing.assert_allclose(c["out"][qs:qs + lq][live], want[live],
                                   rtol=TORCH_RTOL, atol=TORCH_ATOL)


def _pad(packed, starts, lengths, T):
    outp = np.zeros((len(starts), T, packed.shape[1]), np.float32)
    for b, (s, n) in enumerate(zip(starts, lengths)):
        outp[b, :n] = packed[s:s + n]
    return outp


@requires_torch
@pytest.mark.parametrize("mode", ["self", "self_causal", "cross"])
def test_attention_matches_torch_multihead_attention(mode):
    E, H = 30, 5  # d_k = 6
    torch.manual_seed(zlib.crc32(mode.encode()))
    rng = make_rng("mha", mode)
    mha = torch.nn.MultiheadAttention(E, H, batch_first=True).eval()
    with torch.no_grad():  # non-zero biases
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    w_in = mha.in_proj_weight.detach().numpy()
    b_in = mha.in_proj_bias.detach().numpy()
    w_out = mha.out_proj.weight.detach().numpy()
    b_out = mha.out_proj.bias.detach().numpy()
    q_len = i32(5, 9, 2)
    k_len = q_len if mode != "cross" else i32(7, 3, 11)
    q_start, nq = _pack(q_len, 2)
    k_start, nk = _pack(k_len, 1) if mode == "cross" else (q_start, nq)
    x = f32(rng.standard_normal((nq, E)))
    causal = mode == "self_causal"
    if mode == "cross":
        mem = f32(rng.standard_normal((nk, E)))
        qp = np.zeros((nq, E), np.float32)
        linear.linear_forward(x, w_in[:E], b_in[:E], qp)
        kv = np.zeros((nk, 2 * E), np.float32)  # fused K/V projection of the memory
        linear.linear_forward(mem, w_in[E:], b_in[E:], kv)
        qv, kk, vv = qp, kv[:, :E], kv[:, E:]
    else:
        mem = x
        qkv = np.zeros((nq, 3 * E), np.float32)  # fused QKV projection
        linear.linear_forward(x, w_in, b_in, qkv)
        qv, kk, vv = qkv[:, :E], qkv[:, E:2 * E], qkv[:, 2 * E:]
    ctx = np.zeros((nq, E), np.float32)
    Tq, Tk = int(q_len.max()), int(k_len.max())
    probs = np.zeros((3, H, Tq, Tk), np.float32)
    attention.attention_forward(qv, kk, vv, ctx, q_start, q_len, k_start, k_len, H,
                                causal=causal, probs=probs)
    y = np.zeros((nq, E), np.float32)
    linear.linear_forward(ctx, w_out, b_out, y)

    xq = torch.from_numpy(_pad(x, q_start, q_len, Tq))
    xk = torch.from_numpy(_pad(mem, k_start, k_len, Tk))
    pad = torch.from_numpy(np.arange(Tk)[None, :] >= k_len[:, None])  # True = ignore
    attn_mask = torch.triu(torch.ones(Tq, Tk, dtype=torch.bool), 1) if causal else None
    with torch.no_grad():
        want, want_w = mha(xq, xk, xk, key_padding_mask=pad, attn_mask=attn_mask,
                           need_weights=True, average_attn_weights=False)
    for b in range(3):
        qs, lq, lk = int(q_start[b]), int(q_len[b]), int(k_len[b])
        np.testing.assert_allclose(y[qs:qs + lq], want[b, :lq].numpy(),
                                   rtol=TORCH_RTOL, atol=TORCH_ATOL)
        np.testing.assert_allclose(probs[b, :, :lq, :lk], want_w[b, :, :lq, :lk].numpy(),
                                   rtol=TORCH_RTOL, atol=TORCH_ATOL)


# --------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ATTN_CASES))
def test_attention_backward_matches_numpy(name):
    q, k, v, dout, qs, ql, ks, kl, H, causal, window, mask = _attention_case(name)
    _, _, want_dq, want_dk, want_dv = ref_attention(q, k, v, qs, ql, ks, kl, H, causal=causal, window=window,
                                                    mask=mask, dout=dout)
    dq, dk, dv = (np.full(a.shape, np.nan, np.float32) for a in (q, k, v))
    attention.attention_backward(q, k, v, dout, dq, dk, dv, qs, ql, ks, kl, H, causal=causal, window=window,
                                 mask=mask)
    assert_grad_close(dq, want_dq)
    assert_grad_close(dk, want_dk)
    assert_grad_close(dv, want_dv)


@pytest.mark.parametrize("name", sorted(ATTN_CASES))
def test_attention_backward_threads_agree(name):
    q, k, v, dout, qs, ql, ks, kl, H, causal, window, mask = _attention_case(name)
    results = []
    with one_blas_thread():
        for nt in (1, 2):
            grads = [np.zeros(a.shape, np.float32) for a in (q, k, v)]
            attention.attention_backward(q, k, v, dout, *grads, qs, ql, ks, kl, H, causal=causal,
                                         window=window, mask=mask, dropout=0.2, seed=3, n_threads=nt)
            results.append(grads)
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=THREAD_RTOL, atol=THREAD_ATOL)


@requires_torch
@pytest.mark.parametrize("name", ["padding", "causal", "dense_mask"])
def test_attention_backward_matches_torch_sdpa(name):
    q, k, v, dout, qs, ql, ks, kl, H, causal, window, mask = _attention_case(name)
    tq, tk, tv = t64(q), t64(k), t64(v)
    d = q.shape[1]
    outs = []
    for b in range(len(qs)):
        lq, lk = ql[b], kl[b]
        Q = tq[qs[b]:qs[b] + lq].view(lq, H, -1).transpose(0, 1)
        K = tk[ks[b]:ks[b] + lk].view(lk, H, -1).transpose(0, 1)
        V = tv[ks[b]:ks[b] + lk].view(lk, H, -1).transpose(0, 1)
        allowed = torch.ones(lq, lk, dtype=torch.bool)
        if causal:
            allowed &= torch.ones(lq, lk, dtype=torch.bool).tril(lk - lq)
        if mask is not None:
            allowed &= torch.from_numpy(mask[b, :lq, :lk])
        o = F.scaled_dot_product_attention(Q, K, V, attn_mask=allowed).nan_to_num(0.0)
        o = torch.where(allowed.any(dim=1)[None, :, None], o, torch.zeros_like(o))
        outs.append(o.transpose(0, 1).reshape(lq, d))
    (torch.cat(outs) * torch.from_numpy(dout.astype(np.float64))).sum().backward()
    dq, dk, dv = (np.zeros(a.shape, np.float32) for a in (q, k, v))
    attention.attention_backward(q, k, v, dout, dq, dk, dv, qs, ql, ks, kl, H, causal=causal, mask=mask)
    for got, want in ((dq, tq.grad), (dk, tk.grad), (dv, tv.grad)):
        assert_grad_close(got, want.numpy())


def test_attention_backward_keys_no_query_sees_get_zero_gradients():
    rng = make_rng("attn-qlen0")
    q = f32(rng.standard_normal((5, 8)))
    k = f32(rng.standard_normal((9, 8)))
    dq = np.full_like(q, np.nan)
    dk, dv = np.full_like(k, np.nan), np.full_like(k, np.nan)
    # the second sequence has keys but no queries
    attention.attention_backward(q, k, k, q, dq, dk, dv, np.array([0, 5], np.int32), np.array([5, 0], np.int32),
                                 np.array([0, 5], np.int32), np.array([5, 4], np.int32), 2)
    assert np.isfinite(dq).all() and np.isfinite(dk).all() and np.isfinite(dv).all()
    assert not dk[5:].any() and not dv[5:].any()
    empty = np.zeros((0, 8), np.float32)
    dk[...] = np.nan
    attention.attention_backward(empty, k, k, empty, empty.copy(), dk, dv, np.array([0], np.int32),
                                 np.array([0], np.int32), np.array([2], np.int32), np.array([4], np.int32), 2)
    assert not dk[2:6].any() and np.isnan(dk[:2]).all()


def test_attention_backward_rejects_shared_rows():
    q = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="share"):
        attention.attention_backward(q, q, q, q, q.copy(), q.copy(), q.copy(), np.array([0, 1], np.int32),
                                     np.array([2, 2], np.int32), np.array([0, 0], np.int32),
                                     np.array([4, 4], np.int32), 2)


# --------------------------------------------------------------------------------------
# forward and backward together: dropout, windows
# --------------------------------------------------------------------------------------

def test_attention_dropout_mask_is_shared_by_forward_and_backward():
    """Finite differences of the dropped-out forward agree with the backward (same seed)."""
    q, k, v, dout, qs, ql, ks, kl, H, causal, window, mask = _attention_case("causal")
    p, seed = 0.3, 11
    q64, k64, v64 = (a.astype(np.float64) for a in (q, k, v))

    def objective(qq, kk, vv):
        out = np.zeros(q.shape, np.float32)
        attention.attention_forward(f32(qq), f32(kk), f32(vv), out, qs, ql, ks, kl, H, causal=True,
                                    dropout=p, seed=seed)
        return float((out.astype(np.float64) * dout).sum())

    grads = [np.zeros(a.shape, np.float32) for a in (q, k, v)]
    attention.attention_backward(q, k, v, dout, *grads, qs, ql, ks, kl, H, causal=True, dropout=p, seed=seed)
    rng = make_rng("attn-fd")
    eps = 1e-2
    for which, g in enumerate(grads):
        for _ in range(6):
            args = [q64.copy(), k64.copy(), v64.copy()]
            i, j = rng.integers(args[which].shape[0]), rng.integers(args[which].shape[1])
            args[which][i, j] += eps
            up = objective(*args)
            args[which][i, j] -= 2 * eps
            down = objective(*args)
            assert abs((up - down) / (2 * eps) - g[i, j]) < 2e-3 * (1 + abs(g[i, j]))
    # a different seed drops different weights
    out_a, out_b = np.zeros(q.shape, np.float32), np.zeros(q.shape, np.float32)
    attention.attention_forward(q, k, v, out_a, qs, ql, ks, kl, H, causal=True, dropout=p, seed=1)
    attention.attention_forward(q, k, v, out_b, qs, ql, ks, kl, H, causal=True, dropout=p, seed=2)
    assert not np.allclose(out_a, out_b)


def test_attention_window_wider_than_any_sequence_is_no_window():
    q, k, v, dout, qs, ql, ks, kl, H, causal, window, mask = _attention_case("causal")
    outs = []
    for w in (-1, 1000, 2 ** 31 - 1):
        out = np.zeros_like(q)
        attention.attention_forward(q, k, v, out, qs, ql, ks, kl, H, causal=True, window=w)
        outs.append(out)
        grads = [np.zeros_like(a) for a in (q, k, v)]
        attention.attention_backward(q, k, v, dout, *grads, qs, ql, ks, kl, H, causal=True, window=w)
        outs.append(np.concatenate(grads))
    np.testing.assert_array_equal(outs[0], outs[2])
    np.testing.assert_array_equal(outs[0], outs[4])
    np.testing.assert_array_equal(outs[1], outs[3])
    np.testing.assert_array_equal(outs[1], outs[5])


# --------------------------------------------------------------------------------------
# long sequences: the tiled (FlashAttention) path, forward and backward
# --------------------------------------------------------------------------------------

# ql / kl: query and key lengths (kl absent = self-attention); sequences packed back to back.
# dk 8 and 16 take attention_tile.h's kernels where the CPU has them, dk 5 and 12 the sgemm tiles.
LONG_CASES = {
    "full": dict(ql=[1000], H=2, dk=16),
    "mixed_lengths": dict(ql=[70, 1301, 3, 600], kl=[300, 1301, 257, 600], H=3, dk=8),
    "causal": dict(ql=[1500, 260], H=2, dk=8, causal=True),
    "window": dict(ql=[2100], H=1, dk=16, window=37),
    "causal_window": dict(ql=[1200, 900], H=2, dk=8, causal=True, window=100),
    "mask": dict(ql=[700, 513], H=2, dk=8, mask=True),
    "cross_causal_prefix": dict(ql=[300], kl=[1000], H=2, dk=8, causal=True),
    "odd_dk": dict(ql=[800, 333], H=2, dk=5),
    "dk12_mask_window": dict(ql=[900], H=2, dk=12, window=200, mask=True),
}
LONG_SMALL = ["full", "mixed_lengths", "causal", "mask"]


def _long_case(name, extra=()):
    """q, k, v, dout, bounds, H, causal, window and mask of a LONG_CASES case."""
    c = LONG_CASES[name]
    rng = make_rng("attn-long", name, *extra)
    qs, ql = _packed(c["ql"])
    ks, kl = _packed(c.get("kl", c["ql"]))
    d = c["H"] * c["dk"]
    q = f32(rng.standard_normal((int(ql.sum()), d)) * 1.5)
    k, v = (f32(rng.standard_normal((int(kl.sum()), d))) for _ in range(2))
    dout = f32(rng.standard_normal(q.shape))
    mask = None
    if c.get("mask"):
        mask = rng.random((len(ql), int(ql.max()), int(kl.max()))) > 0.3
        mask[0, 5] = False   # a query that sees nothing
        mask[-1, :, 7] = False  # a key no query sees
    return dict(q=q, k=k, v=v, dout=dout, qs=qs, ql=ql, ks=ks, kl=kl, H=c["H"],
                causal=c.get("causal", False), window=c.get("window", -1), mask=mask)


def _long_kw(c, **kw):
    return dict(causal=c["causal"], window=c["window"], mask=c["mask"], **kw)


def _long_forward(c, n_threads=1, lse=True, **kw):
    out = np.full(c["q"].shape, np.nan, np.float32)
    lse_out = np.full((c["H"], c["q"].shape[0]), np.nan, np.float32) if lse else None
    attention.attention_forward(c["q"], c["k"], c["v"], out, c["qs"], c["ql"], c["ks"], c["kl"], c["H"],
                                n_threads=n_threads, lse=lse_out, **_long_kw(c, **kw))
    return out, lse_out


def _long_backward(c, n_threads=1, saved=None, **kw):
    grads = [np.full(a.shape, np.nan, np.float32) for a in (c["q"], c["k"], c["v"])]
    extra = {} if saved is None else dict(out=saved[0], lse=saved[1])
    attention.attention_backward(c["q"], c["k"], c["v"], c["dout"], *grads, c["qs"], c["ql"], c["ks"], c["kl"],
                                 c["H"], n_threads=n_threads, **_long_kw(c, **kw), **extra)
    return grads


def ref_lse(q, k, q_start, q_len, k_start, k_len, H, causal=False, window=-1, mask=None):
    """float64 [H, Nq]: log(sum_j exp(q.k_j / sqrt(d_k))) over the keys each query may see."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    dh = q.shape[1] // H
    lse = np.full((H, q.shape[0]), np.nan)
    for b in range(len(q_len)):
        qs, lq, ks, lk = int(q_start[b]), int(q_len[b]), int(k_start[b]), int(k_len[b])
        ok = allowed(lq, lk, causal, window, mask, b)
        for h in range(H):
            cols = slice(h * dh, (h + 1) * dh)
            s = np.where(ok, q[qs:qs + lq, cols] @ k[ks:ks + lk, cols].T / math.sqrt(dh), -np.inf)
            m = s.max(axis=1, initial=-np.inf)
            with np.errstate(invalid="ignore", divide="ignore"):
                lse[h, qs:qs + lq] = np.where(np.isfinite(m), m + np.log(np.exp(s - m[:, None]).sum(axis=1)),
                                              -np.inf)
    return lse


@pytest.fixture(autouse=True, params=[(True, 2), (False, 2), (False, 0)],
                ids=["short_tiles", "row_paths", "row_paths_portable"])
def _paths_for_short_keys(request):
    """Every test three times: with sequences of few keys on the tiled kernels (the default
    where they run), on the row and block paths with the row body this CPU runs best (AVX-512
    where it has it: ``attention.row_kernels``), and with the portable row body."""
    short_keys, row_level = request.param
    saved = attention._tile_config()[5]
    attention._tile_config(short_keys=short_keys)
    attention.row_kernels(row_level)
    yield
    attention._tile_config(short_keys=saved)
    attention.row_kernels(2)


@pytest.fixture
def tile_config():
    """attention._tile_config, restored after the test."""
    saved = attention._tile_config()
    yield attention._tile_config
    attention._tile_config(*saved[:3], chunk=saved[3], kernels=saved[4], level=2, short_keys=saved[5])


@pytest.mark.parametrize("kernels", [True, False], ids=["tile_kernels", "sgemm_tiles"])
@pytest.mark.parametrize("name", list(LONG_CASES))
def test_long_attention_forward_matches_numpy(name, kernels, tile_config):
    tile_config(kernels=kernels)
    c = _long_case(name)
    ref = ref_attention(c["q"], c["k"], c["v"], c["qs"], c["ql"], c["ks"], c["kl"], c["H"], **_long_kw(c))
    want_lse = ref_lse(c["q"], c["k"], c["qs"], c["ql"], c["ks"], c["kl"], c["H"], **_long_kw(c))
    out, lse = _long_forward(c)
    assert_close(out, ref.out)
    assert_close(lse, want_lse)


@pytest.mark.parametrize("saved", [False, True], ids=["lse_recomputed", "lse_saved"])
@pytest.mark.parametrize("kernels", [True, False], ids=["tile_kernels", "sgemm_tiles"])
@pytest.mark.parametrize("name", list(LONG_CASES))
def test_long_attention_backward_matches_numpy(name, kernels, saved, tile_config):
    tile_config(kernels=kernels)
    c = _long_case(name)
    ref = ref_attention(c["q"], c["k"], c["v"], c["qs"], c["ql"], c["ks"], c["kl"], c["H"], **_long_kw(c),
                        dout=c["dout"])
    dq, dk, dv = _long_backward(c, saved=_long_forward(c) if saved else None)
    assert_grad_close(dq, ref.dq)
    assert_grad_close(dk, ref.dk)
    assert_grad_close(dv, ref.dv)


@pytest.mark.parametrize("name", list(LONG_CASES))
def test_long_attention_threads_agree_bitwise(name):
    """The same arithmetic per (sequence, head, block) whatever the split: identical bits."""
    c = _long_case(name, extra=("threads",))
    results = []
    with one_blas_thread():
        for nt in (1, 2, 3):
            out, lse = _long_forward(c, n_threads=nt, dropout=0.2, seed=5)
            grads = _long_backward(c, n_threads=nt, dropout=0.2, seed=5)
            saved = _long_backward(c, n_threads=nt, saved=(out, lse), dropout=0.2, seed=5)
            results.append([out, lse] + grads + saved)
    for got in results[1:]:
        for a, b in zip(got, results[0]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", LONG_SMALL)
def test_long_attention_dropout_matches_the_block_path(name, tile_config):
    """Dropout on the tiled path drops the same weights as on the block path (one stream)."""
    c = _long_case(name, extra=("dropout",))
    kw = dict(dropout=0.25, seed=17)
    tiled = list(_long_forward(c, **kw)) + _long_backward(c, **kw)
    saved = _long_backward(c, saved=tiled[:2], **kw)
    tile_config(min_keys=1 << 30, short_keys=False)  # every sequence on the block path
    block = list(_long_forward(c, **kw)) + _long_backward(c, **kw)
    for got, want in zip(tiled + saved, block + block[2:]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)
    # and the dropout really drops: a different seed gives a different output
    other, _ = _long_forward(c, dropout=0.25, seed=18)
    assert not np.allclose(other, tiled[0])


@pytest.mark.parametrize("config", [dict(rows=7, keys=19, chunk=20), dict(rows=1, keys=16, chunk=1),
                                    dict(rows=13, keys=48, chunk=40), dict(rows=64, keys=5, chunk=64)],
                         ids=["7x19", "1x16", "13x48", "64x5"])
@pytest.mark.parametrize("kernels", [True, False], ids=["tile_kernels", "sgemm_tiles"])
@pytest.mark.parametrize("name", ["self_lengths", "self_causal_window", "cross_causal_prefix", "long_full",
                                  "long_causal", "long_cross_window", "mask_per_batch", "mask_oversize",
                                  "empty_sequences", "custom_scale", "single_head", "cross_causal_q_gt_k",
                                  "window0", "dk1"])
def test_tiled_path_on_small_tiles(name, kernels, config, tile_config):
    """Every scenario through the tiled path with small, odd tiles: tile edges everywhere."""
    tile_config(min_keys=0, kernels=kernels, **config)
    c = make_attention_case(name, True, seed_extra=("tiles",))
    want = ref_case(c)
    lse = np.full((c["H"], c["q"].shape[0]), np.nan, np.float32)
    attention.attention_forward(c["q"], c["k"], c["v"], c["out"], c["q_start"], c["q_len"], c["k_start"],
                                c["k_len"], c["H"], scale=c["scale"], causal=c["causal"], window=c["window"],
                                mask=c["mask"], lse=lse)
    assert_close(c["out"], want.out)
    # backward: sequences must not share rows; the case's gaps between sequences keep them apart
    dout = f32(make_rng("tiles-dout", name).standard_normal(c["q"].shape))
    want = ref_case(c, dout=dout)
    for saved in ({}, dict(out=c["out"], lse=lse)):
        grads = [np.zeros(a.shape, np.float32) for a in (c["q"], c["k"], c["v"])]
        attention.attention_backward(c["q"], c["k"], c["v"], dout, *grads, c["q_start"], c["q_len"],
                                     c["k_start"], c["k_len"], c["H"], scale=c["scale"], causal=c["causal"],
                                     window=c["window"], mask=c["mask"], **saved)
        for got, ref in zip(grads, (want.dq, want.dk, want.dv)):
            assert_grad_close(got, ref)


@pytest.mark.parametrize("name", ["self_lengths", "decode_causal", "mask_per_batch", "empty_sequences",
                                  "long_causal", "cross_window"])
def test_lse_on_the_row_and_block_paths(name):
    """lse is written on every path, not only the tiled one."""
    c = make_attention_case(name, False, seed_extra=("lse",))
    lse = np.full((c["H"], c["q"].shape[0]), np.nan, np.float32)
    attention.attention_forward(c["q"], c["k"], c["v"], c["out"], c["q_start"], c["q_len"], c["k_start"],
                                c["k_len"], c["H"], scale=-1.0, causal=c["causal"], window=c["window"],
                                mask=c["mask"], lse=lse)
    want = ref_lse(c["q"], c["k"], c["q_start"], c["q_len"], c["k_start"], c["k_len"], c["H"],
                   causal=c["causal"], window=c["window"], mask=c["mask"])
    assert_close(lse, want)  # NaN (rows of no sequence) where the reference has NaN


def test_window_never_touches_keys_outside_the_band():
    """A window over long keys visits only the tiles of its band: NaN keys and values
    outside every query's band do not reach the output (O(length x window) work)."""
    H, dk, lq, lk, w = 2, 16, 300, 3000, 40
    rng = make_rng("attn-band")
    q = f32(rng.standard_normal((lq, H * dk)))
    k, v = (f32(rng.standard_normal((lk, H * dk))) for _ in range(2))
    far = lk - lq - w - 1  # queries sit at positions lk - lq .. lk - 1: keys before far + 1 are unseen
    k[:far], v[:far] = np.nan, np.nan
    bounds = (i32(0), i32(lq), i32(0), i32(lk))
    out, lse = np.zeros_like(q), np.zeros((H, lq), np.float32)
    attention.attention_forward(q, k, v, out, *bounds, H, window=w, lse=lse)
    k64, v64 = (np.nan_to_num(a) for a in (k, v))
    want = ref_attention(q, k64, v64, *bounds, H, window=w, dout=np.ones_like(q))
    assert_close(out, want.out)
    grads = [np.zeros(a.shape, np.float32) for a in (q, k, v)]
    attention.attention_backward(q, k, v, np.ones_like(q), *grads, *bounds, H, window=w, out=out, lse=lse)
    assert_grad_close(grads[0], want.dq)
    assert_grad_close(grads[1], want.dk)


def test_tile_kernels_names_the_cpu_path():
    assert attention.tile_kernels() in ("avx512", "avx2-fma", "sgemm")


@pytest.mark.parametrize("name", ["full", "mixed_lengths", "window", "mask"])
def test_avx2_and_avx512_tile_kernels_give_the_same_bits(name, tile_config):
    """The two kernel sets sum in the same order with the same FMAs (on a CPU without
    AVX-512 both runs take the AVX2 kernels, and the test still holds)."""
    c = _long_case(name, extra=("isa",))
    runs = []
    for level in (2, 1):
        tile_config(level=level)
        runs.append(list(_long_forward(c)) + _long_backward(c))
    tile_config(level=2)
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------
# bad input: ValueError with a message, never a crash
# --------------------------------------------------------------------------------------

def _attn(q=None, k=None, v=None, out=None, qs=(0, 5), ql=(5, 5), ks=(0, 5), kl=(5, 5),
          H=3, **kw):
    q = zeros(10, 12) if q is None else q
    k = zeros(10, 12) if k is None else k
    v = zeros(10, 12) if v is None else v
    out = zeros(q.shape[0], q.shape[1]) if out is None else out
    return lambda: attention.attention_forward(q, k, v, out, i32(*qs), i32(*ql), i32(*ks),
                                               i32(*kl), H, **kw)


BAD_INPUTS = [
    ("attn_d_not_divisible", _attn(H=5), ValueError, "not divisible"),
    ("attn_zero_heads", _attn(H=0), ValueError, "not divisible"),
    ("attn_k_columns", _attn(k=zeros(10, 9)), ValueError, "same number of columns"),
    ("attn_v_rows", _attn(v=zeros(9, 12)), ValueError, "same number of rows"),
    ("attn_out_rows", _attn(out=zeros(9, 12)), ValueError, "as many rows"),
    ("attn_out_columns", _attn(out=zeros(10, 6)), ValueError, "as many rows as q and 12 columns"),
    ("attn_bounds_count", _attn(ql=(5,)), ValueError, "one entry per sequence"),
    ("attn_negative_len", _attn(ql=(5, -1)), ValueError, "negative"),
    ("attn_negative_start", _attn(ks=(-1, 5)), ValueError, "negative"),
    ("attn_q_past_end", _attn(qs=(0, 8)), ValueError, "runs past the end"),
    ("attn_q_len_past_end", _attn(ql=(5, 6)), ValueError, "runs past the end"),
    ("attn_k_past_end", _attn(ks=(0, 6)), ValueError, "runs past the end"),
    ("attn_q_float64", _attn(q=zeros(10, 12, dtype=np.float64)), ValueError, "dtype"),
    ("attn_out_float64", _attn(out=zeros(10, 12, dtype=np.float64)), ValueError, "dtype"),
    ("attn_bounds_int64", lambda: attention.attention_forward(
        zeros(4, 4), zeros(4, 4), zeros(4, 4), zeros(4, 4), np.zeros(1, np.int64), i32(4), i32(0), i32(4),
        2), ValueError, "dtype"),
    ("attn_q_cols_strided", _attn(q=zeros(10, 24)[:, ::2]), ValueError, "contiguous"),
    ("attn_mask_short_q", _attn(mask=np.ones((2, 4, 5), bool)), ValueError, "does not cover"),
    ("attn_mask_short_k", _attn(mask=np.ones((1, 5, 4), bool)), ValueError, "does not cover"),
    ("attn_mask_batch", _attn(mask=np.ones((3, 5, 5), bool)), ValueError, "does not cover"),
    ("attn_mask_ndim", _attn(mask=np.ones((1, 1, 5, 5), bool)), ValueError, "does not cover"),
    ("attn_probs_shape", _attn(probs=zeros(2, 3, 4, 5)), ValueError, "probs must be"),
    ("attn_probs_heads", _attn(probs=zeros(2, 2, 5, 5)), ValueError, "probs must be"),
    ("attn_probs_float64", _attn(probs=zeros(2, 3, 5, 5, dtype=np.float64)), ValueError, "dtype"),
    ("attn_lse_shape", _attn(lse=zeros(2, 10)), ValueError, "lse must be"),
    ("attn_lse_rows", _attn(lse=zeros(3, 9)), ValueError, "lse must be"),
    ("attn_lse_float64", _attn(lse=zeros(3, 10, dtype=np.float64)), ValueError, "dtype"),
    ("attn_lse_strided", _attn(lse=zeros(3, 20)[:, ::2]), ValueError, "contiguous"),
    ("attn_bw_out_without_lse", lambda: attention.attention_backward(
        *[zeros(10, 12) for _ in range(7)], i32(0, 5), i32(5, 5), i32(0, 5), i32(5, 5), 3, out=zeros(10, 12)),
     ValueError, "together"),
    ("attn_bw_out_shape", lambda: attention.attention_backward(
        *[zeros(10, 12) for _ in range(7)], i32(0, 5), i32(5, 5), i32(0, 5), i32(5, 5), 3, out=zeros(9, 12),
        lse=zeros(3, 10)), ValueError, "forward's output"),
    ("attn_bw_lse_shape", lambda: attention.attention_backward(
        *[zeros(10, 12) for _ in range(7)], i32(0, 5), i32(5, 5), i32(0, 5), i32(5, 5), 3, out=zeros(10, 12),
        lse=zeros(3, 9)), ValueError, "lse must be"),
]


@pytest.mark.parametrize("call,exc,match", bad_input_params(BAD_INPUTS))
def test_bad_input_raises(call, exc, match):
    check_bad_input(call, exc, match)


_OVERFLOW_CHILD = """
import sys
sys.path[:0] = {path!r}
import numpy as np
from cyformer._engine import attention
q = np.zeros((4, 8), np.float32)
out = np.zeros_like(q)
i32 = lambda v: np.array([v], np.int32)
try:
    attention.attention_forward(q, q, q, out, i32({qs}), i32({ql}), i32({ks}), i32({kl}), 2)
except ValueError as e:
    print("ValueError:", e)
else:
    print("no error")
"""


@pytest.mark.parametrize("qs,ql,ks,kl", [(2**31 - 1, 1, 0, 4), (0, 4, 2**31 - 2, 4)],
                         ids=["q_start", "k_start"])
def test_attention_huge_start_raises(qs, ql, ks, kl):
    # Run in a child process: the bug corrupts the heap and may abort the interpreter.
    code = _OVERFLOW_CHILD.format(path=list(sys.path), qs=qs, ql=ql, ks=ks, kl=kl)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"child crashed ({proc.returncode}): {proc.stderr[-300:]}"
    assert proc.stdout.startswith("ValueError:"), proc.stdout


def test_attention_rejects_reversed_or_overlapping_rows():
    q = f32(np.ones((4, 8)))
    one = np.ones(4, np.int32)
    start = np.arange(4, dtype=np.int32)
    out = np.empty((4, 8), np.float32)
    for bad in (q[::-1], np.broadcast_to(q[0], (4, 8))):
        with pytest.raises(ValueError, match="contiguous"):
            attention.attention_forward(bad, q, q, out, start, one, start, one, 2)
        with pytest.raises(ValueError, match="contiguous"):
            attention.attention_forward(q, q, bad, out, start, one, start, one, 2)


def test_row_kernels_names_the_cpu_path():
    # the AVX-512 row body where the CPU has AVX-512F (the scenarios above then run both bodies)
    from cyformer.sysinfo import cpu_features

    want = "avx512" if "avx512f" in cpu_features() else "portable"
    assert attention.row_kernels(2) == want
    assert attention.row_kernels(0) == "portable"
    assert attention.row_kernels(2) == want
    with pytest.raises(ValueError, match="level"):
        attention.row_kernels(1)


@pytest.mark.parametrize("d_k", [16, 32, 64, 80, 128])
def test_decoding_lanes_match_numpy_on_both_row_bodies(d_k):
    # decoding's layout: rows * heads one-head lanes of one query, each over its own block of a
    # head-major cache [lanes, capacity, d_k]; every key count from 1 to 40 (blocks of 16 and tails)
    if attention.row_kernels(2) != "avx512":
        pytest.skip("the AVX-512 row body needs AVX-512F, which this CPU lacks")
    rng = make_rng("decode-lanes", d_k)
    lanes, cap = 40, 48
    keys = f32(rng.standard_normal((lanes, cap, d_k)))
    values = f32(rng.standard_normal((lanes, cap, d_k)))
    q = f32(rng.standard_normal((lanes, d_k)))
    seq = np.arange(lanes, dtype=np.int32)
    one = np.ones(lanes, np.int32)
    start = (seq * cap).astype(np.int32)
    length = (seq + 1).astype(np.int32)
    want = np.empty((lanes, d_k))
    for i in range(lanes):
        k64, v64 = keys[i, :length[i]].astype(np.float64), values[i, :length[i]].astype(np.float64)
        s = k64 @ q[i].astype(np.float64) / math.sqrt(d_k)
        p = np.exp(s - s.max())
        want[i] = (p / p.sum()) @ v64
    outs = {}
    for level in (2, 0):
        attention.row_kernels(level)
        for nt in (1, 2):
            out = zeros(lanes, d_k)
            attention.attention_forward(q, keys.reshape(-1, d_k), values.reshape(-1, d_k), out, seq, one,
                                        start, length, 1, n_threads=nt)
            outs[level, nt] = out
    attention.row_kernels(2)
    for out in outs.values():
        assert_close(out, want)
    for level in (2, 0):   # each body's sums in one fixed order: bitwise the same at 1 and 2 threads
        np.testing.assert_array_equal(outs[level, 1], outs[level, 2])
