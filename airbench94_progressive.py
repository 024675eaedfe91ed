"""airbench94_progressive.py: CIFAR-10 to 94% with a 28 -> 32 px curriculum, the fastest known recipe.

Published result (Fulcrum Research's "Fable-5" runs, recipe E5, certified schedule): 94.02% mean
TTA test accuracy in 1.865 s on one NVIDIA A100-SXM4-80GB (n=200 runs, torch 2.4.0), 0.25 PFLOPs.
That accuracy is graded as the 2026 record holders grade, on test images 2000-9999 only (on all
10,000: 94.028%); `harness.py --graded-split` grades ours the same way. Its deeper 24-28-32 px
sibling E1: 94.046% (all 10,000: 94.057%) in 1.828 s. Both build on hiverge's record (2.015 s) and on
airbench94_muon.py (github.com/KellerJordan/airbench). Ours: benchmarks/RESULTS.md.

    python airbench94_progressive.py      # compile in the warm-up, then 25 timed runs on CUDA
    python harness.py airbench94_progressive.py  # torchrun, statistics, hyp edits, saved logits
    python harness.py airbench94_progressive.py --preset E1  # E1 instead of E5 (PRESETS lists its values)

The method: airbench94_muon's network and optimizers, trained for 264 steps of batch 1536, the
first five epochs on 28 px windows of the unpadded images, then at 32 px; brightness and contrast
jitter; Muon over the six filters as one zero-padded batch, renormalised now and then and decayed;
a learning-rate floor and a weight-averaging tail. E1 (PRESETS['E1']) starts at 24 px, resizes
instead of cropping, trains 284 steps and gives Muon a higher learning rate.

Changes relative to airbench94.py (a test keeps everything else identical):
- hyp: batch_size 1536 (32 steps per epoch); train_epochs 8.25 (264 steps) and decay_epochs
  8.125 (the learning rates fall over 260 steps) to lr_floor 0.05 of their start; per-step
  learning rates whiten_bias_lr, norm_bias_lr, head_lr (SGD, momentum 0.825) and muon_lr,
  muon_momentum, muon_nesterov, newton_schulz_coefficients, newton_schulz_steps (Muon);
  renorm_min_interval and renorm_interval_growth; weight_decay 1.0418e-6 per example, for every
  group and the filters; label_smoothing 0.09; whiten_bias_epochs 0.2 (7 steps). aug: brightness,
  contrast, resolutions (per epoch) and resize; no cutout. net: batchnorm_momentum 0.4434,
  selective_tta; no scaling_factor. lookahead: start_before_decay_end, every_steps 4, decay
  0.7 (no decay_per_step or power). No lr, bias_scaler or warm-up (lr_warmup_frac, lr_start, lr_end).
  PRESETS: E1's values.
- Data: epoch_resolution and batch_crop replace batch_translate and batch_cutout. CifarLoader
  builds, at epoch 0, a normalized, coin-flipped, reflect-padded copy of the images; each
  epoch crops it (a window of the unpadded image below 32 px), mirrors it on odd epochs,
  jitters brightness then contrast per image, and shuffles the whole set.
- Network: precision_policy stores BatchNorm in fp16 on CUDA too, and sets Newton-Schulz's dtype
  (fp16 on CUDA; fp32 on the CPU, where fp16 matmuls are an order of magnitude slower); ConvGroup
  uses SiLU; Net can detach the whitening bias (a flag), pools globally (the size-agnostic max
  over all positions) and divides the logits by the feature width; make_net keeps the whitening
  bias's default init and gives the head unit std, as airbench94_muon.py; init_whitening_conv
  decomposes by SVD instead of eigh.
- Optimization: newton_schulz orthogonalizes a batch of zero-padded matrices; Muon renormalises
  the filters at due steps, steps them by -lr x NS(Nesterov direction) and then decays them;
  make_optimizers and set_learning_rates replace make_optimizer and lr_multiplier (linear
  decay to a floor); lookahead_decay is gone: the tail uses LookaheadState with decay 0.7.
- infer: selective test-time augmentation as an option (hyp selective_tta, off by default).
- train: one compiled forward-plus-loss step per resolution, told whether the whitening bias
  still trains; the EMA tail. fresh_net, compile_mode and compiled_nets as airbench94_muon.py's,
  plus the steps; warm_up trains every epoch of the schedule on 6 batches rather than a whole
  run: every graph a run uses compiles (the bias trains 2 steps at 28 px, as a run's 7).
Unlike the source (Fulcrum's runners/recipes/e5.py and e1.py, github.com/fulcrumresearch/cifar-10-speedrun):
- Each run draws its own first-epoch flip pattern, as airbench does. The source draws one per
  process under a fixed seed and every run reuses it, so the spread of its 200 runs leaves out
  that variance (whether the mean moves is not established).
- The clock. Ours, `time_seconds` (airbench's): the whitening init, the training (its epoch 0
  builds the normalized, flipped, padded copy of the images) and the final 6-view TTA;
  `train_seconds`: the same without the TTA. Fulcrum's 1.865 s ("compute-honest"): a timed
  prepare (re-initializing the weights, the whitening init, zeroing the optimizer state) plus the
  training loop; the padded copy is built once per process and evaluation is untimed. Neither of
  ours is theirs: compare a time only with one measured the same way.
- As in this family: the loss is summed in fp32 (the source backpropagates an fp16 sum), SGD is
  foreach rather than fused, and the augmentation runs eagerly (the source compiles it).
"""
import copy
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

import argparse, contextlib, hashlib, io, json, os, pathlib, pickle  # noqa: E401 (for the data files and main)
import platform, random, signal, sys, tarfile, tempfile, zlib  # noqa: E401

#############################################
#              Hyperparameters              #
#############################################

