"""embedding_forward (scaled tokens plus learned or sinusoidal positions), the sinusoidal
tables (the paper's interleaved layout and Marian's halves) and embedding_backward, against
float64 NumPy references, transformers and one thread; bad ids and positions."""
import inspect
import math

import numpy as np
import pytest

from _shared import (SIN_ATOL, THREAD_ATOL, THREAD_RTOL, assert_close, assert_grad_close, bad_input_params,
                      check_bad_input, f32, i32, make_rng, zeros)
from cyformer._engine import embedding


# --------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,vocab,d,n_pos", [(1, 1, 1, 1), (9, 13, 7, 12), (40, 50, 33, 64)])
@pytest.mark.parametrize("pos_kind", ["none", "learned", "sinusoidal"])
@pytest.mark.parametrize("scale", [1.0, "sqrt_d"])
def test_embedding_matches_numpy(n, vocab, d, n_pos, pos_kind, scale):
    rng = make_rng("emb", n, vocab, d, n_pos, pos_kind, scale)
    scale = math.sqrt(d) if scale == "sqrt_d" else scale
    table = f32(rng.standard_normal((vocab, d)))
    ids = rng.integers(0, vocab, n).astype(np.int32)
    ids[0] = vocab - 1
    positions = rng.integers(0, n_pos, n).astype(np.int32)
    positions[-1] = n_pos - 1
    pos_table = {"none": None, "learned": f32(rng.standard_normal((n_pos, d))),
                 "sinusoidal": embedding.sinusoidal_table(n_pos, d)}[pos_kind]
    want = table[ids].astype(np.float64) * np.float32(scale)
    if pos_table is not None:
        want = want + pos_table[positions]
    out = np.full((n, d), np.nan, np.float32)
    embedding.embedding_forward(ids, positions, table, pos_table, scale, out)
    assert_close(out, want)


def test_embedding_empty_batch():
    out = np.zeros((0, 4), np.float32)
    embedding.embedding_forward(np.zeros(0, np.int32), np.zeros(0, np.int32),
                                f32(np.ones((3, 4))), f32(np.ones((2, 4))), 2.0, out)


def test_embedding_threads_agree():
    rng = make_rng("rows-threads")  # the data of test_ops_ffn.py's test_bias_act_threads_agree
    x0 = f32(rng.standard_normal((301, 67)) * 3)
    rng.standard_normal(67)  # that test's bias: drawn so that what follows is the same data
    ids = rng.integers(0, 50, 301).astype(np.int32)
    positions = rng.integers(0, 40, 301).astype(np.int32)
    table, pos_table = f32(rng.standard_normal((50, 67))), f32(rng.standard_normal((40, 67)))
    for nt in (2, 3):
        a, c = np.zeros_like(x0), np.zeros_like(x0)
        embedding.embedding_forward(ids, positions, table, pos_table, 2.0, a, n_threads=1)
        embedding.embedding_forward(ids, positions, table, pos_table, 2.0, c, n_threads=nt)
        np.testing.assert_allclose(c, a, rtol=THREAD_RTOL, atol=THREAD_ATOL)


@pytest.mark.parametrize("n_pos,d", [(1, 1), (50, 16), (37, 9), (512, 64)])
def test_sinusoidal_table_interleaved_matches_paper(n_pos, d):
    pos = np.arange(n_pos)[:, None].astype(np.float64)
    want = np.zeros((n_pos, d))
    for c in range(d):
        i = c // 2  # PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)
        angle = pos[:, 0] / 10000.0 ** (2.0 * i / d)
        want[:, c] = np.sin(angle) if c % 2 == 0 else np.cos(angle)
    got = embedding.sinusoidal_table(n_pos, d)
    assert got.dtype == np.float32 and got.shape == (n_pos, d)
    np.testing.assert_allclose(got, want, rtol=0, atol=SIN_ATOL)
    # "halves" is the same values, sines first then cosines.
    halves = embedding.sinusoidal_table(n_pos, d, layout="halves")
    half = (d + 1) // 2
    np.testing.assert_array_equal(halves[:, :half], got[:, 0::2])
    np.testing.assert_array_equal(halves[:, half:], got[:, 1::2])


def _marian_weight(n_pos, d):
    transformers = pytest.importorskip("transformers")
    try:
        from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding
    except ImportError:
        pytest.skip(f"transformers {transformers.__version__} has no Marian model")
    emb = MarianSinusoidalPositionalEmbedding(n_pos, d)
    if hasattr(emb, "create_weight"):          # transformers >= 5
        weight = emb.create_weight()
    elif not inspect.signature(emb._init_weight).parameters:
        emb._init_weight()                     # instance method, called by _init_weights
        weight = emb.weight
    else:                                      # older: applied in __init__
        weight = emb.weight
    return weight.detach().numpy()


