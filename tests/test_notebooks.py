"""Every notebook runs under papermill on the smoke profile, and the book renders them.

The real-model path of notebooks 01-02 runs on a small local Llama checkpoint and tiny local
datasets with the OpenThoughts-114k and LMSYS-Chat-1M schemas (nothing is downloaded).
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from helpers import write_tiny_real_sources

from reasonlens import artifacts, runner
from reasonlens import constants as K
from reasonlens.config import repo_root

pytestmark = pytest.mark.slow
NOTEBOOKS = sorted(p.stem for p in (repo_root() / "notebooks").glob("[0-9][0-9]_*.py"))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REASONLENS_HOME", str(home))
        report = runner.run("smoke")
        yield home, report


def test_every_notebook_runs_on_the_smoke_profile(smoke_run):
    home, report = smoke_run
    assert report.ran == NOTEBOOKS and report.skipped == []
    for name in NOTEBOOKS:
        assert (home / "build" / "smoke" / "notebooks" / f"{name}.ipynb").is_file()
    run = artifacts.RunDir("smoke", root=home / "data" / "runs" / "smoke")
    for name in (K.PROBLEMS, K.STEPS, K.DOCUMENTS, K.REASONING_MODEL_DIR, K.BASE_MODEL_DIR,
                 K.MODEL_EVAL, K.CONTEXTS.format(split="reasoning_train"), K.SAE_DIR, K.SAE_EVAL,
                 K.REASON_SCORES, K.WINDOW_SHARES, K.MAX_ACTIVATIONS, K.FEATURE_MAP,
                 K.DASHBOARDS_DIR, K.STEERED_COMPLETIONS,
                 K.EVAL_COMPLETIONS, K.EVAL_CONDITIONS, K.EVAL_VALIDATION, K.EVAL_HEADLINE,
                 K.MODEL_DIFF, K.INJECTION,
                 K.INJECTION_EFFECTS, K.HARNESS_RESULTS, K.STEP_PROBES,
                 *(name.format(mode=mode) for mode in ("ours", "reference")
                   for name in (K.STEP_SAE_DIR, K.STEP_SAE_HISTORY, K.STEP_SAE_EVAL,
                                K.STEP_PATTERNS, K.STEP_PATTERN_EVAL, K.STEP_VOTING)),
                 K.STEP_LABELS.format(mode="reference")):
        assert run.path(name).exists(), name
        assert run.manifest(name)["profile"] == "smoke"
    steps = run.read_parquet(K.STEPS)
    assert {"n_tokens", "first_token"} <= set(steps.columns)
    evaluation = run.read_json(K.MODEL_EVAL)
    assert evaluation["tl_max_logit_diff"] < 1e-4
    assert {row["model"] for row in evaluation["overall"]} == {"reasoning", "base"}
    from sae_lens import SAE
    sae = SAE.load_from_disk(str(run.path(K.SAE_DIR)))
    scores = run.read_parquet(K.REASON_SCORES)
    assert len(scores) == sae.cfg.d_sae and scores.reason_score.notna().all()
    table = run.read_parquet(K.EVAL_CONDITIONS)
    assert table.condition.iloc[0] == "unsteered" and (table.n == table.n.iloc[0]).all()
    assert {"ablate top 2", "ablate random 2"} <= set(table.condition)
    headline = run.read_json(K.EVAL_HEADLINE)
    top_feature = headline["candidates"]["features"][0]
    sites = run.read_parquet(K.EVAL_SITES)  # the paper's condition (top feature x2), on test
    assert {"unsteered", "resid_post", "reference"} <= set(sites.condition)
    assert (f"f{top_feature} x2" in set(table.condition)) == (  # only if chosen on validation
        (headline["feature_idx"], headline["strength"]) == (top_feature, 2.0))
    diff = run.read_parquet(K.MODEL_DIFF)  # read by the SAE and by its fine-tune on the base
    assert set(diff.basis) == {"transfer", "adapted"}
    assert (diff.decoder_cosine.abs() <= 1 + 1e-6).all()
    assert (diff[diff.basis == "transfer"].decoder_cosine - 1).abs().max() < 1e-6
    assert set(run.manifest(K.MODEL_DIFF)["config"]["sae_reconstruction"]) == {
        "reasoning", "base, transfer", "base, adapted"}
    assert {"feature_idx", "strength", "delta_accuracy", "delta_accuracy_ci", "delta_length_pct",
            "n_problems", "control"} <= set(headline)
    assert headline["strength"] in (-1.0, 2.0) and len(headline["delta_accuracy_ci"]) == 2
    assert headline["chosen_on"].startswith("validation")
    assert {"feature_idx", "delta_accuracy", "delta_accuracy_ci"} <= set(headline["control"])
    step_probes = run.read_parquet(K.STEP_PROBES)
    ours, reference = (step_probes[step_probes.rules == rules] for rules in ("ours", "reference"))
    assert set(ours.features) == {"statistics", "step_sae[ours]", "step_sae[reference]",
                                  "encoder_state[ours]", "encoder_state[reference]", "token_sae"}
    assert set(reference.features) == {"statistics", "step_sae[reference]", "context_only",
                                       "token_sae (context end)", "layer (context end)"}
    for probes in (ours, reference):
        assert set(probes.task) == {"correctness", "length", "first_token"}
    assert {"mse", "perplexity", "accuracy"} <= set(reference.metric)
    for mode in ("ours", "reference"):
        step_voting = run.read_json(K.STEP_VOTING.format(mode=mode))
        assert [row["method"] for row in step_voting["table"]] == ["greedy", "majority",
                                                                   "weighted"]
        assert 0 <= step_voting["sample_accuracy"] <= step_voting["pass_at_k"] <= 1
        low, high = step_voting["weighted_minus_majority_ci"]
        assert low <= step_voting["weighted_minus_majority"] <= high
        assert step_voting["probe_labels"] == ("reference" if mode == "reference" else
                                               "own" if step_voting["other_probes"] else "world")
    assert set(run.read_parquet(K.STEP_PATTERNS.format(mode="ours")).anchor) <= {"end", "start"}
    micro = run.read_parquet(K.STEP_PATTERN_EVAL.format(mode="reference")).query(
        "scope == 'micro'")
    assert len(micro) == 1 and 0 <= micro.f1.iloc[0] <= 1
    labels = run.read_parquet(K.STEP_LABELS.format(mode="reference"))
    assert (labels.labeller == "offline heuristic").all()
    harness_results = run.read_json(K.HARNESS_RESULTS)
    assert harness_results["unsteered"]["ours (same problems)"] == \
        harness_results["unsteered"]["reasonlens_world"]


def test_the_book_shows_each_notebook_with_its_figures(smoke_run):
    home, report = smoke_run
    html_dir = report.book_index.parent
    for name in NOTEBOOKS:
        page = (html_dir / f"{name}.html").read_text()
        assert "<img" in page, f"{name}.html shows no figure"
        assert "Model: toy Llama-style models trained here" in page, f"{name}.html: no banner"
    assert "Held-out accuracy" in (html_dir / "02_model.html").read_text()


def test_notebook_05_writes_max_activations_for_steering(smoke_run):
    home, _ = smoke_run
    run = artifacts.RunDir("smoke", root=home / "data" / "runs" / "smoke")
    scores = run.read_parquet(K.REASON_SCORES).set_index("feature_idx")
    maxima = run.read_parquet(K.MAX_ACTIVATIONS)
    assert len(maxima) == 3  # n_dashboard_features in profiles/smoke.yaml
    assert maxima.feature_idx.tolist() == scores.reason_score.nlargest(3).index.tolist()
    assert maxima.max_activation.to_numpy() == pytest.approx(
        scores.loc[maxima.feature_idx, "max_activation"].to_numpy(), rel=1e-5)
    pages = sorted(p.name for p in run.path(K.DASHBOARDS_DIR).glob("feature_*.html"))
    assert pages == sorted(f"feature_{f}.html" for f in maxima.feature_idx)


def test_the_book_shows_notebook_05_and_its_dashboards_in_a_browser(smoke_run, browser):
    home, report = smoke_run
    html_dir = report.book_index.parent
    run = artifacts.RunDir("smoke", root=home / "data" / "runs" / "smoke")
    features = run.read_parquet(K.MAX_ACTIVATIONS).feature_idx.tolist()
    page = browser.open_page(html_dir / "05_features.html")
    assert page.errors == [], page.errors
    assert f"id=\"rl-feature-{features[0]}\"" in page.dom  # the explorer's static view
    assert page.dom.count("rl-dashboard-link") == len(features)
    assert f"src=\"dashboards/feature_{features[0]}.html\"" in page.dom  # the embedded page
    dashboard = browser.open_page(html_dir / "dashboards" / f"feature_{features[1]}.html")
    assert dashboard.errors == [], dashboard.errors
    assert dashboard.title == f"SAE feature {features[1]}"
    assert "POSITIVE LOGITS" in dashboard.dom and "main-svg" in dashboard.dom  # d3, Plotly ran


def test_a_second_run_skips_every_unchanged_notebook(smoke_run, monkeypatch):
    home, _ = smoke_run
    monkeypatch.setenv("REASONLENS_HOME", str(home))
    report = runner.run("smoke", build=False)
    assert report.ran == [] and report.skipped == NOTEBOOKS


def test_a_missing_upstream_artifact_names_the_notebook_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("REASONLENS_HOME", str(tmp_path))
    with pytest.raises(runner.NotebookError, match=r"02_model.*01_data.py writes it"):
        runner.run("smoke", only="02", build=False)


def test_the_real_model_path_runs_on_local_checkpoints(tmp_path, monkeypatch, saved_toy_model):
    write_tiny_real_sources(tmp_path)
    profile = tmp_path / "tinyreal.yaml"
    profile.write_text(json.dumps({
        "data_source": "openthoughts_lmsys", "model_name": str(saved_toy_model),
        "openthoughts_source": str(tmp_path / "ot.jsonl"),
        "lmsys_source": str(tmp_path / "chat.jsonl"),
        "n_reasoning": 30, "n_chat": 30, "context_size": 32}))
    monkeypatch.setenv("REASONLENS_HOME", str(tmp_path / "home"))
    report = runner.run(str(profile), start="01", stop="02", build=False)
    assert report.ran == ["01_data", "02_model"]
    run = artifacts.RunDir("tinyreal", root=tmp_path / "home" / "data" / "runs" / "tinyreal")
    documents = run.read_parquet(K.DOCUMENTS)
    assert set(documents.kind) == {"trace", "chat"}
    assert documents.text.str.contains(K.R1_ASSISTANT + "<think>", regex=False).any()
    assert len(run.read_parquet(K.CONTEXTS.format(split="reasoning_train"))) > 0


def test_every_notebook_runs_on_the_real_smollm2_weights(tmp_path, monkeypatch):
    """The smollm2-smoke profile: the whole book on SmolLM2-135M-Instruct, as shipped and
    fine-tuned (two steps), with budgets of seconds."""
    monkeypatch.setenv("REASONLENS_HOME", str(tmp_path))
    report = runner.run("smollm2-smoke", build=False)
    assert report.ran == NOTEBOOKS
    run = artifacts.RunDir("smollm2-smoke", root=tmp_path / "data" / "runs" / "smollm2-smoke")
    from safetensors.torch import load_file
    weights = {}
    for name in (K.REASONING_MODEL_DIR, K.BASE_MODEL_DIR):
        config = json.loads((run.path(name) / "config.json").read_text())
        assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) \
            == (30, 576, 49152), name  # the real model, not a toy
        weights[name] = load_file(run.path(name) / "model.safetensors")
    changed = [k for k in weights[K.BASE_MODEL_DIR]
               if not weights[K.BASE_MODEL_DIR][k].equal(weights[K.REASONING_MODEL_DIR][k])]
    assert len(changed) == len(weights[K.BASE_MODEL_DIR])  # every weight fine-tuned
    evaluation = run.read_json(K.MODEL_EVAL)
    assert evaluation["tl_max_logit_diff"] < 5e-4  # TransformerLens vs transformers, float32
    trace = run.read_parquet(K.DOCUMENTS).query("kind == 'trace'").text.iloc[0]
    assert trace.startswith("<|im_start|>system\n") and trace.endswith("<|im_end|>\n")
    assert "<|im_start|>assistant\n<think>\n" in trace and "\n</think>\nThe answer is" in trace
    scores = run.read_parquet(K.REASON_SCORES)
    assert len(scores) == 2 * 576 and scores.reason_score.notna().all()  # expansion_factor 2
    assert run.read_parquet(K.EVAL_CONDITIONS).condition.iloc[0] == "unsteered"
    assert {"step_sae[ours]", "token_sae"} <= set(run.read_parquet(K.STEP_PROBES).features)
    for mode in ("ours", "reference"):  # step_is_checkpointed: false
        assert not run.path(K.STEP_SAE_CHECKPOINTS_DIR.format(mode=mode)).exists()
    shutil.rmtree(tmp_path / "data")  # 3.9 GB of weights: keep the suite's disk use small


def test_notebook_08_reads_a_gsm8k_file_by_the_reference_rules(smoke_run, tmp_path, monkeypatch):
    """A GSM8K JSON Lines file with the reference's field names (and a key it ignores) goes
    through the reference's reader, training, probes, N2G and voting, beside our mode."""
    home, _ = smoke_run
    records = [{"question": f"Tom has {i} apples and buys {i + 2} more. How many now?",
                "answer": f"Tom buys {i + 2} more.\nHe has {i} + {i + 2} = {2 * i + 2} apples."
                          f"\n#### {2 * i + 2}", "source": "test"} for i in range(40)]
    data_file = tmp_path / "gsm8k_385K_train.json"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    model = home / "data" / "runs" / "smoke" / K.REASONING_MODEL_DIR
    smoke = yaml.safe_load((repo_root() / "profiles" / "smoke.yaml").read_text())
    params = {key: value for key, value in smoke.items() if key.startswith("step_")} | {
        "step_data_source": "gsm8k", "step_jsonl_path": str(data_file),
        "step_model_name": str(model), "model_name": str(model),
        "step_token_sae_baseline": False, "step_n_train": 60, "step_vote_problems": 3}
    profile = tmp_path / "gsm8k.yaml"
    profile.write_text(yaml.safe_dump(params))
    monkeypatch.setenv("REASONLENS_HOME", str(tmp_path / "home"))
    report = runner.run(str(profile), only="08", build=False)
    assert report.ran == ["08_step_sae"]
    run = artifacts.RunDir("gsm8k", root=tmp_path / "home" / "data" / "runs" / "gsm8k")
    probes = run.read_parquet(K.STEP_PROBES)
    reference = probes[probes.rules == "reference"]
    assert set(reference.task) == {"correctness", "length", "first_token"}
    assert set(reference.features) == {"statistics", "step_sae[reference]", "context_only"}
    assert "correctness" not in set(probes[probes.rules == "ours"].task)  # no ground truth
    voting = run.read_json(K.STEP_VOTING.format(mode="reference"))
    assert [row["method"] for row in voting["table"]] == ["greedy", "majority", "weighted"]
    assert [row["n"] for row in voting["table"]] == [3, 3, 3]
    assert not run.path(K.STEP_VOTING.format(mode="ours")).exists()  # needs the world's verifier
    assert len(run.read_parquet(K.STEP_LABELS.format(mode="reference"))) > 0
