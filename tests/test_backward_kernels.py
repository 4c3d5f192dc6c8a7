"""Backward kernels, loss, dropout and optimizers against float64 NumPy references and torch autograd.

Tolerances: float32 kernel vs float64 reference, |got - want| <= ATOL + RTOL * |want|;
vs torch float64 autograd likewise; 1 vs 2 threads within THREAD_* (float rounding of
BLAS blocking only: the kernels' own reductions do not depend on the thread count).
"""
import math
import zlib

import numpy as np
import pytest
from scipy.special import erf

from cyformer._engine import attention, dropout, embedding, ffn, linear, loss, norm, optim

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - torch is a test dependency
    torch = None

from threadpoolctl import threadpool_limits

RTOL = 1e-5
ATOL = 2e-5
THREAD_RTOL = 1e-6
THREAD_ATOL = 1e-6
requires_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def make_rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


def assert_close(got, want, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=rtol, atol=atol)


def t64(a, grad=True):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


# --------------------------------------------------------------------------------------
# linear
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (7, 5, 3), (50, 33, 20), (300, 70, 40), (3, 0, 4)])
@pytest.mark.parametrize("accumulate_dx", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_linear_backward_matches_numpy(m, n, k, accumulate_dx, threads):
    rng = make_rng("linear-bw", m, n, k, accumulate_dx)
    x, w, dout = f32(rng.standard_normal((m, k))), f32(rng.standard_normal((n, k))), f32(rng.standard_normal((m, n)))
    dx0, dw0, db0 = f32(rng.standard_normal((m, k))), f32(rng.standard_normal((n, k))), f32(rng.standard_normal(n))
    dx, dw, db = dx0.copy(), dw0.copy(), db0.copy()
    with threadpool_limits(1, "blas"):
        linear.linear_backward(x, w, dout, dx, dw, db, accumulate_dx=accumulate_dx, n_threads=threads)
    d64, x64, w64 = dout.astype(np.float64), x.astype(np.float64), w.astype(np.float64)
    assert_close(dx, d64 @ w64 + (dx0 if accumulate_dx else 0))
    assert_close(dw, dw0 + d64.T @ x64)
    assert_close(db, db0 + d64.sum(axis=0))


def test_linear_backward_strided_views_and_optional_outputs():
    rng = make_rng("linear-bw-strided")
    buf = f32(rng.standard_normal((40, 30)))
    x = buf[:, 5:17]                 # a column block of a fused buffer
    w = f32(rng.standard_normal((9, 12)))
    dbuf = f32(rng.standard_normal((40, 27)))
    dout = dbuf[:, 18:27]
    dxbuf = np.zeros((40, 36), np.float32)
    dx = dxbuf[:, 12:24]
    linear.linear_backward(x, w, dout, dx, None, None)
    assert_close(dx, dout.astype(np.float64) @ w)
    assert not dxbuf[:, :12].any() and not dxbuf[:, 24:].any()
    dw = np.zeros_like(w)
    linear.linear_backward(x, w, dout, None, dw, None)
    assert_close(dw, dout.astype(np.float64).T @ x)


def test_linear_backward_bad_shapes():
    x, w = np.zeros((4, 3), np.float32), np.zeros((5, 3), np.float32)
    with pytest.raises(ValueError, match="dout"):
        linear.linear_backward(x, w, np.zeros((4, 4), np.float32), None, None, None)
    with pytest.raises(ValueError, match="dweight"):
        linear.linear_backward(x, w, np.zeros((4, 5), np.float32), None, np.zeros((3, 5), np.float32), None)


# --------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------

def _packed(lengths):
    lengths = np.asarray(lengths, np.int32)
    start = np.zeros(len(lengths), np.int32)
    start[1:] = np.cumsum(lengths)[:-1]
    return start, lengths


def ref_attention(q, k, v, qs, ql, ks, kl, H, causal, window, mask, dout):
    """float64 forward and hand-written backward, sequence by sequence, head by head."""
    d = q.shape[1]
    dk_ = d // H
    out = np.zeros(q.shape)
    dq, dk, dv = np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape)
    for b in range(len(qs)):
        lq, lk = ql[b], kl[b]
        i = np.arange(lq)[:, None] + (lk - lq)
        j = np.arange(lk)[None, :]
        allowed = np.ones((lq, lk), bool)
        if causal:
            allowed &= j <= i
        if window >= 0:
            allowed &= np.abs(i - j) <= window
        if mask is not None:
            allowed &= mask[b if mask.shape[0] > 1 else 0, :lq, :lk].astype(bool)
        for h in range(H):
            cols = slice(h * dk_, (h + 1) * dk_)
            Q = q[qs[b]:qs[b] + lq, cols].astype(np.float64)
            K = k[ks[b]:ks[b] + lk, cols].astype(np.float64)
            V = v[ks[b]:ks[b] + lk, cols].astype(np.float64)
            S = np.where(allowed, Q @ K.T / math.sqrt(dk_), -np.inf)
            live = allowed.any(axis=1)
            P = np.zeros_like(S)
            if live.any():
                z = S[live] - S[live].max(axis=1, keepdims=True)
                e = np.exp(z)
                P[live] = e / e.sum(axis=1, keepdims=True)
            dO = dout[qs[b]:qs[b] + lq, cols].astype(np.float64)
            out[qs[b]:qs[b] + lq, cols] = P @ V
            dP = dO @ V.T
            dS = P * (dP - (P * dP).sum(axis=1, keepdims=True))
            dq[qs[b]:qs[b] + lq, cols] = dS @ K / math.sqrt(dk_)
            dk[ks[b]:ks[b] + lk, cols] = dS.T @ Q / math.sqrt(dk_)
            dv[ks[b]:ks[b] + lk, cols] = P.T @ dO
    return out, dq, dk, dv


