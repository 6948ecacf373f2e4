"""The lm-evaluation-harness path: ``reasonlens-steered`` through the real ``lm_eval`` command
line."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from reasonlens import evaluation, harness, models, steering
from reasonlens.sae import save_sae
from reasonlens.world import prompt

FEATURE, STRENGTH, MAX_ACT = 5, 4.0, 1.5


@pytest.fixture(scope="module")
def problems(world):
    return world.problems[world.problems.split == "test"].head(6)


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory, sae):
    return save_sae(sae, tmp_path_factory.mktemp("sae") / "sae")


def _lm_eval(tmp_path, model_path, task_dir, **steer) -> pd.DataFrame:
    args = ",".join(f"{k}={v}" for k, v in {"pretrained": model_path, "dtype": "float32",
                                             **steer}.items())
    out = tmp_path / ("steered" if steer else "unsteered")
    subprocess.run([sys.executable, "-m", "reasonlens.harness", "--model", harness.MODEL_NAME,
                    "--model_args", args, "--tasks", "reasonlens_world", "--include_path",
                    str(task_dir), "--device", "cpu", "--batch_size", "6", "--output_path",
                    str(out), "--log_samples"], check=True, capture_output=True, text=True)
    samples = next(out.rglob("samples_reasonlens_world_*.jsonl"))
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    return pd.DataFrame({"doc_id": [r["doc_id"] for r in rows],
                         "completion": [r["resps"][0][0] for r in rows],
                         "exact_match": [r["exact_match"] for r in rows]}).sort_values("doc_id")


@pytest.mark.slow
def test_lm_eval_runs_the_world_task_steered_and_unsteered(tmp_path, saved_toy_model, sae,
                                                           sae_dir, problems):
    task_dir = tmp_path / "tasks"
    harness.world_task(problems, task_dir, max_gen_toks=12)
    plain = _lm_eval(tmp_path, saved_toy_model, task_dir)
    steered = _lm_eval(tmp_path, saved_toy_model, task_dir, sae=sae_dir, features=FEATURE,
                       strength=STRENGTH, max_activations=MAX_ACT)

    # the harness's greedy completions are ours, unsteered and steered with the same hook
    model = models.load_hooked(saved_toy_model, backend="hf")
    prompts = [prompt(q, reasoning=True) for q in problems.question]
    ours = evaluation.generate(model.model, model.tokenizer, prompts, max_new_tokens=12)
    maxima = torch.zeros(sae.cfg.d_sae)
    maxima[FEATURE] = MAX_ACT
    with steering.steer(model, sae, {FEATURE: STRENGTH}, max_activations=maxima):
        ours_steered = evaluation.generate(model.model, model.tokenizer, prompts, max_new_tokens=12)
    clean = lambda texts: [t.replace("<eos>", "").strip() for t in texts]  # noqa: E731
    assert clean(plain.completion) == clean(ours)
    assert clean(steered.completion) == clean(ours_steered)
    assert clean(ours_steered) != clean(ours)
    expected = [float(evaluation.parse_answer(c) == a) for c, a in zip(ours, problems.answer)]
    assert plain.exact_match.tolist() == expected


def test_world_task_scores_the_answer_as_parse_answer_does(tmp_path, problems):
    path = harness.world_task(problems, tmp_path)
    docs = [json.loads(line) for line in (tmp_path / "reasonlens_world.jsonl").read_text()
            .splitlines()]
    assert [d["answer"] for d in docs] == [str(a) for a in problems.answer]
    assert docs[0]["prompt"].endswith("<think>\n")
    import re

    import yaml
    pattern = yaml.safe_load(path.read_text())["filter_list"][0]["filter"][0]["regex_pattern"]
    for text in ("so the answer is 3. Wait, the answer is 4.</think>The answer is 5.",
                 "the answer is 7 and then</think> no answer", "no answer at all"):
        found = re.search(pattern, text)
        assert (int(found.group(1)) if found else None) == evaluation.parse_answer(text)
    with pytest.raises(ValueError, match="problems is empty"):
        harness.world_task(problems.head(0), tmp_path)


@pytest.mark.parametrize("args, match", [
    (dict(features="3;999", max_activations="1;1"), "outside the SAE"),
    (dict(features=3, strength="nan", max_activations=1.0), "not finite"),
    (dict(features=3, strength="x"), "strength='x' must be a number"),
    (dict(features="3;4", strength="1;2;3", max_activations="1;1"), "strength has 3 values"),
    (dict(features=3, max_activations="1;2"), "one per feature"),
    (dict(features=3), "needs max_activations"),
    (dict(features=3, max_activations="/no/such.parquet"), "does not exist"),
    (dict(features=3, max_activations=1.0, site="mlp"), "site='mlp' is unknown"),
    (dict(features=3, max_activations=1.0, units="sae"), "units='sae' is unknown"),
])
def test_bad_model_args_fail_when_the_model_is_built(saved_toy_model, sae_dir, args, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        harness.SteeredHFLM(pretrained=str(saved_toy_model), sae=str(sae_dir), device="cpu",
                            **args)


def test_features_without_an_sae_is_an_error(saved_toy_model):
    with pytest.raises(ValueError, match="no SAE"):
        harness.SteeredHFLM(pretrained=str(saved_toy_model), device="cpu", features=3)


def test_max_activations_come_from_a_scores_parquet(tmp_path):
    path = tmp_path / "scores.parquet"
    # rows out of feature order: each value goes to its own feature_idx
    pd.DataFrame({"feature_idx": [2, 0, 1], "max_activation": [1.0, 0.5, 2.0]}).to_parquet(path)
    assert harness.max_activation_vector(str(path), [1], 3).tolist() == [0.5, 2.0, 1.0]
    given = harness.max_activation_vector("3;4", [0, 2], 3)
    assert given[[0, 2]].tolist() == [3.0, 4.0] and given[1].isnan()  # unsteered: no value


def test_the_steered_model_brings_its_sae_to_the_models_device(saved_toy_model, sae_dir):
    lm = harness.SteeredHFLM(pretrained=str(saved_toy_model), sae=str(sae_dir), device="cpu",
                             features=3, strength=1.0, mode="add")
    lm.model.to("meta")  # stands in for a GPU the model was moved to after loading
    with lm._steered():
        assert lm.sae.W_dec.device == torch.device("meta")


def test_site_and_units_model_args_reach_the_hook(saved_toy_model, sae_dir, sae):
    """``site=reference,units=raw`` (the authors' evaluation) steers the MLP output of the SAE's
    layer with the raw maximum: the same forward as that hook attached by hand."""
    lm = harness.SteeredHFLM(pretrained=str(saved_toy_model), sae=str(sae_dir), device="cpu",
                             features=3, strength=2.0, max_activations=1.5, site="reference",
                             units="raw")
    hooked = models.HFHookedModel(lm.model, lm.tokenizer)
    tokens = torch.tensor([[1, 5, 9, 14, 20]])
    maxima = torch.full((sae.cfg.d_sae,), 1.5)
    hook = steering.steering_hook(sae, {3: 2.0}, "clamp", maxima, units="raw")
    with torch.no_grad():
        with hooked.hooks([("blocks.1.hook_mlp_out", hook)]):
            expected = hooked(tokens)
        with lm._steered():
            assert len(hooked.layers[1].mlp._forward_hooks) == 1  # at the MLP output
            steered = hooked(tokens)
        clean = hooked(tokens)
    torch.testing.assert_close(steered, expected, atol=0, rtol=0)
    assert (steered - clean).abs().max() > 1e-3


def test_run_harness_evaluates_a_shipped_task_offline_with_its_lengths(tmp_path,
                                                                       saved_toy_model):
    problems = tmp_path / "aime.jsonl"
    problems.write_text("".join(json.dumps({"problem": f"Find {i} + {i}.", "answer": str(2 * i),
                                            "solution": ""}) + "\n" for i in range(3)))
    assert not harness.has_chat_template(saved_toy_model)  # so none is applied to the toy
    results = harness.run_harness(
        saved_toy_model, ["aime2024_nofigures"], builtin_tasks=False, batch_size=3,
        gen_kwargs="max_gen_toks=6,do_sample=False,cutoff_token=</think>",
        task_args={"aime24_path": str(problems)}, output_path=tmp_path / "out")
    metrics = results["aime2024_nofigures"]
    assert 0 <= metrics["reasoning_length,none"] <= metrics["n_tokens,none"] <= 6
    assert 0 <= metrics["unclosed_think,none"] <= 1 and "accuracy,none" in metrics
    samples = [json.loads(line) for line in
               next((tmp_path / "out").rglob("samples_aime2024_nofigures_*.jsonl"))
               .read_text().splitlines()]
    assert [s["target"] for s in sorted(samples, key=lambda s: s["doc_id"])] == ["0", "2", "4"]
    prompt_text = samples[0]["arguments"]["gen_args_0"]["arg_0"]
    assert prompt_text.startswith("Please reason step by step, and put your final answer within "
                                  "\\boxed{}.\nProblem: Find ")


@pytest.mark.parametrize("think_end_token", [None, "</think>"])
def test_every_generation_carries_its_counts_as_our_greedy_generation_gives_them(
        saved_toy_model, problems, think_end_token):
    from lm_eval.api.instance import Instance

    lm = harness.SteeredHFLM(pretrained=str(saved_toy_model), device="cpu", batch_size=4,
                             think_end_token=think_end_token)
    prompts = [prompt(q, reasoning=True) for q in problems.question]
    gen = {"until": ["Problem:"], "max_gen_toks": 10, "do_sample": False}
    requests = [Instance(request_type="generate_until", doc={}, arguments=(p, gen), idx=i)
                for i, p in enumerate(prompts)]
    out = lm.generate_until(requests, disable_tqdm=True)
    model = models.load_hooked(saved_toy_model, backend="hf")
    _, ids = evaluation.generate(model.model, model.tokenizer, prompts, max_new_tokens=10,
                                 return_ids=True)
    close = model.tokenizer.convert_tokens_to_ids("</think>")
    for text, row in zip(out, ids):
        assert isinstance(text, harness.Generation)
        expected = row.index(close) if close in row else len(row)
        assert (text.n_tokens, text.n_reasoning_tokens, text.is_think_closed) == (
            len(row), expected, close in row)
    assert lm._recorded is None


def test_results_table_puts_the_models_side_by_side_per_task_and_metric():
    results = {"unsteered": {"math-500": {"accuracy,none": 0.5, "reasoning_length,none": 10.0,
                                          "accuracy_stderr,none": 0.1}},
               "f3 x2": {"math-500": {"accuracy,none": 0.75, "reasoning_length,none": 12.0}}}
    table = harness.results_table(results)
    assert list(table.columns) == ["unsteered", "f3 x2"]
    assert table.loc["math-500: accuracy"].tolist() == [0.5, 0.75]
    assert table.loc["math-500: reasoning_length"].tolist() == [10.0, 12.0]
    assert "math-500: accuracy_stderr" not in table.index
