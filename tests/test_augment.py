import torch

from hpmkd.data.augment import BatchTransform, random_crop, random_flip


def test_crop_is_a_shifted_window_of_the_padded_image():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.uint8).view(2, 3, 6, 6)
    out = random_crop(x, 2, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, r : r + 6, c : c + 6] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_crops_differ_between_samples():
    x = torch.randint(0, 255, (64, 1, 8, 8), dtype=torch.uint8)
    x = x[:1].repeat(64, 1, 1, 1)
    out = random_crop(x, 4, generator=torch.Generator().manual_seed(1))
    assert len({tuple(o.flatten().tolist()) for o in out}) > 10


def test_flip_flips_about_half():
    x = torch.arange(8, dtype=torch.uint8).view(1, 1, 1, 8).repeat(1000, 1, 1, 1)
    out = random_flip(x, generator=torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 0] == 7).float().mean().item()
    assert 0.4 < flipped < 0.6
    assert all(torch.equal(o, x[0]) or torch.equal(o, x[0].flip(2)) for o in out)


def test_normalisation_and_eval_mode_is_deterministic():
    t = BatchTransform(is_image=True, mean=[0.5, 0.25], std=[0.5, 0.25], crop_padding=4, flip=True)
    x = torch.full((3, 2, 4, 4), 255, dtype=torch.uint8)
    out = t(x, train=False)
    assert out.dtype == torch.float32
    assert torch.allclose(out[:, 0], torch.ones(3, 4, 4)) and torch.allclose(
        out[:, 1], torch.full((3, 4, 4), 3.0)
    )
    assert torch.equal(t(x, train=False), out)


def test_tabular_passes_through():
    t = BatchTransform(is_image=False)
    x = torch.randn(4, 7)
    assert t(x, train=True) is x
