"""compute_type: Linear's int8 / bf16 forms against the kernels they call, every linear layer of
the models converted (the tied output projection included), the models against their float32
selves, decoding, loading with compute_type, the command line, and the errors."""
import os
import sys

import numpy as np
import pytest

import cyformer
from cyformer import Encoder, EncoderConfig, Transformer, TransformerConfig
from cyformer._engine import quant
from cyformer.layers import Linear
from cyformer.layers.linear import StoredWeight, resolve_compute_type

from _shared import f32, make_rng, max_rel_err

# Logits of a small seeded model against its float32 self, relative to the largest logit:
# int8 rounds every weight and activation to 1/254 of its row's range, bf16 to 2^-9.
INT8_LOGITS_RTOL = 0.05
BF16_LOGITS_RTOL = 0.01

needs_bf16 = pytest.mark.skipif(not quant.bf16_path_supported("avx512bf16"),
                                reason=f"this CPU lacks {quant.BF16_ISA['avx512bf16']}")
COMPUTE_TYPES = ["int8", pytest.param("bfloat16", marks=needs_bf16)]
RTOL = {"int8": INT8_LOGITS_RTOL, "bfloat16": BF16_LOGITS_RTOL}


def _config(**kw):
    c = dict(src_vocab_size=61, tgt_vocab_size=61, d_model=64, n_heads=4, n_encoder_layers=2,
             n_decoder_layers=2, d_ff=128, max_len=40)
    c.update(kw)
    return TransformerConfig(**c)


def _batch(seed=0):
    rng = make_rng("ct-batch", seed)
    src = [list(rng.integers(3, 61, n)) for n in (9, 5, 12)]
    tgt = [[1] + list(rng.integers(3, 61, n - 1)) for n in (7, 4, 10)]
    return src, tgt


# --------------------------------------------------------------------------------------
# Linear
# --------------------------------------------------------------------------------------

def _linear(n=37, k=70, seed=0):
    rng = make_rng("ct-linear", n, k, seed)
    lin = Linear("w", "b", n, k)
    lin.bind({"w": f32(rng.standard_normal((n, k))), "b": f32(rng.standard_normal(n))})
    return lin, f32(rng.standard_normal((6, k)))


def test_linear_int8_calls_the_int8_kernel_on_its_quantized_rows():
    lin, x = _linear()
    lin.set_compute_type("int8", {})
    assert lin.compute_type == "int8" and lin.stored.data.dtype == np.int8
    q, s = quant.quantize_rows(lin.weight)
    np.testing.assert_array_equal(lin.stored.data, q)
    np.testing.assert_array_equal(lin.stored.scale, s)
    np.testing.assert_array_equal(lin.stored.comp, quant.int8_compensation(q))
    out, want = np.zeros((6, 37), np.float32), np.zeros((6, 37), np.float32)
    lin.forward(x, out, 1)
    quant.int8_linear_forward(x, q, s, None, lin.bias, want)
    np.testing.assert_array_equal(out, want)
    lin.forward(x, out, 1, bias=False, accumulate=True)   # the residual / LayerNorm-bias forms
    quant.int8_linear_forward(x, q, s, None, None, want, accumulate=True)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_allclose(lin.stored.dequantize(), lin.weight, atol=float(np.abs(lin.weight).max()) / 254 + 1e-7)


def test_linear_bfloat16_against_float64():
    lin, x = _linear()
    lin.set_compute_type("bfloat16", {})
    assert lin.stored.data.dtype == np.uint16
    out = np.zeros((6, 37), np.float32)
    lin.forward(x, out, 1)
    w = quant.from_bfloat16(lin.stored.data).astype(np.float64)
    xr = quant.from_bfloat16(quant.to_bfloat16(x)) if quant.bf16_path() in ("amx", "avx512bf16") else x
    np.testing.assert_allclose(out, xr.astype(np.float64) @ w.T + lin.bias, rtol=1e-5, atol=1e-5)
    lin.set_compute_type("float32", {})
    assert lin.stored is None and lin.compute_type == "float32"


def _int8_bytes(form):
    return form.data if form.packed is None else form.packed


