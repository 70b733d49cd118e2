import torch
import torch.nn.functional as F

from hpmkd.data.augment import BatchTransform, crop, crop_offsets, flip_draws, flip_where


def test_crop_is_a_shifted_window_of_the_padded_image():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.uint8).view(2, 3, 6, 6)
    dy, dx = crop_offsets(2, 2, x.device, generator=torch.Generator().manual_seed(0))
    out = crop(x, 2, dy, dx)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(2):
        assert torch.equal(out[i], padded[i, :, dy[i] : dy[i] + 6, dx[i] : dx[i] + 6])


def test_crops_differ_between_samples():
    x = torch.randint(0, 255, (1, 1, 8, 8), dtype=torch.uint8).repeat(64, 1, 1, 1)
    out = crop(x, 4, *crop_offsets(64, 4, x.device, generator=torch.Generator().manual_seed(1)))
    assert len({tuple(o.flatten().tolist()) for o in out}) > 10


def test_flip_flips_about_half():
    x = torch.arange(8, dtype=torch.uint8).view(1, 1, 1, 8).repeat(1000, 1, 1, 1)
    flipped = flip_draws(1000, x.device, generator=torch.Generator().manual_seed(0))
    out = flip_where(x, flipped)
    assert 0.4 < flipped.float().mean().item() < 0.6
    assert torch.equal(out[flipped], x[flipped].flip(3)) and torch.equal(out[~flipped], x[~flipped])


def _view_by_hand(image: torch.Tensor, view: int, padding: int) -> torch.Tensor:
    """The augmented image of view id ``(dy * (2p + 1) + dx) * 2 + flip``, decoded by hand."""
    side = 2 * padding + 1
    flip, offsets = view % 2, view // 2
    dy, dx = offsets // side, offsets % side
    h, w = image.shape[1:]
    window = F.pad(image, (padding,) * 4)[:, dy : dy + h, dx : dx + w]
    return window.flip(2) if flip else window


def test_view_ids_determine_the_augmented_image():
    t = BatchTransform(is_image=True, mean=[0.5, 0.2], std=[0.3, 0.1], crop_padding=4, flip=True)
    assert t.views == 162
    x = torch.randint(0, 255, (400, 2, 6, 6), dtype=torch.uint8)
    torch.manual_seed(0)
    out, view = t.augment(x)
    assert view.dtype == torch.long and int(view.min()) >= 0 and int(view.max()) < 162
    assert len(view.unique()) > 100  # the views are spread over all 162
    by_hand = torch.stack([_view_by_hand(x[i], int(view[i]), 4) for i in range(len(x))])
    assert torch.equal(out, t.normalise(by_hand))


def test_asking_for_views_does_not_change_the_augmentation():
    t = BatchTransform(is_image=True, crop_padding=2, flip=True)
    x = torch.randint(0, 255, (32, 1, 5, 5), dtype=torch.uint8)
    torch.manual_seed(3)
    plain = t(x, train=True)
    torch.manual_seed(3)
    dy, dx = crop_offsets(32, 2, x.device)
    manual = flip_where(crop(x, 2, dy, dx), flip_draws(32, x.device))
    torch.manual_seed(3)
    assert torch.equal(plain, t.normalise(manual)) and torch.equal(t.augment(x)[0], plain)


def test_view_counts_of_partial_augmentation():
    assert BatchTransform(is_image=True, crop_padding=1).views == 9
    assert BatchTransform(is_image=True, flip=True).views == 2
    assert BatchTransform(is_image=True).views == 1
    t = BatchTransform(is_image=True, crop_padding=1)
    x = torch.randint(0, 255, (64, 1, 4, 4), dtype=torch.uint8)
    out, view = t.augment(x)
    assert int(view.max()) < 9
    dy, dx = view // 3, view % 3
    padded = F.pad(x, (1, 1, 1, 1))
    windows = [padded[i, :, dy[i] : dy[i] + 4, dx[i] : dx[i] + 4] for i in range(64)]
    assert torch.equal(out, t.normalise(torch.stack(windows)))


def test_normalisation_and_eval_mode_is_deterministic():
    t = BatchTransform(is_image=True, mean=[0.5, 0.25], std=[0.5, 0.25], crop_padding=4, flip=True)
    x = torch.full((3, 2, 4, 4), 255, dtype=torch.uint8)
    out = t(x, train=False)
    assert out.dtype == torch.float32
    assert torch.allclose(out[:, 0], torch.ones(3, 4, 4)) and torch.allclose(
        out[:, 1], torch.full((3, 4, 4), 3.0)
    )
    assert torch.equal(t(x, train=False), out)


def test_tabular_passes_through_with_a_single_view():
    t = BatchTransform(is_image=False, crop_padding=4, flip=True)
    x = torch.randn(4, 7)
    out, view = t.augment(x)
    assert t(x, train=True) is x and out is x
    assert t.views == 1 and torch.equal(view, torch.zeros(4, dtype=torch.long))
