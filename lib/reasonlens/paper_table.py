"""The paper's steering table by one command: unsteered vs steered, per task, with intervals.

Galichin et al. (2025, arXiv 2503.18878) steer feature 46379 of their DeepSeek-R1-Distill-Llama-8B
SAE at strength 2 and report accuracy and reasoning length on AIME-2024, MATH-500 and
GPQA-Diamond, unsteered and steered (headline: +2.2 points of accuracy, +20.5% longer reasoning).
Their evaluation (AIRI-Institute/SAE-Reasoning, ``evaluation/evaluation.sh``) clamps the feature
to ``5.840 * 2`` in the SAE's raw units at the MLP output of layer 19, with vLLM. This module runs
the same tasks, prompts, sampling and intervention through ``harness.run_harness`` (the HF
backend), twice, and writes ``paper_table.json`` and ``paper_table.md``: per task and model,
accuracy and mean reasoning length with 95% percentile-bootstrap intervals over samples (read
from lm-eval's per-sample logs), the share of traces whose ``</think>`` never came, and the paired
steered-minus-unsteered differences with their intervals, beside the paper's numbers.

    python -m reasonlens.paper_table --profile paper-table-r1-llama-8b --out results/paper-table

``PaperTableConfig.reference()`` is the paper's run; a profile YAML (flat, its keys the config's
fields) names a variant, and the command line overrides the run-size settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reasonlens import evaluation
from reasonlens.artifacts import atomic_path
from reasonlens.tasks import TASK_NAMES

log = logging.getLogger(__name__)

JSON_NAME, MARKDOWN_NAME = "paper_table.json", "paper_table.md"
CONDITIONS = ("unsteered", "steered")
TASK_LABELS = {"aime2024_nofigures": "AIME-2024", "math-500": "MATH-500",
               "openai_gpqa_diamond": "GPQA-Diamond"}
# The paper's numbers. The per-task values (Galichin et al. 2025, the steering table) could not be
# read on the machine this was written on (no access to the paper's text, and the reference
# repository's README does not list them), so they are None and the table says so; fill them in
# from the paper. The headline is the paper's abstract/introduction (also docs/design.md).
PAPER = {
    "source": "Galichin et al. 2025, arXiv 2503.18878 (feature 46379, strength 2)",
    "headline": {"accuracy_change_points": 2.2, "length_change_percent": 20.5},
    "tasks": {task: {"unsteered": {"accuracy": None, "reasoning_length": None},
                     "steered": {"accuracy": None, "reasoning_length": None}}
              for task in TASK_NAMES},
    "note": "per-task numbers not available here: fill PAPER['tasks'] from the paper's table",
}
STEER_FIELDS = ("sae", "sae_release", "sae_id", "features", "strength", "mode",
                "max_activations", "site", "units")


@dataclasses.dataclass(frozen=True)
class PaperTableConfig:
    """One run of the paper's table (the reference's by default; ``reference()``).

    Args:
        pretrained: the model (hub id or local path).
        sae, sae_release, sae_id: the SAE (a SAELens directory, or a release and id).
        features, strength, mode, max_activations, site, units: the steering, as
            ``SteeredHFLM``'s model args (the paper's: 46379, 2, clamp, 5.840, reference, raw).
        tasks: lm-eval task names (the paper's three by default).
        device, dtype, batch_size: as for ``lm_eval`` (``batch_size`` may be ``auto``).
        limit: documents per task (None: all, as the paper).
        gen_kwargs: overrides of the tasks' generation settings (None: the reference's, T 0.6,
            top-p 0.95, up to 32,768 new tokens), e.g. ``max_gen_toks=4096``.
        apply_chat_template: wrap prompts in the model's chat template (the reference does).
        seed: lm-eval's sampling seed (the reference's 1234).
        aime24_path, math500_path, gpqa_path: local task files (None: the hub, or the
            ``REASONLENS_*_PATH`` variables).
        n_boot, boot_seed: the bootstrap over samples.
    """

    pretrained: str = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
    sae: str | None = None
    sae_release: str | None = "andreuka18/deepseek-r1-distill-llama-8b-lmsys-openthoughts"
    sae_id: str | None = "blocks.19.hook_resid_post"
    features: Any = 46379  # evaluation.sh
    strength: Any = 2.0  # evaluation.sh
    mode: str = "clamp"
    max_activations: Any = 5.840  # evaluation.sh's sae_max_activation, raw SAE units
    site: str = "reference"  # the MLP output of the SAE's layer, where vLLM's hook acted
    units: str = "raw"
    tasks: tuple[str, ...] = TASK_NAMES
    device: str = "cuda"
    dtype: str = "bfloat16"
    batch_size: Any = "auto"
    limit: int | None = None
    gen_kwargs: str | None = None
    apply_chat_template: bool = True
    seed: int = 1234
    aime24_path: str | None = None
    math500_path: str | None = None
    gpqa_path: str | None = None
    n_boot: int = 10000
    boot_seed: int = 0

    def __post_init__(self):
        tasks = (self.tasks,) if isinstance(self.tasks, str) else tuple(self.tasks)
        object.__setattr__(self, "tasks", tasks)
        if not tasks:
            raise ValueError(f"tasks is empty; name one or more of {list(TASK_NAMES)}.")
        if self.features is None or str(self.features).strip() == "":
            raise ValueError("features is empty: the table compares a steered model with the "
                             "unsteered one; set features (the paper's: 46379).")
        if self.sae is None and not (self.sae_release and self.sae_id):
            raise ValueError("no SAE: set sae (a SAELens directory) or sae_release and sae_id.")
        if self.limit is not None and int(self.limit) < 1:
            raise ValueError(f"limit={self.limit!r} must be at least 1, or None for all.")
        if int(self.n_boot) < 1:
            raise ValueError(f"n_boot={self.n_boot!r} must be at least 1.")

    @classmethod
    def reference(cls) -> PaperTableConfig:
        """The paper's run (AIRI-Institute/SAE-Reasoning, evaluation/evaluation.sh)."""
        return cls()

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PaperTableConfig:
        """Build from a mapping (a profile); an unknown key is an error listing the valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ValueError(f"unknown paper-table setting(s) {unknown}; valid ones: {valid}.")
        return cls(**values)

    def steer_args(self) -> dict[str, Any]:
        """``SteeredHFLM``'s steering model args (those set)."""
        return {k: getattr(self, k) for k in STEER_FIELDS if getattr(self, k) is not None}

    def task_args(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in ("aime24_path", "math500_path", "gpqa_path")
                if getattr(self, k)}


