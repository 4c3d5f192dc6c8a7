"""Compiled Cython kernels (built from engine/); each module's API is in its ``.pyi`` stub next to it."""
