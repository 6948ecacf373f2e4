"""lm-evaluation-harness with SAE feature steering: the real-model evaluation path (notebook 07).

``SteeredHFLM`` is the harness's own ``HFLM`` (a transformers model, batched log-likelihoods and
KV-cached generation) with the interventions of ``reasonlens.steering`` attached to every forward
pass and every ``generate`` call. It is registered as ``reasonlens-steered``. lm-eval 0.4 has no
plugin discovery for models, so the registration happens on import; ``reasonlens-lm-eval`` (or
``python -m reasonlens.harness``) is the ``lm_eval`` command line with it imported:

    reasonlens-lm-eval --model reasonlens-steered \\
        --model_args pretrained=deepseek-ai/DeepSeek-R1-Distill-Llama-8B,sae=/path/to/sae,\\
features=46379,strength=2,max_activations=/path/to/reason_scores.parquet \\
        --tasks aime24,math_500,gpqa_diamond_zeroshot --device cuda

Model args (besides HFLM's): ``sae`` (a SAELens directory) or ``sae_release`` + ``sae_id``;
``features`` (``46379`` or ``1;2;3``, semicolons because the harness splits model_args on commas);
``strength`` (one for all features, or one per feature: ``2;1.5``); ``mode`` (``clamp``,
``direction``, ``add``); ``max_activations`` (a Parquet with ``feature_idx`` and ``max_activation``,
as notebook 04 writes, or numbers per feature: ``3.1;2.4``); ``site`` (``resid_post``, the SAE's own
hook point, or ``reference``, the MLP output of its layer, where the authors' vLLM evaluation
steered); ``units`` (``folded``, ReasonScore's units, or ``raw``, the SAE's own activation as the
reference's ``sae_max_activation=5.840`` is). The authors' evaluation intervention is
``features=46379,strength=2,max_activations=5.840,site=reference,units=raw``; see
``reasonlens.steering``. Without ``features`` it is plain HFLM.

``world_task`` writes a harness task (YAML + JSONL) from the synthetic world's problems, so the
same command evaluates the toy model.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
import yaml
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from reasonlens import steering
from reasonlens.models import HFHookedModel
from reasonlens.world import prompt

MODEL_NAME = "reasonlens-steered"


def _numbers(value, name: str, cast=float) -> list:
    """``2``, ``"2"`` or ``"2;1.5"`` as a list of numbers (the harness's model_args are strings)."""
    if isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value] if isinstance(value, (int, float)) else str(value).split(";")
    try:
        return [cast(p) for p in parts if str(p).strip() != ""]
    except ValueError:
        raise ValueError(f"{name}={value!r} must be a number or numbers separated by ';' "
                         f"(e.g. {name}=1;2).") from None


def max_activation_vector(value, features: Sequence[int], d_sae: int) -> torch.Tensor:
    """``[d_sae]`` max activations from a scores Parquet or from numbers given per feature.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a file without the columns, or a count of numbers that is not one per feature.
    """
    outside = [f for f in features if not 0 <= f < d_sae]
    if outside:
        raise ValueError(f"feature_idx={outside} is outside the SAE (d_sae={d_sae}).")
    out = torch.full((d_sae,), math.nan)
    try:
        values = _numbers(value, "max_activations")
    except ValueError:
        path = Path(value)
        if not path.exists():
            raise FileNotFoundError(f"max_activations={value!r} does not exist; pass notebook 04's "
                                    "scores/reason_scores.parquet or numbers per feature.") from None
        frame = pd.read_parquet(path)
        if not {"feature_idx", "max_activation"} <= set(frame.columns):
            raise ValueError(f"max_activations={value!r} needs columns feature_idx and "
                             f"max_activation; it has {list(frame.columns)}.") from None
        out[torch.tensor(frame.feature_idx.to_list())] = torch.tensor(
            frame.max_activation.to_list(), dtype=torch.float32)
        return out
    if len(values) != len(features):
        raise ValueError(f"max_activations has {len(values)} numbers for {len(features)} features;"
                         " give one per feature, in the order of features.")
    out[torch.as_tensor(features)] = torch.tensor(values)
    return out


