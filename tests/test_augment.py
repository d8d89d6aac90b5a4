"""Colour/scale augmentation recipes and stain normalisation on real Kaggle/LISC images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.color import rgb2hed, rgb2lab

from wbc_ray.config import TrainConfig
from wbc_ray.data.augment import Augment, augment_batch
from wbc_ray.data.stain import REFERENCE_MEAN, hed_jitter, reinhard, rgb_to_hed
from wbc_ray.training.augmentation import batch_transform


@pytest.fixture(scope="module")
def images(kaggle, lisc) -> np.ndarray:
    """Six Kaggle TRAIN frames (one class each, plus two) and two LISC crops, 64x64 uint8."""
    paths = [sorted((kaggle / "images" / "TRAIN" / c).glob("*.jpeg"))[i]
             for c in ("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL") for i in (0, 7)]
    paths = paths[:6] + [sorted(lisc.glob("*/*.png"))[i] for i in (0, 100)]
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((64, 64))) for p in paths])


@pytest.fixture(scope="module")
def batch(images) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def _run(recipe: Augment, x: torch.Tensor, seed: int) -> torch.Tensor:
    return recipe(x, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("colour,scale", [(True, True), (True, False), (False, True)])
def test_recipe_is_reproducible_from_the_generator_seed(batch, colour, scale):
    recipe = Augment.robust(colour=colour, scale=scale)
    a, b, c = _run(recipe, batch, 1), _run(recipe, batch, 1), _run(recipe, batch, 2)
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 1e-3
    assert not torch.equal(a, batch)


@pytest.mark.parametrize("colour,scale", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_keeps_shape_dtype_and_range(batch, colour, scale, dtype):
    x = batch.to(dtype)
    out = _run(Augment.robust(colour=colour, scale=scale), x, 0)
    assert out.shape == x.shape and out.dtype == dtype
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_colour_no_scale_is_the_identity(batch, dtype):
    x = batch.to(dtype)
    assert torch.equal(_run(Augment.robust(colour=False, scale=False), x, 0), x)


def test_scale_only_moves_pixels_but_keeps_colours(batch):
    flat = torch.ones_like(batch) * torch.tensor([0.8, 0.5, 0.7]).view(1, 3, 1, 1)
    recipe = Augment.robust(colour=False, scale=True)
    torch.testing.assert_close(_run(recipe, flat, 0), flat)  # a crop of one colour
    out = _run(recipe, batch, 0)
    assert (out - batch).abs().mean() > 0.01  # yet real images change: zoomed and shifted
    torch.testing.assert_close(out.mean((2, 3)), batch.mean((2, 3)), atol=0.08, rtol=0)


def test_colour_only_keeps_the_geometry(batch):
    flat = torch.ones_like(batch) * torch.tensor([0.8, 0.5, 0.7]).view(1, 3, 1, 1)
    recipe = Augment.robust(colour=True, scale=False)
    out = _run(recipe, flat, 0)
    assert out.std((2, 3)).max() < 1e-4  # still flat: nothing moved or spread
    assert (out - flat).abs().max() > 0.01  # but its colour did change
    grey_in, grey_out = batch.mean(1).flatten(1), _run(recipe, batch, 0).mean(1).flatten(1)
    for a, b in zip(grey_in, grey_out, strict=True):
        assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9


def test_images_in_a_batch_get_their_own_draws(batch):
    same = batch[:1].expand(4, -1, -1, -1).contiguous()
    out = _run(Augment.robust(colour=True, scale=True), same, 0)
    assert (out[0] - out[1]).abs().mean() > 1e-3


def test_hed_jitter_at_zero_strength_is_the_identity(batch):
    out = hed_jitter(batch, torch.Generator().manual_seed(0), alpha=0.0, beta=0.0)
    assert (out - batch).abs().max() < 1e-3


def test_hed_jitter_moves_colours_and_follows_the_seed(batch):
    g = torch.Generator
    a = hed_jitter(batch, g().manual_seed(3), alpha=0.2, beta=0.02)
    assert torch.equal(a, hed_jitter(batch, g().manual_seed(3), alpha=0.2, beta=0.02))
    assert (a - batch).abs().mean() > 0.005 and a.min() >= 0 and a.max() <= 1


def test_torch_hed_matches_skimage(images):
    ours = rgb_to_hed(torch.from_numpy(images[:2]).permute(0, 3, 1, 2).double() / 255.0)
    ref = np.stack([rgb2hed(im) for im in images[:2]]).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(ours.clamp_min(0).numpy(), ref, atol=1e-6)


def test_batch_transform_applies_the_recipe_in_uint8_range(images):
    t = TrainConfig(colour_augment=True, scale_augment=True)
    transform = batch_transform(t, seed=0)
    x = torch.from_numpy(images)
    out = transform(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255 and (out - x.float()).abs().mean() > 1
    assert torch.equal(out, batch_transform(t, seed=0)(x))
    assert batch_transform(TrainConfig(), seed=0) is None


def test_augment_batch_flips_and_rotations_keep_the_pixels(batch):
    out = augment_batch(batch, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape
    assert sorted(out.sum((1, 2, 3)).tolist()) == pytest.approx(sorted(batch.sum((1, 2, 3))
                                                                       .tolist()), rel=1e-5)


def _lab_mean(rgb: np.ndarray) -> np.ndarray:
    return rgb2lab(rgb).reshape(-1, 3).mean(0)


def test_reinhard_is_deterministic(images):
    a = reinhard(images[0])
    assert a.dtype == np.uint8 and a.shape == images[0].shape
    np.testing.assert_array_equal(a, reinhard(images[0].copy()))


@pytest.mark.parametrize("index", [1, 6])  # a Kaggle frame and a LISC crop
def test_reinhard_brings_differently_tinted_copies_together(images, index):
    rgb = images[index].astype(float)
    warm = np.clip(rgb * (1.12, 0.95, 0.85), 0, 255).astype(np.uint8)
    cold = np.clip(rgb * (0.85, 0.95, 1.1) + (0, 0, 10), 0, 255).astype(np.uint8)
    before = np.linalg.norm(_lab_mean(warm) - _lab_mean(cold))
    after = np.linalg.norm(_lab_mean(reinhard(warm)) - _lab_mean(reinhard(cold)))
    assert before > 10
    assert after < 0.3 * before


def test_reinhard_output_has_the_reference_colour(images):
    """A LISC crop (white background, lilac red cells) comes out with the Kaggle colours."""
    ref = np.asarray(REFERENCE_MEAN)
    before = np.linalg.norm(_lab_mean(images[6]) - ref)
    assert before > 10
    assert np.linalg.norm(_lab_mean(reinhard(images[6])) - ref) < 3.0


def test_reinhard_leaves_padding_and_empty_images_alone(images):
    rotated = images[0].copy()
    rotated[:10] = 0  # black rotation padding, as in the Kaggle frames
    np.testing.assert_array_equal(reinhard(rotated)[:10], 0)
    black = np.zeros((16, 16, 3), np.uint8)
    np.testing.assert_array_equal(reinhard(black), black)


def test_reinhard_rejects_non_rgb_uint8():
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        reinhard(np.zeros((8, 8), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        reinhard(np.zeros((8, 8, 3), np.float32))