hyp = {
    'opt': {
        'train_epochs': 8.25,     # ceil(8.25 x 32) = 264 steps: the last epoch stops 8 steps in
        'decay_epochs': 8.125,    # the learning rates fall linearly over ceil(8.125 x 32) = 260 steps...
        'lr_floor': 0.05,         # ...to this fraction of their start, held from then on
        'batch_size': 1536,
        'whiten_bias_lr': 0.0573,  # SGD learning rates per step at step 0: whitening bias,
        'norm_bias_lr': 0.0573,   # BatchNorm biases,
        'head_lr': 0.5415,        # head weight
        'momentum': 0.825,        # SGD's, Nesterov
        'weight_decay': 1.0418e-6,  # per example, x batch_size per step: SGD's is x the lr multiplier and goes through
                                    # momentum (added to the gradient); Muon's is x the lr, after the update (decoupled)
        'label_smoothing': 0.09,
        'whiten_bias_epochs': 0.2,  # the whitening bias trains ceil(0.2 x 32) = 7 steps, its lr falling to 0
        'muon_lr': 0.205,         # Muon, for the 3x3 conv filters
        'muon_momentum': 0.655,
        'muon_nesterov': True,
        'newton_schulz_coefficients': (3.4576, -4.7391, 2.0843),  # (a, b, c) of the quintic iteration
        'newton_schulz_steps': 3,
        'renorm_min_interval': 2,  # renormalise the filters at step k (1, 2, ...) once k - (the last such k) reaches
        'renorm_interval_growth': 15,  # renorm_min_interval + floor(renorm_interval_growth x k / decay steps)
    },
    'aug': {
        'flip': True,             # alternating flip
        'translate': 2,           # pixels: the crop's offset range, 2 x translate + 1 per axis
        'brightness': 0.1399,     # x <- (x + b) * c per image, b ~ U(-brightness, brightness),
        'contrast': 0.1308,       # c ~ U(1 - contrast, 1 + contrast), on normalized values
        'resolutions': [28, 28, 28, 28, 28, 32, 32, 32, 32],  # per epoch; later epochs use the last
        'resize': False,          # below 32 px: False a window of the unpadded image, True (E1) a resized crop
    },
    'net': {
        'widths': {'block1': 64, 'block2': 256, 'block3': 256},
        'batchnorm_momentum': 0.4434,  # PyTorch convention; the source's "0.5566" is 1 - 0.4434
        'whiten_eps': 5e-4,
        'whiten_images': 5000,    # training images whose patches initialize the whitening conv
        'tta_level': 2,           # test-time augmentation: 0 none, 1 mirror, 2 mirror + translate
        'selective_tta': 0.0,     # > 0: plain logits, and 6 equal views for this least confident fraction (0.25)
    },
    'lookahead': {
        'start_before_decay_end': 8,  # the EMA starts this many steps before the decay ends,
        'every_steps': 4,         # is updated every this many steps after, and replaces the weights
        'decay': 0.7,
    },
}

# Fulcrum's E1 (1.828 s published; E5 above: 1.865 s): every value in which it differs from E5, set at once by
# `python harness.py airbench94_progressive.py --preset E1`. Its other differences are speed only (one CUDA graph
# for the whole run, the optimizers inside it, Newton-Schulz grouped by shape) and are not reproduced here
PRESETS = {
    'E1': {'aug.resolutions': [24, 24, 24, 28, 28, 28, 32, 32, 32],  # 96 / 96 / 92 steps at 24 / 28 / 32 px,
           'aug.resize': True,          # 32 px crops resized below 32 px (bilinear), not windows
           'opt.train_epochs': 8.875,   # 284 steps
           'opt.decay_epochs': 8.5,     # the learning rates fall over 272 steps; EMA after steps 268, 272, ..., 284
           'opt.muon_lr': 0.2255},
}

#############################################
#          Data and augmentation            #
#############################################

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def epoch_resolution(aug, epoch):
    """The side in pixels that the network sees in `epoch` (0-based)."""
    resolutions = aug.get('resolutions', [32])
    return resolutions[min(epoch, len(resolutions) - 1)]


def batch_crop(images, size):
    """A random size x size crop of each (square) image, its top-left corner uniform per image and axis."""
    n, side = len(images), images.size(-1)
    # Every crop of every image as a view (N, row, column, H, W, C); one gather picks each image's own
    crops = images.unfold(2, size, 1).unfold(3, size, 1).permute(0, 2, 3, 4, 5, 1)
    dy, dx = torch.randint(0, side - size + 1, (2, n), device=images.device)
    return crops[torch.arange(n, device=images.device), dy, dx].permute(0, 3, 1, 2)


