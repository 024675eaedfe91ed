"""airbench95.py: CIFAR-10 to 95% mean test accuracy in seconds on one GPU.

Published result (Jordan 2024): 95.01% mean TTA test accuracy in 10.4 s on one NVIDIA A100
(n=200 runs), 1.4 PFLOPs. Our own measurements, with the commands that produced them, are
in benchmarks/RESULTS.md.

    python airbench95.py                  # 25 timed runs on CUDA (downloads CIFAR-10 once)
    python airbench95.py --help
    from airbench95 import hyp, CifarLoader, make_net, train, infer, evaluate

Changes relative to airbench94.py (everything else is identical, and a test keeps it so):
- widths 128/384/384 (was 64/256/256)
- train_epochs 15 (was 9.9): 720 steps
- lr 10.0 (was 11.5)
"""

#############################################
#                  Imports                  #
#############################################

import argparse
import copy
import datetime
import hashlib
import json
import math
import os
import pickle
import platform
import random
import shutil
import signal
import sys
import tarfile
import tempfile
import time
from math import ceil

import torch
import torch.nn.functional as F
from torch import nn

#############################################
#              Hyperparameters              #
#############################################

hyp = {
    'opt': {
        'train_epochs': 15,
        'batch_size': 1024,
        'lr': 10.0,               # learning rate per 1024 examples
        'momentum': 0.85,
        'weight_decay': 0.0153,   # weight decay per 1024 examples (decoupled from learning rate)
        'bias_scaler': 64.0,      # BatchNorm biases get this times the learning rate, not the decay
        'label_smoothing': 0.2,
        'whiten_bias_epochs': 3,  # train the whitening bias for this many epochs, then freeze it
        'lr_warmup_frac': 0.23,   # fraction of steps over which the LR multiplier rises...
        'lr_start': 0.2,          # ...linearly from this...
        'lr_end': 0.07,           # ...to 1.0, then falls linearly to this at the last step
    },
    'lookahead': {
        'every_steps': 5,         # EMA update and weight reset every this many steps
        'decay_per_step': 0.95,   # EMA decay is decay_per_step**every_steps * (step / total)**power
        'power': 3,
    },
    'aug': {
        'flip': True,             # alternating flip
        'translate': 2,           # pixels, reflect-padded
        'cutout': 0,              # side of the zeroed square, 0 = off
    },
    'net': {
        'widths': {'block1': 128, 'block2': 384, 'block3': 384},
        'batchnorm_momentum': 0.4,  # PyTorch convention; the paper's "0.6" is 1 - 0.4
        'scaling_factor': 1/9,
        'whiten_eps': 5e-4,
        'whiten_images': 5000,    # training images whose patches initialize the whitening conv
        'tta_level': 2,           # test-time augmentation: 0 none, 1 mirror, 2 mirror + translate
    },
}

#############################################
#                 Dataset                   #
#############################################

CIFAR10_TARBALL = 'cifar-10-python.tar.gz'
CIFAR10_TARBALL_MD5 = 'c58f30108f718f92721af3b95e74349a'
CIFAR10_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'
CIFAR10_FOLDER = 'cifar-10-batches-py'
CIFAR10_BATCHES = {'train': ['data_batch_%d' % i for i in range(1, 6)], 'test': ['test_batch']}
CIFAR10_COUNTS = {'train': 50000, 'test': 10000}
CACHE_FILE = 'cifar10_uint8.pt'
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def precision_policy(device):
    """How data and network are stored on `device`, decided here and nowhere else: on CUDA fp16
    and channels_last (tensor cores), with BatchNorm in fp32; elsewhere fp32 in the default layout.
    Tests pass precision_policy('cuda') to run the CUDA configuration on a CPU."""
    if torch.device(device).type == 'cuda':
        return dict(dtype=torch.half, memory_format=torch.channels_last, batchnorm_dtype=torch.float)
    return dict(dtype=torch.float, memory_format=torch.contiguous_format, batchnorm_dtype=torch.float)


class DataError(Exception):
    """The dataset is missing, corrupt or malformed; the message says which file and what to do."""


