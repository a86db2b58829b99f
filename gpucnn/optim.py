"""Optimizers: read each parameter's ``.grad`` and update ``.data`` in place,
with the same formulas as ``torch.optim`` (W ← W − α ∂L/∂W, plus momentum / Adam)."""
from __future__ import annotations

import numpy as np

from . import backends
from .layers import Parameter
from .validation import NON_NEGATIVE, Rule

_BETA = Rule(float, 0, 1, high_open=True)


class Optimizer:
    def __init__(self, params):
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        first = {}
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(f"{type(self).__name__}: parameter {i} is a {type(p).__name__}, "
                                "expected a gpucnn Parameter (use model.parameters())")
            if id(p) in first:  # it would be updated twice per step (PyTorch refuses it too)
                raise ValueError(f"{type(self).__name__}: parameter {i} is parameter {first[id(p)]} "
                                 f"again; each parameter may appear only once")
            first[id(p)] = i
        self.params = params
        self.state = [dict() for _ in params]

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def _buffer(self, i, key, p):
        """State array ``key`` for parameter i, on the parameter's backend and dtype."""
        B = backends.backend_of(p.data)
        buf = self.state[i].get(key)
        if buf is None:
            buf = B.zeros(p.data.shape, p.data.dtype)
        elif backends.backend_of(buf) is not B or buf.dtype != p.data.dtype:
            buf = B.asarray(backends.asnumpy(buf) if B.name == "cpu" else buf, dtype=p.data.dtype)
        self.state[i][key] = buf
        return buf

    def _grads(self):
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            if tuple(p.grad.shape) != tuple(p.data.shape):
                raise RuntimeError(f"{type(self).__name__}: gradient of parameter {i} has shape "
                                   f"{tuple(p.grad.shape)}, expected {tuple(p.data.shape)}")
            if backends.backend_of(p.grad) is not backends.backend_of(p.data):
                raise RuntimeError(f"{type(self).__name__}: parameter {i} and its gradient are on "
                                   "different devices")
            yield i, p, backends.backend_of(p.data)

    def state_dict(self):
        """Hyper-parameters and per-parameter state as numbers and numpy arrays."""
        state = {}
        for i, s in enumerate(self.state):
            for k, v in s.items():
                state[f"{i}.{k}"] = (np.array(backends.asnumpy(v), copy=True)
                                     if hasattr(v, "shape") else v)
        return {"type": type(self).__name__, "defaults": dict(self.defaults), "state": state}

    def load_state_dict(self, sd):
        name = type(self).__name__
        if not isinstance(sd, dict) or sd.get("type") != name:
            got = sd.get("type") if isinstance(sd, dict) else type(sd).__name__
            raise ValueError(f"{name}.load_state_dict: expected the state of a {name}, got {got!r}")
        new_state = [dict() for _ in self.params]
        for key, v in sd.get("state", {}).items():
            idx, _, k = key.partition(".")
            if not idx.isdigit() or int(idx) >= len(self.params):
                raise ValueError(f"{name}.load_state_dict: state entry {key!r} does not match "
                                 f"the {len(self.params)} parameters")
            p = self.params[int(idx)]
            if hasattr(v, "shape") and np.ndim(v) > 0:
                if tuple(v.shape) != p.shape:
                    raise ValueError(f"{name}.load_state_dict: {key!r} has shape {tuple(v.shape)}, "
                                     f"expected {p.shape}")
                # a copy: step() updates state in place and must not write into the caller's dict
                v = backends.backend_of(p.data).asarray(np.array(backends.asnumpy(v), copy=True),
                                                        dtype=p.dtype)
            elif hasattr(v, "shape"):
                v = v.item()
            new_state[int(idx)][k] = v
        self.defaults = dict(sd.get("defaults", self.defaults))
        for k, v in self.defaults.items():
            setattr(self, k, tuple(v) if isinstance(v, list) else v)
        self.state = new_state


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov and weight decay."""

    def __init__(self, params, lr, momentum=0, weight_decay=0, nesterov=False):
        super().__init__(params)
        self.lr = NON_NEGATIVE(lr, "lr", "SGD")
        self.momentum = NON_NEGATIVE(momentum, "momentum", "SGD")
        self.weight_decay = NON_NEGATIVE(weight_decay, "weight_decay", "SGD")
        self.nesterov = bool(nesterov)
        if self.nesterov and self.momentum == 0:
            raise ValueError("SGD: nesterov=True needs a momentum > 0")
        self.defaults = {"lr": self.lr, "momentum": self.momentum,
                         "weight_decay": self.weight_decay, "nesterov": self.nesterov}

    def step(self):
        for i, p, B in self._grads():
            buf, first = None, False
            if self.momentum:
                first = "momentum_buffer" not in self.state[i]
                buf = self._buffer(i, "momentum_buffer", p)
            B.sgd_update(p.data, p.grad, buf, self.lr, self.momentum, self.weight_decay,
                         self.nesterov, first)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction, as torch.optim.Adam."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0):
        super().__init__(params)
        self.lr = NON_NEGATIVE(lr, "lr", "Adam")
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"Adam: betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (_BETA(betas[0], "betas[0]", "Adam"),
                      _BETA(betas[1], "betas[1]", "Adam"))
        self.eps = NON_NEGATIVE(eps, "eps", "Adam")
        self.weight_decay = NON_NEGATIVE(weight_decay, "weight_decay", "Adam")
        self.defaults = {"lr": self.lr, "betas": self.betas, "eps": self.eps,
                         "weight_decay": self.weight_decay}

    def step(self):
        b1, b2 = self.betas
        for i, p, B in self._grads():
            m = self._buffer(i, "exp_avg", p)
            v = self._buffer(i, "exp_avg_sq", p)
            step = int(self.state[i].get("step", 0)) + 1
            self.state[i]["step"] = step
            B.adam_update(p.data, p.grad, m, v, step, self.lr, b1, b2, self.eps, self.weight_decay)
