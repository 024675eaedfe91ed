"""Our training equals an independent reference implementation of the published airbench94
training loop's order of operations (reference_loop.py, written by us, importing nothing of ours).

From the same seed both consume the RNG identically as long as translation is off (the
reference draws shifts for the whole dataset once per epoch, as the published code does; we
draw them per batch; translation has exact tests of its own), so any difference in
initialization, whitening, flip, optimizer, schedule, lookahead, BatchNorm or TTA shows up as a
mismatch here.
"""
import pytest
import torch
from torch import nn

from conftest import edited_hyp, load_script
from support.reference_loop import ReferenceLoop, reference_run


def test_training_equals_the_reference_loop(cifar_source):
    ours = load_script('airbench94.py')
    hyp = edited_hyp(ours)
    hyp['aug']['translate'] = 0  # see the module docstring
    train_loader = ours.CifarLoader(cifar_source, train=True, batch_size=hyp['opt']['batch_size'], aug=hyp['aug'],
                                    device='cpu')
    test_loader = ours.CifarLoader(cifar_source, train=False, batch_size=2000, device='cpu')
    result = ours.train(hyp, train_loader, test_loader, seed=7, verbose=False)
    model, logits = reference_run(hyp, train_loader.images, train_loader.labels, test_loader.images, seed=7,
                                  normalize=train_loader.normalize)
    reference_weights = [v for v in model.state_dict().values()]
    our_weights = [v for v in result['net'].state_dict().values()]
    assert len(reference_weights) == len(our_weights)
    for a, b in zip(reference_weights, our_weights):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5)
    assert torch.allclose(logits, ours.infer(result['net'], test_loader, tta_level=2), rtol=1e-4, atol=1e-4)
    reference_acc = (logits.argmax(1) == test_loader.labels).float().mean().item()
    assert result['tta_val_acc'] == pytest.approx(reference_acc, abs=1 / len(test_loader.labels))


def test_reference_crop_draws_one_offset_per_image_and_cuts_there():
    hyp = edited_hyp(load_script('airbench94.py'), [['opt.batch_size', 4],
                                                    ['net.widths', {'block1': 4, 'block2': 4, 'block3': 4}]])
    images = torch.rand(6, 3, 8, 8)
    loop = ReferenceLoop(hyp, images, torch.zeros(6, dtype=torch.long), seed=0, normalize=lambda x: x)
    loop.whiten()
    r = hyp['aug']['translate']
    torch.manual_seed(1)
    crops = loop._random_crops()
    torch.manual_seed(1)
    shifts = torch.randint(-r, r + 1, size=(6, 2))  # the published draw: (row, col) in [-r, r] per image
    for i, (dy, dx) in enumerate(shifts.tolist()):
        assert torch.equal(crops[i], loop.framed[i, :, r + dy:r + dy + 8, r + dx:r + dx + 8])
    assert crops.is_contiguous()


def test_reference_loop_runs_in_fp16_channels_last():
    hyp = edited_hyp(load_script('airbench94.py'), [['opt.batch_size', 128], ['opt.train_epochs', 1],
                                                    ['net.widths', {'block1': 8, 'block2': 16, 'block3': 16}],
                                                    ['net.whiten_images', 64]])
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(256, 3, 32, 32, generator=generator)
    test_images = torch.rand(32, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (256,), generator=generator)
    loop = ReferenceLoop(hyp, images, labels, seed=0, normalize=lambda x: (x - 0.5) / 0.25,
                         dtype=torch.half, channels_last=True)
    loop.whiten()
    assert loop.base.dtype == torch.half and loop.base.is_contiguous(memory_format=torch.channels_last)
    assert [loop.run_epoch(e) for e in range(loop.epoch_count())] == [2]
    assert torch.isfinite(loop.last_loss).all()
    logits = loop.tta_logits(test_images)
    assert logits.shape == (32, 10) and torch.isfinite(logits).all()
    convs = [m for m in loop.model.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in loop.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 7 and len(norms) == 6
    for conv in convs:
        assert conv.weight.dtype == torch.half and conv.weight.is_contiguous(memory_format=torch.channels_last)
    for norm in norms:
        assert all(t.dtype == torch.float for t in (norm.weight, norm.bias, norm.running_mean, norm.running_var))
    assert loop.model.top[2].weight.dtype == torch.half
