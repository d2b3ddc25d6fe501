"""ControlBranch.from_unet: a copy of the frozen encoder whose residuals start at exactly zero."""

import pytest
import torch
from tiny_unets import IF_SHAPED, SD_SHAPED, TEXT_DIM, tiny_unet

from tunemv.adapters.control_branch import ControlBranch, skip_channels
from tunemv.adapters.cross_view_attention import CrossViewInputs
from tunemv.adapters.unet_halves import decode, encode
from tunemv.geometry.cameras import Cameras, orbit


def inputs(config, views=2):
    x = torch.randn(views, config["in_channels"], 16, 16)
    t = torch.tensor([0, 700])[:views]
    text = torch.randn(views, 5, TEXT_DIM)
    cameras = Cameras.stack([orbit(views, 20.0, resolution=16)])
    return x, t, text, cameras


@pytest.mark.parametrize("config", [SD_SHAPED, IF_SHAPED], ids=["sd", "if"])
def test_zero_initialised_residuals_leave_the_frozen_unet_unchanged(config):
    unet = tiny_unet(config)
    branch = ControlBranch.from_unet(unet, condition_channels=config["in_channels"], cross_view_blocks=(1,))
    x, t, text, cameras = inputs(config)
    condition = torch.randn_like(x)
    residuals = branch(x, t, text, condition, cross_view=CrossViewInputs(cameras))
    state = encode(unet, x, t, text)
    assert [r.shape for r in residuals.down] == [s.shape for s in state.skips]
    assert all((r == 0).all() for r in residuals.down) and (residuals.mid == 0).all()
    with torch.no_grad():
        torch.testing.assert_close(decode(unet, state, residuals.down, residuals.mid), unet(x, t, text).sample,
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("config", [SD_SHAPED, IF_SHAPED], ids=["sd", "if"])
def test_branch_copies_the_encoder_weights_and_nothing_of_the_decoder(config):
    unet = tiny_unet(config)
    branch = ControlBranch.from_unet(unet)
    for name, parameter in branch.encoder.named_parameters():
        assert torch.equal(parameter, unet.get_parameter(name)), name
    assert not any(name.startswith(("up_blocks", "conv_out")) for name, _ in branch.encoder.named_parameters())
    assert len(branch.skip_projections) == len(skip_channels(dict(unet.config)))


def test_every_trainable_part_gets_a_gradient_once_the_zero_layers_have_moved():
    unet = tiny_unet(SD_SHAPED)
    branch = ControlBranch.from_unet(unet, cross_view_blocks=(1,))
    optimizer = torch.optim.SGD(branch.parameters(), lr=0.1)
    x, t, text, cameras = inputs(SD_SHAPED)
    # Zero layers pass no gradient back until a step has moved them; the deepest chain (skip projection,
    # then the condition embedding's zero conv, then its first conv) needs three steps.
    for _ in range(3):
        optimizer.zero_grad()
        residuals = branch(x, t, text, torch.randn_like(x), cross_view=CrossViewInputs(cameras))
        sum((r - 1).square().mean() for r in (*residuals.down, residuals.mid)).backward()
        optimizer.step()
    no_gradient = [n for n, p in branch.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_gradient == [], no_gradient


def test_save_and_load_round_trip(tmp_path):
    branch = ControlBranch.from_unet(tiny_unet(IF_SHAPED), cross_view_blocks=(0,))
    torch.nn.init.normal_(branch.mid_projection.weight)
    branch.save_pretrained(tmp_path)
    loaded = ControlBranch.from_pretrained(tmp_path)
    x, t, text, _ = inputs(IF_SHAPED)
    torch.testing.assert_close(loaded(x, t, text, x).mid, branch(x, t, text, x).mid, rtol=0, atol=0)


def test_bad_cross_view_block_is_rejected():
    with pytest.raises(ValueError, match="no down block 5"):
        ControlBranch.from_unet(tiny_unet(SD_SHAPED), cross_view_blocks=(5,))
