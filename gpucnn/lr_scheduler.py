"""Learning-rate schedules with ``torch.optim.lr_scheduler``'s names, arguments and formulas.

A scheduler changes ``optimizer.lr`` (gpucnn's optimizers have one learning rate, where
PyTorch has one per parameter group; ``get_last_lr()`` still returns a one-element list).
Each ``step()`` advances ``last_epoch`` by one and sets the rate with PyTorch's *recursive*
formula (the current rate times a factor), so the rates equal PyTorch's bit for bit;
``step(epoch)`` jumps to ``epoch`` with the closed form, as PyTorch's deprecated form does.

When to call ``step()`` is the user's choice, and decides what a "step" means:

* per epoch -- call it once after each epoch (``StepLR(opt, 30)`` decays every 30 epochs);
* per iteration -- call it after every ``optimizer.step()`` and count ``step_size``,
  ``milestones``, ``T_max`` and ``total_iters`` in iterations (the ResNet paper's
  ``MultiStepLR(opt, [32000, 48000])``).

Constructing a scheduler records ``optimizer.initial_lr`` (once; a second scheduler on the
same optimizer starts from the same base) and sets the rate for ``last_epoch = 0``.
``state_dict()`` is a dict of plain numbers and lists (JSON-able, no pickle), saved in
gpucnn checkpoints; ``load_state_dict`` restores it and puts the restored rate back into
the optimizer, so resuming is exact whichever of the two states is loaded first.

Formulas (``lr`` is the optimizer's current rate, ``t = last_epoch`` after the increment):

* ``StepLR(step_size, gamma=0.1)``: ``lr *= gamma`` when ``t > 0`` and ``t % step_size == 0``
  (closed form ``base_lr * gamma ** (t // step_size)``).
* ``MultiStepLR(milestones, gamma=0.1)``: ``lr *= gamma ** count(t in milestones)``
  (closed form ``base_lr * gamma ** bisect_right(sorted(milestones), t)``).
* ``CosineAnnealingLR(T_max, eta_min=0)``:
  ``lr = (1 + cos(pi t / T_max)) / (1 + cos(pi (t-1) / T_max)) * (lr - eta_min) + eta_min``,
  and ``lr += (base_lr - eta_min) * (1 - cos(pi / T_max)) / 2`` when
  ``(t - 1 - T_max) % (2 T_max) == 0`` (closed form
  ``eta_min + (base_lr - eta_min) * (1 + cos(pi t / T_max)) / 2``; past ``T_max`` it rises
  again, as PyTorch's does).
* ``LinearLR(start_factor=1/3, end_factor=1.0, total_iters=5)``: ``lr = base_lr *
  start_factor`` at ``t = 0``; then for ``0 < t <= total_iters``
  ``lr *= 1 + (end - start) / (total_iters * start + (t - 1) * (end - start))``
  (closed form ``base_lr * (start + (end - start) * min(total_iters, t) / total_iters)``).
"""
from __future__ import annotations

import math
import numbers
from bisect import bisect_right
from collections import Counter

from .validation import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE_INT, Rule

__all__ = ["LRScheduler", "StepLR", "MultiStepLR", "CosineAnnealingLR", "LinearLR",
           "ChainedScheduler"]


_LAST_EPOCH = Rule(int, -1)
_FACTOR_START = Rule(float, 0, 1, low_open=True)
_FACTOR_END = Rule(float, 0, 1)