ATTN_CASES = {
    "padding": dict(ql=[5, 40, 1], kl=[7, 35, 2], causal=False, window=-1, mask=False),
    "causal": dict(ql=[5, 70, 1], kl=[5, 70, 1], causal=True, window=-1, mask=False),
    "window": dict(ql=[9, 45], kl=[9, 45], causal=False, window=3, mask=False),
    "causal_window": dict(ql=[9, 45], kl=[9, 45], causal=True, window=4, mask=False),
    "dense_mask": dict(ql=[6, 33], kl=[8, 30], causal=False, window=-1, mask=True),
    "empty_keys": dict(ql=[4, 3], kl=[0, 5], causal=False, window=-1, mask=False),
}


def _attention_case(name, H=3, dk_=4):
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


@pytest.mark.parametrize("name", sorted(ATTN_CASES))
def test_attention_backward_matches_numpy(name):
    q, k, v, dout, qs, ql, ks, kl, H, causal, window, mask = _attention_case(name)
    out, want_dq, want_dk, want_dv = ref_attention(q, k, v, qs, ql, ks, kl, H, causal, window, mask, dout)
    dq, dk, dv = (np.full(a.shape, np.nan, np.float32) for a in (q, k, v))
    attention.attention_backward(q, k, v, dout, dq, dk, dv, qs, ql, ks, kl, H, causal=causal, window=window,
                                 mask=mask)
    assert_close(dq, want_dq)
    assert_close(dk, want_dk)
    assert_close(dv, want_dv)


@pytest.mark.parametrize("name", sorted(ATTN_CASES))
def test_attention_backward_threads_agree(name):
    q, k, v, dout, qs, ql, ks, kl, H, causal, window, mask = _attention_case(name)
    results = []
    with threadpool_limits(1, "blas"):
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
        assert_close(got, want.numpy())


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


def test_attention_backward_rejects_shared_rows():
    q = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="share"):
        attention.attention_backward(q, q, q, q, q.copy(), q.copy(), q.copy(), np.array([0, 1], np.int32),
                                     np.array([2, 2], np.int32), np.array([0, 0], np.int32),
                                     np.array([4, 4], np.int32), 2)


# --------------------------------------------------------------------------------------
# LayerNorm, activations, embeddings
# --------------------------------------------------------------------------------------

