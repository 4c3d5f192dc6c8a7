"""Fixtures shared by the tests; the tolerances and helpers are in _shared.py (tests/README.md
says what is where)."""
import os
import sys

import pytest

# Use the in-tree build (python/) when cyformer is not installed.
try:
    import cyformer._engine.linear  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "python"))

from cyformer._engine.linear_paths import available_linear_paths, linear_path  # noqa: E402


@pytest.fixture(params=available_linear_paths())
def forced_path(request):
    """Each kernel behind ``linear_forward`` this CPU runs, forced for every row count."""
    with linear_path(request.param):
        yield request.param
