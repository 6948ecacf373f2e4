"""lm-evaluation-harness with SAE feature steering: the real-model evaluation path (notebook 07).

``SteeredHFLM`` is the harness's own ``HFLM`` (a transformers model, batched log-likelihoods and
KV-cached generation) with the interventions of ``reasonlens.steering`` attached to every forward
pass and every ``generate`` call. It is registered as ``reasonlens-steered``. lm-eval 0.4 has no
plugin discovery for models, so the registration happens on import; ``reasonlens-lm-eval`` (or
``python -m reasonlens.harness``) is the ``lm_eval`` command line with it imported and the
package's tasks (``reasonlens.tasks``: ``aime2024_nofigures``, ``math-500``,
``openai_gpqa_diamond``, the reference's names, or all three as ``reasonlens_paper``) on its task
path. The paper's run (the reference's evaluation.sh, with the HF backend instead of vLLM):

    reasonlens-lm-eval --model reasonlens-steered \\
        --model_args pretrained=deepseek-ai/DeepSeek-R1-Distill-Llama-8B,dtype=bfloat16,\\
sae=/path/to/sae,features=46379,strength=2,max_activations=5.840,site=reference,units=raw \\
        --tasks aime2024_nofigures --apply_chat_template --device cuda --batch_size auto \\
        --log_samples --output_path results/aime-46379

The tasks carry the reference's generation settings; ``--gen_kwargs max_gen_toks=...`` overrides
them, and ``cutoff_token`` (the reference's gen_kwarg: ``128014`` or ``</think>``) names the token
that ends the reasoning. Every completion of this model records its token count and its
reasoning length (tokens before the first ``</think>``; all of them when it never came), which
the shipped tasks report as ``reasoning_length``, ``unclosed_think`` and ``n_tokens``.

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
import logging
import math
import os
from collections import defaultdict, deque
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
import yaml
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import postprocess_generated_text
from lm_eval.tasks import TaskManager

from reasonlens import constants as K
from reasonlens import evaluation, steering
from reasonlens.models import HFHookedModel
from reasonlens.world import prompt

MODEL_NAME = "reasonlens-steered"
log = logging.getLogger(__name__)


class Generation(str):
    """A completion as the harness scores it, with the token counts of its generation.

    Attributes:
        n_tokens: tokens generated, up to the stop (without EOS and padding).
        n_reasoning_tokens: of these, the tokens before the first ``</think>`` (all of them when
            it never came), the reference's ``cutoff_token`` length.
        is_think_closed: whether ``</think>`` came.
    """

    def __new__(cls, text: str = "", n_tokens: int = 0, n_reasoning_tokens: int = 0,
                is_think_closed: bool = False):
        self = super().__new__(cls, text)
        self.n_tokens, self.n_reasoning_tokens = n_tokens, n_reasoning_tokens
        self.is_think_closed = is_think_closed
        return self


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
        # HFLM strips the reasoning at an integer think_end_token by ids, at a string one in the
        # decoded text, where a special </think> is no longer (decoding skips special tokens):
        # a string that is one token becomes its id, so both spellings work.
        if isinstance(self.think_end_token, str):
            ids = evaluation.think_end_ids(self.tokenizer, self.think_end_token)
            if len(ids) == 1:
                self.think_end_token = ids[0]
        self.reasoning_end = (self.think_end_token if self.think_end_token is not None
                              else K.THINK_CLOSE)
        self._recorded = None
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

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        cutoff = generation_kwargs.pop("cutoff_token", None)
        with self._steered():
            out = super()._model_generate(context, max_length, stop, **generation_kwargs)
        if self._recorded is not None:
            self._record(out[:, context.shape[1]:].tolist(), stop, cutoff)
        return out

    def _record(self, rows: list[list[int]], stop: list[str], cutoff) -> None:
        """Keep each row's token counts under the text ``HFLM.generate_until`` makes of it."""
        end = self.reasoning_end if cutoff is None else cutoff
        close = evaluation.think_end_ids(self.tokenizer, end)
        eos, pad = self.eot_token_id, self.tokenizer.pad_token_id
        for row in rows:
            ids = row[:row.index(eos)] if eos in row else list(row)
            while ids and ids[-1] == pad:
                ids.pop()
            n_reasoning = evaluation.reasoning_length(ids, self.tokenizer,
                                                      close[0] if len(close) == 1 else end)
            # the text as HFLM.generate_until (lm-eval 0.4.13) turns the row into it
            cont = row
            if isinstance(self.think_end_token, int) and self.think_end_token in cont:
                cont = cont[len(cont) - cont[::-1].index(self.think_end_token):]
            text = self.tok_decode(cont)
            if isinstance(self.think_end_token, int):
                text = text.lstrip()
            text = postprocess_generated_text(
                text, stop, self.think_end_token if isinstance(self.think_end_token, str) else None)
            self._recorded[text].append((len(ids), n_reasoning, n_reasoning < len(ids)))

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """HFLM's generations, each a ``Generation`` that carries its token counts."""
        self._recorded = defaultdict(deque)
        try:
            texts = super().generate_until(requests, disable_tqdm=disable_tqdm)
            out = []
            for text in texts:
                queue = self._recorded.get(text)
                out.append(Generation(text, *queue.popleft()) if queue else text)
        finally:
            self._recorded = None
        if any(not isinstance(t, Generation) for t in out):
            log.warning("%d of %d completions have no recorded token counts (cached answers?).",
                        sum(not isinstance(t, Generation) for t in out), len(out))
        return out


