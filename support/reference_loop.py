"""An independent reference implementation of the published airbench94 training loop's order of operations.

Written by this project, not transcribed: the method comes from its description (SPEC.md), and
the rest from facts about the published code (Jordan 2024, airbench 0.1.8): which operations it
runs in which order, which random numbers it draws and when, and details such as
`eigh(..., UPLO='U')` and the sign and order of the whitening filters. The structure and
names are ours. It imports nothing from our airbench*.py scripts, so it can check them.

Where it differs from our airbench94.py, it does what the published loop does:
- data: the whole training set is normalized, mirrored by one coin per image (one
  `torch.rand(N)`) and reflect-padded once; then every epoch the whole padded set is cropped at
  random (one `torch.randint(-r, r + 1, (N, 2))`), mirrored as a whole on odd epochs, and
  shuffled (one `torch.randperm(N)`); ours draws its shifts batch by batch;
- the lookahead EMA may be created before the whitening init (`lookahead_before_whitening`,
  the published order) or after it (ours);
- on request the net runs in fp16 and channels_last with fp32 BatchNorm, as the published code
  always does on CUDA (`dtype=torch.half, channels_last=True`).
Two differences from the published code are deliberate, and show in op counts: the LR
multiplier and the lookahead decay are Python floats, where the published code reads them out
of float32 CPU tensors (its LR is a 0-d tensor and each lookahead update calls `.item()`; the
values agree to float32 rounding); and the per-epoch crop is one gather per axis instead of the
published copy per offset (the same draws and the same result, in the same default memory
layout).

What it is for: tests/test_reference.py (from one seed, our airbench94.train() gives the same
weights and TTA logits as this loop), benchmarks/reference_loop_real_images.py (this loop on
the real images), and counting ATen ops per phase for comparison with ours: `whiten()`,
each `run_epoch()` and `tta_logits()` can be measured separately.
"""
from math import ceil

import torch
import torch.nn.functional as F
from torch import nn

_AVERAGED = (torch.float16, torch.float32)  # the state-dict dtypes the lookahead EMA covers


class _Flatten(nn.Module):
    def forward(self, x):
        return x.view(x.shape[0], -1)


def _identity_start(conv):
    """Make the conv's first C_in filters pass their input channels through (dirac init);
    draws no random numbers."""
    nn.init.dirac_(conv.weight.data[:conv.in_channels])
    return conv


def _conv3x3(c_in, c_out):
    return _identity_start(nn.Conv2d(c_in, c_out, 3, padding='same', bias=False))


def _batchnorm(channels, momentum):
    """BatchNorm with eps 1e-12 and its scale frozen at 1 (only the bias trains)."""
    norm = nn.BatchNorm2d(channels, eps=1e-12, momentum=momentum)
    norm.weight.requires_grad = False
    return norm


def _stage(c_in, c_out, bn_momentum):
    """conv3x3 -> maxpool2 -> BN -> GELU -> conv3x3 -> BN -> GELU; the two convs are built in
    that order, and their default inits are the only random draws."""
    return nn.Sequential(_conv3x3(c_in, c_out), nn.MaxPool2d(2), _batchnorm(c_out, bn_momentum), nn.GELU(),
                         _conv3x3(c_out, c_out), _batchnorm(c_out, bn_momentum), nn.GELU())


class ReferenceNet(nn.Module):
    """Whitening conv (2x2, 3 -> 24, bias), GELU, three stages, maxpool3, linear, x scale.
    State-dict entries come out in the order of airbench94.py's Net."""

    def __init__(self, widths, bn_momentum, scale):
        super().__init__()
        # Dirac'd and zero bias like every conv here; this start only shows when the lookahead
        # EMA is created before the whitening init overwrites the weight
        self.whiten = _identity_start(nn.Conv2d(3, 2 * 3 * 2 * 2, 2, bias=True))
        self.whiten.bias.data.zero_()
        self.whiten.weight.requires_grad = False  # set from the data, then frozen
        self.act = nn.GELU()
        sizes = [self.whiten.out_channels] + [widths[name] for name in ('block1', 'block2', 'block3')]
        self.stages = nn.Sequential(*[_stage(a, b, bn_momentum) for a, b in zip(sizes, sizes[1:])])
        self.top = nn.Sequential(nn.MaxPool2d(3), _Flatten(), nn.Linear(sizes[-1], 10, bias=False))
        self.scale = scale  # a plain float: no state-dict entry

    def forward(self, x):
        return self.top(self.stages(self.act(self.whiten(x)))) * self.scale


