"""Generation throughput: steered vs unsteered, and KV-cached vs uncached, in one process.

    python benchmarks/bench_steering.py [--run-dir data/runs/default] [--n-prompts 64]

Uses the run's reasoning model and SAE (notebooks 02-03) and the top ReasonScore feature
(notebook 04). Reports tokens per second and the ratios.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from sae_lens import SAE

from reasonlens import constants as K
from reasonlens import models, steering
from reasonlens.world import prompt


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", default="data/runs/default")
    parser.add_argument("--n-prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--strength", type=float, default=2.0)
    args = parser.parse_args()
    run = Path(args.run_dir)
    model = models.load_hooked(run / K.REASONING_MODEL_DIR, backend="hf")
    sae = SAE.load_from_disk(str(run / K.SAE_DIR))
    scores = pd.read_parquet(run / K.REASON_SCORES)
    top = int(scores.nlargest(1, "reason_score").feature_idx.iloc[0])
    problems = pd.read_parquet(run / K.PROBLEMS)
    prompts = [prompt(q, reasoning=True) for q in problems.question[: args.n_prompts]]
    tokenizer, hf = model.tokenizer, model.model
    n_tokens = len(prompts) * args.max_new_tokens
    torch.manual_seed(0)

    def generate(use_cache: bool = True):
        hf.generation_config.use_cache = use_cache
        ids = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            hf.generate(**ids, max_new_tokens=args.max_new_tokens,
                        min_new_tokens=args.max_new_tokens, do_sample=False,
                        use_cache=use_cache, pad_token_id=tokenizer.pad_token_id)

    tokenizer.padding_side = "left"
    generate()  # warm-up
    plain = timed(generate)
    with steering.steer(model, sae, {top: args.strength},
                        max_activations=torch.tensor(scores.max_activation.to_numpy())):
        steered = timed(generate)
    uncached = timed(lambda: generate(use_cache=False))
    print(f"feature {top}, strength {args.strength}, {len(prompts)} prompts x "
          f"{args.max_new_tokens} new tokens, torch threads {torch.get_num_threads()}")
    print(f"unsteered, KV cache: {n_tokens / plain:8.0f} tok/s")
    print(f"steered,   KV cache: {n_tokens / steered:8.0f} tok/s   cost {steered / plain:.2f}x")
    print(f"unsteered, no cache: {n_tokens / uncached:8.0f} tok/s   cache speed-up "
          f"{uncached / plain:.2f}x")


if __name__ == "__main__":
    main()
