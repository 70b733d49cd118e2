"""A user's own model class, named by `_target_` in tests/test_foreign_models.py."""

from torch import nn


class TinyConvNet(nn.Module):
    def __init__(self, num_classes: int, width: int = 8) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.head(self.pool(self.block2(self.block1(x))).flatten(1))


def fixed_head(width: int = 8) -> nn.Module:
    """A builder without num_classes: its head has 5 outputs whatever the data."""
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(5))
