"""Backbone: tiny pipelines of each family saved in the diffusers layout load back frozen and consistent."""

import json
import re
import shutil
from functools import partial

import pytest
import torch
from diffusers import DDPMScheduler
from tiny_pipelines import SDXL_PROJECTION_DIM, tiny_if, tiny_sd, tiny_sdxl

from tunemv.adapters.backbones import Backbone, ModelError
from tunemv.errors import TunemvError

BUILDERS = {"sd": tiny_sd, "sd-v": partial(tiny_sd, "v_prediction"), "if": tiny_if, "sdxl": tiny_sdxl,
            "sd-wide-text": partial(tiny_sd, text_dim=32)}
# name: family, prediction_type, in/prediction channels, UNet sample size, image resolution, text width
EXPECTED = {"sd": ("sd", "epsilon", 4, 16, 32, 24), "sd-v": ("sd", "v_prediction", 4, 16, 32, 24),
            "if": ("if", "epsilon", 3, 16, 16, 24), "sdxl": ("sdxl", "epsilon", 4, 16, 32, 48)}
FAMILIES = list(EXPECTED)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (pipeline, folder): each tiny pipeline is built and saved once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            pipeline, folder = BUILDERS[name](), tmp_path_factory.mktemp(name)
            pipeline.save_pretrained(folder)
            cache[name] = pipeline, folder
        return cache[name]
    return get


def copy_of(saved, name, tmp_path):
    folder = tmp_path / name
    shutil.copytree(saved(name)[1], folder)
    return folder


def count_calls(module):
    """Batch sizes of the module's forward calls."""
    calls = []
    module.register_forward_hook(lambda _module, args, kwargs, _out: calls.append(
        (args[0] if args else kwargs["input_ids"]).shape[0]), with_kwargs=True)
    return calls


@pytest.mark.parametrize("name", FAMILIES)
def test_round_trip_loads_the_saved_weights_and_reads_the_model(saved, name):
    pipeline, folder = saved(name)
    backbone = Backbone.from_pretrained(folder)
    family, prediction_type, channels, sample_size, resolution, _ = EXPECTED[name]
    assert (backbone.family, backbone.prediction_type) == (family, prediction_type)
    assert (backbone.in_channels, backbone.prediction_channels) == (channels, channels)
    assert (backbone.sample_size, backbone.image_resolution) == (sample_size, resolution)
    assert backbone.name_or_path == str(folder)
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        saved_part, loaded_part = getattr(pipeline, part, None), getattr(backbone, part)
        assert (saved_part is None) == (loaded_part is None), part
        if saved_part is not None:
            expected = saved_part.state_dict()
            assert loaded_part.state_dict().keys() == expected.keys()
            assert all(torch.equal(tensor, expected[key]) for key, tensor in loaded_part.state_dict().items())
    assert backbone.scheduler_config["_class_name"] == type(pipeline.scheduler).__name__
    assert isinstance(backbone.noise_scheduler, DDPMScheduler)
    torch.testing.assert_close(backbone.noise_scheduler.alphas_cumprod, pipeline.scheduler.alphas_cumprod)


@pytest.mark.parametrize("name", FAMILIES)
def test_family_comes_from_the_subfolders_without_model_index(saved, name, tmp_path):
    folder = copy_of(saved, name, tmp_path)
    (folder / "model_index.json").unlink()
    assert Backbone.from_pretrained(folder).family == EXPECTED[name][0]


def test_backbone_is_frozen_and_stays_in_eval_mode(saved):
    backbone = Backbone.from_pretrained(saved("sdxl")[1])
    parent = torch.nn.ModuleDict({"backbone": backbone, "head": torch.nn.Linear(2, 2)})
    parent.train()
    assert parent["head"].training and not backbone.training
    assert not any(module.training for module in backbone.modules())
    assert not any(parameter.requires_grad for parameter in backbone.parameters())
    assert sum(parameter.numel() for parameter in backbone.parameters()) > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, "bfloat16"])
def test_weights_are_stored_in_the_requested_dtype(saved, dtype):
    backbone = Backbone.from_pretrained(saved("sdxl")[1], torch_dtype=dtype)
    assert {parameter.dtype for parameter in backbone.parameters()} == {torch.bfloat16}
    embeddings = backbone.encode_prompt(["a red chair"])
    assert embeddings.hidden_states.dtype == embeddings.added_cond_kwargs["time_ids"].dtype == torch.bfloat16


def test_fp16_keeps_a_force_upcast_vae_in_fp32(saved):
    backbone = Backbone.from_pretrained(saved("sd")[1], torch_dtype=torch.float16)
    assert backbone.vae.config.force_upcast and backbone.vae.dtype == torch.float32
    assert backbone.unet.dtype == backbone.text_encoder.dtype == torch.float16


