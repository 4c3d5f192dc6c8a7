"""PyTorch / transformers reference models built locally with seeded weights (tests only)."""
from __future__ import annotations

import math

import numpy as np

torch = None


def _torch():
    global torch
    if torch is None:
        import torch as _t
        torch = _t
    return torch


def pad(seqs, pad_id):
    """Lists of ids -> (LongTensor [B, T] padded with pad_id, BoolTensor [B, T] True at padding)."""
    t = _torch()
    width = max(len(s) for s in seqs)
    ids = t.full((len(seqs), width), pad_id, dtype=t.long)
    padding = t.ones((len(seqs), width), dtype=t.bool)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = t.tensor(s, dtype=t.long)
        padding[i, :len(s)] = False
    return ids, padding


class TorchSeq2Seq:
    """nn.Transformer + embeddings (scaled by sqrt(d)) + sinusoidal or learned positions + generator."""

    def __init__(self, vocab=40, d=32, heads=4, d_ff=64, n_enc=2, n_dec=2, norm_first=False,
                 activation="relu", positional="sinusoidal", share=False, final_norm=True,
                 output_bias=True, max_len=64, seed=0):
        t = _torch()
        from torch import nn
        import torch.nn.functional as F
        from cyformer._engine.embedding import sinusoidal_table

        t.manual_seed(seed)
        act = {"relu": "relu", "gelu": "gelu", "silu": F.silu}[activation]
        kw = dict(dropout=0.0, activation=act, batch_first=True, norm_first=norm_first)
        if final_norm:
            self.transformer = nn.Transformer(d, heads, n_enc, n_dec, d_ff, **kw)
        else:
            enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, heads, d_ff, **kw), n_enc,
                                        enable_nested_tensor=False)
            dec = nn.TransformerDecoder(nn.TransformerDecoderLayer(d, heads, d_ff, **kw), n_dec)
            self.transformer = nn.Transformer(d, heads, custom_encoder=enc, custom_decoder=dec, **kw)
        self.transformer.eval()
        # Non-zero biases everywhere, so a dropped bias cannot pass unnoticed.
        with t.no_grad():
            for name, p in self.transformer.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 0.1)
                elif "norm" in name and name.endswith("weight"):
                    p.uniform_(0.5, 1.5)
        self.src_embed = nn.Embedding(vocab, d)
        self.tgt_embed = self.src_embed if share else nn.Embedding(vocab, d)
        self.generator = nn.Linear(d, vocab, bias=output_bias)
        self.d = d
        self.max_len = max_len
        self.positional = positional
        if positional == "learned":
            self.src_pos = nn.Embedding(max_len, d)
            self.tgt_pos = nn.Embedding(max_len, d)
        else:
            self.src_pos = self.tgt_pos = None
            self.pe = t.from_numpy(sinusoidal_table(max_len, d))

    def _embed(self, ids, embed, pos):
        t = _torch()
        x = embed(ids) * math.sqrt(self.d)
        if pos is not None:
            return x + pos(t.arange(ids.shape[1]))
        return x + self.pe[:ids.shape[1]]

    def to_cyformer(self):
        from cyformer.convert import from_torch
        return from_torch(self.transformer, self.src_embed, self.tgt_embed, self.generator,
                          max_len=self.max_len, positional=self.positional,
                          src_positions=self.src_pos, tgt_positions=self.tgt_pos)

    def encode(self, src):
        t = _torch()
        ids, padding = pad(src, 0)
        with t.no_grad():
            x = self._embed(ids, self.src_embed, self.src_pos)
            return self.transformer.encoder(x, src_key_padding_mask=padding).numpy()

    def logits(self, src, tgt):
        t = _torch()
        from torch import nn
        sids, spad = pad(src, 0)
        tids, tpad = pad(tgt, 0)
        with t.no_grad():
            x = self._embed(sids, self.src_embed, self.src_pos)
            y = self._embed(tids, self.tgt_embed, self.tgt_pos)
            causal = nn.Transformer.generate_square_subsequent_mask(tids.shape[1])
            h = self.transformer(x, y, tgt_mask=causal, src_key_padding_mask=spad,
                                 tgt_key_padding_mask=tpad, memory_key_padding_mask=spad,
                                 tgt_is_causal=True)
            return self.generator(h).numpy()


