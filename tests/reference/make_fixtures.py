#!/usr/bin/env python3
"""Writes the CLIP parity fixtures that the Rust tests in tests/clip_parity.rs read.

Everything here is produced by Hugging Face `transformers` (versions pinned in
requirements.txt) so that the Rust port is checked against the upstream implementation:

* tokenizer/openai-clip/   the real CLIP BPE tokenizer (49,408 tokens), built from the vocabulary
                           OpenAI published with CLIP (vendored from open_clip_torch, MIT licence,
                           see LICENSE-clip-vocab) and saved by transformers' CLIPTokenizer.
* checkpoints/<name>/      small random-weight CLIP checkpoints in the standard Hugging Face layout
                           (config.json, model.safetensors, tokenizer.json, preprocessor_config.json).
                           Their tokenizers keep the first merges of the real vocabulary only, so the
                           token-embedding tables stay small. Every LayerNorm weight and bias and
                           every linear bias is random, so a port that forgets one fails.
* images/                  test images: solid colour, gradient, checkerboard, noise (PNG and JPEG),
                           non-square, tiny, grayscale, palette, RGBA, grey+alpha, CMYK, EXIF-rotated.
* expected/<name>.json     token ids per query and the list of images;
  expected/<name>.safetensors
                           pixel values (CLIPImageProcessorPil, fed by transformers' load_image, which
                           applies EXIF orientation and converts to RGB), unit text embeddings per
                           query and unit image embeddings per image, all float32.

Run from the repository root:  python3 tests/reference/make_fixtures.py
The output is deterministic for a given set of package versions.
"""

import gzip
import importlib.util
import json
import pathlib
import shutil

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer
from transformers.image_utils import load_image

HERE = pathlib.Path(__file__).resolve().parent
SEED = 20261123

QUERIES = [
    "a dog",
    "dog",
    "Kids on a RED sled!!!",
    "  whiteboard   from\tthe March\n offsite  ",
    "café crème brûlée",
    "cafe\u0301 cre\u0300me",  # decomposed accents: NFC must compose them
    "日本の写真 🐶 ümlaut ÀÉÎ",
    "it's they're we'll I'd you've",
    "beach at dusk -people 2:\"golden retriever\"",
    "2024 photos, 3.5mm lens & f/1.8 @ 1/250s",
    "",
    " ".join(f"word{i} and the quick brown fox" for i in range(30)),  # far over 77 tokens
]


def bytes_to_unicode():
    """CLIP's (and GPT-2's) reversible byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_bpe_merges():
    spec = importlib.util.find_spec("open_clip")  # locates the package without importing it
    path = pathlib.Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    # The same slice OpenAI's CLIP tokenizer takes: skip the header, keep 49152 - 256 - 2 merges.
    return [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]


def write_tokenizer(directory: pathlib.Path, merge_count: int, pad_token: str) -> CLIPTokenizer:
    """Builds CLIP's vocabulary the way OpenAI does, from the first `merge_count` merges."""
    merges = clip_bpe_merges()[:merge_count]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(
        vocab={token: i for i, token in enumerate(vocab)},
        merges=merges,
        pad_token=pad_token,
        model_max_length=77,
    )
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)
    return tokenizer


