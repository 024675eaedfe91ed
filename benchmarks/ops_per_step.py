"""ATen ops dispatched per training step and per evaluation batch: each script against the reference loop.

On CUDA nearly every ATen op is one kernel launch, and an airbench94 step lasts a few
milliseconds, so ops per step is a fair CPU proxy for launch overhead (and sync ops, for host
syncs). Everything runs on the CPU under the CUDA precision policy (fp16, channels_last, fp32
BatchNorm; the reference loop as the published code runs on CUDA). Counts do not depend on
tensor sizes, so the data is tiny, but the step counts are CIFAR-10's: a training step is
averaged over the first epoch of 48 steps (lookahead updates and per-epoch data preparation
included), an evaluation batch over the final 6-view TTA of 5 batches (CIFAR-10's test set in
batches of 2000). Appends a table to benchmarks/RESULTS.md.

    python -m benchmarks.ops_per_step   # from the repository root
"""
import argparse
import glob
import math
import os
import sys
import tempfile
import time
from collections import Counter

if not __package__:  # run as a file, the repository's imports below would fail: say how to run it
    print('run it from the repository root as: python -m benchmarks.%s' % os.path.basename(__file__)[:-3],
          file=sys.stderr)
    sys.exit(2)

import torch

from benchmarks.common import ROOT, append_result, load_script, machine_description
from support import cifar_files
from support.op_counting import SYNC_OPS, OpRecorder, recording_by_clock
from support.reference_loop import ReferenceLoop

STEPS_PER_EPOCH, EVAL_BATCHES, BATCH = 48, 5, 8
REFERENCE = 'reference loop (support/reference_loop.py)'  # its row
EDITS = [['opt.batch_size', BATCH], ['opt.train_epochs', 2], ['net.whiten_images', 64],
         ['net.widths', {'block1': 8, 'block2': 16, 'block3': 16}]]


def count(recorder, ops, per):
    return dict(ops=len(ops) / per, launching=len(recorder.launching(ops)) / per,
                syncs=sum(op in SYNC_OPS for op in ops) / per, by_op=Counter(recorder.launching(ops)))


def count_script(script, data_dir):
    """(per step, per evaluation batch) for one script's train(), split at its device_clock calls."""
    module = load_script(script, EDITS)
    hyp, policy = module.hyp, module.precision_policy('cuda')
    train_loader = module.CifarLoader(data_dir, train=True, batch_size=BATCH, aug=hyp['aug'], device='cpu',
                                      policy=policy)
    test_loader = module.CifarLoader(data_dir, train=False, batch_size=BATCH, device='cpu', policy=policy)
    steps = math.ceil(len(train_loader) * hyp['opt']['train_epochs']) // 2  # the first of two epochs
    assert steps == STEPS_PER_EPOCH and len(test_loader.images) == EVAL_BATCHES * BATCH
    with recording_by_clock(module) as recorder:
        module.train(hyp, train_loader, test_loader, seed=0, verbose=False)
    whitening, first_epoch, *_, tta = recorder.timed_segments()
    return count(recorder, first_epoch, steps), count(recorder, tta, EVAL_BATCHES)


def count_reference(data_dir, hyp):
    """The same for support/reference_loop.py, phase by phase."""
    module = load_script('airbench94.py')  # only to read the files
    train_loader = module.CifarLoader(data_dir, train=True, device='cpu')
    test_loader = module.CifarLoader(data_dir, train=False, device='cpu')
    loop = ReferenceLoop(hyp, train_loader.images, train_loader.labels, seed=0, normalize=train_loader.normalize,
                         dtype=torch.half, channels_last=True)
    loop.whiten()
    with OpRecorder() as recorder:
        steps = loop.run_epoch(0)
        recorder.new_segment()
        loop.tta_logits(test_loader.images, batch_size=BATCH)
    assert steps == STEPS_PER_EPOCH
    epoch, tta = recorder.segments
    return count(recorder, epoch, steps), count(recorder, tta, EVAL_BATCHES)


def main():
    parser = argparse.ArgumentParser(prog='python -m benchmarks.ops_per_step', description=__doc__.splitlines()[0])
    parser.add_argument('--results', default=None, help='append to this file instead of benchmarks/RESULTS.md')
    args = parser.parse_args()
    data_dir = tempfile.mkdtemp(prefix='ops-per-step-')
    cifar_files.write_batches(data_dir, n_train=STEPS_PER_EPOCH * BATCH, n_test=EVAL_BATCHES * BATCH)
    scripts = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'airbench*.py')))
    rows = {REFERENCE: count_reference(data_dir, load_script('airbench94.py', EDITS).hyp)}
    for script in scripts:
        rows[script] = count_script(script, data_dir)
    reference_step = rows[REFERENCE][0]['by_op']
    lines = [
        '### ATen ops per training step and per evaluation batch, CPU under the CUDA policy, %s'
        % time.strftime('%Y-%m-%d'),
        '',
        '- command: `python -m benchmarks.ops_per_step`',
        '- machine: %s; torch %s; fp16 channels_last data and net with fp32 BatchNorm (the CUDA policy) on '
        'the CPU; a training step is averaged over the first epoch of %d steps (lookahead and per-epoch data '
        'preparation included), an evaluation batch over the final 6-view TTA of %d batches'
        % (machine_description(), torch.__version__, STEPS_PER_EPOCH, EVAL_BATCHES),
        '',
        '| implementation | ATen ops per step | of which not views (can launch a kernel) | host syncs per step '
        '| ATen ops per TTA batch | of which not views | host syncs per TTA batch |',
        '|---|---|---|---|---|---|---|',
    ] + ['| %s | %.1f | %.1f | %.2f | %.1f | %.1f | %.2f |' % (
        name, step['ops'], step['launching'], step['syncs'], tta['ops'], tta['launching'], tta['syncs'])
         for name, (step, tta) in rows.items()]
    for script in scripts:  # where each script's step differs from the reference's, op by op
        diff = rows[script][0]['by_op']
        diff.subtract(reference_step)
        changes = sorted(((n / STEPS_PER_EPOCH, op) for op, n in diff.items() if n), reverse=True)
        more, fewer = [c for c in changes if c[0] > 0][:6], [c for c in changes if c[0] < 0][::-1][:6]
        lines.append('- %s, ops that are not views, per step vs the reference: %s' % (script, '; '.join(
            '%s %s' % (label, ', '.join('%s %+.2f' % (op.replace('aten.', ''), n) for n, op in part))
            for label, part in (('more', more), ('fewer', fewer)) if part) or 'the same ops'))
    lines.append('- note: under a TorchDispatchMode torch.compile runs the net op by op, so a compiled script counts '
                 'as its eager twin here; on CUDA its forward and backward replay as CUDA graphs, which this count '
                 'cannot show. The reference normalizes the whole test set once, ours each TTA batch (2 ops), and '
                 'ours copies the two shifted TTA views to channels_last (2 ops; a conv would convert them anyway)')
    if args.results:
        with open(args.results, 'a') as f:
            f.write('\n'.join(lines) + '\n\n')
        print('\n'.join(lines))
    else:
        append_result(lines)


if __name__ == '__main__':
    main()
