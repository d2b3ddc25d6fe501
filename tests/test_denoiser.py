"""MultiviewDenoiser: zero-init equals the frozen UNet, the backbone never moves, shared-encoder guidance is exact."""

import copy

import pytest
import torch
from tiny_unets import IF_SHAPED, SD_SHAPED, TEXT_DIM, tiny_unet

from tunemv.adapters.control_branch import ControlBranch
from tunemv.adapters.denoiser import MODES, MultiviewDenoiser
from tunemv.adapters.text import Text
from tunemv.geometry.cameras import Cameras, orbit
from tunemv.neus.latent_sparseneus import LatentSparseNeuS
from tunemv.neus.losses import NeuSLoss

FAMILIES = [pytest.param(SD_SHAPED, id="sd"), pytest.param(IF_SHAPED, id="if")]


def tiny_neus(channels: int) -> LatentSparseNeuS:
    return LatentSparseNeuS(in_channels=channels, feature_channels=8, encoder_hidden_channels=16, time_embedding_dim=32,
                            sdf_hidden_dim=32, sdf_layers=2, geometry_dim=16, feature_hidden_dim=32, num_coarse=8,
                            num_importance=8, upsample_steps=1)


def tiny_denoiser(config: dict, **kwargs) -> MultiviewDenoiser:
    unet = tiny_unet(config)
    channels = config["in_channels"]
    torch.manual_seed(1)
    branch = ControlBranch.from_unet(unet, condition_channels=channels, cross_view_blocks=(1,), cross_view_points=4)
    return MultiviewDenoiser(unet, tiny_neus(channels), branch, prediction_channels=channels, **kwargs)


def wake(denoiser: MultiviewDenoiser) -> MultiviewDenoiser:
    """Give the zero-initialised layers random weights, so every mode's prediction differs."""
    torch.manual_seed(2)
    for parameter in denoiser.control_branch.parameters():
        if not parameter.any():
            torch.nn.init.normal_(parameter, std=0.05)
    return denoiser


def inputs(config: dict, batch: int = 2, views: int = 3):
    x = torch.randn(batch, views, config["in_channels"], 16, 16)
    t = torch.randint(1, 1000, (batch, 1)).expand(batch, views).clone()
    t[:, 0] = 0  # a clean reference view
    cameras = Cameras.stack([orbit(views, 20.0 + 10 * b, resolution=16) for b in range(batch)])
    return x, t, cameras, torch.randn(batch, 5, TEXT_DIM)


@pytest.mark.parametrize("config", FAMILIES)
@torch.no_grad()
def test_at_init_every_mode_equals_the_frozen_unet(config):
    denoiser = tiny_denoiser(config).eval()
    x, t, cameras, text = inputs(config)
    outputs = {mode: denoiser(x, t, cameras, text, mode=mode).prediction for mode in MODES}
    reference = denoiser.unet(x.flatten(0, 1), t.flatten(), text.repeat_interleave(3, 0)).sample
    expected = reference[:, : config["in_channels"]].unflatten(0, (2, 3))  # IF: learned variance dropped
    for mode, prediction in outputs.items():
        torch.testing.assert_close(prediction, expected, rtol=0, atol=1e-6, msg=mode)


@pytest.mark.parametrize("config", FAMILIES)
@pytest.mark.parametrize("view_chunk", [None, 4])
@torch.no_grad()
def test_shared_encoder_predict_equals_separate_calls(config, view_chunk):
    denoiser = wake(tiny_denoiser(config, view_chunk=view_chunk)).eval()
    x, t, cameras, text = inputs(config)
    uncond = torch.zeros_like(text)
    shared = denoiser.predict(x, t, cameras, Text(text), modes=MODES, uncond=Text(uncond))
    for mode in MODES:
        for hidden, predictions in ((text, shared.cond), (uncond, shared.uncond)):
            separate = denoiser(x, t, cameras, hidden, mode=mode).prediction
            torch.testing.assert_close(predictions[mode], separate, rtol=0, atol=1e-5, msg=mode)
    # Awake, the modes really differ, so the equalities above test something.
    assert (shared.cond["mv"] - shared.cond["2d"]).abs().max() > 1e-3
    assert (shared.cond["mv"] - shared.cond["independent"]).abs().max() > 1e-3
    torch.testing.assert_close(shared.neus.image, denoiser(x, t, cameras, text).neus.image)