class CifarLoader:
    """CIFAR-10 on one device as one tensor, served in augmented batches. `images` (N,3,32,32 in [0,1], stored as
    `policy` says) and `labels` may be replaced before iterating, e.g. by a subset, for data selection."""

    def __init__(self, data_dir, train=True, batch_size=1024, aug=None, drop_last=None, shuffle=None, device=None,
                 policy=None):
        data, self.data_dir = load_cifar10(data_dir), data_dir  # data_dir: for a test split from the same folder
        split = 'train' if train else 'test'
        self.device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
        self.policy = policy or precision_policy(self.device)
        dtype, memory_format = self.policy['dtype'], self.policy['memory_format']
        # uint8 crosses to the device and converts there: less traffic, at most 1.5x the result in memory
        images = data[split + '_images'].contiguous(memory_format=memory_format).to(self.device)
        self.images = images.to(dtype).div_(255)
        self.labels = data[split + '_labels'].to(self.device)
        self.mean = torch.tensor(CIFAR_MEAN, dtype=dtype, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(CIFAR_STD, dtype=dtype, device=self.device).view(1, 3, 1, 1)
        self.aug, self.batch_size, self.epoch = dict(aug or {}), batch_size, 0
        unknown = set(self.aug) - {'flip', 'translate', 'brightness', 'contrast', 'resolutions', 'resize'}
        if unknown:
            raise ValueError('unknown augmentation in %s' % sorted(unknown))
        self.drop_last = train if drop_last is None else drop_last
        self.shuffle = train if shuffle is None else shuffle

    def __len__(self):
        return len(self.images) // self.batch_size if self.drop_last else math.ceil(len(self.images) / self.batch_size)

    def normalize(self, images):
        return (images - self.mean) / self.std

    def augment(self, epoch):
        """This epoch's view of every image, in image order."""
        pad, n = self.aug.get('translate', 0), len(self.images)
        if epoch == 0:  # made once per run: normalized, a coin flip per image, reflect-padded by `translate`
            images = self.normalize(self.images)
            if self.aug.get('flip'):
                flip = torch.rand(n, device=self.device) < 0.5
                images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
            self.padded = F.pad(images, (pad,) * 4, mode='reflect') if pad else images
        # The crop comes from the centre size + 2 x translate pixels of the padded image: at 32 px all of it (the
        # image shifted by up to `translate`); below, the unpadded image (the centre window shifted by up to that)
        size = 32 if self.aug.get('resize') else epoch_resolution(self.aug, epoch)
        side = size + 2 * pad
        start = (self.padded.size(-1) - side) // 2
        images = batch_crop(self.padded[:, :, start:start + side, start:start + side], size)
        if self.aug.get('flip') and epoch % 2 == 1:
            images = images.flip(-1)  # alternating flip: every image shows its other orientation on odd epochs
        if self.aug.get('brightness') or self.aug.get('contrast'):
            shift = torch.empty(n, 1, 1, 1, dtype=images.dtype, device=self.device)
            scale = torch.empty_like(shift)
            shift.uniform_(-self.aug.get('brightness', 0), self.aug.get('brightness', 0))
            scale.uniform_(1 - self.aug.get('contrast', 0), 1 + self.aug.get('contrast', 0))
            images.add_(shift).mul_(scale)  # in place: the crop (or its mirror) is this epoch's own copy
        # The conv's layout, asked for: the crop's gather returns another
        return images.contiguous(memory_format=self.policy['memory_format'])

    def __iter__(self):
        images = self.augment(self.epoch)
        n = len(self.images)
        order = torch.randperm(n, device=self.device) if self.shuffle else torch.arange(n, device=self.device)
        self.epoch += 1
        for i in range(len(self)):
            batch = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield images[batch], self.labels[batch]

#############################################
#                 Network                   #
#############################################

def precision_policy(device):
    """How data and network are stored on `device`: on CUDA all fp16 and channels_last (tensor cores), and
    Newton-Schulz in fp16; elsewhere fp32. Tests pass precision_policy('cuda') to run the CUDA configuration
    on a CPU."""
    if torch.device(device).type == 'cuda':
        return dict(dtype=torch.half, memory_format=torch.channels_last, batchnorm_dtype=torch.half,
                    newton_schulz_dtype=torch.half)
    return dict(dtype=torch.float, memory_format=torch.contiguous_format, batchnorm_dtype=torch.float,
                newton_schulz_dtype=torch.float)


class BatchNorm(nn.BatchNorm2d):
    def __init__(self, num_features, momentum, eps=1e-12):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.weight.requires_grad = False  # scale fixed at 1; only the bias trains


class Conv(nn.Conv2d):
    def __init__(self, channels_in, channels_out):
        super().__init__(channels_in, channels_out, kernel_size=3, padding='same', bias=False)

    def reset_parameters(self):
        super().reset_parameters()
        w = self.weight.data
        torch.nn.init.dirac_(w[:w.size(1)])  # the first C_in filters pass their input through


class ConvGroup(nn.Module):
    def __init__(self, channels_in, channels_out, batchnorm_momentum):
        super().__init__()
        self.conv1 = Conv(channels_in, channels_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(channels_out, batchnorm_momentum)
        self.conv2 = Conv(channels_out, channels_out)
        self.norm2 = BatchNorm(channels_out, batchnorm_momentum)
        self.activ = nn.SiLU()

    def forward(self, x):
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


class Net(nn.Module):
    def __init__(self, hyp):
        super().__init__()
        widths, momentum = hyp['net']['widths'], hyp['net']['batchnorm_momentum']
        whiten_width = 2 * 3 * 2**2  # 12 patch directions of a 2x2x3 patch, and their negatives
        self.whiten = nn.Conv2d(3, whiten_width, kernel_size=2, padding=0, bias=True)
        self.blocks = nn.Sequential(ConvGroup(whiten_width, widths['block1'], momentum),
                                    ConvGroup(widths['block1'], widths['block2'], momentum),
                                    ConvGroup(widths['block2'], widths['block3'], momentum))
        self.head = nn.Linear(widths['block3'], 10, bias=False)

    def forward(self, x, whiten_bias_grad=True):
        bias = self.whiten.bias if whiten_bias_grad else self.whiten.bias.detach()  # detached: no gradient, so no step
        x = F.gelu(F.conv2d(x, self.whiten.weight, bias))
        x = self.blocks(x)  # N,3,32,32 -> N,24,31,31 -> ... -> N,C,3,3 (28 px: 27, ..., 3)
        # A global max, so any resolution works (MaxPool2d(3) at 28 and 32 px). As the source: max, not amax, which
        # NaN-diverges under inductor there and splits the gradient of tied maxima (max and MaxPool2d give it to one)
        features = x.flatten(2).max(dim=2).values  # N,C
        return self.head(features) / features.size(1)  # divided by the feature width


def make_net(hyp, device='cpu', policy=None):
    """The network on `device`, stored as `policy` says (by default precision_policy(device))."""
    policy = policy or precision_policy(device)
    net = Net(hyp)
    net.whiten.weight.requires_grad = False  # set from data by init_whitening_conv, then frozen
    net.head.weight.data /= net.head.weight.data.std()  # unit standard deviation; the whitening bias keeps its default init
    net = net.to(device, policy['dtype'], memory_format=policy['memory_format'])
    for module in net.modules():
        if isinstance(module, BatchNorm):
            module.to(policy['batchnorm_dtype'])
    return net


def init_whitening_conv(layer, images, eps):
    """Filters: the 2x2 patch covariance's eigenvectors (of `images`) at unit output variance; then their negatives."""
    c, h, w = layer.weight.shape[1:]
    patches = images.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c * h * w).float()
    covariance = patches.T @ patches / len(patches)  # uncentered
    eigenvectors, eigenvalues, _ = torch.linalg.svd(covariance)  # symmetric PSD: its eigenpairs, largest first
    filters = (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).view(c * h * w, c, h, w)
    layer.weight.data[:] = torch.cat((filters, -filters))

#############################################
#               Optimization                #
#############################################

def newton_schulz(G, coefficients, steps, eps=1e-5):
    """A batch of matrices G (B, rows, columns; rows <= columns) made roughly orthogonal, in G's
    dtype: the same singular vectors, with the singular values moved into about 0.5..1.5 by
    `steps` quintic Newton-Schulz iterations whose (a, b, c) = `coefficients` are tuned for speed."""
    a, b, c = coefficients
    X = G / (G.norm(dim=(1, 2), keepdim=True) + eps)  # singular values at most 1, where the iteration converges
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X  # each singular value s -> a s + b s^3 + c s^5
    return X


compiled_newton_schulz = torch.compile(newton_schulz)


class Muon(torch.optim.Optimizer):
    """Momentum, then orthogonalization of the update: for 4-D conv filters W (C_out, C_in, k, k).

    At optimizer step k (1, 2, ...), if renormalisation is due, each W is first rescaled to
    Frobenius norm sqrt(C_out); due when k - (the last such k, or 0) >= renorm_min_interval +
    floor(renorm_interval_growth x k / decay_steps), an interval that grows from 2 steps to 17.
    Per filter, with gradient g: buf <- momentum * buf + g; direction d = g + momentum * buf
    (Nesterov) or buf. All directions, as C_out x C_in*k*k matrices zero-padded
    to the largest, go through Newton-Schulz as one batch (zero padding is inert: each result is
    its own matrix's, cropped back). Then W <- W - lr * NS(d), and W <- W * (1 - lr * weight_decay)."""

    def __init__(self, params, lr, momentum, nesterov, weight_decay, coefficients, steps, renorm_min_interval,
                 renorm_interval_growth, decay_steps, dtype):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                                      coefficients=coefficients, steps=steps))
        self.renorm_min_interval, self.renorm_interval_growth = renorm_min_interval, renorm_interval_growth
        self.decay_steps, self.dtype = decay_steps, dtype
        self.steps_taken, self.last_renorm = 0, 0

    def renorm_due(self, k):
        interval = self.renorm_min_interval + (self.renorm_interval_growth * k) // self.decay_steps
        return k - self.last_renorm >= interval

    @torch.no_grad()
    def step(self):
        self.steps_taken += 1
        renorm = self.renorm_due(self.steps_taken)
        if renorm:
            self.last_renorm = self.steps_taken
        for group in self.param_groups:
            params = [p for p in group['params'] if p.grad is not None]
            directions = []
            for p in params:
                state = self.state[p]
                if 'momentum_buffer' not in state:
                    state['momentum_buffer'] = torch.zeros_like(p.grad)
                buf = state['momentum_buffer']
                buf.mul_(group['momentum']).add_(p.grad)
                directions.append(p.grad.add(buf, alpha=group['momentum']) if group['nesterov'] else buf)
            if not params:
                continue
            rows = max(len(p) for p in params)
            columns = max(p[0].numel() for p in params)
            padded = torch.zeros(len(params), rows, columns, dtype=self.dtype, device=params[0].device)
            for matrix, d in zip(padded, directions):
                matrix[:len(d), :d[0].numel()] = d.reshape(len(d), -1)
            orthogonalize = compiled_newton_schulz if padded.is_cuda else newton_schulz
            updates = orthogonalize(padded, group['coefficients'], group['steps'])
            for p, update in zip(params, updates):
                if renorm:
                    p.mul_(len(p)**0.5 / (p.norm() + 1e-7))  # a tensor factor: no host sync
                p.add_(update[:len(p), :p[0].numel()].reshape(p.shape), alpha=-group['lr'])
                p.mul_(1 - group['lr'] * group['weight_decay'])


