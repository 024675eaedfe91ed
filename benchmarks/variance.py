"""The airbench paper's variance study over the runs that `harness.py --save-logits DIR` saved.

    torchrun --standalone --nproc_per_node=8 harness.py airbench94.py --runs 10000 --save-logits L
    python -m benchmarks.variance L           # a table, TTA and no TTA side by side
    python -m benchmarks.variance L --json    # one JSON object

For n runs and N test images, c[r, i] = 1 where run r classifies image i correctly; for each kind of
logits in the files (the final TTA's, and the same trained net's without TTA):
- the mean and std of the runs' accuracies, and the test-set variance: their sample variance;
- the independent-errors variance, n / (n - 1) * sum_i p_i (1 - p_i) / N^2 with p_i the share of runs
  right on image i: the test-set variance the runs would have if their errors were independent;
- the distribution-wise variance (Jordan 2023, "Calibrated chaos", arXiv:2304.01910): the test-set
  variance minus the independent-errors one, 0 in expectation when the errors are independent; it can
  come out negative for small n and is reported as it is, with the standard errors of both variances
  from a bootstrap over the runs (a fixed seed, the same resamples for both kinds of logits);
- CACE, the class-aggregated calibration error (Jiang et al. 2021) of the runs' vote shares;
- the accuracy of ensembles of k runs (softmax probabilities averaged), k = 1, 2, 4, ... up to the largest
  power of two <= n, and n itself: the mean and std over the floor(n / k) disjoint groups of consecutive
  runs, in file-name order (the runs after the last whole group are left out for that k).

The files are read one at a time (torch.load, weights_only) in name order; every file must hold the
first one's labels, test-image fingerprint, TTA level and logit shapes. Memory, with C classes: per kind
of logits, n N / 8 bytes (each run's correctness, bit-packed, which the bootstrap resamples) and
(floor(log2 n) + 3) N C 8 bytes (the ensembles' running sums, the votes); the bootstrap adds blocks of
(32 R + 6 r) N + 24 R n bytes (R = 64 resamples and r = 512 runs at a time, whatever B). At 10,000
runs x 10,000 images x 10 classes that is 117 MB of arrays; measured on synthetic runs (torch 2.13, CPU),
the process's peak RSS was 450 MB, 230 MB of it Python and torch, and reading (a cached file) and adding the
runs took 2 minutes on one busy CPU core. Exit codes: 0 done, 1 an unreadable folder or file, or one
unlike the first (one line naming it), 2 a bad flag.
"""
import argparse
import json
import math
import os
import sys

import torch

PROG = 'python -m benchmarks.variance'
KINDS = {'tta': 'logits', 'no_tta': 'logits_no_tta'}  # the kind of logits -> its key in a run's file
RESAMPLE_BLOCK, RUN_BLOCK = 64, 512  # the bootstrap's blocks: its memory does not grow with --bootstrap
BIT_SHIFTS = torch.arange(8, dtype=torch.uint8)


class StudyError(Exception):
    """A folder or file the study cannot use; the message names it."""

#############################################
#              The arithmetic               #
#############################################

def pack_bits(bits):
    """(..., N) bool -> (..., ceil(N / 8)) uint8, bit b of byte j holding element 8 j + b."""
    padded = torch.nn.functional.pad(bits.to(torch.uint8), (0, -bits.shape[-1] % 8))
    return (padded.unflatten(-1, (-1, 8)) << BIT_SHIFTS).sum(-1, dtype=torch.uint8)


def unpack_bits(packed, length):
    """pack_bits's inverse, as uint8 0/1: the first `length` elements of each row."""
    return ((packed.unsqueeze(-1) >> BIT_SHIFTS) & 1).flatten(-2)[..., :length]


