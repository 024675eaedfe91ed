"""benchmarks/variance.py: the variance study on synthetic runs whose answers are known, and its command."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from benchmarks import variance
from conftest import ROOT


def one_hot_logits(predictions, classes):
    """Logits (..., N, C) whose argmax is `predictions`."""
    return torch.nn.functional.one_hot(predictions, classes).float() * 4


def predictions_from(correct, labels, classes):
    """Each run's predictions: the label where `correct` (n, N) says so, else the next class."""
    return torch.where(correct, labels, (labels + 1) % classes)


def figures_of(logits, labels, resamples=200):
    """The study's figures for runs whose logits are logits[r] (n, N, C)."""
    accumulator = variance.Accumulator(labels, logits.shape[-1], len(logits))
    for run in logits:
        accumulator.add(run)
    return accumulator.result(resamples, seed=0)


def test_ensemble_sizes_are_the_powers_of_two_then_every_run():
    assert variance.ensemble_sizes(1) == [1] and variance.ensemble_sizes(8) == [1, 2, 4, 8]
    assert variance.ensemble_sizes(3) == [1, 2, 3]
    assert variance.ensemble_sizes(10000) == [2**j for j in range(14)] + [10000]


def test_bits_pack_eight_to_a_byte_and_unpack_to_the_same():
    bits = torch.rand(5, 21) < 0.5
    packed = variance.pack_bits(bits)
    assert packed.shape == (5, 3) and packed.dtype == torch.uint8
    assert torch.equal(variance.unpack_bits(packed, 21), bits.to(torch.uint8))
    assert variance.pack_bits(torch.tensor([True] + [False] * 7 + [False, True])).tolist() == [1, 2]

#############################################
#     Variances: known answers              #
#############################################

def test_independent_errors_give_a_distribution_wise_variance_near_zero():
    # Run r is right on image i with probability p_i, independently of everything else: the
    # expected distribution-wise estimate is exactly 0 (the n / (n - 1) factor makes it unbiased)
    runs, images, classes = 400, 1000, 10
    p = 0.5 + 0.5 * torch.rand(images)
    labels = torch.randint(classes, (images,))
    correct = torch.rand(runs, images) < p
    figures = figures_of(one_hot_logits(predictions_from(correct, labels, classes), classes), labels)
    estimate, se = figures['distribution_wise_variance'], figures['distribution_wise_variance_se']
    assert 0 < se < 0.2 * figures['test_set_variance']  # a bootstrap error, and small enough to mean something
    assert abs(estimate) < 3 * se
    expected_independent = (p * (1 - p)).sum().item() / images**2
    assert figures['independent_errors_variance'] == pytest.approx(expected_independent, rel=0.05)


def test_a_planted_shared_shift_is_found_as_distribution_wise_variance():
    # Run r is right on image i with probability p_i + s_r, its shift s_r = +-0.05 shared by every
    # image: any two images' correctness covary by the shifts' variance, so given the shifts the
    # estimate's expectation is (1 - 1/N) times their sample variance (about 0.05^2)
    runs, images, classes = 400, 1000, 10
    p = 0.55 + 0.3 * torch.rand(images)
    shifts = 0.05 * (torch.randint(2, (runs, 1)) * 2 - 1)
    labels = torch.randint(classes, (images,))
    correct = torch.rand(runs, images) < p + shifts
    figures = figures_of(one_hot_logits(predictions_from(correct, labels, classes), classes), labels)
    estimate, se = figures['distribution_wise_variance'], figures['distribution_wise_variance_se']
    planted = (1 - 1 / images) * shifts.double().var().item()
    assert abs(estimate - planted) < 3 * se and se < 0.2 * planted
    assert estimate == pytest.approx(0.05**2, rel=0.2)
    assert figures['distribution_wise_std'] == pytest.approx(math.sqrt(estimate))
    assert figures['test_set_variance'] > 5 * figures['independent_errors_variance']

#############################################
#           Calibration: known answers      #
#############################################