@pytest.mark.parametrize("name", FAMILIES)
def test_each_distinct_prompt_is_encoded_once(saved, name):
    backbone = Backbone.from_pretrained(saved(name)[1], prompt_cache_size=3)
    calls = count_calls(backbone.text_encoder)
    first = backbone.encode_prompt(["a red chair", "", "a red chair"])
    assert calls == [2]  # one batch of the two distinct prompts
    again = backbone.encode_prompt(["", "a red chair"])
    assert calls == [2]
    torch.testing.assert_close(again.hidden_states, first.hidden_states[[1, 0]], rtol=0, atol=0)
    torch.testing.assert_close(first.hidden_states[0], first.hidden_states[2], rtol=0, atol=0)
    assert not torch.equal(first.hidden_states[0], first.hidden_states[1])
    backbone.encode_prompt(["a blue mug", "a red chair", "a table"])
    assert calls == [2, 2] and len(backbone._prompt_cache) == 3  # least recently used ("") dropped
    backbone.clear_prompt_cache()
    backbone.encode_prompt("a red chair")
    assert calls == [2, 2, 1]


def test_moving_the_backbone_drops_cached_embeddings(saved):
    backbone = Backbone.from_pretrained(saved("sd")[1])
    calls = count_calls(backbone.text_encoder)
    backbone.encode_prompt([""])
    backbone.to(torch.bfloat16)
    assert backbone.encode_prompt([""]).hidden_states.dtype == torch.bfloat16 and calls == [1, 1]


@pytest.mark.parametrize("name", FAMILIES)
def test_prompt_embeddings_match_the_diffusers_pipeline(saved, name):
    pipeline, folder = saved(name)
    backbone = Backbone.from_pretrained(folder)
    prompts = ["A photo of a red chair ", "blue mug on a table"]
    embeddings = backbone.encode_prompt([*prompts, ""])
    width = EXPECTED[name][-1]
    assert embeddings.hidden_states.shape == (3, 77, width)  # IF: 77 T5 tokens although the tokenizer says 1e30
    with torch.no_grad():
        if name == "sdxl":
            expected, uncond, pooled, uncond_pooled = pipeline.encode_prompt(prompts, device="cpu")
            added = embeddings.added_cond_kwargs
            torch.testing.assert_close(added["text_embeds"], torch.cat([pooled, uncond_pooled[:1]]))
            assert not uncond_pooled.any()  # force_zeros_for_empty_prompt
            time_ids = pipeline._get_add_time_ids((32, 32), (0, 0), (32, 32), torch.float32, SDXL_PROJECTION_DIM)
            torch.testing.assert_close(added["time_ids"], time_ids.repeat(3, 1))
        elif name == "if":
            expected, uncond = pipeline.encode_prompt(prompts, device="cpu")
        else:
            expected, uncond = pipeline.encode_prompt(prompts, "cpu", 1, True)
    torch.testing.assert_close(embeddings.hidden_states, torch.cat([expected, uncond[:1]]))


@pytest.mark.parametrize("name", FAMILIES)
def test_the_unet_runs_on_the_encoded_prompts(saved, name):
    backbone = Backbone.from_pretrained(saved(name)[1])
    embeddings = backbone.encode_prompt(["a red chair", ""])
    x = torch.randn(2, backbone.in_channels, 8, 8)  # smaller than sample_size: faster, and any even size works
    with torch.no_grad():
        out = backbone.unet(x, torch.tensor([10, 900]), embeddings.hidden_states,
                            added_cond_kwargs=embeddings.added_cond_kwargs).sample
    assert out.shape[1] == backbone.unet.config.out_channels
    assert backbone.split_prediction(out).shape == x.shape and torch.isfinite(out).all()


def test_split_prediction_keeps_the_first_half_for_if(saved):
    if_backbone = Backbone.from_pretrained(saved("if")[1])
    output = torch.randn(2, 5, 6, 8, 8)  # (B, V, 2C, H, W): prediction, then learned variance
    torch.testing.assert_close(if_backbone.split_prediction(output), output[:, :, :3], rtol=0, atol=0)
    sd_output = torch.randn(2, 4, 8, 8)
    assert torch.equal(Backbone.from_pretrained(saved("sd")[1]).split_prediction(sd_output), sd_output)