def variances(weights, accuracies, correct_counts, images):
    """(test-set, independent-errors, distribution-wise variance), one of each per row of `weights` (R, n):
    a sample of the n runs that holds run r weights[:, r] times (all ones: the runs themselves), with
    `accuracies` (n,) the runs' and `correct_counts` (R, N) how many of the sample's runs got each image right."""
    runs = weights.sum(1)
    centered = accuracies - accuracies.mean()  # the variance is shift-free; centering keeps its digits
    mean = weights @ centered / runs
    test_set = (weights @ centered**2 - runs * mean**2) / (runs - 1)
    # n / (n - 1) * sum p (1 - p) / N^2 with p = count / n
    independent = (correct_counts * (runs[:, None] - correct_counts)).sum(1) / (runs * (runs - 1) * images**2)
    return test_set, independent, test_set - independent


def bootstrap_weights(runs, resamples, seed):
    """Blocks of rows (up to RESAMPLE_BLOCK, `resamples` in all): how often each of the runs is drawn when
    `runs` are drawn with replacement; the same seed gives the same samples (both kinds see the same ones)."""
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, resamples, RESAMPLE_BLOCK):
        draws = torch.randint(runs, (min(RESAMPLE_BLOCK, resamples - start), runs), generator=generator)
        yield torch.zeros(draws.shape).scatter_add_(1, draws, torch.ones(draws.shape))


def bootstrap(correct_bits, accuracies, images, resamples, seed):
    """variances() of `resamples` bootstrap samples of the runs, as a (resamples, 3) tensor, from the
    bit-packed correctness (n, ceil(N / 8)) unpacked RUN_BLOCK runs at a time."""
    rows = []
    for weights in bootstrap_weights(len(accuracies), resamples, seed):
        counts = torch.zeros(len(weights), images)
        for start in range(0, len(accuracies), RUN_BLOCK):
            block = unpack_bits(correct_bits[start:start + RUN_BLOCK], images).float()
            counts += weights[:, start:start + RUN_BLOCK] @ block  # integers below 2^24: exact in float32
        rows.append(torch.stack(variances(weights.double(), accuracies, counts.double(), images), 1))
    return torch.cat(rows)


def cace(votes, labels):
    """Class-aggregated calibration error of vote shares: votes (N, C) counts how many of the n runs predicted
    class k for image i. sum over k and q of (share of images with vote share q for k) * |(share of those
    labelled k) - q|, q in 0, 1/n, ..., 1."""
    images, classes = votes.shape
    runs = int(votes[0].sum())
    bins = (votes + torch.arange(classes) * (runs + 1)).flatten()  # (class, vote count) of every (image, class)
    labelled = torch.nn.functional.one_hot(labels, classes).flatten().double()
    count = torch.bincount(bins, minlength=classes * (runs + 1)).double()
    count_labelled = torch.bincount(bins, weights=labelled, minlength=classes * (runs + 1))
    share = (torch.arange(runs + 1, dtype=torch.float64) / runs).repeat(classes)
    return ((count_labelled - count * share).abs().sum() / images).item()


def ensemble_sizes(runs):
    """1, 2, 4, ... up to the largest power of two <= runs, then runs itself if it is not one."""
    sizes = [2**j for j in range(runs.bit_length())]
    return sizes + ([runs] if runs != sizes[-1] else [])


def mean_std(values):
    """(mean, sample std) of a list of floats; the std is None for one value."""
    values = torch.tensor(values, dtype=torch.float64)
    return values.mean().item(), values.std().item() if len(values) > 1 else None


