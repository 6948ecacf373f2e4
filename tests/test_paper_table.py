"""reasonlens.paper_table: the paper's steering table, unit tests and the one command end to end.

The end-to-end test runs ``python -m reasonlens.paper_table`` on the toy checkpoint (with an
R1-style chat template), a random SAE and tiny local task files (test_tasks' fixtures) with a small
token budget, and checks the JSON and Markdown against lm-eval's own per-sample logs.
"""

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from reasonlens import evaluation, paper_table
from reasonlens.sae import save_sae
from reasonlens.tasks import TASK_NAMES
from test_tasks import FEATURE, MAX_ACT, STRENGTH, chat_model, task_files  # noqa: F401 (fixtures)


def _samples(accuracy, lengths, unclosed=None):
    n = len(accuracy)
    return pd.DataFrame({"doc_id": range(n), "accuracy": accuracy, "exact_match": accuracy,
                         "reasoning_length": lengths,
                         "unclosed_think": unclosed if unclosed is not None else [0.0] * n,
                         "n_tokens": lengths})


def test_the_reference_config_is_the_authors_steering():
    cfg = paper_table.PaperTableConfig.reference()
    assert (cfg.features, cfg.strength, cfg.max_activations, cfg.site, cfg.units, cfg.mode) == (
        46379, 2.0, 5.840, "reference", "raw", "clamp")
    assert cfg.pretrained == "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
    assert cfg.tasks == TASK_NAMES and cfg.seed == 1234 and cfg.gen_kwargs is None
    assert cfg.apply_chat_template and cfg.limit is None
    assert paper_table.PaperTableConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.steer_args()["sae_id"] == "blocks.19.hook_resid_post"
    # the shipped profile is the reference
    assert paper_table.load_config("paper-table-r1-llama-8b") == cfg


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match=r"unknown paper-table setting\(s\) \['strenght'\]"):
        paper_table.PaperTableConfig.from_dict({"strenght": 2})
    with pytest.raises(ValueError, match="features is empty"):
        paper_table.PaperTableConfig(features="")
    with pytest.raises(ValueError, match="no SAE"):
        paper_table.PaperTableConfig(sae_release=None)
    with pytest.raises(ValueError, match="limit=0"):
        paper_table.PaperTableConfig(limit=0)


def test_summarize_gives_intervals_and_paired_differences():
    base = _samples([1, 0, 0, 1], [100, 200, 300, 400], [0, 0, 1, 0])
    steered = _samples([1, 1, 0, 1], [150, 220, 330, 500])
    out = paper_table.summarize({"unsteered": {"math-500": base},
                                 "steered": {"math-500": steered}}, n_boot=500, seed=1)
    entry = out["tasks"]["math-500"]
    assert entry["n"] == 4
    assert entry["unsteered"]["accuracy"] == list(evaluation.bootstrap_interval(
        base.accuracy, 500, 1))
    assert entry["unsteered"]["unclosed_think"] == 0.25
    assert entry["steered"]["reasoning_length"][0] == 300.0
    diff = entry["difference"]
    assert diff["accuracy_points"][0] == pytest.approx(25.0)
    assert diff["reasoning_length"] == list(evaluation.paired_bootstrap_difference(
        steered.reasoning_length, base.reasoning_length, 500, 1))
    assert diff["reasoning_length_percent"][0] == pytest.approx(100 * 50 / 250)
    low, high = diff["accuracy_points"][1:]
    assert low <= 25.0 <= high
    assert out["mean_over_tasks"] == {"accuracy_change_points": pytest.approx(25.0),
                                      "length_change_percent": pytest.approx(20.0)}


def test_summarize_refuses_unpaired_runs():
    base = _samples([1, 0], [1, 2])
    with pytest.raises(ValueError, match="cover different documents"):
        paper_table.summarize({"unsteered": {"t": base}, "steered": {"t": base.head(1)}})
    with pytest.raises(ValueError, match=r"samples lacks \['steered'\]"):
        paper_table.summarize({"unsteered": {"t": base}})


