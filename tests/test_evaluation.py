"""Test-time augmentation: the views and their weights at levels 0, 1 and 2."""
import pytest
import torch
from torch import nn


class LinearProbe(nn.Module):
    """Logits linear in the pixels, so the logits of an average of views are computable by hand."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(10, 3, 32, 32))

    def forward(self, x):
        return torch.einsum('nchw,kchw->nk', x, self.weight)


def reflect(i, n):
    return -i if i < 0 else 2 * (n - 1) - i if i > n - 1 else i


def shifted(x, dy, dx):
    """x moved so that output pixel (y, x) reads input (y + dy, x + dx), reflected at the border."""
    rows = torch.tensor([reflect(y + dy, 32) for y in range(32)])
    cols = torch.tensor([reflect(c + dx, 32) for c in range(32)])
    return x[:, :, rows][:, :, :, cols]


@pytest.mark.parametrize('level', [0, 1, 2])
def test_tta_views_and_weights(module, loaders, level):
    torch.manual_seed(0)
    test_loader = loaders[1]
    test_loader.images = torch.rand(50, 3, 32, 32)
    test_loader.batch_size = 16  # several batches, the last one partial
    probe = LinearProbe()
    x = test_loader.normalize(test_loader.images)
    mirror = x.flip(-1)
    up_left, down_right = shifted(x, -1, -1), shifted(x, 1, 1)
    views = {0: [(1.0, x)],
             1: [(0.5, x), (0.5, mirror)],
             2: [(0.25, x), (0.25, mirror), (0.125, up_left), (0.125, up_left.flip(-1)),
                 (0.125, down_right), (0.125, down_right.flip(-1))]}[level]
    expected = sum(w * probe(v) for w, v in views).detach()
    logits = module.infer(probe, test_loader, tta_level=level)
    assert not probe.training
    assert torch.allclose(logits, expected, rtol=1e-4, atol=1e-3)


def test_evaluate_is_the_accuracy_of_infer(module, loaders):
    test_loader = loaders[1]
    probe = LinearProbe()
    predictions = module.infer(probe, test_loader, tta_level=1).argmax(1)
    expected = (predictions == test_loader.labels).float().mean().item()
    assert module.evaluate(probe, test_loader, tta_level=1) == pytest.approx(expected)
