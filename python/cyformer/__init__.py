"""cyformer: an encoder-decoder Transformer engine for CPUs (Cython + OpenMP + SciPy BLAS)."""
from ._version import __version__
from .config import TransformerConfig
from .io import CheckpointError
from .decoding import GenerationResult, GenerationStepResult
from .model import Transformer
from .encoder import Encoder, EncoderConfig
from .nat import NATConfig, NATransformer
from .tokenizer import SentencePieceTokenizer, Tokenizer, VocabTokenizer
from .translate import Translator
from .training import Trainer
from .threads import get_num_threads, set_num_threads

__all__ = ["__version__", "TransformerConfig", "Transformer", "Encoder", "EncoderConfig", "NATConfig", "NATransformer", "CheckpointError", "GenerationResult",
           "GenerationStepResult", "Tokenizer", "SentencePieceTokenizer", "VocabTokenizer", "Translator", "Trainer",
           "set_num_threads", "get_num_threads"]
