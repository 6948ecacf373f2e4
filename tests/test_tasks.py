"""The shipped paper tasks (reasonlens.tasks) through the real ``reasonlens-lm-eval`` command line.

The toy checkpoint gets a chat template in the R1 manner (the generation prompt opens
``<think>``), so ``--apply_chat_template`` runs as in the reference; the three tasks read tiny local
files with the real datasets' field names. Expected scores and lengths are recomputed here from
the logged completions with the tokenizer and plain rules, not with the library's scorers.
"""

import contextlib
import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from reasonlens import models, steering
from reasonlens.sae import save_sae
from reasonlens.tasks import TASK_NAMES, TASKS_DIR
from reasonlens.tasks import utils as task_utils

FEATURE, STRENGTH, MAX_ACT = 5, 4.0, 1.5
MAX_GEN = 12
CHAT_TEMPLATE = ("{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}")

AIME = [{"id": 60, "problem": "Find 3 + 4.", "solution": "3 + 4 = 7.", "answer": "007",
         "url": "u", "year": "2024"},
        {"id": 61, "problem": "Find 12 times 2.", "solution": "24", "answer": "24", "url": "u",
         "year": "2024"},
        {"id": 62, "problem": "Find 5 - 5.", "solution": "0", "answer": "0", "url": "u",
         "year": "2024"}]
MATH = [{"problem": "What is half of one?", "solution": "Half is $\\boxed{\\frac{1}{2}}$.",
         "answer": "\\frac{1}{2}", "subject": "Algebra", "level": 1, "unique_id": "a/1.json"},
        {"problem": "Solve x + 1 = 3.", "solution": "So $x = \\boxed{2}$.", "answer": "2",
         "subject": "Algebra", "level": 1, "unique_id": "a/2.json"},
        {"problem": "Give 5 cm.", "solution": "$\\boxed{5\\text{ cm}}$", "answer": "5\\text{ cm}",
         "subject": "Geometry", "level": 2, "unique_id": "g/3.json"}]
GPQA = [{"Question": f"Which one is right ({i})?", "Correct Answer": f"right {i}",
         "Incorrect Answer 1": f"wrong a{i}", "Incorrect Answer 2": f"wrong b{i} [title]",
         "Incorrect Answer 3": f"wrong c{i}", "Record ID": f"rec{i}"} for i in range(3)]


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory, toy_model, tokenizer):
    """The toy checkpoint, its tokenizer with an R1-style chat template."""
    path = tmp_path_factory.mktemp("chat") / "model"
    toy_model.save_pretrained(path)
    tokenizer.chat_template = CHAT_TEMPLATE
    try:
        tokenizer.save_pretrained(path)
    finally:
        tokenizer.chat_template = None
    return path


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("task_files")
    paths = {"REASONLENS_AIME24_PATH": folder / "aime.jsonl",
             "REASONLENS_MATH500_PATH": folder / "math.parquet",
             "REASONLENS_GPQA_PATH": folder / "gpqa.jsonl"}
    paths["REASONLENS_AIME24_PATH"].write_text("".join(json.dumps(r) + "\n" for r in AIME))
    pd.DataFrame(MATH).to_parquet(paths["REASONLENS_MATH500_PATH"])
    paths["REASONLENS_GPQA_PATH"].write_text("".join(json.dumps(r) + "\n" for r in GPQA))
    return {k: str(v) for k, v in paths.items()}


