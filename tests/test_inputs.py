"""Inputs as people pass them (issue 14, item 3): one rule for flat sequences, any array-like of
integer ids (torch tensors included), text pointed to Translator, a string to Translator.translate."""
import numpy as np
import pytest

import cyformer
from cyformer import Transformer, TransformerConfig, Translator
from cyformer.data import load_task


@pytest.fixture(scope="module")
def model():
    config = TransformerConfig(src_vocab_size=40, d_model=16, n_heads=2, d_ff=32, n_encoder_layers=1,
                               n_decoder_layers=1, max_len=24, dropout=0.0)
    return Transformer(config, seed=0)


def test_a_flat_sequence_is_one_sentence_in_every_container(model):
    torch = pytest.importorskip("torch")
    ref = model.encode([[5, 17, 2]])
    for flat in ([5, 17, 2], (5, 17, 2), np.array([5, 17, 2]), np.array([5, 17, 2], dtype=np.int32),
                 torch.tensor([5, 17, 2]), [np.int64(5), np.int64(17), np.int64(2)]):
        out = model.encode(flat)
        assert out.shape == (1, 3, 16)
        np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(model.encode(iter([5, 17, 2])), ref)


def test_batches_as_tensors_arrays_and_lists_of_tensors(model):
    torch = pytest.importorskip("torch")
    ref = model.encode([[5, 17, 2], [9, 11, 2]])
    np.testing.assert_array_equal(model.encode(torch.tensor([[5, 17, 2], [9, 11, 2]])), ref)
    np.testing.assert_array_equal(model.encode([torch.tensor([5, 17, 2]), np.array([9, 11, 2])]), ref)
    a = model.generate(torch.tensor([5, 17, 2]), max_length=4)
    b = model.generate([[5, 17, 2]], max_length=4)
    assert a[0].sequences == b[0].sequences


@pytest.mark.parametrize("bad", [["hello world"], "hello world", [b"hello"], ("a", "b")])
def test_text_is_pointed_to_translator(model, bad):
    with pytest.raises(TypeError, match="not text; to translate text use cyformer.Translator"):
        model.generate(bad)
    with pytest.raises(TypeError, match="Translator"):
        model.encode(bad)


@pytest.mark.parametrize("bad,error,match", [
    ([5, [17, 2]], ValueError, "mixes token ids and sequences"),
    ([[5, 17], [[2]]], ValueError, r"src\[1\] must be a flat list"),
    ([5.0, 17.0], TypeError, "integer token ids"),
    ([True, False], TypeError, "integer token ids"),
    ({1, 2}, TypeError, "list of token-id lists"),
])
def test_mixed_or_wrong_inputs_get_clear_errors(model, bad, error, match):
    with pytest.raises(error, match=match):
        model.encode(bad)


def test_translator_takes_one_string_or_a_list():
    data = load_task("copy", n_train=50, n_valid=0, n_test=0)
    tok = data.build_tokenizer()
    config = TransformerConfig(src_vocab_size=tok.vocab_size, d_model=16, n_heads=2, d_ff=32, n_encoder_layers=1,
                               n_decoder_layers=1, max_len=24, share_embeddings=True, pad_id=0, eos_id=1,
                               bos_id=3)
    translator = Translator(Transformer(config, seed=0), tok)
    one = translator.translate("a b c", max_length=5)
    assert isinstance(one, str)
    assert translator.translate(["a b c"], max_length=5) == [one]
    assert len(translator.translate_batch("a b c", max_length=5)) == 1
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        translator.translate(["a", 3])