class Accumulator:
    """One kind of logits of `runs` runs, fed one run at a time (add), holding what the study needs and
    no run's logits: each run's accuracy, each image's count of right runs, the votes per (image, class),
    the running softmax sum of each ensemble size's current group, and the bit-packed correctness."""

    def __init__(self, labels, classes, runs):
        images = len(labels)
        self.labels, self.runs, self.added = labels, runs, 0
        self.accuracies = torch.zeros(runs, dtype=torch.float64)
        self.correct_counts = torch.zeros(images, dtype=torch.int64)
        self.votes = torch.zeros(images, classes, dtype=torch.int64)
        self.correct_bits = torch.zeros(runs, (images + 7) // 8, dtype=torch.uint8)
        self.sizes = ensemble_sizes(runs)
        self.powers = [k for k in self.sizes[1:] if k & (k - 1) == 0]
        self.sums = {k: torch.zeros(images, classes, dtype=torch.float64) for k in self.sizes[1:]}
        self.group_accuracies = {k: [] for k in self.sizes}

    def add(self, logits):
        predictions = logits.argmax(1)
        correct = predictions == self.labels
        r, self.added = self.added, self.added + 1
        self.accuracies[r] = correct.sum().item() / len(correct)
        self.correct_counts += correct
        self.votes[torch.arange(len(correct)), predictions] += 1
        self.correct_bits[r] = pack_bits(correct)
        self.group_accuracies[1].append(self.accuracies[r].item())
        probabilities = logits.double().softmax(1)
        # A whole group of 2^j runs is added into the current group of 2^(j+1): about two sums per run, not log2(n)
        carry = probabilities
        for k in self.powers:
            self.sums[k] += carry
            if self.added % k:
                break
            self.group_accuracies[k].append(self.accuracy(self.sums[k]))
            carry, self.sums[k] = self.sums[k], torch.zeros_like(carry)
        if self.runs not in self.powers and self.runs > 1:
            self.sums[self.runs] += probabilities

    def accuracy(self, probabilities):
        return (probabilities.argmax(1) == self.labels).double().mean().item()

    def result(self, resamples, seed):
        """The study's figures for this kind (a dict; what needs two runs is None for one)."""
        n, images = self.runs, len(self.labels)
        assert self.added == n, 'fed %d of %d runs' % (self.added, n)
        if not self.group_accuracies[n]:  # n is not a power of two: its one group is every run
            self.group_accuracies[n] = [self.accuracy(self.sums[n])]
        mean, std = mean_std(self.accuracies.tolist())
        figures = dict(runs=n, accuracy_mean=mean, accuracy_std=std, test_set_variance=None,
                       test_set_variance_se=None, independent_errors_variance=None, distribution_wise_variance=None,
                       distribution_wise_variance_se=None, distribution_wise_std=None,
                       cace=cace(self.votes, self.labels), ensembles=[])
        for k in self.sizes:
            group_mean, group_std = mean_std(self.group_accuracies[k])
            figures['ensembles'].append(dict(k=k, groups=len(self.group_accuracies[k]), accuracy_mean=group_mean,
                                             accuracy_std=group_std))
        if n > 1:
            test_set, independent, distribution_wise = (v.item() for v in variances(
                torch.ones(1, n, dtype=torch.float64), self.accuracies, self.correct_counts[None].double(), images))
            samples = bootstrap(self.correct_bits, self.accuracies, images, resamples, seed)
            figures.update(test_set_variance=test_set, test_set_variance_se=samples[:, 0].std().item(),
                           independent_errors_variance=independent, distribution_wise_variance=distribution_wise,
                           distribution_wise_variance_se=samples[:, 2].std().item(),
                           distribution_wise_std=math.sqrt(distribution_wise) if distribution_wise > 0 else None)
        return figures


def memory_bytes(runs, images, classes):
    """The study's arrays at their largest, as the docstring counts them: two kinds, then one bootstrap's blocks
    (R x N counts in float32 and float64 with two float64 temporaries; r x N unpacked bits, as uint8 twice and as
    float32; R x n draws in int64 and weights in float32 twice and float64)."""
    per_kind = runs * math.ceil(images / 8) + (runs.bit_length() + 2) * images * classes * 8
    resample_block, run_block = min(RESAMPLE_BLOCK, runs), min(RUN_BLOCK, runs)
    return 2 * per_kind + (32 * resample_block + 6 * run_block) * images + 24 * resample_block * runs

#############################################
#               The files                   #
#############################################

def run_files(folder):
    """The folder's *.pt files in name order."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as e:
        raise StudyError('%s: cannot read the folder (%s)' % (folder, e.strerror or e)) from None
    paths = [os.path.join(folder, name) for name in names if name.endswith('.pt')]
    if not paths:
        raise StudyError('%s: no run files (*.pt, as harness.py --save-logits writes them)%s'
                         % (folder, '' if names else '; the folder is empty'))
    return paths


def load_run(path):
    """A run's file as a dict, checked on its own: float (N, C) logits, int labels in 0..C-1."""
    try:
        record = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # any failure to unpickle: truncated, not torch's, not tensors only
        message = (str(e).strip().splitlines() or [''])[0][:200]
        raise StudyError('%s: unreadable (%s%s)' % (path, type(e).__name__, ': ' + message if message else '')) \
            from None
    if not isinstance(record, dict) or not all(isinstance(record.get(k), torch.Tensor) for k in ('logits', 'labels')):
        raise StudyError('%s: not a run file of harness.py --save-logits (no logits and labels tensors)' % path)
    labels, logits = record['labels'], record['logits']
    if labels.dim() != 1 or not len(labels) or labels.is_floating_point() or labels.is_complex() \
            or labels.dtype == torch.bool:
        raise StudyError('%s: labels of dtype %s and shape %s, not N > 0 integers' % (
            path, labels.dtype, tuple(labels.shape)))
    if logits.dim() != 2 or not logits.is_floating_point() or len(logits) != len(labels) or logits.shape[1] < 2:
        raise StudyError('%s: logits of dtype %s and shape %s, not floats of shape (%d images, classes)' % (
            path, logits.dtype, tuple(logits.shape), len(labels)))
    if not 0 <= labels.min() <= labels.max() < logits.shape[1]:
        raise StudyError('%s: labels outside 0..%d' % (path, logits.shape[1] - 1))
    no_tta = record.get(KINDS['no_tta'])
    if no_tta is not None and (not isinstance(no_tta, torch.Tensor) or no_tta.shape != logits.shape
                               or not no_tta.is_floating_point()):
        raise StudyError('%s: %s is not a float tensor of the logits\' shape %s' % (
            path, KINDS['no_tta'], tuple(logits.shape)))
    for key in KINDS.values():
        if key in record and not torch.isfinite(record[key]).all():
            raise StudyError('%s: %s holds NaN or infinite values' % (path, key))
    record['labels'] = labels.long()
    return record


def check_alike(path, record, first_path, first):
    """Raises unless the run in `path` saw the first file's test set, in the same shapes and TTA level."""
    if record['labels'].shape != first['labels'].shape or not torch.equal(record['labels'], first['labels']):
        raise StudyError('%s: its labels differ from those of %s: not the same test set' % (path, first_path))
    if record['logits'].shape != first['logits'].shape:
        raise StudyError('%s: logits of shape %s, not %s as in %s' % (path, tuple(record['logits'].shape),
                                                                       tuple(first['logits'].shape), first_path))
    for key, what in [('test_images_sha256', 'test images (SHA-256)'), ('tta_level', 'TTA level')]:
        if key in record and key in first and record[key] != first[key]:
            raise StudyError('%s: its %s %s differ from %s in %s' % (path, what, record[key], first[key], first_path))


def study(folder, resamples=200, seed=0):
    """The study of every run file in `folder`, as a dict (what --json prints)."""
    paths = run_files(folder)
    first_path, first, kinds, notes, unchecked = paths[0], None, {}, [], 0
    for path in paths:
        record = load_run(path)
        if first is None:
            first = record
            classes = record['logits'].shape[1]
            kinds = {kind: Accumulator(record['labels'], classes, len(paths)) for kind in KINDS}
        else:
            check_alike(path, record, first_path, first)
        unchecked += 'test_images_sha256' not in record
        if 'no_tta' in kinds and KINDS['no_tta'] not in record:
            del kinds['no_tta']
            notes.append('%s has no logits without TTA (saved by an older harness.py): TTA only' % path)
        for kind, accumulator in kinds.items():
            accumulator.add(record[KINDS[kind]])
    if unchecked:
        notes.append('%d of %d files have no test-image fingerprint (saved by an older harness.py): their labels '
                     'were checked, their images could not be' % (unchecked, len(paths)))
    images = len(first['labels'])
    return dict(folder=folder, runs=len(paths), images=images, classes=classes, tta_level=first.get('tta_level'),
                test_images_checked=not unchecked, bootstrap_resamples=resamples, bootstrap_seed=seed,
                memory_bytes=memory_bytes(len(paths), images, classes), notes=notes,
                **{kind: kinds[kind].result(resamples, seed) if kind in kinds else None for kind in KINDS})

#############################################
#              The command                  #
#############################################

def format_table(result):
    """The study as plain text: a header, then a row per figure with a column per kind of logits."""
    kinds = [kind for kind in KINDS if result[kind]]
    level = result['tta_level']
    titles = {'tta': 'TTA' if level is None else 'TTA (level %d)' % level, 'no_tta': 'no TTA (level 0)'}
    lines = ['variance study of %s: %d runs x %d test images, %d classes' % (
                 result['folder'], result['runs'], result['images'], result['classes']),
             'every file has the first one\'s labels%s; bootstrap: %d resamples of the runs (seed %d); arrays: '
             'about %.0f MB' % (' and test images' if result['test_images_checked'] else '',
                               result['bootstrap_resamples'], result['bootstrap_seed'], result['memory_bytes'] / 1e6)]
    lines += ['note: ' + note for note in result['notes']]

    def cell(value, form, se=None, missing='n/a (1 run)'):
        return missing if value is None else form % value + ('' if se is None else ' +- %.1e' % se)
    rows = [('', lambda f: titles[f['kind']]),
             ('runs', lambda f: str(f['runs'])),
             ('accuracy: mean', lambda f: cell(f['accuracy_mean'], '%.4f')),
             ('accuracy: std', lambda f: cell(f['accuracy_std'], '%.4f')),
             ('test-set variance', lambda f: cell(f['test_set_variance'], '%.3e', f['test_set_variance_se'])),
             ('independent-errors variance', lambda f: cell(f['independent_errors_variance'], '%.3e')),
             ('distribution-wise variance', lambda f: cell(f['distribution_wise_variance'], '%.3e',
                                                           f['distribution_wise_variance_se'])),
             ('distribution-wise std', lambda f: cell(f['distribution_wise_std'], '%.4f', missing='n/a (1 run)'
                                                      if f['runs'] == 1 else 'n/a (variance <= 0)')),
             ('CACE', lambda f: cell(f['cace'], '%.4f'))]
    for i, ensemble in enumerate(result[kinds[0]]['ensembles']):
        k, groups = ensemble['k'], ensemble['groups']
        rows.append(('ensemble of %d (%d group%s)' % (k, groups, '' if groups == 1 else 's'),
                     lambda f, i=i: '%.4f std %s' % (f['ensembles'][i]['accuracy_mean'], cell(
                         f['ensembles'][i]['accuracy_std'], '%.4f', missing='n/a'))))
    figures = [dict(result[kind], kind=kind) for kind in kinds]
    width = max(len(name) for name, _ in rows) + 2
    lines.append('')
    for name, value in rows:
        lines.append((name.ljust(width) + ''.join(value(f).ljust(28) for f in figures)).rstrip())
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                     epilog=__doc__.split('\n\n', 2)[2], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument('folder', metavar='LOGITS_DIR', help='the folder of harness.py --save-logits')
    parser.add_argument('--json', action='store_true', help='print one JSON object instead of the table')
    parser.add_argument('--bootstrap', type=int, default=200, metavar='B',
                        help='bootstrap resamples of the runs for the standard errors (default 200, seed 0)')
    args = parser.parse_args(argv)
    if args.bootstrap < 2:
        parser.error('--bootstrap: needs at least 2 resamples for a standard error, not %d' % args.bootstrap)
    try:
        result = study(args.folder, args.bootstrap)
    except StudyError as e:
        print('%s: error: %s' % (PROG, e), file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1) if args.json else format_table(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