def ref_layer_norm_backward(x, gamma, dy, eps):
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    mean = x.mean(axis=1, keepdims=True)
    rstd = 1.0 / np.sqrt(x.var(axis=1, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    g = dy * gamma
    dx = rstd * (g - g.mean(axis=1, keepdims=True) - xhat * (g * xhat).mean(axis=1, keepdims=True))
    return dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)


@pytest.mark.parametrize("n,d", [(1, 1), (7, 48), (100, 257)])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_layer_norm_backward_matches_numpy(n, d, accumulate, threads):
    rng = make_rng("ln-bw", n, d, accumulate)
    x = f32(rng.standard_normal((n, d)) * 3 + 1)
    gamma, beta = f32(rng.uniform(0.5, 1.5, d)), f32(rng.standard_normal(d))
    dy = f32(rng.standard_normal((n, d)))
    mean, rstd = np.zeros(n, np.float32), np.zeros(n, np.float32)
    norm.layer_norm_forward(x.copy(), None, gamma, beta, np.zeros_like(x), 1e-5, mean, rstd)
    dx0 = f32(rng.standard_normal((n, d)))
    dx, dg, db = dx0.copy(), np.ones(d, np.float32), np.ones(d, np.float32)
    norm.layer_norm_backward(x, mean, rstd, gamma, dy, dx, dg, db, accumulate=accumulate, n_threads=threads)
    want_dx, want_dg, want_db = ref_layer_norm_backward(x, gamma, dy, 1e-5)
    assert_close(dx, want_dx + (dx0 if accumulate else 0), atol=1e-4 if d == 1 else ATOL)
    assert_close(dg, 1 + want_dg)
    assert_close(db, 1 + want_db)


@requires_torch
def test_layer_norm_backward_matches_torch_and_aliases():
    rng = make_rng("ln-bw-torch")
    x = f32(rng.standard_normal((30, 64)) * 2)
    gamma, beta, dy = f32(rng.uniform(0.5, 1.5, 64)), f32(rng.standard_normal(64)), f32(rng.standard_normal((30, 64)))
    mean, rstd = np.zeros(30, np.float32), np.zeros(30, np.float32)
    norm.layer_norm_forward(x.copy(), None, gamma, beta, np.zeros_like(x), 1e-5, mean, rstd)
    tx, tg, tb = t64(x), t64(gamma), t64(beta)
    (F.layer_norm(tx, (64,), tg, tb, 1e-5) * torch.from_numpy(dy.astype(np.float64))).sum().backward()
    g = dy.copy()  # dx written over dy
    dg, db = np.zeros(64, np.float32), np.zeros(64, np.float32)
    norm.layer_norm_backward(x, mean, rstd, gamma, g, g, dg, db)
    assert_close(g, tx.grad.numpy())
    assert_close(dg, tg.grad.numpy())
    assert_close(db, tb.grad.numpy())


def ref_act_grad(act, z):
    z = z.astype(np.float64)
    if act == "relu":
        return (z > 0).astype(np.float64)
    if act == "gelu":
        return 0.5 * (1 + erf(z / math.sqrt(2))) + z * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    if act == "silu":
        s = 1 / (1 + np.exp(-z))
        return s * (1 + z * (1 - s))
    u = math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)
    th = np.tanh(u)
    return 0.5 * (1 + th) + 0.5 * z * (1 - th ** 2) * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * z * z)


@pytest.mark.parametrize("act", ["relu", "gelu", "silu", "gelu_tanh"])
def test_activation_backward_matches_numpy_and_torch(act):
    rng = make_rng("act-bw", act)
    pre = f32(rng.standard_normal((20, 70)) * 3)
    bias = f32(rng.standard_normal(70))
    dh = f32(rng.standard_normal((20, 70)))
    saved, out = pre.copy(), np.zeros_like(pre)
    ffn.bias_act_forward_save(saved, bias, act, out)
    assert_close(saved, pre.astype(np.float64) + bias)
    g = dh.copy()
    ffn.act_backward(g, saved, act, n_threads=2)
    assert_close(g, dh * ref_act_grad(act, saved))
    if torch is not None:
        fn = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu,
              "gelu_tanh": lambda z: F.gelu(z, approximate="tanh")}[act]
        tz = t64(saved)
        (fn(tz) * torch.from_numpy(dh.astype(np.float64))).sum().backward()
        assert_close(g, tz.grad.numpy())
        assert_close(out, fn(t64(saved, False)).numpy())