class _BatchUnpickler(pickle.Unpickler):
    # The batches are pickles: allow only what a numpy uint8 array needs, so a crafted file cannot run code.
    allowed = {('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
               ('numpy', 'ndarray'), ('numpy', 'dtype')}

    def find_class(self, module, name):
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError('forbidden global %s.%s' % (module, name))
        import numpy
        if name == '_reconstruct':
            core = getattr(numpy, '_core', None) or numpy.core  # numpy 2 renamed numpy.core
            return core.multiarray._reconstruct
        return getattr(numpy, name)


def read_batch(path):
    """One official batch file -> (uint8 images N,3,32,32, int64 labels N)."""
    import numpy
    try:
        with open(path, 'rb') as f:
            batch = _BatchUnpickler(f, encoding='latin1').load()
        data, labels = batch['data'], batch['labels']
        if not (isinstance(data, numpy.ndarray) and data.dtype == numpy.uint8 and data.ndim == 2
                and data.shape[1] == 3072 and len(labels) == len(data)):
            raise ValueError('expected a uint8 array of N x 3072 pixels and N labels')
        labels = torch.tensor([int(y) for y in labels], dtype=torch.int64)
    except Exception as e:
        raise DataError('%s is not a valid CIFAR-10 batch file (%s: %s); delete it and rerun, or replace it '
                        'with an intact copy' % (path, type(e).__name__, e)) from None
    return torch.from_numpy(data.copy()).view(-1, 3, 32, 32), labels


def check_dataset(data, source):
    """Raise DataError unless `data` holds uint8 images N,3,32,32 and int64 labels 0..9 for both splits."""
    for split in ('train', 'test'):
        images, labels = data.get(split + '_images'), data.get(split + '_labels')
        ok = (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)
              and images.dtype == torch.uint8 and images.dim() == 4 and tuple(images.shape[1:]) == (3, 32, 32)
              and labels.dtype == torch.int64 and labels.dim() == 1 and len(labels) == len(images) > 0
              and int(labels.min()) >= 0 and int(labels.max()) <= 9)
        if not ok:
            raise DataError('%s: the %s split is malformed (expected uint8 images N x 3 x 32 x 32 and '
                            'int64 labels 0..9)' % (source, split))
    return data


