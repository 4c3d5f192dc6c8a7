"""``FeedForward``: the position-wise FFN, linear2(act(linear1(y))), activation dropout inside."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from .._engine.ffn import act_backward, activation_code, bias_act_forward, bias_act_forward_save
from .base import Layer, TrainContext
from .linear import Linear


@dataclass
class FeedForwardRecord:
    y: np.ndarray     # input [N, d]
    pre: np.ndarray   # linear1 output + bias, the activation's input [N, d_ff]
    h: np.ndarray     # activation (after dropout) [N, d_ff]
    site: int         # activation-dropout site


class FeedForward(Layer):
    """``{prefix}.linear1`` [d_ff, d] and ``{prefix}.linear2`` [d, d_ff] (nn.TransformerEncoderLayer names)."""

    def __init__(self, prefix: str, d_model: int, d_ff: int, activation: str, activation_dropout: float = 0.0):
        self.linear1 = Linear(f"{prefix}.linear1.weight", f"{prefix}.linear1.bias", d_ff, d_model)
        self.linear2 = Linear(f"{prefix}.linear2.weight", f"{prefix}.linear2.bias", d_model, d_ff)
        self.d_ff = d_ff
        self.act = activation_code(activation)
        self.activation_dropout = activation_dropout
        self._k_pre, self._k_h = f"{prefix}.ffn_pre", f"{prefix}.ffn_h"

    def children(self) -> Iterable[Layer]:
        return (self.linear1, self.linear2)

    @property
    def out_bias(self) -> np.ndarray:
        return self.linear2.bias

    def forward(self, y: np.ndarray, out: np.ndarray, ws, nt: int, *, bias: bool = True,
                accumulate: bool = False) -> None:
        """out (+)= act(y W1^T + b1) W2^T (+ b2)."""
        h = ws.get("ffn", y.shape[0], self.d_ff)
        self.linear1.forward(y, h, nt, bias=False)
        bias_act_forward(h, self.linear1.bias, self.act, nt)   # bias and activation in one pass
        self.linear2.forward(h, out, nt, bias=bias, accumulate=accumulate)

    def forward_train(self, y: np.ndarray, out: np.ndarray, tc: TrainContext, *, bias: bool = True
                      ) -> FeedForwardRecord:
        n = y.shape[0]
        pre, h = tc.buf(self._k_pre, n, self.d_ff), tc.buf(self._k_h, n, self.d_ff)
        self.linear1.forward(y, pre, tc.nt, bias=False)
        bias_act_forward_save(pre, self.linear1.bias, self.act, h, tc.nt)
        site = tc.site()
        tc.drop(h, self.activation_dropout, site)
        self.linear2.forward(h, out, tc.nt, bias=bias)
        return FeedForwardRecord(y, pre, h, site)

    def backward(self, rec: FeedForwardRecord, dout: np.ndarray, dy: np.ndarray, tc: TrainContext) -> None:
        """dy (overwritten): gradient of the input, from the output's gradient dout."""
        g, nt = tc.grads, tc.nt
        dh = tc.buf("dh", dout.shape[0], self.d_ff)
        self.linear2.backward(rec.h, dout, dh, g, nt)
        tc.drop(dh, self.activation_dropout, rec.site)
        act_backward(dh, rec.pre, self.act, nt)
        self.linear1.backward(rec.y, dh, dy, g, nt)
