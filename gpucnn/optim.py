"""Optimizers: read each parameter's ``.grad`` and update ``.data`` in place,
with the same formulas as ``torch.optim`` (W ← W − α ∂L/∂W, plus momentum / Adam)."""
from __future__ import annotations

import numpy as np

from . import backends
from .layers import Parameter
from . import lr_scheduler  # noqa: F401  (gpucnn.optim.lr_scheduler.StepLR, as torch.optim)
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

    # ------------------------------------------------ one flat buffer (fused updates)
    _flat = None

    def fuse(self):
        """Keep the parameters, their gradients and the optimizer state in one flat buffer
        each, so that :meth:`step` is one update launch over all parameters.  Returns self.

        Each ``p.data`` becomes a view into the flat parameter buffer (the model does not
        notice: shapes, dtypes and values are unchanged), and the state arrays views into
        flat state buffers (``state_dict`` is unchanged).  Results are bitwise those of the
        per-parameter update (the update is element-wise).  Parameters on several devices or
        dtypes, or replaced later (``load_state_dict``, ``.to``), are handled: the step
        adopts replaced arrays back into the buffer, and falls back to per-parameter
        updates when the parameters do not share a backend and dtype or some have no
        gradient.  Needs the optimizer's ``_fused_step``."""
        if not hasattr(self, "_fused_step"):
            raise NotImplementedError(f"{type(self).__name__} has no fused update")
        groups = {(id(backends.backend_of(p.data)), np.dtype(p.dtype)) for p in self.params}
        if len(groups) != 1:
            return self
        p0 = self.params[0].data
        B = backends.backend_of(p0)
        sizes = [int(np.prod(p.shape, dtype=np.int64)) for p in self.params]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        total = int(offsets[-1])
        flat = _Flat(B, p0.dtype, total, offsets)
        flat.data = B.zeros((total,), p0.dtype)
        flat.grad = B.zeros((total,), p0.dtype)
        flat.views = [None] * len(self.params)
        flat.grad_views = [flat.view(flat.grad, i, p.shape) for i, p in enumerate(self.params)]
        self._flat = flat
        self._adopt_params()
        return self

    def _adopt_params(self):
        """Point every ``p.data`` at its slice of the flat buffer (copying a replaced array in)."""
        flat = self._flat
        for i, p in enumerate(self.params):
            if flat.views[i] is None or p.data is not flat.views[i]:
                view = flat.view(flat.data, i, p.shape)
                view[...] = p.data if backends.backend_of(p.data) is flat.B \
                    else flat.B.asarray(backends.asnumpy(p.data), dtype=flat.dtype)
                p.data = flat.views[i] = view

    def _flat_state(self, key):
        """The flat buffer of state ``key``, its per-parameter views in ``self.state``
        (creating zeros, or copying in arrays that ``load_state_dict`` replaced)."""
        flat = self._flat
        buf = flat.state.get(key)
        if buf is None:
            buf = flat.state[key] = flat.B.zeros((flat.total,), flat.dtype)
            flat.state_views[key] = [None] * len(self.params)
        views = flat.state_views[key]
        for i, p in enumerate(self.params):
            cur = self.state[i].get(key)
            if views[i] is None or cur is not views[i]:
                view = flat.view(buf, i, p.shape)
                if cur is not None:
                    view[...] = cur if backends.backend_of(cur) is flat.B \
                        else flat.B.asarray(backends.asnumpy(cur), dtype=flat.dtype)
                else:
                    view[...] = 0
                self.state[i][key] = views[i] = view
        return buf

    def _fusable_now(self):
        """Whether this step can be one launch: fused, one group, every gradient present."""
        flat = self._flat
        if flat is None:
            return False
        for p in self.params:
            if p.grad is None or backends.backend_of(p.data) is not flat.B or p.dtype != flat.dtype:
                return False
        self._adopt_params()
        for i, p in enumerate(self.params):      # gradients into the flat gradient buffer
            g = flat.grad_views[i]
            if p.grad is not g:
                if tuple(p.grad.shape) != tuple(p.data.shape):
                    return False
                g[...] = p.grad
                p.grad = g
        return True

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
        """Hyper-parameters (their current values: a learning-rate schedule changes ``lr``;
        ``initial_lr`` once a schedule has recorded it) and per-parameter state as numbers
        and numpy arrays."""
        hyper = {k: getattr(self, k, v) for k, v in self.defaults.items()}
        if getattr(self, "initial_lr", None) is not None:
            hyper["initial_lr"] = float(self.initial_lr)
        state = {}
        for i, s in enumerate(self.state):
            for k, v in s.items():
                state[f"{i}.{k}"] = (np.array(backends.asnumpy(v), copy=True)
                                     if hasattr(v, "shape") else v)
        return {"type": type(self).__name__, "defaults": hyper, "state": state}

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
        if self._fusable_now() and self._fused_step():
            return
        for i, p, B in self._grads():
            buf, first = None, False
            if self.momentum:
                first = "momentum_buffer" not in self.state[i]
                buf = self._buffer(i, "momentum_buffer", p)
            B.sgd_update(p.data, p.grad, buf, self.lr, self.momentum, self.weight_decay,
                         self.nesterov, first)

    def _fused_step(self):
        """One sgd_update over the flat buffers (False: state differs between parameters)."""
        flat = self._flat
        buf, first = None, False
        if self.momentum:
            have = {"momentum_buffer" in st for st in self.state}
            if len(have) != 1:
                return False
            first = not have.pop()
            buf = self._flat_state("momentum_buffer")
        flat.B.sgd_update(flat.data, flat.grad, buf, self.lr, self.momentum, self.weight_decay,
                          self.nesterov, first)
        return True


    # ------------------------------------------ CUDA graph replay (gpucnn/graph.py)
    def graph_ready(self):
        """Whether the fused update can be captured now (fused, momentum buffers present)."""
        if self._flat is None:
            return False
        return not self.momentum or all("momentum_buffer" in st for st in self.state)

    def graph_table(self, rows):
        """The per-replay values for the next ``rows`` replays: here the learning rate alone."""
        return np.array([self.lr], dtype=self._flat.dtype), self.lr

    def graph_update(self, table, row):
        """The update as captured into the graph (lr read from ``table``)."""
        flat = self._flat
        buf = self._flat_state("momentum_buffer") if self.momentum else None
        flat.B.sgd_update_indexed(flat.data, flat.grad, buf, table, self.momentum,
                                  self.weight_decay, self.nesterov)

    #: whether the captured update reads a per-step row of the table (SGD: one lr row)
    graph_uses_row = False

    def graph_row(self, key):
        """The table row the next replay reads, or None when a table built for ``key`` does
        not hold it (the learning rate changed)."""
        return 0 if key == self.lr else None

    def graph_replayed(self):
        """Host bookkeeping after one replay (SGD has none)."""


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
        if self._fusable_now() and self._fused_step():
            return
        b1, b2 = self.betas
        for i, p, B in self._grads():
            m = self._buffer(i, "exp_avg", p)
            v = self._buffer(i, "exp_avg_sq", p)
            step = int(self.state[i].get("step", 0)) + 1
            self.state[i]["step"] = step
            B.adam_update(p.data, p.grad, m, v, step, self.lr, b1, b2, self.eps, self.weight_decay)

    def _fused_step(self):
        """One adam_update over the flat buffers (False: the step counts differ)."""
        steps = {int(st.get("step", 0)) for st in self.state}
        if len(steps) != 1:
            return False
        flat = self._flat
        m = self._flat_state("exp_avg")
        v = self._flat_state("exp_avg_sq")
        step = steps.pop() + 1
        for st in self.state:
            st["step"] = step
        b1, b2 = self.betas
        flat.B.adam_update(flat.data, flat.grad, m, v, step, self.lr, b1, b2, self.eps,
                           self.weight_decay)
        return True


    # ------------------------------------------ CUDA graph replay (gpucnn/graph.py)
    def graph_ready(self):
        """Fused, and every parameter past its first step (the state exists)."""
        steps = {int(st.get("step", 0)) for st in self.state}
        return self._flat is not None and len(steps) == 1 and steps.pop() >= 1

    def graph_table(self, rows):
        """(step_size, inv_sqrt_bc2) for the next ``rows`` steps, as adam_update computes them;
        the key says what the table was built for (lr, first step)."""
        first = int(self.state[0].get("step", 0)) + 1
        b1, b2 = self.betas
        B = self._flat.B
        table = np.array([B.adam_table_row(self._flat.dtype, first + r, self.lr, b1, b2)
                          for r in range(rows)], dtype=self._flat.dtype).reshape(-1)
        return table, (self.lr, first)

    def graph_update(self, table, row):
        flat = self._flat
        m = self._flat_state("exp_avg")
        v = self._flat_state("exp_avg_sq")
        b1, b2 = self.betas
        flat.B.adam_update_indexed(flat.data, flat.grad, m, v, table, row, b1, b2, self.eps,
                                   self.weight_decay)

    graph_uses_row = True

    def graph_row(self, key):
        lr, first = key
        return int(self.state[0].get("step", 0)) + 1 - first if lr == self.lr else None

    def graph_replayed(self):
        for st in self.state:
            st["step"] = int(st.get("step", 0)) + 1


class _Flat:
    """The flat buffers of a fused optimizer: parameters, gradients, state by key."""

    def __init__(self, B, dtype, total, offsets):
        self.B, self.dtype, self.total, self.offsets = B, np.dtype(dtype), total, offsets
        self.state, self.state_views = {}, {}

    def view(self, buf, i, shape):
        return buf[int(self.offsets[i]):int(self.offsets[i + 1])].reshape(shape)
