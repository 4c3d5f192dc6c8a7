"""Compiled Cython kernels (built from engine/); see cyformer.kernels for the documented API."""
