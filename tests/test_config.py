import pytest

from cyformer import TransformerConfig


def test_defaults_are_the_paper_base_model():
    c = TransformerConfig()
    assert (c.d_model, c.n_heads, c.d_ff, c.n_encoder_layers, c.n_decoder_layers) == (512, 8, 2048, 6, 6)
    assert c.norm_first is False and c.final_norm is False and c.d_k == 64
    assert c.tgt_vocab_size == c.src_vocab_size and c.decoder_start_id == c.bos_id


def test_json_round_trip(tmp_path):
    c = TransformerConfig(src_vocab_size=100, tgt_vocab_size=120, d_model=64, n_heads=4, d_ff=128,
                          norm_first=True, activation="gelu", positional="learned", dropout=0.0)
    assert TransformerConfig.from_json(c.to_json()) == c
    c.save(str(tmp_path / "config.json"))
    assert TransformerConfig.load(str(tmp_path / "config.json")) == c


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(d_model=510), ValueError, "d_model=510 is not divisible by n_heads=8"),
    (dict(n_heads=0), ValueError, "n_heads must be > 0"),
    (dict(d_ff=-1), ValueError, "d_ff must be > 0"),
    (dict(d_model=512.0), TypeError, "d_model must be an int"),
    (dict(activation="tanh"), ValueError, "activation must be one of"),
    (dict(positional="rotary"), ValueError, "positional must be one of"),
    (dict(sinusoidal_layout="odd"), ValueError, "sinusoidal_layout"),
    (dict(share_embeddings=True, tgt_vocab_size=10), ValueError, "share_embeddings needs equal"),
    (dict(dropout=1.0), ValueError, "dropout"),
    (dict(layer_norm_eps=0), ValueError, "layer_norm_eps"),
    (dict(eos_id=32000), ValueError, "eos_id=32000 is outside"),
    (dict(pad_id=-1), ValueError, "pad_id=-1"),
    (dict(norm_first="yes"), TypeError, "norm_first must be a bool"),
])
def test_invalid_configs_say_what_is_wrong(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        TransformerConfig(**kwargs)


def test_unknown_fields_and_bad_json():
    with pytest.raises(ValueError, match="unknown TransformerConfig fields: d_modle"):
        TransformerConfig.from_dict({"d_modle": 3})
    with pytest.raises(ValueError, match="not valid JSON"):
        TransformerConfig.from_json("{")
    with pytest.raises(TypeError, match="JSON object"):
        TransformerConfig.from_json("[1]")
