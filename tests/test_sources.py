"""Tests for reasonlens.sources: R1 formatting, local loaders, errors, and the seeded mix."""

from __future__ import annotations

import json

import datasets
import pandas as pd
import pytest
from helpers import scramble_global_rngs

from reasonlens import sources
from reasonlens.sources import (
    ExtractionSetConfig,
    SourceMixConfig,
    format_lmsys,
    format_openthoughts,
    keep_language,
    load_extraction_texts,
    load_mixed_texts,
    load_records,
    stratified_indices,
)

REASONING = "Hmm, 2 + 3 is 5. Wait, let me check: 5 - 3 = 2. Yes."
SOLUTION = "The sum is \\boxed{5}."

# The reference's system prompt, typed from AIRI-Institute/SAE-Reasoning,
# training/datasets/prepare_openthoughts_dataset.py:20-25 (a triple-quoted string that starts
# and ends with a newline and breaks its lines where the source does).
SYSTEM = """
Your role as an assistant involves thoroughly exploring questions through a systematic long thinking process
before providing the final precise and accurate solutions. This requires engaging in a comprehensive cycle of
analysis, summarizing, exploration, reassessment, reflection, backtracing, and iteration to develop well-considered
thinking process.
"""  # noqa: E501
EOS = "<｜end▁of▁sentence｜>"
STDIN = ("Generate an executable Python function generated from the given prompt. The function "
         "should take stdin as input and print the output. Simply call the function after the "
         "definition.")
FUNCTION = ("Generate an executable Python function generated from the given prompt. Return the "
            "function body without invoking it at the final solution.")


def trace(domain: str = "math", problem: str = "What is 2 + 3?", test_cases=None,
          starter_code=None, **overrides) -> dict:
    """An OpenThoughts-114k record with the fields of the hub's ``metadata`` config."""
    record = {
        "problem": problem, "deepseek_reasoning": REASONING, "deepseek_solution": SOLUTION,
        "ground_truth_solution": "5", "domain": domain, "source": "numina_math",
        "test_cases": test_cases, "starter_code": starter_code,
    }
    return {**record, **overrides}


def code_trace(problem: str, fn_name: str | None = None, starter_code: str | None = "",
               **overrides) -> dict:
    """A code record: test_cases is a JSON string, with fn_name for call-based problems."""
    cases = {"inputs": ["3\n1 2 3\n"], "outputs": ["6\n"]}
    if fn_name is not None:
        cases["fn_name"] = fn_name
    return trace("code", problem=problem, test_cases=json.dumps(cases),
                 starter_code=starter_code, source="taco", **overrides)


def chat(index: int, language: str = "English") -> dict:
    """An LMSYS-Chat-1M record (its fields) with a two-turn conversation."""
    return {
        "conversation_id": f"c{index}", "model": "vicuna-13b", "turn": 1, "language": language,
        "conversation": [
            {"content": f"Question {index}?", "role": "user"},
            {"content": f"Answer {index}.", "role": "assistant"},
        ],
        "openai_moderation": [], "redacted": False,
    }


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)


