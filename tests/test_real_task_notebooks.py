"""Notebooks 06 and 07 on a real-model profile: problems from the paper's lm-eval tasks.

A temporary profile runs the real-model path (``model_name``, OpenThoughts/LMSYS-shaped local
sources) on the toy checkpoint from notebook 01 to 07, with tiny local task files (the test_tasks
fixtures' documents, with the real datasets' field names). The run has no synthetic world, so 06
and 07 must take their problems from the tasks, and skip the world-only sections with a reason.
"""

from __future__ import annotations

import json

import pytest
from helpers import write_tiny_real_sources

from reasonlens import artifacts, runner
from reasonlens import constants as K
from test_tasks import AIME, GPQA, MATH

pytestmark = pytest.mark.slow

SMOKE_BUDGETS = {
    "n_reasoning": 30, "n_chat": 30, "context_size": 32,
    # an L1 weight far below the default keeps the SAE's features alive on a few thousand tokens
    "hook_name": "blocks.1.hook_resid_post", "expansion_factor": 4, "training_tokens": 4096,
    "l1_coefficient": 0.01,
    "sae_batch_size": 256, "sae_lr_decay_steps": 0, "n_checkpoints": 1, "n_eval_contexts": 4,
    "n_score_contexts": 16, "top_k": 5, "n_top_activations": 5, "n_dashboard_features": 2,
    "dash_minibatch_size_tokens": 4, "explorer_n_contexts": 2, "n_static_features": 1,
    "feature_map_method": "pca", "n_prompts": 4, "compare_scorings": False,
    "n_steer_features": 1, "steer_strengths": [2.0], "n_steer_prompts": 2,
    "steer_max_new_tokens": 8, "n_side_by_side": 1, "n_site_contexts": 4, "n_eval_features": 1,
    "eval_strengths": [2.0], "eval_strength": 2.0, "n_eval_problems": 2, "n_site_problems": 2,
    "control_exclude_top": 1, "eval_max_new_tokens": 8, "eval_batch_size": 8, "n_boot": 50,
    "n_lm_eval": 2, "lm_eval_gen_kwargs": "max_gen_toks=8,do_sample=False",
}


def test_notebooks_06_and_07_take_their_problems_from_the_real_tasks(tmp_path, monkeypatch,
                                                                      saved_toy_model):
    write_tiny_real_sources(tmp_path)
    for name, rows in (("aime", AIME), ("math", MATH), ("gpqa", GPQA)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    profile = tmp_path / "realtasks.yaml"
    profile.write_text(json.dumps({
        "data_source": "openthoughts_lmsys", "model_name": str(saved_toy_model),
        "openthoughts_source": str(tmp_path / "ot.jsonl"),
        "lmsys_source": str(tmp_path / "chat.jsonl"), **SMOKE_BUDGETS,
        "steer_task": "math-500", "lm_eval_tasks": ["math-500", "openai_gpqa_diamond"],
        "aime24_path": str(tmp_path / "aime.jsonl"), "math500_path": str(tmp_path / "math.jsonl"),
        "gpqa_path": str(tmp_path / "gpqa.jsonl")}))
    monkeypatch.setenv("REASONLENS_HOME", str(tmp_path / "home"))
    report = runner.run(str(profile), start="01", stop="07", build=False)
    assert report.ran[-2:] == ["06_steering", "07_evaluation"]
    run = artifacts.RunDir("realtasks", root=tmp_path / "home" / "data" / "runs" / "realtasks")
    assert not run.path(K.PROBLEMS).exists()  # no world: the problems came from the tasks

    steered = run.read_parquet(K.STEERED_COMPLETIONS)
    assert set(steered.task) == {"math-500"} and sorted(set(steered.prompt_idx)) == [0, 1]
    assert steered.condition.iloc[0] == "unsteered" and len(set(steered.condition)) == 2
    assert {"is_correct", "reasoning_tokens", "unclosed_think"} <= set(steered.columns)

    conditions = run.read_parquet(K.EVAL_CONDITIONS)
    assert conditions.condition.iloc[0] == "unsteered"
    for column in ("is_correct_low", "is_correct_diff_high", "reasoning_tokens_diff_low"):
        assert conditions[column].notna().all()
    completions = run.read_parquet(K.EVAL_COMPLETIONS)
    assert completions.groupby("task").prompt_idx.nunique().to_dict() == {
        "math-500": 2, "openai_gpqa_diamond": 2}
    harness = run.read_json(K.HARNESS_RESULTS)
    assert len(harness) == 2 and "unsteered" in harness  # and the steered model
    rows = set(next(iter(harness.values())))
    assert {"math-500: accuracy", "openai_gpqa_diamond: reasoning_length",
            "math-500: unclosed_think"} <= rows
    assert run.read_parquet(K.EVAL_SITES).condition.iloc[0] == "unsteered"
    # world-only sections were skipped, with their reason in the executed notebook
    assert not run.path(K.INJECTION).exists() and not run.path(K.MODEL_DIFF).exists()
    executed = (tmp_path / "home" / "build" / "realtasks" / "notebooks"
                / "07_evaluation.ipynb").read_text()
    assert "Skipped: the injection control needs" in executed
    assert "Skipped: this run has no base model" in executed
    figures = tmp_path / "home" / "figures" / "realtasks"
    for name in ("06_word_rates", "07_strength_sweep", "07_controls"):
        assert (figures / f"{name}.png").is_file()