class LRScheduler:
    """Base class: ``step()``, ``get_last_lr()``, ``last_epoch``, ``base_lrs``,
    ``state_dict()`` / ``load_state_dict()``.  Subclasses define ``get_lr`` (recursive) and
    ``_get_closed_form_lr``."""

    #: attributes saved by state_dict besides the common ones (subclasses extend)
    _hyper: tuple = ()

    def __init__(self, optimizer, last_epoch=-1):
        name = type(self).__name__
        lr = getattr(optimizer, "lr", None)
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
            raise TypeError(f"{name}: expected a gpucnn optimizer (with a numeric .lr), "
                            f"got {type(optimizer).__name__}")
        last_epoch = _LAST_EPOCH(last_epoch, "last_epoch", name)
        self.optimizer = optimizer
        if last_epoch == -1:
            if getattr(optimizer, "initial_lr", None) is None:
                optimizer.initial_lr = float(optimizer.lr)
        elif getattr(optimizer, "initial_lr", None) is None:
            raise ValueError(f"{name}: last_epoch={last_epoch} resumes a schedule, but the "
                             "optimizer has no initial_lr (load the optimizer's state first, "
                             "or use last_epoch=-1 for a fresh run)")
        self.base_lrs = [float(optimizer.initial_lr)]
        self.last_epoch = int(last_epoch)
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    # --------------------------------------------------------------- stepping
    def get_lr(self):
        raise NotImplementedError

    def _get_closed_form_lr(self):
        raise NotImplementedError

    def get_last_lr(self):
        """The rate set by the last ``step()``, as a one-element list (PyTorch's shape)."""
        return list(self._last_lr)

    def step(self, epoch=None):
        """Advance one step (call after ``optimizer.step()``); ``step(epoch)`` jumps to
        ``epoch`` with the closed-form rate."""
        self._step_count += 1
        if epoch is None:
            self.last_epoch += 1
            values = self.get_lr()
        else:
            self.last_epoch = NON_NEGATIVE_INT(epoch, "epoch", f"{type(self).__name__}.step")
            values = self._get_closed_form_lr()
        self.optimizer.lr = float(values[0])
        self._last_lr = [float(self.optimizer.lr)]

    # ------------------------------------------------------------------ state
    def state_dict(self):
        """The schedule's state: plain numbers and lists (no optimizer)."""
        sd = {"type": type(self).__name__, "last_epoch": self.last_epoch,
              "base_lrs": list(self.base_lrs), "_step_count": self._step_count,
              "_last_lr": list(self._last_lr)}
        for k in self._hyper:
            v = getattr(self, k)
            sd[k] = sorted(v.elements()) if isinstance(v, Counter) else v
        return sd

    def check_state_dict(self, state_dict):
        """The parsed values of a :meth:`state_dict` output; ValueError (naming what is wrong)
        when it is not the state of this kind of schedule.  Changes nothing."""
        name = type(self).__name__
        if not isinstance(state_dict, dict) or state_dict.get("type") != name:
            got = state_dict.get("type") if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"{name}.load_state_dict: expected the state of a {name}, got {got!r}")
        missing = [k for k in ("last_epoch", "base_lrs", "_step_count", "_last_lr") + self._hyper
                   if k not in state_dict]
        if missing:
            raise ValueError(f"{name}.load_state_dict: the state lacks {', '.join(missing)}")
        try:
            values = {"last_epoch": int(state_dict["last_epoch"]),
                      "base_lrs": [float(v) for v in state_dict["base_lrs"]],
                      "_step_count": int(state_dict["_step_count"]),
                      "_last_lr": [float(v) for v in state_dict["_last_lr"]]}
            for k in self._hyper:
                v = state_dict[k]
                values[k] = Counter(int(m) for m in v) if k == "milestones" else type(getattr(self, k))(v)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}.load_state_dict: malformed state ({exc})") from None
        if len(values["_last_lr"]) != 1 or len(values["base_lrs"]) != 1:
            raise ValueError(f"{name}.load_state_dict: expected one learning rate (one parameter "
                             f"group), got {len(values['_last_lr'])}")
        return values

    def load_state_dict(self, state_dict):
        """Restore :meth:`state_dict`'s output and set ``optimizer.lr`` to its last rate."""
        for k, v in self.check_state_dict(state_dict).items():
            setattr(self, k, v)
        self.optimizer.lr = self._last_lr[0]
        if getattr(self.optimizer, "initial_lr", None) is None:
            self.optimizer.initial_lr = self.base_lrs[0]

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._hyper)
        return f"{type(self).__name__}({args}, last_epoch={self.last_epoch})"