def _run(out, model_path, task_files, **steer):
    args = ",".join(f"{k}={v}" for k, v in {"pretrained": model_path, "dtype": "float32",
                                             **steer}.items())
    # greedy, so that the completions can be reproduced here; the tasks' own sampling settings
    # are checked on the task configs (test_the_tasks_carry_the_reference_generation_settings)
    result = subprocess.run(
        [sys.executable, "-m", "reasonlens.harness", "--model", "reasonlens-steered",
         "--model_args", args, "--tasks", ",".join(TASK_NAMES), "--apply_chat_template",
         "--gen_kwargs", f"max_gen_toks={MAX_GEN},do_sample=False", "--device", "cpu",
         "--batch_size", "3", "--output_path", str(out), "--log_samples"],
        capture_output=True, text=True, env={**os.environ, **task_files})
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    samples = {t: sorted((json.loads(line) for line in next(out.rglob(f"samples_{t}_*.jsonl"))
                          .read_text().splitlines()), key=lambda r: r["doc_id"])
               for t in TASK_NAMES}
    return results, samples


@pytest.fixture(scope="module")
def runs(tmp_path_factory, chat_model, sae, task_files):
    out = tmp_path_factory.mktemp("lm_eval")
    sae_dir = save_sae(sae, out / "sae")
    return {"unsteered": _run(out / "unsteered", chat_model, task_files),
            "steered": _run(out / "steered", chat_model, task_files, sae=sae_dir,
                            features=FEATURE, strength=STRENGTH, max_activations=MAX_ACT)}