@pytest.mark.parametrize("n_pos,d", [(64, 16), (33, 9), (512, 512)])
def test_sinusoidal_table_halves_matches_marian(n_pos, d):
    want = _marian_weight(n_pos, d)
    got = embedding.sinusoidal_table(n_pos, d, layout="halves")
    np.testing.assert_allclose(got, want, rtol=0, atol=SIN_ATOL)


# --------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------

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
    assert_grad_close(dtable, want)
    if learned:
        assert_grad_close(dpos, want_pos)


def test_embedding_backward_rejects_bad_ids():
    with pytest.raises(ValueError, match="token id"):
        embedding.embedding_backward(np.array([0, 5], np.int32), np.zeros(2, np.int32),
                                     np.zeros((2, 3), np.float32), 1.0, np.zeros((5, 3), np.float32))


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------

def _emb(ids=(0, 1), positions=(0, 1), V=5, d=4, P=3, out=None, pos_table="default",
         table=None):
    ids_a = np.asarray(ids, np.int32) if not isinstance(ids, np.ndarray) else ids
    pos_a = np.asarray(positions, np.int32)
    table = zeros(V, d) if table is None else table
    pt = zeros(P, d) if isinstance(pos_table, str) else pos_table
    out = zeros(len(ids_a), d) if out is None else out
    return lambda: embedding.embedding_forward(ids_a, pos_a, table, pt, 1.0, out)


BAD_INPUTS = [
    ("emb_id_too_large", _emb(ids=(0, 5)), ValueError, r"token id 5 .*outside \[0, 5\)"),
    ("emb_id_negative", _emb(ids=(-1, 1)), ValueError, "token id -1"),
    ("emb_id_no_pos_table", _emb(ids=(7,), positions=(0,), pos_table=None), ValueError,
     "token id 7"),
    ("emb_position_past_table", _emb(positions=(0, 3)), ValueError, r"position 3 .*\[0, 3\)"),
    ("emb_position_negative", _emb(positions=(-2, 0)), ValueError, "position -2"),
    ("emb_out_shape", _emb(out=zeros(2, 3)), ValueError, "out must"),
    ("emb_pos_table_cols", _emb(pos_table=zeros(3, 5)), ValueError, "pos_table has"),
    ("emb_positions_len", _emb(positions=(0,)), ValueError, "positions must"),
    ("emb_ids_int64", _emb(ids=np.zeros(2, np.int64)), ValueError, "dtype"),
    ("emb_table_float64", _emb(table=zeros(5, 4, dtype=np.float64)), ValueError, "dtype"),
    ("sin_layout", lambda: embedding.sinusoidal_table(4, 4, layout="split"), ValueError,
     "layout"),
    ("sin_d_zero", lambda: embedding.sinusoidal_table(4, 0), ValueError, "d_model"),
    ("sin_n_negative", lambda: embedding.sinusoidal_table(-1, 4), ValueError, "n_positions"),
]


@pytest.mark.parametrize("call,exc,match", bad_input_params(BAD_INPUTS))
def test_bad_input_raises(call, exc, match):
    check_bad_input(call, exc, match)


def test_bad_input_leaves_no_partial_embedding():
    # Range checks run before any row is written.
    out = np.full((3, 4), 7.0, np.float32)
    with pytest.raises(ValueError):
        embedding.embedding_forward(i32(0, 1, 99), i32(0, 1, 2), f32(np.ones((5, 4))), None,
                                    1.0, out)
    np.testing.assert_array_equal(out, 7.0)


def test_embedding_position_past_empty_pos_table():
    with pytest.raises(ValueError, match="position"):
        _emb(positions=(0, 7), P=0)()


# --------------------------------------------------------------------------------------
# quantized tables: int8 rows with a scale each, bf16 rows
# --------------------------------------------------------------------------------------

