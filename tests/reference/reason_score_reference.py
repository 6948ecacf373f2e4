"""A slow ReasonScore written from the paper and the rules of its authors' code, sharing no code
with reasonlens.scoring.

Galichin et al. (2025), arXiv 2503.18878, Sec. 3.2, as AIRI-Institute/SAE-Reasoning's
extraction/compute_score.py runs it: the vocabulary is a list of strings (extraction/
reason_tokens.json); strings with the same ``s.lstrip().lower()`` form one group; each string is
tokenized without special tokens and every occurrence of its ids marks its tokens; every marked
token is widened by a window (left, right), clipped at the context's edges; BOS/EOS/PAD are left
out. mu_i(f) is the mean activation of feature f over group i's mask. Then
p_i = mu_i / sum_j mu_j, H = -sum p_i log p_i / log|R|, and
score = mu_pos / sum mu_pos * H^alpha - mu_neg / sum mu_neg.

``edges="reference"`` widens as that code does, with ``delta[b, starts] += 1``, where a start
shared by several marked tokens (clipped at the first token) is added once; ``"definition"``
counts it as often as it occurs.

Organised like the paper's code: masks are built with plain Python loops, and the model is run once
per batch of 48 features (so a d_sae-wide SAE costs ceil(d_sae / 48) passes over the tokens).

Also plain versions of the prompt-level score (mean of the top-k features' activations over a
prompt's non-special tokens) and of the share of a feature's largest activations that fall inside
the reasoning-word windows.
"""

from __future__ import annotations

import copy
import math

import torch

FEATURE_BATCH = 48


def reference_groups(tokenizer, strings):
    """(group names, per group the id lists of its strings), grouped as compute_score.py does."""
    names, groups = [], []
    for text in strings:
        name = text.lstrip().lower()
        if name not in names:
            names.append(name)
            groups.append([])
        groups[names.index(name)].append(list(tokenizer.encode(text, add_special_tokens=False)))
    return names, groups


def widen(marks, window, edges):
    """Positions covered by widening each marked position by ``window`` (left, right)."""
    left, right = window
    n = len(marks)
    delta = [0] * (n + 1)
    starts_seen = set()
    for pos, on in enumerate(marks):
        if not on:
            continue
        start, end = max(pos - left, 0), min(pos + right, n - 1)
        if edges == "definition" or start not in starts_seen:
            delta[start] += 1
        starts_seen.add(start)
        delta[end + 1] -= 1
    covered, running = [], 0
    for pos in range(n):
        running += delta[pos]
        covered.append(running > 0)
    return covered


def masks_for(tokens, sequences_per_word, window, ignore_ids, edges="definition"):
    """Per word, a list (per context) of lists (per position) of booleans."""
    rows = tokens.tolist()
    result = []
    for sequences in sequences_per_word:
        word_mask = []
        for row in rows:
            marks = [False] * len(row)
            for seq in sequences:
                matched = [False] * len(row)
                n = len(seq)
                for start in range(len(row) - n + 1):
                    if row[start:start + n] == list(seq):
                        for pos in range(start, start + n):
                            matched[pos] = True
                covered = widen(matched, window, edges)
                marks = [a or b for a, b in zip(marks, covered)]
            for pos, tok in enumerate(row):
                if tok in ignore_ids:
                    marks[pos] = False
            word_mask.append(marks)
        result.append(word_mask)
    return result