@pytest.fixture(autouse=True)
def local_datasets_cache(tmp_path, monkeypatch):
    """Keep datasets' Arrow cache inside the test's tmp_path, and never reach the hub."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


@pytest.fixture
def mix_paths(tmp_path):
    """Eight traces (six domains, two of them twice) and eight chats (six English) as jsonl."""
    domains = ["math", "code", "puzzle", "biology", "chemistry", "physics", "math", "puzzle"]
    traces = [code_trace(f"Problem {i}.") if d == "code" else trace(d, problem=f"Problem {i}.")
              for i, d in enumerate(domains)]
    chats = [chat(i, "English" if i < 6 else "German") for i in range(8)]
    return write_jsonl(tmp_path / "ot.jsonl", traces), write_jsonl(tmp_path / "chat.jsonl", chats)


# --- OpenThoughts formatting, as the reference renders it -------------------------------------

THINK = "<｜Assistant｜><think>\n" + REASONING + "\n</think>\n" + SOLUTION


@pytest.mark.parametrize("record, expected", [
    (trace("math"),
     SYSTEM + "<｜User｜>Return your final response within \\boxed{}. What is 2 + 3?" + THINK),
    (trace("puzzle", problem="Cross the river."), SYSTEM + "<｜User｜>Cross the river." + THINK),
    (trace("biology", problem="Why do cells divide?"),
     SYSTEM + "<｜User｜>Why do cells divide?" + THINK),
    (trace("chemistry", problem="Balance H2 + O2."), SYSTEM + "<｜User｜>Balance H2 + O2." + THINK),
    (trace("physics", problem="Why is the sky blue?"),
     SYSTEM + "<｜User｜>Why is the sky blue?" + THINK),
    # stdin program: starter_code "" still adds its "\n"
    (code_trace("Read n and print n + 1.", starter_code=""),
     SYSTEM + "<｜User｜>Generate an executable Python function generated from the given prompt."
     " The function should take stdin as input and print the output. Simply call the function"
     " after the definition.Read n and print n + 1.\n" + THINK),
    # call-based: fn_name present; starter code after one newline, verbatim
    (code_trace("Return the sum of nums.", fn_name="total",
                starter_code="class Solution:\n    def total(self, nums):\n        "),
     SYSTEM + "<｜User｜>Generate an executable Python function generated from the given prompt."
     " Return the function body without invoking it at the final solution.Return the sum of"
     " nums.\nclass Solution:\n    def total(self, nums):\n        " + THINK),
    # no starter code at all (None): nothing appended
    (code_trace("Print 7.", starter_code=None), SYSTEM + "<｜User｜>" + STDIN + "Print 7." + THINK),
    # an empty fn_name is falsy: the stdin instruction
    (code_trace("Print 8.", fn_name="", starter_code=None),
     SYSTEM + "<｜User｜>" + STDIN + "Print 8." + THINK),
    # a starter code with a fn_name of null in the JSON
    (trace("code", problem="P.", test_cases='{"fn_name": null}', starter_code="def f():"),
     SYSTEM + "<｜User｜>" + STDIN + "P.\ndef f():" + THINK),
], ids=["math", "puzzle", "biology", "chemistry", "physics", "code-stdin", "code-function",
        "code-no-starter", "code-empty-fn-name", "code-null-fn-name"])
def test_format_openthoughts_as_the_reference(record, expected):
    assert format_openthoughts(record) == expected


def test_format_openthoughts_keeps_text_verbatim():
    record = trace("math", problem="  What is 2 + 3?\n", deepseek_reasoning=f"\n{REASONING}\n\n",
                   deepseek_solution=f"{SOLUTION}\n")
    assert format_openthoughts(record) == (
        SYSTEM + "<｜User｜>Return your final response within \\boxed{}.   What is 2 + 3?\n"
        "<｜Assistant｜><think>\n\n" + REASONING + "\n\n\n</think>\n" + SOLUTION + "\n")


def test_format_openthoughts_options_system_prompt_and_stripping():
    record = trace("math", problem="  What is 2 + 3?\n", deepseek_reasoning=f"\n{REASONING}\n\n",
                   deepseek_solution=f"{SOLUTION}\n")
    assert format_openthoughts(record, system_prompt="", is_stripped=True) == (
        "<｜User｜>Return your final response within \\boxed{}. What is 2 + 3?" + THINK)
    code = code_trace(" Print 7. ", starter_code="  \n")
    assert format_openthoughts(code, system_prompt="S.", is_stripped=True) == (
        "S.<｜User｜>" + STDIN + "Print 7." + THINK)
    code = code_trace("Sum.", fn_name="f", starter_code="def f(x):\n")
    assert format_openthoughts(code, system_prompt="", is_stripped=True) == (
        "<｜User｜>" + FUNCTION + "Sum.\ndef f(x):" + THINK)


def test_format_openthoughts_starter_code_ignored_outside_code():
    assert format_openthoughts(trace("math", starter_code="def f():")) == format_openthoughts(
        trace("math"))


@pytest.mark.parametrize("domain", ["science", "Math", "MATH ", None, ""])
def test_format_openthoughts_refuses_other_domains(domain):
    record = trace(domain, problem="Why is the sky blue, given Rayleigh scattering?")
    with pytest.raises(ValueError, match=r"problem 'Why is the sky blue.*domain=.*'code', 'math',"
                                         r" 'puzzle', 'biology', 'chemistry', 'physics'"):
        format_openthoughts(record)


@pytest.mark.parametrize("test_cases", [None, "", "not json", "[1, 2]"])
def test_format_openthoughts_code_needs_test_cases_json(test_cases):
    with pytest.raises(ValueError, match=r"problem 'Sort the list.'.*test_cases=.*fn_name"):
        format_openthoughts(trace("code", problem="Sort the list.", test_cases=test_cases))


def test_format_openthoughts_bad_fields():
    record = trace()
    del record["deepseek_solution"]
    with pytest.raises(ValueError, match=r"\['deepseek_solution'\].*fields found"):
        format_openthoughts(record)
    with pytest.raises(ValueError, match="deepseek_reasoning=None.*string"):
        format_openthoughts(trace(deepseek_reasoning=None))
    with pytest.raises(ValueError, match="starter_code=3"):
        format_openthoughts(code_trace("P.", starter_code=3))


# --- LMSYS formatting, as the reference renders it --------------------------------------------

def test_format_lmsys_multi_turn_puts_eos_after_non_final_assistant_turns():
    record = {**chat(0), "conversation": [
        {"content": "Hi!", "role": "user"},
        {"content": "Hello. How can I help?", "role": "assistant"},
        {"content": "Name a prime.\nJust one.", "role": "user"},
        {"content": "7", "role": "assistant"},
    ]}
    assert format_lmsys(record) == (
        "<｜User｜>Hi!<｜Assistant｜>Hello. How can I help?" + EOS
        + "<｜User｜>Name a prime.\nJust one.<｜Assistant｜>7"
    )
    assert format_lmsys(record, system_prompt="Be brief.", eos_token="<eos>") == (
        "Be brief.<｜User｜>Hi!<｜Assistant｜>Hello. How can I help?<eos>"
        "<｜User｜>Name a prime.\nJust one.<｜Assistant｜>7"
    )


def test_format_lmsys_keeps_system_turns_and_verbatim_text():
    record = {"conversation": [
        {"content": "You are terse. ", "role": "system"},
        {"content": " Hi \n", "role": "user"},
        {"content": " Hello ", "role": "assistant"},
        {"content": "Bye", "role": "user"},
    ]}
    # the last turn is the user's, so the assistant turn before it is followed by EOS
    assert format_lmsys(record) == (
        "You are terse. <｜User｜> Hi \n<｜Assistant｜> Hello " + EOS + "<｜User｜>Bye")


@pytest.mark.parametrize("record, match", [
    ({"conversation": [{"role": "tool", "content": "x"}]}, "role='tool'.*valid roles"),
    ({"conversation": [{"role": "user", "content": None}]}, "content=None"),
    ({"conversation": []}, "no turns"),
    ({"messages": []}, r"\['conversation'\]"),
])
def test_format_lmsys_errors(record, match):
    with pytest.raises(ValueError, match=match):
        format_lmsys(record)


def test_keep_language():
    records = datasets.Dataset.from_list([chat(0), chat(1, "German"), chat(2), chat(3, "Spanish")])
    kept = keep_language(records)
    assert kept["conversation_id"] == ["c0", "c2"]
    assert keep_language(records, "German")["conversation_id"] == ["c1"]
    with pytest.raises(ValueError, match="language='French'.*German"):
        keep_language(records, "French")
    with pytest.raises(ValueError, match="no 'language' field"):
        keep_language(records.remove_columns("language"))


# --- Loading local data -----------------------------------------------------------------------

RECORDS = [trace("math", problem=f"Problem {i}.") for i in range(5)]


def save_jsonl_file(tmp_path):
    return write_jsonl(tmp_path / "ot.jsonl", RECORDS)


def save_json_array_file(tmp_path):
    path = tmp_path / "ot.json"
    path.write_text(json.dumps(RECORDS))
    return str(path)


def save_parquet_file(tmp_path):
    pd.DataFrame(RECORDS).to_parquet(tmp_path / "ot.parquet")
    return str(tmp_path / "ot.parquet")


def save_parquet_dir(tmp_path):
    """A hub-snapshot layout: data/<split>-*.parquet, with another split beside it."""
    (tmp_path / "snap" / "data").mkdir(parents=True)
    pd.DataFrame(RECORDS[:3]).to_parquet(tmp_path / "snap/data/train-00000-of-00002.parquet")
    pd.DataFrame(RECORDS[3:]).to_parquet(tmp_path / "snap/data/train-00001-of-00002.parquet")
    pd.DataFrame([trace(problem="Held out.")]).to_parquet(tmp_path / "snap/data/test-0.parquet")
    return str(tmp_path / "snap")


def save_jsonl_dir(tmp_path):
    (tmp_path / "lines").mkdir()
    write_jsonl(tmp_path / "lines" / "part-0.jsonl", RECORDS[:2])
    write_jsonl(tmp_path / "lines" / "part-1.jsonl", RECORDS[2:])
    return str(tmp_path / "lines")


def save_dataset_dir(tmp_path):
    datasets.Dataset.from_list(RECORDS).save_to_disk(tmp_path / "saved")
    return str(tmp_path / "saved")


def save_dataset_dict_dir(tmp_path):
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list(RECORDS),
        "test": datasets.Dataset.from_list([trace(problem="Held out.")]),
    }).save_to_disk(tmp_path / "saved_dict")
    return str(tmp_path / "saved_dict")


@pytest.mark.parametrize("save", [
    save_jsonl_file, save_json_array_file, save_parquet_file, save_parquet_dir, save_jsonl_dir,
    save_dataset_dir, save_dataset_dict_dir,
])
def test_load_records_local_formats(tmp_path, save):
    records = load_records(save(tmp_path), required_fields=sources.OPENTHOUGHTS_FIELDS)
    assert isinstance(records, datasets.Dataset)
    assert sorted(records["problem"]) == [f"Problem {i}." for i in range(5)]
    assert set(sources.OPENTHOUGHTS_FIELDS) <= set(records.column_names)


def test_load_records_split_and_n_records(tmp_path):
    assert load_records(save_parquet_dir(tmp_path), split="test")["problem"] == ["Held out."]
    assert load_records(save_dataset_dict_dir(tmp_path), split="test")["problem"] == ["Held out."]
    first = load_records(save_jsonl_file(tmp_path), n_records=2)
    assert first["problem"] == ["Problem 0.", "Problem 1."]
    with pytest.raises(ValueError, match="split='validation'.*splits found"):
        load_records(save_dataset_dict_dir(tmp_path), split="validation")
    with pytest.raises(ValueError, match="n_records=0"):
        load_records(save_jsonl_file(tmp_path), n_records=0)


def test_load_records_path_object(tmp_path):
    save_jsonl_file(tmp_path)
    assert len(load_records(tmp_path / "ot.jsonl")) == 5


@pytest.mark.parametrize("source", [
    "/nonexistent/reasonlens/ot", "./no-such-dir", "~/no-such-reasonlens-data",
    "data/runs/no/such.parquet", "ot-missing.jsonl",
])
def test_load_records_missing_path(source):
    with pytest.raises(FileNotFoundError, match=r"source=.*save_to_disk.*\.parquet"):
        load_records(source)


def test_load_records_unreadable_local(tmp_path):
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="source=.*no dataset or data files"):
        load_records(str(tmp_path / "empty_dir"))
    (tmp_path / "ot.csv").write_text("problem\nx\n")
    with pytest.raises(ValueError, match="source=.*unsupported format"):
        load_records(str(tmp_path / "ot.csv"))
    (tmp_path / "mixed").mkdir()
    write_jsonl(tmp_path / "mixed" / "a.jsonl", RECORDS)
    pd.DataFrame(RECORDS).to_parquet(tmp_path / "mixed" / "b.parquet")
    with pytest.raises(ValueError, match="mixes .parquet and .json"):
        load_records(str(tmp_path / "mixed"))


def test_load_records_missing_fields(tmp_path):
    path = write_jsonl(tmp_path / "partial.jsonl", [{"problem": "p", "domain": "math"}])
    with pytest.raises(ValueError, match=r"\['deepseek_reasoning', 'deepseek_solution'\]"
                                         r".*fields found: \['problem', 'domain'\]"):
        load_records(path, required_fields=sources.OPENTHOUGHTS_FIELDS)


def test_load_records_empty(tmp_path):
    empty = datasets.Dataset.from_list(RECORDS).select([])
    empty.save_to_disk(tmp_path / "empty")
    with pytest.raises(ValueError, match="source=.*no records"):
        load_records(str(tmp_path / "empty"))
    pd.DataFrame(RECORDS).iloc[:0].to_parquet(tmp_path / "empty.parquet")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "empty.json").write_text("[]\n")
    for name in ("empty.parquet", "empty.jsonl", "empty.json"):
        with pytest.raises(ValueError, match="source=.*no records"):
            load_records(str(tmp_path / name))


def test_load_records_skips_empty_files(tmp_path):
    (tmp_path / "shards").mkdir()
    pd.DataFrame(RECORDS).to_parquet(tmp_path / "shards" / "a.parquet")
    pd.DataFrame(RECORDS).iloc[:0].to_parquet(tmp_path / "shards" / "b.parquet")
    assert len(load_records(str(tmp_path / "shards"))) == 5


def test_load_records_hub_id_is_loaded_lazily(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(RECORDS)

    monkeypatch.setattr(sources.datasets, "load_dataset", fake_load_dataset)
    records = load_records(sources.OPENTHOUGHTS_ID, config_name="metadata", n_records=3)
    assert calls == [("open-thoughts/OpenThoughts-114k", "metadata", "train")]
    assert len(records) == 3


# --- SourceMixConfig --------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, match", [
    ({"openthoughts_source": ""}, "openthoughts_source"),
    ({"lmsys_source": None}, "lmsys_source"),
    ({"openthoughts_config": ""}, "openthoughts_config"),
    ({"split": ""}, "split"),
    ({"domains": ("math", "science")}, r"domains=.*'science'.*valid domains"),
    ({"domains": ("math", "math")}, "domains=.*repeated"),
    ({"domains": ()}, "domains=.*non-empty"),
    ({"domains": "math"}, "domains='math'"),
    ({"n_reasoning": 0, "reasoning_fraction": 0.5}, "n_reasoning=0.*reasoning_fraction"),
    ({"n_reasoning": 0, "n_chat": 0}, "n_reasoning=0 and n_chat=0"),
    ({"n_chat": -1}, "n_chat=-1"),
    ({"n_chat": 2.5}, "n_chat=2.5"),
    ({"reasoning_fraction": 1.5}, "reasoning_fraction=1.5"),
    ({"reasoning_fraction": "half"}, "reasoning_fraction='half'"),
    ({"reasoning_fraction": 1.0, "n_chat": -1}, "n_chat=-1"),
    ({"is_english_only": "yes"}, "is_english_only"),
    ({"is_stripped": 1}, "is_stripped"),
    ({"seed": -1}, "seed=-1"),
    ({"seed": True}, "seed=True"),
    ({"system_prompt": None}, "system_prompt"),
    ({"chat_eos_token": None}, "chat_eos_token"),
])
def test_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        SourceMixConfig(**overrides)


def test_config_defaults_are_the_reference():
    cfg = SourceMixConfig()
    assert cfg.domains == ("code", "math", "puzzle", "biology", "chemistry", "physics")
    assert (cfg.n_reasoning, cfg.n_chat, cfg.reasoning_fraction) == (None, None, None)
    assert cfg.is_english_only is False and cfg.is_stripped is False
    assert cfg.system_prompt == SYSTEM and cfg.chat_system_prompt == ""
    assert cfg.chat_eos_token == EOS
    assert SourceMixConfig(domains=["math", "code"]).domains == ("math", "code")


def test_config_round_trip(tmp_path):
    cfg = SourceMixConfig(openthoughts_source=tmp_path / "ot.jsonl", n_reasoning=7, n_chat=3,
                          reasoning_fraction=0.7, seed=5, system_prompt="Be careful.",
                          domains=("math",), is_english_only=True)
    assert cfg.openthoughts_source == str(tmp_path / "ot.jsonl")
    assert SourceMixConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert SourceMixConfig(reasoning_fraction=1.0, n_chat=0).n_chat == 0
    with pytest.raises(ValueError, match="unknown parameter"):
        SourceMixConfig.from_dict({"n_traces": 3})


# --- load_mixed_texts -------------------------------------------------------------------------

def test_mix_by_default_renders_every_record_as_the_reference(mix_paths):
    ot_path, chat_path = mix_paths
    texts = load_mixed_texts(SourceMixConfig(openthoughts_source=ot_path, lmsys_source=chat_path))
    assert list(texts.columns) == ["text", "kind", "source", "record_idx"]
    assert (texts["kind"] == "trace").sum() == 8  # all six domains kept
    chats = texts[texts["kind"] == "chat"].sort_values("record_idx")
    # every language (no English filter), rendered without system prompt
    assert chats["text"].tolist() == [f"<｜User｜>Question {i}?<｜Assistant｜>Answer {i}."
                                      for i in range(8)]
    assert chats["record_idx"].tolist() == list(range(8))
    traces = texts[texts["kind"] == "trace"].set_index("record_idx")["text"]
    assert traces[0] == (SYSTEM + "<｜User｜>Return your final response within \\boxed{}. "
                         "Problem 0." + THINK)
    assert traces[1] == SYSTEM + "<｜User｜>" + STDIN + "Problem 1.\n" + THINK
    assert traces[3] == SYSTEM + "<｜User｜>Problem 3." + THINK  # biology: bare problem
    assert set(texts.loc[texts["kind"] == "trace", "source"]) == {ot_path}


def test_mix_filters_domains_and_language(mix_paths):
    ot_path, chat_path = mix_paths
    cfg = SourceMixConfig(openthoughts_source=ot_path, lmsys_source=chat_path,
                          domains=("puzzle", "math"), is_english_only=True,
                          system_prompt="S.", chat_eos_token="<eos>")
    texts = load_mixed_texts(cfg)
    traces = texts[texts["kind"] == "trace"].sort_values("record_idx")
    # records 0, 2, 6, 7 (math, puzzle, math, puzzle), numbered within the filtered records
    assert traces["record_idx"].tolist() == [0, 1, 2, 3]
    assert traces["text"].tolist() == [
        "S.<｜User｜>Return your final response within \\boxed{}. Problem 0." + THINK,
        "S.<｜User｜>Problem 2." + THINK,
        "S.<｜User｜>Return your final response within \\boxed{}. Problem 6." + THINK,
        "S.<｜User｜>Problem 7." + THINK,
    ]
    assert (texts["kind"] == "chat").sum() == 6


def test_mix_names_the_record_it_cannot_render(tmp_path):
    ot_path = write_jsonl(tmp_path / "ot.jsonl",
                          [trace("math"), trace("code", problem="Broken.", test_cases="oops")])
    cfg = SourceMixConfig(openthoughts_source=ot_path, n_chat=0)
    with pytest.raises(ValueError, match=r"Record 1 of source=.*ot.jsonl.*'Broken.'"):
        load_mixed_texts(cfg)
    with pytest.raises(ValueError, match=r"domains=\['physics'\]; domains found: \['code', 'math'"):
        load_mixed_texts(cfg.replace(domains=("physics",)))


@pytest.mark.parametrize("n_reasoning, n_chat, fraction, expected", [
    (None, None, None, (8, 8)),  # the reference: everything
    (3, None, None, (3, 8)),
    (4, 4, 0.5, (4, 4)),  # option: balanced by documents; both pools used in full
    (8, 3, 0.5, (3, 3)),  # chats run short: traces cut to match
    (2, 6, 0.25, (2, 6)),
    (8, 6, 0.75, (8, 3)),
    (8, 20, 0.5, (8, 8)),  # only eight chats exist
    (5, 0, 1.0, (5, 0)),
    (0, 6, 0.0, (0, 6)),
    (0, 6, None, (0, 6)),
])
def test_mix_proportions(mix_paths, n_reasoning, n_chat, fraction, expected):
    ot_path, chat_path = mix_paths
    cfg = SourceMixConfig(openthoughts_source=ot_path, lmsys_source=chat_path,
                          n_reasoning=n_reasoning, n_chat=n_chat, reasoning_fraction=fraction)
    texts = load_mixed_texts(cfg)
    counts = texts["kind"].value_counts()
    assert (counts.get("trace", 0), counts.get("chat", 0)) == expected
    assert set(texts.loc[texts["kind"] == "trace", "source"]) <= {ot_path}
    assert set(texts.loc[texts["kind"] == "chat", "source"]) <= {chat_path}
    assert texts["text"].is_unique
    for kind in ("trace", "chat"):
        assert texts.loc[texts["kind"] == kind, "record_idx"].is_unique


def test_mix_is_seeded(mix_paths):
    ot_path, chat_path = mix_paths
    cfg = SourceMixConfig(openthoughts_source=ot_path, lmsys_source=chat_path, n_reasoning=5,
                          n_chat=5, seed=3)
    scramble_global_rngs(1)
    first = load_mixed_texts(cfg)
    scramble_global_rngs(2)  # the mix depends on cfg.seed alone, not on the global RNGs
    again = load_mixed_texts(cfg)
    pd.testing.assert_frame_equal(first, again)
    other = load_mixed_texts(cfg.replace(seed=4))
    assert list(other["text"]) != list(first["text"])
    assert list(first["kind"]) != sorted(first["kind"])  # traces and chats are interleaved


def test_mix_skips_unused_source(mix_paths):
    ot_path, _ = mix_paths
    cfg = SourceMixConfig(openthoughts_source=ot_path, lmsys_source="/no/such/chat.jsonl",
                          n_reasoning=3, n_chat=0)
    assert list(load_mixed_texts(cfg)["kind"]) == ["trace"] * 3
    with pytest.raises(FileNotFoundError, match="source='/no/such/chat.jsonl'"):
        load_mixed_texts(cfg.replace(n_chat=None))


# --- the stratified extraction subset ---------------------------------------------------------

DOMAIN_SIZES = {"code": 10, "math": 3, "puzzle": 8, "biology": 2, "chemistry": 5, "physics": 12}


def subset_records() -> list[dict]:
    """40 records of uneven domains, interleaved, plus two of a domain the reference drops."""
    remaining = dict(DOMAIN_SIZES)
    domains = []
    while any(remaining.values()):
        for domain in DOMAIN_SIZES:
            if remaining[domain]:
                remaining[domain] -= 1
                domains.append(domain)
    records = [code_trace(f"Problem {i}.") if domain == "code"
               else trace(domain, problem=f"Problem {i}.") for i, domain in enumerate(domains)]
    records.insert(5, trace("other", problem="Dropped 1."))
    records.insert(20, trace("other", problem="Dropped 2."))
    return records


def reference_subset(records: list[dict], num_samples: int, domains: tuple, seed=42) -> list:
    """prepare_openthoughts_subset.py's selection, step by step with the datasets library."""
    dataset = datasets.Dataset.from_list(records)
    dataset = dataset.filter(lambda sample: sample["domain"] in domains)
    dataset = dataset.add_column("orig_idx", list(range(len(dataset))))
    per_domain = num_samples // len(domains)
    subsets, selected = [], set()
    for domain in domains:
        domain_ds = dataset.filter(lambda x: x["domain"] == domain).shuffle(seed=seed)
        domain_subset = domain_ds.select(range(min(len(domain_ds), per_domain)))
        subsets.append(domain_subset)
        selected.update(domain_subset["orig_idx"])
    total = sum(map(len, subsets))
    if total < num_samples:
        remaining = dataset.filter(lambda x: x["orig_idx"] not in selected)
        subsets.append(remaining.select(range(num_samples - total)))
    return datasets.concatenate_datasets(subsets)["problem"]


