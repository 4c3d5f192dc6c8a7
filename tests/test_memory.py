"""Memory of quantized models (issue 10, item 5), tested by mechanism rather than by RSS:

* which float32 pages of the parameter buffer are resident after ``compute_type="int8"`` /
  ``"bfloat16"`` (read from /proc/self/pagemap, the process's own page table: deterministic,
  whatever else the machine runs);
* what a load allocates (tracemalloc: no float32 copy of a matrix, let alone of the model,
  beyond one block, and the float32 buffer's matrices never written);
* where the float32 values come from afterwards: exactly from the file (a cyformer float32
  checkpoint memory-mapped and not written to, a MarianMT folder), else re-derived with a warning;
* quantized checkpoints with their int8 / bf16 embedding tables, mapped, for Transformer and
  Encoder, and the tied output projection reading the lookup's one matrix.
"""
import os
import tracemalloc
import warnings

import numpy as np
import pytest

import cyformer.model as model_mod
from cyformer import Encoder, EncoderConfig, Transformer, TransformerConfig
from cyformer._engine import quant
from cyformer.io import read_safetensors_header

from _shared import make_rng, max_rel_err

needs_bf16 = pytest.mark.skipif(not quant.bf16_path_supported("avx512bf16"),
                                reason=f"this CPU lacks {quant.BF16_ISA['avx512bf16']}")
COMPUTE_TYPES = ["int8", pytest.param("bfloat16", marks=needs_bf16)]
# logits against the float32 model, relative to the largest logit (as test_compute_type.py)
LOGITS_RTOL = {"int8": 0.05, "bfloat16": 0.01}
PAGE = os.sysconf("SC_PAGE_SIZE")
# what a load may allocate beyond the weights it ends with (views, layers, headers, one block):
# half the 1 MiB table of the test model, so a float32 copy of any table would exceed it
SLACK = 512 * 1024
FAULT_AROUND_PAGES = 2 * 16


def _config(**kw):
    # matrices of several pages (the 4096 x 64 tables are 1 MiB), so the page checks mean something
    c = dict(src_vocab_size=4096, tgt_vocab_size=4096, d_model=64, n_heads=4, n_encoder_layers=2,
             n_decoder_layers=2, d_ff=256, max_len=32, share_embeddings=True, tie_output=True,
             scale_embedding=True, positional="sinusoidal", sinusoidal_layout="halves", output_bias=True,
             norm_first=False, final_norm=False, activation="silu", pad_id=4095, bos_id=4095, eos_id=0,
             decoder_start_id=4095)
    c.update(kw)
    return TransformerConfig(**c)


def _batch(seed=0):
    rng = make_rng("mem-batch", seed)
    src = [list(rng.integers(3, 4000, n)) for n in (9, 5, 12)]
    tgt = [[4095] + list(rng.integers(3, 4000, n - 1)) for n in (7, 4, 10)]
    return src, tgt


