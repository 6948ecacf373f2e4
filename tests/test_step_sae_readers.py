"""Tests of step_sae/readers.py: the step data readers in the exact formats of Miaow-Lab/SSAE.

Every expected step and context string below was worked out by hand from the reference code
(github.com/Miaow-Lab/SSAE at 911d4d3, "R"); each test names the R lines it follows.
"""

import json
import re
import threading

import pytest

from reasonlens.step_sae import readers

TOM = {"question": "Tom has 3 apples and buys 2 more. How many now?",
       "answer": "Tom buys 2 more.\nHe has 3 + 2 = 5 apples.\n#### 5"}


def write_jsonl(tmp_path, records, name="steps.json"):
    """Write records (dicts, or raw strings written as they are) one per line."""
    path = tmp_path / name
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def rows(table):
    return list(zip(table.step_idx, table.step, table.context))


# ------------------------------------------------------------------------------------ GSM8K


def test_gsm8k_merges_the_last_two_lines_and_joins_contexts_without_separator(tmp_path):
    # dataloader.py:25-28 split on "\n" and rejoin the last two pieces; line 18: the context is
    # question + " " + "".join(earlier pieces).
    table = readers.read_gsm8k_steps(write_jsonl(tmp_path, [dict(TOM, id=7)]))
    q = TOM["question"]
    assert list(table.columns) == list(readers.TABLE_COLUMNS)
    assert rows(table) == [
        (0, "Tom buys 2 more.", q + " "),
        (1, "He has 3 + 2 = 5 apples.\n#### 5", q + " Tom buys 2 more."),
    ]
    assert table.final_answer.tolist() == ["5", "5"]
    assert table.problem_id.tolist() == [0, 0] and table.solution_idx.tolist() == [0, 0]


def test_gsm8k_three_lines_run_together_in_the_context(tmp_path):
    # dataloader.py:18: no separator between earlier steps (the audit's "Q2? A is 3.B is 4.").
    record = {"question": "Q2?", "answer": "A is 3.\nB is 4.\nSo 7.\n#### 7"}
    table = readers.read_gsm8k_steps(write_jsonl(tmp_path, [TOM, record]))
    second = table[table.problem_id == 1]
    assert rows(second) == [(0, "A is 3.", "Q2? "), (1, "B is 4.", "Q2? A is 3."),
                            (2, "So 7.\n#### 7", "Q2? A is 3.B is 4.")]


def test_gsm8k_one_line_answer_splits_on_period_space_and_drops_it(tmp_path):
    # dataloader.py:27-30: no "\n" -> sentences[-2] raises -> answer.split(". "), no merge.
    record = {"question": "Q?", "answer": "A is 3. B is 4. #### 7"}
    table = readers.read_gsm8k_steps(write_jsonl(tmp_path, [record]))
    assert rows(table) == [(0, "A is 3", "Q? "), (1, "B is 4", "Q? A is 3"),
                           (2, "#### 7", "Q? A is 3B is 4")]
    assert table.final_answer.tolist() == ["7"] * 3


def test_gsm8k_blank_pieces_are_skipped_as_steps_but_stay_in_later_contexts(tmp_path):
    # dataloader.py:25: one replace pass turns "\n\n\n" into "\n\n" (a blank piece remains);
    # line 15 skips blank pieces as steps; line 18 still joins them (the "  ") into contexts.
    record = {"question": "Q", "answer": "Step one.\n\n\nStep two.\n  \nStep three.\n#### 9"}
    table = readers.read_gsm8k_steps(write_jsonl(tmp_path, [record]))
    assert rows(table) == [(0, "Step one.", "Q "), (1, "Step two.", "Q Step one."),
                           (2, "Step three.\n#### 9", "Q Step one.Step two.  ")]


def test_gsm8k_trailing_newline_stays_on_the_merged_last_step(tmp_path):
    # dataloader.py:28: ["Only step.", ""] merge into "Only step.\n"; no "####" line.
    table = readers.read_gsm8k_steps(write_jsonl(tmp_path, [{"question": "Q", "answer":
                                                             "Only step.\n"}]))
    assert rows(table) == [(0, "Only step.\n", "Q ")]
    assert table.final_answer.tolist() == [None]


def test_split_gsm8k_answer_keeps_blank_pieces():
    assert readers.split_gsm8k_answer("a\n\nb\n#### 1") == ["a", "b\n#### 1"]
    assert readers.split_gsm8k_answer("a\n\n\nb\nc") == ["a", "", "b\nc"]
    assert readers.split_gsm8k_answer("x. y.") == ["x", "y."]


def test_reader_splits_lines_only_at_newlines_like_r(tmp_path):
    # R iterates the file object (dataloader.py:8): U+2028 inside a string does not end a line,
    # while str.splitlines would cut the record in two.
    record = {"question": "Q\u2028more", "answer": "a\nb"}
    path = tmp_path / "u.json"
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    table = readers.read_gsm8k_steps(path)
    assert rows(table) == [(0, "a\nb", "Q\u2028more ")]


