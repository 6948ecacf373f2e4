import pandas as pd
import pytest

from reasonlens import diffing


def _scores(values):
    n = len(values)
    return pd.DataFrame({"feature_idx": range(n), "reason_score": values, "mu_pos": values,
                         "mu_neg": [0.1] * n, "density": [0.2] * n, "max_activation": [1.0] * n})


def test_feature_diff_reports_ranks_and_ratios_in_both_models():
    reasoning, base = _scores([0.9, 0.1, 0.5]), _scores([0.05, 0.4, 0.5])
    diff = diffing.feature_diff(reasoning, base, [0, 2])
    assert diff.rank_reasoning.tolist() == [1, 2] and diff.rank_base.tolist() == [3, 1]
    assert diff.mu_pos_ratio.tolist() == pytest.approx([0.05 / 0.9, 1.0])
    assert diff.reason_score_base.tolist() == [0.05, 0.5]
    with pytest.raises(ValueError, match="same SAE"):
        diffing.feature_diff(reasoning, _scores([0.1]), [0])
    with pytest.raises(ValueError, match="not in the scores"):
        diffing.feature_diff(reasoning, base, [7])