def reference_reason_score(model, sae, tokens, strings=None, token_ids=None, window=(1, 2),
                           alpha=0.7, ignore_ids=None, hook_name=None, context_batch=4,
                           edges="definition"):
    """Returns a dict: words (the group names), and per-feature lists reason_score, mu_pos,
    mu_neg, entropy, max_activation, word_means (a list per group)."""
    tokenizer = model.tokenizer
    if ignore_ids is None:
        ignore_ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    ignore_ids = set(ignore_ids)
    if token_ids is not None:
        words, sequences_per_word = None, [[list(s) for s in group] for group in token_ids]
    else:
        words, sequences_per_word = reference_groups(tokenizer, strings)
    masks = masks_for(tokens, sequences_per_word, window, ignore_ids, edges)
    rows = tokens.tolist()
    n_words = len(sequences_per_word)
    positive = [[any(masks[i][c][p] for i in range(n_words)) for p in range(len(rows[c]))]
                for c in range(len(rows))]
    negative = [[(not positive[c][p]) and rows[c][p] not in ignore_ids
                 for p in range(len(rows[c]))] for c in range(len(rows))]

    sae = copy.deepcopy(sae)
    sae.fold_W_dec_norm()
    d_sae = sae.cfg.d_sae
    word_means = [[0.0] * d_sae for _ in range(n_words)]
    mu_pos, mu_neg, max_act = [0.0] * d_sae, [0.0] * d_sae, [0.0] * d_sae

    def mean_over(mask_rows, acts_rows):
        total, count = 0.0, 0
        for c, marks in enumerate(mask_rows):
            for p, on in enumerate(marks):
                if on:
                    total += acts_rows[c][p]
                    count += 1
        return total / count if count else 0.0

    for first in range(0, d_sae, FEATURE_BATCH):
        features = list(range(first, min(first + FEATURE_BATCH, d_sae)))
        chunks = []
        for c0 in range(0, len(rows), context_batch):  # one model pass per feature batch
            batch = tokens[c0:c0 + context_batch]
            _, cache = model.run_with_cache(batch, [hook_name])
            with torch.no_grad():
                acts = sae.encode(cache[hook_name])[..., features]
            chunks.append(acts.double())
        acts = torch.cat(chunks)  # [contexts, pos, len(features)]
        for j, f in enumerate(features):
            per_feature = acts[..., j].tolist()
            for i in range(n_words):
                word_means[i][f] = mean_over(masks[i], per_feature)
            mu_pos[f] = mean_over(positive, per_feature)
            mu_neg[f] = mean_over(negative, per_feature)
            valid = [per_feature[c][p] for c in range(len(rows)) for p in range(len(rows[c]))
                     if rows[c][p] not in ignore_ids]
            max_act[f] = max(valid)

    entropy, scores = [], []
    sum_pos, sum_neg = sum(mu_pos), sum(mu_neg)
    for f in range(d_sae):
        column = [word_means[i][f] for i in range(n_words)]
        total = sum(column)
        if n_words == 1:
            h = 1.0
        elif total == 0:
            h = 0.0
        else:
            h = 0.0
            for m in column:
                p = m / total
                if p > 0:
                    h -= p * math.log(p)
            h /= math.log(n_words)
        entropy.append(h)
        pos_term = mu_pos[f] / sum_pos if sum_pos else 0.0
        neg_term = mu_neg[f] / sum_neg if sum_neg else 0.0
        scores.append(pos_term * h ** alpha - neg_term)
    return {"words": list(words) if words is not None else None, "reason_score": scores,
            "mu_pos": mu_pos, "mu_neg": mu_neg, "entropy": entropy, "max_activation": max_act,
            "word_means": word_means}


def folded_feature_acts(model, sae, tokens, hook_name):
    """``[batch, pos, d_sae]`` activations of ``sae`` with decoder norms folded in, as doubles.

    Written out from the SAE's parameters: relu((x - b_dec) @ W_enc + b_enc) * |W_dec[f]|.
    """
    _, cache = model.run_with_cache(tokens, [hook_name])
    x = cache[hook_name].double()
    norms = sae.W_dec.detach().double().norm(dim=1)
    pre = (x - sae.b_dec.detach().double()) @ sae.W_enc.detach().double()
    return torch.relu(pre + sae.b_enc.detach().double()) * norms


def default_ignore(tokenizer):
    return {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}


def reference_prompt_score(model, sae, tokens, features, hook_name):
    """Per prompt: the mean over its non-BOS/EOS/PAD tokens and over ``features`` of the
    activations."""
    acts = folded_feature_acts(model, sae, tokens, hook_name)
    ignore = default_ignore(model.tokenizer)
    out = []
    for c, row in enumerate(tokens.tolist()):
        values = [acts[c, p, f].item() for p, tok in enumerate(row) if tok not in ignore
                  for f in features]
        out.append(sum(values) / len(values) if values else 0.0)
    return out


def reference_window_share(model, sae, tokens, strings, feature, n_top, window, hook_name):
    """(share of the feature's n_top largest activations inside any word window, share of all
    non-ignored tokens inside one); ties in activation must not straddle the n_top-th place."""
    ignore = default_ignore(model.tokenizer)
    _, sequences = reference_groups(model.tokenizer, strings)
    masks = masks_for(tokens, sequences, window, ignore)
    acts = folded_feature_acts(model, sae, tokens, hook_name)[..., feature].tolist()
    kept = [(acts[c][p], any(mask[c][p] for mask in masks))
            for c, row in enumerate(tokens.tolist()) for p, tok in enumerate(row)
            if tok not in ignore]
    ranked = sorted(kept, key=lambda item: -item[0])
    if n_top < len(ranked) and ranked[n_top - 1][0] == ranked[n_top][0]:
        raise ValueError("tied activations at the n_top-th place: the share is not defined")
    top = ranked[:n_top]
    return (sum(inside for _, inside in top) / len(top),
            sum(inside for _, inside in kept) / len(kept))
