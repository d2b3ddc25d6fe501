import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from tunemv.training.ema import warmup_decay, warmup_ema_multi_avg_fn


def averaged_after(values, decay, multi_avg_fn=warmup_ema_multi_avg_fn):
    live = torch.nn.Linear(1, 1, bias=False)
    ema = AveragedModel(live, multi_avg_fn=multi_avg_fn(decay), use_buffers=True)
    for value in values:
        live.weight.data.fill_(value)
        ema.update_parameters(live)
    return ema.module.weight.item()


def test_the_ema_follows_the_warmed_up_recursion():
    values = [float(v) for v in torch.linspace(-1, 3, 40)]
    expected = values[0]  # AveragedModel copies the first update
    for n, value in enumerate(values[1:], start=1):
        decay = min(0.999, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * value
    assert averaged_after(values, 0.999) == pytest.approx(expected, rel=1e-6)


def test_a_short_run_forgets_its_initial_weights_and_a_long_one_is_the_plain_ema():
    # 250 updates at 1.0 after a start at 0: the fixed decay 0.999 keeps 0.999^249 = 78% of the start.
    steps = [0.0] + [1.0] * 249
    assert averaged_after(steps, 0.999) > 0.9
    assert averaged_after(steps, 0.999, get_ema_multi_avg_fn) < 0.25  # calibration: torch's fixed decay
    # Once (1 + n) / (10 + n) passes the decay, each update is the plain EMA step.
    assert warmup_decay(0.9, 200) == 0.9 and warmup_decay(0.9, 5) == pytest.approx(6 / 15)


def test_a_decay_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match=r"ema_decay 1\.0"):
        warmup_ema_multi_avg_fn(1.0)
