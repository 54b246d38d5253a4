"""
Generation speed, with and without the KV cache, on random weights of two shapes: the
Shakespeare char model (6 x 384, block 256) and GPT-2 124M (12 x 768, block 1024).

  python -m bench.sample                       # 500 new tokens, 3 repeats, on the default device
  python -m bench.sample --device=cpu --repeats=5 --new_tokens=200

Prints tokens/s as the median of the repeats, with the slowest and fastest beside it.
"""

import argparse
import statistics
import time

import torch

from device import pick_device
from generation import generate
from model import GPT, GPTConfig

SHAPES = {
    "shakespeare-char": GPTConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384),
    "gpt2-124M": GPTConfig.from_preset("gpt2", vocab_size=50257),
}


def tokens_per_second(model, prompt, new_tokens, kv_cache):
    if prompt.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in generate(model, prompt, new_tokens, temperature=1.0, top_k=200, seed=0, kv_cache=kv_cache):
        pass  # each step already waits for its token: sampling reads it back
    return new_tokens / (time.perf_counter() - t0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=pick_device())
    parser.add_argument("--new_tokens", type=int, default=500)
    parser.add_argument("--prompt_tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    print(f"device {args.device}, {torch.get_num_threads()} threads, {args.new_tokens} new tokens after a "
          f"{args.prompt_tokens}-token prompt, median (min-max) of {args.repeats}")
    print(f"{'shape':<18} {'kv cache':>18} {'no cache':>18} {'speed-up':>9}")
    for name, config in SHAPES.items():
        torch.manual_seed(0)
        model = GPT(config).eval().to(args.device)
        prompt = torch.randint(0, config.vocab_size, (1, args.prompt_tokens), device=args.device)
        tokens_per_second(model, prompt, 8, True)  # warm-up: allocator, kernels
        cells, medians = [], []
        for kv_cache in (True, False):
            runs = [tokens_per_second(model, prompt, args.new_tokens, kv_cache) for _ in range(args.repeats)]
            medians.append(statistics.median(runs))
            cells.append(f"{medians[-1]:7.1f} ({min(runs):.0f}-{max(runs):.0f})")
        print(f"{name:<18} {cells[0]:>18} {cells[1]:>18} {medians[0] / medians[1]:8.2f}x")


if __name__ == "__main__":
    main()