@register_model(MODEL_NAME)
class SteeredHFLM(HFLM):
    """HFLM whose forward passes and generations run with SAE features steered.

    The steering request is checked (feature range, finite strengths, SAE width, hook point)
    when the model is built, before any request is evaluated.
    """

    def __init__(self, pretrained, sae: str | None = None, sae_release: str | None = None,
                 sae_id: str | None = None, features=None, strength=2.0, mode: str = "clamp",
                 max_activations=None, site: str = "resid_post", units: str = "folded",
                 **kwargs):
        super().__init__(pretrained=pretrained, **kwargs)
        self.steering = None
        if features is None or str(features).strip() == "":
            return
        from reasonlens.sae import load_pretrained_sae, load_sae

        if sae is not None:
            self.sae = load_sae(sae, device=str(self.device))
        elif sae_release is not None and sae_id is not None:
            self.sae = load_pretrained_sae(sae_release, sae_id, device=str(self.device))
        else:
            raise ValueError("features are given but no SAE: pass sae=<SAELens directory> or "
                             "sae_release=<release>,sae_id=<id> in model_args.")
        idx = _numbers(features, "features", int)
        strengths = _numbers(strength, "strength")
        if len(strengths) == 1:
            strengths *= len(idx)
        if len(strengths) != len(idx):
            raise ValueError(f"strength has {len(strengths)} values for {len(idx)} features; "
                             "give one, or one per feature.")
        maxima = (max_activation_vector(max_activations, idx, self.sae.cfg.d_sae)
                  if max_activations is not None else None)
        self.hooked = HFHookedModel(self.model, self.tokenizer)
        self.steering = dict(sae=self.sae, features=dict(zip(idx, strengths)), mode=mode,
                             max_activations=maxima, site=site, units=units)
        steering.check_steering(self.hooked, **self.steering)
        if maxima is not None and not torch.isfinite(maxima[torch.as_tensor(idx)]).all():
            raise ValueError(f"max_activations has no value for some of features={idx}.")

    def _steered(self):
        if self.steering is None:
            return contextlib.nullcontext()
        return steering.steer(self.hooked, **self.steering)

    def _model_call(self, *args, **kwargs):
        with self._steered():
            return super()._model_call(*args, **kwargs)

    def _model_generate(self, *args, **kwargs):
        with self._steered():
            return super()._model_generate(*args, **kwargs)


def world_task(problems: pd.DataFrame, directory: str | Path, name: str = "reasonlens_world",
               max_gen_toks: int = 160) -> Path:
    """Write a generate-until harness task over synthetic-world problems.

    Each document is a problem's reasoning prompt; the target is its answer; the score is exact
    match of the last "answer is N" in the completion, as ``evaluation.parse_answer`` reads it.

    Args:
        problems: rows with ``question`` and ``answer`` (e.g. the test split).
        directory: where the task's YAML and JSONL go (pass it as ``--include_path``).
        name: the task name.
        max_gen_toks: generation budget.

    Returns:
        The YAML path.

    Raises:
        ValueError: no problems.
    """
    if len(problems) == 0:
        raise ValueError("problems is empty: the task would have no documents.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    docs = directory / f"{name}.jsonl"
    docs.write_text("".join(json.dumps({"prompt": prompt(q, reasoning=True), "answer": str(a)}) + "\n"
                            for q, a in zip(problems.question, problems.answer)))
    spec = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(docs.resolve())}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": ["<eos>"], "do_sample": False,
                              "max_gen_toks": max_gen_toks},
        "filter_list": [{"name": "answer", "filter": [
            {"function": "regex", "regex_pattern": r"^[\s\S]*answer is (-?\d+)"},
            {"function": "take_first"}]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1},
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_harness(pretrained, tasks: Sequence[str], include_path=None, builtin_tasks: bool = True,
                limit: int | None = None, batch_size: int = 16, device: str = "cpu",
                dtype: str = "float32", **steer) -> dict[str, dict[str, float]]:
    """Evaluate ``reasonlens-steered`` on harness tasks (``lm_eval.simple_evaluate``).

    Args:
        pretrained: a transformers model path or hub id.
        tasks: harness task names (e.g. ``aime24``, or ``world_task``'s).
        include_path: a directory of extra task YAMLs.
        builtin_tasks: also index the harness's own tasks (about 15 s; not needed for
            ``world_task``'s).
        limit: documents per task (all when None).
        batch_size, device, dtype: as for ``lm_eval``.
        **steer: ``SteeredHFLM``'s steering args (``sae``, ``features``, ``strength``, ...);
            none for the unsteered model.

    Returns:
        task -> metric -> value (numbers only, as the harness reports them).
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include_path) if include_path else None,
                          include_defaults=builtin_tasks)
    out = simple_evaluate(model=MODEL_NAME, model_args={"pretrained": str(pretrained),
                                                        "dtype": dtype, **steer},
                          tasks=list(tasks), task_manager=manager, limit=limit,
                          batch_size=batch_size, device=device)
    return {task: {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            for task, metrics in out["results"].items()}


def main() -> None:
    """``lm_eval``'s command line with ``reasonlens-steered`` registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
