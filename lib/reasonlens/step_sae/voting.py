"""Probe-guided weighted voting (Yang et al., 2026, Sec. 4.4).

Sample k solutions per problem; each votes for its final answer with weight

    w = mean over its steps of p(correct | step)^tau

where p(correct | step) is the correctness probe on the step's SAE latent. Compared with greedy
decoding and unweighted majority voting, each with a Wilson 95% interval, and the weighted minus
majority difference with a paired bootstrap interval.

Two sets of rules, chosen by ``VotingConfig.rules``; everything downstream of sampling
(``vote``, ``solution_weights``, ``voting_table``, ``tau_sweep``) serves both:

==================  ===================================  ======================================
                    ours (``VotingConfig()``)            reference (``VotingConfig.reference()``,
                                                         R: probing_exp.py, experiment.yaml)
==================  ===================================  ======================================
sampled LM          notebook 02's reasoning model        the step SAE's own decoder LM
                                                         (probing_exp.py:162)
prompt              the world's reasoning prompt         the raw question (157, 223, 263)
sampling            k=8, T=1 (notebook 08: T=0.6), 160   k=16, T=0.7, top-p 0.9, top-k 200,
                    tokens; no top-p, top-k or penalty   repetition penalty 1.1, 256 tokens
greedy baseline     ``evaluation.evaluate_answers``      ``greedy_solutions``: greedy with the
                                                         repetition penalty (215-244)
answer              "answer is N" (``parse_answer``)     the last number, a string (205-212)
right answer        equal integers                       floats < 1e-3 apart (197, 297, 368)
steps               lines of the trace                   R's ``answer_split`` pieces, blank and
                    (``data.trace_step_table``)          trailing ones too (311-318, 339-343)
tau                 1                                    0.8
==================  ===================================  ======================================

In both, majority voting counts equal answers (exact strings under R's rules, so ``"18"`` and
``"18.0"`` are two candidates), ties go to the answer seen first, and solutions without an answer
do not vote (probing_exp.py:284-293, 335-364). R's reading of answers and steps, and its quirks,
are in ``answers_reference``.

**R's voting script fails as published.** It builds its tokenizer without ``<sep>``
(probing_exp.py:60-64, the two lines commented out), so the model's embeddings are resized to one
row fewer than the checkpoint has and the strict load fails (line 80), and
``tokenizer.sep_token_id`` is None where each step is encoded (line 346). Its training script adds
``<sep>`` (train.py:343-344); the evident intent, done here, is the step SAE's own tokenizer with
``<sep>``: ``sample_solutions`` takes the ``StepSAE`` and checks that the tokenizer's sep token is
the model's. Also: R is unseeded (the global ``seed: 1337``, experiment.yaml:2, is never applied
by probing_exp.py) and samples one question at a time with ``num_return_sequences=k``; we seed and
batch left-padded prompts (the same distribution, not the same draws).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd

from reasonlens import evaluation
from reasonlens.config import Config, check_range
from reasonlens.step_sae import answers_reference
from reasonlens.step_sae.model import StepSAE
from reasonlens.world import prompt

RULES = ("ours", "reference")


@dataclasses.dataclass(frozen=True)
class VotingConfig(Config):
    """Sampling and weighting.

    The defaults are ours (the notebook sets k, temperature and tau); ``VotingConfig.reference()``
    gives R's.

    Args:
        n_samples: solutions sampled per problem (k).
        temperature: sampling temperature.
        tau: exponent on p(correct) in the weight.
        max_new_tokens: generation budget per solution.
        batch_size: prompts per generation call.
        seed: sampling seed.
        top_p: nucleus sampling's probability mass (1: off), Hugging Face's ``top_p``.
        top_k: sample among the k most likely tokens (0: off), Hugging Face's ``top_k``.
        repetition_penalty: Hugging Face's ``repetition_penalty`` (1: off); unlike top-p and
            top-k it applies to greedy decoding too (``greedy_solutions``), as in R.
        rules: ``"ours"`` or ``"reference"``: which prompt, answer reading and answer matching
            (module docstring).
    """

    n_samples: int = 8
    temperature: float = 1.0
    tau: float = 1.0
    max_new_tokens: int = 160
    batch_size: int = 64
    seed: int = 0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    rules: str = "ours"

    def __post_init__(self):
        check_range("n_samples", self.n_samples, 1)
        check_range("temperature", self.temperature, 1e-6,
                    hint="Voting needs sampled solutions; use temperature > 0.")
        check_range("tau", self.tau, 0.0)
        check_range("max_new_tokens", self.max_new_tokens, 1)
        check_range("batch_size", self.batch_size, 1)
        check_range("top_p", self.top_p, 0.0, 1.0, hint="1.0 turns nucleus sampling off.")
        check_range("top_k", self.top_k, 0, hint="0 turns top-k sampling off.")
        check_range("repetition_penalty", self.repetition_penalty, 1e-6,
                    hint="1.0 turns the penalty off (R: 1.1).")
        _check_rules(self.rules)

    @classmethod
    def reference(cls, **overrides) -> VotingConfig:
        """R's voting settings (configs/experiment.yaml:24-45, read by probing_exp.py:25-57).

        Args:
            overrides: fields to set otherwise (e.g. ``n_samples=2`` for a quick run).

        Returns:
            A validated ``VotingConfig`` with ``rules="reference"``.

        Raises:
            ValueError: an override out of range.
        """
        values = dict(
            n_samples=16,  # experiment.yaml:36 (k)
            temperature=0.7,  # experiment.yaml:39 (majority_temperature)
            top_p=0.9,  # experiment.yaml:40 (majority_top_p)
            top_k=200,  # experiment.yaml:41 (majority_top_k; greedy_top_k, :38, is inert)
            repetition_penalty=1.1,  # probing_exp.py:169, fixed in the code, greedy included
            max_new_tokens=256,  # experiment.yaml:32
            tau=0.8,  # experiment.yaml:37
            rules="reference",
        )
        return cls(**values | overrides)


def _check_rules(rules: str) -> str:
    if rules not in RULES:
        raise ValueError(f"rules={rules!r} is not valid; use one of {list(RULES)} ('reference': "
                         "R's prompt and answer matching, VotingConfig.reference()).")
    return rules


def generation_settings(cfg: VotingConfig, temperature: float) -> dict:
    """The Hugging Face ``generate`` arguments of ``cfg`` that are not off.

    Top-p and top-k only when sampling (``temperature > 0``); the repetition penalty always.
    """
    settings = {}
    if cfg.repetition_penalty != 1.0:
        settings["repetition_penalty"] = cfg.repetition_penalty
    if temperature > 0:
        if cfg.top_k > 0:
            settings["top_k"] = cfg.top_k
        if cfg.top_p < 1.0:
            settings["top_p"] = cfg.top_p
    return settings


def _language_model(lm, tokenizer):
    """``lm``, or a step SAE's decoder LM after checking that ``tokenizer`` has its ``<sep>``."""
    if not isinstance(lm, StepSAE):
        return lm
    if tokenizer.sep_token_id != lm.sep_id:
        raise ValueError(f"the tokenizer's sep token id is {tokenizer.sep_token_id!r} but the step "
                         f"SAE's is {lm.sep_id}: pass the step SAE's own tokenizer (StepSAE.build "
                         "adds <sep>; for a loaded SAE call data.add_sep_token(tokenizer)).")
    return lm.decoder


