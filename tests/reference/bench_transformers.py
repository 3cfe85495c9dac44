#!/usr/bin/env python3
"""The Python baseline for `glimpse bench encode`: Hugging Face transformers + PyTorch on CPU.

Same shapes as the Rust benchmark: the ViT-B/32 CLIP architecture with random weights, text
latency at batch 1 for 4, 16 and 77 tokens (no padding), and images per second at batch 1, 8 and
32, end to end (PIL decode of a synthetic 12-megapixel JPEG, CLIPImageProcessorPil, encoder) and
for the encoder alone. Prints one JSON object with the same keys as `glimpse bench encode --json`.

    python3 tests/reference/bench_transformers.py [--threads 2]
"""

import argparse
import io
import json
import statistics
import time

import numpy as np
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel


def twelve_megapixel_jpeg(seed: int) -> bytes:
    """4000×3000, quality 90: gradients, 250-pixel checker edges and ±12 noise, as in bench.rs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:3000, 0:4000]
    edge = np.where(((xx // 250) + (yy // 250)) % 2 == 0, 60, 0)
    base = np.stack([xx * 255 // 4000, yy * 255 // 3000, (xx + yy) * 128 // 7000 + 64], axis=-1)
    noise = rng.integers(-12, 13, size=(3000, 4000, 3))
    pixels = np.clip(base + edge[..., None] + noise, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = CLIPConfig(text_config={"eos_token_id": 2}, vision_config={}, projection_dim=512)
    model = CLIPModel(config).eval()
    processor = CLIPImageProcessorPil()

    text_p50_ms = {}
    with torch.inference_mode():
        for tokens in (4, 16, 77):
            ids = torch.full((1, tokens), 320)
            ids[0, 0], ids[0, -1] = 49406, 49407
            for _ in range(30):
                model.get_text_features(input_ids=ids)
            samples = []
            for _ in range(50):
                start = time.perf_counter()
                model.get_text_features(input_ids=ids)
                samples.append((time.perf_counter() - start) * 1e3)
            text_p50_ms[str(tokens)] = statistics.median(samples)

        jpeg = twelve_megapixel_jpeg(7)

        def prepare():
            image = Image.open(io.BytesIO(jpeg)).convert("RGB")
            return processor(images=image, return_tensors="pt")["pixel_values"]

        prepare_samples = []
        for _ in range(3):
            start = time.perf_counter()
            pixels = prepare()
            prepare_samples.append((time.perf_counter() - start) * 1e3)

        batch = pixels.repeat(32, 1, 1, 1)
        model.get_image_features(pixel_values=batch[:2])
        start = time.perf_counter()
        model.get_image_features(pixel_values=batch)
        encode_only_per_s = 32 / (time.perf_counter() - start)

        image_per_s = {}
        for size in (1, 8, 32):
            count = max(size * 2, 16)
            start = time.perf_counter()
            for first in range(0, count, size):
                prepared = torch.cat([prepare() for _ in range(min(size, count - first))])
                model.get_image_features(pixel_values=prepared)
            image_per_s[str(size)] = count / (time.perf_counter() - start)

    print(json.dumps({
        "encoder": f"transformers {__import__('transformers').__version__} / torch {torch.__version__}",
        "text_p50_ms": text_p50_ms,
        "image_per_s": image_per_s,
        "prepare_ms_per_image": statistics.median(prepare_samples),
        "encode_only_per_s": encode_only_per_s,
    }))


if __name__ == "__main__":
    main()