def test_stratified_subset_follows_the_reference(tmp_path):
    records = subset_records()
    kept = [r for r in records if r["domain"] != "other"]
    domains = sources.OPENTHOUGHTS_DOMAINS
    # 24 // 6 = 4 per domain: code 4, math 3 (all it has), puzzle 4, biology 2, chemistry 4,
    # physics 4 = 21, then the 3 earliest records not yet chosen
    indices = stratified_indices([r["domain"] for r in kept], 24, domains, seed=42)
    chosen = [kept[i] for i in indices]
    assert [r["domain"] for r in chosen[:21]] == (
        ["code"] * 4 + ["math"] * 3 + ["puzzle"] * 4 + ["biology"] * 2 + ["chemistry"] * 4
        + ["physics"] * 4)
    assert len(set(indices)) == 24
    first_unchosen = [i for i in range(len(kept)) if i not in set(indices[:21])][:3]
    assert indices[21:] == first_unchosen
    assert [r["problem"] for r in chosen] == reference_subset(records, 24, domains)
    # another order of domains and another seed, as the reference would take them
    other = ("physics", "math", "code")
    kept = [r for r in records if r["domain"] in other]
    indices = stratified_indices([r["domain"] for r in kept], 12, other, seed=7)
    assert [kept[i]["problem"] for i in indices] == reference_subset(records, 12, other, seed=7)


