"""The split UNet forward equals diffusers' own forward, with and without ControlNet residuals."""

import pytest
import torch
from tiny_unets import IF_SHAPED, SD_SHAPED, TEXT_DIM, tiny_unet

from tunemv.adapters.unet_halves import decode, encode


@pytest.mark.parametrize("config", [SD_SHAPED, IF_SHAPED], ids=["sd", "if"])
@pytest.mark.parametrize("size", [16, 12])  # 12 is not a multiple of the down factor: upsample sizes forwarded
def test_encode_then_decode_equals_the_unet_forward(config, size):
    unet = tiny_unet(config)
    x = torch.randn(3, config["in_channels"], size, size)
    t = torch.tensor([0, 500, 999])
    text = torch.randn(3, 5, TEXT_DIM)
    with torch.no_grad():
        state = encode(unet, x, t, text)
        residuals = tuple(torch.randn_like(skip) for skip in state.skips)
        mid = torch.randn_like(state.mid)
        torch.testing.assert_close(decode(unet, state), unet(x, t, text).sample, rtol=0, atol=1e-5)
        expected = unet(x, t, text, down_block_additional_residuals=residuals,
                        mid_block_additional_residual=mid).sample
        torch.testing.assert_close(decode(unet, state, residuals, mid), expected, rtol=0, atol=1e-5)


def test_wrong_number_of_residuals_is_rejected():
    unet = tiny_unet(SD_SHAPED)
    state = encode(unet, torch.randn(1, 4, 16, 16), torch.tensor([1]), torch.randn(1, 5, TEXT_DIM))
    with pytest.raises(ValueError, match="down residuals"):
        decode(unet, state, state.skips[:-1])
