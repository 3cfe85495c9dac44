#!/usr/bin/env python3
"""Writes the Qwen2-VL reranker parity fixtures that gpu-worker/tests/qwen2_vl_parity.rs reads.

Everything is produced by Hugging Face `transformers` (versions pinned in requirements.txt), so
the Rust port is checked against the upstream implementation:

* checkpoints/qwen2-vl-tiny/  a small random-weight `Qwen2VLForConditionalGeneration` in the
                              layout of the published Qwen2-VL checkpoints (config.json with the
                              language model's fields at the top level, `model.*` / `visual.*`
                              tensor names, tied word embeddings as in Qwen2-VL-2B-Instruct), a
                              small byte-level BPE tokenizer with Qwen2's pre-tokenizer and special
                              tokens, the image processor's and chat template's files. Its shapes
                              are tiny but keep the real patch (14), temporal patch (2) and merge
                              (2) sizes, grouped-query attention and a multimodal RoPE section.
* checkpoints/qwen2-vl-tiny-lora/
                              a LoRA adapter of it written by PEFT (rank 8 on q/k/v/o, both
                              matrices random).
* expected/qwen2-vl-tiny.json
  expected/qwen2-vl-tiny.safetensors
                              per (query, image) case: the token ids of the chat prompt with the
                              image tokens expanded (`Qwen2VLProcessor`), the image grid, the
                              patches (`Qwen2VLImageProcessorPil`, fed by `load_image`), and the
                              logits of the last position, without and with the adapter; all
                              float32.

Run from the repository root:  python3 tests/reference/make_vlm_fixtures.py
The output is deterministic for a given set of package versions.
"""

import json
import pathlib

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
)
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
from peft import LoraConfig, get_peft_model
from transformers.image_utils import load_image

HERE = pathlib.Path(__file__).resolve().parent
NAME = "qwen2-vl-tiny"
SEED = 20261201

# Qwen2's pre-tokenizer split (its tokenizer.json), then byte-level BPE.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen2-VL-Instruct's chat template (from its tokenizer_config.json / chat_template.json).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The relevance instruction Glimpse asks (gpu-worker/src/reranker/prompt.rs must say the same).
INSTRUCTION = (
    'Does this photo match the search query? Answer only "yes" or "no".\nSearch query: {query}'
)
TRAINING_TEXT = [
    'Does this photo match the search query? Answer only "yes" or "no".',
    "Search query: kids on a red sled in the snow",
    "yes no yes no Yes No yes no",
    "beach at dusk, golden retriever, birthday cake with candles, 2024 photos",
    "You are a helpful assistant.",
    "the quick brown fox jumps over the lazy dog; café crème brûlée; 日本の写真 🐶",
] * 4
# (query, image, max_pixels): budgets of 4, 16 and 64 merged tokens' worth of pixels.
CASES = [
    ("kids on a red sled", "gradient.png", 16 * 28 * 28),
    ("beach at dusk", "noise.jpg", 16 * 28 * 28),
    ("a dog", "upscaled-source.png", 64 * 28 * 28),
    ("café crème", "exif-rotated.jpg", 16 * 28 * 28),
    ("", "tiny.png", 4 * 28 * 28),
    ("whiteboard from the March offsite, 2024", "checkerboard.png", 16 * 28 * 28),
]


def make_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
    )
    for answer in ("yes", "no"):
        assert len(fast.encode(answer)) == 1, f"{answer!r} must be one token"
    return fast


def prompt_of(processor, query: str) -> str:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": INSTRUCTION.format(query=query)},
            ],
        }
    ]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def case_inputs(processor, query: str, image_name: str, max_pixels: int):
    """What Qwen2VLProcessor makes of the chat prompt and the image at this pixel budget."""
    image = load_image(str(HERE / "images" / image_name))
    return processor(
        text=[prompt_of(processor, query)],
        images=[image],
        images_kwargs={"size": {"shortest_edge": 56 * 56, "longest_edge": max_pixels}},
        return_tensors="pt",
    )


def randomise(model: torch.nn.Module, generator: torch.Generator):
    """Every parameter random at a scale that keeps activations lively: norms around 1."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("norm.weight") or ".norm1." in name or ".norm2." in name or "ln_q" in name:
                param.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            elif param.dim() == 1:
                param.copy_(0.1 * noise)
            else:
                fan_in = param[0].numel()
                param.copy_(noise / fan_in**0.5)


def hub_layout(state: dict) -> dict:
    """transformers' module names → the names of the published Qwen2-VL checkpoints."""
    renamed = {}
    for key, tensor in state.items():
        if key.startswith("model.visual."):
            key = key[len("model.") :]
        elif key.startswith("model.language_model."):
            key = "model." + key[len("model.language_model.") :]
        renamed[key] = tensor.contiguous()
    return renamed