class ReferenceLoop:
    """One training run, split into phases: __init__ (seed, net, optimizer, schedule), whiten(),
    run_epoch(e) for e in range(epoch_count()), tta_logits(test_images)."""

    def __init__(self, hyp, images, labels, seed, normalize, lookahead_before_whitening=False,
                 dtype=torch.float, channels_last=False):
        if hyp['aug'].get('cutout', 0):
            raise ValueError('the airbench94 loop has no cutout')
        torch.manual_seed(seed)
        self.hyp, self.normalize, self.dtype = hyp, normalize, dtype
        self.layout = torch.channels_last if channels_last else torch.preserve_format
        self.lookahead_before_whitening = lookahead_before_whitening
        device = images.device
        self.images = images.to(dtype=dtype, memory_format=self.layout)
        self.labels = labels
        self.batch_size = hyp['opt']['batch_size']
        self.total_steps = ceil(len(images) // self.batch_size * hyp['opt']['train_epochs'])
        self.steps_done = 0
        self.last_loss = None

        # Built on the CPU generator, then moved: fp16 + channels_last keeps BatchNorm in fp32
        net = ReferenceNet(hyp['net']['widths'], hyp['net']['batchnorm_momentum'], hyp['net']['scaling_factor'])
        net = net.to(device=device, dtype=dtype, memory_format=self.layout)
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.float()
        self.model = net
        self.optimizer = self._make_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.average = None

    # ---- optimization ----

    def _make_optimizer(self):
        o = self.hyp['opt']
        per_1024 = 1024 * (1 + 1 / (1 - o['momentum']))  # step size / gradient under Nesterov momentum
        base_lr = o['lr'] / per_1024
        decay_per_step = o['weight_decay'] * o['batch_size'] / per_1024
        bn_lr = base_lr * o['bias_scaler']
        bn_bias_ids = {id(m.bias) for m in self.model.modules() if isinstance(m, nn.BatchNorm2d)}
        trainable = [p for p in self.model.parameters() if p.requires_grad]  # (whitening bias included)
        groups = [
            {'params': [p for p in trainable if id(p) in bn_bias_ids], 'lr': bn_lr,
             'weight_decay': decay_per_step / bn_lr},
            {'params': [p for p in trainable if id(p) not in bn_bias_ids], 'lr': base_lr,
             'weight_decay': decay_per_step / base_lr},
        ]
        # foreach=True is what PyTorch picks by default for CUDA tensors, so this runs the
        # published code's CUDA optimizer operations on any device (the same math as the loop)
        return torch.optim.SGD(groups, momentum=o['momentum'], nesterov=True, foreach=True)

    def _lr_factor(self, step):
        o = self.hyp['opt']
        rise = int(self.total_steps * o['lr_warmup_frac'])
        if step < rise:
            t = step / rise
            return o['lr_start'] * (1 - t) + t
        t = (step - rise) / (self.total_steps - rise)
        return (1 - t) + o['lr_end'] * t

    def _start_average(self):
        self.average = [entry.clone() for entry in self.model.state_dict().values()]

    def _pull_towards_average(self, decay):
        # ema <- ema + (1 - decay) (current - ema), then current <- ema, for float entries only
        for ema, current in zip(self.average, self.model.state_dict().values()):
            if current.dtype in _AVERAGED:
                ema.lerp_(current, 1 - decay)
                current.copy_(ema)

    # ---- whitening and data ----

    def _as_input(self, images):
        return self.normalize(images).to(dtype=self.dtype, memory_format=self.layout)

    def _init_whitening(self):
        weight = self.model.whiten.weight
        width, c, k = weight.shape[0] // 2, weight.shape[1], weight.shape[-1]
        sample = self._as_input(self.images[:self.hyp['net']['whiten_images']])
        windows = sample.unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3)  # every k x k patch
        rows = windows.reshape(-1, c, k, k).float().view(-1, width)
        second_moment = rows.T @ rows / len(rows)  # uncentered
        lam, vecs = torch.linalg.eigh(second_moment, UPLO='U')  # ascending
        lam = lam.flip(0).view(-1, 1, 1, 1)  # largest first
        vecs = vecs.T.reshape(width, c, k, k).flip(0)
        filters = vecs / torch.sqrt(lam + self.hyp['net']['whiten_eps'])  # unit output variance
        weight.data[:] = torch.cat((filters, -filters))

    def whiten(self):
        """The whitening init, the lookahead EMA's creation (before or after it), and the
        whole-dataset preparation: normalize, one coin flip per image, reflect-pad."""
        if self.lookahead_before_whitening:
            self._start_average()
        self._init_whitening()
        if not self.lookahead_before_whitening:
            self._start_average()
        data = self._as_input(self.images)
        if self.hyp['aug'].get('flip', False):
            heads = (torch.rand(len(data), device=data.device) < 0.5).view(-1, 1, 1, 1)
            data = torch.where(heads, data.flip(-1), data)
        self.base = data
        r = self.hyp['aug'].get('translate', 0)
        self.framed = F.pad(data, [r] * 4, mode='reflect') if r > 0 else None

    def _random_crops(self):
        """Each padded image cut back to size at its own offset in [-r, r] per axis: the
        published draws (one randint for all N images, (row, col) per image), gathered here
        instead of copied one offset at a time. The result is in the default layout, as the
        published crop (it writes into a freshly allocated tensor)."""
        framed, (h, w) = self.framed, self.images.shape[-2:]
        r = (framed.shape[-1] - w) // 2
        n, c, _, wide = framed.shape
        offsets = torch.randint(-r, r + 1, size=(n, 2), device=framed.device) + r
        rows = offsets[:, 0:1] + torch.arange(h, device=framed.device)  # n, h
        cols = offsets[:, 1:2] + torch.arange(w, device=framed.device)  # n, w
        band = framed.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, wide))
        return band.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w)).contiguous()

    # ---- training ----

    def epoch_count(self):
        return ceil(self.hyp['opt']['train_epochs'])

    def run_epoch(self, epoch):
        """This epoch's data (crop, mirror on odd epochs, order) and its steps, up to the total
        step count. Returns the number of steps taken."""
        if self.steps_done >= self.total_steps:
            return 0
        self.model.whiten.bias.requires_grad = epoch < self.hyp['opt']['whiten_bias_epochs']
        data = self._random_crops() if self.framed is not None else self.base
        if self.hyp['aug'].get('flip', False) and epoch % 2 == 1:
            data = data.flip(-1)
        order = torch.randperm(len(data), device=data.device)
        self.model.train()
        taken = 0
        while taken < len(data) // self.batch_size and self.steps_done < self.total_steps:
            chosen = order[taken * self.batch_size:(taken + 1) * self.batch_size]
            self._step(data[chosen], self.labels[chosen])
            taken += 1
        return taken

    def _step(self, inputs, targets):
        smoothing = self.hyp['opt']['label_smoothing']
        loss = F.cross_entropy(self.model(inputs), targets, reduction='none', label_smoothing=smoothing).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.last_loss = loss  # (a reference, not a copy: no extra op per step)
        self.steps_done += 1
        s, total = self.steps_done, self.total_steps
        if s % 5 == 0:
            self._pull_towards_average(0.95**5 * (s / total)**3)
        if s >= total:
            self._pull_towards_average(1.0)  # the final copy: params <- ema

    # ---- evaluation ----

    def _both_orientations(self, x):
        return 0.5 * self.model(x) + 0.5 * self.model(x.flip(-1))

    def tta_logits(self, test_images, batch_size=2000):
        """Level-2 TTA: weights 1/4 for the image and its mirror, 1/8 for each of the four views
        shifted one pixel up-left or down-right (reflect-padded), mirrored or not; in order."""
        self.model.eval()
        inputs = self._as_input(test_images)
        h, w = inputs.shape[-2:]
        out = []
        with torch.no_grad():
            for chunk in inputs.split(batch_size):
                centred = self._both_orientations(chunk)
                ring = F.pad(chunk, [1] * 4, mode='reflect')
                moved = [self._both_orientations(ring[:, :, :h, :w]), self._both_orientations(ring[:, :, 2:, 2:])]
                out.append(0.5 * centred + 0.5 * torch.stack(moved).mean(0))
        return torch.cat(out)


def reference_run(hyp, images, labels, test_images, seed, normalize, lookahead_before_whitening=False):
    """(model, TTA logits): whiten, every epoch, TTA."""
    loop = ReferenceLoop(hyp, images, labels, seed, normalize, lookahead_before_whitening)
    loop.whiten()
    for epoch in range(loop.epoch_count()):
        loop.run_epoch(epoch)
    return loop.model, loop.tta_logits(test_images)