@pytest.mark.parametrize("n,cut", [(48, 16), (30, 10)])
def test_row_slices_share_one_conversion(n, cut):
    # A fused in-projection and its Q and K/V row slices read one int8 matrix (packed weights:
    # when the cut falls on a block of quant.INT8_PACK_ROWS rows; else the slice is repacked).
    lin, x = _linear(n=n)
    lin._rows = None
    q_part, kv_part = lin.rows(0, cut), lin.rows(cut, n)
    views = {"w": lin.weight, "b": lin.bias}
    for layer in (q_part, kv_part):
        layer.bind(views)
    store = {}
    for layer in (lin, q_part, kv_part):
        layer.set_compute_type("int8", store)
    assert len(store) == 1
    if lin.stored.packed is None or cut % quant.INT8_PACK_ROWS == 0:
        assert np.shares_memory(_int8_bytes(q_part.stored), _int8_bytes(lin.stored))
        assert np.shares_memory(_int8_bytes(kv_part.stored), _int8_bytes(lin.stored))
    np.testing.assert_array_equal(kv_part.stored.data, lin.stored.data[cut:])
    full, part, head = (np.zeros((6, n), np.float32), np.zeros((6, n - cut), np.float32),
                        np.zeros((6, cut), np.float32))
    lin.forward(x, full, 1)
    kv_part.forward(x, part, 1)
    q_part.forward(x, head, 1)
    np.testing.assert_array_equal(part, full[:, cut:])
    np.testing.assert_array_equal(head, full[:, :cut])


def test_stored_weight_rejects_unknown_type():
    with pytest.raises(ValueError, match="no stored form"):
        StoredWeight.quantize(np.zeros((2, 2), np.float32), "int4")


# --------------------------------------------------------------------------------------
# the models
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("compute_type", COMPUTE_TYPES)
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_every_linear_layer_is_converted(compute_type, tied):
    model = Transformer(_config(tie_output=tied, output_bias=not tied), seed=3)
    table = model["decoder.embed_tokens.weight"].copy()
    model.set_compute_type(compute_type)
    assert model.compute_type == compute_type
    layers = model.linear_layers()
    # per layer: in_proj (+ its Q and K/V slices), out_proj, linear1, linear2; + the output projection
    assert len(layers) == 2 * 6 + 2 * (2 * 4 + 2) + 1
    assert all(lin.compute_type == compute_type for lin in layers)
    assert model.generator in layers and model.generator.stored is not None
    # the lookups read the tables in the same form; a tied projection reads the lookup's one matrix
    assert model.src_embed.compute_type == model.tgt_embed.compute_type == compute_type
    assert (model.generator.stored is model.tgt_embed.stored) == tied
    assert model._stored["decoder.embed_tokens.weight"] is model.tgt_embed.stored
    np.testing.assert_array_equal(model.tgt_embed.stored.data, StoredWeight.quantize(table, compute_type).data)


@pytest.mark.parametrize("compute_type", COMPUTE_TYPES)
def test_model_logits_close_to_float32(compute_type):
    model = Transformer(_config(), seed=1)
    src, tgt = _batch()
    want = model.forward(src, tgt)
    enc = model.encode(src)
    model.set_compute_type(compute_type, keep_float32=True)
    got = model.forward(src, tgt)
    assert 0 < max_rel_err(got, want) < RTOL[compute_type]
    assert max_rel_err(model.encode(src), enc) < RTOL[compute_type]
    model.set_compute_type("float32")   # the float32 weights were kept: exactly the model again
    np.testing.assert_array_equal(model.forward(src, tgt), want)


@pytest.mark.parametrize("compute_type", COMPUTE_TYPES)
def test_converting_releases_the_float32_matrices(compute_type):
    model = Transformer(_config(tie_output=False), seed=1)
    src, tgt = _batch()
    model.set_compute_type(compute_type)
    got = model.forward(src, tgt)
    names = set(model.storable_matrices())
    assert model._float_pending == names
    # the pages are the system's again: an anonymous buffer reads zeros, all but the two
    # partial pages at the ends of the matrix
    big = model._views["decoder.layers.0.linear1.weight"]
    assert np.count_nonzero(big) <= 2 * 4096 // 4 < big.size
    # asked for, the float32 values come back from the stored form, with a warning
    with pytest.warns(UserWarning, match="re-derived"):
        w = model["encoder.layers.0.linear1.weight"]
    np.testing.assert_array_equal(w, model.encoder.layers[0].ffn.linear1.stored.dequantize())
    with pytest.warns(UserWarning, match="re-derived"):
        model.set_compute_type("float32")
    assert not model._float_pending
    np.testing.assert_allclose(model.forward(src, tgt), got, rtol=0, atol=RTOL[compute_type] * np.abs(got).max())


