"""Attention kernels on the CPU: PyTorch's fused attention against the plain one.

    .venv/bin/python benchmarks/attention_kernels.py [--batch 64] [--repeats 3]

Times a training step (forward, backward) of the generator's UNet designs and its
text encoder, in fp32 and under bf16 autocast, with the fused kernel
(`scaled_dot_product_attention`: diffusers' `AttnProcessor2_0`, transformers' "sdpa")
and with the plain matmul-softmax one (`AttnProcessor`, "eager"), random weights and
inputs. Prints one JSON line per row, then a markdown table; the figures are in
reports/benchmarks.md. Run it once as the machine is and once with
`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2`
for the kernels an AVX2-only CPU runs.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from transformers import CLIPTextConfig, CLIPTextModel

from common import ROOT

PRECISIONS = ["fp32", "bf16"]  # --fp32-only: without native bf16, bf16 is emulated (slow)
# name -> (architecture JSON, sample size, channels): pixels, f2 latents, f4 latents.
UNETS = {
    "UNet, 32 px pixels (the default)": ("tiny-unet-32.json", 32, 3),
    "UNet 32/64/64, 16x16 f2 latents": ("tiny-unet-32.json", 16, 4),
    "UNet 64/128, 8x8 f4 latents": ("tiny-unet-latent-8.json", 8, 8),
}


def step_rate(model, forward, repeats: int, bf16: bool) -> float:
    """Training steps per second: forward and backward, the first (warm-up) untimed."""
    for i in range(repeats + 1):
        if i == 1:
            start = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            out = forward()
        out.float().pow(2).mean().backward()
        model.zero_grad(set_to_none=True)
    return repeats / (time.perf_counter() - start)


def unet_rows(batch: int, repeats: int) -> list[dict]:
    rows = []
    for name, (file, size, channels) in UNETS.items():
        spec = json.loads((ROOT / "configs/generator" / file).read_text())
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**spec["unet"], sample_size=size, in_channels=channels,
                                    out_channels=channels, cross_attention_dim=128)  # fmt: skip
        x = torch.randn(batch, channels, size, size)
        t = torch.randint(0, 1000, (batch,))
        states = torch.randn(batch, 60, 128)
        forward = partial(lambda u, *a: u(*a).sample, unet, x, t, states)
        kernels = {"fused": AttnProcessor2_0(), "plain": AttnProcessor()}
        rows += measure(name, kernels, unet.set_attn_processor, unet, forward, batch, repeats)
    return rows


def measure(name, kernels: dict, use, model, forward, batch: int, repeats: int) -> list[dict]:
    """Rows of (kernel, precision) rates; the kernels alternate and each keeps its best of
    two rounds, so a neighbour's load on a shared machine does not favour either."""
    best: dict = {}
    for _ in range(2):
        for precision in PRECISIONS:
            for kernel, choice in kernels.items():
                use(choice)
                rate = batch * step_rate(model, forward, repeats, precision == "bf16")
                best[kernel, precision] = max(best.get((kernel, precision), 0), rate)
    return [row(name, k, p, rate) for (k, p), rate in best.items()]


def text_rows(batch: int, repeats: int) -> list[dict]:
    spec = json.loads((ROOT / "configs/generator/tiny-unet-32.json").read_text())
    torch.manual_seed(0)
    encoder = CLIPTextModel(CLIPTextConfig(**spec["text_encoder"], vocab_size=1024))
    ids = torch.randint(0, 1024, (batch, 60))
    forward = lambda: encoder(ids).last_hidden_state  # noqa: E731
    kernels = {"fused": "sdpa", "plain": "eager"}
    name = "text encoder, 60 tokens"
    return measure(name, kernels, encoder.set_attn_implementation, encoder, forward, batch, repeats)


def row(model: str, kernel: str, precision: str, rate: float) -> dict:
    return {"model": model, "kernel": kernel, "precision": precision, "per_s": round(rate, 1)}


def table(rows: list[dict]) -> str:
    cells = {(r["model"], r["kernel"], r["precision"]): r["per_s"] for r in rows}
    lines = ["| model (images or texts / s) | fp32 fused | fp32 plain | bf16 fused | bf16 plain "
             "| bf16: plain / fused |", "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for model in dict.fromkeys(r["model"] for r in rows):
        c = {(k, p): cells.get((model, k, p), "-") for k in ("fused", "plain")
             for p in ("fp32", "bf16")}  # fmt: skip
        ratio = f"{c['plain', 'bf16'] / c['fused', 'bf16']:.2f}" if "bf16" in PRECISIONS else "-"
        lines.append(f"| {model} | {c['fused', 'fp32']} | {c['plain', 'fp32']} | "
                     f"{c['fused', 'bf16']} | {c['plain', 'bf16']} | {ratio} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fp32-only", action="store_true")
    args = parser.parse_args()
    if args.fp32_only:
        PRECISIONS.remove("bf16")
    rows = unet_rows(args.batch, args.repeats) + text_rows(args.batch, args.repeats)
    context = {"capability": torch.backends.cpu.get_cpu_capability(),
               "threads": torch.get_num_threads()}  # fmt: skip
    for r in rows:
        print(json.dumps({**r, **context}))
    print(f"\n{context}\n\n{table(rows)}")


if __name__ == "__main__":
    main()
