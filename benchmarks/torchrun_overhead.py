"""torchrun overhead on CPU: the same runs in 1 process of 2 threads vs 2 processes of 1 thread.

Small real-image data (the first 5120 train / 1000 test images of CIFAR-10, or with --shared-data
of the project's real images) and a small network
(widths 32/64/64, batch 256) so that the launch overhead is visible next to the training.
Both run the script through harness.py (`python harness.py SCRIPT --set ...` and `torchrun
--standalone --nproc_per_node=2 harness.py SCRIPT --set ...`). Appends wall times and per-run
timed seconds to benchmarks/RESULTS.md.

    python -m benchmarks.torchrun_overhead --runs 8   # from the repository root
"""
import argparse
import json
import os
import subprocess
import sys
import time

if not __package__:  # run as a file, the repository's imports below would fail: say how to run it
    print('run it from the repository root as: python -m benchmarks.%s' % os.path.basename(__file__)[:-3],
          file=sys.stderr)
    sys.exit(2)

import torch

from benchmarks.common import (ROOT, add_data_flags, append_result, check_data_flags, machine_description,
                               prepare_data, run_logged, settings_text, first_images)

HYP = [['opt.batch_size', 256], ['net.widths', {'block1': 32, 'block2': 64, 'block3': 64}]]


def timed(script, cli, python, env, log_dir):
    """(wall seconds, the harness's log, its path relative to the repository) of one command."""
    returncode, wall, path = run_logged(script, HYP, cli, log_dir, python=python, env=dict(os.environ, **env),
                                        stdout=subprocess.DEVNULL)
    if returncode != 0 or path is None:
        sys.exit('%s failed: exit code %d, %s' % (' '.join(python), returncode, 'its log: %s' % path if path else
                                                  'no log'))
    with open(path) as f:
        return wall, json.load(f), os.path.relpath(path, ROOT)


def main():
    parser = argparse.ArgumentParser(prog='python -m benchmarks.torchrun_overhead', description=__doc__.splitlines()[0])
    parser.add_argument('--script', default='airbench94.py')
    parser.add_argument('--runs', type=int, default=8)
    add_data_flags(parser)
    args = parser.parse_args()
    check_data_flags(parser, args)
    data = prepare_data(args)
    subset = first_images(args.data_dir, 5120, 1000)
    log_dir = os.path.join(ROOT, 'benchmarks', 'logs')
    cli = ['--device', 'cpu', '--data-dir', subset, '--runs', str(args.runs), '--seed', '0', '--log-dir', log_dir]
    single = (sys.executable,)
    launched = (sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2')
    results = {}
    for name, python, env in [('1 process x 2 threads', single, {'OMP_NUM_THREADS': '2'}),
                              ('torchrun, 2 processes x 1 thread', launched, {'OMP_NUM_THREADS': '1'})]:
        wall, log, path = timed(args.script, cli, python, env, log_dir)
        ok = [r for r in log['runs'] if r['status'] == 'ok']
        results[name] = (wall, sum(r['time_seconds'] for r in ok) / len(ok), log, path)
    (wall1, run1, log1, path1), (wall2, run2, log2, path2) = results.values()
    same = [r['tta_val_acc'] for r in log1['runs']] == [r['tta_val_acc'] for r in log2['runs']]
    append_result([
        '### torchrun overhead on CPU, %s, %s' % (args.script, time.strftime('%Y-%m-%d')),
        '',
        '- command: `python -m benchmarks.torchrun_overhead --script %s --runs %d` (both through harness.py)' % (
            args.script, args.runs),
        '- data: the first 5120 train / 1000 test images of %s; hyp edits: %s' % (data, settings_text(HYP)),
        '- machine: %s; torch %s; n = %d runs each, each with its warm-up' % (machine_description(), torch.__version__,
                                                                           args.runs),
        '- 1 process x 2 threads: %.1f s wall for all runs, %.2f s timed per run' % (wall1, run1),
        '- torchrun, 2 processes x 1 thread: %.1f s wall for all runs, %.2f s timed per run' % (wall2, run2),
        '- wall-time ratio torchrun / single: %.2f; per-run accuracies identical: %s (expected: no, the thread '
        'counts differ, so float sums differ)' % (wall2 / wall1, same),
        '- logs: `%s`, `%s`' % (path1, path2),
    ])


if __name__ == '__main__':
    main()
