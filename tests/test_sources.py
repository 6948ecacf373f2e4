"""Tests for reasonlens.sources: R1 formatting, local loaders, errors, and the seeded mix."""

from __future__ import annotations

import json

import datasets
import pandas as pd
import pytest
from helpers import scramble_global_rngs

from reasonlens import sources
from reasonlens.sources import (
    SourceMixConfig,
    format_lmsys,
    format_openthoughts,
    keep_language,
    load_mixed_texts,
    load_records,
)

REASONING = "Hmm, 2 + 3 is 5. Wait, let me check: 5 - 3 = 2. Yes."
SOLUTION = "The sum is \\boxed{5}."


def trace(domain: str = "math", problem: str = "What is 2 + 3?", starter_code: str = "",
          **overrides) -> dict:
    """An OpenThoughts-114k (metadata config) record."""
    record = {
        "problem": problem, "deepseek_reasoning": REASONING, "deepseek_solution": SOLUTION,
        "domain": domain, "test_cases": "", "starter_code": starter_code,
    }
    return {**record, **overrides}


def chat(index: int, language: str = "English") -> dict:
    """An LMSYS-Chat-1M record with a two-turn conversation."""
    return {
        "conversation_id": f"c{index}", "model": "vicuna-13b", "turn": 1, "language": language,
        "conversation": [
            {"role": "user", "content": f"Question {index}?"},
            {"role": "assistant", "content": f"Answer {index}."},
        ],
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
    """Eight traces and eight chats (six English) as jsonl files."""
    domains = ["math", "code", "puzzle", "science"]
    traces = [trace(domains[i % 4], problem=f"Problem {i}.") for i in range(8)]
    chats = [chat(i, "English" if i < 6 else "German") for i in range(8)]
    return write_jsonl(tmp_path / "ot.jsonl", traces), write_jsonl(tmp_path / "chat.jsonl", chats)


# --- OpenThoughts formatting ------------------------------------------------------------------

THINK = "<think>\n" + REASONING + "\n</think>\n" + SOLUTION


@pytest.mark.parametrize("record, expected", [
    (trace("math"),
     "<｜User｜>Return your final response within \\boxed{}. What is 2 + 3?<｜Assistant｜>"
     + THINK),
    (trace("science", problem="Why is the sky blue?"),
     "<｜User｜>Answer this science question, explaining your reasoning before the final answer."
     " Why is the sky blue?<｜Assistant｜>" + THINK),
    (trace("puzzle", problem="Cross the river."),
     "<｜User｜>Solve this puzzle step by step, then state your final answer clearly."
     " Cross the river.<｜Assistant｜>" + THINK),
    (trace("code", problem="Read n and print n + 1."),
     "<｜User｜>Generate an executable Python function generated from the given prompt. It reads"
     " its input from stdin and prints the answer to stdout; call it once right after its"
     " definition.\n\nRead n and print n + 1.<｜Assistant｜>" + THINK),
    (trace("code", problem="Return the sum of nums.",
           starter_code="class Solution:\n    def total(self, nums):\n"),
     "<｜User｜>Generate an executable Python function generated from the given prompt. Complete"
     " the starter code given after the problem and return only the function body, without"
     " calling it.\n\nReturn the sum of nums.\n\nclass Solution:\n    def total(self, nums):"
     "<｜Assistant｜>" + THINK),
    (trace("biology"), "<｜User｜>What is 2 + 3?<｜Assistant｜>" + THINK),
    (trace(None), "<｜User｜>What is 2 + 3?<｜Assistant｜>" + THINK),
], ids=["math", "science", "puzzle", "code-stdin", "code-starter", "unknown-domain", "no-domain"])
def test_format_openthoughts_domains(record, expected):
    assert format_openthoughts(record) == expected


def test_format_openthoughts_system_prompt_and_whitespace():
    record = trace("MATH ", problem="  What is 2 + 3?\n", deepseek_reasoning=f"\n{REASONING}\n\n",
                   deepseek_solution=f"{SOLUTION}\n")
    text = format_openthoughts(record, system_prompt="You are careful.")
    assert text == ("You are careful.<｜User｜>Return your final response within \\boxed{}. "
                    "What is 2 + 3?<｜Assistant｜>" + THINK)


def test_format_openthoughts_starter_code_ignored_outside_code():
    assert format_openthoughts(trace("math", starter_code="def f():")) == format_openthoughts(
        trace("math"))


def test_format_openthoughts_missing_field():
    record = trace()
    del record["deepseek_solution"]
    with pytest.raises(ValueError, match=r"\['deepseek_solution'\].*fields found"):
        format_openthoughts(record)


# --- LMSYS formatting -------------------------------------------------------------------------

def test_format_lmsys_multi_turn():
    record = {"conversation": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": "Name a prime.\nJust one."},
        {"role": "assistant", "content": "7"},
    ], "language": "English"}
    assert format_lmsys(record) == (
        "<｜User｜>Hi!<｜Assistant｜>Hello. How can I help?"
        "<｜User｜>Name a prime.\nJust one.<｜Assistant｜>7"
    )
    assert format_lmsys(record, system_prompt="Be brief.").startswith("Be brief.<｜User｜>Hi!")
    assert "<think>" not in format_lmsys(record)