def test_sd_views_round_trip_through_the_scaled_vae(saved):
    pipeline, folder = saved("sd")
    backbone = Backbone.from_pretrained(folder, vae_chunk=4)
    images = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    latents = backbone.encode_views(images)
    assert latents.shape == (2, 3, 4, 8, 8)
    with torch.no_grad():
        mean = pipeline.vae.encode(images[1]).latent_dist.mean * pipeline.vae.config.scaling_factor
        decoded = pipeline.vae.decode(latents[1] / pipeline.vae.config.scaling_factor).sample
    torch.testing.assert_close(latents[1], mean, rtol=0, atol=1e-5)
    assert torch.equal(backbone.encode_views(images), latents)  # the posterior mean: deterministic
    sampled = backbone.encode_views(images, sample=True, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(sampled, latents, atol=1e-3)
    views = backbone.decode_views(latents)
    assert views.shape == images.shape
    torch.testing.assert_close(views[1], decoded, rtol=0, atol=1e-5)
    backbone.vae_chunk = 6  # one chunk for all 6 views gives the same result as chunks of 4 and 2
    torch.testing.assert_close(backbone.encode_views(images), latents, rtol=0, atol=1e-5)
    torch.testing.assert_close(backbone.decode_views(latents), views, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, V, 3, H, W\)"):
        backbone.encode_views(images[0])


def test_if_views_are_pixels(saved):
    backbone = Backbone.from_pretrained(saved("if")[1])
    images = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    assert torch.equal(backbone.encode_views(images), images) and torch.equal(backbone.decode_views(images), images)
    assert torch.equal(backbone.background_latent, torch.ones(3))


def test_sd_background_is_the_latent_of_a_white_image(saved):
    backbone = Backbone.from_pretrained(saved("sd")[1])
    background = backbone.background_latent
    assert background.shape == (4,)
    colours = torch.tensor([1.0, -1.0, 0.0]).view(1, 3, 1, 1, 1).expand(1, 3, 3, 48, 48)  # white, black, grey
    white, black, grey = backbone.encode_views(colours)[0, :, :, 12, 12]  # centres of larger images
    assert (background - white).norm() < 0.25 * min((background - black).norm(), (background - grey).norm())


def test_a_missing_folder_or_subfolder_is_one_clear_error(saved, tmp_path):
    with pytest.raises(TunemvError, match=re.escape(f"{tmp_path / 'nowhere'}: no such folder")):
        Backbone.from_pretrained(tmp_path / "nowhere")
    folder = copy_of(saved, "sd", tmp_path)
    shutil.rmtree(folder / "unet")
    with pytest.raises(ModelError, match=re.escape(f"{folder}: no 'unet' subfolder")):
        Backbone.from_pretrained(folder)


def test_an_unknown_family_is_rejected(saved, tmp_path):
    folder = copy_of(saved, "sd", tmp_path)
    with pytest.raises(ModelError, match="unknown backbone family 'kandinsky'"):
        Backbone.from_pretrained(folder, family="kandinsky")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "KandinskyPipeline"}))
    with pytest.raises(ModelError, match=re.escape(f"{folder}: unknown pipeline class 'KandinskyPipeline'")):
        Backbone.from_pretrained(folder)
    assert Backbone.from_pretrained(folder, family="sd").family == "sd"


def test_an_incompatible_text_encoder_is_rejected(saved):
    folder = saved("sd-wide-text")[1]
    with pytest.raises(ModelError, match=re.escape(f"{folder}: text encoder width 32 does not match") + ".* width 24$"):
        Backbone.from_pretrained(folder)


def test_mismatched_parts_are_rejected(saved):
    sd, if_ = saved("sd")[0], saved("if")[0]
    with pytest.raises(ModelError, match="mixed: UNet in_channels 3 != VAE latent_channels 4"):
        Backbone(if_.unet, sd.text_encoder, sd.tokenizer, sd.scheduler.config, vae=sd.vae, name_or_path="mixed")
    with pytest.raises(ModelError, match="mixed: UNet predicts 6 channels for 3 input channels"):
        Backbone(if_.unet, if_.text_encoder, if_.tokenizer, sd.scheduler.config, name_or_path="mixed")


def if_folder_with_a_sentencepiece_tokenizer(folder):
    """A tiny IF pipeline folder in DeepFloyd's own tokenizer layout: ``tokenizer/spiece.model`` (a SentencePiece
    unigram model trained here, offline) with ``"tokenizer_class": "T5Tokenizer"``, as IF-I-XL-v1.0 ships it."""
    import io

    import sentencepiece

    captions = ["a red chair", "a blue table with four legs", "a green mug", "an orange torus", "a purple stool"]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(captions * 20), model_writer=model, vocab_size=40, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2)
    pipeline = tiny_if()
    vocabulary = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
    pipeline.text_encoder.resize_token_embeddings(vocabulary)
    pipeline.save_pretrained(folder)
    tokenizer = folder / "tokenizer"
    shutil.rmtree(tokenizer)
    tokenizer.mkdir()
    (tokenizer / "spiece.model").write_bytes(model.getvalue())
    special = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    (tokenizer / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "model_max_length": 77, "extra_ids": 0, **special}))
    (tokenizer / "special_tokens_map.json").write_text(json.dumps(special))
    return folder, vocabulary


def test_an_if_folder_with_deepfloyds_sentencepiece_tokenizer_loads(tmp_path):
    """IF ships ``spiece.model``; without sentencepiece and protobuf (now dependencies) AutoTokenizer cannot
    read it."""
    folder, vocabulary = if_folder_with_a_sentencepiece_tokenizer(tmp_path / "if-spiece")
    backbone = Backbone.from_pretrained(folder)
    assert backbone.family == "if" and type(backbone.tokenizer).__name__.startswith("T5Tokenizer")
    ids = backbone.tokenizer("a red chair").input_ids
    assert ids[-1] == 1 and 2 not in ids and max(ids) < vocabulary  # ends with </s>, no unknown pieces
    text = backbone.encode_prompt(["a red chair", "A Red Chair ", ""])
    assert text.hidden_states.shape == (3, 77, backbone.text_encoder.config.d_model)
    torch.testing.assert_close(text.hidden_states[0], text.hidden_states[1])  # IF's lower-case, strip
    assert not torch.equal(text.hidden_states[0], text.hidden_states[2])