def test_an_ensemble_whose_labels_follow_its_votes_has_cace_near_zero():
    # Labels drawn from the vote shares themselves: among the images where class k gets share q,
    # a fraction q is labelled k in expectation, so each term of CACE is only sampling noise, and
    # E|fraction - q| <= its std, sqrt(q (1 - q) / m) for m images: E[CACE] <= bound below. CACE
    # sums many independent such terms, so it stays near its mean, about sqrt(2 / pi) of the bound
    runs, images, classes = 8, 20000, 10
    truth = torch.randint(classes, (images,))
    skill = torch.rand(images, 1)
    predictions = torch.where(torch.rand(images, runs) < skill, truth[:, None], torch.randint(classes, (images, runs)))
    votes = torch.nn.functional.one_hot(predictions, classes).sum(1)
    labels = torch.multinomial(votes.float(), 1).squeeze(1)
    figures = figures_of(one_hot_logits(predictions.T, classes), labels)
    q = torch.arange(runs + 1) / runs
    bound = sum(math.sqrt(m * share * (1 - share)) for k in range(classes)
                for m, share in zip(torch.bincount(votes[:, k], minlength=runs + 1).tolist(), q.tolist())) / images
    assert bound < 0.05
    assert figures['cace'] < bound
    # the same runs graded against the labels they were built from are far from calibrated
    assert figures_of(one_hot_logits(predictions.T, classes), truth)['cace'] > 10 * bound


def test_agreeing_runs_right_70_percent_have_cace_twice_their_error():
    # Every run predicts the same: class k gets share 1 on the images predicted k, 0 elsewhere, and
    # CACE = (share of images predicted but not labelled k) + (labelled but not predicted k), summed
    # over k: each wrong image once in each term, 2 x (1 - accuracy) = 0.6
    runs, images, classes = 5, 1000, 10
    labels = torch.randint(classes, (images,))
    correct = torch.arange(images) < 700
    predictions = predictions_from(correct, labels, classes).expand(runs, images)
    figures = figures_of(one_hot_logits(predictions, classes), labels)
    assert figures['cace'] == pytest.approx(0.6, abs=1e-12)
    assert figures['accuracy_mean'] == 0.7 and figures['accuracy_std'] == 0
    # identical runs: every image right in all runs or in none, so no variance of any kind
    assert figures['test_set_variance'] == figures['independent_errors_variance'] == 0
    assert figures['distribution_wise_variance'] == 0

#############################################
#         A tiny case, by hand              #
#############################################

# 3 runs x 4 images x 3 classes, as probabilities (softmax(log P) = P); labels 0, 1, 2, 0
HAND_LABELS = torch.tensor([0, 1, 2, 0])
HAND_PROBABILITIES = torch.tensor([
    [[.6, .2, .2], [.2, .6, .2], [.2, .2, .6], [.2, .6, .2]],     # predicts 0 1 2 1: right, right, right, wrong
    [[.6, .2, .2], [.1, .8, .1], [.5, .1, .4], [.7, .2, .1]],     # predicts 0 1 0 0: right, right, wrong, right
    [[.6, .2, .2], [.2, .3, .5], [.2, .2, .6], [.25, .45, .3]]])  # predicts 0 2 2 1: right, wrong, right, wrong


def test_a_tiny_case_gives_every_figure_worked_out_by_hand():
    figures = figures_of(HAND_PROBABILITIES.log(), HAND_LABELS)
    # Accuracies 3/4, 3/4, 1/2: mean 2/3, deviations 1/12, 1/12, -1/6, sample variance (6/144) / 2 = 1/48
    assert figures['accuracy_mean'] == pytest.approx(2 / 3)
    assert figures['test_set_variance'] == pytest.approx(1 / 48) and figures['accuracy_std'] == pytest.approx(48**-0.5)
    # p = 1, 2/3, 2/3, 1/3: sum p (1 - p) = 3 * 2/9 = 2/3; / N^2 = 1/24; * n / (n - 1) = 3/2: 1/16
    assert figures['independent_errors_variance'] == pytest.approx(1 / 16)
    # 1/48 - 1/16 = -1/24, reported as it is, with no std
    assert figures['distribution_wise_variance'] == pytest.approx(-1 / 24)
    assert figures['distribution_wise_std'] is None and figures['distribution_wise_variance_se'] > 0
    # Votes (class 0, 1, 2) per image: (3,0,0), (0,2,1), (1,0,2), (1,2,0). Class 0: shares 1, 0, 1/3, 1/3;
    # share 1/3 on images 3 and 4 (labels 2, 0): |1/2 - 1/3| = 1/6, on half the images: 1/12; shares 0
    # and 1 are exact. Class 1: share 2/3 on images 2 and 4 (labels 1, 0): |1/2 - 2/3| on half: 1/12.
    # Class 2: share 1/3 on image 2 (label 1): |0 - 1/3| / 4 = 1/12; 2/3 on image 3 (label 2): 1/12.
    assert figures['cace'] == pytest.approx(1 / 3)
    # k = 2: runs 1 and 2 averaged: (.6 .2 .2), (.15 .7 .15), (.35 .15 .5), (.45 .4 .15): all right; run 3
    # left out. k = 3 (every run): image 4 sums to (1.15, 1.25, .6): wrong, the rest right: 3/4
    assert [(e['k'], e['groups'], e['accuracy_mean'], e['accuracy_std']) for e in figures['ensembles']] == [
        (1, 3, pytest.approx(2 / 3), pytest.approx(48**-0.5)), (2, 1, 1.0, None), (3, 1, 0.75, None)]