def solution_prompts(questions: Sequence[str], tokenizer, rules: str = "ours") -> list[str]:
    """The prompt of each question: ours the world's reasoning prompt (in the tokenizer's chat
    template when it has one); R's the question text itself, with no template, separator or
    latent prefix (probing_exp.py:157, 223, 263)."""
    if _check_rules(rules) == "reference":
        return [str(q) for q in questions]
    return [prompt(q, reasoning=True, tokenizer=tokenizer) for q in questions]


def read_answers(completions: Sequence[str], answers: Sequence, rules: str = "ours"
                 ) -> tuple[pd.api.extensions.ExtensionArray | pd.Series, np.ndarray]:
    """Each completion's answer and whether it is right.

    Ours: ``evaluation.parse_answer`` (integers, ``Int64``). R's: the last number, a string
    (``answers_reference.last_number``; an object Series, None where there is none).

    Returns:
        ``(predicted, is_correct)``; ``is_correct`` from ``answers_match``.
    """
    if _check_rules(rules) == "reference":  # object, not pandas 3's str dtype: None stays None
        predicted = pd.Series([answers_reference.last_number(c) for c in completions],
                              dtype=object)
    else:
        predicted = pd.array([evaluation.parse_answer(c) for c in completions], dtype="Int64")
    return predicted, answers_match(predicted, answers, rules)


