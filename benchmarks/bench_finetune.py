"""Fine-tuning SmolLM2-135M-Instruct on a CPU: full fine-tuning against LoRA (peft), each in
float32 and under bfloat16 autocast, on the synthetic world's traces in the model's chat template;
and packed contexts (the book's layout) against one padded document per row.

All variants run in this process on the same data, from the same weights; the script reports
useful (non-padding) tokens per second of a training step (forward, backward, AdamW), the ratio to
full float32 fine-tuning, and the training loss after the measured steps (the same learning rate
per variant family: ``--lr`` for full fine-tuning, ``--lora-lr`` for LoRA).

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


def world_batches(tokenizer, n_batches: int, batch_size: int, context_size: int, packed: bool
                  ) -> list[dict[str, torch.Tensor]]:
    """Training batches of the world's reasoning mix: packed rows of ``context_size`` tokens (the
    book's layout), or one document per row padded to the batch's longest, with about as many
    tokens per batch (padding masked out of attention and loss)."""
    world = generate_world(WorldConfig(n_problems=max(60, n_batches * batch_size * 2)),
                           chat_format(tokenizer))
    ids = data.tokenize(tokenizer, data.mix_documents(world.documents, "train",
                                                      data.MIXES["reasoning"]))
    if packed:
        rows = data.contexts_tensor(data.pack_contexts(ids, data.ContextConfig(context_size)))
        return [{"input_ids": rows[i * batch_size:(i + 1) * batch_size],
                 "labels": rows[i * batch_size:(i + 1) * batch_size]} for i in range(n_batches)]
    per_batch = max(1, batch_size * context_size * len(ids) // sum(map(len, ids)))
    batches = []
    for i in range(n_batches):
        docs = [d[:context_size] for d in ids[i * per_batch:(i + 1) * per_batch]]
        width = max(map(len, docs))
        input_ids = torch.full((len(docs), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(docs), width), dtype=torch.long)
        for row, doc in enumerate(docs):
            input_ids[row, :len(doc)], mask[row, :len(doc)] = torch.tensor(doc), 1
        batches.append({"input_ids": input_ids, "attention_mask": mask,
                        "labels": input_ids.masked_fill(mask == 0, -100)})
    return batches


def time_steps(model, batches, lr: float, autocast: bool) -> tuple[float, float]:
    """Useful (non-padding) tokens per second of a training step, and the last loss; the first
    batch warms up and is not timed."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    seconds, n_tokens, loss = 0.0, 0, None
    for step, batch in enumerate(batches):
        start = time.perf_counter()
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with amp:
            loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:
            seconds += time.perf_counter() - start
            n_tokens += int((batch["labels"] != -100).sum())
    return n_tokens / seconds, loss.item()


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
    layouts = {packed: world_batches(tokenizer, args.steps + 1, args.batch_size,
                                     args.context_size, packed) for packed in (True, False)}
    rows = []
    variants = [("full", False, True), ("full", True, True), ("lora", False, True),
                ("lora", True, True), ("full", True, False)]
    for method, autocast, packed in variants:
        model = copy.deepcopy(base)
        if method == "lora":
            lora = LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank,
                              target_modules=LORA_TARGETS)
            model = get_peft_model(model, lora)
        n_trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        tok_s, loss = time_steps(model, layouts[packed],
                                 args.lr if method == "full" else args.lora_lr, autocast)
        rows.append(dict(method=method, bf16_autocast=autocast, packed=packed,
                         trained_params=n_trained, tokens_per_s=round(tok_s, 1),
                         final_loss=round(loss, 3)))
        print(rows[-1], file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    table["ratio_to_full_fp32"] = (table.tokens_per_s / table.tokens_per_s.iloc[0]).round(2)
    print(table.to_string(index=False))
    return table


if __name__ == "__main__":
    main()
