# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cross-entropy over the vocabulary with label smoothing, forward and backward in one pass.

``cross_entropy(logits, labels, ...)`` treats each row of ``logits`` [N, V] as one
prediction. The target distribution puts ``1 - label_smoothing`` on the label and
``label_smoothing / V`` on every class (PyTorch's ``CrossEntropyLoss(label_smoothing=...)``,
the paper's eps_ls = 0.1). Rows whose label is ``ignore_index`` (padding) add nothing. With
``grad=True`` each row of ``logits`` is replaced by ``grad_scale * (softmax - target)``, the
gradient of ``grad_scale * loss`` (``grad_scale = 1 / tokens`` for a mean), so the [N, V]
logits buffer is reused and no probability matrix is stored.
"""
from cython.parallel cimport prange
from libc.stdint cimport int32_t
from libc.string cimport memset

import numpy as np

cdef extern from "cross_entropy.h" nogil:
    float cyf_cross_entropy_row(float* x, int V, int y, float eps, float scale, int grad, float* nll)


def cross_entropy(float[:, ::1] logits, const int32_t[::1] labels, float label_smoothing=0.0,
                  int ignore_index=-100, bint grad=False, float grad_scale=1.0, int n_threads=1):
    """Per-row (loss [N], nll [N]) as float32 arrays; 0 for ignored rows.

    ``loss`` is the smoothed cross-entropy, ``nll`` the plain negative log-likelihood of
    the label (for perplexity). See the module docstring for ``grad``.
    """
    cdef Py_ssize_t n = logits.shape[0], i
    cdef int V = logits.shape[1]
    if labels.shape[0] != n:
        raise ValueError(f"labels has {labels.shape[0]} entries for {n} rows of logits")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if V <= 0 and n:
        raise ValueError("logits have no classes")
    lab = np.asarray(labels)
    live = lab[lab != ignore_index]
    if live.size and (live.min() < 0 or live.max() >= V):
        bad = live.min() if live.min() < 0 else live.max()
        raise ValueError(f"label {bad} is outside [0, {V}) (and is not ignore_index={ignore_index})")
    losses = np.zeros(n, dtype=np.float32)
    nlls = np.zeros(n, dtype=np.float32)
    cdef float[::1] lv = losses
    cdef float[::1] nv = nlls
    if n == 0:
        return losses, nlls
    cdef float* xp = &logits[0, 0]
    with nogil:
        for i in prange(n, num_threads=max(1, n_threads), schedule='static'):
            if labels[i] == ignore_index:
                if grad:
                    memset(xp + i * V, 0, sizeof(float) * V)
            else:
                lv[i] = cyf_cross_entropy_row(xp + i * V, V, labels[i], label_smoothing, grad_scale,
                                              grad, &nv[i])
    return losses, nlls
