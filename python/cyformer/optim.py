"""Optimizers and learning-rate schedules over the flat parameter / gradient buffers.

Each optimizer owns its state as flat float32 arrays the size of ``Transformer.params``
(Adam's first and second moments, SGD's velocity), so a step is one kernel call and a
checkpoint of the state is one array per moment. Updates follow ``torch.optim`` exactly
(``cyformer._engine.optim``).

Schedules map a step (counting from 1) to a learning rate:

- ``NoamSchedule``: the paper's ``factor * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)``;
- ``ConstantSchedule``: ``lr`` after an optional linear warm-up;
- ``LinearDecaySchedule``: linear warm-up to ``lr``, then linear decay to 0 at ``total_steps``.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import numpy as np

from ._engine import optim as _kernels
from . import threads


# -- schedules -----------------------------------------------------------------------------------
class Schedule:
    """Learning rate as a function of the step (1-based)."""

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def to_dict(self) -> Dict:
        raise NotImplementedError


def _positive_step(step: int) -> int:
    if step < 1:
        raise ValueError(f"steps count from 1, got {step}")
    return step


class NoamSchedule(Schedule):
    """"Attention Is All You Need", section 5.3 (``factor`` scales it, 1.0 in the paper)."""

    def __init__(self, d_model: int, warmup_steps: int = 4000, factor: float = 1.0):
        if d_model <= 0 or warmup_steps <= 0 or not factor > 0:
            raise ValueError("NoamSchedule needs d_model > 0, warmup_steps > 0 and factor > 0")
        self.d_model, self.warmup_steps, self.factor = d_model, warmup_steps, float(factor)

    def __call__(self, step: int) -> float:
        step = _positive_step(step)
        return self.factor * self.d_model ** -0.5 * min(step ** -0.5, step * self.warmup_steps ** -1.5)

    def to_dict(self) -> Dict:
        return {"name": "noam", "d_model": self.d_model, "warmup_steps": self.warmup_steps, "factor": self.factor}


class ConstantSchedule(Schedule):
    def __init__(self, lr: float, warmup_steps: int = 0):
        if not lr > 0 or warmup_steps < 0:
            raise ValueError("ConstantSchedule needs lr > 0 and warmup_steps >= 0")
        self.lr, self.warmup_steps = float(lr), warmup_steps

    def __call__(self, step: int) -> float:
        step = _positive_step(step)
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * step / self.warmup_steps
        return self.lr

    def to_dict(self) -> Dict:
        return {"name": "constant", "lr": self.lr, "warmup_steps": self.warmup_steps}


class LinearDecaySchedule(Schedule):
    def __init__(self, lr: float, total_steps: int, warmup_steps: int = 0):
        if not lr > 0 or total_steps <= 0 or not 0 <= warmup_steps < total_steps:
            raise ValueError("LinearDecaySchedule needs lr > 0 and 0 <= warmup_steps < total_steps")
        self.lr, self.total_steps, self.warmup_steps = float(lr), total_steps, warmup_steps

    def __call__(self, step: int) -> float:
        step = _positive_step(step)
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * step / self.warmup_steps
        left = (self.total_steps - step) / max(1, self.total_steps - self.warmup_steps)
        return self.lr * max(0.0, left)

    def to_dict(self) -> Dict:
        return {"name": "linear", "lr": self.lr, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps}


def make_schedule(name: str, *, d_model: int, lr: Optional[float] = None, warmup_steps: Optional[int] = None,
                  total_steps: Optional[int] = None) -> Schedule:
    """``noam`` (``lr``, default 1.0, is the factor; warm-up 4000 steps unless given),
    ``constant`` or ``linear`` (``lr`` is the peak; no warm-up unless given)."""
    if name == "noam":
        return NoamSchedule(d_model, 4000 if warmup_steps is None else warmup_steps, 1.0 if lr is None else lr)
    warmup_steps = warmup_steps or 0
    if lr is None:
        raise ValueError(f"schedule {name!r} needs lr")
    if name == "constant":
        return ConstantSchedule(lr, warmup_steps)
    if name == "linear":
        if total_steps is None:
            raise ValueError("the linear schedule needs total_steps")
        return LinearDecaySchedule(lr, total_steps, warmup_steps)
    raise ValueError(f"unknown schedule {name!r}; expected 'noam', 'constant' or 'linear'")


def schedule_from_dict(d: Dict) -> Schedule:
    d = dict(d)
    name = d.pop("name")
    return {"noam": NoamSchedule, "constant": ConstantSchedule, "linear": LinearDecaySchedule}[name](**d)


# -- gradient clipping ---------------------------------------------------------------------------
def clip_grad_norm(grads: np.ndarray, max_norm: float) -> float:
    """Scale ``grads`` in place so their global L2 norm is at most ``max_norm``; return the
    norm before clipping (as ``torch.nn.utils.clip_grad_norm_``)."""
    nt = threads.get_num_threads()
    norm = math.sqrt(_kernels.sum_squares(grads, nt))
    if max_norm > 0 and norm > max_norm:
        _kernels.scale(grads, max_norm / (norm + 1e-6), nt)
    return norm


# -- optimizers ---------------------------------------------------------------------------------
class Optimizer:
    """Updates ``params`` from ``grads`` (both flat float32 [P]) at a given learning rate."""

    name = ""

    def __init__(self, size: int):
        self.size = size
        self.steps = 0

    def step(self, params: np.ndarray, grads: np.ndarray, lr: float) -> None:
        raise NotImplementedError

    def state_arrays(self) -> Dict[str, np.ndarray]:
        """Flat float32 state, for checkpoints."""
        return {}

    def hyper(self) -> Dict:
        return {}

    def load_state(self, arrays: Dict[str, np.ndarray], steps: int) -> None:
        mine = self.state_arrays()
        if set(arrays) != set(mine):
            raise ValueError(f"optimizer state holds {sorted(arrays)}, expected {sorted(mine)}")
        for name, arr in arrays.items():
            if arr.shape != mine[name].shape:
                raise ValueError(f"optimizer state {name}: shape {arr.shape}, expected {mine[name].shape}")
            mine[name][...] = arr
        self.steps = int(steps)

    def _check(self, params: np.ndarray, grads: np.ndarray) -> None:
        if params.shape != (self.size,) or grads.shape != (self.size,):
            raise ValueError(f"params and grads must be flat [{self.size}]")


class Adam(Optimizer):
    """Adam (``decoupled=True``: AdamW). Defaults are the paper's: betas (0.9, 0.98), eps 1e-9."""

    name = "adam"

    def __init__(self, size: int, betas: Tuple[float, float] = (0.9, 0.98), eps: float = 1e-9,
                 weight_decay: float = 0.0, decoupled: bool = False):
        super().__init__(size)
        b1, b2 = betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if not eps > 0 or weight_decay < 0:
            raise ValueError("eps must be > 0 and weight_decay >= 0")
        self.betas, self.eps, self.weight_decay, self.decoupled = (float(b1), float(b2)), eps, weight_decay, decoupled
        if decoupled:
            self.name = "adamw"
        self.exp_avg = np.zeros(size, np.float32)
        self.exp_avg_sq = np.zeros(size, np.float32)

    def step(self, params: np.ndarray, grads: np.ndarray, lr: float) -> None:
        self._check(params, grads)
        self.steps += 1
        _kernels.adam_update(params, grads, self.exp_avg, self.exp_avg_sq, self.steps, lr, self.betas[0],
                             self.betas[1], self.eps, self.weight_decay, self.decoupled, threads.get_num_threads())

    def state_arrays(self) -> Dict[str, np.ndarray]:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def hyper(self) -> Dict:
        return {"betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}


class SGD(Optimizer):
    name = "sgd"

    def __init__(self, size: int, momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False):
        super().__init__(size)
        if momentum < 0 or weight_decay < 0:
            raise ValueError("momentum and weight_decay must be >= 0")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and no dampening")
        self.momentum, self.dampening, self.weight_decay, self.nesterov = momentum, dampening, weight_decay, nesterov
        self.velocity = np.zeros(size, np.float32) if momentum else None

    def step(self, params: np.ndarray, grads: np.ndarray, lr: float) -> None:
        self._check(params, grads)
        self.steps += 1
        _kernels.sgd_update(params, grads, self.velocity, lr, self.momentum, self.dampening, self.weight_decay,
                            self.nesterov, self.steps == 1, threads.get_num_threads())

    def state_arrays(self) -> Dict[str, np.ndarray]:
        return {"velocity": self.velocity} if self.velocity is not None else {}

    def hyper(self) -> Dict:
        return {"momentum": self.momentum, "dampening": self.dampening, "weight_decay": self.weight_decay,
                "nesterov": self.nesterov}


def make_optimizer(name: str, size: int, *, betas=(0.9, 0.98), eps: float = 1e-9, weight_decay: float = 0.0,
                   momentum: float = 0.9, nesterov: bool = False) -> Optimizer:
    if name == "adam":
        return Adam(size, betas, eps, weight_decay)
    if name == "adamw":
        return Adam(size, betas, eps, weight_decay, decoupled=True)
    if name == "sgd":
        return SGD(size, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    raise ValueError(f"unknown optimizer {name!r}; expected 'adam', 'adamw' or 'sgd'")