def marian_model(directory, activation="swish", vocab=60, d=32, heads=4, d_ff=64, layers=2,
                 max_len=64, seed=0, scale_embedding=True, forced_eos=True):
    """A MarianMTModel with seeded random weights (non-zero logits bias) saved to ``directory``."""
    t = _torch()
    from transformers import MarianConfig, MarianMTModel

    t.manual_seed(seed)
    cfg = MarianConfig(vocab_size=vocab, d_model=d, encoder_layers=layers, decoder_layers=layers,
                       encoder_attention_heads=heads, decoder_attention_heads=heads,
                       encoder_ffn_dim=d_ff, decoder_ffn_dim=d_ff, max_position_embeddings=max_len,
                       pad_token_id=vocab - 1, decoder_start_token_id=vocab - 1, eos_token_id=0,
                       activation_function=activation, dropout=0.0, attention_dropout=0.0,
                       activation_dropout=0.0, scale_embedding=scale_embedding,
                       # as in the released opus-mt configs: pad is never generated
                       bad_words_ids=[[vocab - 1]], forced_eos_token_id=0 if forced_eos else None)
    model = MarianMTModel(cfg).eval()
    with t.no_grad():
        model.final_logits_bias.normal_(0, 0.5)
        for name, p in model.named_parameters():
            if name.endswith("bias") and "final_logits" not in name:
                p.normal_(0, 0.1)
    model.save_pretrained(str(directory))
    return model


def marian_logits(model, src, tgt_in):
    t = _torch()
    pad_id = model.config.pad_token_id
    sids, spad = pad(src, pad_id)
    tids, tpad = pad(tgt_in, pad_id)
    with t.no_grad():
        return model(input_ids=sids, attention_mask=(~spad).long(), decoder_input_ids=tids,
                     decoder_attention_mask=(~tpad).long()).logits.numpy()


def compare_padded(ours, ref, lengths):
    """Largest |ours - ref| over the real (non-padding) positions."""
    return max(float(np.abs(ours[i, :n] - ref[i, :n]).max()) for i, n in enumerate(lengths))


def toy_pairs(rng, n, vocab_lo=1, vocab_hi=30, min_len=2, max_len=9, eos=0):
    """Source/target id lists for a reversal task (targets end in EOS)."""
    pairs = []
    for _ in range(n):
        k = int(rng.integers(min_len, max_len + 1))
        s = [int(x) for x in rng.integers(vocab_lo, vocab_hi, size=k)]
        t = list(reversed(s))
        pairs.append((s + [eos], t + [eos]))
    return pairs


