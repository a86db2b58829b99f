"""Learning-rate schedules: PyTorch's rates step by step (skips without torch), the
closed forms without torch, state_dict round trips, argument errors."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

import gpucnn
from gpucnn import Parameter
from gpucnn.optim import SGD, Adam, lr_scheduler
from gpucnn.lr_scheduler import CosineAnnealingLR, LinearLR, MultiStepLR, StepLR


def _opt(lr=0.1, cls=SGD):
    return cls([Parameter(np.zeros(3, dtype=np.float32))], lr=lr)


CASES = [
    ("StepLR", dict(step_size=7, gamma=0.5)),
    ("StepLR", dict(step_size=1)),
    ("MultiStepLR", dict(milestones=[5, 12, 12, 30], gamma=0.3)),
    ("CosineAnnealingLR", dict(T_max=20, eta_min=0.001)),
    ("CosineAnnealingLR", dict(T_max=13)),
    ("LinearLR", dict(start_factor=0.05, end_factor=1.0, total_iters=17)),
    ("LinearLR", dict()),
    ("LinearLR", dict(start_factor=1.0, end_factor=0.1, total_iters=9)),
]


def _rates(sched, opt, steps):
    out = [sched.get_last_lr()[0]]
    assert out[0] == opt.lr
    for _ in range(steps):
        opt.step()
        sched.step()
        out.append(sched.get_last_lr()[0])
        assert out[-1] == opt.lr
    return out


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_rates_equal_torch_step_by_step(name, kw):
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(3))
    topt = torch.optim.SGD([p], lr=0.1)
    tsched = getattr(torch.optim.lr_scheduler, name)(topt, **kw)
    want = [tsched.get_last_lr()[0]]
    for _ in range(50):
        topt.step()
        tsched.step()
        want.append(tsched.get_last_lr()[0])
    opt = _opt(0.1)
    got = _rates(getattr(lr_scheduler, name)(opt, **kw), opt, 50)
    assert got == want   # bit for bit: the same recursive formulas in Python floats


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_closed_form_jump_equals_torch(name, kw):
    torch = pytest.importorskip("torch")
    import warnings
    p = torch.nn.Parameter(torch.zeros(3))
    topt = torch.optim.SGD([p], lr=0.1)
    tsched = getattr(torch.optim.lr_scheduler, name)(topt, **kw)
    opt = _opt(0.1)
    sched = getattr(lr_scheduler, name)(opt, **kw)
    for epoch in (3, 17, 40, 5):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tsched.step(epoch)
        sched.step(epoch)
        assert sched.get_last_lr()[0] == pytest.approx(tsched.get_last_lr()[0], rel=1e-15)


def test_step_lr_formula():
    opt = _opt(0.1)
    rates = _rates(StepLR(opt, step_size=3, gamma=0.1), opt, 9)
    want = [0.1 * 0.1 ** (t // 3) for t in range(10)]
    np.testing.assert_allclose(rates, want, rtol=1e-14)


def test_multistep_formula_and_repeated_milestone():
    opt = _opt(1.0)
    rates = _rates(MultiStepLR(opt, milestones=[4, 2, 4], gamma=0.5), opt, 6)
    np.testing.assert_allclose(rates, [1, 1, .5, .5, .125, .125, .125], rtol=1e-15)


def test_cosine_formula_reaches_eta_min_then_rises():
    opt = _opt(0.2)
    T, eta = 10, 0.01
    rates = _rates(CosineAnnealingLR(opt, T_max=T, eta_min=eta), opt, 15)
    want = [eta + (0.2 - eta) * (1 + math.cos(math.pi * t / T)) / 2 for t in range(16)]
    np.testing.assert_allclose(rates, want, rtol=1e-12)
    assert rates[T] == pytest.approx(eta) and rates[15] > rates[12]


def test_linear_warmup_formula():
    opt = _opt(0.3)
    rates = _rates(LinearLR(opt, start_factor=0.25, total_iters=4), opt, 7)
    want = [0.3 * (0.25 + 0.75 * min(4, t) / 4) for t in range(8)]
    np.testing.assert_allclose(rates, want, rtol=1e-14)


def test_optimizer_uses_the_scheduled_rate():
    p = Parameter(np.ones(2))
    opt = SGD([p], lr=1.0)
    sched = StepLR(opt, step_size=1, gamma=0.5)
    p.grad = np.ones(2)
    opt.step()                     # lr 1.0
    sched.step()
    opt.step()                     # lr 0.5
    np.testing.assert_allclose(p.data, [-0.5, -0.5])


def test_state_dict_round_trip_resumes_exactly():
    opt = _opt(0.1, Adam)
    sched = MultiStepLR(opt, milestones=[3, 6], gamma=0.2)
    full = _rates(sched, opt, 10)
    opt2 = _opt(0.1, Adam)
    s2 = MultiStepLR(opt2, milestones=[3, 6], gamma=0.2)
    for _ in range(4):
        s2.step()
    sd = json.loads(json.dumps(s2.state_dict()))         # JSON-able, as checkpoints store it
    osd = opt2.state_dict()
    opt3 = _opt(0.1, Adam)
    s3 = MultiStepLR(opt3, milestones=[9], gamma=0.9)    # overwritten by the loaded state
    s3.load_state_dict(sd)
    assert opt3.lr == full[4] and s3.last_epoch == 4 and s3.milestones == s2.milestones
    rest = [s3.get_last_lr()[0]]
    for _ in range(6):
        s3.step()
        rest.append(s3.get_last_lr()[0])
    assert rest == full[4:]
    # the optimizer's own state carries the current rate and the base rate
    opt4 = _opt(0.5, Adam)
    opt4.load_state_dict(osd)
    assert opt4.lr == full[4] and opt4.initial_lr == 0.1


def test_resume_with_last_epoch_needs_initial_lr():
    with pytest.raises(ValueError, match="initial_lr"):
        StepLR(_opt(), step_size=2, last_epoch=3)
    opt = _opt()
    opt.initial_lr = 0.1
    s = StepLR(opt, step_size=2, last_epoch=3)
    assert s.last_epoch == 4


def test_second_scheduler_shares_base_lr():
    opt = _opt(0.1)
    StepLR(opt, step_size=1, gamma=0.5).step()
    s2 = CosineAnnealingLR(opt, T_max=4)
    assert s2.base_lrs == [0.1]


@pytest.mark.parametrize("make,exc,match", [
    (lambda o: StepLR(o, step_size=0), ValueError, "StepLR: step_size must be a positive integer, got 0"),
    (lambda o: StepLR(o, step_size=2.5), TypeError, "step_size must be a positive integer"),
    (lambda o: StepLR(o, step_size=2, gamma=float("nan")), ValueError, "gamma must be a non-negative number"),
    (lambda o: MultiStepLR(o, milestones=5), ValueError, "milestones must be a list"),
    (lambda o: MultiStepLR(o, milestones=[3, -1]), ValueError, "each milestone must be a non-negative integer"),
    (lambda o: CosineAnnealingLR(o, T_max=0), ValueError, "T_max must be a positive integer"),
    (lambda o: CosineAnnealingLR(o, T_max=5, eta_min=-1), ValueError, "eta_min must be a non-negative number"),
    (lambda o: LinearLR(o, start_factor=0), ValueError, r"start_factor must be in \(0, 1\]"),
    (lambda o: LinearLR(o, end_factor=1.5), ValueError, r"end_factor must be in \[0, 1\]"),
    (lambda o: LinearLR(o, total_iters=0), ValueError, "total_iters must be a positive integer"),
    (lambda o: StepLR(o, step_size=2, last_epoch=-2), ValueError, "last_epoch must be an integer >= -1"),
    (lambda o: StepLR(o, step_size=2).step(-3), ValueError, "StepLR.step: epoch must be a non-negative"),
])
def test_bad_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make(_opt())


def test_not_an_optimizer_and_wrong_state():
    with pytest.raises(TypeError, match="expected a gpucnn optimizer"):
        StepLR(object(), step_size=1)
    s = StepLR(_opt(), step_size=1)
    with pytest.raises(ValueError, match="expected the state of a StepLR, got 'LinearLR'"):
        s.load_state_dict(LinearLR(_opt()).state_dict())
    sd = s.state_dict()
    del sd["gamma"]
    with pytest.raises(ValueError, match="lacks gamma"):
        s.load_state_dict(sd)


def test_public_names():
    assert gpucnn.StepLR is StepLR and gpucnn.optim.lr_scheduler.LinearLR is LinearLR
