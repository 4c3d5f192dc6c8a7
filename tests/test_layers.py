"""The layer library: weights declared by the layers, the layout derived from them (and equal
to the checkpoint order from before the library), typed training records, the converter
registry, and the training pass agreeing with the inference pass."""
import dataclasses
import json

import numpy as np
import pytest

from cyformer import Transformer, TransformerConfig
from cyformer.backprop import ForwardBackward
from cyformer.convert import registry
from cyformer.layers import (DecoderLayerRecord, EncoderLayerRecord, Linear, TrainContext, WeightSpec,
                             derive_layout)
from cyformer.model import Workspace, make_batch, parameter_layout

CONFIGS = [dict(), dict(norm_first=True, final_norm=True), dict(positional="learned"),
           dict(share_embeddings=False, tgt_vocab_size=37, tie_output=False, output_bias=True),
           dict(share_embeddings=False, tgt_vocab_size=37, output_bias=True), dict(positional="none")]


def _config(**kw):
    base = dict(src_vocab_size=40, tgt_vocab_size=40, d_model=16, n_heads=2, d_ff=24, n_encoder_layers=2,
                n_decoder_layers=3, max_len=32)
    base.update(kw)
    return TransformerConfig(**base)


def _legacy_layout(c):
    """The buffer order checkpoints were written in before the layer library (kept by hand here)."""
    d = c.d_model

    def attn(p):
        return [(f"{p}.in_proj_weight", (3 * d, d)), (f"{p}.in_proj_bias", (3 * d,)),
                (f"{p}.out_proj.weight", (d, d)), (f"{p}.out_proj.bias", (d,))]

    def norm(p):
        return [(f"{p}.weight", (d,)), (f"{p}.bias", (d,))]

    def ffn(p):
        return [(f"{p}.linear1.weight", (c.d_ff, d)), (f"{p}.linear1.bias", (c.d_ff,)),
                (f"{p}.linear2.weight", (d, c.d_ff)), (f"{p}.linear2.bias", (d,))]

    out = [("encoder.embed_tokens.weight", (c.src_vocab_size, d))]
    if not c.share_embeddings:
        out.append(("decoder.embed_tokens.weight", (c.tgt_vocab_size, d)))
    if c.positional == "learned":
        out += [("encoder.embed_positions.weight", (c.max_len, d)), ("decoder.embed_positions.weight", (c.max_len, d))]
    for i in range(c.n_encoder_layers):
        p = f"encoder.layers.{i}"
        out += attn(f"{p}.self_attn") + norm(f"{p}.norm1") + ffn(p) + norm(f"{p}.norm2")
    if c.final_norm:
        out += norm("encoder.norm")
    for i in range(c.n_decoder_layers):
        p = f"decoder.layers.{i}"
        out += attn(f"{p}.self_attn") + norm(f"{p}.norm1") + attn(f"{p}.multihead_attn") + norm(f"{p}.norm2")
        out += ffn(p) + norm(f"{p}.norm3")
    if c.final_norm:
        out += norm("decoder.norm")
    if not c.tie_output:
        out.append(("output_projection.weight", (c.tgt_vocab_size, d)))
    if c.output_bias:
        out.append(("output_projection.bias", (c.tgt_vocab_size,)))
    return out


@pytest.mark.parametrize("kw", CONFIGS)
def test_layout_derived_from_declarations_keeps_checkpoint_order(kw):
    c = _config(**kw)
    model = Transformer(c, seed=0)
    assert model.layout == _legacy_layout(c) == parameter_layout(c)
    assert [(s.name, s.shape) for s in model.weight_specs] == model.layout
    assert all(s.dtype == "float32" and s.scale is None for s in model.weight_specs)
    assert model.num_parameters == sum(s.size for s in model.weight_specs)


def test_declarations_are_checked():
    spec = WeightSpec("w", (2, 3), "xavier")
    with pytest.raises(ValueError, match="declared twice"):
        derive_layout([spec, spec])
    with pytest.raises(NotImplementedError, match="float32"):
        derive_layout([WeightSpec("q", (2, 3), "xavier", dtype="int8", scale="q.scale")])
    tied = Linear("emb", "out.bias", 5, 3, declare_weight=False)
    assert [s.name for s in tied.weights()] == ["out.bias"]


def test_assigning_params_rebinds_every_layer():
    c = _config()
    model = Transformer(c, seed=1)
    src, tgt = [[3, 4, 5]], [[1, 6, 7]]
    before = model.forward(src, tgt)
    model.params = np.array(model.params)   # a private copy, as Trainer makes of a mapped checkpoint
    model.params[...] = Transformer(c, seed=2).params
    assert not np.array_equal(model.forward(src, tgt), before)
    np.testing.assert_array_equal(model.forward(src, tgt), Transformer(c, seed=2).forward(src, tgt))
    with pytest.raises(ValueError, match="params must be float32"):
        model.params = np.zeros(3, np.float32)


@pytest.mark.parametrize("kw", [dict(), dict(norm_first=True, final_norm=True)])
def test_training_pass_matches_inference_bitwise_without_dropout(kw):
    """Both fold the post-LN projection bias into the LayerNorm when dropout is off."""
    c = _config(dropout=0.3, **kw)
    model = Transformer(c, seed=4)
    src, tgt = [[3, 4, 5, 6], [7, 8]], [[1, 9], [1, 10, 11]]
    sb = make_batch(src, vocab_size=c.src_vocab_size, max_len=c.max_len)
    tb = make_batch(tgt, vocab_size=c.tgt_vocab_size, max_len=c.max_len)
    tc = TrainContext(Workspace(), {}, 1, 0, False, c.attention_dropout)
    logits, rec = model.forward_train(sb, tb, tc)
    np.testing.assert_array_equal(tb.unpack(logits), model.forward(src, tgt))
    assert all(isinstance(r, EncoderLayerRecord) for r in rec.encoder.layers)
    assert all(isinstance(r, DecoderLayerRecord) for r in rec.decoder.layers)
    assert dataclasses.is_dataclass(rec.decoder.layers[0].cross_attn)


def test_forward_backward_runs_once_per_forward():
    c = _config()
    fb = ForwardBackward(Transformer(c, seed=0))
    sb = make_batch([[3, 4]], vocab_size=40, max_len=32)
    tb = make_batch([[1, 5]], vocab_size=40, max_len=32)
    fb.forward(sb, tb, np.array([5, 2], np.int32))
    fb.backward()
    assert np.abs(fb.grad("encoder.layers.0.self_attn.in_proj_weight")).sum() > 0
    with pytest.raises(RuntimeError, match="needs a forward"):
        fb.backward()


def test_from_pretrained_dispatches_on_registered_model_type(tmp_path):
    calls = []

    @registry.register_loader("toy-format")
    def _load(directory, raw, mmap=True, verify=False):
        calls.append((directory, raw["model_type"], mmap, verify))
        return "loaded"

    try:
        (tmp_path / "config.json").write_text(json.dumps({"model_type": "toy-format"}))
        assert Transformer.from_pretrained(str(tmp_path), mmap=False) == "loaded"
        assert calls == [(str(tmp_path), "toy-format", False, False)]
    finally:
        del registry.LOADERS["toy-format"]
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type 'bert' is not supported .*cyformer.*marian"):
        Transformer.from_pretrained(str(tmp_path))
    assert {"cyformer", "marian"} <= set(registry.LOADERS) and "marian" in registry.EXPORTERS