def answers_match(predicted: Sequence, answers: Sequence, rules: str = "ours") -> np.ndarray:
    """Whether each predicted answer is right ``[n]``; a missing one (None, <NA>) is wrong.

    Ours: equal to the answer. R's: ``answers_reference.numbers_match`` against the last number of
    the answer (its text or value), a float tolerance of 1e-3 (probing_exp.py:197, 297, 368).
    """
    if _check_rules(rules) == "reference":
        return np.array([answers_reference.numbers_match(
            None if pd.isna(p) else p, answers_reference.reference_answer(a))
            for p, a in zip(predicted, answers)], dtype=bool)
    return np.array([not pd.isna(p) and bool(p == a) for p, a in zip(predicted, answers)],
                    dtype=bool)


def sample_solutions(lm, tokenizer, problems: pd.DataFrame, cfg: VotingConfig) -> pd.DataFrame:
    """``cfg.n_samples`` sampled reasoning solutions per problem.

    Args:
        lm: a transformers causal LM (ours: notebook 02's model), or a ``StepSAE``, whose own
            decoder LM is sampled (R, probing_exp.py:162).
        tokenizer: the LM's tokenizer; for a ``StepSAE`` its own, with ``<sep>``.
        problems: rows with problem_id, question, answer (a number, or an answer text whose last
            number is the answer under R's rules).
        cfg: the settings; ``cfg.rules`` picks prompt and answer reading.

    Returns:
        One row per solution: problem_id, (family, when ``problems`` has it), sample_idx,
        question, answer, completion, predicted (``Int64`` under our rules, a string or None
        under R's), is_correct. Seeded by
        ``cfg.seed`` alone; a progress bar named "sample".

    Raises:
        ValueError: no problems, or a ``StepSAE`` with a tokenizer that is not its own.

    Used by notebook 08 ("Probe-guided weighted voting").
    """
    return _solutions(lm, tokenizer, problems, cfg, cfg.n_samples, cfg.temperature, "sample")


def greedy_solutions(lm, tokenizer, problems: pd.DataFrame, cfg: VotingConfig) -> pd.DataFrame:
    """One greedy solution per problem, the baseline of ``voting_table``.

    As ``sample_solutions`` (same frame, ``sample_idx`` 0) with greedy decoding: R's greedy
    baseline (probing_exp.py:215-244) keeps the repetition penalty of 1.1; its top-k of 200
    (experiment.yaml:38) does nothing without sampling and is not passed.
    """
    return _solutions(lm, tokenizer, problems, cfg, 1, 0.0, "greedy")


def _solutions(lm, tokenizer, problems: pd.DataFrame, cfg: VotingConfig, n_samples: int,
               temperature: float, desc: str) -> pd.DataFrame:
    if len(problems) == 0:
        raise ValueError("problems is empty: nothing to vote on. Check step_vote_problems.")
    lm = _language_model(lm, tokenizer)
    repeated = problems.iloc[np.repeat(np.arange(len(problems)), n_samples)].reset_index(drop=True)
    settings = generation_settings(cfg, temperature)
    completions, ids = evaluation.generate(
        lm, tokenizer,
        solution_prompts(repeated["question"], tokenizer, cfg.rules),
        max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
        temperature=temperature, seed=cfg.seed, desc=desc, return_ids=True,
        generate_kwargs=settings)
    if cfg.rules == "reference":  # probing_exp.py:182
        completions = tokenizer.batch_decode(ids, skip_special_tokens=True)
    predicted, is_correct = read_answers(completions, repeated["answer"], cfg.rules)
    return pd.DataFrame({
        "problem_id": repeated["problem_id"].to_numpy(),
        **({"family": repeated["family"].to_numpy()} if "family" in repeated else {}),
        "sample_idx": np.tile(np.arange(n_samples), len(problems)),
        "question": repeated["question"].to_numpy(),
        "answer": repeated["answer"].to_numpy(),
        "completion": completions,
        "predicted": predicted,
        "is_correct": is_correct,
    })