def test_markdown_shows_ours_beside_the_paper_and_says_what_is_missing():
    base, steered = _samples([1, 0], [10, 20]), _samples([1, 1], [12, 30])
    table = {"config": paper_table.PaperTableConfig().to_dict(),
             "ours": paper_table.summarize({"unsteered": {"math-500": base},
                                            "steered": {"math-500": steered}}, n_boot=50),
             "paper": paper_table.PAPER}
    text = paper_table.to_markdown(table)
    assert "| MATH-500 | 2 | unsteered | 50.0 [" in text
    assert "| MATH-500 | 2 | steered - unsteered | +50.0 [" in text
    assert "+6 [" in text and "(+40.0 [" in text  # length: +6 tokens, +40% of 15
    assert "| accuracy change (points) | +50.0 | +2.2 |" in text
    assert "| length change (%) | +40.0 | +20.5 |" in text
    assert "n/a" in text and "not available here" in text  # per-task paper numbers unknown
    assert "feature(s) 46379 x2.0" in text and "`reference`" in text


def test_read_samples_reads_lm_evals_log(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    rows = [{"doc_id": 1, "accuracy": 0.0, "reasoning_length": 5.0, "unclosed_think": 1.0},
            {"doc_id": 0, "accuracy": 1.0, "reasoning_length": 3.0, "unclosed_think": 0.0}]
    (folder / "samples_math-500_2026.jsonl").write_text("".join(json.dumps(r) + "\n"
                                                                for r in rows))
    frame = paper_table.read_samples(tmp_path, "math-500")
    assert frame.doc_id.tolist() == [0, 1] and frame.accuracy.tolist() == [1.0, 0.0]
    assert math.isnan(frame.exact_match[0])
    with pytest.raises(FileNotFoundError, match="samples_aime2024_nofigures_"):
        paper_table.read_samples(tmp_path, "aime2024_nofigures")


@pytest.mark.slow
def test_the_one_command_writes_the_table_on_the_toy_checkpoint(
        tmp_path, chat_model, sae, task_files):  # noqa: F811 (test_tasks fixtures)
    profile = tmp_path / "table.yaml"
    profile.write_text(yaml.safe_dump({
        "pretrained": str(chat_model), "sae": str(save_sae(sae, tmp_path / "sae")),
        "sae_release": None, "sae_id": None, "features": FEATURE, "strength": STRENGTH,
        "max_activations": MAX_ACT, "site": "resid_post", "units": "folded",
        "device": "cpu", "dtype": "float32", "batch_size": 3, "n_boot": 200,
        "aime24_path": task_files["REASONLENS_AIME24_PATH"],
        "math500_path": task_files["REASONLENS_MATH500_PATH"],
        "gpqa_path": task_files["REASONLENS_GPQA_PATH"]}))
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "reasonlens.paper_table", "--profile",
                             str(profile), "--out", str(out), "--limit", "2",
                             "--gen_kwargs", "max_gen_toks=12,do_sample=False"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads((out / "paper_table.json").read_text())
    assert table["config"]["features"] == FEATURE and table["config"]["limit"] == 2
    assert list(table["ours"]["tasks"]) == list(TASK_NAMES)
    for task in TASK_NAMES:
        entry = table["ours"]["tasks"][task]
        assert entry["n"] == 2
        logs = {c: paper_table.read_samples(out / c, task) for c in ("unsteered", "steered")}
        for condition, frame in logs.items():
            # the table's means are lm-eval's, per sample and aggregated
            assert entry[condition]["accuracy"][0] == pytest.approx(frame.accuracy.mean())
            assert entry[condition]["reasoning_length"][0] == pytest.approx(
                frame.reasoning_length.mean())
            assert table["harness"][condition][task]["reasoning_length,none"] == pytest.approx(
                frame.reasoning_length.mean())
            low, high = entry[condition]["reasoning_length"][1:]
            assert low <= frame.reasoning_length.mean() <= high
            assert 0 < frame.reasoning_length.max() <= 12
        assert entry["difference"]["reasoning_length"][0] == pytest.approx(
            np.mean(logs["steered"].reasoning_length - logs["unsteered"].reasoning_length))
    markdown = (out / "paper_table.md").read_text()
    for label in ("AIME-2024", "MATH-500", "GPQA-Diamond"):
        assert f"| {label} | 2 | steered - unsteered |" in markdown
    assert "| accuracy change (points) |" in markdown