def main():
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    out = HERE / "checkpoints" / NAME
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = make_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rms_norm_eps=1e-6,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            tie_word_embeddings=True,
        ),
        vision_config=dict(
            depth=2,
            embed_dim=32,
            hidden_size=64,
            mlp_ratio=2,
            num_heads=4,
            in_channels=3,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            hidden_act="quick_gelu",
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    model = Qwen2VLForConditionalGeneration(config).eval()
    randomise(model, generator)
    model.tie_weights()

    # The published layout: the language model's fields at the top level, the vision config
    # nested, `rope_scaling` with the mrope section.
    text = config.text_config
    published = {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        "vocab_size": text.vocab_size,
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": text.num_key_value_heads,
        "hidden_act": "silu",
        "rms_norm_eps": text.rms_norm_eps,
        "max_position_embeddings": text.max_position_embeddings,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "tie_word_embeddings": True,
        "bos_token_id": text.bos_token_id,
        "eos_token_id": text.eos_token_id,
        "image_token_id": config.image_token_id,
        "video_token_id": config.video_token_id,
        "vision_start_token_id": config.vision_start_token_id,
        "vision_end_token_id": config.vision_end_token_id,
        "vision_config": {
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 64,
            "hidden_act": "quick_gelu",
            "mlp_ratio": 2,
            "num_heads": 4,
            "in_chans": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(published, indent=2) + "\n")
    state = hub_layout({k: v for k, v in model.state_dict().items() if k != "lm_head.weight"})
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})

    # The published layout must load back into transformers to the same model.
    reloaded = Qwen2VLForConditionalGeneration.from_pretrained(out).eval()
    for key, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key

    image_processor = Qwen2VLImageProcessorPil()
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)

    tensors, cases = {}, []
    for number, (query, image_name, max_pixels) in enumerate(CASES):
        inputs = case_inputs(processor, query, image_name, max_pixels)
        prompt = prompt_of(processor, query)
        with torch.no_grad():
            logits = reloaded(**inputs).logits[0, -1]
        tensors[f"case{number}.input_ids"] = inputs["input_ids"][0].to(torch.int64)
        tensors[f"case{number}.pixel_values"] = inputs["pixel_values"].to(torch.float32)
        tensors[f"case{number}.image_grid_thw"] = inputs["image_grid_thw"][0].to(torch.int64)
        tensors[f"case{number}.logits"] = logits.to(torch.float32)
        cases.append(
            {"query": query, "image": image_name, "max_pixels": max_pixels, "prompt": prompt}
        )

    # A LoRA adapter written by PEFT (rank 8, alpha 16, on the language model's q/k/v/o
    # projections), every matrix random so that both A and B matter, and the logits it gives.
    lora_dir = HERE / "checkpoints" / f"{NAME}-lora"
    lora_config = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.05,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(SEED + 1)
    adapted = get_peft_model(
        Qwen2VLForConditionalGeneration.from_pretrained(out), lora_config
    ).eval()
    adapted.save_pretrained(lora_dir)
    # Keep the files a user's adapter has, without this machine's paths or PEFT's model card.
    (lora_dir / "README.md").unlink(missing_ok=True)
    adapter_config = json.loads((lora_dir / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = NAME
    (lora_dir / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")
    for number, (query, image_name, max_pixels) in enumerate(CASES):
        with torch.no_grad():
            logits = adapted(**case_inputs(processor, query, image_name, max_pixels)).logits[0, -1]
        tensors[f"case{number}.lora_logits"] = logits.to(torch.float32)

    expected = HERE / "expected"
    save_file(tensors, expected / f"{NAME}.safetensors")
    (expected / f"{NAME}.json").write_text(
        json.dumps(
            {
                "instruction": INSTRUCTION,
                "min_pixels": 56 * 56,
                "yes": tokenizer.convert_tokens_to_ids("yes"),
                "no": tokenizer.convert_tokens_to_ids("no"),
                "cases": cases,
            },
            indent=2,
            ensure_ascii=False,
        )
        + "\n"
    )
    assert load_file(expected / f"{NAME}.safetensors").keys() == tensors.keys()
    print(f"wrote {out} and {expected}/{NAME}.*")


if __name__ == "__main__":
    main()