def read_samples(output_path: str | Path, task: str) -> pd.DataFrame:
    """lm-eval's per-sample log of one task under ``output_path`` (the newest), one row per doc.

    Returns:
        doc_id, accuracy, exact_match, reasoning_length, unclosed_think, n_tokens (NaN where the
        log lacks a metric), sorted by doc_id.

    Raises:
        FileNotFoundError: no log for the task.
    """
    files = sorted(Path(output_path).rglob(f"samples_{task}_*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no per-sample log samples_{task}_*.jsonl under {output_path}; "
                                "run the harness with log_samples (output_path set).")
    rows = [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]
    columns = ("accuracy", "exact_match", "reasoning_length", "unclosed_think", "n_tokens")
    frame = pd.DataFrame([{"doc_id": r["doc_id"], **{c: r.get(c, math.nan) for c in columns}}
                          for r in rows])
    return frame.sort_values("doc_id").reset_index(drop=True)


def _interval(values, n_boot: int, seed: int) -> list[float]:
    return list(evaluation.bootstrap_interval(values, n_boot, seed))


def summarize(samples: Mapping[str, Mapping[str, pd.DataFrame]], n_boot: int = 10000,
              seed: int = 0) -> dict[str, Any]:
    """Per task: each model's accuracy and reasoning length with 95% bootstrap intervals over
    samples, its unclosed-``</think>`` share, and the paired steered-minus-unsteered differences.

    Args:
        samples: condition (``unsteered``, ``steered``) -> task -> ``read_samples`` frame.
        n_boot, seed: bootstrap settings.

    Returns:
        ``{"tasks": {task: {"n", "unsteered", "steered", "difference"}}, "mean_over_tasks"}``;
        each statistic is ``[value, ci_low, ci_high]``; accuracy is a share (0-1); the
        difference also gives the length change in percent of the unsteered mean.

    Raises:
        ValueError: a condition missing, or the two models scored on different documents.
    """
    missing = [c for c in CONDITIONS if c not in samples]
    if missing:
        raise ValueError(f"samples lacks {missing}; it needs both {list(CONDITIONS)}.")
    out: dict[str, Any] = {"tasks": {}}
    for task in samples["unsteered"]:
        base, steered = samples["unsteered"][task], samples["steered"].get(task)
        if steered is None or list(base.doc_id) != list(steered.doc_id):
            raise ValueError(f"task {task!r}: the steered and unsteered runs cover different "
                             "documents; differences must be paired (same limit and files).")
        entry: dict[str, Any] = {"n": len(base)}
        for name, frame in (("unsteered", base), ("steered", steered)):
            entry[name] = {"accuracy": _interval(frame.accuracy, n_boot, seed),
                           "reasoning_length": _interval(frame.reasoning_length, n_boot, seed),
                           "unclosed_think": float(frame.unclosed_think.mean())}
        acc = evaluation.paired_bootstrap_difference(steered.accuracy, base.accuracy, n_boot, seed)
        length = evaluation.paired_bootstrap_difference(steered.reasoning_length,
                                                        base.reasoning_length, n_boot, seed)
        base_length = float(base.reasoning_length.mean())
        entry["difference"] = {
            "accuracy_points": [100 * v for v in acc],
            "reasoning_length": list(length),
            "reasoning_length_percent": ([100 * v / base_length for v in length]
                                         if base_length > 0 else [math.nan] * 3)}
        out["tasks"][task] = entry
    diffs = [e["difference"] for e in out["tasks"].values()]
    out["mean_over_tasks"] = {
        "accuracy_change_points": float(np.mean([d["accuracy_points"][0] for d in diffs])),
        "length_change_percent": float(np.mean([d["reasoning_length_percent"][0]
                                                for d in diffs]))}
    return out


def _fmt(values, scale: float = 1.0, digits: int = 1, signed: bool = False) -> str:
    if values is None:
        return "n/a"
    if not isinstance(values, (list, tuple)):
        values = [values]
    if any(v is None or not math.isfinite(v) for v in values):
        return "n/a"
    sign = "+" if signed else ""
    v = [x * scale for x in values]
    text = f"{v[0]:{sign}.{digits}f}"
    return text + (f" [{v[1]:{sign}.{digits}f}, {v[2]:{sign}.{digits}f}]" if len(v) == 3 else "")


def to_markdown(table: Mapping[str, Any]) -> str:
    """The table as Markdown: ours beside the paper's, per task, then the headline."""
    paper = table["paper"]
    lines = ["# The paper's steering table, reproduced", "",
             f"Model `{table['config']['pretrained']}`, steered: feature(s) "
             f"{table['config']['features']} x{table['config']['strength']} "
             f"(max activation {table['config']['max_activations']}, site "
             f"`{table['config']['site']}`, units `{table['config']['units']}`). Accuracy in %, "
             "reasoning length in tokens before `</think>`; 95% percentile-bootstrap intervals "
             "over samples; differences are steered minus unsteered, paired by problem.", "",
             "| task | n | model | accuracy (%) | paper accuracy (%) | reasoning length | "
             "paper length | unclosed `</think>` (%) |",
             "|---|---|---|---|---|---|---|---|"]
    for task, entry in table["ours"]["tasks"].items():
        label = TASK_LABELS.get(task, task)
        ref = paper["tasks"].get(task, {})
        for name in CONDITIONS:
            ours, theirs = entry[name], ref.get(name, {})
            lines.append(f"| {label} | {entry['n']} | {name} | {_fmt(ours['accuracy'], 100)} | "
                         f"{_fmt(theirs.get('accuracy'))} | "
                         f"{_fmt(ours['reasoning_length'], digits=0)} | "
                         f"{_fmt(theirs.get('reasoning_length'), digits=0)} | "
                         f"{_fmt(ours['unclosed_think'], 100)} |")
        d = entry["difference"]
        lines.append(f"| {label} | {entry['n']} | steered - unsteered | "
                     f"{_fmt(d['accuracy_points'], signed=True)} points | | "
                     f"{_fmt(d['reasoning_length'], digits=0, signed=True)} "
                     f"({_fmt(d['reasoning_length_percent'], signed=True)}%) | | |")
    mean, head = table["ours"]["mean_over_tasks"], paper["headline"]
    lines += ["", "| headline (mean over tasks) | ours | paper |", "|---|---|---|",
              f"| accuracy change (points) | {_fmt(mean['accuracy_change_points'], signed=True)} "
              f"| {_fmt(head['accuracy_change_points'], signed=True)} |",
              f"| length change (%) | {_fmt(mean['length_change_percent'], signed=True)} | "
              f"{_fmt(head['length_change_percent'], signed=True)} |", "",
              f"Paper: {paper['source']}. n/a: {paper['note']}.", ""]
    return "\n".join(lines)


def write_table(table: Mapping[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``paper_table.json`` and ``paper_table.md`` (each atomically) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / JSON_NAME, out_dir / MARKDOWN_NAME
    with atomic_path(paths[0]) as tmp:
        tmp.write_text(json.dumps(table, indent=2, default=str))
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(to_markdown(table))
    return paths


def make_paper_table(cfg: PaperTableConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run the unsteered and the steered model on the tasks and write the table.

    lm-eval's results and per-sample logs go to ``out_dir/unsteered`` and ``out_dir/steered``.

    Args:
        cfg: the run.
        out_dir: where the logs and ``paper_table.json``/``.md`` go.

    Returns:
        The table: ``config``, ``ours`` (``summarize``), ``harness`` (each model's aggregate
        metrics as lm-eval reports them) and ``paper``.
    """
    from reasonlens.harness import run_harness

    out_dir = Path(out_dir)
    common = dict(include_path=None, builtin_tasks=False, limit=cfg.limit,
                  batch_size=cfg.batch_size, device=cfg.device, dtype=cfg.dtype,
                  apply_chat_template=cfg.apply_chat_template, gen_kwargs=cfg.gen_kwargs,
                  seed=cfg.seed, task_args=cfg.task_args())
    harness, samples = {}, {}
    for name in CONDITIONS:
        steer = cfg.steer_args() if name == "steered" else {}
        log.info("paper table: the %s model on %s", name, list(cfg.tasks))
        harness[name] = run_harness(cfg.pretrained, cfg.tasks, output_path=out_dir / name,
                                    **common, **steer)
        samples[name] = {task: read_samples(out_dir / name, task) for task in harness[name]}
    table = {"config": cfg.to_dict(), "ours": summarize(samples, cfg.n_boot, cfg.boot_seed),
             "harness": harness, "paper": PAPER}
    write_table(table, out_dir)
    return table


def load_config(profile: str | None, **overrides) -> PaperTableConfig:
    """``PaperTableConfig`` from a profile (``profiles/<name>.yaml`` or a YAML path; None: the
    reference) with ``overrides`` (those not None) on top."""
    from reasonlens.config import load_profile

    values = {}
    if profile is not None:
        values = load_profile(profile)
        values.pop("profile", None)
    values |= {k: v for k, v in overrides.items() if v is not None}
    return PaperTableConfig.from_dict(values)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m reasonlens.paper_table --profile paper-table-r1-llama-8b --out DIR``."""
    parser = argparse.ArgumentParser(prog="python -m reasonlens.paper_table",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=None,
                        help="profiles/<name>.yaml or a YAML path (default: the reference run)")
    parser.add_argument("--out", default="results/paper-table", help="output folder")
    parser.add_argument("--limit", type=int, default=None, help="documents per task")
    parser.add_argument("--gen_kwargs", default=None, help="e.g. max_gen_toks=4096")
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch_size", default=None)
    parser.add_argument("--tasks", default=None, help="comma-separated task names")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    tasks = tuple(args.tasks.split(",")) if args.tasks else None
    cfg = load_config(args.profile, limit=args.limit, gen_kwargs=args.gen_kwargs,
                      device=args.device, batch_size=args.batch_size, tasks=tasks)
    table = make_paper_table(cfg, args.out)
    log.info("wrote %s and %s in %s", JSON_NAME, MARKDOWN_NAME, args.out)
    return table


if __name__ == "__main__":
    main()