# ------------------------------------------------------------------------------------ Numina


def run_with_deadline(fn, *args, seconds=10.0):
    """fn(*args) in a daemon thread; fail (instead of hanging) if it has not returned in time."""
    result = []
    worker = threading.Thread(target=lambda: result.append(fn(*args)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"{fn.__name__} did not return within {seconds} s"
    return result[0]


def test_numina_splitter_terminates_and_cuts_sentences_as_r_intends():
    # dataloader_numina.py:60-74 (with the loop index advanced): cut after [.?!] + whitespace +
    # capital; decimals and lower-case continuations stay; "Mr. Smith" is cut (R's regex knows
    # no abbreviations); after a number word ("Step 1.") no cut, and the whitespace is lost.
    # A number word before the mark blocks the cut even mid-prose ("is 2! Is" stays whole).
    assert run_with_deadline(readers.split_numina_solution, "y is 2! Is it? Yes.") == [
        "y is 2!Is it?", "Yes."]
    text = ("We have x = 3.5 today. Then y doubles! Is z odd? Yes. Mr. Smith checks it, "
            "e.g. the sum. Step 1. Add them.")
    assert run_with_deadline(readers.split_numina_solution, text) == [
        "We have x = 3.5 today.", "Then y doubles!", "Is z odd?", "Yes.", "Mr.",
        "Smith checks it, e.g. the sum.", "Step 1.Add them."]


def test_numina_splitter_groups_lines_by_structure_and_merges_open_sentences():
    # dataloader_numina.py:30-51: a colon-ended block takes the next line with a space; a list
    # item, a "1. **" heading or a connector line starts a new block. Lines 86-93: a lone
    # connector ("So,") absorbs the next sentence.
    text = "We need:\n- a list item\nHence the sum is 5.\n1. **Check** it.\nSo,\n- done"
    assert run_with_deadline(readers.split_numina_solution, text) == [
        "We need: - a list item", "Hence the sum is 5.", "1. **Check** it.", "So, - done"]
    # Lines 39-40: after a colon even a plain line joins with a space (line 48 would glue it).
    assert run_with_deadline(readers.split_numina_solution, "Note:\nx is one.") == [
        "Note: x is one."]


def test_numina_splitter_keeps_formulas_whole_and_glues_plain_lines_without_space():
    # Line 14/25-28: a display formula is its own block ("3.5 + 1" is not cut); lines 86-93:
    # "note:" absorbs it. Line 48 appends a plain line to the block with no space, so
    # "4.5." + "We" is not cut by line 60 (which needs whitespace); ".  Done" is.
    text = "To find x, note:\n$$x = 3.5 + 1$$\nx equals 4.5.\nWe double it.  Done.\n"
    assert run_with_deadline(readers.split_numina_solution, text) == [
        "To find x, note: $$x = 3.5 + 1$$", "x equals 4.5.We double it.", "Done."]


def test_numina_splitter_on_empty_and_whitespace_text():
    assert run_with_deadline(readers.split_numina_solution, "") == []
    assert run_with_deadline(readers.split_numina_solution, " \n\t") == []
    assert run_with_deadline(readers.split_numina_solution, r"\[a\]") == [r"\[a\]"]


def test_numina_context_accumulates_across_solutions(tmp_path):
    # dataloader_numina.py:118-126: context = head + " " + " ".join(steps[:i]); after each
    # solution head += " " + " ".join(its steps).
    record = {"question": "Find x.", "answer": ["x is two. Then x+1 is 3.", "We get 3."],
              "source": "ignored"}
    table = readers.read_numina_steps(write_jsonl(tmp_path, [record]))
    assert list(zip(table.solution_idx, table.step_idx, table.step, table.context)) == [
        (0, 0, "x is two.", "Find x. "),
        (0, 1, "Then x+1 is 3.", "Find x. x is two."),
        (1, 0, "We get 3.", "Find x. x is two. Then x+1 is 3. "),
    ]
    assert table.final_answer.isna().all()


# ------------------------------------------------------------------------------------ code


def test_opencode_steps_are_unstripped_nonblank_lines(tmp_path):
    # dataloader_opencodeinstruct.py:24-28 drop blank lines only; line 17: context is
    # input + " " + "\n".join(earlier lines).
    record = {"input": "Write add.", "output": "def add(a, b):\n\n    return a + b\n\t\n# done\n"}
    table = readers.read_opencode_steps(write_jsonl(tmp_path, [record]))
    assert rows(table) == [
        (0, "def add(a, b):", "Write add. "),
        (1, "    return a + b", "Write add. def add(a, b):"),
        (2, "# done", "Write add. def add(a, b):\n    return a + b"),
    ]


def test_read_steps_dispatches_and_rejects_unknown_formats(tmp_path):
    path = write_jsonl(tmp_path, [{"input": "P", "output": "a\nb"}])
    assert readers.read_steps(path, "opencode").step.tolist() == ["a", "b"]
    gsm = write_jsonl(tmp_path, [TOM], name="g.json")
    assert readers.read_steps(gsm, "gsm8k").step.tolist() == readers.read_gsm8k_steps(
        gsm).step.tolist()
    with pytest.raises(ValueError, match=r"fmt='gsm'.*\['gsm8k', 'numina', 'opencode'\]"):
        readers.read_steps(path, "gsm")


# ------------------------------------------------------------------------------------ limits


def test_token_limits_are_rs_numbers():
    # dataloader.py:56-57; dataloader_numina.py:137-138; dataloader_opencodeinstruct.py:54-60.
    got = {fmt: (lim.context.max_tokens, lim.context.keep, lim.step.max_tokens, lim.step.keep)
           for fmt, lim in readers.TOKEN_LIMITS.items()}
    assert got == {"gsm8k": (256, "first", 256, "first"), "numina": (256, "last", 128, "first"),
                   "opencode": (256, "last", 256, "first")}
    with pytest.raises(TypeError):
        readers.TOKEN_LIMITS["gsm8k"] = readers.TOKEN_LIMITS["numina"]


def test_apply_token_limits_keeps_the_right_end():
    long_context, long_step = list(range(300)), list(range(1000, 1300))
    contexts, steps = readers.apply_token_limits([long_context, [1, 2]], [long_step, [3]],
                                                 "numina")
    assert contexts == [list(range(44, 300)), [1, 2]]
    assert steps == [list(range(1000, 1128)), [3]]
    contexts, steps = readers.apply_token_limits([long_context], [long_step], "gsm8k")
    assert contexts == [list(range(256))] and steps == [list(range(1000, 1256))]
    contexts, steps = readers.apply_token_limits([long_context], [long_step], "opencode")
    assert contexts == [list(range(44, 300))] and steps == [list(range(1000, 1256))]


def test_token_limit_errors():
    with pytest.raises(ValueError, match="context_ids has 2 rows but step_ids has 1"):
        readers.apply_token_limits([[1], [2]], [[3]], "gsm8k")
    with pytest.raises(ValueError, match=r"fmt='code'.*'opencode'"):
        readers.apply_token_limits([[1]], [[3]], "code")
    with pytest.raises(ValueError, match="keep='middle'"):
        readers.TokenLimit(5, "middle")
    with pytest.raises(ValueError, match="max_tokens=0"):
        readers.TokenLimit(0, "first")


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("fmt, line, message", [
    ("gsm8k", "{not json", "is not valid JSON"),
    ("gsm8k", "[1, 2]", "is a JSON list, not an object"),
    ("gsm8k", '{"question": "Q"}', r"lacks the field 'answer' \(it has \['question'\]\)"),
    ("gsm8k", '{"question": "Q", "answer": 5}', r"field 'answer' is a int \(5\)"),
    ("gsm8k", '{"question": " ", "answer": "a"}', r"field 'question' is empty"),
    ("numina", '{"question": "Q", "answer": "a. B."}', r"field 'answer' is a str"),
    ("numina", '{"question": "Q", "answer": []}', r"field 'answer' is an empty list"),
    ("numina", '{"question": "Q", "answer": ["a", ""]}', r"field 'answer' item 1 is empty"),
    ("numina", '{"question": "Q", "answer": ["a", 3]}', r"field 'answer' item 1 is a int"),
    ("opencode", '{"input": "P", "output": null}', r"field 'output' is a NoneType"),
    ("opencode", '{"question": "P", "answer": "x"}', r"lacks the field 'input'"),
])
def test_malformed_records_name_file_line_field_and_fix(tmp_path, fmt, line, message):
    good = {"gsm8k": TOM, "numina": {"question": "Q", "answer": ["a"]},
            "opencode": {"input": "P", "output": "x"}}[fmt]
    path = write_jsonl(tmp_path, [good, "", line])  # the bad record is on line 3
    with pytest.raises(ValueError, match=re.escape(f"{path}:3") + ".*" + message
                       + ".*Fix or delete that line"):
        readers.read_steps(path, fmt)


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"step_jsonl_path='.*nope\.json' does not exist"):
        readers.read_numina_steps(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="step_jsonl_path"):
        readers.read_gsm8k_steps(tmp_path)  # a directory
    blank = tmp_path / "blank.json"
    blank.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"holds no opencode records"):
        readers.read_opencode_steps(blank)


def test_non_utf8_file_is_a_clear_error(tmp_path):
    path = tmp_path / "latin.json"
    path.write_bytes(b'{"input": "caf\xe9", "output": "x"}\n')
    with pytest.raises(ValueError, match=re.escape(str(path)) + r" is not UTF-8.*line 1"):
        readers.read_opencode_steps(path)
