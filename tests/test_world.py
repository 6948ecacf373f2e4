import dataclasses
import re

import pandas as pd
import pytest
from helpers import build_world_config

from reasonlens import constants as K
from reasonlens.world import (FAMILIES, WorldConfig, generate_world, get_family,
                              is_followed_by_reflection)


def test_same_seed_gives_byte_identical_tables(tmp_path):
    cfg = build_world_config()
    paths = []
    for run in range(2):
        world = generate_world(cfg)
        for name in ("problems", "steps", "documents"):
            path = tmp_path / f"{name}{run}.parquet"
            getattr(world, name).to_parquet(path, index=False)
            paths.append(path)
    for first, second in zip(paths[:3], paths[3:]):
        assert first.read_bytes() == second.read_bytes()


def test_other_seed_gives_other_problems():
    a = generate_world(build_world_config(seed=1)).problems.question
    b = generate_world(build_world_config(seed=2)).problems.question
    assert set(a) != set(b)


def test_splits_share_no_problem(world):
    by_split = world.problems.groupby("split")["question"].apply(set)
    assert set(by_split.index) == {"train", "val", "test"}
    assert not (by_split["train"] & by_split["val"] or by_split["train"] & by_split["test"]
                or by_split["val"] & by_split["test"])
    # documents inherit their problem's split
    docs = world.documents[world.documents.problem_id >= 0].merge(
        world.problems[["problem_id", "split"]], on="problem_id", suffixes=("", "_p"))
    assert (docs.split == docs.split_p).all()


# An independent solver: it reads the question text as a person would and works the answer out
# one unit at a time, without the families' fold code (update/states), so a wrong update rule,
# a wrong stored answer or a question that says something else all fail.
COUNT_WORDS = "zero one two three four five six seven eight nine".split()


def solve_question(family: str, question: str) -> tuple[int, int]:
    """``(answer, n_items)`` of a world question, from its text alone."""
    ints = [int(x) for x in re.findall(r"\d+", question)]
    counts = [COUNT_WORDS.index(w) for w in re.findall(r"[a-z]+", question) if w in COUNT_WORDS]
    if family == "arithmetic":  # "Start at 17 and add 8, four times." / "... subtract 6 from 84 ..."
        d = int(re.search(r"(?:add|subtract) (\d+)", question).group(1))
        (start,) = [x for x in ints if x != d] or [d]
        step = 1 if "add" in question else -1
        value = start
        for _ in range(counts[0] * d):
            value += step
        return value, counts[0]
    if family == "alternating":  # "Start at 40, then add 7 and subtract 3 in turn, four steps"
        start, a, b = ints
        value = start
        for i in range(counts[0]):
            value = value + a if i % 2 == 0 else value - b
        return value, counts[0]
    if family == "clock":  # "It is 9 o'clock. What time is it after 5 hours, four times over?"
        hour, d = ints
        for _ in range(counts[0] * d):
            hour = 1 if hour == 12 else hour + 1
        return hour, counts[0]
    if family == "maximum":
        return max(ints), len(ints) - 1
    if family == "counting":
        return sum(1 for x in ints if x % 2 == 0), len(ints)
    raise AssertionError(family)


@pytest.fixture(scope="module")
def every_family_world():
    return generate_world(build_world_config(families=tuple(sorted(FAMILIES)), n_problems=100))


def test_every_answer_is_what_the_question_asks(every_family_world):
    problems = every_family_world.problems
    assert set(problems.family) == set(FAMILIES)
    for row in problems.itertuples():
        assert solve_question(row.family, row.question) == (row.answer, row.n_items), row.question


def test_examples_solved_by_hand():
    assert solve_question("arithmetic", "What do you get if you subtract 6 from 84 five times?") \
        == (54, 5)
    assert solve_question("alternating", "Start at 74, then add 8 and subtract 5 in turn, four "
                                         "steps in all.") == (80, 4)
    assert solve_question("clock", "A clock shows 12. Move it forward 2 hours, four times.") \
        == (8, 4)
    assert solve_question("clock", "It is 9 o'clock. What time is it after 5 hours, three times "
                                   "over?") == (12, 3)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_samples_solvable_problems_and_wrong_results_are_wrong(name):
    import random
    family = get_family(name)
    for i in range(50):
        problem = family.sample(random.Random(i), 4)
        assert solve_question(name, problem.question) == (problem.answer, 4), problem.question
        for state, item in zip([problem.start] + family.states(problem)[:-1], problem.items):
            right = family.update(problem, state, item)
            assert family.wrong(random.Random(i), problem, state, item) != right
            if family.is_hard(problem, state, item):
                assert family.slip(problem, state, item) != right
                assert family.hardness(problem, state, item) in (1, 2)
            else:
                assert family.hardness(problem, state, item) == 0
            route = family.route(problem, state, item)
            # a route's claims all hold, and the last one ends at the right result
            assert all(family.check_claims(claim) for claim in route), route
            assert not route or route[-1].endswith(f" {right}"), route


