"""The layer library: each layer's weights, inference pass, training pass, backward and
decoding step in one place (see ``base`` for the conventions).

``Transformer`` (``cyformer.model``) is a composition of these: two ``Embeddings``, an
``Encoder`` and a ``Decoder`` stack of ``EncoderLayer`` / ``DecoderLayer``, and the output
``Linear``; ``cyformer.Encoder`` is ``Embeddings``, an ``Encoder`` stack and a head
(``heads``: the tanh ``Pooler``, ``SequenceClassificationHead``, ``TokenClassificationHead``).
"""
from .attention import AttentionRecord, MultiHeadAttention
from .base import Layer, TrainContext, WeightSpec, derive_layout, mix_seed, named_views
from .embedding import Embeddings, EmbeddingsRecord
from .ffn import FeedForward, FeedForwardRecord
from .heads import (HEADS, POOLER_ACTIVATIONS, POOLINGS, Pooler, SequenceClassificationHead, SequenceHeadRecord,
                    TokenClassificationHead, TokenHeadRecord, pool, pool_backward)
from .linear import Linear
from .norm import LayerNorm, LayerNormRecord
from .transformer import (CachePool, Decoder, DecoderLayer, DecoderLayerRecord, DecoderState, Encoder, EncoderLayer,
                          EncoderLayerRecord, StackRecord, StepLanes, SublayerConnection, SublayerRecord)

__all__ = ["Layer", "WeightSpec", "TrainContext", "derive_layout", "named_views", "mix_seed",
           "Linear", "LayerNorm", "MultiHeadAttention", "FeedForward", "Embeddings",
           "SublayerConnection", "EncoderLayer", "DecoderLayer", "Encoder", "Decoder", "DecoderState", "CachePool",
           "StepLanes", "AttentionRecord", "FeedForwardRecord", "EmbeddingsRecord", "LayerNormRecord",
           "SublayerRecord", "EncoderLayerRecord", "DecoderLayerRecord", "StackRecord",
           "HEADS", "POOLINGS", "POOLER_ACTIVATIONS", "Pooler", "SequenceClassificationHead", "TokenClassificationHead",
           "SequenceHeadRecord", "TokenHeadRecord", "pool", "pool_backward"]