@pytest.mark.parametrize("record, match", [
    ({"conversation": [{"role": "system", "content": "x"}]}, "role='system'.*valid roles"),
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
    ({"n_reasoning": 0}, "n_reasoning=0.*reasoning_fraction"),
    ({"n_chat": -1}, "n_chat=-1"),
    ({"n_chat": 2.5}, "n_chat=2.5"),
    ({"reasoning_fraction": 1.5}, "reasoning_fraction=1.5"),
    ({"reasoning_fraction": "half"}, "reasoning_fraction='half'"),
    ({"reasoning_fraction": 1.0, "n_chat": -1}, "n_chat=-1"),
    ({"is_english_only": "yes"}, "is_english_only"),
    ({"seed": -1}, "seed=-1"),
    ({"seed": True}, "seed=True"),
    ({"system_prompt": None}, "system_prompt"),
])
def test_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        SourceMixConfig(**overrides)


def test_config_round_trip(tmp_path):
    cfg = SourceMixConfig(openthoughts_source=tmp_path / "ot.jsonl", n_reasoning=7, n_chat=3,
                          reasoning_fraction=0.7, seed=5, system_prompt="Be careful.")
    assert cfg.openthoughts_source == str(tmp_path / "ot.jsonl")
    assert SourceMixConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert SourceMixConfig(reasoning_fraction=1.0, n_chat=0).n_chat == 0
    with pytest.raises(ValueError, match="unknown parameter"):
        SourceMixConfig.from_dict({"n_traces": 3})


# --- load_mixed_texts -------------------------------------------------------------------------

@pytest.mark.parametrize("n_reasoning, n_chat, fraction, expected", [
    (4, 4, 0.5, (4, 4)),  # both pools used in full
    (8, 3, 0.5, (3, 3)),  # chats run short: traces cut to match
    (2, 6, 0.25, (2, 6)),
    (8, 6, 0.75, (8, 3)),
    (8, 20, 0.5, (6, 6)),  # only six English chats exist
    (5, 0, 1.0, (5, 0)),
    (0, 6, 0.0, (0, 6)),
])
def test_mix_proportions(mix_paths, n_reasoning, n_chat, fraction, expected):
    ot_path, chat_path = mix_paths
    cfg = SourceMixConfig(openthoughts_source=ot_path, lmsys_source=chat_path,
                          n_reasoning=n_reasoning, n_chat=n_chat, reasoning_fraction=fraction)
    texts = load_mixed_texts(cfg)
    assert list(texts.columns) == ["text", "kind", "source"]
    counts = texts["kind"].value_counts()
    assert (counts.get("trace", 0), counts.get("chat", 0)) == expected
    assert set(texts.loc[texts["kind"] == "trace", "source"]) <= {ot_path}
    assert set(texts.loc[texts["kind"] == "chat", "source"]) <= {chat_path}
    assert texts["text"].is_unique


def test_mix_content_and_english_filter(mix_paths):
    ot_path, chat_path = mix_paths
    cfg = SourceMixConfig(openthoughts_source=ot_path, lmsys_source=chat_path, n_reasoning=8,
                          n_chat=8, reasoning_fraction=0.5, system_prompt="S.")
    texts = load_mixed_texts(cfg)
    chats = texts.loc[texts["kind"] == "chat", "text"]
    assert sorted(chats) == sorted(f"S.<｜User｜>Question {i}?<｜Assistant｜>Answer {i}."
                                   for i in range(6))
    traces = texts.loc[texts["kind"] == "trace", "text"]
    assert all(t.startswith("S.<｜User｜>") and "<think>\n" in t for t in traces)
    everyone = load_mixed_texts(cfg.replace(is_english_only=False))
    assert (everyone["kind"] == "chat").sum() == 8


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
                          n_reasoning=3, n_chat=0, reasoning_fraction=1.0)
    assert list(load_mixed_texts(cfg)["kind"]) == ["trace"] * 3
    with pytest.raises(FileNotFoundError, match="source='/no/such/chat.jsonl'"):
        load_mixed_texts(cfg.replace(reasoning_fraction=0.5, n_chat=3))