def make_images(directory: pathlib.Path) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    written = []

    def save(name, image, **kwargs):
        image.save(directory / name, **kwargs)
        written.append(name)

    save("solid.png", Image.new("RGB", (50, 40), (200, 30, 90)))
    yy, xx = np.mgrid[0:61, 0:97]
    gradient = np.stack([xx * 255 // 96, yy * 255 // 60, (xx + yy) * 255 // 156], axis=-1).astype(np.uint8)
    save("gradient.png", Image.fromarray(gradient))  # non-square, wider than tall
    save("gradient.jpg", Image.fromarray(gradient), quality=90)
    checker = ((np.indices((80, 80)) // 8).sum(axis=0) % 2 * 255).astype(np.uint8)
    save("checkerboard.png", Image.fromarray(np.stack([checker] * 3, axis=-1)))
    noise = rng.integers(0, 256, size=(90, 70, 3), dtype=np.uint8)  # taller than wide
    save("noise.png", Image.fromarray(noise))
    save("noise.jpg", Image.fromarray(noise), quality=85)
    save("tiny.png", Image.fromarray(rng.integers(0, 256, size=(3, 5, 3), dtype=np.uint8)))
    large = np.stack([xx * 0 + 40, yy * 4, xx * 2], axis=-1).astype(np.uint8)
    save("upscaled-source.png", Image.fromarray(large).resize((640, 403), Image.NEAREST))  # real downscale
    save("grayscale.png", Image.fromarray(gradient[..., 0]))  # mode L
    save("palette.png", Image.fromarray(gradient).convert("P", palette=Image.ADAPTIVE, colors=16))
    rgba = np.concatenate([gradient, (yy * 4).astype(np.uint8)[..., None]], axis=-1)
    save("rgba.png", Image.fromarray(rgba, "RGBA"))
    save("gray-alpha.png", Image.fromarray(rgba, "RGBA").convert("LA"))
    save("cmyk.jpg", Image.fromarray(gradient).convert("CMYK"), quality=95)
    save("grayscale.jpg", Image.fromarray(gradient[..., 1]), quality=90)
    # EXIF orientation 6: stored rotated, to be shown rotated 90° clockwise.
    exif = Image.Exif()
    exif[0x0112] = 6
    save("exif-rotated.jpg", Image.fromarray(gradient), quality=90, exif=exif.tobytes())
    return written


def randomise(model: CLIPModel, generator: torch.Generator):
    """Replaces every parameter with random values of a sensible scale."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name == "logit_scale":
                continue
            if "norm" in name or "layrnorm" in name:
                param.copy_(1.0 + 0.2 * noise if name.endswith("weight") else 0.2 * noise)
            elif name.endswith("bias"):
                param.copy_(0.1 * noise)
            elif "embedding" in name:
                param.copy_(0.5 * noise)
            else:
                param.copy_(noise / param.shape[-1] ** 0.5 if param.dim() == 2 else noise * 0.1)


CHECKPOINTS = {
    # Odd sizes everywhere, quick_gelu, the legacy eos_token_id == 2 pooling (argmax of the ids),
    # a patch size that does not divide the image, resize to 72 then crop to 64.
    "clip-odd": dict(
        merges=2000,
        pad_token="<|endoftext|>",
        text=dict(hidden_size=48, intermediate_size=100, num_hidden_layers=3, num_attention_heads=4,
                  max_position_embeddings=77, hidden_act="quick_gelu", eos_token_id=2, layer_norm_eps=1e-5),
        vision=dict(hidden_size=80, intermediate_size=150, num_hidden_layers=3, num_attention_heads=5,
                    image_size=64, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5),
        projection_dim=24,
        processor=dict(size={"shortest_edge": 72}, crop_size={"height": 64, "width": 64}),
    ),
    # Exact gelu, pooling at the first end-of-text id, another padding token, other mean/std and eps.
    "clip-gelu": dict(
        merges=1200,
        pad_token="!",
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-6),
        vision=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3,
                    image_size=32, patch_size=8, hidden_act="gelu", layer_norm_eps=1e-6),
        projection_dim=32,
        processor=dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                       image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]),
    ),
}


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def make_checkpoint(name: str, spec: dict, image_names: list[str]):
    directory = HERE / "checkpoints" / name
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    tokenizer = write_tokenizer(directory, spec["merges"], spec["pad_token"])
    text = dict(spec["text"], vocab_size=len(tokenizer),
                bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    text.setdefault("eos_token_id", tokenizer.eos_token_id)
    config = CLIPConfig(text_config=text, vision_config=spec["vision"], projection_dim=spec["projection_dim"])
    torch.manual_seed(SEED)
    model = CLIPModel(config).eval()
    randomise(model, torch.Generator().manual_seed(SEED))
    model.save_pretrained(directory, safe_serialization=True)
    processor = CLIPImageProcessorPil(**spec["processor"])
    processor.save_pretrained(directory)

    expected_json = {"queries": [], "images": []}
    tensors = {}
    with torch.no_grad():
        for i, query in enumerate(QUERIES):
            ids = tokenizer(query, truncation=True, max_length=77)["input_ids"]
            expected_json["queries"].append({"text": query, "ids": ids})
            features = model.get_text_features(input_ids=torch.tensor([ids])).pooler_output
            tensors[f"text_embeds.{i}"] = unit(features)[0].contiguous()
        for i, image_name in enumerate(image_names):
            image = load_image(str(HERE / "images" / image_name))
            pixels = processor(images=image, return_tensors="pt")["pixel_values"]
            features = model.get_image_features(pixel_values=pixels).pooler_output
            expected_json["images"].append({"file": image_name})
            tensors[f"pixel_values.{i}"] = pixels[0].contiguous()
            tensors[f"image_embeds.{i}"] = unit(features)[0].contiguous()
    (HERE / "expected").mkdir(exist_ok=True)
    (HERE / "expected" / f"{name}.json").write_text(json.dumps(expected_json, ensure_ascii=False, indent=1) + "\n")
    save_file(tensors, str(HERE / "expected" / f"{name}.safetensors"))


def make_full_tokenizer():
    directory = HERE / "tokenizer" / "openai-clip"
    if directory.exists():
        shutil.rmtree(directory)
    tokenizer = write_tokenizer(directory, 49152 - 256 - 2, "<|endoftext|>")
    for leftover in ("vocab.json", "merges.txt"):  # tokenizer.json holds them already
        (directory / leftover).unlink(missing_ok=True)
    expected = [{"text": q, "ids": tokenizer(q, truncation=True, max_length=77)["input_ids"]} for q in QUERIES]
    (HERE / "expected").mkdir(exist_ok=True)
    (HERE / "expected" / "tokenizer-openai-clip.json").write_text(
        json.dumps({"queries": expected}, ensure_ascii=False, indent=1) + "\n")


def main():
    torch.set_num_threads(1)
    image_names = make_images(HERE / "images")
    make_full_tokenizer()
    for name, spec in CHECKPOINTS.items():
        make_checkpoint(name, spec, image_names)


if __name__ == "__main__":
    main()
