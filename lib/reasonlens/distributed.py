"""ReasonScore sharded over processes with ``torch.distributed`` (gloo on CPU, NCCL on GPU).

ReasonScore's statistics are sums, counts and maxima (``scoring.ReasonStats``), so each rank scores
its own token batches (rank r takes batches r, r + W, r + 2W, ...) and one all-reduce per tensor
(SUM for sums and counts, MAX for maximum activations) gives exactly the single-process result.

Launch:

    torchrun --standalone --nproc_per_node 2 -m reasonlens.distributed \\
        --model data/runs/default/models/reasoning --sae data/runs/default/sae/trained \\
        --tokens data/runs/default/contexts/reasoning_val.parquet --out scores.parquet

Rank 0 writes the scores atomically (a temporary name, then a rename).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist

from reasonlens import scoring
from reasonlens.artifacts import atomic_path

log = logging.getLogger(__name__)


def shard_batches(n_batches: int, rank: int, world_size: int) -> list[int]:
    """The batch indices rank ``rank`` of ``world_size`` takes: r, r + W, r + 2W, ..."""
    return list(range(rank, n_batches, world_size))


def all_reduce_stats(stats: scoring.ReasonStats) -> scoring.ReasonStats:
    """Sum sums and counts, and take the max of maxima, over all ranks, in place.

    A rank that saw no tokens contributes -inf to the maximum, so it cannot change it.

    Returns:
        ``stats``, now identical on every rank.
    """
    had_tokens = stats.n_tokens > 0
    for name in scoring.ReasonStats.SUM_FIELDS:
        dist.all_reduce(getattr(stats, name), op=dist.ReduceOp.SUM)
    if not had_tokens:
        stats.max_activation.fill_(-math.inf)
    for name in scoring.ReasonStats.MAX_FIELDS:
        dist.all_reduce(getattr(stats, name), op=dist.ReduceOp.MAX)
    if stats.n_tokens == 0:
        stats.max_activation.zero_()
    return stats


def distributed_stats(model, sae, tokens: torch.Tensor, cfg: scoring.ReasonScoreConfig,
                      progress: bool = False) -> scoring.ReasonStats:
    """This rank's share of the batches, all-reduced over the default process group.

    Args:
        model, sae, tokens, cfg: as for ``scoring.accumulate_stats``; every rank passes the same
            ``tokens``.

    Returns:
        The ReasonStats of all of ``tokens``, identical on every rank.
    """
    rank, world_size = dist.get_rank(), dist.get_world_size()
    n_batches = math.ceil(tokens.shape[0] / cfg.batch_size)
    mine = shard_batches(n_batches, rank, world_size)
    stats = scoring.accumulate_stats(model, sae, tokens, cfg, batch_indices=mine,
                                     progress=progress and rank == 0)
    return all_reduce_stats(stats)


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="ReasonScore sharded over torchrun ranks.")
    parser.add_argument("--model", required=True, help="save_pretrained model directory")
    parser.add_argument("--sae", required=True, help="SAELens SAE directory (cfg.json + weights)")
    parser.add_argument("--tokens", required=True, help="contexts parquet with a tokens column")
    parser.add_argument("--out", required=True, help="output parquet (written by rank 0)")
    parser.add_argument("--hook-name", default=None, help="default: the SAE's hook_name")
    parser.add_argument("--backend", default="transformer_lens",
                        choices=["transformer_lens", "hf"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=0.7)
    parser.add_argument("--window", type=int, nargs=2, default=(1, 2))
    parser.add_argument("--window-edges", default="definition", choices=scoring.WINDOW_EDGES,
                        help="'reference': the paper's code's clipping at a context's first token")
    parser.add_argument("--words", nargs="+", default=None,
                        help="keyword variants, grouped by lstrip().lower() (default: the "
                             "reference's 34 strings)")
    return parser.parse_args(argv)


@contextlib.contextmanager
def process_group() -> Iterator[str]:
    """Join torchrun's process group (NCCL on GPU, gloo on CPU), yield this rank's device, leave."""
    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        device = "cpu"
        if use_cuda:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
        yield device
    finally:
        dist.destroy_process_group()


def main(argv=None) -> None:
    """Entry point for ``torchrun -m reasonlens.distributed``."""
    from sae_lens import SAE

    from reasonlens.data import contexts_tensor
    from reasonlens.models import load_hooked

    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    with process_group() as device:
        model = load_hooked(args.model, backend=args.backend)
        model.model.to(device)
        sae = SAE.load_from_disk(args.sae, device=device)
        tokens = contexts_tensor(pd.read_parquet(args.tokens))
        cfg = scoring.ReasonScoreConfig(hook_name=args.hook_name, batch_size=args.batch_size,
                                        alpha=args.alpha, window=tuple(args.window),
                                        window_edges=args.window_edges, words=args.words)
        stats = distributed_stats(model, sae, tokens, cfg, progress=True)
        if dist.get_rank() == 0:
            scoring.warn_absent_words(stats)
            frame = stats.reason_score(cfg.alpha)
            out = Path(args.out)
            with atomic_path(out) as tmp:
                frame.to_parquet(tmp, index=False)
            log.info("wrote %s (%d features, %d tokens, %d ranks)", out, len(frame),
                     stats.n_tokens, dist.get_world_size())
        dist.barrier()

if __name__ == "__main__":
    main()