def solution_weights(n_solutions: int, solution_idx: np.ndarray, p_correct: np.ndarray,
                     tau: float) -> np.ndarray:
    """Each solution's weight: the mean over its steps of ``p_correct ** tau`` (0 if no steps).

    R's weight (probing_exp.py:339-357: ``sigmoid(classifier(latent)) ** tau`` summed over the
    steps of ``answer_split`` and divided by their number) when the steps are
    ``answers_reference.solution_step_table``'s (blank ones included) and ``p_correct`` is the
    probe's probability for each.

    Args:
        n_solutions: number of solutions.
        solution_idx: ``[n_steps]``, the solution each step belongs to.
        p_correct: ``[n_steps]``, the probe's p(correct) of each step.
        tau: the exponent.

    Returns:
        ``[n_solutions]`` weights.
    """
    solution_idx = np.asarray(solution_idx, dtype=np.int64)  # an empty step table's is object
    sums = np.bincount(solution_idx, weights=np.asarray(p_correct, dtype=float) ** tau,
                       minlength=n_solutions)
    counts = np.bincount(solution_idx, minlength=n_solutions)
    return np.divide(sums, counts, out=np.zeros(n_solutions), where=counts > 0)


def weight_auc(solutions: pd.DataFrame, weights: np.ndarray) -> float:
    """ROC AUC of the weights for telling correct solutions from wrong ones (NaN if one class).

    0.5 means the probe's weights carry no information about which samples are right, and then
    weighted voting can only match majority voting.
    """
    return step_auc(weights, solutions["is_correct"])


def step_auc(p_correct: np.ndarray, is_correct) -> float:
    """ROC AUC of the probe's ``p_correct`` ``[n_steps]`` for telling a model's own right steps
    from its wrong ones (``is_correct``: nullable booleans, NA steps left out; NaN if one class).
    ``weight_auc`` is the same score over solutions.

    Where ``weight_auc`` asks whether the weights rank whole solutions, this asks whether the
    probe recognises the model's own wrong *steps*, which weighted voting needs first.
    """
    from sklearn.metrics import roc_auc_score

    labels = pd.array(is_correct, dtype="boolean")
    known = ~np.asarray(labels.isna())
    correct = np.asarray(labels[known], dtype=bool)
    if correct.all() or not correct.any():
        return float("nan")
    return float(roc_auc_score(correct, np.asarray(p_correct, dtype=float)[known]))


def tau_sweep(problems: pd.DataFrame, solutions: pd.DataFrame, n_solutions: int,
              solution_idx: np.ndarray, p_correct: np.ndarray, taus, rules: str = "ours"
              ) -> pd.DataFrame:
    """Weighted-vote accuracy for several ``tau`` (chosen on the same problems: descriptive only).

    ``rules`` judges the votes as ``answers_match`` does (the config's ``rules``).

    Returns:
        One row per tau: tau, accuracy, weight_auc.
    """
    answers = problems.set_index("problem_id")["answer"]
    rows = []
    for tau in taus:
        weights = solution_weights(n_solutions, solution_idx, p_correct, tau)
        accuracy = vote_is_correct(answers, solutions, weights, rules).mean()
        rows.append({"tau": tau, "accuracy": accuracy,
                     "weight_auc": weight_auc(solutions, weights)})
    return pd.DataFrame(rows)


