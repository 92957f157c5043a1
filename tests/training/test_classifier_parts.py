"""Classifier training pieces on hand-made cases: the warning for a classifier at chance."""

import numpy as np

from coinseg.training.classifier import chance_warning


def test_chance_warning_names_the_auroc_and_counts_only_for_a_classifier_at_chance() -> None:
    labels = np.array([1] * 30 + [0] * 30)
    separated = np.r_[np.linspace(0.55, 0.95, 30), np.linspace(0.05, 0.45, 30)]
    assert chance_warning(labels, separated, "the validation split") is None
    shuffled = np.random.default_rng(0).permutation(separated)
    warning = chance_warning(labels, shuffled, "the validation split")
    assert warning is not None and "30 abnormal / 30 normal slices" in warning
    assert "AUROC" in warning and "the validation split's abnormal slices" in warning
