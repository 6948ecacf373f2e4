"""Phase-1 training of the step-level SAE with DistributedDataParallel under ``torchrun``.

Every rank builds the same SAE from the same LM and reads the same step table; each takes its
slice of every batch (``training.train_step_sae``); gradients are averaged by DDP (gloo on CPU,
NCCL on GPU). Rank 0 writes checkpoints and the final SAE (atomically).

    torchrun --standalone --nproc_per_node 2 -m reasonlens.step_sae.distributed \\
        --model data/runs/default/models/reasoning --steps steps.parquet --out step_sae \\
        --sae-config '{"n_latents": 256}' --train-config '{"n_steps": 1000, "batch_size": 32}'

``--steps`` is a step table (``data.world_step_table`` or ``data.read_jsonl_steps`` saved as
Parquet); ``--model`` a ``save_pretrained`` LM directory (with its tokenizer) or hub id.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd
import torch.distributed as dist
from transformers import AutoTokenizer

from reasonlens.artifacts import atomic_path
from reasonlens.distributed import process_group
from reasonlens.step_sae.data import tokenize_steps
from reasonlens.step_sae.model import StepSAE, StepSAEConfig
from reasonlens.step_sae.training import StepSAETrainConfig, train_step_sae

log = logging.getLogger(__name__)


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Step-level SAE training over torchrun ranks.")
    parser.add_argument("--model", required=True, help="LM directory (with tokenizer) or hub id")
    parser.add_argument("--steps", required=True, help="step table parquet")
    parser.add_argument("--out", required=True, help="output directory (written by rank 0)")
    parser.add_argument("--sae-config", default="{}", help="StepSAEConfig fields as JSON")
    parser.add_argument("--train-config", default="{}", help="StepSAETrainConfig fields as JSON")
    parser.add_argument("--checkpoint-dir", default=None, help="resume from / write checkpoints")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    """Entry point for ``torchrun -m reasonlens.step_sae.distributed``."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    with process_group() as device:
        sae_cfg = StepSAEConfig.from_dict(json.loads(args.sae_config))
        train_cfg = StepSAETrainConfig.from_dict(json.loads(args.train_config))
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = StepSAE.build(args.model, tokenizer, sae_cfg, seed=args.seed).to(device)
        examples = tokenize_steps(pd.read_parquet(args.steps), tokenizer,
                                  sae_cfg.max_context_tokens, sae_cfg.max_step_tokens)
        history = train_step_sae(model, examples, train_cfg, checkpoint_dir=args.checkpoint_dir)
        if dist.get_rank() == 0:
            with atomic_path(Path(args.out)) as tmp:
                model.cpu().save(tmp)
                history.to_parquet(tmp / "history.parquet", index=False)
            log.info("wrote %s (%d steps on %d ranks)", args.out, len(history),
                     dist.get_world_size())
        dist.barrier()

if __name__ == "__main__":
    main()
