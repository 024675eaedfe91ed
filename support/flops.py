"""FLOPs of a whole training run, counted as SPEC.md counts them: torch.utils.flop_counter.FlopCounterMode
(convs and matmuls, 2 FLOPs per multiply-add) on the full-size network in fp32 on the CPU, per image and
per kind of step, times the steps of the script's own schedule at CIFAR-10's size. Used by
tests/test_progressive.py and benchmarks/flops_per_run.py."""
import collections
import functools
import math

import torch
from torch.utils.flop_counter import FlopCounterMode

CIFAR_TRAIN, CIFAR_TEST = 50000, 10000


def count_flops(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@functools.lru_cache(maxsize=None)
def flops_per_image(module, resolution, training=False, whiten_bias_trainable=True):
    """FLOPs per image of the script's full-size net in fp32 (a batch of 2): the forward, or with
    `training` forward + backward. The frozen whitening weight gets no gradient, nor the images;
    with the bias frozen too, neither does the first block conv's input."""
    net = module.make_net(module.hyp)
    net.whiten.bias.requires_grad = whiten_bias_trainable
    images, labels = torch.randn(2, 3, resolution, resolution), torch.tensor([0, 1])

    def step():
        loss = module.make_loss_fn(module.hyp)(net(images), labels)
        if training:
            loss.backward()
    return count_flops(step) / 2


def schedule(module):
    """(resolution, whitening bias trainable) of every step of the script's full-scale run, from its hyp:
    50,000 // batch_size steps per epoch; 32 px unless a curriculum says otherwise; the bias trains for
    whiten_bias_steps (airbench94_muon) or ceil(whiten_bias_epochs x steps per epoch)."""
    opt, aug, per_epoch = module.hyp['opt'], module.hyp['aug'], CIFAR_TRAIN // module.hyp['opt']['batch_size']
    bias_steps = opt.get('whiten_bias_steps') or math.ceil(opt['whiten_bias_epochs'] * per_epoch)
    return [(module.epoch_resolution(aug, s // per_epoch) if 'resolutions' in aug else 32, s < bias_steps)
            for s in range(math.ceil(opt['train_epochs'] * per_epoch))]


def run_flops(module):
    """{'training': forward and backward of every step, 'tta': the final full 6-view TTA of the test set at
    32 px, 'whole': both}, in FLOPs (optimizer arithmetic such as Newton-Schulz not included)."""
    training = module.hyp['opt']['batch_size'] * sum(n * flops_per_image(module, r, True, bias) for (r, bias), n in
                                                     collections.Counter(schedule(module)).items())
    tta = 6 * CIFAR_TEST * flops_per_image(module, 32)
    return dict(training=training, tta=tta, whole=training + tta)