def trained_marian_model(directory, activation="swish", steps=500, seed=0, vocab=60, d=32, layers=2):
    """A small MarianMTModel trained briefly with PyTorch, so decoding is neither degenerate nor tied."""
    t = _torch()
    model = marian_model(directory, activation=activation, vocab=vocab, d=d, layers=layers, seed=seed)
    model.train()
    rng = np.random.default_rng(seed)
    opt = t.optim.Adam(model.parameters(), lr=3e-3)
    pad_id = model.config.pad_token_id
    for _ in range(steps):
        batch = toy_pairs(rng, 32)
        src, _ = pad([s for s, _ in batch], pad_id)
        labels, lab_pad = pad([tg for _, tg in batch], pad_id)
        labels = labels.masked_fill(lab_pad, -100)
        loss = model(input_ids=src, attention_mask=(src != pad_id).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(str(directory))
    return model


TOY_WORDS = ("the cat dog house tree small big red blue green runs sees eats quickly slowly "
             "and or not under over near far bird fish water stone light dark").split()


def toy_sentences(rng, n, min_words=2, max_words=9):
    return [" ".join(rng.choice(TOY_WORDS, size=int(rng.integers(min_words, max_words + 1))))
            for _ in range(n)]


def sentencepiece_folder(directory, vocab_size=48, seed=0):
    """Train source/target SentencePiece models on toy text and write Marian's tokenizer files.

    vocab.json puts </s> at 0, <unk> at 1 and <pad> last, as Marian folders do.
    """
    import json
    import os

    import sentencepiece as spm

    rng = np.random.default_rng(seed)
    text = os.path.join(directory, "corpus.txt")
    with open(text, "w") as f:
        f.write("\n".join(toy_sentences(rng, 400)) + "\n")
    pieces = []
    for side in ("source", "target"):
        prefix = os.path.join(directory, side)
        spm.SentencePieceTrainer.train(input=text, model_prefix=prefix, vocab_size=vocab_size - 4,
                                       model_type="unigram", character_coverage=1.0,
                                       bos_id=-1, eos_id=-1, unk_id=0, pad_id=-1,
                                       num_threads=1, minloglevel=2)
        os.replace(prefix + ".model", prefix + ".spm")
        os.remove(prefix + ".vocab")
        sp = spm.SentencePieceProcessor(model_file=prefix + ".spm")
        pieces += [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    os.remove(text)
    vocab = {"</s>": 0, "<unk>": 1}
    for p in pieces:
        if p not in vocab and p != "<unk>":
            vocab[p] = len(vocab)
    vocab["<pad>"] = len(vocab)
    with open(os.path.join(directory, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    return vocab


# -- text encoders: a WordPiece tokenizer, BERT folders and sentence-transformers models ------

TEXT_WORDS = ("the a an cat dog bird sat sits ran runs on in under mat house tree car red blue green "
              "small big fast slow and or but not very happy sad good bad day night").split()


def wordpiece_tokenizer(words=TEXT_WORDS, model_max_length=None):
    """A BERT WordPiece ``tokenizers.Tokenizer`` (lowercasing, [CLS] ... [SEP], pairs typed 0 / 1)
    over ``words``, single letters and their ``##`` continuations, and a ``BertTokenizerFast``
    around it (``model_max_length`` saved in tokenizer_config.json when given)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", "?"]
    vocab += [w for w in dict.fromkeys(words) if w not in vocab]
    vocab += ["##s", "##ed", "##ing"] + list(letters) + ["##" + c for c in letters]
    vocab = list(dict.fromkeys(vocab))
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))])
    tok.decoder = decoders.WordPiece()
    kw = {} if model_max_length is None else {"model_max_length": model_max_length}
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]", **kw)
    return tok, fast


def seeded_bert(config: dict, seed=0, model_class=None):
    """A transformers BERT model (``BertModel`` unless ``model_class``) with seeded weights and
    non-trivial LayerNorm parameters and biases, in eval mode."""
    t = _torch()
    from transformers import BertConfig, BertModel
    t.manual_seed(seed)
    model = (model_class or BertModel)(BertConfig(**config)).eval()
    with t.no_grad():
        for n, p in model.named_parameters():
            if "LayerNorm" in n or n.endswith(".bias"):
                p.add_(0.1 * t.randn_like(p))
    return model


def bert_text_folder(folder, config: dict, seed=0, model_class=None, model_max_length=None, words=TEXT_WORDS):
    """Save a seeded BERT model and its WordPiece tokenizer to ``folder``; returns (model, fast tokenizer).
    ``config`` gets the tokenizer's ``vocab_size``."""
    _, fast = wordpiece_tokenizer(words, model_max_length)
    model = seeded_bert(dict(config, vocab_size=len(fast)), seed, model_class)
    model.save_pretrained(str(folder))
    fast.save_pretrained(str(folder))
    return model, fast


def sentence_transformer(bert_folder, pooling="mean", normalize=False, max_seq_length=None):
    """A ``sentence_transformers.SentenceTransformer`` assembled from modules: Transformer over the
    saved BERT folder, Pooling (one mode or a list), optionally Normalize."""
    import warnings
    from sentence_transformers import SentenceTransformer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the models namespace's deprecation notice
        from sentence_transformers import models
    kw = {} if max_seq_length is None else {"max_seq_length": max_seq_length}
    transformer = models.Transformer(str(bert_folder), **kw)
    dim = transformer.auto_model.config.hidden_size
    mods = [transformer, models.Pooling(dim, pooling_mode=pooling)]
    if normalize:
        mods.append(models.Normalize())
    return SentenceTransformer(modules=mods, device="cpu")
