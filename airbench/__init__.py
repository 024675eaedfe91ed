"""airbench: the API of the published `airbench` package (0.1.8 on PyPI) over this repository's scripts.

    import airbench
    airbench.warmup94(); net = airbench.train94()        # CIFAR-10 in ./cifar10 (downloaded there once)
    net = airbench.train94(train_loader, epochs=16, label_smoothing=0)
    airbench.evaluate(net, airbench.CifarLoader('cifar10', train=False), tta_level=2)

A thin layer: each trainNN imports its script (`airbench94`, installed beside this package), copies its `hyp`,
sets the keywords it was given on the copy, and calls the script's own `train`; nothing of a method is here.
Members: train94, train95, train96 with make_net and warmup functions of the same suffix (as 0.1.8 names them),
and ours: train94_compiled (with warmup94_compiled), train94_muon, train94_progressive, train96_faster (each with
make_net and warmup). For everything a keyword does not reach, use the script itself: README.md.
"""
import copy
import functools
import importlib
import inspect
import numbers
import sys
import warnings

import torch

import airbench94

SCRIPTS = {'94': 'airbench94', '94_compiled': 'airbench94_compiled', '94_muon': 'airbench94_muon',
           '94_progressive': 'airbench94_progressive', '95': 'airbench95', '96': 'airbench96',
           '96_faster': 'airbench96_faster'}
# airbench 0.1.8's keyword names for hyp['opt'] entries; every other entry keeps its own name
PUBLISHED_NAMES = {'train_epochs': 'epochs', 'lr': 'learning_rate'}
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
DEFAULT_DATA_DIR = 'cifar10'  # as airbench 0.1.8: relative to the working directory


class CifarLoader(airbench94.CifarLoader):
    """airbench 0.1.8's CifarLoader over airbench94.py's: CIFAR-10 from `path` (our cache, the official files, or
    a download there) as one tensor on the device, in augmented batches; `images` and `labels` may be replaced.
    aug: flip, translate (pixels), cutout (side). altflip=False draws each image's flip afresh every epoch;
    True alternates it, as every script's loader does (and train96_faster, whatever it is given). gpu: the CUDA
    device index (the CPU where CUDA is not available), or any torch device."""

    classes = CIFAR10_CLASSES

    def __init__(self, path, train=True, batch_size=500, aug=None, drop_last=None, shuffle=None, altflip=False,
                 gpu=0):
        if isinstance(gpu, int):
            gpu = 'cuda:%d' % gpu if torch.cuda.is_available() else 'cpu'
        super().__init__(path, train, batch_size, aug, drop_last, shuffle, device=gpu)
        self.altflip = altflip

    def augment(self, images, flip):
        if flip is not None and not self.altflip:  # a fresh coin per image and epoch, not the alternating pattern
            flip = torch.rand(len(images), device=images.device) < 0.5
        return super().augment(images, flip)


def script_of(net):
    """The member script whose network `net` is; airbench94 for any other model."""
    name = type(net).__module__
    return sys.modules[name] if name in SCRIPTS.values() else airbench94


def infer(model, loader, tta_level=0):
    """Logits of every image of `loader`, in its order, under test-time augmentation level `tta_level` (0 none,
    1 mirror, 2 mirror and translate), as the script whose network `model` is evaluates (airbench94's for others)."""
    return script_of(model).infer(model, loader, tta_level)


def evaluate(model, loader, tta_level=0):
    """Accuracy of `model` on `loader`'s images and labels, with infer's test-time augmentation."""
    return script_of(model).evaluate(model, loader, tta_level)


@functools.lru_cache(maxsize=None)
def loader_source(cls):
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):
        return None


def check_widths(name, widths, default):
    if not (isinstance(widths, dict) and set(widths) == set(default)
            and all(isinstance(w, int) and w > 0 for w in widths.values())):
        raise ValueError('%s: widths must be a dict of positive channel counts like %r, not %r'
                         % (name, default, widths))
    return dict(widths)