@pytest.mark.parametrize("learned", [False, True])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_embedding_backward_matches_numpy(learned, threads):
    rng = make_rng("emb-bw", learned)
    ids = rng.integers(0, 12, 200).astype(np.int32)
    positions = rng.integers(0, 9, 200).astype(np.int32)
    dout = f32(rng.standard_normal((200, 40)))
    dtable = f32(rng.standard_normal((12, 40)))
    dpos = f32(rng.standard_normal((9, 40))) if learned else None
    want = dtable.astype(np.float64)
    np.add.at(want, ids, 1.5 * dout.astype(np.float64))
    want[4] = dtable[4]  # skip_id: the pad row gets nothing
    want_pos = None
    if learned:
        want_pos = dpos.astype(np.float64)
        np.add.at(want_pos, positions, dout.astype(np.float64))
    embedding.embedding_backward(ids, positions, dout, 1.5, dtable, dpos, skip_id=4, n_threads=threads)
    assert_close(dtable, want)
    if learned:
        assert_close(dpos, want_pos)


def test_embedding_backward_rejects_bad_ids():
    with pytest.raises(ValueError, match="token id"):
        embedding.embedding_backward(np.array([0, 5], np.int32), np.zeros(2, np.int32),
                                     np.zeros((2, 3), np.float32), 1.0, np.zeros((5, 3), np.float32))


# --------------------------------------------------------------------------------------
# loss
# --------------------------------------------------------------------------------------

def ref_cross_entropy(logits, labels, eps, ignore):
    x = logits.astype(np.float64)
    lse = np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)) + x.max(1, keepdims=True)
    logp = x - lse
    V = x.shape[1]
    live = labels != ignore
    safe = np.where(live, labels, 0)
    nll = -logp[np.arange(len(labels)), safe]
    loss_rows = (1 - eps) * nll - eps * logp.mean(axis=1)
    target = np.full(x.shape, eps / V)
    target[np.arange(len(labels)), safe] += 1 - eps
    grad = np.exp(logp) - target
    return np.where(live, loss_rows, 0), np.where(live, nll, 0), np.where(live[:, None], grad, 0)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("V", [5, 1000])
def test_cross_entropy_matches_numpy_and_torch(eps, V):
    rng = make_rng("ce", eps, V)
    logits = f32(rng.standard_normal((40, V)) * 4)
    labels = rng.integers(0, V, 40).astype(np.int32)
    labels[[3, 9]] = -100
    want_loss, want_nll, want_grad = ref_cross_entropy(logits, labels, eps, -100)
    n = int((labels != -100).sum())
    g = logits.copy()
    losses, nlls = loss.cross_entropy(g, labels, eps, -100, True, 1.0 / n, n_threads=2)
    assert_close(losses, want_loss)
    assert_close(nlls, want_nll)
    assert_close(g, want_grad / n, atol=1e-7)
    plain, _ = loss.cross_entropy(logits.copy(), labels, eps, -100)   # no gradient: logits untouched
    np.testing.assert_array_equal(plain, losses)
    if torch is not None:
        tl = t64(logits)
        ref = F.cross_entropy(tl, torch.from_numpy(labels.astype(np.int64)), ignore_index=-100,
                              label_smoothing=eps)
        ref.backward()
        assert abs(losses.sum(dtype=np.float64) / n - ref.item()) < 1e-5
        assert_close(g, tl.grad.numpy(), atol=1e-7)


