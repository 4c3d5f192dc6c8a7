"""Import a PyTorch ``nn.Transformer`` (plus its embedding and output layers)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..config import TransformerConfig
from ..io import CheckpointError


def _activation_name(layer) -> str:
    import torch.nn.functional as F

    act = getattr(layer, "activation", None)
    code = getattr(layer, "activation_relu_or_gelu", 0)
    if code == 1 or act is F.relu or type(act).__name__ == "ReLU":
        return "relu"
    if code == 2 or act is F.gelu:
        return "gelu"
    if type(act).__name__ == "GELU":
        return "gelu_tanh" if getattr(act, "approximate", "none") == "tanh" else "gelu"
    if act is F.silu or type(act).__name__ == "SiLU":
        return "silu"
    raise ValueError(f"activation {act!r} of the PyTorch model is not supported "
                     f"(relu, gelu, silu are)")


def _numpy(t) -> np.ndarray:
    return t.detach().to("cpu").float().numpy()


def from_torch(transformer, src_embedding, tgt_embedding=None, generator=None, *,
               max_len: int = 512, positional: str = "sinusoidal", src_positions=None,
               tgt_positions=None, scale_embedding: bool = True, pad_id: int = 0, bos_id: int = 1,
               eos_id: int = 2, decoder_start_id: Optional[int] = None):
    """Build a ``cyformer.Transformer`` from PyTorch modules holding the same weights.

    ``transformer``: ``torch.nn.Transformer`` (either ``norm_first``, any ``batch_first``);
    ``src_embedding`` / ``tgt_embedding``: ``nn.Embedding`` (``tgt_embedding`` defaults to
    ``src_embedding``; the same module means shared embeddings); ``generator``: the
    output ``nn.Linear`` (``None`` or a layer whose weight *is* the target embedding's
    means tied). The input to the stacks is ``embedding(ids) * sqrt(d_model)`` (when
    ``scale_embedding``) plus the paper's sinusoidal encoding, or ``src_positions`` /
    ``tgt_positions`` (``nn.Embedding`` of learned positions) with ``positional='learned'``.
    """
    from ..model import Transformer

    tgt_embedding = src_embedding if tgt_embedding is None else tgt_embedding
    enc_layers = list(transformer.encoder.layers)
    dec_layers = list(transformer.decoder.layers)
    first = enc_layers[0] if enc_layers else dec_layers[0]
    d = transformer.d_model
    share = tgt_embedding is src_embedding or tgt_embedding.weight is src_embedding.weight
    tied = generator is None or generator.weight is tgt_embedding.weight
    has_bias = generator is not None and generator.bias is not None
    if (transformer.encoder.norm is None) != (transformer.decoder.norm is None):
        raise ValueError("the encoder and decoder must both have a final norm, or neither")
    if positional == "learned" and (src_positions is None or tgt_positions is None):
        raise ValueError("positional='learned' needs src_positions and tgt_positions")
    config = TransformerConfig(
        src_vocab_size=src_embedding.num_embeddings, tgt_vocab_size=tgt_embedding.num_embeddings,
        d_model=d, n_heads=transformer.nhead, d_ff=first.linear1.out_features,
        n_encoder_layers=len(enc_layers), n_decoder_layers=len(dec_layers), max_len=max_len,
        norm_first=bool(first.norm_first), final_norm=transformer.encoder.norm is not None,
        activation=_activation_name(first), positional=positional, sinusoidal_layout="interleaved",
        scale_embedding=scale_embedding, share_embeddings=share, tie_output=tied,
        output_bias=has_bias, dropout=float(first.dropout.p), layer_norm_eps=float(first.norm1.eps),
        pad_id=pad_id, bos_id=bos_id, eos_id=eos_id, decoder_start_id=decoder_start_id)
    for layer in enc_layers + dec_layers:
        if getattr(layer, "norm_first", None) != config.norm_first or _activation_name(layer) != config.activation:
            raise ValueError("every layer must share norm_first and the activation")
        for attn in (layer.self_attn, getattr(layer, "multihead_attn", layer.self_attn)):
            if attn.in_proj_weight is None or attn.in_proj_bias is None:
                raise ValueError("attention with separate q/k/v projections or no bias is not supported")
    tensors = {name: _numpy(t) for name, t in transformer.state_dict().items()}
    tensors["encoder.embed_tokens.weight"] = _numpy(src_embedding.weight)
    if not share:
        tensors["decoder.embed_tokens.weight"] = _numpy(tgt_embedding.weight)
    if not tied:
        tensors["output_projection.weight"] = _numpy(generator.weight)
    if has_bias:
        tensors["output_projection.bias"] = _numpy(generator.bias)
    if positional == "learned":
        for side, emb in (("encoder", src_positions), ("decoder", tgt_positions)):
            w = _numpy(emb.weight)
            if w.shape[0] < max_len:
                raise ValueError(f"{side} position table has {w.shape[0]} rows, fewer than max_len={max_len}")
            tensors[f"{side}.embed_positions.weight"] = w[:max_len]
    model = Transformer.empty(config)
    try:
        model.load_state_dict(tensors)
    except CheckpointError as e:
        raise CheckpointError(f"PyTorch model does not map onto cyformer: {e}") from None
    return model