def test_hardness_slip_and_route_worked_by_hand():
    """54 + 8 carries (operand 8 looks hard), 57 + 3 carries (3 looks easy), 52 + 3 does not;
    the slip drops the carry; the route goes through the next ten without carrying."""
    arithmetic, clock = get_family("arithmetic"), get_family("clock")
    assert [arithmetic.hardness(None, s, i) for s, i in
            ((54, ("+", 8)), (57, ("+", 3)), (52, ("+", 3)), (54, ("-", 8)), (52, ("-", 3)),
             (55, ("-", 3)))] == [2, 1, 0, 2, 1, 0]
    assert arithmetic.slip(None, 54, ("+", 8)) == 52 and arithmetic.slip(None, 54, ("-", 8)) == 56
    assert arithmetic.route(None, 54, ("+", 8)) == ("54 + 10 = 64", "64 - 2 = 62")
    assert arithmetic.route(None, 54, ("-", 8)) == ("54 - 10 = 44", "44 + 2 = 46")
    assert arithmetic.route(None, 52, ("+", 3)) == ()
    hardness = [clock.hardness(None, s, i) for s, i in ((9, 5), (9, 7), (9, 2), (12, 5))]
    assert hardness == [1, 2, 0, 0]
    assert clock.slip(None, 9, 5) == 1  # one hour short of 2
    assert clock.route(None, 9, 5) == ("9 and 3 hours make 12", "12 and 2 hours make 2")


# What each compute step claims, parsed from its text, and the claim's truth worked out by hand.
CLAIMS = {
    "arithmetic": (r"(\d+) ([+-]) (\d+) = (-?\d+)",
                   lambda a, op, d, r: int(r) == (int(a) + int(d) if op == "+" else int(a) - int(d))),
    "clock": (r"(\d+) and (\d+) hours make (\d+)",
              lambda a, d, r: int(r) == (int(a) + int(d) - 1) % 12 + 1),
    "maximum": (r"(\d+) or (\d+): (\d+) is larger", lambda a, b, r: int(r) == max(int(a), int(b))),
    "counting": (r"(\d+) is (even|odd), so (\d+)", None),
}
CLAIMS["alternating"] = CLAIMS["arithmetic"]


def test_step_labels_match_their_claims(every_family_world):
    """Compute, check and correct steps: ``is_correct`` is the truth of the claim in the text."""
    steps = every_family_world.steps
    claiming = steps[steps.kind.isin(["compute", "check", "correct"])]
    assert (~claiming.is_correct).any() and claiming.is_correct.any()
    assert set(claiming.kind) == {"compute", "check", "correct"}
    for _, trace in claiming.groupby("problem_id"):
        family = trace.family.iloc[0]
        pattern, truth = CLAIMS[family]
        state = before = 0  # the running count (counting only) and its value before the item
        for row in trace.itertuples():
            found = re.search(pattern, row.text).groups()
            if family == "counting":  # the count goes up by one exactly for an even number
                item, parity, result = int(found[0]), found[1], int(found[2])
                assert parity == ("even" if item % 2 == 0 else "odd"), row.text
                before = state if row.kind == "compute" else before
                is_true = result == before + (item % 2 == 0)
                state = result
            else:
                is_true = truth(*found)
            assert bool(row.is_correct) == is_true, row.text
            assert row.kind == "compute" or is_true, row.text  # checks and fixes are right


def test_traces_state_the_answer_they_are_labelled_with(world):
    problems = world.problems.set_index("problem_id")
    docs = world.documents
    for row in docs[docs.kind == "trace"].itertuples():
        stated = int(re.findall(r"answer is (-?\d+)", row.text)[-1])
        assert stated == problems.trace_answer[row.problem_id]
        assert problems.trace_is_correct[row.problem_id] == (
            stated == problems.answer[row.problem_id])
    for row in docs[docs.kind == "plain"].itertuples():
        assert row.text.endswith(f"The answer is {problems.answer[row.problem_id]}.{K.EOS}")


