"""The training loader's augmentations: alternating flip, translation, cutout."""
import pytest
import torch
import torch.nn.functional as F


def make_loader(module, cifar_source, aug, images, shuffle=True, batch_size=128):
    loader = module.CifarLoader(cifar_source, train=True, batch_size=batch_size, aug=aug, shuffle=shuffle,
                                drop_last=False, device='cpu')
    loader.images, loader.labels = images, torch.arange(len(images))  # labels name the images
    return loader


def test_alternating_flip_covers_both_orientations_every_two_epochs(module, cifar_source):
    n = 300
    images = torch.zeros(n, 3, 32, 32)
    images[..., 16:] = 1  # bright right half: orientation is visible after normalization
    loader = make_loader(module, cifar_source, {'flip': True}, images)

    def orientations():  # image index -> True if shown mirrored
        seen = {}
        for batch, index in loader:
            for x, i in zip(batch, index.tolist()):
                assert i not in seen
                seen[i] = bool(x[..., :16].mean() > x[..., 16:].mean())
        assert len(seen) == n
        return seen

    epochs = [orientations() for _ in range(4)]
    for first, second in zip(epochs, epochs[1:]):
        assert all(first[i] != second[i] for i in range(n))  # every (image, orientation) pair once
    assert epochs[0] == epochs[2] and epochs[1] == epochs[3]
    assert 0.35 < sum(epochs[0].values()) / n < 0.65  # a fair coin per image in the first epoch


def test_translation_is_an_exact_reflect_padded_crop_within_range(module, cifar_source):
    pixels, n = 2, 2000
    images = torch.rand(n, 3, 32, 32)
    loader = make_loader(module, cifar_source, {'translate': pixels}, images, shuffle=False)
    padded = F.pad(loader.normalize(images), (pixels,) * 4, mode='reflect')
    shifts_seen = []
    for batch, index in loader:
        for x, i in zip(batch, index.tolist()):
            matches = [(dy, dx) for dy in range(2 * pixels + 1) for dx in range(2 * pixels + 1)
                       if torch.equal(x, padded[i, :, dy:dy + 32, dx:dx + 32])]
            assert len(matches) == 1
            shifts_seen.append(matches[0])
    counts = torch.tensor([shifts_seen.count((dy, dx)) for dy in range(5) for dx in range(5)])
    # all 25 shifts, roughly uniformly: for uniform draws P(some count <= n/50) is about 1e-5
    assert counts.min() > 0.5 * n / 25


def test_cutout_zeroes_exactly_one_square_fully_inside_each_image(module, cifar_source):
    if 'cutout' not in module.hyp['aug']:
        pytest.skip('%s has no cutout' % module.__name__)
    size = 12
    loader = make_loader(module, cifar_source, {'cutout': size}, torch.ones(2000, 3, 32, 32), shuffle=False)
    corners = set()
    for batch, _ in loader:
        for x in batch:
            zero = (x == 0)
            assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2])  # all channels
            rows, cols = zero[0].nonzero(as_tuple=True)
            top, left = int(rows.min()), int(cols.min())
            assert zero[0].sum() == size * size and zero[0, top:top + size, left:left + size].all()
            corners.add((top, left))
    tops = {t for t, _ in corners}
    assert tops == set(range(32 - size + 1))  # every placement fully inside, and only those


@pytest.mark.parametrize('train', [True, False])
def test_loader_batches_and_order(module, cifar_source, train):
    loader = module.CifarLoader(cifar_source, train=train, batch_size=100, device='cpu')
    labels = torch.cat([y for _, y in loader])
    if train:  # shuffled, last incomplete batch dropped
        assert len(loader) == 12 and len(labels) == 1200 and len(set(labels.tolist())) == 10
    else:  # in order, nothing dropped
        assert len(loader) == 5 and torch.equal(labels, loader.labels)


def test_loader_rejects_unknown_augmentation(module, cifar_source):
    with pytest.raises(ValueError, match=r"unknown augmentation in \['mixup'\]"):
        module.CifarLoader(cifar_source, aug={'mixup': 1}, device='cpu')
