"""How long the first torch.compile takes: warm-up of airbench94_compiled.py vs airbench94.py.

Both scripts do the same untimed warm-up run (same network and schedule); the compiled one
also compiles its three graphs there, so the difference of the two warm-ups is the compile
time. Uses the full network on the first 5120 training and 1000 test images (of CIFAR-10, or with
--shared-data of the project's real images) with a 4-epoch schedule, which passes the
whitening-bias freeze after epoch 3.

    python -m benchmarks.compile_time   # from the repository root

Each script runs through harness.py (`python harness.py SCRIPT --runs 2 --seed 0 --set
opt.train_epochs=4 ...`), whose log gives the warm-up seconds and the graphs compiled in the
timed runs.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

if not __package__:  # run as a file, the repository's imports below would fail: say how to run it
    print('run it from the repository root as: python -m benchmarks.%s' % os.path.basename(__file__)[:-3],
          file=sys.stderr)
    sys.exit(2)

import torch

from benchmarks.common import (ROOT, add_data_flags, append_result, check_data_flags, machine_description,
                               prepare_data, run_logged, first_images)

HYP = [['opt.train_epochs', 4]]


def main():
    parser = argparse.ArgumentParser(prog='python -m benchmarks.compile_time', description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    add_data_flags(parser)
    parser.add_argument('--note', default='', help='recorded with the result, e.g. what else ran on the machine')
    args = parser.parse_args()
    check_data_flags(parser, args)
    data = prepare_data(args)
    subset = first_images(args.data_dir, 5120, 1000)
    log_dir = os.path.join(ROOT, 'benchmarks', 'logs')
    logs = {}
    for script in ('airbench94.py', 'airbench94_compiled.py'):
        cli = ['--device', args.device, '--data-dir', subset, '--runs', '2', '--seed', '0', '--log-dir', log_dir]
        cold_cache = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(prefix='inductor-'))  # a first compile
        returncode, _, path = run_logged(script, HYP, cli, log_dir, stdout=subprocess.DEVNULL, env=cold_cache)
        if returncode != 0 or path is None:
            sys.exit('%s failed: exit code %d, %s' % (script, returncode, 'its log: %s' % path if path else 'no log'))
        with open(path) as f:
            logs[script] = (json.load(f), os.path.relpath(path, ROOT))
    (eager, eager_path), (compiled, compiled_path) = logs.values()
    per_run = {name: sum(r['time_seconds'] for r in log['runs']) / len(log['runs']) for name, (log, _) in logs.items()}
    append_result([
        '### First compile of airbench94_compiled.py, %s, %s' % (args.device, time.strftime('%Y-%m-%d')),
        '',
        '- command: `python -m benchmarks.compile_time --device %s` (each script through harness.py)' % args.device,
        '- data: the first 5120 train / 1000 test images of %s; hyp edits: opt.train_epochs=4; full network; '
        'an empty inductor cache (TORCHINDUCTOR_CACHE_DIR), as on a fresh machine' % data,
        '- machine: %s; torch %s; compile mode %s' % (machine_description(args.device), torch.__version__,
                                                     compiled['compile']['mode']),
        '- warm-up (untimed): eager %.1f s, compiled %.1f s: the first compile costs about %.0f s' % (
            eager['warmup_seconds'], compiled['warmup_seconds'], compiled['warmup_seconds'] - eager['warmup_seconds']),
        '- timed seconds per run after it (n = 2 each): eager %.1f, compiled %.1f; graphs compiled during the timed '
        'runs: %d' % (per_run['airbench94.py'], per_run['airbench94_compiled.py'],
                      compiled['compile']['graphs_compiled_in_timed_runs']),
        '- logs: `%s`, `%s`' % (eager_path, compiled_path),
    ] + (['- note: %s' % args.note] if args.note else []))


if __name__ == '__main__':
    main()
