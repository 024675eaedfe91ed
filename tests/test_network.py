"""The network against SPEC.md: size, FLOPs, BatchNorm, dirac init, whitening init."""
import math

import torch
from torch.utils.flop_counter import FlopCounterMode



def test_parameter_count_matches_spec(module, figures):
    net = module.make_net(module.hyp)
    assert sum(p.numel() for p in net.parameters()) == figures['params']
    assert sum(p.numel() for p in net.parameters() if not p.requires_grad) == figures['frozen']


def test_forward_flops_per_image_match_spec(module, figures):
    with FlopCounterMode(display=False) as counter:
        module.make_net(module.hyp)(torch.randn(1, 3, 32, 32))
    assert round(counter.get_total_flops() / 1e6, 2) == figures['mflops']


def test_total_training_steps_match_spec(module, figures, loaders):
    loader = loaders[0]
    loader.images = torch.zeros(1, 3, 32, 32).expand(50000, -1, -1, -1)  # CIFAR-10's size, without the memory
    assert len(loader) == figures['steps_per_epoch']  # the last partial batch dropped
    # train() takes ceil(steps per epoch x train_epochs) steps (tests/test_training.py counts them in a run)
    assert math.ceil(len(loader) * module.hyp['opt']['train_epochs']) == figures['steps']


def test_batchnorm_has_fixed_unit_scale_trainable_bias_and_spec_momentum(module, figures):
    norms = [m for m in module.make_net(module.hyp).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) >= 6
    for norm in norms:
        assert norm.eps == 1e-12 and norm.momentum == figures['batchnorm_momentum']
        assert not norm.weight.requires_grad and torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert norm.bias.requires_grad and torch.equal(norm.bias, torch.zeros_like(norm.bias))


def test_no_biases_except_whitening_and_batchnorm(module, figures):
    net = module.make_net(module.hyp)
    with_bias = {name for name, _ in net.named_parameters() if name.endswith('bias')}
    assert 'whiten.bias' in with_bias
    norm_biases = {name + '.bias' for name, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert with_bias == norm_biases | {'whiten.bias'}
    assert torch.equal(net.whiten.bias, torch.zeros(24)) == figures['whiten_bias_starts_at_zero']
    assert net.whiten.bias.requires_grad
    assert not net.whiten.weight.requires_grad


def test_every_3x3_conv_starts_as_identity_on_its_inputs(module):
    convs = [m for m in module.make_net(module.hyp).modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) >= 6
    for conv in convs:
        c_in = conv.in_channels
        expected = torch.zeros(c_in, c_in, 3, 3)
        expected[range(c_in), range(c_in), 1, 1] = 1
        assert torch.equal(conv.weight[:c_in], expected)
        if conv.out_channels > c_in:  # the rest keep the default random init
            assert conv.weight[c_in:].abs().sum() > 0


def test_whitening_makes_patch_covariance_identity_and_negates(module):
    torch.manual_seed(0)
    images = torch.rand(200, 3, 32, 32) * torch.tensor([1.0, 0.5, 2.0]).view(1, 3, 1, 1) + torch.rand(200, 3, 1, 1)
    layer = module.make_net(module.hyp).whiten
    module.init_whitening_conv(layer, images, eps=module.hyp['net']['whiten_eps'])
    weight = layer.weight.detach()
    assert torch.equal(weight[12:], -weight[:12])
    eps = module.hyp['net']['whiten_eps']
    patches = torch.nn.functional.unfold(images, 2).transpose(0, 1).reshape(12, -1)  # every 2x2x3 patch
    eigenvalues = torch.linalg.eigvalsh(patches @ patches.T / patches.shape[1]).flip(0)
    out = torch.nn.functional.conv2d(images, weight[:12]).transpose(0, 1).reshape(12, -1)  # no bias
    covariance = out @ out.T / out.shape[1]
    # unit variance along every eigen-direction, shrunk by eps only where the eigenvalue is tiny
    assert torch.allclose(covariance, torch.diag(eigenvalues / (eigenvalues + eps)), atol=1e-4)
    assert eigenvalues[-1] < 0.1 < eigenvalues[0]  # the data has small and large directions
