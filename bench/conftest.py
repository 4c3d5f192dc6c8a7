"""Use the in-tree build (python/) when cyformer is not installed, as tests/conftest.py does."""
import os
import sys

try:
    import cyformer._engine.linear  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "python"))