def test_cross_entropy_bad_labels():
    with pytest.raises(ValueError, match="outside"):
        loss.cross_entropy(np.zeros((2, 4), np.float32), np.array([1, 4], np.int32))
    with pytest.raises(ValueError, match="entries"):
        loss.cross_entropy(np.zeros((2, 4), np.float32), np.array([1], np.int32))


# --------------------------------------------------------------------------------------
# dropout
# --------------------------------------------------------------------------------------

def test_dropout_is_seeded_inverted_and_thread_independent():
    x = np.ones((300, 200), np.float32)
    a, b, c = x.copy(), x.copy(), x.copy()
    dropout.dropout(a, 0.25, seed=9, n_threads=1)
    dropout.dropout(b, 0.25, seed=9, n_threads=2)
    dropout.dropout(c, 0.25, seed=10)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    kept = a != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(a[kept], 1 / 0.75, rtol=1e-6)
    assert abs(a.mean() - 1.0) < 0.02
    # strided rows: the mask depends on (row, column), not on the memory layout
    wide = np.ones((300, 250), np.float32)
    dropout.dropout(wide[:, 50:], 0.25, seed=9)
    np.testing.assert_array_equal(wide[:, 50:], a)
    assert (wide[:, :50] == 1).all()
    with pytest.raises(ValueError, match="probability"):
        dropout.dropout(x, 1.0, seed=0)


# --------------------------------------------------------------------------------------
# optimizers
# --------------------------------------------------------------------------------------

def ref_adam(p, grads, lr, b1, b2, eps, wd, decoupled):
    p = p.astype(np.float64)
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        if wd and decoupled:
            p = p * (1 - lr * wd)
        elif wd:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr / (1 - b1 ** t) * m / (np.sqrt(v) / math.sqrt(1 - b2 ** t) + eps)
    return p


@pytest.mark.parametrize("wd,decoupled", [(0.0, False), (0.01, False), (0.1, True)])
def test_adam_matches_numpy_and_torch(wd, decoupled):
    rng = make_rng("adam", wd, decoupled)
    p0 = f32(rng.standard_normal(5000))
    grads = [f32(rng.standard_normal(5000)) for _ in range(4)]
    p, m, v = p0.copy(), np.zeros(5000, np.float32), np.zeros(5000, np.float32)
    for t, g in enumerate(grads, start=1):
        optim.adam_update(p, g, m, v, t, 1e-3, 0.9, 0.98, 1e-9, wd, decoupled, n_threads=2)
    assert_close(p, ref_adam(p0, grads, 1e-3, 0.9, 0.98, 1e-9, wd, decoupled), atol=1e-6)
    if torch is not None:
        tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
        opt = (torch.optim.AdamW if decoupled else torch.optim.Adam)([tp], lr=1e-3, betas=(0.9, 0.98), eps=1e-9,
                                                                     weight_decay=wd)
        for g in grads:
            tp.grad = torch.from_numpy(g)
            opt.step()
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 1e-2)])
def test_sgd_matches_torch(momentum, nesterov, wd):
    if torch is None:
        pytest.skip("torch is not installed")
    rng = make_rng("sgd", momentum, nesterov, wd)
    p0 = f32(rng.standard_normal(3000))
    p, buf = p0.copy(), np.zeros(3000, np.float32)
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch.optim.SGD([tp], lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    for step in range(4):
        g = f32(rng.standard_normal(3000))
        optim.sgd_update(p, g, buf, 0.05, momentum, 0.0, wd, nesterov, step == 0)
        tp.grad = torch.from_numpy(g)
        opt.step()
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=0, atol=1e-6)


def test_sum_squares_is_exact_enough_and_thread_independent():
    x = f32(make_rng("ss").standard_normal(300_001))
    one, two = optim.sum_squares(x, 1), optim.sum_squares(x, 2)
    assert one == two
    assert abs(one - float((x.astype(np.float64) ** 2).sum())) < 1e-9 * one
    assert optim.sum_squares(np.zeros(0, np.float32)) == 0.0
    optim.scale(x, 0.5, 2)
    assert abs(optim.sum_squares(x) - one / 4) < 1e-9 * one


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