class Member:
    """One script behind its trainNN, warmupNN and make_netNN."""

    def __init__(self, suffix):
        self.module = importlib.import_module(SCRIPTS[suffix])
        self.suffix, hyp = suffix, self.module.hyp
        # The keywords that set hyp: every hyp['opt'] entry but the batch size (the loader's), then two of hyp['net']
        self.paths = {PUBLISHED_NAMES.get(key, key): ('opt', key) for key in hyp['opt'] if key != 'batch_size'}
        self.paths.update(tta_level=('net', 'tta_level'), widths=('net', 'widths'))
        self.make_net = None if suffix == '94_compiled' else self.api_make_net()  # the same network as airbench94's
        keyword = functools.partial(inspect.Parameter, kind=inspect.Parameter.KEYWORD_ONLY)
        self.signature = inspect.Signature(
            [inspect.Parameter('train_loader', inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)]
            + [keyword(name, default=copy.deepcopy(hyp[group][key])) for name, (group, key) in self.paths.items()]
            + ([keyword('make_net', default=self.make_net)] if self.make_net else [])
            + [keyword('run', default=0), keyword('verbose', default=True), keyword('seed', default=None)])

    def bind(self, name, args, kwargs):
        try:
            return self.signature.bind(*args, **kwargs).arguments
        except TypeError as e:
            raise TypeError('%s: %s; its keywords: %s' % (name, e, ', '.join(
                list(self.signature.parameters)[1:]))) from None

    def hyp(self, name, given):
        """A copy of the script's hyp with the keywords in `given` set on it."""
        hyp = copy.deepcopy(self.module.hyp)
        for keyword, value in given.items():
            if keyword in self.paths:
                group, key = self.paths[keyword]
                hyp[group][key] = value
        epochs = hyp['opt']['train_epochs']
        if isinstance(epochs, bool) or not isinstance(epochs, numbers.Real) or not epochs > 0:
            raise ValueError('%s: epochs must be a positive number, not %r' % (name, epochs))
        hyp['net']['widths'] = check_widths(name, hyp['net']['widths'], self.module.hyp['net']['widths'])
        if given.get('make_net', self.make_net) is not self.make_net:
            raise TypeError("%s: make_net: this package trains the script's own network, built from its hyp; pass "
                            'widths=%r for other widths, or call the script (%s.train) for another network'
                            % (name, hyp['net']['widths'], self.module.__name__))
        return hyp

    def same_kind(self, loader):
        """Whether `loader` runs this script's loader code: its own CifarLoader or a sibling's identical one."""
        mine = loader_source(self.module.CifarLoader)
        return any(c.__name__ == 'CifarLoader' and loader_source(c) == mine for c in type(loader).__mro__)

    def loaders(self, name, given, hyp):
        """(train loader, test loader) for train(hyp, ...), with hyp's batch size and aug set to match."""
        opt, module = hyp['opt'], self.module
        if given is None:
            loader = module.CifarLoader(DEFAULT_DATA_DIR, train=True, batch_size=opt['batch_size'], aug=hyp['aug'])
        elif not all(isinstance(getattr(given, a, None), torch.Tensor) for a in ('images', 'labels')) \
                or not hasattr(given, 'data_dir'):
            raise TypeError('%s: train_loader must be an airbench.CifarLoader or a script\'s CifarLoader (it knows '
                            'its data_dir, where the test split comes from), not %s' % (name, type(given).__name__))
        elif len(given.images) == 0:
            raise ValueError('%s: train_loader holds no images' % name)
        elif self.same_kind(given):
            loader, opt['batch_size'], hyp['aug'] = given, given.batch_size, dict(given.aug)
        else:
            warnings.warn("%s: train_loader comes from %s, not %s: training on its images and labels with the method's "
                          'own batch size (%d) and augmentation' % (name, type(given).__module__, module.__name__,
                                                                     opt['batch_size']), stacklevel=4)
            # The test split, the smaller one, for a loader whose images are then replaced
            loader = module.CifarLoader(given.data_dir, train=False, batch_size=opt['batch_size'], aug=hyp['aug'],
                                        drop_last=True, shuffle=True, device=given.images.device)
            loader.images = given.images.to(loader.images.dtype).contiguous(
                memory_format=loader.policy['memory_format'])
            loader.labels = given.labels
        if len(loader) == 0:
            raise ValueError('%s: %d training images are fewer than one batch of %d' % (
                name, len(loader.images), loader.batch_size))
        test_loader = module.CifarLoader(loader.data_dir, train=False, batch_size=2000, device=loader.device,
                                         policy=loader.policy)
        return loader, test_loader

    def prepare(self, name, args, kwargs):
        """(hyp, train loader, test loader, seed, the bound arguments) of a call."""
        given = self.bind(name, args, kwargs)
        hyp = self.hyp(name, given)
        loaders = self.loaders(name, given.get('train_loader'), hyp)
        # Unseeded, as 0.1.8: each call draws its seed, from torch's RNG (torch.manual_seed makes it repeat)
        seed = given['seed'] if given.get('seed') is not None else int(torch.randint(2**31, ()))
        if given.get('verbose', True):
            print(self.module.format_row({c: c for c in self.module.LOG_COLUMNS}))
        return (hyp, *loaders, seed, given)

    def api_train(self):
        def train(*args, **kwargs):
            hyp, train_loader, test_loader, seed, given = self.prepare('airbench.train' + self.suffix, args, kwargs)
            return self.module.train(hyp, train_loader, test_loader, seed=seed, run=given.get('run', 0),
                                     verbose=given.get('verbose', True))['net']
        return self.described(train, 'train', self.train_doc())

    def api_warmup(self):
        def warmup(*args, **kwargs):
            hyp, train_loader, test_loader, seed, given = self.prepare('airbench.warmup' + self.suffix, args, kwargs)
            return self.module.warm_up(hyp, train_loader, test_loader, seed, verbose=given.get('verbose', True))
        return self.described(warmup, 'warmup', (
            "An untimed run of %s.py's warm_up on random labels, with train%s's arguments (a compiling script "
            'compiles here, for the same widths and batch size). Returns its seconds.' % (
                self.module.__name__, self.suffix)))

    def api_make_net(self):
        def make_net(widths=None, batchnorm_momentum=None, device=None):
            hyp = copy.deepcopy(self.module.hyp)
            if widths is not None:
                hyp['net']['widths'] = check_widths('airbench.make_net' + self.suffix, widths, hyp['net']['widths'])
            if batchnorm_momentum is not None:  # 0.1.8 counts the share of the running statistics that stays
                hyp['net']['batchnorm_momentum'] = 1 - batchnorm_momentum
            return self.module.make_net(hyp, device or ('cuda' if torch.cuda.is_available() else 'cpu'))
        return self.described(make_net, 'make_net', (
            "A new network of %s.py (make_net), on `device` (CUDA if available), in its precision policy. "
            "widths: {'block1': .., 'block2': .., 'block3': ..}; batchnorm_momentum as airbench 0.1.8 counts it, "
            "1 - PyTorch's (default: the script's)." % self.module.__name__))

    def described(self, function, stem, doc):
        function.__name__ = function.__qualname__ = stem + self.suffix
        function.__doc__, function.__module__ = doc, __name__
        if stem != 'make_net':
            function.__signature__ = self.signature
        return function

    def train_doc(self):
        mine = loader_source(self.module.CifarLoader)
        kin = [name + '.CifarLoader' for name in SCRIPTS.values()
               if loader_source(importlib.import_module(name).CifarLoader) == mine]
        kin = (['airbench.CifarLoader'] if 'airbench94.CifarLoader' in kin else []) + kin
        keywords = ', '.join('%s (%s.%s)' % (name, group, key) for name, (group, key) in self.paths.items())
        return (
            "Train %(script)s.py's method once (its train(), on a copy of its hyp) and return the trained network.\n\n"
            "train_loader: None for the training set in ./cifar10, with the script's batch size and augmentation. "
            'A loader of the same code as the script\'s (%(kin)s) trains as it is: its images and labels, its batch '
            'size (which sets the steps per epoch; no hyp value is rescaled for it), its augmentation and flips. '
            "Any other loader gives its images and labels only, trained with the method's own batch size and "
            "augmentation (a warning says so). The test images: the test split in the loader's data_dir.\n\n"
            "Keywords, each set on the copy of hyp only (defaults: the script's hyp): %(keywords)s. make_net: the "
            "member's own only (widths sets the network). run: the run's label in the printed table; verbose: "
            "print it. seed: the run's seed (default: drawn from torch's RNG). An unknown keyword is a TypeError "
            'that lists these.' % dict(script=self.module.__name__, kin=', '.join(kin), keywords=keywords))


def api(suffix):
    """(trainNN, warmupNN, make_netNN) of the script of suffix NN."""
    member = Member(suffix)
    return member.api_train(), member.api_warmup(), member.make_net


train94, warmup94, make_net94 = api('94')
train95, warmup95, make_net95 = api('95')
train96, warmup96, make_net96 = api('96')
train94_compiled, warmup94_compiled, _ = api('94_compiled')  # its network is make_net94's
train94_muon, warmup94_muon, make_net94_muon = api('94_muon')
train94_progressive, warmup94_progressive, make_net94_progressive = api('94_progressive')
train96_faster, warmup96_faster, make_net96_faster = api('96_faster')

__all__ = ['CifarLoader', 'infer', 'evaluate'] + [name % suffix for suffix in SCRIPTS
                                                  for name in ('train%s', 'warmup%s', 'make_net%s')
                                                  if name % suffix != 'make_net94_compiled']


def __getattr__(name):
    if name in ('train93', 'warmup93', 'make_net93'):
        raise AttributeError("airbench.%s: airbench 0.1.8's 93%% method has no script here (the members: %s)"
                             % (name, ', '.join('train' + suffix for suffix in SCRIPTS)))
    raise AttributeError("module 'airbench' has no attribute %r" % name)