def test_step_labels_are_consistent_with_answers(world):
    steps, problems = world.steps, world.problems.set_index("problem_id")
    last = steps.groupby("problem_id").tail(1).set_index("problem_id")
    assert (last.kind == "conclude").all()
    assert (last.is_correct == problems.loc[last.index, "trace_is_correct"]).all()
    # a trace ends wrong only when some mistake went uncorrected (a later maximum can heal one)
    n_uncaught = problems.n_mistakes - problems.n_corrections
    assert (n_uncaught[~problems.trace_is_correct] > 0).all()
    assert (~problems.trace_is_correct).any()
    # corrections follow a wrong compute step and are themselves correct
    prev = steps.shift(1)
    corrections = steps.kind == "correct"
    assert (prev[corrections].kind == "compute").all()
    assert (~prev[corrections].is_correct.astype(bool)).all()
    assert steps[corrections].is_correct.all()


def test_slip_and_reflect_rates_shape_the_traces():
    clean = generate_world(build_world_config(mistake_rate=0.0, slip_rate=0.0)).problems
    assert clean.trace_is_correct.all() and (clean.n_mistakes == 0).all()
    never = generate_world(build_world_config(slip_rate=1.0, reflect_rates=(0, 0, 0))).problems
    always = generate_world(build_world_config(slip_rate=1.0, reflect_rates=(1, 1, 1))).problems
    assert never.trace_is_correct.mean() < 0.6 and never.n_reflections.sum() == 0
    assert always.trace_is_correct.all()
    assert always.n_corrections.sum() == always.n_mistakes.sum() > 0


def test_a_step_is_reflected_on_when_the_next_line_of_its_own_trace_checks_it():
    steps = pd.DataFrame({"problem_id": [7, 7, 7, 7, 8, 8],
                          "kind": ["compute", "check", "compute", "compute", "correct", "compute"]})
    assert is_followed_by_reflection(steps).tolist() == [True, False, False, False, False, False]


def test_reflection_follows_how_hard_a_step_looks_not_whether_it_slipped():
    """Reflection rates per hardness match ``reflect_rates``; on hard steps they are the same
    after a slip as after a right step (the writer cannot see its slip), and every reflection
    after a hard step goes by the route and ends right."""
    world = generate_world(build_world_config(n_problems=2000))
    steps = world.steps
    compute = steps.assign(is_reflected=is_followed_by_reflection(steps))[
        steps.kind == "compute"]
    rates = compute.groupby("hardness").is_reflected.mean()
    for hardness, expected in enumerate(WorldConfig().reflect_rates):
        assert abs(rates[hardness] - expected) < 0.05, rates
    hard = compute[compute.hardness > 0]
    by_slip = hard.groupby("is_correct").is_reflected.mean()
    assert abs(by_slip[True] - by_slip[False]) < 0.06, by_slip
    assert 0.6 < 1 - hard.is_correct.mean() < 0.8  # slip_rate 0.7
    checks = steps[steps.kind.isin(["check", "correct"]) & (steps.hardness > 0)]
    n_claims = [len(get_family(f).claim_re.findall(t)) for f, t in zip(checks.family, checks.text)]
    assert min(n_claims) == 3  # two route claims and the restated one


def test_reasoning_vocabulary_lives_in_traces(world):
    docs = world.documents
    traces = " ".join(docs[docs.kind == "trace"].text).lower()
    plain = " ".join(docs[docs.kind == "plain"].text).lower()
    for word in K.REASONING_WORDS:
        assert word in traces, word
        assert word not in plain.split(K.ASSISTANT.lower())[-1] or word in ("but",), word
    assert all(t.startswith(K.BOS) and t.endswith(K.EOS) for t in docs.text)
    assert all(K.THINK_OPEN in t and K.THINK_CLOSE in t for t in docs[docs.kind == "trace"].text)


def test_unknown_family_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown problem family 'geometry'.*arithmetic"):
        WorldConfig(families=("arithmetic", "geometry"))


@pytest.mark.parametrize("field,value,match", [
    ("mistake_rate", 1.5, "mistake_rate"),
    ("reflect_rates", (0.1, 0.5), "reflect_rates"),
    ("slip_rate", -0.1, "slip_rate"),
    ("max_items", 1, "max_items"),
    ("split_fractions", (0.5, 0.5, 0.5), "split_fractions"),
    ("families", (), "families"),
])
def test_bad_config_names_the_parameter(field, value, match):
    with pytest.raises(ValueError, match=match):
        build_world_config(**{field: value})


