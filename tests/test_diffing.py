import math

import pandas as pd
import pytest

from reasonlens import diffing


def _scores(values, mu_pos=None):
    n = len(values)
    return pd.DataFrame({"feature_idx": range(n), "reason_score": values,
                         "mu_pos": values if mu_pos is None else mu_pos,
                         "mu_neg": [0.1] * n, "density": [0.2] * n, "max_activation": [1.0] * n})


def test_feature_diff_reports_ranks_and_ratios_in_both_models():
    reasoning, base = _scores([0.9, 0.1, 0.5]), _scores([0.05, 0.4, 0.5])
    diff = diffing.feature_diff(reasoning, base, [0, 2])
    assert diff.feature_idx.tolist() == [0, 2]
    # Ranks are among all three features, 1 = highest score, as integers.
    assert diff.rank_reasoning.tolist() == [1, 2] and diff.rank_base.tolist() == [3, 1]
    assert diff.rank_reasoning.dtype.kind == "i" and diff.rank_base.dtype.kind == "i"
    assert diff.mu_pos_ratio.tolist() == pytest.approx([0.05 / 0.9, 1.0])
    assert diff.reason_score_base.tolist() == [0.05, 0.5]
    assert diff.reason_score_reasoning.tolist() == [0.9, 0.5]


def test_tied_scores_share_the_best_rank():
    # Scores 0.7, 0.7, 0.2, 0.7: the three tied features all rank 1 ("min"), the last one 4.
    reasoning = _scores([0.7, 0.7, 0.2, 0.7])
    diff = diffing.feature_diff(reasoning, _scores([0.1, 0.2, 0.3, 0.4]), [0, 2, 3])
    assert diff.rank_reasoning.tolist() == [1, 4, 1]
    assert diff.rank_base.tolist() == [4, 2, 1]


def test_ratio_is_undefined_where_the_feature_is_silent_on_reasoning_words():
    reasoning = _scores([0.3, 0.2], mu_pos=[0.0, 0.5])
    base = _scores([0.1, 0.2], mu_pos=[0.4, 0.25])
    diff = diffing.feature_diff(reasoning, base, [0, 1])
    assert math.isnan(diff.mu_pos_ratio[0])  # 0.4 / 0 is no ratio, not inf
    assert diff.mu_pos_ratio[1] == pytest.approx(0.5)


def test_feature_diff_errors():
    reasoning = _scores([0.9, 0.1, 0.5])
    with pytest.raises(ValueError, match=r"reasoning has 3 features and base 1.*same SAE\.$"):
        diffing.feature_diff(reasoning, _scores([0.1]), [0])
    with pytest.raises(ValueError, match=r"features \[7\] are not in the scores \(d_sae=3\)"):
        diffing.feature_diff(reasoning, _scores([0.1, 0.2, 0.3]), [7])