class StepLR(LRScheduler):
    """Multiply the rate by ``gamma`` every ``step_size`` steps."""

    _hyper = ("step_size", "gamma")

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        self.step_size = POSITIVE_INT(step_size, "step_size", "StepLR")
        self.gamma = NON_NEGATIVE(gamma, "gamma", "StepLR")
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        lr = self.optimizer.lr
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return [lr]
        return [lr * self.gamma]

    def _get_closed_form_lr(self):
        return [b * self.gamma ** (self.last_epoch // self.step_size) for b in self.base_lrs]


class MultiStepLR(LRScheduler):
    """Multiply the rate by ``gamma`` at each milestone (a step count listed twice counts twice)."""

    _hyper = ("milestones", "gamma")

    def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
        try:
            ms = list(milestones)
        except TypeError:
            raise ValueError(f"MultiStepLR: milestones must be a list of step counts, "
                             f"got {milestones!r}") from None
        self.milestones = Counter(NON_NEGATIVE_INT(m, "each milestone", "MultiStepLR") for m in ms)
        self.gamma = NON_NEGATIVE(gamma, "gamma", "MultiStepLR")
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        lr = self.optimizer.lr
        if self.last_epoch not in self.milestones:
            return [lr]
        return [lr * self.gamma ** self.milestones[self.last_epoch]]

    def _get_closed_form_lr(self):
        ms = sorted(self.milestones.elements())
        return [b * self.gamma ** bisect_right(ms, self.last_epoch) for b in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """Cosine from the base rate down to ``eta_min`` over ``T_max`` steps (no restarts)."""

    _hyper = ("T_max", "eta_min")

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        self.T_max = POSITIVE_INT(T_max, "T_max", "CosineAnnealingLR")
        self.eta_min = NON_NEGATIVE(eta_min, "eta_min", "CosineAnnealingLR")
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        lr, t, T, eta = self.optimizer.lr, self.last_epoch, self.T_max, self.eta_min
        if self._is_initial:
            return [lr]
        if self._step_count == 1 and t > 0:
            return [eta + (b - eta) * (1 + math.cos(t * math.pi / T)) / 2 for b in self.base_lrs]
        if (t - 1 - T) % (2 * T) == 0:
            return [lr + (b - eta) * (1 - math.cos(math.pi / T)) / 2 for b in self.base_lrs]
        return [(1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
                * (lr - eta) + eta]

    def _get_closed_form_lr(self):
        return [self.eta_min + (b - self.eta_min) * (1 + math.cos(math.pi * self.last_epoch
                                                                  / self.T_max)) / 2
                for b in self.base_lrs]


class LinearLR(LRScheduler):
    """Warm-up (or decay): the rate factor moves linearly from ``start_factor`` to
    ``end_factor`` over ``total_iters`` steps, then stays."""

    _hyper = ("start_factor", "end_factor", "total_iters")

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5,
                 last_epoch=-1):
        self.start_factor = _FACTOR_START(start_factor, "start_factor", "LinearLR")
        self.end_factor = _FACTOR_END(end_factor, "end_factor", "LinearLR")
        self.total_iters = POSITIVE_INT(total_iters, "total_iters", "LinearLR")
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        lr, t = self.optimizer.lr, self.last_epoch
        s, e, n = self.start_factor, self.end_factor, self.total_iters
        if t == 0:
            return [lr * s]
        if self._is_initial or t > n:
            return [lr]
        return [lr * (1.0 + (e - s) / (n * s + (t - 1) * (e - s)))]

    def _get_closed_form_lr(self):
        s, e, n = self.start_factor, self.end_factor, self.total_iters
        return [b * (s + (e - s) * min(n, self.last_epoch) / n) for b in self.base_lrs]


class ChainedScheduler:
    """Several schedules over one optimizer stepped together (PyTorch's ``ChainedScheduler``):
    each ``step()`` steps every one in order, and since each sets the rate from the current
    one with its recursive formula, their factors multiply -- ``LinearLR`` warm-up chained
    with ``MultiStepLR`` gives ``base_lr * warm-up factor * gamma ** (milestones passed)``.
    ``state_dict()`` holds every schedule's state; ``load_state_dict`` restores them all."""

    def __init__(self, schedulers, optimizer=None):
        schedulers = list(schedulers)
        if not schedulers or not all(isinstance(s, LRScheduler) for s in schedulers):
            raise ValueError("ChainedScheduler: expected a non-empty list of schedulers")
        optimizer = optimizer if optimizer is not None else schedulers[0].optimizer
        if any(s.optimizer is not optimizer for s in schedulers):
            raise ValueError("ChainedScheduler: every scheduler must be built over the same "
                             "optimizer")
        self.optimizer = optimizer
        self.schedulers = schedulers
        self._last_lr = [float(optimizer.lr)]

    def step(self):
        for s in self.schedulers:
            s.step()
        self._last_lr = [float(self.optimizer.lr)]

    def get_last_lr(self):
        return list(self._last_lr)

    def state_dict(self):
        return {"type": "ChainedScheduler", "_last_lr": list(self._last_lr),
                "schedulers": [s.state_dict() for s in self.schedulers]}

    def check_state_dict(self, state_dict):
        if not isinstance(state_dict, dict) or state_dict.get("type") != "ChainedScheduler":
            got = state_dict.get("type") if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"ChainedScheduler.load_state_dict: expected the state of a "
                             f"ChainedScheduler, got {got!r}")
        states = state_dict.get("schedulers")
        if not isinstance(states, list) or len(states) != len(self.schedulers):
            raise ValueError(f"ChainedScheduler.load_state_dict: expected the states of "
                             f"{len(self.schedulers)} schedulers "
                             f"({', '.join(type(s).__name__ for s in self.schedulers)})")
        for s, st in zip(self.schedulers, states):
            s.check_state_dict(st)
        return states

    def load_state_dict(self, state_dict):
        states = self.check_state_dict(state_dict)
        for s, st in zip(self.schedulers, states):
            s.load_state_dict(st)
        self.optimizer.lr = float(state_dict.get("_last_lr", [self.optimizer.lr])[0])
        self._last_lr = [float(self.optimizer.lr)]

    def __repr__(self):
        return f"ChainedScheduler({self.schedulers!r})"
