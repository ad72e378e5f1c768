"""What each `offload` mode costs for FLUX.1-dev, and whether it fits a 24 GB card.

    python bench/offload.py                       # sizes and copies, from the real architectures (CPU, seconds)
    python bench/offload.py --measure             # on a CUDA machine: s/image and peak memory per mode
    python bench/offload.py --measure --modes group --resolution 1024 --repeats 3

Without --measure (any machine): FLUX.1-dev's four components are built on the meta device from
their published configs (no weights, no memory), and for each mode the script prints the weights on
the device at the peak and the bytes copied host -> device per image, in bf16. These are exact
counts of the architecture, not measurements of time; the copy time is bytes / --bandwidth.

With --measure (a CUDA device): the same architectures with random bf16 weights (never a download)
go through FluxExtractor.use_pipeline with each mode, and the script times `extract` for K = 1 and
K = 8 expressions at --resolution and reads torch.cuda.max_memory_allocated. `--preset tiny` runs
the same path on the tiny test architecture, on any device (the suite does, to keep it working).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GB = 1e9
CUDA_CONTEXT = 0.5e9  # what the CUDA context and the allocator's reserve typically take before any tensor
# black-forest-labs/FLUX.1-dev: transformer/config.json, text_encoder_2 (google/t5-v1_1-xxl encoder),
# text_encoder (openai/clip-vit-large-patch14 text model), vae/config.json
FLUX_DEV = {
    "transformer": dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                        guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
    "t5": dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
               relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
               dense_act_fn="gelu_new", is_gated_act=True, layer_norm_epsilon=1e-6),
    "clip": dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu"),
    "vae": dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                latent_channels=16, norm_num_groups=32, scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False),
}
# the same component classes, a few channels wide: --preset tiny runs the measuring path anywhere
TINY = {
    "transformer": dict(FLUX_DEV["transformer"], num_layers=1, num_single_layers=1, attention_head_dim=16,
                        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6)),
    "t5": dict(FLUX_DEV["t5"], d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4),
    "clip": dict(FLUX_DEV["clip"], hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                 projection_dim=32),
    "vae": dict(FLUX_DEV["vae"], block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4),
}
PRESETS = {"full": FLUX_DEV, "tiny": TINY}
EXPRESSIONS = ["the red car on the left", "a man in a blue shirt", "the dog behind the bench", "the smallest cup",
               "a woman holding an umbrella", "the tree in the middle", "the white boat near the pier", "the second bike"]


def build_components(config: dict = FLUX_DEV) -> dict[str, torch.nn.Module]:
    """The four modules of a FLUX pipeline, on whatever device is current (meta: sizes only)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    return {
        "transformer": FluxTransformer2DModel(**config["transformer"]),
        "text_encoder_2": T5EncoderModel(T5Config(**config["t5"])),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**config["clip"])),
        "vae": AutoencoderKL(**config["vae"]),
    }


def nbytes(module: torch.nn.Module, bytes_per_value: int = 2) -> int:
    return sum(t.numel() for t in [*module.parameters(), *module.buffers()]) * bytes_per_value


def largest_resident_groups(module: torch.nn.Module) -> int:
    """Bytes on the device at once under block-level group offloading with prefetch: the modules
    outside the block lists (onloaded for the whole forward) + the two largest consecutive blocks."""
    lists = [m for m in module.children() if isinstance(m, torch.nn.ModuleList)]
    lists += [m for child in module.children() for m in child.children() if isinstance(m, torch.nn.ModuleList)]
    blocks = [block for blocks in lists for block in blocks]
    in_blocks = sum(nbytes(block) for block in blocks)
    pairs = [nbytes(a) + nbytes(b) for a, b in zip(blocks, blocks[1:])] or [nbytes(blocks[0])]
    return nbytes(module) - in_blocks + max(pairs)


