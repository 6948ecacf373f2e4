"""Which of the reference's step-SAE rules decides whether its bottleneck carries the step?

Trains, in this process and on the same toy data (notebook 08's synthetic steps of a profile whose
notebooks 01-02 have run), the reference mode as notebook 08 builds it, then the same with one
rule at a time switched to ours, and our mode. Each variant starts from the same LM weights, sees
the same micro-batches, and is scored on the same held-out steps:

- recon own / shuffled / zero: held-out NLL per step token when the decoder gets the step's own
  latent, another step's latent, or none (``inference.reconstruction_metrics``);
- gap = shuffled - own: what the latent carries about the step beyond its context (0: nothing);
- L0 (mean active latents per step), the dead fraction and the adaptive L1 weight at the end.

    python benchmarks/ablate_step_sae.py            # 300 steps of 32 per variant: about 15 min
    python benchmarks/ablate_step_sae.py --steps 200 --variants reference prefix-step ours

Needs notebooks 01-02 of ``--profile`` (default: the default profile). The variants' sizes and
rates are notebook 08's default-profile values whatever the profile (see ``SIZES``, ``RATES``).

The notebook-08 comparison of the two full modes is the headline; this script says *why* they
differ (see notebook 08's "Phase 1" section for the figures it gave).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pandas as pd
from transformers import AutoConfig, AutoTokenizer

from reasonlens import artifacts
from reasonlens import constants as K
from reasonlens.step_sae import data as step_data
from reasonlens.step_sae import inference, training
from reasonlens.step_sae.model import StepSAE, StepSAEConfig
from reasonlens.world import chat_format

# Notebook 08's default-profile sizes and rates, the same for every variant and every --profile
# (only the data and the LM come from the profile): two learning rates, 3e-3 for the bottleneck and
# 3e-4 for the LMs, unless a variant says otherwise.
SIZES = dict(n_latents=256, n_prefix=1, l1_target=3.0, max_context_tokens=48, max_step_tokens=32)
RATES = dict(batch_size=32, grad_accum_steps=1, lr=3e-3, lm_lr=3e-4, warmup_steps=50,
             checkpoint_every=0)
OURS_L1 = 0.01  # notebook 08's step_l1_coefficient (weight of (L1 - target)^2)
ONE_RATE = dict(lr=3e-4, lm_lr=None)  # one rate for every parameter, as the reference trains

# key: (description, overrides of StepSAEConfig.reference or None for our mode, train overrides)
VARIANTS: dict[str, tuple[str, dict | None, dict]] = {
    "reference": ("reference, as notebook 08 runs it", {}, {}),
    "l1-start-0.01": ("reference, L1 weight starts at 0.01", {"l1_coefficient": 0.01}, {}),
    "pre-bias": ("reference + our pre-bias", {"pre_bias": True}, {}),
    "no-noise": ("reference, no latent noise", {"latent_noise_std": 0.0}, {}),
    "no-masking": ("reference, no token masking", {"token_mask_rate": 0.0}, {}),
    "prefix-step": ("reference, prefix before the step", {"prefix_position": "step"}, {}),
    "gelu": ("reference, our projection (GELU)", {"projection_activation": "gelu"}, {}),
    "squared-l1": ("reference, our squared L1 penalty",
                   {"l1_penalty": "squared", "l1_coefficient": OURS_L1}, {}),
    "one-rate": ("reference, one rate 3e-4 for all", {}, ONE_RATE),
    "prefix-step-one-rate": ("reference, prefix before the step, one rate 3e-4",
                             {"prefix_position": "step"}, ONE_RATE),
    "ours": ("ours", None, {}),
}


def load_examples(profile: str, n_train: int, n_test: int):
    """Notebook 08's synthetic training and held-out steps, tokenized as it tokenizes them."""
    run = artifacts.RunDir(profile)
    lm_path = run.model_path()
    tokenizer = AutoTokenizer.from_pretrained(lm_path)
    world_format = chat_format(AutoTokenizer.from_pretrained(run.require(K.TOKENIZER_DIR)))
    steps, problems = run.read_parquet(K.STEPS), run.read_parquet(K.PROBLEMS)
    tables = [step_data.world_step_table(steps, problems, [split], world_format)
              for split in ("train", "test")]
    tables = [t.sample(min(n, len(t)), random_state=0) for t, n in zip(tables, (n_train, n_test))]
    return lm_path, tokenizer, [step_data.tokenize_steps(t, tokenizer, SIZES["max_context_tokens"],
                                                         SIZES["max_step_tokens"]) for t in tables]


def run_variant(name: str, lm_path: str, tokenizer, train, test, n_steps: int) -> dict:
    """Train one variant for ``n_steps`` and score it on ``test``."""
    description, overrides, train_overrides = VARIANTS[name]
    d_model = AutoConfig.from_pretrained(lm_path).hidden_size
    if overrides is None:
        cfg = StepSAEConfig(l1_coefficient=OURS_L1, **SIZES)
        train_cfg = training.StepSAETrainConfig(n_steps=n_steps, l1_warmup_steps=300,
                                                **RATES | train_overrides)
    else:
        cfg = StepSAEConfig.reference(d_model, **SIZES | overrides)
        train_cfg = training.StepSAETrainConfig.reference(
            n_steps=n_steps, min_lr=0.0, lr_decay_steps=None, **RATES | train_overrides)
    started = time.perf_counter()
    sae = StepSAE.build(lm_path, tokenizer, cfg, seed=0)
    history = training.train_step_sae(sae, train, train_cfg, progress=True)
    recon = inference.reconstruction_metrics(sae, test).set_index("condition").recon_loss
    latents = inference.encode_steps(sae, test)
    return {"variant": name, "description": description, "own": recon["own"],
            "shuffled": recon["shuffled"], "zero": recon["zero"],
            "gap": recon["shuffled"] - recon["own"],
            "L0": float((latents > 0).sum(1).mean()),
            "dead": float((inference.latent_density(latents) == 0).mean()),
            "l1_weight_end": history["l1_coefficient"].iloc[-1]
            if "l1_coefficient" in history else np.nan,
            "seconds": time.perf_counter() - started}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="default",
                        help="run whose notebooks 01-02 made the data and LM (sizes and rates "
                             "stay the default profile's)")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps per variant")
    parser.add_argument("--n-train", type=int, default=20000, help="training steps sampled")
    parser.add_argument("--n-test", type=int, default=1000, help="held-out steps scored")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        metavar="VARIANT", help="any of: " + "; ".join(
                            f"{key} ({text})" for key, (text, _, _) in VARIANTS.items()))
    args = parser.parse_args(argv)
    lm_path, tokenizer, (train, test) = load_examples(args.profile, args.n_train, args.n_test)
    rows = []
    for name in args.variants:
        rows.append(run_variant(name, lm_path, tokenizer, train, test, args.steps))
        print(pd.DataFrame(rows[-1:]).round(4).to_string(index=False, header=len(rows) == 1),
              flush=True)
    table = pd.DataFrame(rows).set_index("variant")
    print(f"\n{args.steps} optimiser steps of {RATES['batch_size']} steps each, "
          f"{len(train):,} training / {len(test):,} held-out steps ({args.profile})")
    print(table.round(4).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