def test_one_run_has_no_variance_but_its_calibration_and_accuracy():
    figures = figures_of(HAND_PROBABILITIES[:1].log(), HAND_LABELS)
    assert figures['accuracy_mean'] == 0.75 and figures['accuracy_std'] is None
    assert figures['test_set_variance'] is figures['distribution_wise_variance_se'] is None
    assert figures['cace'] == pytest.approx(0.5)  # one run agrees with itself: 2 x (1 - 3/4)
    assert figures['ensembles'] == [dict(k=1, groups=1, accuracy_mean=0.75, accuracy_std=None)]

#############################################
#   Streaming = direct, in memory           #
#############################################

def direct_distribution_wise(correct):
    """The distribution-wise estimate of a correctness matrix (n, N), straight from the definition."""
    n, images = correct.shape
    p = correct.double().mean(0)
    return correct.double().mean(1).var().item() - n / (n - 1) * (p * (1 - p)).sum().item() / images**2


def test_the_stream_equals_a_direct_computation_on_random_runs(monkeypatch):
    monkeypatch.setattr(variance, 'RUN_BLOCK', 8)  # several blocks of runs, and of resamples (64, 64, 22)
    runs, images, classes, resamples = 37, 300, 10, 150
    labels = torch.randint(classes, (images,))
    logits = torch.randn(runs, images, classes) + 2 * torch.randn(1, images, classes)  # runs that agree in part
    figures = figures_of(logits, labels, resamples)
    correct = logits.argmax(2) == labels
    accuracies = correct.double().mean(1)
    assert figures['accuracy_mean'] == pytest.approx(accuracies.mean().item(), abs=1e-12)
    assert figures['test_set_variance'] == pytest.approx(accuracies.var().item(), abs=1e-12)
    assert figures['distribution_wise_variance'] == pytest.approx(direct_distribution_wise(correct), abs=1e-12)
    samples = []
    for weights in variance.bootstrap_weights(runs, resamples, seed=0):
        for row in weights:
            samples.append(direct_distribution_wise(correct[torch.arange(runs).repeat_interleave(row.long())]))
    assert len(samples) == resamples
    assert figures['distribution_wise_variance_se'] == pytest.approx(torch.tensor(samples).std().item(), abs=1e-12)
    predictions = logits.argmax(2)
    cace = 0.0
    for k in range(classes):
        share = (predictions == k).double().mean(0)
        for q in share.unique():
            where = share == q
            cace += where.double().mean() * abs((labels[where] == k).double().mean() - q)
    assert figures['cace'] == pytest.approx(cace.item(), abs=1e-12)
    probabilities = logits.double().softmax(2)
    for ensemble in figures['ensembles']:
        k = ensemble['k']
        groups = probabilities[:runs // k * k].unflatten(0, (runs // k, k)).mean(1)
        group_accuracies = (groups.argmax(2) == labels).double().mean(1)
        assert (ensemble['groups'], ensemble['accuracy_mean']) == (runs // k, pytest.approx(group_accuracies.mean()))
        assert ensemble['accuracy_std'] == (None if runs // k == 1 else pytest.approx(group_accuracies.std()))
    assert [e['k'] for e in figures['ensembles']] == [1, 2, 4, 8, 16, 32, 37]

#############################################
#     The command, on files as saved        #
#############################################

def save_runs(folder, tta_logits, labels, no_tta_logits=None, **extra):
    """The runs' files as harness.py --save-logits writes them (run r seeded 100 + r)."""
    os.makedirs(folder, exist_ok=True)
    for r, logits in enumerate(tta_logits):
        record = dict(logits=logits, labels=labels, run=r + 1, seed=100 + r, tta_level=2, test_images_sha256='ab' * 32,
                      tta_val_acc=(logits.argmax(1) == labels).float().mean().item(), **extra)
        if no_tta_logits is not None:
            record.update(logits_no_tta=no_tta_logits[r],
                          no_tta_val_acc=(no_tta_logits[r].argmax(1) == labels).float().mean().item())
        torch.save(record, os.path.join(folder, 'run%05d-seed%d.pt' % (r + 1, 100 + r)))
    return str(folder)


def command(*args):
    return subprocess.run([sys.executable, '-m', 'benchmarks.variance', *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def hand_folder(tmp_path):
    """The hand case's runs with TTA; without TTA, every run right on every image."""
    return save_runs(tmp_path / 'logits', HAND_PROBABILITIES.log(), HAND_LABELS,
                     one_hot_logits(HAND_LABELS, 3).expand(3, 4, 3))


def test_the_command_prints_tta_and_no_tta_side_by_side(hand_folder):
    result = command(hand_folder)
    assert result.returncode == 0 and result.stderr == ''
    lines = result.stdout.splitlines()
    assert lines[0] == 'variance study of %s: 3 runs x 4 test images, 3 classes' % hand_folder
    assert lines[1].startswith("every file has the first one's labels and test images; bootstrap: 200 resamples")
    table = {line[:29].strip(): line[29:].split('  ') for line in lines[3:]}
    assert [c.strip() for c in table[''] if c] == ['TTA (level 2)', 'no TTA (level 0)']
    row = {name: [cell.strip() for cell in cells if cell.strip()] for name, cells in table.items()}
    assert row['accuracy: mean'] == ['0.6667', '1.0000'] and row['CACE'] == ['0.3333', '0.0000']
    assert row['test-set variance'][0].startswith('2.083e-02 +- ') and row['test-set variance'][1].startswith('0.000e')
    assert row['distribution-wise variance'][0].startswith('-4.167e-02 +- ')
    assert row['distribution-wise std'] == ['n/a (variance <= 0)', 'n/a (variance <= 0)']
    assert row['ensemble of 2 (1 group)'] == ['1.0000 std n/a', '1.0000 std n/a']
    assert row['ensemble of 3 (1 group)'] == ['0.7500 std n/a', '1.0000 std n/a']


def test_the_command_prints_the_same_figures_as_json(hand_folder):
    result = command(hand_folder, '--json', '--bootstrap', '50')
    assert result.returncode == 0 and result.stderr == ''
    printed = json.loads(result.stdout)
    assert printed == json.loads(json.dumps(variance.study(hand_folder, resamples=50)))
    assert (printed['runs'], printed['images'], printed['classes'], printed['tta_level']) == (3, 4, 3, 2)
    assert printed['test_images_checked'] and printed['notes'] == [] and printed['bootstrap_resamples'] == 50
    assert printed['tta']['distribution_wise_variance'] == pytest.approx(-1 / 24)
    assert printed['no_tta']['accuracy_mean'] == 1 and printed['no_tta']['cace'] == 0


def test_files_without_logits_without_tta_are_studied_with_tta_only(tmp_path, capsys):
    folder = save_runs(tmp_path / 'old', HAND_PROBABILITIES.log(), HAND_LABELS)
    for name in os.listdir(folder):  # as an older harness saved them: no TTA level, no fingerprint
        path = os.path.join(folder, name)
        record = torch.load(path, weights_only=True)
        torch.save({k: record[k] for k in ('logits', 'labels', 'run', 'seed', 'tta_val_acc')}, path)
    assert variance.main([folder]) == 0
    out = capsys.readouterr().out
    first = os.path.join(folder, 'run00001-seed100.pt')
    assert 'note: %s has no logits without TTA (saved by an older harness.py): TTA only' % first in out
    assert 'note: 3 of 3 files have no test-image fingerprint' in out and 'no TTA' not in out.split('\n\n')[1]
    assert "every file has the first one's labels; bootstrap" in out
    study = variance.study(folder)
    assert study['no_tta'] is None and study['tta_level'] is None and not study['test_images_checked']


def test_a_later_file_without_logits_without_tta_drops_that_column(hand_folder):
    path = os.path.join(hand_folder, 'run00003-seed102.pt')
    record = torch.load(path, weights_only=True)
    del record['logits_no_tta']
    torch.save(record, path)
    study = variance.study(hand_folder)
    assert study['no_tta'] is None and study['tta']['cace'] == pytest.approx(1 / 3)
    assert study['notes'] == ['%s has no logits without TTA (saved by an older harness.py): TTA only' % path]


def damage(folder, name, change):
    """Rewrite the run file `name` in `folder` with `change` applied to its record."""
    path = os.path.join(folder, name)
    record = torch.load(path, weights_only=True)
    change(record)
    torch.save(record, path)
    return path


@pytest.mark.parametrize('change, message', [
    (lambda r: r['labels'].__setitem__(0, 2), '{path}: its labels differ from those of {first}: not the same test set'),
    (lambda r: r.update(test_images_sha256='cd' * 32), '{path}: its test images (SHA-256) cdcd'),
    (lambda r: r.update(tta_level=1), '{path}: its TTA level 1 differ from 2 in {first}'),
    (lambda r: r.update(logits=torch.zeros(4, 5), logits_no_tta=torch.zeros(4, 5)),
     '{path}: logits of shape (4, 5), not (4, 3) as in {first}'),
    (lambda r: r['logits'].__setitem__((1, 1), float('nan')), '{path}: logits holds NaN or infinite values'),
    (lambda r: r.update(logits_no_tta=torch.zeros(4, 2)), "{path}: logits_no_tta is not a float tensor of the logits' "
                                                          "shape (4, 3)"),
    (lambda r: r.update(labels=torch.tensor([0, 1, 2, 3])), '{path}: labels outside 0..2'),
    (lambda r: r.pop('labels'), '{path}: not a run file of harness.py --save-logits'),
])
def test_a_file_unlike_the_first_is_named_in_one_line_with_exit_1(hand_folder, capsys, change, message):
    path = damage(hand_folder, 'run00002-seed101.pt', change)
    assert variance.main([hand_folder]) == 1
    captured = capsys.readouterr()
    assert captured.out == '' and captured.err.count('\n') == 1
    first = os.path.join(hand_folder, 'run00001-seed100.pt')
    assert captured.err.startswith('python -m benchmarks.variance: error: ' + message.format(path=path, first=first))


def test_a_corrupted_file_is_named_without_a_traceback(hand_folder):
    path = os.path.join(hand_folder, 'run00002-seed101.pt')
    with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)
    result = command(hand_folder)
    assert result.returncode == 1 and result.stdout == '' and 'Traceback' not in result.stderr
    assert result.stderr.startswith('python -m benchmarks.variance: error: %s: unreadable (' % path)
    assert result.stderr.count('\n') == 1


@pytest.mark.parametrize('files, message', [
    (None, '{folder}: cannot read the folder (No such file or directory)'),
    ([], '{folder}: no run files (*.pt, as harness.py --save-logits writes them); the folder is empty'),
    (['notes.txt', 'run00001-seed5.pt.123.tmp'], '{folder}: no run files (*.pt, as harness.py --save-logits '
                                                 'writes them)\n'),
])
def test_an_empty_or_missing_folder_is_one_line_with_exit_1(tmp_path, capsys, files, message):
    folder = tmp_path / 'logits'
    for name in files if files is not None else []:
        folder.mkdir(exist_ok=True)
        (folder / name).write_text('not a run')
    if files == []:
        folder.mkdir()
    assert variance.main([str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.startswith('python -m benchmarks.variance: error: ' + message.format(folder=folder))
    assert err.count('\n') == 1


def test_bad_flags_exit_2(hand_folder, capsys):
    for args in (['--bootstrap', '1'], ['--bootstrap', 'many'], []):
        with pytest.raises(SystemExit) as exit_info:
            variance.main(args + ([hand_folder] if args else []))
        assert exit_info.value.code == 2
    assert '--bootstrap: needs at least 2 resamples' in capsys.readouterr().err
