"""Fine-tuning SmolLM2-135M-Instruct on a CPU: full fine-tuning against LoRA (peft), each in
float32 and under bfloat16 autocast, on the synthetic world's traces in the model's chat template.

All variants run in this process on the same contexts, from the same weights; the script reports
tokens per second of a training step (forward, backward, AdamW), the ratio to full float32
fine-tuning, and the training loss after the measured steps (the same learning-rate per variant
family: ``--lr`` for full fine-tuning, ``--lora-lr`` for LoRA).

    python benchmarks/bench_finetune.py                      # 6 steps of 8 x 256 tokens each
    python benchmarks/bench_finetune.py --steps 3 --batch-size 4

LoRA needs peft, which the book does not install (its measured choice is full fine-tuning under
bfloat16 autocast): ``pip install --no-deps peft==0.17.1`` first.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import time

import pandas as pd
import torch

from reasonlens import data, pretrained
from reasonlens.world import WorldConfig, chat_format, generate_world

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def world_contexts(tokenizer, n_contexts: int, context_size: int) -> torch.Tensor:
    world = generate_world(WorldConfig(n_problems=max(60, n_contexts * 2)), chat_format(tokenizer))
    texts = data.mix_documents(world.documents, "train", data.MIXES["reasoning"])
    packed = data.pack_contexts(data.tokenize(tokenizer, texts), data.ContextConfig(context_size))
    return data.contexts_tensor(packed)[:n_contexts]


def time_steps(model, tokens, n_steps: int, batch_size: int, lr: float, autocast: bool):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    times, losses = [], []
    for step in range(n_steps + 1):  # the first step warms up and is not timed
        batch = tokens[(step * batch_size) % len(tokens):][:batch_size]
        start = time.perf_counter()
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with amp:
            loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:
            times.append(time.perf_counter() - start)
        losses.append(loss.item())
    return batch_size * tokens.shape[1] / (sum(times) / len(times)), losses[-1]


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--context-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--lora-lr", type=float, default=1e-3)
    parser.add_argument("--lora-rank", type=int, default=16)
    args = parser.parse_args(argv)
    from peft import LoraConfig, get_peft_model

    base, tokenizer = pretrained.load_pretrained("smollm2")
    tokens = world_contexts(tokenizer, args.batch_size * (args.steps + 1), args.context_size)
    rows = []
    for method in ("full", "lora"):
        for autocast in (False, True):
            model = copy.deepcopy(base)
            if method == "lora":
                lora = LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank,
                                  target_modules=LORA_TARGETS)
                model = get_peft_model(model, lora)
            n_trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
            tok_s, loss = time_steps(model, tokens, args.steps, args.batch_size,
                                     args.lr if method == "full" else args.lora_lr, autocast)
            rows.append(dict(method=method, bf16_autocast=autocast, trained_params=n_trained,
                             tokens_per_s=round(tok_s, 1), final_loss=round(loss, 3)))
            print(rows[-1], file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    table["ratio_to_full_fp32"] = (table.tokens_per_s / table.tokens_per_s.iloc[0]).round(2)
    print(table.to_string(index=False))
    return table


if __name__ == "__main__":
    main()