def make_optimizers(net, hyp, decay_steps, whiten_bias_steps, policy):
    """Nesterov SGD for the whitening bias, the BatchNorm biases and the head (three groups), and
    Muon for the 3x3 conv filters. Every group keeps its step-0 learning rate ('initial_lr'), the
    steps over which set_learning_rates decays it ('decay_steps') and its floor ('floor')."""
    opt = hyp['opt']
    decay = opt['weight_decay'] * opt['batch_size']  # per step: x the lr multiplier for SGD, x the lr for Muon
    norm_biases = [m.bias for m in net.modules() if isinstance(m, BatchNorm)]
    groups = [dict(params=[net.whiten.bias], lr=opt['whiten_bias_lr'], decay_steps=whiten_bias_steps, floor=0),
              dict(params=norm_biases, lr=opt['norm_bias_lr'], decay_steps=decay_steps, floor=opt['lr_floor']),
              dict(params=[net.head.weight], lr=opt['head_lr'], decay_steps=decay_steps, floor=opt['lr_floor'])]
    for group in groups:
        group['weight_decay'] = decay / group['lr']  # SGD adds this x the weight to the gradient; x the lr, it is decay
    # foreach: the batched update PyTorch picks on CUDA by default, asked for so every device runs it
    sgd = torch.optim.SGD(groups, momentum=opt['momentum'], nesterov=True, foreach=True)
    filters = [p for p in net.parameters() if p.dim() == 4 and p.requires_grad]  # not the frozen whitening weight
    muon = Muon([dict(params=filters, decay_steps=decay_steps, floor=opt['lr_floor'])], lr=opt['muon_lr'],
                momentum=opt['muon_momentum'], nesterov=opt['muon_nesterov'], weight_decay=decay,
                coefficients=opt['newton_schulz_coefficients'], steps=opt['newton_schulz_steps'],
                renorm_min_interval=opt['renorm_min_interval'], renorm_interval_growth=opt['renorm_interval_growth'],
                decay_steps=decay_steps, dtype=policy['newton_schulz_dtype'])
    for group in sgd.param_groups + muon.param_groups:
        group['initial_lr'] = group['lr']
    return sgd, muon


