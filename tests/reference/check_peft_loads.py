#!/usr/bin/env python3
"""Loads a LoRA adapter that Glimpse wrote into PEFT and checks that PEFT's logits equal the
ones Glimpse computed with it.

    python3 tests/reference/check_peft_loads.py DIRECTORY

DIRECTORY holds the adapter (adapter_config.json, adapter_model.safetensors) and
glimpse_logits.safetensors: `case<N>` → Glimpse's logits at the last position of fixture case N
of make_vlm_fixtures.py, with the adapter. tests/vlm_lora.rs writes such a directory and runs
this script when GLIMPSE_PEFT_PYTHON names a Python with requirements.txt installed.
Exits non-zero, saying by how much, when they differ by more than 1e-4.
"""

import pathlib
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
)
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

from make_vlm_fixtures import CASES, CHAT_TEMPLATE, HERE, NAME, case_inputs


def main():
    directory = pathlib.Path(sys.argv[1])
    checkpoint = HERE / "checkpoints" / NAME
    base = Qwen2VLForConditionalGeneration.from_pretrained(checkpoint)
    model = PeftModel.from_pretrained(base, directory).eval()
    # The processor the fixtures were made with (Pillow's resize, not torchvision's).
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(),
        tokenizer=PreTrainedTokenizerFast.from_pretrained(checkpoint),
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )
    expected = load_file(directory / "glimpse_logits.safetensors")
    worst = 0.0
    for number, (query, image_name, max_pixels) in enumerate(CASES):
        key = f"case{number}"
        if key not in expected:
            continue
        with torch.no_grad():
            logits = model(**case_inputs(processor, query, image_name, max_pixels)).logits[0, -1]
        worst = max(worst, (logits - expected[key]).abs().max().item())
    print(f"PEFT loaded the adapter Glimpse wrote: largest logit difference {worst:.2e}")
    sys.exit(0 if worst <= 1e-4 else 1)


if __name__ == "__main__":
    main()