def _resident_pages(a: np.ndarray) -> int:
    """Pages wholly inside ``a`` that this process has in memory (present or swapped), from
    /proc/self/pagemap: bit 63 present, bit 62 swapped."""
    start = a.ctypes.data
    lo, hi = -(-start // PAGE), (start + a.nbytes) // PAGE
    if hi <= lo:
        return 0
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(lo * 8)
        entries = np.frombuffer(f.read((hi - lo) * 8), dtype="<u8")
    return int(np.count_nonzero(entries & np.uint64(3 << 62)))


def _pagemap_readable() -> bool:
    try:
        a = np.ones(4 * PAGE // 4, np.float32)
        return _resident_pages(a) > 0
    except OSError:
        return False


needs_pagemap = pytest.mark.skipif(not _pagemap_readable(), reason="/proc/self/pagemap is not readable here")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A float32 cyformer checkpoint and the same model as a MarianMT folder (our exporter)."""
    root = tmp_path_factory.mktemp("mem")
    model = Transformer(_config(), seed=3)
    model.save_pretrained(str(root / "f32"))
    model.save_pretrained(str(root / "marian"), format="marian")
    return model, str(root / "f32"), str(root / "marian")


def _matrices(model):
    return [model._views[n] for n in model.storable_matrices()]


# --------------------------------------------------------------------------------------
# the tables in int8 / bf16
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("compute_type", COMPUTE_TYPES)
def test_tied_projection_and_lookups_read_one_matrix(folders, compute_type):
    ref, f32_dir, _ = folders
    model = Transformer.from_pretrained(f32_dir, compute_type=compute_type)
    form = model.tgt_embed.stored
    assert form is model.src_embed.stored is model.generator.stored   # shared tables, tied output
    assert form.dtype == compute_type and form.data.shape == (4096, 64)
    want = quant.quantize_rows(ref["encoder.embed_tokens.weight"])[0] if compute_type == "int8" else \
        quant.to_bfloat16(ref["encoder.embed_tokens.weight"])
    np.testing.assert_array_equal(form.data, want)
    src, tgt = _batch()
    assert max_rel_err(model.forward(src, tgt), ref.forward(src, tgt)) < LOGITS_RTOL[compute_type]
    # one decoding step looks the rows up in the int8 table: the same logits as teacher forcing
    state = model.start_decoding([src[0]])
    step = model.decode_step(state, np.array([4095], np.int32))
    np.testing.assert_allclose(step[0], model.forward([src[0]], [[4095]])[0, 0], rtol=1e-5, atol=1e-5)


def test_untied_tables_are_each_converted():
    model = Transformer(_config(share_embeddings=False, tie_output=False), seed=1)
    model.set_compute_type("int8")
    forms = {id(model.src_embed.stored), id(model.tgt_embed.stored), id(model.generator.stored)}
    assert len(forms) == 3
    assert {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
            "output_projection.weight"} <= set(model._stored)


def test_a_quantized_model_refuses_embedding_gradients():
    from cyformer.layers.base import TrainContext

    model = Transformer(_config(), seed=0)
    model.set_compute_type("int8")
    with pytest.raises(RuntimeError, match="training needs compute_type='float32'"):
        model.tgt_embed.backward(None, np.zeros((1, 64), np.float32),
                                 TrainContext(None, {}, 1, 0, False, 0.0))


# --------------------------------------------------------------------------------------
# no float32 copy resident
# --------------------------------------------------------------------------------------

@needs_pagemap
@pytest.mark.parametrize("source", ["cyformer", "marian", "in-memory"])
@pytest.mark.parametrize("compute_type", COMPUTE_TYPES)
def test_no_float32_matrix_pages_resident(folders, source, compute_type):
    _, f32_dir, marian_dir = folders
    if source == "in-memory":
        model = Transformer(_config(), seed=3)
        assert sum(_resident_pages(v) for v in _matrices(model)) > 0   # drawn: resident
        model.set_compute_type(compute_type)
    else:
        model = Transformer.from_pretrained(f32_dir if source == "cyformer" else marian_dir,
                                            compute_type=compute_type)
    src, tgt = _batch()
    model.forward(src, tgt)
    model.generate(src, beam_size=2, max_length=4)
    resident = [_resident_pages(v) for v in _matrices(model)]
    if model_mod.file_mapped(model._params):
        # reading a bias next to a matrix maps the neighbouring pages the page cache holds
        # (the kernel's fault-around, at most 16 pages on each side): the file's, not copies
        assert max(resident) <= FAULT_AROUND_PAGES, resident
    else:
        assert resident == [0] * len(resident)
    # what the model computes with: the stored forms plus the float32 biases, norms and positions
    assert model.weight_bytes() < {"int8": 0.3, "bfloat16": 0.55}[compute_type] * 4 * model.num_parameters


@needs_pagemap
def test_quantizing_a_mapped_checkpoint_leaves_the_matrices_in_the_file(folders):
    # float32: the buffer is the mapped file; int8: the small tensors move to a buffer of their
    # own (read through the map they would fault in the matrices around them), and the
    # matrices stay in the file, none of their pages mapped, as the source of float32 values
    _, f32_dir, _ = folders
    model = Transformer.from_pretrained(f32_dir)
    assert isinstance(model._params, np.memmap)
    model.set_compute_type("int8")
    assert not model_mod.file_mapped(model._params)
    assert set(model._float_source) == set(model.storable_matrices()) == model._float_pending
    src, tgt = _batch()
    model.forward(src, tgt)
    in_file = [parts[0][1] for parts, _ in model._float_source.values()]
    assert all(model_mod.file_mapped(a) for a in in_file)
    assert max(_resident_pages(a) for a in in_file) <= FAULT_AROUND_PAGES


# --------------------------------------------------------------------------------------
# float32 again after int8: from the file, exactly, or re-derived with a warning
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["cyformer", "marian"])
def test_float32_after_int8_rereads_the_file(folders, source):
    ref, f32_dir, marian_dir = folders
    model = Transformer.from_pretrained(f32_dir if source == "cyformer" else marian_dir, compute_type="int8")
    src, tgt = _batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # exact: no "re-derived" warning
        model.set_compute_type("float32")
        np.testing.assert_array_equal(model.params, ref.params)
    np.testing.assert_array_equal(model.forward(src, tgt), ref.forward(src, tgt))
    # and it trains: a step moves the weights (the Trainer copies a mapped buffer first)
    from cyformer.training import Trainer

    trainer = Trainer(model, schedule="constant", lr=1e-3)
    before = model["decoder.layers.0.linear1.weight"].copy()
    trainer.step(src, [t[1:] + [0] for t in tgt])
    assert not np.array_equal(model["decoder.layers.0.linear1.weight"], before)


def test_written_mapped_buffer_is_not_reread(folders):
    # a float32 view handed out may have been written: the file no longer speaks for it
    _, f32_dir, _ = folders
    model = Transformer.from_pretrained(f32_dir)
    w = model["encoder.layers.0.linear1.weight"]
    w *= 2.0
    model.set_compute_type("int8")
    with pytest.warns(UserWarning, match="re-derived"):
        model.set_compute_type("float32")
    np.testing.assert_allclose(model["encoder.layers.0.linear1.weight"], w, atol=float(np.abs(w).max()) / 200)


def test_keep_float32_keeps_the_exact_values(folders):
    ref, _, marian_dir = folders
    model = Transformer.from_pretrained(marian_dir)
    model.set_compute_type("int8", keep_float32=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.set_compute_type("float32")
    np.testing.assert_array_equal(model.params, ref.params)


# --------------------------------------------------------------------------------------
# loading: tensor by tensor, no whole-model copies
# --------------------------------------------------------------------------------------

@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(model_mod, "_BLOCK_BYTES", 8192)   # many blocks per matrix


def _traced_peak(fn):
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("compute_type", ["float32", "int8"])
def test_marian_load_allocates_the_final_weights_only(folders, small_blocks, compute_type):
    ref, _, marian_dir = folders
    f32_bytes = 4 * ref.num_parameters
    model, peak = _traced_peak(lambda: Transformer.from_pretrained(marian_dir, compute_type=compute_type))
    # the float32 buffer (allocated whole, its matrices never written when quantizing), the
    # stored forms, and small things (views, layers: less than the 1 MiB table): no fused q/k/v
    # copy, no float32 copy of a table
    slack = SLACK
    assert peak <= f32_bytes + (model.weight_bytes() - model.float_weight_bytes()) + slack
    if compute_type == "int8":
        np.testing.assert_array_equal(model.generator.stored.data,
                                      quant.quantize_rows(ref["encoder.embed_tokens.weight"])[0])
    else:
        np.testing.assert_array_equal(model.params, ref.params)


def test_quantizing_a_mapped_checkpoint_allocates_no_float32_copy(folders, small_blocks):
    ref, f32_dir, _ = folders
    model, peak = _traced_peak(lambda: Transformer.from_pretrained(f32_dir, compute_type="int8"))
    # the mapped file is not traced; the buffer that takes the small tensors is allocated whole
    # (its matrices never written), then the int8 forms, a block at a time
    assert peak <= 4 * ref.num_parameters + (model.weight_bytes() - model.float_weight_bytes()) + SLACK


def test_block_conversion_is_the_whole_matrix_conversion(small_blocks):
    rng = make_rng("mem-blocks")
    w = rng.standard_normal((300, 70)).astype(np.float32)
    parts = [(0, w[:100]), (100, w[100:250]), (250, w[250:])]
    form = model_mod.quantize_blocks(w.shape, parts, "int8", release=False)
    q, s = quant.quantize_rows(w)
    np.testing.assert_array_equal(form.data, q)
    np.testing.assert_array_equal(form.scale, s)
    np.testing.assert_array_equal(form.comp, quant.int8_compensation(q))
    np.testing.assert_array_equal(model_mod.quantize_blocks(w.shape, parts, "bfloat16", release=False).data,
                                  quant.to_bfloat16(w))
    out = np.zeros_like(w)
    model_mod.copy_blocks(out, parts, release=False)
    np.testing.assert_array_equal(out, w)


def test_release_is_only_for_file_maps(tmp_path):
    a = np.ones(1 << 16, np.float32)
    assert not model_mod.file_mapped(a) and not model_mod.file_mapped(a[10:])
    path = tmp_path / "x.bin"
    a.tofile(path)
    m = np.memmap(path, dtype=np.float32, mode="c")
    assert model_mod.file_mapped(m[5:].reshape(-1)[:7])


# --------------------------------------------------------------------------------------
# quantized checkpoints: the tables too, mapped
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("compute_type", COMPUTE_TYPES)
def test_quantized_checkpoint_holds_the_tables(folders, tmp_path, compute_type):
    ref, f32_dir, _ = folders
    model = Transformer.from_pretrained(f32_dir, compute_type=compute_type)
    model.save_pretrained(str(tmp_path))
    header, _, _ = read_safetensors_header(str(tmp_path / "model.safetensors"))
    code = {"int8": "I8", "bfloat16": "BF16"}[compute_type]
    assert header["encoder.embed_tokens.weight"]["dtype"] == code
    assert ("encoder.embed_tokens.weight_scale" in header) == (compute_type == "int8")
    loaded = Transformer.from_pretrained(str(tmp_path))
    assert loaded.compute_type == compute_type
    form = loaded.tgt_embed.stored
    if form.packed is None:
        assert isinstance(form.data.base, np.ndarray)
        assert model_mod.file_mapped(form.data)   # the file's pages, not a copy
    else:   # tied to the output projection: one copy in the int8 GEMM's layout, read by both
        assert compute_type == "int8" and form.packed is loaded.generator.stored.packed
    assert loaded.generator.stored is loaded.tgt_embed.stored
    src, tgt = _batch()
    np.testing.assert_array_equal(loaded.forward(src, tgt), model.forward(src, tgt))
    # float32 from an int8 checkpoint: dequantized (the file holds nothing else), no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded.set_compute_type("float32")
    assert max_rel_err(loaded.forward(src, tgt), ref.forward(src, tgt)) < LOGITS_RTOL[compute_type]


def test_older_int8_checkpoint_with_a_float32_table_loads(folders, tmp_path):
    # checkpoints written before the tables were quantized hold them in F32: converted at load
    from cyformer.io import load_safetensors, safetensors_metadata, save_safetensors

    ref, f32_dir, _ = folders
    model = Transformer.from_pretrained(f32_dir, compute_type="int8")
    model.save_pretrained(str(tmp_path))
    path = str(tmp_path / "model.safetensors")
    tensors = {k: np.array(v) for k, v in load_safetensors(path, mmap=False, widen_bf16=False).items()}
    meta = safetensors_metadata(path)
    meta.pop("crc32")
    tensors["encoder.embed_tokens.weight"] = ref["encoder.embed_tokens.weight"].copy()
    del tensors["encoder.embed_tokens.weight_scale"]
    save_safetensors(path, tensors, meta)
    loaded = Transformer.from_pretrained(str(tmp_path))
    np.testing.assert_array_equal(loaded.tgt_embed.stored.data, model.tgt_embed.stored.data)
    src, tgt = _batch()
    np.testing.assert_array_equal(loaded.forward(src, tgt), model.forward(src, tgt))


def _encoder():
    return Encoder(EncoderConfig(vocab_size=3000, d_model=48, n_heads=4, d_ff=96, n_layers=2, max_len=16,
                                 type_vocab_size=2, head="sequence_classification", n_labels=3), seed=2)


@pytest.mark.parametrize("compute_type", COMPUTE_TYPES)
def test_encoder_saves_and_maps_its_quantized_form(tmp_path, compute_type):
    enc = _encoder()
    ids = [[3, 4, 5, 6, 7], [8, 9, 2]]
    want = enc.forward(ids)
    enc.set_compute_type(compute_type)
    assert enc.embeddings.stored is not None and enc.embeddings.stored.dtype == compute_type
    got = enc.forward(ids)
    assert max_rel_err(got, want) < LOGITS_RTOL[compute_type]
    enc.save_pretrained(str(tmp_path))
    path = str(tmp_path / "model.safetensors")
    header, _, _ = read_safetensors_header(path)
    code = {"int8": "I8", "bfloat16": "BF16"}[compute_type]
    assert header["embed_tokens.weight"]["dtype"] == code
    assert header["encoder.layers.0.linear1.weight"]["dtype"] == code
    assert header["embed_positions.weight"]["dtype"] == "F32"   # small: stays float32
    assert os.path.getsize(path) < 0.6 * 4 * enc.num_parameters
    loaded = Encoder.from_pretrained(str(tmp_path), verify=True)
    assert loaded.compute_type == compute_type
    assert model_mod.file_mapped(loaded.embeddings.stored.data)
    np.testing.assert_array_equal(loaded.forward(ids), got)
    np.testing.assert_array_equal(loaded.classify(ids), enc.classify(ids))


def test_new_values_replace_the_stored_forms():
    # init_parameters rewrites every float32 value: the int8 forms are derived again from them
    model = Transformer(_config(), seed=0)
    model.set_compute_type("int8")
    model.init_parameters(seed=5)
    other = Transformer(_config(), seed=5)
    other.set_compute_type("int8")
    src, tgt = _batch()
    np.testing.assert_array_equal(model.forward(src, tgt), other.forward(src, tgt))


def test_import_loads_the_kernels_blas_without_scipy_linalg():
    # `import cyformer` maps SciPy's BLAS for the kernels (scipy.linalg.cython_blas) without
    # importing the scipy.linalg package (resident memory that no kernel uses); the kernels'
    # BLAS calls work, and a later `import scipy.linalg` still works
    import subprocess
    import sys

    code = ("import sys, numpy as np, cyformer\n"
            "assert 'scipy.linalg' not in sys.modules, 'scipy.linalg was imported'\n"
            "assert 'scipy.linalg.cython_blas' in sys.modules\n"
            "from cyformer._engine.linear import linear_forward\n"
            "x = np.ones((300, 64), np.float32); w = np.ones((32, 64), np.float32)\n"
            "out = np.empty((300, 32), np.float32); linear_forward(x, w, None, out)\n"
            "assert (out == 64).all()\n"
            "import scipy.linalg\n"
            "from scipy.linalg import cython_blas\n"
            "print('ok')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