def sizes_table(forwards: int, bandwidth: float) -> dict:
    with torch.device("meta"):
        parts = build_components()
    size = {name: nbytes(module) for name, module in parts.items()}
    params = {name: sum(p.numel() for p in module.parameters()) for name, module in parts.items()}
    text = size["text_encoder"] + size["text_encoder_2"]
    print("FLUX.1-dev, bf16, built on the meta device from the published configs\n")
    print("| component | parameters | bf16 GB |\n| --- | ---: | ---: |")
    for name in parts:
        print(f"| {name} | {params[name] / 1e9:.3f} B | {size[name] / GB:.2f} |")
    print(f"| all | {sum(params.values()) / 1e9:.3f} B | {sum(size.values()) / GB:.2f} |\n")

    group = {name: largest_resident_groups(parts[name]) for name in ("transformer", "text_encoder_2", "text_encoder")}
    # per image: T5 runs twice (expressions, caption), CLIP once, the transformer `forwards` times
    resident = {
        "none": sum(size.values()),
        "text_encoders": size["transformer"] + size["vae"],
        "model": max(text, size["transformer"]) + size["vae"],
        "group": max(group.values()) + size["vae"],
    }
    copied = {
        "none": 0,
        "text_encoders": 0,
        "model": text + size["transformer"],
        "group": 2 * size["text_encoder_2"] + size["text_encoder"] + forwards * size["transformer"],
    }
    card = 24 * 2**30 - CUDA_CONTEXT
    print(f"per image with {forwards} transformer forward(s); copy time at {bandwidth:g} GB/s host -> device; "
          f"a 24 GiB card leaves {card / GB:.2f} GB after a {CUDA_CONTEXT / GB:.1f} GB CUDA context\n")
    print("| offload | weights on the device at the peak (GB) | left on a 24 GiB card for activations (GB) | "
          "copied per image (GB) | copy time (s) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for mode in resident:
        print(f"| {mode} | {resident[mode] / GB:.2f} | {(card - resident[mode]) / GB:.2f} | {copied[mode] / GB:.1f} | "
              f"{copied[mode] / GB / bandwidth:.2f} |")
    return {"size": size, "params": params, "resident": resident, "copied": copied}


# ---------------------------------------------------------------- measured, on a CUDA device


def random_pipeline(config: dict, device: torch.device, dtype: torch.dtype):
    """A FluxPipeline of `config`'s architecture with random weights made directly on `device` in
    `dtype`: parameters start empty (accelerate's init_empty_weights), so 16 B float32 parameters
    (67 GB) are never initialised first; buffers (CLIP's position ids) are built for real."""
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from refam.testing.tiny_flux import build_tokenizers

    with init_empty_weights(include_buffers=False):
        parts = build_components(config)
    generator = torch.Generator(device).manual_seed(0)
    for module in parts.values():
        for name, parameter in list(module.named_parameters()):
            value = torch.empty(parameter.shape, dtype=dtype, device=device).normal_(0.0, 0.02, generator=generator)
            set_module_tensor_to_device(module, name, device, value=value)
        module.to(device)
    clip_tokenizer, t5_tokenizer = build_tokenizers()
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=parts["vae"], text_encoder=parts["text_encoder"],
                        tokenizer=clip_tokenizer, text_encoder_2=parts["text_encoder_2"], tokenizer_2=t5_tokenizer,
                        transformer=parts["transformer"])


def measure(preset: str, modes: list[str], resolution: int, repeats: int, device: torch.device) -> list[dict]:
    from PIL import Image

    from refam.aggregators.magnets import AppendMagnets
    from refam.extractors.flux import FluxExtractor

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cuda = device.type == "cuda"
    image = Image.new("RGB", (resolution, resolution), (90, 140, 200))
    magnets = AppendMagnets()
    expressions = {k: [magnets.augment(e) for e in EXPRESSIONS[:k]] for k in (1, 8)}
    rows = []
    for mode in modes:
        # weights start on the CPU for the offloading modes, as a checkpoint loads
        pipe = random_pipeline(PRESETS[preset], device if mode == "none" else torch.device("cpu"), dtype)
        extractor = FluxExtractor("<in memory>", torch_dtype=str(dtype).removeprefix("torch."), resolution=resolution,
                                  caption_max_tokens=512 if preset == "full" else 16, offload=mode)
        extractor.use_pipeline(pipe, device)
        row = {"mode": mode}
        for k, texts in expressions.items():
            extractor.extract(image, "a street with cars and people", texts, "warm-up")
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            times = []
            for repeat in range(repeats):
                start = time.perf_counter()
                extractor.extract(image, "a street with cars and people", texts, f"s{repeat}")
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            row[f"k{k}_s"] = statistics.median(times)
            row[f"k{k}_peak_gb"] = torch.cuda.max_memory_allocated() / GB if cuda else float("nan")
        rows.append(row)
        del extractor, pipe
        if cuda:
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--forwards", type=int, default=1, help="transformer forwards per image (NoiseAt: 1)")
    parser.add_argument("--bandwidth", type=float, default=25.0, help="host -> device GB/s for the copy time")
    parser.add_argument("--measure", action="store_true", help="time and measure on --device")
    parser.add_argument("--preset", choices=list(PRESETS), default="full")
    parser.add_argument("--modes", nargs="+", default=["none", "model", "group"])
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if not args.measure:
        sizes_table(args.forwards, args.bandwidth)
        return
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{args.preset} FLUX architecture, random weights, {args.resolution}², {name}, torch {torch.__version__}\n")
    print("| offload | K=1 s/image | K=8 s/image | K=8 / K=1 | peak GB (K=1) | peak GB (K=8) |\n| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in measure(args.preset, args.modes, args.resolution, args.repeats, device):
        print(f"| {row['mode']} | {row['k1_s']:.2f} | {row['k8_s']:.2f} | {row['k8_s'] / row['k1_s']:.2f} | "
              f"{row['k1_peak_gb']:.2f} | {row['k8_peak_gb']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