def set_learning_rates(optimizers, step):
    """Before optimizer step `step` (0-based): each group's lr falls linearly from its initial
    value over its decay_steps, and holds at its floor (a fraction of the initial value) from there.
    No warm-up."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group['lr'] = group['initial_lr'] * max(1 - step / group['decay_steps'], group['floor'])


class LookaheadState:
    """An EMA of every floating-point entry of the state dict (weights, biases, BN statistics)."""

    def __init__(self, net):
        self.params = [v for v in net.state_dict().values() if v.is_floating_point()]  # share the net's memory
        self.ema = [v.clone() for v in self.params]

    def update(self, decay):
        # ema <- ema + (1 - decay) * (param - ema), then param <- ema: two batched kernels, not two per tensor
        torch._foreach_lerp_(self.ema, self.params, 1 - decay)
        torch._foreach_copy_(self.params, self.ema)


def make_loss_fn(hyp):
    """Label-smoothed cross-entropy summed over the batch, in fp32: an fp16 sum overflows (65504) past mean loss 64."""
    smoothing = hyp['opt']['label_smoothing']
    return lambda logits, labels: F.cross_entropy(logits.float(), labels, label_smoothing=smoothing, reduction='sum')

#############################################
#         Evaluation: test-time aug.        #
#############################################

def infer(net, loader, tta_level=0, selective=0.0):
    """Logits of every image of `loader`, in order, averaged over the test-time views: level 0 the image; 1 it and its
    mirror; 2 also both shifted one pixel up-left and down-right (weights 1/4 the plain views, 1/8 the shifted).
    selective > 0 (hiverge's selective TTA; tta_level is then unused): the plain logits, except for the `selective`
    fraction of images with the lowest top softmax probability, which get the mean of level 2's six views."""
    def conv_layout(x):  # flips and reflect padding may return another layout than the net's
        return x.contiguous(memory_format=loader.policy['memory_format'])

    def plain(x):
        return net(x).clone()  # compiled, the net may reuse its output memory (CUDA graphs) on the next call

    def mirror(x):
        return 0.5 * net(x) + 0.5 * net(conv_layout(x.flip(-1)))

    def mirror_translate(x, weight_plain=0.5):
        h, w = x.shape[-2:]
        padded = F.pad(x, (1,) * 4, mode='reflect')
        shifted = 0.5 * mirror(conv_layout(padded[:, :, :h, :w])) + 0.5 * mirror(conv_layout(padded[:, :, 2:, 2:]))
        return weight_plain * mirror(x) + (1 - weight_plain) * shifted

    def six_equal_views(x):  # selective TTA's average: 1/6 each, where level 2 gives the unshifted views more
        return mirror_translate(x, weight_plain=1 / 3)

    views = [plain, mirror, mirror_translate][0 if selective else tta_level]
    net.eval()
    with torch.no_grad():
        logits = torch.cat([views(loader.normalize(x)) for x in loader.images.split(loader.batch_size)])
        if selective:
            chosen = logits.float().softmax(1).amax(1).argsort()[:int(selective * len(logits))]  # least confident
            logits[chosen] = torch.cat([six_equal_views(loader.normalize(loader.images[i]))
                                        for i in chosen.split(loader.batch_size)])
        return logits


def evaluate(net, loader, tta_level=0):
    logits = infer(net, loader, tta_level)
    return (logits.argmax(1) == loader.labels).float().mean().item()

#############################################
#                 Training                  #
#############################################

class TrainingDiverged(Exception):
    """The training loss became NaN or infinite."""


compiled_nets = {}  # (device, policy, hyp the steps depend on) -> (net, compiled net, compiled steps): once per process


def fresh_net(hyp, device, policy):
    """A newly initialized network, its compiled self (for evaluation) and one compiled training step
    (forward and loss) per resolution of the curriculum: compiled on first use, then reused.

    Every call reloads all weights and BatchNorm statistics from a new initialization drawn
    from the RNG exactly as make_net draws it, so a run is the same as with an eager network.
    (The whitening bias is frozen by a flag into the step, so which parameters train never changes.)"""
    fresh = make_net(hyp, 'cpu')
    key = (str(device), repr(policy), repr(hyp['net']), repr(hyp['aug']), hyp['opt']['label_smoothing'])
    if key not in compiled_nets:
        with torch.random.fork_rng(devices=[]):  # building it must not shift this run's random stream
            net = make_net(hyp, device, policy)
        loss_fn = make_loss_fn(hyp)

        def make_step(resolution):
            def step(inputs, labels, whiten_bias_grad):  # E1's resize happens here, fused into the compiled step
                if inputs.size(-1) != resolution:
                    inputs = F.interpolate(inputs, size=(resolution, resolution), mode='bilinear',
                                           align_corners=False, antialias=False)
                outputs = net(inputs, whiten_bias_grad)
                return outputs, loss_fn(outputs, labels)
            # A graph per value of whiten_bias_grad (a bool). fullgraph: past dynamo's recompile limit a step would
            # silently run eagerly; so it raises. dynamic=False: the steps share one code object, and a second
            # shape would make it symbolic
            return torch.compile(step, mode=compile_mode(device), fullgraph=True, dynamic=False)
        steps = {r: make_step(r) for r in set(hyp['aug'].get('resolutions', [32]))}
        compiled_nets[key] = (net, torch.compile(net, mode=compile_mode(device), fullgraph=True), steps)
    net, model, steps = compiled_nets[key]
    net.load_state_dict(fresh.state_dict())
    return net, model, steps


def compile_mode(device):
    """The torch.compile mode used on `device`."""
    return 'max-autotune' if device.type == 'cuda' else 'default'  # max-autotune's kernel search is for GPUs


def device_clock(device):
    """Wall-clock seconds once all queued work on `device` is done (CUDA runs asynchronously)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter()


def train(hyp, train_loader, test_loader, seed=0, run='', verbose=True, on_epoch=None):
    """Train one network from scratch with the RNG seeded by `seed`.
    Returns {'net', 'logits' (the final TTA's, test set order), 'tta_val_acc', 'val_acc', 'epochs',
    'time_seconds' (whitening init + training + final TTA, device-synchronized, as airbench times),
    'train_seconds' (the same without the final TTA)}.
    on_epoch(row, steps so far, total steps), if given, is called outside the clock: with row None as the run
    starts its clock, then after each epoch with its row."""
    opt = hyp['opt']
    if (train_loader.batch_size, train_loader.aug, test_loader.policy) != (opt['batch_size'], hyp['aug'],
                                                                            train_loader.policy):
        raise ValueError("train_loader must use hyp['opt']['batch_size'] and hyp['aug'], test_loader its policy")
    if len(train_loader) == 0:
        raise ValueError('%d training images are fewer than one batch' % len(train_loader.images))
    device = train_loader.images.device
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True  # time the conv algorithms per shape; the warm-up pays the search
    torch.manual_seed(seed)
    steps_per_epoch = len(train_loader)
    total_steps = math.ceil(steps_per_epoch * opt['train_epochs'])  # the last epoch stops part-way
    decay_steps = math.ceil(steps_per_epoch * opt['decay_epochs'])
    whiten_bias_steps = math.ceil(steps_per_epoch * opt['whiten_bias_epochs'])
    lookahead_start = decay_steps - hyp['lookahead']['start_before_decay_end']
    net, model, compiled_steps = fresh_net(hyp, device, train_loader.policy)
    optimizers = make_optimizers(net, hyp, decay_steps, whiten_bias_steps, train_loader.policy)
    train_loader.epoch = 0  # a fresh flip pattern and static cache for every run
    epochs, step, lookahead = [], 0, None

    if on_epoch:
        on_epoch(None, 0, total_steps)
    start = device_clock(device)
    init_whitening_conv(net.whiten, train_loader.normalize(train_loader.images[:hyp['net']['whiten_images']]),
                        hyp['net']['whiten_eps'])
    time_seconds = device_clock(device) - start

    for epoch in range(math.ceil(opt['train_epochs'])):
        start = device_clock(device)
        forward_and_loss = compiled_steps[epoch_resolution(hyp['aug'], epoch)]
        model.train()
        for inputs, labels in train_loader:
            # The whitening bias is detached after its steps: no gradient, so SGD neither updates nor decays it
            outputs, loss = forward_and_loss(inputs, labels, step < whiten_bias_steps)
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            set_learning_rates(optimizers, step)
            for optimizer in optimizers:
                optimizer.step()
            step += 1
            # The tail: an EMA of the weights from lookahead_start on, which replaces them every few steps
            if step >= lookahead_start and lookahead is None:
                lookahead = LookaheadState(net)
            elif step > lookahead_start and (step - lookahead_start) % hyp['lookahead']['every_steps'] == 0:
                lookahead.update(decay=hyp['lookahead']['decay'])
            if step == total_steps:
                break
        time_seconds += device_clock(device) - start

        # Progress report, outside the clock: the only host syncs of the epoch are here. The last
        # step's outputs are read first: compiled as CUDA graphs, the step's next call overwrites them
        train_loss = loss.item() / len(labels)
        train_acc = (outputs.detach().argmax(1) == labels).float().mean().item()
        if not math.isfinite(train_loss):
            raise TrainingDiverged('the training loss became %s in epoch %d (step %d)' % (train_loss, epoch + 1, step))
        row = dict(run=run, epoch=epoch + 1, train_loss=train_loss, train_acc=train_acc, time_seconds=time_seconds,
                   val_acc=evaluate(model, test_loader, tta_level=0))
        epochs.append(row)
        if verbose:
            print(format_row(row), flush=True)
        if on_epoch:
            on_epoch(row, step, total_steps)

    train_seconds, start = time_seconds, device_clock(device)
    logits = infer(model, test_loader, tta_level=hyp['net']['tta_level'], selective=hyp['net']['selective_tta'])
    tta_val_acc = (logits.argmax(1) == test_loader.labels).float().mean().item()
    time_seconds += device_clock(device) - start
    if verbose:
        print(format_row(dict(run=run, epoch='eval', tta_val_acc=tta_val_acc, time_seconds=time_seconds)), flush=True)
    # A copy the caller keeps: a later run may reuse this network (the compiled scripts do)
    return dict(net=copy.deepcopy(net), logits=logits, tta_val_acc=tta_val_acc, val_acc=epochs[-1]['val_acc'],
                time_seconds=time_seconds, train_seconds=train_seconds, epochs=epochs)

#############################################
#  Files, table, main: no method from here  #
#############################################

CIFAR10_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'
CIFAR10_TARBALL, CIFAR10_TARBALL_MD5 = 'cifar-10-python.tar.gz', 'c58f30108f718f92721af3b95e74349a'
CIFAR10_FOLDER, CACHE_FILE = 'cifar-10-batches-py', 'cifar10_uint8.pt'
CIFAR10_BATCHES = {'train': ['data_batch_%d' % i for i in range(1, 6)], 'test': ['test_batch']}


class DataError(Exception):
    """The dataset is missing, corrupt or malformed; the message says which file and what to do."""


class BatchUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else, so a crafted batch file cannot run code."""
    def find_class(self, module, name):
        if module not in ('numpy', 'numpy.core.multiarray', 'numpy._core.multiarray') or \
                name not in ('ndarray', 'dtype', '_reconstruct'):
            raise pickle.UnpicklingError('forbidden global %s.%s' % (module, name))
        import numpy  # numpy 2 renamed numpy.core to numpy._core
        return (getattr(numpy, '_core', None) or numpy.core).multiarray._reconstruct if name == '_reconstruct' \
            else getattr(numpy, name)


def check_dataset(data, source):
    """`data` if it holds uint8 images N,3,32,32 and int64 labels 0..9 for both splits, else DataError."""
    for split in ('train', 'test'):
        images, labels = data.get(split + '_images'), data.get(split + '_labels')
        if not (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor) and images.dtype == torch.uint8
                and images.shape[1:] == (3, 32, 32) and labels.dtype == torch.int64 and len(images) > 0
                and labels.shape == images.shape[:1] and 0 <= labels.min() <= labels.max() <= 9):
            raise DataError('%s: the %s split is malformed (expected uint8 images N x 3 x 32 x 32 and '
                            'int64 labels 0..9)' % (source, split))
    return data


def atomic_write(path, write_fn, mode='wb'):
    """Write a file through a temporary one beside it, so a crash never leaves half a file."""
    tmp = '%s.%d.tmp' % (path, os.getpid())
    with open(tmp, mode) as f:
        write_fn(f)
    os.replace(tmp, path)


def load_cifar10(data_dir):
    """CIFAR-10 as CPU tensors {train,test}_{images,labels} (uint8 N,3,32,32; int64) from the first in `data_dir`
    of: our cache; the official batches folder; the official tarball (MD5-checked, read, not extracted); a download."""
    cache, folder = os.path.join(data_dir, CACHE_FILE), os.path.join(data_dir, CIFAR10_FOLDER)
    tarball = os.path.join(data_dir, CIFAR10_TARBALL)
    if os.path.exists(cache):
        try:
            return check_dataset(torch.load(cache, weights_only=True), cache)
        except Exception as e:  # our own file: rebuild it from the source files
            print('note: rebuilding the unreadable cache %s (%s)' % (cache, type(e).__name__), file=sys.stderr)
    if not os.path.isdir(folder) and not os.path.exists(tarball):
        try:
            import torchvision  # only here: the rest of the script needs torch alone
            torchvision.datasets.utils.download_url(CIFAR10_URL, data_dir, CIFAR10_TARBALL, CIFAR10_TARBALL_MD5)
        except Exception as e:
            raise DataError('no CIFAR-10 in %s, and the download failed (%s). Put %s (from %s) or its extracted %s/ '
                            'there, or pass --data-dir' % (data_dir, type(e).__name__, CIFAR10_TARBALL, CIFAR10_URL,
                                                           CIFAR10_FOLDER)) from None
    if os.path.isdir(folder):  # batch file name -> its bytes
        source, blobs = folder, {n: pathlib.Path(folder, n).read_bytes() for n in os.listdir(folder)
                                 if n in CIFAR10_BATCHES['train'] + CIFAR10_BATCHES['test']}
    else:
        blob, source = pathlib.Path(tarball).read_bytes(), tarball
        md5 = hashlib.md5(blob).hexdigest()
        if md5 != CIFAR10_TARBALL_MD5:
            raise DataError('%s has MD5 %s, not the official %s: it is truncated, corrupt or not the official archive. '
                            'Delete it to download again, or put the extracted %s/ folder in %s'
                            % (tarball, md5, CIFAR10_TARBALL_MD5, CIFAR10_FOLDER, data_dir))
        try:
            with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
                blobs = {m.name.split('/')[-1]: tar.extractfile(m).read() for m in tar if m.isfile()}
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise DataError('could not read %s (%s: %s)' % (tarball, type(e).__name__, e)) from None
    data = {}
    for split, names in CIFAR10_BATCHES.items():
        batches = []
        for name in names:
            try:
                batch = BatchUnpickler(io.BytesIO(blobs[name]), encoding='latin1').load()
                batches.append((torch.from_numpy(batch['data'].copy()).view(-1, 3, 32, 32),
                                torch.tensor([int(y) for y in batch['labels']], dtype=torch.int64)))
            except Exception as e:
                raise DataError('%s in %s: missing or not a CIFAR-10 batch file (%s: %s); replace it with an intact '
                                'copy' % (name, source, type(e).__name__, e)) from None
        data[split + '_images'], data[split + '_labels'] = (torch.cat(parts) for parts in zip(*batches))
    atomic_write(cache, lambda f: torch.save(check_dataset(data, source), f))
    return data


LOG_COLUMNS = ['run', 'epoch', 'train_loss', 'train_acc', 'val_acc', 'tta_val_acc', 'time_seconds']


def format_row(row):
    """One fixed-width table row from a dict keyed by LOG_COLUMNS (missing keys print blank)."""
    return '| ' + ' | '.join(('%.4f' % row[c] if isinstance(row.get(c), float) else str(row.get(c, '')))
                             .rjust(max(len(c), 6)) for c in LOG_COLUMNS) + ' |'


class Forecast:
    """Says once, early, how long the whole command will take (`phases` runs of hyp's schedule, the warm-up
    included) and, on a CPU, which flags train just one network (`shorter`). Measured in the first epoch free of
    one-time costs: not the command's first on CUDA (cuDNN's algorithm search), nor one in which torch.compile
    compiled. Give on_epoch to the warm-up and every run: train() calls it between epochs, outside the clock."""

    def __init__(self, hyp, train_loader, phases, shorter, start):
        epochs = hyp['opt']['train_epochs']
        self.run_steps, self.epochs = math.ceil(len(train_loader) * epochs), math.ceil(epochs)
        self.test_passes = self.epochs + [1, 2, 6][hyp['net']['tta_level']]  # per run: one an epoch, then the TTA's
        self.phases, self.shorter, self.start = phases, shorter, start
        self.cuda, self.epochs_seen, self.said = train_loader.images.device.type == 'cuda', 0, False

    @staticmethod
    def graphs_compiled():
        dynamo = sys.modules.get('torch._dynamo.utils')  # never imported: nothing compiled
        return dynamo.counters['stats']['unique_graphs'] if dynamo else 0

    @staticmethod
    def duration(seconds):
        units = [(86400, 'days'), (3600, 'h'), (60, 'min'), (1, 's')]
        return next('%.2g %s' % (seconds / unit, name) for unit, name in units if seconds >= 1.5 * unit or unit == 1)

    def on_epoch(self, row, step, total_steps):
        now, graphs = time.perf_counter(), self.graphs_compiled()
        if row is None:  # a run starts its clock
            self.phases -= 1  # now the runs after this one
            self.last = now, 0.0, 0, graphs
            return
        (then, trained, stepped, compiled), self.last = self.last, (now, row['time_seconds'], step, graphs)
        self.epochs_seen += 1
        if self.said or graphs != compiled or (self.cuda and self.epochs_seen == 1):
            return
        self.said = True
        step_seconds = (row['time_seconds'] - trained) / (step - stepped)
        test_seconds = max(now - then - (row['time_seconds'] - trained), 0)  # a pass over the test set, and the rest
        per_run = self.run_steps * step_seconds + self.test_passes * test_seconds
        left = (total_steps - step) * step_seconds + (self.test_passes - row['epoch']) * test_seconds
        print('expected: the whole command takes about %s, %s per run (epoch %d: %.3g s per training step, %.3g s '
              'per pass over the test set)%s' % (self.duration(now - self.start + left + self.phases * per_run),
              self.duration(per_run), row['epoch'], step_seconds, test_seconds, '' if self.cuda or not self.shorter
              else '; on a CPU, %s trains one network' % self.shorter), flush=True)


def warm_up(hyp, train_loader, test_loader, seed, verbose=True, on_epoch=None, batches_per_epoch=6):
    """Seconds of an untimed run on random labels over `batches_per_epoch` batches per epoch: every epoch of the
    schedule, so every resolution's step compiles, with the whitening bias trained (ceil(0.2 x 6) = 2 steps) and
    frozen, and so does the evaluation; cuDNN picks its algorithms. A whole run would add nothing but time."""
    loader, start = copy.copy(train_loader), time.perf_counter()
    kept = min(len(train_loader.images), batches_per_epoch * train_loader.batch_size)
    loader.images, loader.labels = train_loader.images[:kept], torch.randint_like(train_loader.labels[:kept], 10)
    with contextlib.suppress(TrainingDiverged):  # random labels: only the warm-up itself matters
        train(hyp, loader, test_loader, seed, run='warmup', verbose=verbose, on_epoch=on_epoch)
    return time.perf_counter() - start


def torch_too_old(version, oldest=(2, 4)):  # the published runs used torch 2.4
    if tuple(int(part) for part in version.split('.')[:2]) < oldest:
        return 'torch %s is too old: this script needs torch %d.%d or newer' % ((version,) + oldest)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] + ' torchrun, statistics: harness.py.')
    parser.add_argument('--runs', type=int, default=25, help='timed training runs (default 25)')
    parser.add_argument('--data-dir', default='cifar10', help='where CIFAR-10 is or is downloaded to')
    parser.add_argument('--device', choices=['auto', 'cuda', 'cpu'], default='auto', help='auto: CUDA if any')
    parser.add_argument('--seed', type=int, help='run i uses seed+i (default: a random base seed, logged)')
    parser.add_argument('--no-warmup', action='store_true', help='refused: the warm-up compiles the network')
    parser.add_argument('--log-dir', default='logs', help='folder for the JSON log (default ./logs)')
    args = parser.parse_args(argv)
    if args.no_warmup:
        parser.error('--no-warmup: this script compiles during its warm-up, which keeps compilation out of the '
                     'timed runs; use airbench94.py to skip both')
    if args.runs < 1:
        parser.error('--runs: must be a positive integer, not %d' % args.runs)
    if int(os.environ.get('WORLD_SIZE', 1)) > 1:
        parser.error('under torchrun, run this script through harness.py, which shares the runs out')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is available (use --device cpu or auto)')
    try:
        os.makedirs(args.log_dir, exist_ok=True)
        tempfile.TemporaryFile(dir=args.log_dir).close()
    except OSError as e:
        parser.error('--log-dir %s: cannot write there (%s); pass another folder' % (args.log_dir, e))
    args.seed = random.SystemRandom().randrange(2**31) if args.seed is None else args.seed
    return args


