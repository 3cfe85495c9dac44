#!/usr/bin/env python3
"""The ONNX Runtime baseline for `glimpse bench encode` (what Immich runs): the same ViT-B/32 CLIP
architecture with random weights, exported from transformers to ONNX (f32), run by ONNX Runtime's
CPU provider with the given number of threads.

Text: p50 of 50 calls at batch 1 for 4, 16 and 77 tokens, after 30 warm-up calls (the model only,
as `text_p50_ms` in the Rust benchmark minus tokenizing, which is microseconds). Images: the image
tower alone at batch 32 (`encode_only_per_s`). Prints one JSON object.

    python3 tests/reference/bench_onnxruntime.py [--threads 2]
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from transformers import CLIPConfig, CLIPModel


class TextTower(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model.get_text_features(input_ids=input_ids)


class ImageTower(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model.get_image_features(pixel_values=pixel_values)


def session(path: Path, threads: int) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = CLIPConfig(text_config={"eos_token_id": 2}, vision_config={}, projection_dim=512)
    model = CLIPModel(config).eval()

    with tempfile.TemporaryDirectory() as scratch:
        text_path, image_path = Path(scratch) / "text.onnx", Path(scratch) / "image.onnx"
        ids = torch.full((1, 16), 320)
        ids[0, 0], ids[0, -1] = 49406, 49407
        torch.onnx.export(
            TextTower(model), (ids,), text_path, input_names=["input_ids"],
            output_names=["text_embeds"], dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}},
            opset_version=17, dynamo=False,
        )
        pixels = torch.randn(2, 3, 224, 224)
        torch.onnx.export(
            ImageTower(model), (pixels,), image_path, input_names=["pixel_values"],
            output_names=["image_embeds"], dynamic_axes={"pixel_values": {0: "batch"}},
            opset_version=17, dynamo=False,
        )
        text, image = session(text_path, args.threads), session(image_path, args.threads)

        text_p50_ms = {}
        for tokens in (4, 16, 77):
            ids = np.full((1, tokens), 320, dtype=np.int64)
            ids[0, 0], ids[0, -1] = 49406, 49407
            for _ in range(30):
                text.run(None, {"input_ids": ids})
            samples = []
            for _ in range(50):
                start = time.perf_counter()
                text.run(None, {"input_ids": ids})
                samples.append((time.perf_counter() - start) * 1e3)
            text_p50_ms[str(tokens)] = statistics.median(samples)

        batch = np.random.default_rng(0).standard_normal((32, 3, 224, 224)).astype(np.float32)
        image.run(None, {"pixel_values": batch[:2]})
        start = time.perf_counter()
        image.run(None, {"pixel_values": batch})
        encode_only_per_s = 32 / (time.perf_counter() - start)

    print(json.dumps({
        "encoder": f"onnxruntime {onnxruntime.__version__} (f32, CPU provider, "
                   f"{args.threads} threads)",
        "text_p50_ms": text_p50_ms,
        "encode_only_per_s": encode_only_per_s,
    }))


if __name__ == "__main__":
    main()