def atomic_write(path, write_fn, mode='wb'):
    """Write a file through a temporary one in the same folder, so a crash never leaves half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.')
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give it a plain file's permissions
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def file_md5(path):
    md5 = hashlib.md5()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            md5.update(chunk)
    return md5.hexdigest()


def extract_tarball(tarball, data_dir):
    """Check the official MD5, then extract cifar-10-batches-py/ via a temporary folder."""
    md5 = file_md5(tarball)
    if md5 != CIFAR10_TARBALL_MD5:
        raise DataError('%s has MD5 %s, not the official %s: it is truncated, corrupt or not the official '
                        'archive. Delete it to download again, or put the extracted %s/ folder in %s'
                        % (tarball, md5, CIFAR10_TARBALL_MD5, CIFAR10_FOLDER, data_dir))
    tmp = tempfile.mkdtemp(dir=data_dir, prefix='.extract-')
    try:
        with tarfile.open(tarball) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(CIFAR10_FOLDER + '/')
                       and '..' not in m.name.split('/')]
            safe = {'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}
            tar.extractall(tmp, members=members, **safe)
        if not os.path.isdir(os.path.join(tmp, CIFAR10_FOLDER)):
            raise DataError('%s holds no %s/ folder' % (tarball, CIFAR10_FOLDER))
        os.replace(os.path.join(tmp, CIFAR10_FOLDER), os.path.join(data_dir, CIFAR10_FOLDER))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError('could not extract %s (%s: %s)' % (tarball, type(e).__name__, e)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_tarball(data_dir):
    try:
        import torchvision  # only here: the rest of the script needs torch alone
        torchvision.datasets.utils.download_url(CIFAR10_URL, data_dir, CIFAR10_TARBALL, CIFAR10_TARBALL_MD5)
    except Exception as e:
        raise DataError('no CIFAR-10 in %s, and downloading it failed (%s: %s). Put %s (from %s) or its '
                        'extracted %s/ folder in %s, or pass --data-dir to where they are'
                        % (data_dir, type(e).__name__, str(e).splitlines()[0] if str(e) else '',
                           CIFAR10_TARBALL, CIFAR10_URL, CIFAR10_FOLDER, data_dir)) from None


def load_cifar10(data_dir):
    """CIFAR-10 as CPU tensors {train,test}_{images,labels}: uint8 N,3,32,32 and int64.

    Looks in `data_dir` for, in order: our tensor cache, the extracted batches folder, the
    official tarball (MD5-checked, then extracted); else downloads the tarball. Builds the
    cache (atomically) from the batches.
    """
    cache = os.path.join(data_dir, CACHE_FILE)
    if os.path.exists(cache):
        try:
            return check_dataset(torch.load(cache, weights_only=True), cache)
        except Exception as e:  # our own file: rebuild it from the source files
            print('note: rebuilding the unreadable cache %s (%s)' % (cache, type(e).__name__), file=sys.stderr)
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise DataError('--data-dir %s is a file, not a folder' % data_dir)
    os.makedirs(data_dir, exist_ok=True)
    folder = os.path.join(data_dir, CIFAR10_FOLDER)
    if not os.path.isdir(folder):
        tarball = os.path.join(data_dir, CIFAR10_TARBALL)
        if not os.path.exists(tarball):
            download_tarball(data_dir)
        extract_tarball(tarball, data_dir)
    data = {}
    for split, names in CIFAR10_BATCHES.items():
        missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
        if missing:
            raise DataError('%s lacks %s; restore them, or delete the folder to extract it again from %s'
                            % (folder, ', '.join(missing), CIFAR10_TARBALL))
        batches = [read_batch(os.path.join(folder, n)) for n in names]
        data[split + '_images'] = torch.cat([images for images, _ in batches])
        data[split + '_labels'] = torch.cat([labels for _, labels in batches])
    check_dataset(data, folder)
    atomic_write(cache, lambda f: torch.save(data, f))
    return data


def batch_translate(images, pixels):
    """Shift each image by up to `pixels` per axis: a random crop of its reflect-padded self."""
    n, _, h, w = images.shape  # N, C, H, W
    padded = F.pad(images, (pixels,) * 4, mode='reflect')
    # Every crop of every image as a view (N, row shift, column shift, H, W, C), then one gather
    # picks each image's own: no loop over shifts, no host sync
    crops = padded.unfold(2, h, 1).unfold(3, w, 1).permute(0, 2, 3, 4, 5, 1)
    dy, dx = torch.randint(0, 2 * pixels + 1, (2, n), device=images.device)
    return crops[torch.arange(n, device=images.device), dy, dx].permute(0, 3, 1, 2)


def batch_cutout(images, size):
    """Zero one size x size square per image, placed uniformly and fully inside the image."""
    n, _, h, w = images.shape
    rows, cols = [torch.arange(side, device=images.device) for side in (h, w)]
    top = torch.randint(0, h - size + 1, (n, 1), device=images.device)
    left = torch.randint(0, w - size + 1, (n, 1), device=images.device)
    in_rows = (rows >= top) & (rows < top + size)  # N, H
    in_cols = (cols >= left) & (cols < left + size)  # N, W
    return images.masked_fill(in_rows[:, None, :, None] & in_cols[:, None, None, :], 0)


class CifarLoader:
    """CIFAR-10 resident on one device as a single tensor, served in augmented batches.

    `images` (N,3,32,32 in [0,1], stored as `policy` says: by default precision_policy(device))
    and `labels` may be replaced before iterating, e.g. by a subset, for data-selection
    experiments. Every augmentation is a batched tensor op on one batch at a time, so the
    device holds the dataset once plus a few batches.
    """

    def __init__(self, data_dir, train=True, batch_size=1024, aug=None, drop_last=None, shuffle=None, device=None,
                 policy=None):
        data = load_cifar10(data_dir)
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
        self.aug = dict(aug or {})
        unknown = set(self.aug) - {'flip', 'translate', 'cutout'}
        if unknown:
            raise ValueError('unknown augmentation %s' % ', '.join(sorted(unknown)))
        self.batch_size = batch_size
        self.drop_last = train if drop_last is None else drop_last
        self.shuffle = train if shuffle is None else shuffle
        self.epoch = 0

    def __len__(self):
        return len(self.images) // self.batch_size if self.drop_last else ceil(len(self.images) / self.batch_size)

    def normalize(self, images):
        return (images - self.mean) / self.std

    def augment(self, images, flip):
        if self.aug.get('flip'):
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        if self.aug.get('translate', 0) > 0:
            images = batch_translate(images, self.aug['translate'])
        if self.aug.get('cutout', 0) > 0:
            images = batch_cutout(images, self.aug['cutout'])
        # The conv's layout, asked for explicitly: out-of-place masked_fill (and, on CUDA, reflect
        # padding) return NCHW, which every conv would convert again; a no-op when already so
        return images.contiguous(memory_format=self.policy['memory_format'])

    def __iter__(self):
        # Alternating flip: a coin per image in epoch 0, then every odd epoch shows the other
        # orientation, so each two consecutive epochs hold every (image, orientation) once.
        if self.epoch == 0:
            self.first_flips = torch.rand(len(self.images), device=self.device) < 0.5
        n = len(self.images)
        order = torch.randperm(n, device=self.device) if self.shuffle else torch.arange(n, device=self.device)
        # This epoch's orientations in batch order, once per epoch rather than once per batch
        flips = (self.first_flips ^ (self.epoch % 2 == 1))[order] if self.aug.get('flip') else None
        self.epoch += 1
        for i in range(len(self)):
            batch = slice(i * self.batch_size, (i + 1) * self.batch_size)
            images = self.normalize(self.images[order[batch]])
            yield self.augment(images, flips[batch] if flips is not None else None), self.labels[order[batch]]

#############################################
#                 Network                   #
#############################################

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
        self.activ = nn.GELU()

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
        self.pool = nn.MaxPool2d(3)
        self.head = nn.Linear(widths['block3'], 10, bias=False)
        self.scaling_factor = hyp['net']['scaling_factor']

    def forward(self, x):
        x = self.blocks(F.gelu(self.whiten(x)))  # N,3,32,32 -> N,24,31,31 -> ... -> N,C,3,3
        return self.head(self.pool(x).flatten(1)) * self.scaling_factor


def make_net(hyp, device='cpu', policy=None):
    """The network on `device`, stored as `policy` says (by default precision_policy(device))."""
    policy = policy or precision_policy(device)
    net = Net(hyp)
    net.whiten.weight.requires_grad = False  # set from data by init_whitening_conv, then frozen
    net.whiten.bias.data.zero_()
    net = net.to(device, policy['dtype'], memory_format=policy['memory_format'])
    for module in net.modules():
        if isinstance(module, BatchNorm):
            module.to(policy['batchnorm_dtype'])
    return net

#############################################
#          Whitening initialization         #
#############################################

def init_whitening_conv(layer, images, eps):
    """Filters 1-12: the eigenvectors of the 2x2 patch covariance of `images`, scaled to unit
    output variance; filters 13-24: their negatives."""
    c, h, w = layer.weight.shape[1:]
    patches = images.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c * h * w).float()
    covariance = patches.T @ patches / len(patches)  # uncentered
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance, UPLO='U')  # ascending; the published signs
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)  # rows, largest first
    filters = (eigenvectors / torch.sqrt(eigenvalues + eps)[:, None]).view(c * h * w, c, h, w)
    layer.weight.data[:] = torch.cat((filters, -filters))

#############################################
#                 Lookahead                 #
#############################################

class LookaheadState:
    """An EMA of every floating-point entry of the state dict (weights, biases, BN statistics)."""

    def __init__(self, net):
        self.params = [v for v in net.state_dict().values() if v.is_floating_point()]  # share the net's memory
        self.ema = [v.clone() for v in self.params]

    def update(self, decay):
        # ema <- ema + (1 - decay) * (param - ema), then param <- ema: two batched kernels, not two per tensor
        torch._foreach_lerp_(self.ema, self.params, 1 - decay)
        torch._foreach_copy_(self.params, self.ema)


def lookahead_decay(step, total_steps, hyp):
    la = hyp['lookahead']
    return la['decay_per_step']**la['every_steps'] * (step / total_steps)**la['power']

#############################################
#                 Logging                   #
#############################################

LOG_COLUMNS = ['run', 'epoch', 'train_loss', 'train_acc', 'val_acc', 'tta_val_acc', 'time_seconds']


def format_row(row):
    """One fixed-width table row from a dict keyed by LOG_COLUMNS (missing keys print blank)."""
    cells = [('%.4f' % row[c] if isinstance(row.get(c), float) else str(row.get(c, ''))).rjust(max(len(c), 6))
             for c in LOG_COLUMNS]
    return '| ' + ' | '.join(cells) + ' |'


def format_header():
    return format_row({c: c for c in LOG_COLUMNS}) + '\n|' + '|'.join('-' * (max(len(c), 6) + 2) for c in LOG_COLUMNS) + '|'


def student_t_quantile_975(df):
    """t with P(|T| < t) = 0.95 for Student's t with `df` degrees of freedom (closed-form CDF of
    Abramowitz & Stegun 26.7.3-4, inverted by bisection)."""
    def two_sided_cdf(t):
        theta = math.atan(t / math.sqrt(df))
        c2, total, term = math.cos(theta)**2, 0.0 if df == 1 else 1.0, 1.0
        for k in range(3 if df % 2 else 2, df - 1 if df % 2 else df, 2):
            term *= c2 * (k - 1) / k
            total += term
        if df % 2:
            return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
        return math.sin(theta) * total
    low, high = 0.0, 100.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if two_sided_cdf(mid) < 0.95 else (low, mid)
    return (low + high) / 2


def summarize(runs):
    """Mean, std and 95% confidence interval (Student t) of the TTA accuracy over the finished runs."""
    accs = [r['tta_val_acc'] for r in runs if r['status'] == 'ok']
    times = [r['time_seconds'] for r in runs if r['status'] == 'ok']
    summary = {'runs': len(runs), 'ok': len(accs), 'failed': len(runs) - len(accs)}
    if accs:
        n, mean = len(accs), sum(accs) / len(accs)
        std = math.sqrt(sum((a - mean)**2 for a in accs) / (n - 1)) if n > 1 else None
        half = student_t_quantile_975(n - 1) * std / math.sqrt(n) if n > 1 else None
        ci95 = [mean - half, mean + half] if n > 1 else None  # of width 0 if every run got the same accuracy
        summary.update(tta_val_acc_mean=mean, tta_val_acc_std=std, tta_val_acc_ci95=ci95, time_seconds_mean=sum(times) / n)
    return summary


def format_summary(summary):
    lines = ['runs: %d finished, %d failed' % (summary['ok'], summary['failed'])]
    if summary['ok']:
        lines.append('tta_val_acc: mean %.4f  std %s  95%% CI of the mean %s' % (
            summary['tta_val_acc_mean'],
            '%.4f' % summary['tta_val_acc_std'] if summary['tta_val_acc_std'] is not None else 'n/a (1 run)',
            '[%.4f, %.4f]' % tuple(summary['tta_val_acc_ci95']) if summary['tta_val_acc_ci95'] else 'n/a (1 run)'))
        lines.append('time per run: mean %.3f s (whitening init + training + final TTA, device-synchronized)'
                     % summary['time_seconds_mean'])
    return '\n'.join(lines)


def write_log(log_dir, record):
    """One JSON file per invocation (the record holds the script's own source); returns its path."""
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    name = os.path.splitext(os.path.basename(__file__))[0]
    path = os.path.join(log_dir, '%s-%s-%d.json' % (name, stamp, os.getpid()))
    atomic_write(path, lambda f: json.dump(record, f, indent=1), mode='w')
    return path

#############################################
#                Evaluation                 #
#############################################

def infer(net, loader, tta_level=0):
    """Logits for every image of `loader`, in order, averaged over the test-time views:
    level 0 the image; 1 the image and its mirror; 2 also both of those shifted one pixel
    up-left and down-right (weights 1/4 for the two plain views, 1/8 for the four shifted)."""
    def conv_layout(x):  # flips and reflect padding may return another layout than the net's
        return x.contiguous(memory_format=loader.policy['memory_format'])

    def plain(x):
        return net(x).clone()  # compiled, the net may reuse its output memory (CUDA graphs) on the next call

    def mirror(x):
        return 0.5 * net(x) + 0.5 * net(conv_layout(x.flip(-1)))

    def mirror_translate(x):
        h, w = x.shape[-2:]
        padded = F.pad(x, (1,) * 4, mode='reflect')
        shifted = 0.5 * mirror(conv_layout(padded[:, :, :h, :w])) + 0.5 * mirror(conv_layout(padded[:, :, 2:, 2:]))
        return 0.5 * mirror(x) + 0.5 * shifted

    views = [plain, mirror, mirror_translate][tta_level]
    net.eval()
    with torch.no_grad():
        return torch.cat([views(loader.normalize(x)) for x in loader.images.split(loader.batch_size)])


def evaluate(net, loader, tta_level=0):
    logits = infer(net, loader, tta_level)
    return (logits.argmax(1) == loader.labels).float().mean().item()

#############################################
#                 Training                  #
#############################################

class TrainingDiverged(Exception):
    """The training loss became NaN or infinite."""


def make_optimizer(net, hyp):
    """Nesterov SGD with the decoupled lr and weight decay of SPEC turned into PyTorch's form."""
    opt = hyp['opt']
    # Steps under momentum m are ~1 + 1/(1 - m) times the gradient: divide that out, per 1024 examples
    kilostep_scale = 1024 * (1 + 1 / (1 - opt['momentum']))
    lr = opt['lr'] / kilostep_scale
    decay = opt['weight_decay'] * opt['batch_size'] / kilostep_scale  # per step, same for every parameter
    lr_biases = lr * opt['bias_scaler']
    norm_biases = [m.bias for m in net.modules() if isinstance(m, BatchNorm)]
    others = [p for p in net.parameters() if p.requires_grad and all(p is not b for b in norm_biases)]
    param_groups = [dict(params=norm_biases, lr=lr_biases, weight_decay=decay / lr_biases),
                    dict(params=others, lr=lr, weight_decay=decay / lr)]
    # foreach: the batched update PyTorch picks on CUDA by default, asked for so every device runs it
    return torch.optim.SGD(param_groups, momentum=opt['momentum'], nesterov=True, foreach=True)


def lr_multiplier(step, total_steps, hyp):
    opt = hyp['opt']
    warmup_steps = int(opt['lr_warmup_frac'] * total_steps)
    if step < warmup_steps:
        frac = step / warmup_steps
        return opt['lr_start'] * (1 - frac) + frac
    frac = (step - warmup_steps) / (total_steps - warmup_steps)
    return (1 - frac) + opt['lr_end'] * frac


def total_train_steps(train_loader, hyp):
    return ceil(len(train_loader) * hyp['opt']['train_epochs'])  # the last epoch stops part-way


def make_loss_fn(hyp):
    """Label-smoothed cross-entropy summed over the batch, in float32 whatever the logits' dtype:
    an fp16 sum overflows its range (65504) once the mean loss of a 1024-batch passes 64."""
    smoothing = hyp['opt']['label_smoothing']
    return lambda logits, labels: F.cross_entropy(logits.float(), labels, label_smoothing=smoothing, reduction='sum')


def fresh_net(hyp, device, policy):
    """A newly initialized network, and the callable that runs it: here the network itself
    (airbench94_compiled.py returns a compiled one)."""
    net = make_net(hyp, device, policy)
    return net, net


def compile_mode(device):
    """The torch.compile mode used on `device`; None: this script runs eagerly."""
    return None


def device_clock(device):
    """Wall-clock seconds once all queued work on `device` is done (CUDA runs asynchronously)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter()


def train(hyp, train_loader, test_loader, seed=0, run='', verbose=True):
    """Train one network from scratch with the RNG seeded by `seed`.

    Returns {'net', 'tta_val_acc', 'val_acc', 'time_seconds', 'epochs'}, where time_seconds
    covers whitening init + training + final TTA (device-synchronized) and excludes the
    per-epoch progress evaluations. Raises TrainingDiverged if the loss becomes NaN/inf.
    """
    opt = hyp['opt']
    if train_loader.batch_size != opt['batch_size'] or train_loader.aug != hyp['aug']:
        raise ValueError("train_loader must use hyp['opt']['batch_size'] and hyp['aug']")
    if test_loader.policy != train_loader.policy:
        raise ValueError('train_loader and test_loader must store images alike (policy %s vs %s)'
                         % (train_loader.policy, test_loader.policy))
    if len(train_loader) == 0:
        raise ValueError('%d training images are fewer than one batch of %d' % (len(train_loader.images), opt['batch_size']))
    device = train_loader.images.device
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True  # time the conv algorithms per shape; the warm-up pays the search
    torch.manual_seed(seed)
    total_steps = total_train_steps(train_loader, hyp)
    net, model = fresh_net(hyp, device, train_loader.policy)
    optimizer = make_optimizer(net, hyp)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, total_steps, hyp))
    loss_fn = make_loss_fn(hyp)
    train_loader.epoch = 0  # a fresh alternating-flip pattern for every run
    epochs, step = [], 0

    start = device_clock(device)
    init_whitening_conv(net.whiten, train_loader.normalize(train_loader.images[:hyp['net']['whiten_images']]),
                        hyp['net']['whiten_eps'])
    time_seconds = device_clock(device) - start
    # After the whitening init, so the EMA starts from the initialized net (the published code
    # starts it from the discarded random whitening weights: a 9e-7 share left at step 5 of 476)
    lookahead = LookaheadState(net)

    for epoch in range(ceil(opt['train_epochs'])):
        net.whiten.bias.requires_grad = epoch < opt['whiten_bias_epochs']
        start = device_clock(device)
        model.train()
        for inputs, labels in train_loader:
            outputs = model(inputs)
            loss = loss_fn(outputs, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if step % hyp['lookahead']['every_steps'] == 0:
                lookahead.update(decay=lookahead_decay(step, total_steps, hyp))
            if step == total_steps:
                lookahead.update(decay=1.0)  # params <- ema
                break
        time_seconds += device_clock(device) - start

        # Progress report, outside the clock: the only host syncs of the epoch are here. The last
        # step's outputs are read first: compiled as CUDA graphs, the net's next call overwrites them
        train_loss = loss.item() / len(labels)
        train_acc = (outputs.detach().argmax(1) == labels).float().mean().item()
        if not math.isfinite(train_loss):
            raise TrainingDiverged('the training loss became %s in epoch %d (step %d)' % (train_loss, epoch + 1, step))
        row = dict(run=run, epoch=epoch + 1, train_loss=train_loss, train_acc=train_acc, time_seconds=time_seconds,
                   val_acc=evaluate(model, test_loader, tta_level=0))
        epochs.append(row)
        if verbose:
            print(format_row(row), flush=True)

    start = device_clock(device)
    tta_val_acc = evaluate(model, test_loader, tta_level=hyp['net']['tta_level'])
    time_seconds += device_clock(device) - start
    if verbose:
        print(format_row(dict(run=run, epoch='eval', tta_val_acc=tta_val_acc, time_seconds=time_seconds)), flush=True)
    # A copy the caller keeps: a later run may reuse this network (the compiled scripts do)
    return dict(net=copy.deepcopy(net), tta_val_acc=tta_val_acc, val_acc=epochs[-1]['val_acc'], time_seconds=time_seconds, epochs=epochs)

#############################################
#                   Main                    #
#############################################

def parse_args(argv):
    def positive_int(text):
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError('must be a positive integer, not %r' % text)
        return int(text)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Hyperparameters live in the script's `hyp` dict: edit it there. "
                                            "Under torchrun, run i goes to rank i mod WORLD_SIZE (see README).")
    parser.add_argument('--runs', type=positive_int, default=25, help='timed training runs (default 25)')
    parser.add_argument('--data-dir', default='cifar10', help='where CIFAR-10 is or is downloaded to (default ./cifar10)')
    parser.add_argument('--device', choices=['auto', 'cuda', 'cpu'], default='auto',
                        help='auto: CUDA if available, else CPU (float32, for testing)')
    parser.add_argument('--seed', type=int, default=None,
                        help='run i uses seed+i (default: a random base seed, printed and logged)')
    parser.add_argument('--no-warmup', action='store_true', help='skip the untimed warm-up run on random labels')
    parser.add_argument('--log-dir', default='logs', help='folder for the JSON log (default ./logs)')
    parser.add_argument('--no-log', action='store_true', help='write no log')
    args = parser.parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is available (use --device cpu or auto)')
    if args.no_warmup and compile_mode(torch.device('cpu')) is not None:
        parser.error('--no-warmup: this script compiles during its warm-up, which keeps compilation out of the '
                     'timed runs; use airbench94.py to skip both')
    if not args.no_log and int(os.environ.get('RANK', 0)) == 0:  # only rank 0 writes the log
        try:
            os.makedirs(args.log_dir, exist_ok=True)
            tempfile.TemporaryFile(dir=args.log_dir).close()
        except OSError as e:
            parser.error('--log-dir %s: cannot write there (%s); pass another folder or --no-log' % (args.log_dir, e))
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**31)
    return args


DIST_TIMEOUT_SECONDS = 1800  # a rank that waits this long on the others gives up with an error


def load_data(args, device, rank, local_rank, world_size):
    """(train_loader, test_loader, error). Under torchrun the ranks take turns: global rank 0
    prepares the data dir first, then each node's local rank 0 (for node-local data dirs),
    then the rest only read, so no two processes write the same file."""
    turn = 0 if rank == 0 else 1 if local_rank == 0 else 2
    loaders, error = None, None
    for this_turn in range(3 if world_size > 1 else 1):
        if this_turn == turn:
            try:
                loaders = (CifarLoader(args.data_dir, train=True, batch_size=hyp['opt']['batch_size'],
                                       aug=hyp['aug'], device=device),
                           CifarLoader(args.data_dir, train=False, batch_size=2000, device=device))
            except DataError as e:
                error = str(e)
        if world_size > 1:  # everyone learns of a failure, and stops
            errors = [None] * world_size
            torch.distributed.all_gather_object(errors, error)
            error = next((e for e in errors if e), None)
        if error:
            return None, None, error
    return loaders[0], loaders[1], None


MIN_TORCH = (2, 4)  # the oldest torch this script accepts: the published runs used 2.4


def torch_too_old(version):
    """A one-line error if torch `version` (e.g. '2.13.0+cpu') is older than MIN_TORCH, else None."""
    major, minor = (int(part) for part in version.split('.')[:2])
    if (major, minor) < MIN_TORCH:
        return 'torch %s is too old: this script needs torch %d.%d or newer' % ((version,) + MIN_TORCH)
    return None


def main(argv=None):
    too_old = torch_too_old(torch.__version__)
    if too_old:
        print('%s: error: %s' % (os.path.basename(__file__), too_old), file=sys.stderr)
        return 1
    args = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    prog = os.path.basename(__file__)
    with open(__file__) as f:
        source = f.read()  # now: the log must hold the code that ran, even if the file is edited meanwhile
    # torchrun sets these; without it this is one process doing every run
    rank, local_rank = int(os.environ.get('RANK', 0)), int(os.environ.get('LOCAL_RANK', 0))
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    use_cuda = args.device == 'cuda' or (args.device == 'auto' and torch.cuda.is_available())
    device = torch.device('cuda', local_rank) if use_cuda else torch.device('cpu')
    if world_size > 1:
        if use_cuda:
            torch.cuda.set_device(device)
        # Import dynamo before the process group exists. Imported later (the first optimizer
        # does), it keeps references to the group, so destroy_process_group cannot free it; gloo's
        # worker threads then outlive main() and can abort the process as Python shuts down
        import torch._dynamo as dynamo  # noqa: F401 (`import torch._dynamo` would make torch a local)
        torch.distributed.init_process_group('nccl' if use_cuda else 'gloo',
                                             timeout=datetime.timedelta(seconds=DIST_TIMEOUT_SECONDS))
        seed = [args.seed]
        torch.distributed.broadcast_object_list(seed, src=0)  # rank 0's base seed, drawn or given
        args.seed = seed[0]
    say = print if rank == 0 else (lambda *a, **k: None)  # other ranks print only problems
    try:
        return run_all(args, prog, source, device, rank, local_rank, world_size, say)
    except Exception as e:
        if world_size == 1:
            raise
        print('%s: rank %d failed: %s: %s' % (prog, rank, type(e).__name__, e), file=sys.stderr)
        return 1
    finally:
        if world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_all(args, prog, source, device, rank, local_rank, world_size, say):
    if device.type == 'cpu':
        say('note: CPU run in float32, for tests and laptops; timings mean nothing for GPUs'
            + ('' if args.no_warmup or compile_mode(device) else ' (the warm-up only warms cuDNN: --no-warmup saves a run)'))
    if compile_mode(device):
        say("note: torch.compile(mode='%s') compiles during the warm-up run%s" % (
            compile_mode(device), ' (max-autotune searches GPU kernels; the CPU uses the default mode)'
            if device.type == 'cpu' else ''))
    train_loader, test_loader, error = load_data(args, device, rank, local_rank, world_size)
    if error:
        if rank == 0:
            print('%s: error: %s' % (prog, error), file=sys.stderr)
        return 1
    counts = {'train': len(train_loader.images), 'test': len(test_loader.images)}
    if len(train_loader) == 0:
        if rank == 0:
            print('%s: error: %d training images are fewer than one batch of %d'
                  % (prog, counts['train'], train_loader.batch_size), file=sys.stderr)
        return 1
    say('data: %d train / %d test images from %s%s' % (
        counts['train'], counts['test'], args.data_dir,
        '' if counts == CIFAR10_COUNTS else ' (not the full 50000 / 10000 of CIFAR-10)'))
    say('runs: %d, run i uses seed %d+i, device %s%s' % (
        args.runs, args.seed, device, ', %d processes (run i on rank i mod %d)' % (world_size, world_size)
        if world_size > 1 else ''))
    say(format_header())

    runs, interrupted, compiled, warmup_seconds, graphs_before = [], False, None, None, None
    try:
        if not args.no_warmup:
            # Untimed run on random labels: warms up cuDNN (and compiles, where the script
            # compiles); every timed run then re-initializes everything from its own seed
            warmup_loader = copy.copy(train_loader)
            warmup_loader.labels = torch.randint_like(train_loader.labels, 10)
            start = time.perf_counter()
            try:
                train(hyp, warmup_loader, test_loader, seed=args.seed, run='warmup', verbose=rank == 0)
            except TrainingDiverged:
                pass  # random labels: only the warm-up itself matters
            warmup_seconds = time.perf_counter() - start
            say('warm-up: %.1f s, untimed%s' % (warmup_seconds, ', including compilation' if compile_mode(device) else ''))
        graphs_before = torch._dynamo.utils.counters['stats']['unique_graphs'] if compile_mode(device) else None
        for i in range(rank, args.runs, world_size):
            seed = args.seed + i
            where = dict(rank=rank, device=str(device)) if world_size > 1 else {}
            try:
                result = train(hyp, train_loader, test_loader, seed=seed, run=i + 1, verbose=rank == 0)
                runs.append(dict(run=i + 1, seed=seed, status='ok', tta_val_acc=result['tta_val_acc'],
                                 val_acc=result['val_acc'], time_seconds=result['time_seconds'], **where))
            except TrainingDiverged as e:
                print('%s: run %d (seed %d) failed: %s' % (prog, i + 1, seed, e), file=sys.stderr)
                runs.append(dict(run=i + 1, seed=seed, status='diverged', error=str(e), **where))
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not lose the summary
        interrupted = True
    if graphs_before is not None:  # compiling, and the warm-up finished
        compiled = dict(mode=compile_mode(device),
                        graphs_compiled_in_timed_runs=torch._dynamo.utils.counters['stats']['unique_graphs'] - graphs_before)
    if world_size > 1:  # rank 0 gathers every rank's runs
        gathered = [None] * world_size if rank == 0 else None
        torch.distributed.gather_object((runs, interrupted, compiled), gathered, dst=0)
        if rank != 0:
            return 130 if interrupted else 1 if any(r['status'] != 'ok' for r in runs) else 0
        runs = sorted((r for part, _, _ in gathered for r in part), key=lambda r: r['run'])
        interrupted = any(part_interrupted for _, part_interrupted, _ in gathered)
        compiled_parts = [c for _, _, c in gathered if c]
        compiled = dict(compiled_parts[0], graphs_compiled_in_timed_runs=max(
            c['graphs_compiled_in_timed_runs'] for c in compiled_parts)) if compiled_parts else None
        for r in runs:
            print('run %d (seed %d, rank %d, %s): %s' % (r['run'], r['seed'], r['rank'], r['device'],
                  'tta_val_acc %.4f, %.3f s' % (r['tta_val_acc'], r['time_seconds']) if r['status'] == 'ok' else r['status']))
    if interrupted:
        print('\ninterrupted: summarizing the %d finished runs' % len(runs))
    summary = summarize(runs)
    print(format_summary(summary))
    if compiled:
        print('graphs compiled during the timed runs: %d' % compiled['graphs_compiled_in_timed_runs'])
    if not args.no_log:
        record = dict(script=prog, argv=args.argv, hyp=hyp,
                      seed=args.seed, data_dir=os.path.abspath(args.data_dir), data_counts=counts,
                      torch_version=torch.__version__, python_version=platform.python_version(),
                      device=str(device), dtype=str(train_loader.images.dtype).replace('torch.', ''),
                      device_name=torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu',
                      world_size=world_size, warmup_seconds=warmup_seconds, compile=compiled, interrupted=interrupted,
                      runs=runs, summary=summary,
                      source=source)
        print('log: %s' % write_log(args.log_dir, record))
    return 130 if interrupted else 1 if summary['failed'] else 0


if __name__ == '__main__':
    sys.exit(main())