def vote_is_correct(answers: pd.Series, solutions: pd.DataFrame,
                    weights: np.ndarray | None = None, rules: str = "ours") -> np.ndarray:
    """Whether each problem's vote (``answers``: answer by problem_id) is right ``[n_problems]``.

    A problem without a vote is wrong; ``rules`` judges as ``answers_match`` does (R compares the
    voted string with the ground truth's last number within 1e-3, probing_exp.py:294-300, 365-371).
    """
    voted = vote(solutions, weights).reindex(answers.index)
    return answers_match(voted.tolist(), answers.tolist(), rules)


def vote(solutions: pd.DataFrame, weights: np.ndarray | None = None) -> pd.Series:
    """Each problem's voted answer (unweighted majority when ``weights`` is None).

    Solutions without an answer do not vote; equal answers (integers, or R's exact strings) pool
    their votes (summed weights), and ties go to the answer whose first vote came first, as R's
    ``max`` over a dict filled in sample order does (probing_exp.py:283-291, 334-362).

    Returns:
        The answers by problem_id, in order of first appearance: ``Int64`` for integer answers
        (<NA> where no solution has one), else objects (None there).
    """
    frame = solutions[["problem_id", "sample_idx", "predicted"]].copy()
    frame["weight"] = 1.0 if weights is None else np.asarray(weights, dtype=float)
    frame = frame[frame["predicted"].notna()]
    tally = frame.groupby(["problem_id", "predicted"]).agg(weight=("weight", "sum"),
                                                            first=("sample_idx", "min"))
    tally = tally.reset_index().sort_values(["problem_id", "weight", "first"],
                                            ascending=[True, False, True])
    winners = tally.drop_duplicates("problem_id").set_index("problem_id")["predicted"]
    ids = solutions["problem_id"].drop_duplicates()
    voted = winners.reindex(ids)
    if pd.api.types.is_integer_dtype(solutions["predicted"].dtype):
        return voted.astype("Int64")
    return voted.astype(object).where(voted.notna(), None)


def voting_table(problems: pd.DataFrame, greedy: pd.DataFrame, solutions: pd.DataFrame,
                 weights: np.ndarray, n_boot: int = 5000, seed: int = 0, rules: str = "ours"
                 ) -> tuple[pd.DataFrame, dict[str, float]]:
    """Greedy, majority-vote and weighted-vote accuracy with Wilson 95% intervals.

    R's three methods (probing_exp.py:406-418): greedy, majority and probe-guided voting.

    Args:
        problems: rows with problem_id and answer.
        greedy: ``evaluation.evaluate_answers`` or ``greedy_solutions`` on the same problems
            (is_correct per problem; a problem missing from it counts as wrong).
        solutions: ``sample_solutions`` output; ``weights`` one per row of it.
        n_boot, seed: the paired bootstrap of weighted minus majority.
        rules: how votes are judged (``VotingConfig.rules``, as ``sample_solutions`` judged
            ``is_correct``).

    Returns:
        The table (method, n, accuracy, ci_low, ci_high) and the weighted-minus-majority
        difference with its interval (``difference``, ``ci_low``, ``ci_high``).
    """
    answers = problems.set_index("problem_id")["answer"]
    # a problem greedy decoding was not run on counts as wrong (a NaN would cast to True)
    correct = {"greedy": greedy.set_index("problem_id")["is_correct"]
               .reindex(answers.index, fill_value=False).to_numpy(bool)}
    for name, w in (("majority", None), ("weighted", weights)):
        correct[name] = vote_is_correct(answers, solutions, w, rules)
    rows = []
    for name, values in correct.items():
        lo, hi = evaluation.wilson_interval(int(values.sum()), len(values))
        rows.append({"method": name, "n": len(values), "accuracy": values.mean(),
                     "ci_low": lo, "ci_high": hi})
    diff, lo, hi = evaluation.paired_bootstrap_difference(correct["weighted"], correct["majority"],
                                                          n_boot=n_boot, seed=seed)
    return pd.DataFrame(rows), {"difference": diff, "ci_low": lo, "ci_high": hi}
