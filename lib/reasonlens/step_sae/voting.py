"""Probe-guided weighted voting (Yang et al., 2026, Sec. 4.4).

Sample k solutions per problem; each votes for its final answer with weight

    w = mean over its steps of p(correct | step)^tau

where p(correct | step) is the correctness probe on the step's SAE latent. Compared with greedy
decoding and unweighted majority voting, each with a Wilson 95% interval, and the weighted minus
majority difference with a paired bootstrap interval.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from reasonlens import evaluation
from reasonlens.config import Config, check_range
from reasonlens.world import prompt


@dataclasses.dataclass(frozen=True)
class VotingConfig(Config):
    """Sampling and weighting.

    Args:
        n_samples: solutions sampled per problem (k).
        temperature: sampling temperature.
        tau: exponent on p(correct) in the weight.
        max_new_tokens: generation budget per solution.
        batch_size: prompts per generation call.
        seed: sampling seed.
    """

    n_samples: int = 8
    temperature: float = 1.0
    tau: float = 1.0
    max_new_tokens: int = 160
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self):
        check_range("n_samples", self.n_samples, 1)
        check_range("temperature", self.temperature, 1e-6,
                    hint="Voting needs sampled solutions; use temperature > 0.")
        check_range("tau", self.tau, 0.0)


def sample_solutions(lm, tokenizer, problems: pd.DataFrame, cfg: VotingConfig) -> pd.DataFrame:
    """``cfg.n_samples`` sampled reasoning solutions per problem.

    Returns:
        One row per solution: problem_id, sample_idx, question, answer, completion, predicted,
        is_correct.
    """
    if len(problems) == 0:
        raise ValueError("problems is empty: nothing to vote on. Check step_vote_problems.")
    repeated = problems.loc[problems.index.repeat(cfg.n_samples)].reset_index(drop=True)
    completions = evaluation.generate(
        lm, tokenizer,
        [prompt(q, reasoning=True, tokenizer=tokenizer) for q in repeated["question"]],
        max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
        temperature=cfg.temperature, seed=cfg.seed, desc="sample")
    predicted = [evaluation.parse_answer(c) for c in completions]
    return pd.DataFrame({
        "problem_id": repeated["problem_id"].to_numpy(),
        "sample_idx": np.tile(np.arange(cfg.n_samples), len(problems)),
        "question": repeated["question"].to_numpy(),
        "answer": repeated["answer"].to_numpy(),
        "completion": completions,
        "predicted": pd.array(predicted, dtype="Int64"),
        "is_correct": [p is not None and p == a for p, a in zip(predicted, repeated["answer"])],
    })


def solution_weights(n_solutions: int, solution_idx: np.ndarray, p_correct: np.ndarray,
                     tau: float) -> np.ndarray:
    """Each solution's weight: the mean over its steps of ``p_correct ** tau`` (0 if no steps).

    Args:
        n_solutions: number of solutions.
        solution_idx: ``[n_steps]``, the solution each step belongs to.
        p_correct: ``[n_steps]``, the probe's p(correct) of each step.
        tau: the exponent.
    """
    sums = np.bincount(solution_idx, weights=np.asarray(p_correct) ** tau, minlength=n_solutions)
    counts = np.bincount(solution_idx, minlength=n_solutions)
    return np.divide(sums, counts, out=np.zeros(n_solutions), where=counts > 0)


def weight_auc(solutions: pd.DataFrame, weights: np.ndarray) -> float:
    """ROC AUC of the weights for telling correct solutions from wrong ones (NaN if one class).

    0.5 means the probe's weights carry no information about which samples are right, and then
    weighted voting can only match majority voting.
    """
    from sklearn.metrics import roc_auc_score

    correct = solutions["is_correct"].to_numpy(bool)
    if correct.all() or not correct.any():
        return float("nan")
    return float(roc_auc_score(correct, np.asarray(weights, dtype=float)))


def tau_sweep(problems: pd.DataFrame, solutions: pd.DataFrame, n_solutions: int,
              solution_idx: np.ndarray, p_correct: np.ndarray, taus) -> pd.DataFrame:
    """Weighted-vote accuracy for several ``tau`` (chosen on the same problems: descriptive only).

    Returns:
        One row per tau: tau, accuracy, weight_auc.
    """
    answers = problems.set_index("problem_id")["answer"]
    rows = []
    for tau in taus:
        weights = solution_weights(n_solutions, solution_idx, p_correct, tau)
        rows.append({"tau": tau, "accuracy": vote_is_correct(answers, solutions, weights).mean(),
                     "weight_auc": weight_auc(solutions, weights)})
    return pd.DataFrame(rows)


def vote_is_correct(answers: pd.Series, solutions: pd.DataFrame,
                    weights: np.ndarray | None = None) -> np.ndarray:
    """Whether each problem's vote (``answers``: answer by problem_id) is right ``[n_problems]``."""
    voted = vote(solutions, weights).reindex(answers.index)
    return (voted == answers).fillna(False).to_numpy(bool)


def vote(solutions: pd.DataFrame, weights: np.ndarray | None = None) -> pd.Series:
    """Each problem's voted answer (unweighted majority when ``weights`` is None).

    Solutions without an answer do not vote; ties go to the answer whose first vote came first.
    Problems where no solution has an answer get <NA>.
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
    return winners.reindex(ids).astype("Int64")


def voting_table(problems: pd.DataFrame, greedy: pd.DataFrame, solutions: pd.DataFrame,
                 weights: np.ndarray, n_boot: int = 5000, seed: int = 0
                 ) -> tuple[pd.DataFrame, dict[str, float]]:
    """Greedy, majority-vote and weighted-vote accuracy with Wilson 95% intervals.

    Args:
        problems: rows with problem_id and answer.
        greedy: ``evaluation.evaluate_answers`` on the same problems (is_correct per problem;
            a problem missing from it counts as wrong).
        solutions: ``sample_solutions`` output; ``weights`` one per row of it.
        n_boot, seed: the paired bootstrap of weighted minus majority.

    Returns:
        The table (method, n, accuracy, ci_low, ci_high) and the weighted-minus-majority
        difference with its interval (``difference``, ``ci_low``, ``ci_high``).
    """
    answers = problems.set_index("problem_id")["answer"]
    # a problem greedy decoding was not run on counts as wrong (a NaN would cast to True)
    correct = {"greedy": greedy.set_index("problem_id")["is_correct"]
               .reindex(answers.index, fill_value=False).to_numpy(bool)}
    for name, w in (("majority", None), ("weighted", weights)):
        correct[name] = vote_is_correct(answers, solutions, w)
    rows = []
    for name, values in correct.items():
        lo, hi = evaluation.wilson_interval(int(values.sum()), len(values))
        rows.append({"method": name, "n": len(values), "accuracy": values.mean(),
                     "ci_low": lo, "ci_high": hi})
    diff, lo, hi = evaluation.paired_bootstrap_difference(correct["weighted"], correct["majority"],
                                                          n_boot=n_boot, seed=seed)
    return pd.DataFrame(rows), {"difference": diff, "ci_low": lo, "ci_high": hi}