def _quantized_case(n, vocab, d, n_pos, seed):
    from cyformer._engine import quant

    rng = make_rng("emb-q", n, vocab, d, n_pos, seed)
    w = f32(rng.standard_normal((vocab, d)))
    w[vocab // 2] = 0.0   # an all-zero row (scale 0)
    ids = rng.integers(0, vocab, n).astype(np.int32)
    ids[0] = vocab - 1
    positions = rng.integers(0, n_pos, n).astype(np.int32)
    pos_table = f32(rng.standard_normal((n_pos, d)))
    q, s = quant.quantize_rows(w)
    return w, q, s, quant.to_bfloat16(w), ids, positions, pos_table


@pytest.mark.parametrize("n,vocab,d,n_pos", [(1, 1, 1, 1), (9, 13, 7, 12), (40, 50, 33, 64), (300, 97, 512, 40)])
@pytest.mark.parametrize("with_pos", [True, False], ids=["pos", "nopos"])
def test_int8_embedding_is_numpy_dequantization_exactly(n, vocab, d, n_pos, with_pos):
    from cyformer._engine import quant

    _, q, s, _, ids, positions, pos_table = _quantized_case(n, vocab, d, n_pos, 0)
    pos_table = pos_table if with_pos else None
    scale = np.float32(math.sqrt(d))
    # the row scale and the embedding scale folded into one float32, then one rounding per step
    want = q[ids].astype(np.float32) * (s[ids] * scale)[:, None]
    if pos_table is not None:
        want = want + pos_table[positions]
    for nt in (1, 2, 3):
        out = np.full((n, d), np.nan, np.float32)
        embedding.embedding_forward_int8(ids, positions, q, s, pos_table, scale, out, nt)
        np.testing.assert_array_equal(out, want)
        # the same table packed for the int8 GEMM (a tied output projection's layout)
        out[...] = np.nan
        embedding.embedding_forward_int8(ids, positions, quant.pack_int8(q), s, pos_table, scale, out, nt, packed=True)
        np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("n,vocab,d,n_pos", [(1, 1, 1, 1), (40, 50, 33, 64), (300, 97, 512, 40)])
@pytest.mark.parametrize("with_pos", [True, False], ids=["pos", "nopos"])
def test_bf16_embedding_is_numpy_widening_exactly(n, vocab, d, n_pos, with_pos):
    from cyformer._engine import quant

    _, _, _, b, ids, positions, pos_table = _quantized_case(n, vocab, d, n_pos, 1)
    pos_table = pos_table if with_pos else None
    scale = np.float32(math.sqrt(d))
    want = quant.from_bfloat16(b)[ids] * scale
    if pos_table is not None:
        want = want + pos_table[positions]
    for nt in (1, 2):
        out = np.full((n, d), np.nan, np.float32)
        embedding.embedding_forward_bf16(ids, positions, b, pos_table, scale, out, nt)
        np.testing.assert_array_equal(out, want)


def test_quantized_embedding_close_to_float32():
    # the int8 table's rows are within half a step (max|row| / 254) of the float32 rows
    w, q, s, b, ids, positions, pos_table = _quantized_case(64, 50, 40, 10, 2)
    out, ref = zeros(64, 40), zeros(64, 40)
    embedding.embedding_forward(ids, positions, w, pos_table, 3.0, ref)
    embedding.embedding_forward_int8(ids, positions, q, s, pos_table, 3.0, out)
    step = 3.0 * np.abs(w[ids]).max(axis=1, keepdims=True) / 127
    assert (np.abs(out - ref) <= step / 2 * (1 + 1e-5) + 1e-6).all()
    embedding.embedding_forward_bf16(ids, positions, b, pos_table, 3.0, out)
    # bf16 keeps 8 significant bits: each token element within 2^-8 of itself (times the scale)
    assert (np.abs(out - ref) <= 3.0 * np.abs(w[ids]) * 2 ** -8 * (1 + 1e-3) + 1e-6).all()


def _q_bad(**change):
    _, q, s, b, ids, positions, pos_table = _quantized_case(6, 5, 4, 3, 3)
    args = dict(ids=ids, positions=positions, table=q, row_scale=s, pos_table=pos_table, scale=1.0,
                out=zeros(6, 4))
    args.update(change)
    return lambda: embedding.embedding_forward_int8(**args)


def _b_bad(**change):
    _, _, _, b, ids, positions, pos_table = _quantized_case(6, 5, 4, 3, 3)
    args = dict(ids=ids, positions=positions, table=b, pos_table=pos_table, scale=1.0, out=zeros(6, 4))
    args.update(change)
    return lambda: embedding.embedding_forward_bf16(**args)


QUANT_BAD_INPUTS = [
    ("int8-id-high", _q_bad(ids=np.array([0, 1, 2, 5, 0, 0], np.int32)), ValueError, r"token id 5 .* outside \[0, 5\)"),
    ("int8-id-negative", _q_bad(ids=np.array([0, -1, 2, 3, 0, 0], np.int32)), ValueError, "token id -1"),
    ("int8-position", _q_bad(positions=np.array([0, 1, 2, 3, 0, 0], np.int32)), ValueError, "position 3 is outside"),
    ("int8-scales", _q_bad(row_scale=f32(np.ones(4))), ValueError, "row_scale must have one entry per table row"),
    ("int8-out-shape", _q_bad(out=zeros(6, 5)), ValueError, r"out must be \[6, 4\]"),
    ("int8-float-table", _q_bad(table=f32(np.ones((5, 4)))), ValueError, "dtype|type"),
    ("bf16-id-high", _b_bad(ids=np.array([0, 1, 2, 7, 0, 0], np.int32)), ValueError, r"token id 7 .* outside \[0, 5\)"),
    ("bf16-pos-columns", _b_bad(pos_table=f32(np.ones((3, 2)))), ValueError, "pos_table has 2 columns"),
    ("bf16-int8-table", _b_bad(table=np.ones((5, 4), np.int8)), ValueError, "dtype|type"),
]


@pytest.mark.parametrize("call,exc,match", bad_input_params(QUANT_BAD_INPUTS))
def test_quantized_bad_input_raises(call, exc, match):
    check_bad_input(call, exc, match)