def world_task(problems: pd.DataFrame, directory: str | Path, name: str = "reasonlens_world",
               max_gen_toks: int = 160, tokenizer=None) -> Path:
    """Write a generate-until harness task over synthetic-world problems.

    Each document is a problem's reasoning prompt, written in ``tokenizer``'s chat template when it
    has one (``world.prompt``; run such a task with ``apply_chat_template=False``, the template is
    already applied), else in the toy's markers; the target is its answer; the score is exact
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
    docs.write_text("".join(json.dumps({"prompt": prompt(q, reasoning=True, tokenizer=tokenizer),
                                        "answer": str(a)}) + "\n"
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


def _task_paths(include_path) -> list[str]:
    """The package's task folder, then the caller's (one path, a list, or paths joined by the
    platform's path separator)."""
    from reasonlens.tasks import TASKS_DIR

    if include_path is None or include_path == "":
        extra = []
    elif isinstance(include_path, (list, tuple)):
        extra = [str(p) for p in include_path]
    else:
        extra = [p for p in str(include_path).split(os.pathsep) if p]
    return [str(TASKS_DIR), *extra]


def has_chat_template(pretrained) -> bool:
    """Whether the tokenizer at ``pretrained`` has a chat template."""
    from transformers import AutoTokenizer

    return bool(getattr(AutoTokenizer.from_pretrained(str(pretrained)), "chat_template", None))


def run_harness(pretrained, tasks: Sequence[str], include_path=None, builtin_tasks: bool = True,
                limit: int | None = None, batch_size: int = 16, device: str = "cpu",
                dtype: str = "float32", apply_chat_template: bool | None = None,
                gen_kwargs: str | dict | None = None, seed: int = 1234,
                task_args: dict | None = None, output_path=None,
                **steer) -> dict[str, dict[str, float]]:
    """Evaluate ``reasonlens-steered`` on harness tasks (``lm_eval.simple_evaluate``).

    The package's tasks (``aime2024_nofigures``, ``math-500``, ``openai_gpqa_diamond``) are always
    found; their generation settings are the reference's unless ``gen_kwargs`` overrides them.

    Args:
        pretrained: a transformers model path or hub id.
        tasks: harness task names (e.g. ``math-500``, or ``world_task``'s).
        include_path: a directory (or several) of extra task YAMLs.
        builtin_tasks: also index the harness's own tasks (about 15 s; not needed for the
            package's tasks or ``world_task``'s).
        limit: documents per task (all when None).
        batch_size, device, dtype: as for ``lm_eval``.
        apply_chat_template: wrap each prompt in the model's chat template, as the reference's
            ``--apply_chat_template``; None (default): when the tokenizer has one (real models),
            not for the toy, whose world prompts spell the format out.
        gen_kwargs: overrides of the tasks' generation settings (``"max_gen_toks=512"`` or a
            dict), e.g. ``cutoff_token``.
        seed: the sampling seed (torch's; the reference's vLLM seed is 1234).
        task_args: task arguments (lm-eval's ``--metadata``), e.g. ``{"aime24_path": ...}``.
        output_path: when given, lm-eval's results JSON and per-sample logs are written there.
        **steer: ``SteeredHFLM``'s steering args (``sae``, ``features``, ``strength``, ...);
            none for the unsteered model.

    Returns:
        task -> metric -> value (numbers only, as the harness reports them, e.g.
        ``"accuracy,none"``, ``"reasoning_length,none"``).
    """
    from lm_eval import simple_evaluate

    if apply_chat_template is None:
        apply_chat_template = has_chat_template(pretrained)
    model_args = {"pretrained": str(pretrained), "dtype": dtype, **steer}
    manager = TaskManager(include_path=_task_paths(include_path), include_defaults=builtin_tasks,
                          metadata={**model_args, **(task_args or {})})
    out = simple_evaluate(model=MODEL_NAME, model_args=model_args, tasks=list(tasks),
                          task_manager=manager, limit=limit, batch_size=batch_size, device=device,
                          apply_chat_template=apply_chat_template, gen_kwargs=gen_kwargs,
                          torch_random_seed=seed, log_samples=output_path is not None)
    if output_path is not None:
        from lm_eval.loggers import EvaluationTracker

        tracker = EvaluationTracker(output_path=str(output_path))
        samples = out.pop("samples")
        tracker.save_results_aggregated(results=out, samples=samples)
        for task in out["configs"]:
            tracker.save_results_samples(task_name=task, samples=samples[task])
    return {task: {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            for task, metrics in out["results"].items()}


# the shipped tasks' metrics a summary shows (lm-eval's "<metric>,<filter>" keys)
SUMMARY_METRICS = ("accuracy,none", "exact_match,none", "reasoning_length,none",
                   "unclosed_think,none")


def results_table(results: dict[str, dict[str, dict[str, float]]],
                  metrics: Sequence[str] = SUMMARY_METRICS) -> pd.DataFrame:
    """``run_harness`` results of several models side by side (notebook 07).

    Args:
        results: condition (e.g. ``unsteered``) -> ``run_harness``'s task -> metric -> value.
        metrics: the metric keys to show, those a task reports.

    Returns:
        One row per ``"<task>: <metric>"`` (the filter dropped), one column per condition.
    """
    rows: dict[str, dict[str, float]] = {}
    for condition, by_task in results.items():
        for task, values in by_task.items():
            for key in metrics:
                if key in values:
                    rows.setdefault(f"{task}: {key.split(',')[0]}", {})[condition] = values[key]
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(results))


class ShippedTaskManager(TaskManager):
    """lm-eval's ``TaskManager`` with the package's tasks on its path, before any other."""

    def __init__(self, verbosity=None, include_path=None, *args, **kwargs):
        super().__init__(verbosity, _task_paths(include_path), *args, **kwargs)


def main() -> None:
    """``lm_eval``'s command line with ``reasonlens-steered`` registered and the package's tasks
    (``reasonlens.tasks``) found without ``--include_path``; an ``--include_path`` given adds its
    folders (several joined by the path separator, ``:``) to them."""
    import lm_eval.tasks
    from lm_eval.__main__ import cli_evaluate

    # the CLI builds its TaskManager from lm_eval.tasks at run time (lm_eval/config/
    # evaluate_config.py, process_tasks); it takes one include path, so ours is added here
    lm_eval.tasks.TaskManager = ShippedTaskManager
    cli_evaluate()


if __name__ == "__main__":
    main()