def test_int8_model_is_thread_independent():
    model = Transformer(_config(), seed=2)
    model.set_compute_type("int8")
    src, tgt = _batch(1)
    outs = []
    old = cyformer.get_num_threads()
    try:
        for nt in (1, 2):
            cyformer.set_num_threads(nt)
            outs.append(model.forward(src, tgt).copy())
    finally:
        cyformer.set_num_threads(old)
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("compute_type", COMPUTE_TYPES)
def test_decoding_with_a_compute_type(compute_type):
    # greedy, beam search with n-best and scores, sampling and step-wise generation all run
    # over the converted layers; the decoded tokens equal the incremental path's logits'.
    model = Transformer(_config(), seed=5)
    src, _ = _batch(2)
    model.set_compute_type(compute_type)
    greedy = model.generate(src, beam_size=1, max_length=8, return_scores=True)
    beam = model.generate(src, beam_size=4, num_hypotheses=2, max_length=8, return_scores=True)
    assert len(greedy) == len(beam) == 3 and all(len(r.sequences) == 2 for r in beam)
    steps = [s.token_id for s in model.generate_tokens(src[0], max_length=8)]
    assert steps[:len(greedy[0].sequences[0])] == list(greedy[0].sequences[0])
    # the first greedy token is the argmax of the teacher-forced logits of the start token
    logits = model.forward([src[0]], [[model.config.decoder_start_id]])
    assert greedy[0].sequences[0][0] == int(np.argmax(logits[0, 0]))
    sampled = model.generate(src, beam_size=1, sampling_topk=5, seed=3, max_length=6)
    assert len(sampled) == 3


@pytest.mark.parametrize("compute_type", COMPUTE_TYPES)
def test_amx_model_runs_the_whole_model(compute_type):
    # The AMX bodies (on the software model of the tiles where the CPU has none) under a whole
    # model: its GEMMs of 16 rows and more (encoder, teacher-forced decoder, the memory's
    # projections) go to the tiles. int8: the same bits as the VNNI512 body. bf16: the kernels
    # agree to float32 accumulation order (test_ops_quant), but an activation a last bit apart
    # can round to the neighbouring bf16 value in the next layer, 2^-8 apart: the logits agree
    # to that, and the greedy tokens are the same.
    from cyformer._engine.linear_paths import AMX_MODEL, forced_bf16_path, forced_int8_path

    if not quant.int8_path_supported("vnni512"):
        pytest.skip(f"the AMX model's stores need {quant.INT8_ISA['vnni512']}")
    forced = forced_int8_path if compute_type == "int8" else forced_bf16_path
    below = "vnni512" if compute_type == "int8" else "avx512bf16"
    model = Transformer(_config(), seed=7)
    src, tgt = _batch(3)
    model.set_compute_type(compute_type)
    with forced(below):
        want = model.forward(src, tgt)
        want_tokens = model.generate(src, beam_size=1, max_length=8)
    with forced(AMX_MODEL):
        ops = quant.amx_model_counts()
        got = model.forward(src, tgt)
        got_tokens = model.generate(src, beam_size=1, max_length=8)
        ops1 = quant.amx_model_counts()
    assert ops1[0] > ops[0] and ops1[1] == ops[1]   # tiles ran, none in a shape the CPU rejects
    if compute_type == "int8":
        np.testing.assert_array_equal(got, want)
    else:
        assert max_rel_err(got, want) < 2.0 ** -8
    assert [r.sequences for r in got_tokens] == [r.sequences for r in want_tokens]


def test_training_refuses_a_quantized_model():
    from cyformer.training import Trainer

    model = Transformer(_config(), seed=0)
    model.set_compute_type("int8")
    with pytest.raises(ValueError, match="training needs compute_type='float32'"):
        Trainer(model)
    # a Linear asked for gradients in int8 says so too
    lin, x = _linear()
    lin.set_compute_type("int8", {})
    with pytest.raises(RuntimeError, match="compute_type='float32'"):
        lin.backward(x, np.ones((6, 37), np.float32), None, {"w": np.zeros_like(lin.weight), "b": None}, 1)


