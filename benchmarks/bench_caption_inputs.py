"""The captioner's batch inputs at the issue's job (LLaVA-NeXT anyres, 672² images): the processor's own call
against ours (its image step, then the token ids from the prompt tokenized once: ``inputs_from_pieces``).

    python benchmarks/bench_caption_inputs.py [--images 96] [--rounds 5] [--device cpu|cuda]

The processor and prompt are ``bench_captioner.py``'s (llava-v1.6-mistral's layout, a word-level tokenizer built
there). Both sides run in this process, in alternating order, ``--rounds`` times after a warm-up round; prints the
median ms per image of each and the ratio. Every round checks that both give the same ids and mask. On a GPU host,
``--device cuda`` puts the image processing on the GPU, as the captioner does, which leaves the text side the larger
share of the host's time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_captioner import llava_next_config, llava_next_processor, sync  # noqa: E402
from onegen.annotators.caption_text import instruction  # noqa: E402
from onegen.annotators.captioner import inputs_from_pieces, prompt_pieces  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=96, help="one batch (the FP8 captioner's default batch)")
    ap.add_argument("--size", type=int, default=672)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="the tiny processor (a test's smoke run)")
    args = ap.parse_args(argv)

    processor = llava_next_processor(llava_next_config(args.quick), args.quick)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction(100, 150, 10)}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    pieces = prompt_pieces(processor, prompt, add_special_tokens=False)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.images)]
    device = torch.device(args.device)

    def timed(fn):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        return time.perf_counter() - t0, out

    call = dict(padding=True, return_tensors="pt", add_special_tokens=False, device=device)
    image_kwargs = processor._merge_kwargs(tokenizer_init_kwargs=processor.tokenizer.init_kwargs,
                                           **call)["images_kwargs"]
    pad_id = processor.tokenizer.pad_token_id
    sides = {"processor": lambda: processor(text=[prompt] * len(images), images=images, **call),
             "ours": lambda: inputs_from_pieces(processor, images, image_kwargs, pieces, pad_id)}
    times = {name: [] for name in sides}
    for r in range(args.rounds + 1):  # the first round warms both up (allocations, the device's kernels)
        made = {}
        for name in sorted(sides, reverse=r % 2 == 1):  # alternating which goes first: allocator state, caches
            seconds, made[name] = timed(sides[name])
            times[name].append(seconds)
        if not all(torch.equal(made["ours"][k].cpu(), made["processor"][k].cpu())
                   for k in ("input_ids", "attention_mask")):
            sys.exit("the ids built once differ from the processor's")
    ms = {name: 1000 * statistics.median(v[1:]) / args.images for name, v in times.items()}
    tokens = int(made["processor"]["attention_mask"][0].sum())
    print(f"{args.images} images of {args.size}², {tokens} tokens each, {device}, median of {args.rounds}")
    for name, value in ms.items():
        print(f"  {name:10s} {value:8.3f} ms/image")
    ratio = ms["processor"] / ms["ours"]
    print(f"processor / ours: {ratio:.2f}x")
    return {"ms_per_image": ms, "ratio": ratio}


if __name__ == "__main__":
    main()