def main(argv=None):
    """Exit codes: 0 every run finished, 1 an error (one line) or a diverged run, 2 a bad flag, 130 Ctrl-C."""
    prog, start = os.path.basename(__file__), time.perf_counter()
    if torch_too_old(torch.__version__):
        sys.exit('%s: error: %s' % (prog, torch_too_old(torch.__version__)))
    args = parse_args(argv)
    device = torch.device('cuda' if args.device != 'cpu' and torch.cuda.is_available() else 'cpu')
    try:
        train_loader = CifarLoader(args.data_dir, True, hyp['opt']['batch_size'], hyp['aug'], device=device)
        test_loader = CifarLoader(args.data_dir, False, 2000, device=device)
        if len(train_loader) == 0:
            raise DataError('%d training images are fewer than one batch' % len(train_loader.images))
    except DataError as e:
        sys.exit('%s: error: %s' % (prog, e))
    source = pathlib.Path(__file__).read_text()  # now: the log holds the code that ran, even if edited later
    if device.type == 'cpu':
        print('note: CPU run in float32, for tests and laptops; timings mean nothing for GPUs')
    print('data: %d train / %d test images from %s\nruns: %d, run i uses seed %d+i\n%s' % (len(train_loader.images),
          len(test_loader.images), args.data_dir, args.runs, args.seed, format_row({c: c for c in LOG_COLUMNS})))
    runs, interrupted, warmup_seconds, graphs = [], False, None, None
    forecast = Forecast(hyp, train_loader, args.runs + 1, 'python harness.py %s --eager --no-warmup --runs 1' % prog,
                        start)  # the runs and the warm-up
    try:
        warmup_seconds = warm_up(hyp, train_loader, test_loader, args.seed, on_epoch=forecast.on_epoch)
        graphs = torch._dynamo.utils.counters['stats']['unique_graphs']  # the timed runs must add none
        print('warm-up: %.1f s, untimed, compiling with mode %s' % (warmup_seconds, compile_mode(device)))
        for run, seed in enumerate(range(args.seed, args.seed + args.runs), 1):
            try:
                result = train(hyp, train_loader, test_loader, seed, run, on_epoch=forecast.on_epoch)
                runs.append(dict(run=run, seed=seed, status='ok', tta_val_acc=result['tta_val_acc'],
                                 time_seconds=result['time_seconds']))
            except TrainingDiverged as e:
                print('%s: run %d (seed %d) failed: %s' % (prog, run, seed, e), file=sys.stderr)
                runs.append(dict(run=run, seed=seed, status='diverged', error=str(e)))
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not lose the summary
        interrupted = True
        print('\ninterrupted: summarizing the %d finished runs' % len(runs))
    ok = [r for r in runs if r['status'] == 'ok']
    summary = dict(runs=len(runs), ok=len(ok), failed=len(runs) - len(ok))
    print('runs: %d finished, %d failed' % (len(ok), len(runs) - len(ok)))
    for key in ('tta_val_acc', 'time_seconds') if ok else ():
        mean = summary[key + '_mean'] = sum(r[key] for r in ok) / len(ok)
        std = summary[key + '_std'] = math.sqrt(sum((r[key] - mean)**2 for r in ok) / max(len(ok) - 1, 1))
        print('%s: mean %.4f  std %.4f' % (key, mean, std))
    if graphs is not None:
        summary['graphs_compiled_in_timed_runs'] = torch._dynamo.utils.counters['stats']['unique_graphs'] - graphs
        print('graphs compiled during the timed runs: %d' % summary['graphs_compiled_in_timed_runs'])
    record = dict(script=prog, argv=sys.argv[1:] if argv is None else argv, hyp=hyp, seed=args.seed, runs=runs,
                  summary=summary, interrupted=interrupted, warmup_seconds=warmup_seconds, device=str(device),
                  device_name=torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor(),
                  data_dir=os.path.abspath(args.data_dir), train_images=len(train_loader.images),
                  torch_version=torch.__version__, python_version=platform.python_version(), source=source)
    path = os.path.join(args.log_dir, '%s-%s-%d.json' % (prog[:-3], time.strftime('%Y%m%d-%H%M%S'), os.getpid()))
    atomic_write(path, lambda f: json.dump(record, f, indent=1), mode='w')
    print('log: %s' % path)
    return 130 if interrupted else 1 if summary['failed'] else 0


if __name__ == '__main__':
    sys.exit(main())
