"""Our training equals a literal port of the published airbench94 training loop (published_port.py).

From the same seed both consume the RNG identically as long as translation is off (the port
draws shifts for the whole dataset, we draw them per batch; translation has exact tests of its
own), so any difference in initialization, whitening, flip, optimizer, schedule, lookahead,
BatchNorm or TTA shows up as a mismatch here.
"""
import pytest
import torch

from conftest import edited_hyp, load_script
from published_port import published_run


def test_training_equals_a_literal_port_of_the_published_loop(cifar_source):
    ours = load_script('airbench94.py')
    hyp = edited_hyp(ours)
    hyp['aug']['translate'] = 0  # see the module docstring
    train_loader = ours.CifarLoader(cifar_source, train=True, batch_size=hyp['opt']['batch_size'], aug=hyp['aug'],
                                    device='cpu')
    test_loader = ours.CifarLoader(cifar_source, train=False, batch_size=2000, device='cpu')
    result = ours.train(hyp, train_loader, test_loader, seed=7, verbose=False)
    model, logits = published_run(hyp, train_loader.images, train_loader.labels, test_loader.images, seed=7,
                                  normalize=train_loader.normalize)
    published_weights = [v for v in model.state_dict().values()]
    our_weights = [v for v in result['net'].state_dict().values()]
    assert len(published_weights) == len(our_weights)
    for a, b in zip(published_weights, our_weights):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5)
    assert torch.allclose(logits, ours.infer(result['net'], test_loader, tta_level=2), rtol=1e-4, atol=1e-4)
    published_acc = (logits.argmax(1) == test_loader.labels).float().mean().item()
    assert result['tta_val_acc'] == pytest.approx(published_acc, abs=1 / len(test_loader.labels))