def test_new_weights_are_converted_again():
    model = Transformer(_config(), seed=0)
    model.set_compute_type("int8")
    other = Transformer(_config(), seed=9)
    fresh = Transformer(_config(), seed=9)
    model.load_state_dict(other.state_dict())
    src, tgt = _batch()
    other.set_compute_type("int8")
    np.testing.assert_array_equal(model.forward(src, tgt), other.forward(src, tgt))
    model.params = fresh.params.copy()   # a new buffer: the views and their int8 forms again
    assert model.compute_type == "int8" and model.generator.stored is not None
    np.testing.assert_array_equal(model.forward(src, tgt), other.forward(src, tgt))


def test_encoder_compute_type(tmp_path):
    enc = Encoder(EncoderConfig(vocab_size=40, d_model=32, n_heads=2, d_ff=64, n_layers=2, max_len=12), seed=1)
    ids = [[3, 4, 5, 6, 7], [8, 9, 2]]
    want = enc.forward(ids)
    enc.set_compute_type("int8", keep_float32=True)
    assert all(lin.compute_type == "int8" for lin in enc.linear_layers()) and enc.linear_layers()
    assert max_rel_err(enc.forward(ids), want) < INT8_LOGITS_RTOL
    enc.set_compute_type("float32")
    enc.save_pretrained(str(tmp_path))
    loaded = Encoder.from_pretrained(str(tmp_path), compute_type="int8")
    assert loaded.compute_type == "int8"
    assert max_rel_err(loaded.forward(ids), want) < INT8_LOGITS_RTOL


# --------------------------------------------------------------------------------------
# loading, the Translator, the command line
# --------------------------------------------------------------------------------------

def test_from_pretrained_compute_type(tmp_path):
    model = Transformer(_config(), seed=4)
    model.save_pretrained(str(tmp_path))
    src, tgt = _batch()
    want = model.forward(src, tgt)
    assert Transformer.from_pretrained(str(tmp_path)).compute_type == "float32"
    q = Transformer.from_pretrained(str(tmp_path), compute_type="int8")
    assert q.compute_type == "int8"
    model.set_compute_type("int8")
    np.testing.assert_array_equal(q.forward(src, tgt), model.forward(src, tgt))
    auto = Transformer.from_pretrained(str(tmp_path), compute_type="auto")
    assert auto.compute_type == resolve_compute_type("auto")
    assert max_rel_err(q.forward(src, tgt), want) < INT8_LOGITS_RTOL