def test_predict_with_a_subset_of_modes_and_no_uncond():
    denoiser = wake(tiny_denoiser(SD_SHAPED)).eval()
    x, t, cameras, text = inputs(SD_SHAPED)
    with torch.no_grad():
        shared = denoiser.predict(x, t, cameras, Text(text), modes=("independent", "2d"))
        torch.testing.assert_close(shared.cond["independent"], denoiser(x, t, cameras, text, "independent").prediction,
                                   rtol=0, atol=1e-5)
    assert shared.uncond == {} and shared.neus is None and set(shared.cond) == {"independent", "2d"}


@pytest.mark.parametrize("config", FAMILIES)
def test_training_moves_only_the_adapter(config):
    denoiser = tiny_denoiser(config).train()
    assert not denoiser.unet.training  # the frozen UNet stays in eval
    frozen = copy.deepcopy(denoiser.unet.state_dict())
    optimizer = torch.optim.Adam(denoiser.trainable_parameters(), lr=1e-3)
    render_loss = NeuSLoss()
    x, t, cameras, text = inputs(config)
    supervision = Cameras.stack([orbit(2, 40.0, resolution=16, azimuth_start_deg=45)] * 2)
    target = torch.randn(2, 5, config["in_channels"], 16, 16)
    # Zero layers pass no gradient back until a step has moved them; the deepest chain needs three steps.
    for _ in range(3):
        optimizer.zero_grad()
        output = denoiser(x, t, cameras, text, mode="mv", supervision_cameras=supervision)
        loss = (output.prediction - torch.randn_like(output.prediction)).square().mean()
        loss = loss + render_loss(output.neus, target)["total"]
        loss.backward()
        optimizer.step()
    assert output.neus.image.shape[1] == 5 and output.condition.shape == x.shape
    for name, tensor in denoiser.unet.state_dict().items():
        assert torch.equal(tensor, frozen[name]), f"frozen weight {name} changed"
    assert all(p.grad is None for p in denoiser.unet.parameters())
    no_gradient = [n for n, p in denoiser.named_parameters()
                   if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert no_gradient == [], no_gradient


def test_gradient_checkpointing_gives_the_same_gradients():
    def gradients(checkpointing: bool):
        denoiser = wake(tiny_denoiser(SD_SHAPED)).train()
        if checkpointing:
            denoiser.enable_gradient_checkpointing()
            assert denoiser.control_branch.cross_view["1"].gradient_checkpointing and denoiser.neus.gradient_checkpointing
        x, t, cameras, text = inputs(SD_SHAPED)
        torch.manual_seed(3)  # NeuS' stratified samples
        denoiser(x, t, cameras, text).prediction.square().mean().backward()
        return {n: p.grad.clone() for n, p in denoiser.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("views", [1, 2, 8, 16])
@torch.no_grad()
def test_any_number_of_views_with_a_reference(views):
    denoiser = wake(tiny_denoiser(IF_SHAPED)).eval()
    x, t, cameras, text = inputs(IF_SHAPED, batch=1, views=views)
    output = denoiser(x, t, cameras, text, mode="mv")
    assert output.prediction.shape == (1, views, 3, 16, 16)
    assert torch.isfinite(output.prediction).all() and torch.isfinite(output.neus.image).all()


def test_parameter_report_counts_frozen_and_trainable_parts():
    denoiser = tiny_denoiser(SD_SHAPED)
    report = denoiser.parameter_report()
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert f"{count(denoiser.unet):,}" in report.splitlines()[1]  # frozen column of the unet row
    trainable = count(denoiser.neus) + count(denoiser.control_branch)
    assert sum(p.numel() for p in denoiser.trainable_parameters()) == trainable
    assert f"{trainable:,}" in report.splitlines()[-1]


def test_bad_inputs_get_clear_errors():
    denoiser = tiny_denoiser(SD_SHAPED)
    x, t, cameras, text = inputs(SD_SHAPED)
    with pytest.raises(ValueError, match="unknown mode 'nerf'"):
        denoiser(x, t, cameras, text, mode="nerf")
    with pytest.raises(ValueError, match="encoder_hidden_states must be"):
        denoiser(x, t, cameras, text[0])
    with pytest.raises(ValueError, match="timesteps must be"):
        denoiser(x, t[:, :2], cameras, text)
    with pytest.raises(ValueError, match="NeuS reads 3-channel views"):
        MultiviewDenoiser(denoiser.unet, tiny_neus(3), denoiser.control_branch)
    other = ControlBranch.from_unet(tiny_unet(IF_SHAPED), condition_channels=4)
    with pytest.raises(ValueError, match="built for a UNet with"):
        MultiviewDenoiser(denoiser.unet, tiny_neus(4), other)


@torch.no_grad()
def test_sdxl_added_embeddings_reach_every_mode():
    from tiny_pipelines import SDXL_PROJECTION_DIM, SDXL_SHAPED

    unet = tiny_unet(SDXL_SHAPED)
    branch = ControlBranch.from_unet(unet, condition_channels=4, cross_view_blocks=(0,), cross_view_points=4)
    denoiser = wake(MultiviewDenoiser(unet, tiny_neus(4), branch, view_chunk=4)).eval()
    x, t, cameras, _ = inputs(SDXL_SHAPED)
    text = torch.randn(2, 5, SDXL_SHAPED["cross_attention_dim"])
    added = {"text_embeds": torch.randn(2, SDXL_PROJECTION_DIM), "time_ids": torch.tensor([[16.0, 16, 0, 0, 16, 16]] * 2)}
    uncond = {key: torch.zeros_like(value) for key, value in added.items()}
    shared = denoiser.predict(x, t, cameras, Text(text, added), uncond=Text(0 * text, uncond))
    for mode in MODES:
        separate = denoiser(x, t, cameras, 0 * text, mode=mode, added_cond_kwargs=uncond).prediction
        torch.testing.assert_close(shared.uncond[mode], separate, rtol=0, atol=1e-5, msg=mode)
    assert (shared.cond["2d"] - shared.uncond["2d"]).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["sd", "if"])
@torch.no_grad()
def test_the_readme_path_from_a_saved_pipeline(family, tmp_path):
    """Backbone.from_pretrained(folder) -> from_backbone -> predict, with prompts through the real tokenizer."""
    from tiny_pipelines import tiny_if, tiny_sd

    from tunemv.adapters.backbones import Backbone

    (tiny_sd() if family == "sd" else tiny_if()).save_pretrained(tmp_path)
    backbone = Backbone.from_pretrained(tmp_path)
    neus = tiny_neus(backbone.in_channels)
    denoiser = MultiviewDenoiser.from_backbone(backbone, neus, ControlBranch.from_unet(backbone.unet)).eval()
    images = torch.rand(1, 2, 3, 32, 32) * 2 - 1
    views = backbone.encode_views(images) if family == "sd" else images[..., ::2, ::2]  # 16 x 16 model space
    x_t = torch.randn_like(views)
    t = torch.tensor([[0, 500]])
    cameras = Cameras.stack([orbit(2, 20.0, resolution=16)])
    text = backbone.encode_prompt(["a red chair", ""]).hidden_states
    guided = denoiser.predict(x_t, t, cameras, Text(text[:1]), uncond=Text(text[1:]))
    expected = backbone.split_prediction(backbone.unet(x_t[0], t[0], text[:1].expand(2, -1, -1)).sample)
    torch.testing.assert_close(guided.cond["mv"][0], expected, rtol=0, atol=1e-5)  # zero init: the frozen UNet
    assert guided.cond["mv"].shape == (1, 2, backbone.prediction_channels, 16, 16)


@pytest.mark.parametrize("config", FAMILIES)
@torch.no_grad()
def test_cond_only_modes_skip_the_unconditional_copy_and_keep_the_rest_exact(config):
    # Consistency guidance reads ε_ind(c) only: predict(cond_only=("independent",)) must give the same
    # predictions as the full call for everything it returns, and no unconditional "independent".
    denoiser = wake(tiny_denoiser(config)).eval()
    x, t, cameras, text = inputs(config)
    uncond = torch.zeros_like(text)
    modes = ("mv", "independent", "2d")
    full = denoiser.predict(x, t, cameras, Text(text), modes=modes, uncond=Text(uncond))
    for chunk in (None, 3, 5):  # 6 rows per copy: chunks of 5 straddle the cond/uncond boundary
        denoiser.view_chunk = chunk
        part = denoiser.predict(x, t, cameras, Text(text), modes=modes, uncond=Text(uncond),
                                cond_only=("independent",))
        assert set(part.uncond) == {"mv", "2d"} and set(part.cond) == set(modes)
        for mode in modes:
            torch.testing.assert_close(part.cond[mode], full.cond[mode], atol=1e-5, rtol=0, msg=mode)
        for mode in ("mv", "2d"):
            torch.testing.assert_close(part.uncond[mode], full.uncond[mode], atol=1e-5, rtol=0, msg=mode)
