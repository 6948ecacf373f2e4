"""ReasonScore: the library (one model pass per token batch, all features) against a baseline
organised as the paper's code (one model pass over the tokens per batch of 48 features).

Both run in this process on the same model, SAE and contexts; the script reports their times,
the ratio, and the largest difference between their scores.

    python benchmarks/bench_reason_score.py                       # data/runs/default, trained SAE
    python benchmarks/bench_reason_score.py --random-sae 8 --n-contexts 16
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from reference.reason_score_reference import FEATURE_BATCH, masks_for, variant_ids  # noqa: E402

from reasonlens import constants, data, models, scoring  # noqa: E402


def paper_organised_scores(model, sae, tokens, words, window, alpha, hook_name, batch_size):
    """ReasonScore computed the paper's way: masks once, then per batch of 48 features a full
    model pass over every context, encoding, and masked means for those features only."""
    tok = model.tokenizer
    ignore = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
    seqs = [variant_ids(tok, w) for w in words]
    words = [w for w, s in zip(words, seqs) if s]
    seqs = [s for s in seqs if s]
    masks = torch.tensor(masks_for(tokens, seqs, window, ignore))  # [words, contexts, pos]
    pos = masks.any(0)
    neg = ~pos & ~torch.isin(tokens, torch.tensor(sorted(ignore)))
    sae = copy.deepcopy(sae)
    sae.fold_W_dec_norm()
    d_sae = sae.cfg.d_sae
    mu_words = torch.zeros(len(words), d_sae, dtype=torch.float64)
    mu_pos = torch.zeros(d_sae, dtype=torch.float64)
    mu_neg = torch.zeros(d_sae, dtype=torch.float64)

    def masked_mean(mask, acts):  # mask [contexts, pos], acts [contexts, pos, f]
        count = mask.sum()
        return (acts[mask].sum(0) / count) if count else torch.zeros(acts.shape[-1])

    for first in range(0, d_sae, FEATURE_BATCH):
        features = slice(first, min(first + FEATURE_BATCH, d_sae))
        chunks = []
        for c0 in range(0, len(tokens), batch_size):
            with torch.no_grad():
                _, cache = model.run_with_cache(tokens[c0:c0 + batch_size], [hook_name])
                chunks.append(sae.encode(cache[hook_name])[..., features].double())
        acts = torch.cat(chunks)
        for i in range(len(words)):
            mu_words[i, features] = masked_mean(masks[i], acts)
        mu_pos[features] = masked_mean(pos, acts)
        mu_neg[features] = masked_mean(neg, acts)
    total = mu_words.sum(0)
    p = torch.where(total > 0, mu_words / total.clamp(min=1e-300), 0.0)
    h = -(torch.where(p > 0, p * p.clamp(min=1e-300).log(), 0.0)).sum(0) / math.log(len(words))
    if len(words) == 1:
        h = torch.ones_like(h)
    return (mu_pos / mu_pos.sum() * h ** alpha - mu_neg / mu_neg.sum()).numpy()


def random_sae(d_in: int, expansion: int, hook_name: str, seed: int = 0):
    from sae_lens import StandardSAE, StandardSAEConfig
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_in * expansion))
    sae.cfg.metadata.hook_name = hook_name
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_in * expansion, generator=gen) / d_in ** 0.5)
        sae.W_dec.copy_(torch.randn(d_in * expansion, d_in, generator=gen) * 0.3)
        sae.b_enc.copy_(torch.randn(d_in * expansion, generator=gen) * 0.5)
    return sae.eval()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default=str(ROOT / "data/runs/default"))
    parser.add_argument("--model", default=None, help="default: <run-dir>/models/reasoning")
    parser.add_argument("--sae", default=None, help="default: <run-dir>/sae/trained")
    parser.add_argument("--tokens", default=None,
                        help="default: <run-dir>/contexts/reasoning_val.parquet")
    parser.add_argument("--random-sae", type=int, default=None, metavar="EXPANSION",
                        help="use a random SAE of d_model * EXPANSION features (e.g. 8)")
    parser.add_argument("--hook-name", default=None,
                        help="default: the SAE's, or blocks.{n_layers // 2}.hook_resid_post")
    parser.add_argument("--backend", default="transformer_lens",
                        choices=["transformer_lens", "hf"])
    parser.add_argument("--n-contexts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    run_dir = Path(args.run_dir)
    model = models.load_hooked(args.model or run_dir / constants.REASONING_MODEL_DIR,
                               backend=args.backend)
    tokens_path = args.tokens or run_dir / "contexts/reasoning_val.parquet"
    tokens = data.contexts_tensor(pd.read_parquet(tokens_path))[: args.n_contexts]
    if args.random_sae:
        hook = args.hook_name or f"blocks.{model.n_layers // 2}.hook_resid_post"
        sae = random_sae(model.d_model, args.random_sae, hook)
    else:
        from sae_lens import SAE
        sae_path = Path(args.sae or run_dir / constants.SAE_DIR)
        if not sae_path.exists():
            raise SystemExit(f"{sae_path} is missing (notebook 03 writes it); "
                             "pass --random-sae 8 to benchmark with a random SAE.")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sae = SAE.load_from_disk(sae_path)
        hook = args.hook_name or sae.cfg.metadata.hook_name
    cfg = scoring.ReasonScoreConfig(hook_name=hook, batch_size=args.batch_size)

    start = time.perf_counter()
    frame, stats = scoring.reason_score(model, sae, tokens, cfg, progress=False)
    t_lib = time.perf_counter() - start
    start = time.perf_counter()
    baseline = paper_organised_scores(model, sae, tokens, cfg.words, cfg.window, cfg.alpha, hook,
                                      args.batch_size)
    t_base = time.perf_counter() - start
    diff = np.abs(frame["reason_score"].to_numpy() - baseline).max()
    start = time.perf_counter()  # the baseline's share spent building masks in Python
    tok = model.tokenizer
    masks_for(tokens, [variant_ids(tok, w) for w in cfg.words], cfg.window,
              {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id})
    t_masks = time.perf_counter() - start
    n_passes = math.ceil(sae.cfg.d_sae / FEATURE_BATCH)
    print(f"model={args.backend} d_model={model.d_model} d_sae={sae.cfg.d_sae} hook={hook} "
          f"contexts={tuple(tokens.shape)} torch_threads={torch.get_num_threads()}")
    print(f"word tokens per group: {dict(zip(stats.words, stats.group_count.tolist()))}")
    print(f"library (1 pass over the tokens):            {t_lib:8.3f} s")
    print(f"paper-organised ({n_passes} passes, 48 features each): {t_base:8.3f} s")
    print(f"  of which Python mask building:             {t_masks:8.3f} s")
    print(f"speed-up: {t_base / t_lib:.1f}x (model/SAE part only: "
          f"{(t_base - t_masks) / t_lib:.1f}x)   max |score difference|: {diff:.2e}")


if __name__ == "__main__":
    main()
