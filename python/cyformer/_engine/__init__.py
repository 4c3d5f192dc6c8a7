"""Compiled Cython kernels (built from engine/); each module's API is in its ``.pyi`` stub next to it.

``linear_paths`` is the one Python module: it forces ``linear_forward`` onto one of its kernels
for the tests and benchmarks of each path.
"""
