"""engine.evaluate.accuracy: top-1 in percent over batches (torchmetrics), None when empty."""

import pytest
import torch
from torch import nn

from hpmkd.engine.evaluate import accuracy


class _Identity:
    def __call__(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        return x


def test_accuracy_over_uneven_batches_matches_a_hand_count() -> None:
    torch.manual_seed(0)
    model, x, y = nn.Linear(4, 3), torch.randn(1000, 4), torch.randint(0, 3, (1000,))
    expected = 100 * int((model(x).argmax(1) == y).sum()) / len(y)
    assert accuracy(model, x, y, _Identity(), batch_size=300) == pytest.approx(expected, abs=1e-9)
    assert not model.training


def test_accuracy_of_an_empty_split_is_none() -> None:
    empty = torch.empty(0, 4)
    assert accuracy(nn.Linear(4, 3), empty, torch.empty(0, dtype=torch.long), _Identity()) is None
