"""A tiny Stable Diffusion pipeline and a STAND-IN CLIP model, built from configs, for tests only.

Both are saved with ``save_pretrained`` so the suite loads them through the same ``from_pretrained``
path as ``CompVis/stable-diffusion-v1-4`` and a real CLIP. Their weights are random: any number computed
with them is meaningless, which the stand-in's folder name says.
"""
from __future__ import annotations

import json
import string
from pathlib import Path

import torch

STANDIN_CLIP_DIR = "standin-random-clip"
TOKEN_CHARS = string.ascii_lowercase + string.digits + ".,'!?-:&#/()\""


def write_tiny_vocab(folder: Path) -> tuple[Path, Path]:
    """A character-level CLIP BPE vocabulary (every character, word-final or not) with two merges."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in TOKEN_CHARS:
            vocab[c + suffix] = len(vocab)
    merges = ["t h", "th e</w>"]
    for token in ("th", "the</w>"):
        vocab[token] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder / "vocab.json", folder / "merges.txt"


def tiny_tokenizer(folder: Path):  # -> CLIPTokenizer
    from transformers import CLIPTokenizer

    vocab, merges = write_tiny_vocab(folder)
    return CLIPTokenizer(str(vocab), str(merges), model_max_length=77, pad_token="<|endoftext|>")


def tiny_text_config(vocab_size: int):  # -> CLIPTextConfig
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                          pad_token_id=1)


def build_tiny_pipeline(path: Path, seed: int = 0) -> Path:
    """Save a random StableDiffusionPipeline: 16x16 images, 4x8x8 latents, SD v1.4's scheduler config."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    path = Path(path)
    tokenizer = tiny_tokenizer(path.parent / f".{path.name}-vocab")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32), layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            norm_num_groups=8, sample_size=16)
        text_encoder = CLIPTextModel(tiny_text_config(len(tokenizer)))
    # SD v1.4 ships a PNDM config; the suite derives its DDPM training schedule from it, as ReTrack does.
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(path)
    return path


def write_standin_clip(folder: Path, seed: int = 0) -> Path:
    """Save a random CLIPModel with tokenizer and image processor in ``folder/standin-random-clip``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    out = Path(folder) / STANDIN_CLIP_DIR
    tokenizer = tiny_tokenizer(Path(folder) / ".standin-clip-vocab")
    config = CLIPConfig(
        text_config=tiny_text_config(len(tokenizer)).to_dict(),
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def write_prompt_list(path: Path, prompts: list[dict[str, str]]) -> Path:
    """A JSON-lines prompt list (fields original, modified[, id])."""
    path.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    return path


TWO_PROMPTS = [
    {"original": "Sylvester Stallone", "modified": "Sylvester Stallone in a garden", "id": "stallone"},
    {"original": "The Happy Scientist podcast", "modified": "A scientist podcast cover"},
]
