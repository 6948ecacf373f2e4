"""The reference's step probes: an MLP per task, trained with validation checkpointing.

Yang et al. (2026, Sec. 4.2, Fig. 1) probe what a step latent holds with a small MLP per task,
as the authors' code does it (Miaow-Lab/SSAE at 911d4d3, *R*; our audit:
``shared/reference/ssae_fidelity.md``, section 3):

* the network (classifier/classifier.py:3-28): ``d -> hidden -> hidden/2 -> out``, each hidden
  layer ``Linear, LayerNorm, ReLU, Dropout(0.1)``; ``hidden = 1024`` (configs/classifier.yaml:36);
* three tasks (classifier/classifier_train.py:49-58) with their losses: ``length`` (R's ``len``:
  the step's token count, regression, MSE), ``first_token`` (R's ``token``: its first token id
  over the whole vocabulary, cross-entropy) and ``correctness`` (a 0/1 label, BCE with logits);
* training (classifier_train.py:225-354): AdamW, one epoch per "iter", the learning rate warmed
  up linearly then cosine-decayed per epoch (``lr_at``), gradients of ``grad_accum_steps``
  micro-batches *summed*, clipped at 1.0; the validation loss is computed at the *start* of every
  epoch and the state with the lowest one is kept (``<``: the first of ties);
* reported numbers (classifier/README.md:101-102; correctness_eval.py:61-73): the best validation
  loss for ``length`` (MSE) and ``first_token`` (perplexity = exp of the cross-entropy), and
  accuracy at ``sigmoid >= 0.5`` for ``correctness``.

We train it with our own torch loop: scikit-learn's ``MLPClassifier``/``MLPRegressor`` have no
LayerNorm, no dropout and no checkpoint chosen on a validation split.

R's quirks, reproduced by ``ReferenceClassifierConfig.reference()`` and documented at each field:

* the validation loss is the mean of per-batch mean losses (classifier_train.py:300-305), so a
  short last batch weighs as much as a full one (``batched_loss``);
* R evaluates before each epoch, so the untrained network competes and the state after the last
  epoch is never evaluated (``evaluate_after_last_epoch=False``);
* in R's single-process path an epoch's last, incomplete group of accumulated micro-batches is
  dropped (``micro_step`` restarts at 0 each epoch, classifier_train.py:326-331): with fewer than
  ``batch_size * grad_accum_steps`` training steps the network never updates (we warn);
* R has no validation split: it selects the checkpoint on ``val_file`` and reports on that same
  file (configs/classifier.yaml:33-34, correctness_eval.py:112), so its numbers are selected on
  the set they are reported on (``validation_fraction=0``);
* ``lr_decay_iters: null`` (configs/classifier.yaml:43) makes R's ``int(cfg.get(...))`` raise a
  TypeError (classifier_train.py:104); we read null as its evident intent, ``n_epochs``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from reasonlens.config import Config, check_range

log = logging.getLogger(__name__)

TASKS = ("length", "first_token", "correctness")
REFERENCE_TASK_NAMES = {"length": "len", "first_token": "token", "correctness": "correctness"}


@dataclasses.dataclass(frozen=True)
class ReferenceClassifierConfig(Config):
    """Network, optimiser, schedule and checkpoint rule of R's step probes.

    The defaults are ours, small enough to train on the toy world's steps on a CPU in seconds;
    ``ReferenceClassifierConfig.reference()`` gives R's values (configs/classifier.yaml:28-56).

    Args:
        hidden_dim: width of the first hidden layer; the second is half of it (R: 1024; ours
            256, which trains a toy run's probes in seconds on a CPU).
        dropout: after each hidden layer (R: 0.1).
        n_epochs: training epochs (R: ``max_iters`` 1000, each a pass over the training set;
            ours 30).
        lr: peak learning rate (R: 1e-6).
        min_lr: the cosine schedule's floor (R: 1e-7).
        warmup_epochs: linear warmup, ``lr * (epoch + 1) / (warmup_epochs + 1)`` (R: 2).
        lr_decay_epochs: the epoch the cosine reaches ``min_lr``; None: ``n_epochs`` (R's yaml
            says null, which R's script cannot read; see the module docstring).
        decay_lr: False keeps ``lr`` throughout (R: True).
        beta1, beta2: AdamW's betas (R: 0.9, 0.95).
        weight_decay: AdamW's (R: 0.01).
        grad_clip: max gradient norm, 0 for none (R: 1.0).
        batch_size: examples per micro-batch, and per validation batch (R: 128).
        grad_accum_steps: micro-batches whose gradients are summed per optimiser step (R: 4, in
            its single-process path; R's launcher runs 4 processes, each with 1 micro-batch of
            128, which is one mean-reduced batch of 512, shuffled:
            ``reference(batch_size=512, grad_accum_steps=1, shuffle=True)``).
        shuffle: reshuffle the training set each epoch (R single-process: False).
        validation_fraction: share of the training set held out for choosing the checkpoint.
            0 is R's rule: choose on the evaluation set itself, which ``fit_classifier`` then
            needs as ``validation=``.
        evaluate_after_last_epoch: also evaluate the state after the last epoch (R: False).
        threshold: ``correctness`` counts as predicted positive at ``sigmoid >= threshold``
            (R: 0.5, correctness_eval.py:69).
        seed: initialisation, dropout, shuffling and the validation split (R: 1337).
    """

    hidden_dim: int = 256
    dropout: float = 0.1
    n_epochs: int = 30
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_epochs: int = 2
    lr_decay_epochs: int | None = None
    decay_lr: bool = True
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    batch_size: int = 64
    grad_accum_steps: int = 1
    shuffle: bool = True
    validation_fraction: float = 0.2
    evaluate_after_last_epoch: bool = True
    threshold: float = 0.5
    seed: int = 0

    def __post_init__(self):
        check_range("hidden_dim", self.hidden_dim, 2, hint="The second layer is hidden_dim // 2.")
        check_range("dropout", self.dropout, 0.0, 1.0 - 1e-9)
        check_range("n_epochs", self.n_epochs, 1)
        check_range("lr", self.lr, 0.0)
        check_range("min_lr", self.min_lr, 0.0, self.lr, hint="It must not exceed lr.")
        check_range("warmup_epochs", self.warmup_epochs, 0)
        if self.lr_decay_epochs is not None:
            check_range("lr_decay_epochs", self.lr_decay_epochs, self.warmup_epochs + 1,
                        hint="It must come after warmup_epochs; None means n_epochs.")
        check_range("beta1", self.beta1, 0.0, 1.0 - 1e-12)
        check_range("beta2", self.beta2, 0.0, 1.0 - 1e-12)
        check_range("weight_decay", self.weight_decay, 0.0)
        check_range("grad_clip", self.grad_clip, 0.0)
        check_range("batch_size", self.batch_size, 1)
        check_range("grad_accum_steps", self.grad_accum_steps, 1)
        check_range("validation_fraction", self.validation_fraction, 0.0, 0.9,
                    hint="0 chooses the checkpoint on the evaluation set, as R does.")
        check_range("threshold", self.threshold, 0.0, 1.0)
        for name in ("decay_lr", "shuffle", "evaluate_after_last_epoch"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be true or false.")

    @classmethod
    def reference(cls, **overrides) -> ReferenceClassifierConfig:
        """R's classifier training (configs/classifier.yaml:28-56, classifier_train.py:95-113).

        Its single-process path: batches of 128, 4 summed per step, unshuffled, the checkpoint
        chosen on the evaluation set (``validation_fraction=0``) before each epoch.

        Raises:
            ValueError: an override out of range.
        """
        values = dict(hidden_dim=1024, dropout=0.1,  # classifier.yaml:36-37
                      n_epochs=1000, lr=1e-6, min_lr=1e-7,  # classifier.yaml:38-40
                      warmup_epochs=2, lr_decay_epochs=None, decay_lr=True,  # :42-44
                      beta1=0.9, beta2=0.95, weight_decay=0.01, grad_clip=1.0,  # :45-48
                      batch_size=128, grad_accum_steps=4,  # :41, :50
                      shuffle=False,  # classifier_train.py:257-263 (no sampler, no shuffle)
                      validation_fraction=0.0,  # val_file is also the reported set
                      evaluate_after_last_epoch=False,  # classifier_train.py:296 (start of epoch)
                      threshold=0.5, seed=1337)  # classifier.yaml:68, :2
        return cls(**values | overrides)


def lr_at(epoch: int, cfg: ReferenceClassifierConfig) -> float:
    """The learning rate of ``epoch`` (from 0), R's ``get_lr`` (classifier_train.py:25-33).

    ``lr * (epoch + 1) / (warmup + 1)`` during warmup, ``min_lr`` after ``lr_decay_epochs``, and
    ``min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2`` between, ``t`` the share of decay done.
    """
    if not cfg.decay_lr:
        return cfg.lr
    decay = cfg.n_epochs if cfg.lr_decay_epochs is None else cfg.lr_decay_epochs
    if epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1) / (cfg.warmup_epochs + 1)
    if epoch >= decay:  # R: ``>``; at ``decay`` its cosine is min_lr too, without R's 0/0
        return cfg.min_lr  # when decay == warmup_epochs
    ratio = (epoch - cfg.warmup_epochs) / (decay - cfg.warmup_epochs)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


class ReferenceClassifier(torch.nn.Module):
    """R's probe network (classifier/classifier.py:3-28).

    ``[batch, input_dim] -> [batch, n_outputs]``: Linear(d, h), LayerNorm, ReLU, Dropout,
    Linear(h, h // 2), LayerNorm, ReLU, Dropout, Linear(h // 2, n_outputs).
    """

    def __init__(self, input_dim: int, n_outputs: int, hidden_dim: int = 1024,
                 dropout: float = 0.1):
        super().__init__()
        half = hidden_dim // 2
        self.net = torch.nn.Sequential(
            torch.nn.Linear(input_dim, hidden_dim), torch.nn.LayerNorm(hidden_dim),
            torch.nn.ReLU(), torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden_dim, half), torch.nn.LayerNorm(half), torch.nn.ReLU(),
            torch.nn.Dropout(dropout), torch.nn.Linear(half, n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def task_loss(task: str, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean loss of one batch (classifier_train.py:49-58).

    Args:
        task: ``length`` (MSE of ``outputs [batch, 1]`` against the counts), ``first_token``
            (cross-entropy of logits ``[batch, n_classes]`` against the token ids) or
            ``correctness`` (BCE with logits ``[batch, 1]`` against 0/1).
        outputs: the network's outputs.
        labels: ``[batch]``.
    """
    if task == "length":
        return F.mse_loss(outputs[:, 0], labels.float())
    if task == "first_token":
        return F.cross_entropy(outputs, labels.long())
    if task == "correctness":
        return F.binary_cross_entropy_with_logits(outputs[:, 0], labels.float())
    raise ValueError(f"task={task!r} is unknown; use one of {list(TASKS)}.")


def batched_loss(task: str, outputs: torch.Tensor, labels: torch.Tensor, batch_size: int
                 ) -> float:
    """R's validation loss: the mean over consecutive batches of each batch's mean loss.

    classifier_train.py:300-305: a short last batch counts as much as a full one. ``outputs``
    ``[n, n_outputs]``, ``labels`` ``[n]``.
    """
    losses = [task_loss(task, outputs[i: i + batch_size], labels[i: i + batch_size]).item()
              for i in range(0, len(labels), batch_size)]
    return float(np.mean(losses))


def prediction_metrics(task: str, outputs: np.ndarray | torch.Tensor, labels: np.ndarray,
                       batch_size: int, threshold: float = 0.5) -> dict[str, float]:
    """The numbers R reports for one task, from the network's outputs on the evaluation set.

    ``length``: ``mse`` (R's validation loss, batch means averaged, README.md:101).
    ``first_token``: ``cross_entropy`` (the same way), ``perplexity`` = exp of it (Fig. 1's PPL),
    and ``accuracy`` (top-1; ours, R does not report it). ``correctness``: ``accuracy`` of
    ``sigmoid(logit) >= threshold`` over examples (correctness_eval.py:61-73) and ``bce``.

    Args:
        task: one of ``TASKS``.
        outputs: ``[n, n_outputs]`` (``[n, 1]`` for ``length`` and ``correctness``).
        labels: ``[n]``.
        batch_size: R's validation batch size (the loss is a mean of batch means).
        threshold: for ``correctness``.
    """
    outputs = torch.as_tensor(np.asarray(outputs), dtype=torch.float32)
    labels_t = torch.as_tensor(np.asarray(labels, dtype=np.float64))
    loss = batched_loss(task, outputs, labels_t, batch_size)
    if task == "length":
        return {"mse": loss}
    if task == "first_token":
        accuracy = (outputs.argmax(-1) == labels_t.long()).double().mean().item()
        return {"cross_entropy": loss, "perplexity": math.exp(loss), "accuracy": accuracy}
    predicted = (torch.sigmoid(outputs[:, 0]) >= threshold).double()
    return {"accuracy": (predicted == labels_t).double().mean().item(), "bce": loss}


@dataclasses.dataclass
class FittedClassifier:
    """A trained probe and how it was chosen.

    Attributes:
        model: the network in the chosen state, in eval mode.
        task: its task.
        best_epoch: training epochs done before the chosen state (0: the untrained network).
        val_losses: ``{epochs trained: validation loss}`` of every evaluated state.
        n_optimizer_steps: optimiser steps over the whole run.
    """

    model: ReferenceClassifier
    task: str
    best_epoch: int
    val_losses: dict[int, float]
    n_optimizer_steps: int

    def outputs(self, features: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """The network's outputs ``[n, n_outputs]`` for ``features [n, d]`` (no dropout)."""
        device = next(self.model.parameters()).device
        x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
        with torch.no_grad():
            return torch.cat([self.model(x[i: i + batch_size].to(device)).cpu()
                              for i in range(0, len(x), batch_size)]).numpy()


def _check_labels(task: str, labels: np.ndarray, n_classes: int | None) -> int:
    """The number of outputs for ``task``; raise ValueError on labels it cannot take."""
    if task not in TASKS:
        raise ValueError(f"task={task!r} is unknown; use one of {list(TASKS)}.")
    if task == "length":
        return 1
    if task == "correctness":
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"correctness labels must be 0/1 or booleans, got "
                             f"{sorted(set(np.asarray(labels).tolist()))[:5]}.")
        return 1
    if n_classes is None:
        raise ValueError("task='first_token' needs n_classes (R: the tokenizer's vocab_size).")
    check_range("n_classes", n_classes, 1)
    if len(labels) and (np.min(labels) < 0 or np.max(labels) >= n_classes):
        raise ValueError(f"first-token ids span [{np.min(labels)}, {np.max(labels)}] but "
                         f"n_classes={n_classes}; give n_classes > every id (the tokenizer's "
                         "vocab_size, or len(tokenizer) when steps start with added tokens).")
    return n_classes


def split_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, validation)`` of a seeded random split, ``ceil(fraction * n)`` held out.

    Raises:
        ValueError: nothing would be left to train on, or nothing held out.
    """
    n_val = math.ceil(fraction * n)
    if n_val < 1 or n_val >= n:
        raise ValueError(f"validation_fraction={fraction} of {n} training steps leaves "
                         f"{n - n_val} to train on and {n_val} to validate on; both must be "
                         "positive. Use more steps or another fraction.")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def fit_classifier(features: np.ndarray, labels: np.ndarray, task: str,
                   cfg: ReferenceClassifierConfig, n_classes: int | None = None,
                   validation: tuple[np.ndarray, np.ndarray] | None = None,
                   device: str | torch.device = "cpu") -> FittedClassifier:
    """Train R's probe on ``features [n, d]`` for ``task`` and keep its validation-best state.

    Training follows classifier_train.py:288-354 (see the module docstring): per epoch, set the
    learning rate (``lr_at``), evaluate, keep the state if its validation loss is lower than the
    best so far, then train one epoch with summed gradient accumulation and clipping. Everything
    random (initialisation, dropout, shuffling, the split) comes from ``cfg.seed``; the global
    RNGs are left as they were.

    Args:
        features: ``[n, d]`` step features.
        labels: ``[n]``: token counts (``length``), token ids (``first_token``) or 0/1
            (``correctness``).
        task: one of ``TASKS``.
        cfg: the network and its training.
        n_classes: outputs of ``first_token`` (R: ``tokenizer.vocab_size``).
        validation: ``(features, labels)`` to choose the checkpoint on; None: a
            ``cfg.validation_fraction`` split of the training steps.
        device: where to train.

    Returns:
        The chosen network and its validation history.

    Raises:
        ValueError: an unknown task, labels the task cannot take, mismatched lengths, or
            ``validation_fraction=0`` without ``validation``.
        FloatingPointError: no evaluated state has a finite validation loss.
    """
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"features {x.shape} and labels {y.shape} must be [n, d] and [n].")
    n_outputs = _check_labels(task, y, n_classes)
    if validation is None:
        if cfg.validation_fraction == 0:
            raise ValueError("validation_fraction=0 chooses the checkpoint on the evaluation set "
                             "(R's rule); pass it as validation=(features, labels), or set "
                             "validation_fraction > 0.")
        train_idx, val_idx = split_validation(len(y), cfg.validation_fraction, cfg.seed)
        (x, y), val = (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])
    else:
        val = (np.asarray(validation[0], dtype=np.float32), np.asarray(validation[1]))
        _check_labels(task, val[1], n_classes)
    if len(y) < cfg.batch_size * cfg.grad_accum_steps:
        log.warning("%d training steps fill no group of grad_accum_steps=%d batches of %d: R "
                    "drops an epoch's incomplete group, so the probe never updates.", len(y),
                    cfg.grad_accum_steps, cfg.batch_size)
    x_train = torch.as_tensor(x, device=device)
    y_train = torch.as_tensor(y.astype(np.float64), device=device)
    x_val = torch.as_tensor(val[0], device=device)
    y_val = torch.as_tensor(val[1].astype(np.float64), device=device)
    device = torch.device(device)
    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        model = ReferenceClassifier(x.shape[1], n_outputs, cfg.hidden_dim, cfg.dropout).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr,
                                      betas=(cfg.beta1, cfg.beta2),
                                      weight_decay=cfg.weight_decay)

        def evaluate() -> float:
            model.eval()
            with torch.no_grad():
                outputs = torch.cat([model(x_val[i: i + cfg.batch_size])
                                     for i in range(0, len(x_val), cfg.batch_size)])
            return batched_loss(task, outputs.cpu(), y_val.cpu(), cfg.batch_size)

        best, best_state, best_epoch, history, n_steps = math.inf, None, 0, {}, 0
        for epoch in range(cfg.n_epochs + cfg.evaluate_after_last_epoch):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch, cfg)
            history[epoch] = evaluate()
            if history[epoch] < best:  # classifier_train.py:309: strictly lower
                best, best_epoch = history[epoch], epoch
                best_state = copy.deepcopy(model.state_dict())
            if epoch == cfg.n_epochs:  # the extra evaluation after the last epoch
                break
            model.train()
            order = (torch.randperm(len(y_train), generator=generator) if cfg.shuffle
                     else torch.arange(len(y_train)))
            micro_step = 0
            for start in range(0, len(order), cfg.batch_size):
                index = order[start: start + cfg.batch_size].to(device)
                if micro_step == 0:
                    optimizer.zero_grad(set_to_none=True)
                task_loss(task, model(x_train[index]), y_train[index]).backward()
                micro_step += 1
                if micro_step == cfg.grad_accum_steps:
                    if cfg.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    optimizer.step()
                    n_steps += 1
                    micro_step = 0
        if best_state is None:
            raise FloatingPointError(f"every validation loss of task={task!r} is NaN or infinite "
                                     f"({history}); check the features for NaN/inf values.")
        model.load_state_dict(best_state)
    return FittedClassifier(model.eval(), task, best_epoch, history, n_steps)
