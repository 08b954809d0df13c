"""tests/helpers/statistics.py: the test-only companions of the streaming statistics (the whole-model update,
merge/load_state, Spearman's ρ of score tensors) — and the statistics module itself needs no scipy."""

import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT
from tests.helpers.statistics import spearman, spearman_matrix


def test_spearman_matches_scipy_with_ties_and_matrix_diagonal_is_one():
    scipy_stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (3, 40), generator=g).float()  # many ties
    b = a + torch.rand(3, 40, generator=g) * 3
    assert spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a.flatten(), b.flatten()).statistic, abs=1e-12)
    m = spearman_matrix([a, b, -a])
    assert m[0, 0] == 1.0 and m[0, 2] == pytest.approx(-1.0) and torch.equal(m, m.T)
    with pytest.raises(ValueError, match="constant"):
        spearman(torch.ones(4), torch.arange(4.0))


def test_the_statistics_module_imports_no_scipy():
    code = ("import sys, lightning_modules.neuron_statistics, records.neuron_selection; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