def test_too_many_problems_for_the_families_is_a_clear_error():
    with pytest.raises(ValueError, match="n_problems"):
        generate_world(WorldConfig(families=("counting",), n_problems=5000, min_items=1,
                                   max_items=1))


def test_config_round_trip_and_unknown_key():
    cfg = build_world_config(families=("maximum",))
    assert WorldConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown parameter.*'n_problem'.*n_problems"):
        WorldConfig.from_dict({"n_problem": 3})
    assert dataclasses.asdict(cfg)["families"] == ("maximum",)


def test_world_tables_have_the_expected_columns_and_sizes(world):
    assert {"problem_id", "split", "family", "question", "answer", "trace_is_correct"} <= set(
        world.problems.columns)
    assert {"problem_id", "step_idx", "text", "kind", "is_correct", "is_on_track"} <= set(
        world.steps.columns)
    # 150 problems split 0.8/0.1/0.1; one trace and one plain exchange each; 0.3 * 150 chats
    assert world.problems.split.value_counts().to_dict() == {"train": 120, "val": 15, "test": 15}
    assert world.documents.kind.value_counts().to_dict() == {"trace": 150, "plain": 150,
                                                             "chat": 45}
    assert list(world.documents.doc_id) == list(range(345))


def test_check_claims_reads_a_models_own_steps():
    """Hand-computed: the truth of each claim a step states; None when it states none."""
    arithmetic, clock = get_family("arithmetic"), get_family("clock")
    assert arithmetic.check_claims("Maybe 35 + 9 = 44, three to go.") is True
    assert arithmetic.check_claims("35 + 9 = 45, three to go.") is False
    assert arithmetic.check_claims("Wait. But 54 - 8 = 46, not 47.") is True  # the fix's claim
    assert arithmetic.check_claims("Let me keep a running total.") is None
    assert arithmetic.check_claims("Therefore the answer is 93.") is None
    assert clock.check_claims("9 and 5 hours make 2, done.") is True
    assert clock.check_claims("9 and 5 hours make 14, done.") is False
    assert get_family("maximum").check_claims("47 or 82: 47 is larger.") is False
    assert get_family("counting").check_claims("7 is even, so 3.") is False  # parity only
    assert get_family("counting").check_claims("12 is even, so 3.") is True


def test_check_claims_agrees_with_the_generators_labels(every_family_world):
    """On generated traces the check reproduces ``is_correct`` of every claiming step (counting:
    its parity claims are always right, the count it cannot check alone)."""
    steps = every_family_world.steps
    for row in steps.itertuples():
        found = get_family(row.family).check_claims(row.text)
        if row.kind in ("compute", "check", "correct"):
            assert found == (True if row.family == "counting" else bool(row.is_correct)), row.text
        else:
            assert found is None, row.text


def test_compute_step_outcomes_read_a_models_own_trace():
    """Hand-made completion: an easy step, a looks-hard carry that slips and is repaired, a
    looks-easy carry that slips unrepaired, and an unrelated error."""
    from reasonlens.world import compute_step_outcomes, outcome_table
    text = "\n".join([
        "Let me do it one step at a time.",
        "50 + 3 = 53, three to go.",  # easy, right
        "53 + 8 = 51, two to go.",  # carry, operand 8: looks hard; slipped (dropped carry)
        "Wait. 53 + 10 = 63, 63 - 2 = 61. So 53 + 8 = 61, not 51.",
        "Hmm, 61 + 9 = 60, one to go.",  # looks hard, slipped, not reflected
        "58 + 3 = 61, done.",  # carry with 3: looks easy; right
        "Therefore the answer is 61."])
    own = compute_step_outcomes(["arithmetic"], [text])
    assert own.line_idx.tolist() == [1, 2, 4, 5]  # the check's claims are not compute lines
    assert own.hardness.tolist() == [0, 2, 2, 1]
    assert own.outcome.tolist() == ["right", "slip", "slip", "right"]
    assert own.is_reflected.tolist() == [False, True, False, False]
    table = outcome_table(own)
    assert table.loc[2, "slip"] == 1.0 and table.loc[2, "reflected"] == 0.5
    assert table.loc[0, "n"] == 1 and table.loc[1, "right"] == 1.0
    other = compute_step_outcomes(["arithmetic"], ["54 + 8 = 72, done."]).outcome.tolist()
    assert other == ["other"]
    assert outcome_table(compute_step_outcomes(["arithmetic"], ["no steps"])).empty
    with pytest.raises(ValueError, match="one family per completion"):
        compute_step_outcomes(["arithmetic"], [])
