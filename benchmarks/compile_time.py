"""How long the first torch.compile takes: warm-up of airbench94_compiled.py vs airbench94.py.

Both scripts do the same untimed warm-up run (same network and schedule); the compiled one
also compiles its three graphs there, so the difference of the two warm-ups is the compile
time. Uses the full network on a subset of the shared real images (first 5120 train / 1000
test) with a 4-epoch schedule, which passes the whitening-bias freeze after epoch 3.

    python benchmarks/compile_time.py
"""
import argparse
import glob
import json
import os
import subprocess
import tempfile
import time

import torch

from common import ROOT, append_result, machine_description, script_command, write_real_images

HYP = [['opt.train_epochs', 4]]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--data-dir', default='/tmp/cifar10-jpeg-5k')
    parser.add_argument('--note', default='', help='recorded with the result, e.g. what else ran on the machine')
    args = parser.parse_args()
    write_real_images(args.data_dir, 5120, 1000)
    log_dir = os.path.join(ROOT, 'benchmarks', 'logs')
    logs = {}
    for script in ('airbench94.py', 'airbench94_compiled.py'):
        cli = ['--device', args.device, '--data-dir', args.data_dir, '--runs', '2', '--seed', '0', '--log-dir', log_dir]
        cold_cache = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(prefix='inductor-'))  # a first compile
        subprocess.run(script_command(script, HYP, cli), cwd=ROOT, check=True, stdout=subprocess.DEVNULL, env=cold_cache)
        path = max(glob.glob(os.path.join(log_dir, script[:-3] + '-*.json')), key=os.path.getmtime)
        logs[script] = (json.load(open(path)), os.path.relpath(path, ROOT))
    (eager, eager_path), (compiled, compiled_path) = logs.values()
    per_run = {name: sum(r['time_seconds'] for r in log['runs']) / len(log['runs']) for name, (log, _) in logs.items()}
    append_result([
        '### First compile of airbench94_compiled.py, %s, %s' % (args.device, time.strftime('%Y-%m-%d')),
        '',
        '- command: `python benchmarks/compile_time.py --device %s`' % args.device,
        '- data: the shared real images, first 5120 train / 1000 test; hyp edits: opt.train_epochs=4; full network; '
        'an empty inductor cache (TORCHINDUCTOR_CACHE_DIR), as on a fresh machine',
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
