import dataclasses

import pandas as pd
import pytest
from helpers import build_world_config

from reasonlens import constants as K
from reasonlens.world import FAMILIES, WorldConfig, generate_world, get_family


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


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_answer_is_the_fold_of_its_items(name):
    import random
    family = get_family(name)
    for i in range(50):
        problem = family.sample(random.Random(i), 4)
        assert family.states(problem)[-1] == problem.answer
        assert len(problem.items) == 4
        for state, item in zip([problem.start] + family.states(problem)[:-1], problem.items):
            assert family.wrong(random.Random(i), problem, state, item) != family.update(
                problem, state, item)


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


def test_mistake_and_catch_rates_shape_the_traces():
    clean = generate_world(build_world_config(mistake_rate=0.0)).problems
    assert clean.trace_is_correct.all() and (clean.n_mistakes == 0).all()
    uncaught = generate_world(build_world_config(mistake_rate=0.5, catch_rate=0.0)).problems
    caught = generate_world(build_world_config(mistake_rate=0.5, catch_rate=1.0)).problems
    assert uncaught.trace_is_correct.mean() < 0.6
    assert caught.trace_is_correct.all()
    assert caught.n_corrections.sum() == caught.n_mistakes.sum() > 0


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


def test_world_tables_have_the_expected_columns(world):
    assert {"problem_id", "split", "family", "question", "answer", "trace_is_correct"} <= set(
        world.problems.columns)
    assert {"problem_id", "step_idx", "text", "kind", "is_correct", "is_on_track"} <= set(
        world.steps.columns)
    assert isinstance(world.documents, pd.DataFrame)
    assert set(world.documents.kind) == {"trace", "plain", "chat"}