def test_stratified_subset_runs_short_with_a_warning(caplog):
    with caplog.at_level("WARNING", logger="reasonlens.sources"):
        indices = stratified_indices(["math", "code", "math"], 10, ("math", "code"))
    assert sorted(indices) == [0, 1, 2] and indices[-1] == 1  # math first, then code
    assert "n_samples=10 but only 3 records" in caplog.text
    with pytest.raises(ValueError, match="n_samples=0"):
        stratified_indices(["math"], 0)


def test_load_extraction_texts_renders_the_subset_in_order(tmp_path):
    records = subset_records()
    path = write_jsonl(tmp_path / "ot.jsonl", records)
    frame = load_extraction_texts(ExtractionSetConfig(openthoughts_source=path, n_samples=24))
    assert list(frame.columns) == ["text", "domain", "record_idx"]
    problems = reference_subset(records, 24, sources.OPENTHOUGHTS_DOMAINS)
    by_problem = {r["problem"]: r for r in records}
    assert frame["text"].tolist() == [format_openthoughts(by_problem[p]) for p in problems]
    assert frame["text"].iloc[0].startswith(SYSTEM + "<｜User｜>" + STDIN)
    assert frame["domain"].tolist()[:4] == ["code"] * 4


@pytest.mark.parametrize("overrides, match", [
    ({"n_samples": 0}, "n_samples=0"),
    ({"domains": ("science",)}, "domains=.*science"),
    ({"seed": -2}, "seed=-2"),
    ({"openthoughts_source": ""}, "openthoughts_source"),
    ({"is_stripped": "no"}, "is_stripped"),
])
def test_extraction_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        ExtractionSetConfig(**overrides)


def test_extraction_config_defaults_and_round_trip():
    cfg = ExtractionSetConfig()
    assert (cfg.n_samples, cfg.seed, cfg.domains) == (10_000, 42, sources.OPENTHOUGHTS_DOMAINS)
    assert cfg.system_prompt == SYSTEM
    again = ExtractionSetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