def _greedy(model, tokenizer, prompt: str) -> list[int]:
    """Greedy new tokens up to EOS, the prompt cut to its last (n_ctx - MAX_GEN) tokens as the
    harness cuts it."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = ids[-(model.config.max_position_embeddings - MAX_GEN):]
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=MAX_GEN,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)[0, len(ids):].tolist()
    return out[:out.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in out else out


@pytest.mark.slow
def test_the_three_tasks_run_steered_and_unsteered_with_accuracy_and_reasoning_length(
        runs, chat_model, sae):
    model = models.load_hooked(chat_model, backend="hf")
    tokenizer = model.tokenizer
    close_id = tokenizer.convert_tokens_to_ids("</think>")
    maxima = torch.zeros(sae.cfg.d_sae)
    maxima[FEATURE] = MAX_ACT
    texts = {}
    for condition, (results, samples) in runs.items():
        for task in TASK_NAMES:
            metrics, rows = results["results"][task], samples[task]
            assert len(rows) == 3
            args = rows[0]["arguments"]["gen_args_0"]
            assert args["arg_0"].startswith("<|user|>") and args["arg_0"].endswith("<think>\n")
            assert args["arg_1"]["max_gen_toks"] == MAX_GEN
            # the same greedy completions, generated here, give the lengths by hand
            prompts = [r["arguments"]["gen_args_0"]["arg_0"] for r in rows]
            steer = (steering.steer(model, sae, {FEATURE: STRENGTH}, max_activations=maxima)
                     if condition == "steered" else contextlib.nullcontext())
            with steer:
                ids = [_greedy(model.model, tokenizer, p) for p in prompts]
            for r, row_ids in zip(rows, ids):
                assert "Problem:" not in tokenizer.decode(row_ids)  # no stop string cut it
                n_reasoning = row_ids.index(close_id) if close_id in row_ids else len(row_ids)
                assert r["resps"][0][0] == tokenizer.decode(row_ids, skip_special_tokens=True)
                assert (r["n_tokens"], r["reasoning_length"], r["unclosed_think"]) == (
                    len(row_ids), n_reasoning, float(close_id not in row_ids))
            for name, values in [("reasoning_length", [r["reasoning_length"] for r in rows]),
                                 ("unclosed_think", [r["unclosed_think"] for r in rows]),
                                 ("n_tokens", [r["n_tokens"] for r in rows])]:
                assert metrics[f"{name},none"] == pytest.approx(sum(values) / 3)
            # accuracy is the mean of the rule-based check, disagreement where it differs from
            # the reference's exact match
            check = "letter_match" if task == "openai_gpqa_diamond" else "math_verify"
            assert metrics["accuracy,none"] == pytest.approx(sum(r[check] for r in rows) / 3)
            assert metrics["exact_match,none"] == pytest.approx(
                sum(r["exact_match"] for r in rows) / 3)
            assert [r["disagreement"] for r in rows] == [
                float(r[check] != r["exact_match"]) for r in rows]
            texts[condition, task] = [r["resps"][0][0] for r in rows]
    assert any(texts["steered", t] != texts["unsteered", t] for t in TASK_NAMES)


def test_the_tasks_carry_the_reference_generation_settings():
    from reasonlens.harness import ShippedTaskManager

    manager = ShippedTaskManager(include_defaults=False)
    for task in TASK_NAMES:
        config = yaml.safe_load(re.sub(r"!function \S+", "fn", (
            manager.task_index[task].yaml_path).read_text()))
        assert config["generation_kwargs"] == {
            "until": ["Problem:", "<｜end▁of▁sentence｜>"], "do_sample": True,
            "temperature": 0.6, "top_p": 0.95, "max_gen_toks": 32768}
        assert config["repeats"] == 1 and config["num_fewshot"] == 0
    aime = yaml.safe_load(re.sub(r"!function \S+", "fn", (
        TASKS_DIR / "aime2024_nofigures.yaml").read_text()))
    assert aime["doc_to_text"] == ("Please reason step by step, and put your final answer within "
                                   "\\boxed{}.\nProblem: {{problem}}\nAnswer:")


@pytest.mark.slow
def test_exact_match_in_the_run_is_the_references_rule(runs):
    _, samples = runs["unsteered"]
    gold = {"aime2024_nofigures": ["7", "24", "0"], "math-500": ["\\frac{1}{2}", "2",
                                                                 "5\\text{ cm}"]}
    for task, answers in gold.items():
        rows = sorted(samples[task], key=lambda r: r["doc_id"])
        for row, answer in zip(rows, answers):
            text = row["resps"][0][0]
            assert row["target"] == answer
            # the reference's rule by hand: no box and no "Answer:" -> "0"
            found = re.findall(r"(?i)Answer\s*:\s*(.*)", text, re.DOTALL)
            if "\\boxed" not in text and "\\fbox" not in text:
                said = found[-1] if found else "0"
                expected = (str(int(said)) == answer if said.isdigit() and answer.isdigit()
                            else said == answer)
                assert row["exact_match"] == float(expected)


@pytest.mark.slow
def test_gpqa_documents_are_shuffled_by_seed_with_the_right_letter(runs):
    _, samples = runs["unsteered"]
    for row in samples["openai_gpqa_diamond"]:
        doc = row["doc"]
        choices = [doc[f"choice{i}"] for i in (1, 2, 3, 4)]
        i = doc["Question"][-3]  # "Which one is right (i)?"
        # the reference's clean-up by hand: " [title]" becomes ". ", after the strip
        assert sorted(choices) == sorted([f"right {i}", f"wrong a{i}", f"wrong b{i}. ",
                                          f"wrong c{i}"])
        assert choices["ABCD".index(row["target"])] == doc["Correct Answer"]
        prompt = row["arguments"]["gen_args_0"]["arg_0"]
        assert f"\n\nA) {choices[0]}\nB) {choices[1]}\nC) {choices[2]}\nD) {choices[3]}" in prompt
        assert "'Answer: $LETTER'" in prompt


def test_gpqa_shuffle_is_reproducible_and_depends_on_the_seed():
    choices = ["w1", "w2", "w3", "right"]
    orders = {tuple(task_utils.shuffle_choices(f"question {i}", choices, seed=0))
              for i in range(12)}
    assert len(orders) > 1  # not one fixed permutation
    again = task_utils.shuffle_choices("question 3", choices, seed=0)
    assert again == task_utils.shuffle_choices("question 3", choices, seed=0)
    assert sorted(again) == sorted(choices)
    by_seed = {tuple(task_utils.shuffle_choices("question 3", choices, seed=s)) for s in range(12)}
    assert len(by_seed) > 1


def test_local_files_load_under_the_splits_the_tasks_read(task_files, monkeypatch):
    for variable, path in task_files.items():
        monkeypatch.setenv(variable, path)
    assert task_utils.load_aime24()["train"]["problem"] == [r["problem"] for r in AIME]
    math500 = task_utils.process_math500(task_utils.load_math500()["test"])
    assert math500["answer"] == ["\\frac{1}{2}", "2", "5\\text{ cm}"]  # the solutions' boxes
    assert task_utils.process_aime(task_utils.load_aime24()["train"])["answer"] == ["7", "24", "0"]
    gpqa = task_utils.load_gpqa(gpqa_shuffle_seed=7)["train"]
    assert gpqa["gpqa_shuffle_seed"] == [7, 7, 7]
    # a task argument wins over the variable
    with pytest.raises(FileNotFoundError, match="aime24_path="):
        task_utils.load_aime24(aime24_path=task_files["REASONLENS_GPQA_PATH"] + ".missing")


def test_a_missing_local_file_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("REASONLENS_AIME24_PATH", str(tmp_path / "none.jsonl"))
    with pytest.raises(FileNotFoundError, match="REASONLENS_AIME24_PATH=.*none.jsonl.*does not"):
        task_utils.load_aime24()
    with pytest.raises(FileNotFoundError, match="math500_path=.*nope.parquet"):
        task_utils.load_math500(math500_path=str(tmp_path / "nope.parquet"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"Question": "q", "Correct Answer": "a"}) + "\n")
    monkeypatch.setenv("REASONLENS_GPQA_PATH", str(bad))
    with pytest.raises(ValueError, match="lacks the fields .*Incorrect Answer 1"):
        task_utils.load_gpqa()
    csv = tmp_path / "x.csv"
    csv.write_text("a\n")
    with pytest.raises(ValueError, match=r"must end in \.jsonl, \.json or \.parquet"):
        task_utils.load_math500(math500_path=str(csv))


def test_the_package_ships_the_three_task_yamls():
    from reasonlens.harness import ShippedTaskManager

    manager = ShippedTaskManager(include_defaults=False)
    assert set(TASK_NAMES) <= set(manager.all_tasks)
    assert "reasonlens_paper" in manager.all_tags  # --tasks reasonlens_paper runs all three
    assert {p.stem for p in TASKS_DIR.glob("*.yaml")} == set(TASK_NAMES)


# --- the tasks' documents as problems for notebooks 06 and 07 (reasonlens.tasks.problems) ------
def _task_args(task_files):
    return {"aime24_path": task_files["REASONLENS_AIME24_PATH"],
            "math500_path": task_files["REASONLENS_MATH500_PATH"],
            "gpqa_path": task_files["REASONLENS_GPQA_PATH"]}


def test_task_problems_are_the_tasks_documents_with_their_prompts_and_answers(task_files,
                                                                              chat_model):
    from transformers import AutoTokenizer

    from reasonlens.tasks import problems

    table = problems.task_problems("reasonlens_paper", n_problems=2,
                                   task_args=_task_args(task_files))
    assert list(table.task) == [t for t in TASK_NAMES for _ in range(2)]
    assert list(table.doc_id) == [0, 1] * 3
    assert list(table.question[:4]) == [AIME[0]["problem"], AIME[1]["problem"],
                                        MATH[0]["problem"], MATH[1]["problem"]]
    assert list(table.answer[:4]) == ["7", "24", "\\frac{1}{2}", "2"]
    gpqa = table[table.task == "openai_gpqa_diamond"]
    for _, row in gpqa.iterrows():  # the letter of the right choice after the shuffle
        assert row.doc[f"choice{'ABCD'.index(row.answer) + 1}"] == row.doc["Correct Answer"]
        assert "'Answer: $LETTER'" in row.prompt
    assert table.stop[0] == ["Problem:", "<｜end▁of▁sentence｜>"]
    # no chat template: the toy's markers around the task's text
    assert table.prompt[2].endswith("Problem: What is half of one?\nAnswer:<|assistant|><think>\n")
    # a chat template: the user turn and the generation prompt, as --apply_chat_template
    templated = problems.task_problems(["math-500"], 1, _task_args(task_files),
                                       AutoTokenizer.from_pretrained(chat_model))
    assert templated.prompt[0].startswith("<|user|>Please reason step by step")
    assert templated.prompt[0].endswith("Answer:<|assistant|><think>\n")


def test_task_problems_errors_name_the_parameter(task_files):
    from reasonlens.tasks import problems

    with pytest.raises(ValueError, match=r"tasks=\['math_500'\].*math-500"):
        problems.task_problems(["math_500"])
    with pytest.raises(ValueError, match="n_problems=0 must be at least 1"):
        problems.task_problems(["math-500"], 0, _task_args(task_files))


def test_task_completions_are_scored_by_the_tasks_own_checks(task_files, tokenizer):
    from reasonlens.tasks import problems

    table = problems.task_problems(["math-500", "openai_gpqa_diamond"], 1,
                                   _task_args(task_files))
    gpqa_letter = table.answer[1]
    wrong_letter = next(c for c in "ABCD" if c != gpqa_letter)
    close = tokenizer.convert_tokens_to_ids("</think>")
    frame = pd.DataFrame([
        # math-verify: 0.5 is 1/2; the exact match of the reference is not
        {"prompt_idx": 0, "completion": "hmm</think> so \\boxed{0.5}", "generated_ids": [1, 2,
                                                                                      close, 3]},
        # a box after the stop string does not count
        {"prompt_idx": 0, "completion": "wait \\boxed{3} Problem: \\boxed{\\frac12}",
         "generated_ids": [1, 2, 3]},
        {"prompt_idx": 1, "completion": f"Answer: {gpqa_letter}", "generated_ids": [close, 4]},
        {"prompt_idx": 1, "completion": f"Answer: {wrong_letter}", "generated_ids": [5]},
    ])
    scored = problems.score_task_completions(frame, table, tokenizer)
    assert list(scored.is_correct) == [True, False, True, False]
    assert list(scored.exact_match) == [False, False, True, False]
    assert list(scored.reasoning_tokens) == [2, 3, 0, 1]
    assert list(scored.unclosed_think) == [False, True, False, True]
    assert list(scored.task) == ["math-500", "math-500", "openai_gpqa_diamond",
                                 "openai_gpqa_diamond"]
    assert list(scored.reasoning_words) == [1, 1, 0, 0]  # "hmm", "wait" before </think>
    with pytest.raises(ValueError, match=r"prompt_idx \[7\] are outside problems \(2 rows\)"):
        problems.score_task_completions(frame.assign(prompt_idx=7), table, tokenizer)
    # the world's problems go to the world's scorer
    world = pd.DataFrame({"question": ["q"], "answer": [12]})
    toy = problems.score_problems(pd.DataFrame([{"prompt_idx": 0, "completion": "The answer is "
                                                 "12.", "generated_ids": [1]}]), world, tokenizer)
    assert toy.is_correct.tolist() == [True]


def test_tasks_for_run_uses_the_world_when_it_exists(tmp_path):
    from reasonlens import artifacts
    from reasonlens import constants as K
    from reasonlens.tasks import problems

    run = artifacts.RunDir("x", root=tmp_path)
    assert problems.tasks_for_run(run, None, "math-500") == "math-500"  # no world: the fallback
    assert problems.tasks_for_run(run, ["aime2024_nofigures"], "math-500") == [
        "aime2024_nofigures"]
    run.path(K.PROBLEMS).parent.mkdir(parents=True)
    run.path(K.PROBLEMS).write_text("")
    assert problems.tasks_for_run(run, None, "math-500") is None