@pytest.fixture(scope="module")
def marian_folder(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from _reference import marian_model, sentencepiece_folder
    directory = tmp_path_factory.mktemp("marian-ct")
    vocab = sentencepiece_folder(str(directory))
    marian_model(directory, vocab=len(vocab), seed=2)
    return str(directory)


def test_translator_and_cli_compute_type(marian_folder, tmp_path, capsys, monkeypatch):
    import io

    from cyformer import Translator
    from cyformer.cli import main
    from _reference import toy_sentences

    texts = toy_sentences(np.random.default_rng(1), 5)
    tr = Translator.from_pretrained(marian_folder, compute_type="int8")
    assert tr.model.compute_type == "int8"
    want = tr.translate(texts, beam_size=2, max_length=10)
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(texts) + "\n"))
    code = main(["translate", marian_folder, "--compute-type", "int8", "--beam-size", "2", "--max-length", "10",
                 "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.split("\n")[:-1] == want


def test_cli_compute_type_errors(capsys):
    from cyformer.cli import main

    code = main(["bench", "--task", "train", "--compute-type", "int8", "--no-compare"])
    err = capsys.readouterr().err
    assert code == 2 and "training runs in float32" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["translate", "x", "--compute-type", "int4"])


def test_info_names_the_kernels(capsys):
    from cyformer.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"int8: {quant.int8_path()}" in out and f"bfloat16: {quant.bf16_path()}" in out
    assert f"auto: {resolve_compute_type('auto')}" in out


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------

def test_bad_compute_type(tmp_path):
    model = Transformer(_config(), seed=0)
    with pytest.raises(ValueError, match="compute_type must be one of"):
        model.set_compute_type("int4")
    with pytest.raises(TypeError, match="compute_type must be a str"):
        model.set_compute_type(8)
    with pytest.raises(ValueError, match="compute_type must be one of"):
        Transformer.from_pretrained(str(tmp_path), compute_type="fp16")   # before the folder is read
    assert model.compute_type == "float32"


def test_missing_instruction_set_is_named(monkeypatch):
    model = Transformer(_config(), seed=0)
    monkeypatch.setattr(quant, "best_bf16_path", lambda: "f32")
    with pytest.raises(ValueError, match="bfloat16.*AVX-512 BF16"):
        model.set_compute_type("bfloat16")
    monkeypatch.setattr(quant, "best_int8_path", lambda: "portable")
    with pytest.raises(ValueError, match="int8.*AVX2"):
        model.set_compute_type("int8")
    model.set_compute_type("auto")   # falls back to float32 where nothing runs natively
    assert model.compute_type == "float32"


# --------------------------------------------------------------------------------------
# checkpoints in int8 / bf16
# --------------------------------------------------------------------------------------

def _saved(tmp_path, compute_type, **kw):
    model = Transformer(_config(**kw), seed=6)
    model.set_compute_type(compute_type)
    model.save_pretrained(str(tmp_path))
    return model, os.path.join(str(tmp_path), "model.safetensors")


@pytest.mark.parametrize("compute_type", COMPUTE_TYPES)
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_quantized_checkpoint_round_trip(tmp_path, compute_type, tied):
    from cyformer.io import read_safetensors_header, safetensors_metadata

    model, path = _saved(tmp_path, compute_type, tie_output=tied)
    header, _, _ = read_safetensors_header(path)
    code = {"int8": "I8", "bfloat16": "BF16"}[compute_type]
    assert safetensors_metadata(path)["compute_type"] == compute_type
    stored = set(model.storable_matrices())
    # every linear matrix, the source and target tables (a tied projection reads the target's)
    assert len(stored) == 2 * 4 + 2 * 6 + 2 + (0 if tied else 1)
    assert {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"} <= stored
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if name in stored:
            assert info["dtype"] == code
        elif name.endswith("_scale"):
            assert compute_type == "int8" and name[:-len("_scale")] in stored and info["dtype"] == "F32"
        else:
            assert info["dtype"] == "F32", name
    # 4x (int8) or 2x (bf16) smaller matrices
    assert os.path.getsize(path) < 0.6 * 4 * model.num_parameters
    src, tgt = _batch()
    want = model.forward(src, tgt)
    loaded = Transformer.from_pretrained(str(tmp_path), verify=True)
    assert loaded.compute_type == compute_type
    np.testing.assert_array_equal(loaded.forward(src, tgt), want)
    # the matrices are the file's pages, not copies, unless the int8 body reads them packed
    # (one copy in its layout, made at load)
    form = loaded.encoder.layers[0].ffn.linear1.stored
    if form.packed is None:
        assert any(isinstance(b, np.memmap) for b in _bases(form.data))
    else:
        assert compute_type == "int8" and quant.int8_packs()
    # saving the loaded model writes the same file
    loaded.save_pretrained(str(tmp_path / "again"))
    with open(path, "rb") as a, open(tmp_path / "again" / "model.safetensors", "rb") as b:
        assert a.read() == b.read()
    # decoding and beam search run on the loaded forms
    assert model.generate(src, beam_size=3, max_length=6)[0].sequences == \
        loaded.generate(src, beam_size=3, max_length=6)[0].sequences
    # asked for float32: the matrices are dequantized into the float32 buffer
    f = Transformer.from_pretrained(str(tmp_path), compute_type="float32")
    assert f.compute_type == "float32"
    ref = Transformer(_config(tie_output=tied), seed=6).forward(src, tgt)
    assert max_rel_err(f.forward(src, tgt), ref) < RTOL[compute_type]


def _bases(a):
    while a is not None:
        yield a
        a = getattr(a, "base", None)


def test_quantized_checkpoint_parameters_are_dequantized_on_demand(tmp_path):
    model, _ = _saved(tmp_path, "int8")
    loaded = Transformer.from_pretrained(str(tmp_path))
    name = "encoder.layers.0.linear1.weight"
    w = loaded[name]   # the float32 view, filled from the int8 form
    form = loaded.encoder.layers[0].ffn.linear1.stored
    np.testing.assert_array_equal(w, form.dequantize())
    assert loaded.compute_type == "int8"


def _rewrite(path, change):
    from cyformer.io import load_safetensors, safetensors_metadata, save_safetensors

    tensors = {k: np.array(v) for k, v in load_safetensors(path, mmap=False, widen_bf16=False).items()}
    meta = safetensors_metadata(path)
    meta.pop("crc32", None)
    change(tensors)
    save_safetensors(path, tensors, meta)


DAMAGE = [
    ("scale-missing", lambda t: t.pop("encoder.layers.0.linear1.weight_scale"),
     r"missing: encoder.layers.0.linear1.weight_scale \(the per-row scales"),
    ("scale-dtype", lambda t: t.update({"encoder.layers.0.linear1.weight_scale":
                                        t["encoder.layers.0.linear1.weight_scale"].astype(np.float64)}),
     "weight_scale: expected F32"),
    ("scale-shape", lambda t: t.update({"encoder.layers.0.linear1.weight_scale":
                                        t["encoder.layers.0.linear1.weight_scale"][:-1]}),
     "weight_scale: expected F32"),
    ("scale-nan", lambda t: t["encoder.layers.0.linear1.weight_scale"].__setitem__(0, np.nan),
     "scales must be finite"),
    ("matrix-dtype", lambda t: t.update({"encoder.layers.0.linear1.weight":
                                         t["encoder.layers.0.linear1.weight"].astype(np.int16)}),
     "linear1.weight: dtype I16, expected F32 or I8"),
    ("norm-int8", lambda t: t.update({"encoder.layers.0.norm1.weight":
                                      t["encoder.layers.0.norm1.weight"].astype(np.int8)}),
     "norm1.weight: dtype I8, expected F32 in a int8 checkpoint"),
    ("matrix-shape", lambda t: t.update({"encoder.layers.0.linear1.weight":
                                         t["encoder.layers.0.linear1.weight"][:-1]}),
     "mis-shaped: encoder.layers.0.linear1.weight"),
    ("matrix-missing", lambda t: t.pop("decoder.layers.1.linear2.weight"), "missing: decoder.layers.1.linear2.weight"),
    ("stray-scale", lambda t: t.update({"encoder.layers.0.norm1.weight_scale": np.ones(64, np.float32)}),
     "unexpected: encoder.layers.0.norm1.weight_scale"),
]


@pytest.mark.parametrize("change,match", [pytest.param(c, m, id=i) for i, c, m in DAMAGE])
def test_inconsistent_quantized_checkpoint(tmp_path, change, match):
    from cyformer.io import CheckpointError

    _, path = _saved(tmp_path, "int8")
    _rewrite(path, change)
    with pytest.raises(CheckpointError, match=match):
        Transformer.from_pretrained(str(tmp_path))


def test_truncated_quantized_checkpoint(tmp_path):
    from cyformer.io import CheckpointError

    _, path = _saved(tmp_path, "int8")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(CheckpointError, match="truncated"):
        Transformer.from_pretrained(str(tmp_path))


def test_corrupt_quantized_checkpoint_fails_verify(tmp_path):
    from cyformer.io import CheckpointError

    _, path = _saved(tmp_path, "int8")
    with open(path, "r+b") as f:
        f.seek(-5, os.SEEK_END)
        f.write(b"\x7f")
    with pytest.raises(CheckpointError, match="checksum"):
        Transformer.from_pretrained(str(tmp_path), verify=True)


def test_unknown_stored_compute_type(tmp_path):
    from cyformer.io import CheckpointError, load_safetensors, safetensors_metadata, save_safetensors

    _, path = _saved(tmp_path, "int8")
    meta = safetensors_metadata(path)
    tensors = {k: np.array(v) for k, v in load_safetensors(path, mmap=False, widen_bf16=False).items()}
    meta["compute_type"] = "int4"
    save_safetensors(path, tensors, meta)
    with pytest.raises(CheckpointError, match="unknown compute_type 'int4'"):
        Transformer.from_pretrained(str(tmp_path))
