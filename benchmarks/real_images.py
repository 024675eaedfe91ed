"""Fidelity benchmark: train a script on the real CIFAR-10 images of ../shared/data and record it.

Writes the shared JPEG-re-encoded images in the official on-disk format (once), runs the
script's real CLI on them in a subprocess, and appends the result (command, machine, torch
version, n, per-run accuracy and time, wall time) to benchmarks/RESULTS.md.

    python benchmarks/real_images.py airbench94.py --runs 2
    python benchmarks/real_images.py airbench96.py --runs 1 --set opt.train_epochs=4   # shortened, said in RESULTS.md

--set edits the script's `hyp` before main() runs (the way researchers change it), and is
recorded with the result. On these images the published 94% method reaches about 90.8%.
"""
import argparse
import glob
import json
import os
import platform
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SHARED = os.path.join(os.path.dirname(ROOT), 'shared', 'data')

# Runs the script's main() after applying hyp edits given as JSON [[path, value], ...]
DRIVER = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location('__airbench__', sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
for path, value in json.loads(sys.argv[2]):
    *parents, key = path.split('.')
    target = module.hyp
    for name in parents:
        target = target[name]
    target[key] = value
sys.exit(module.main(sys.argv[3:]))
"""


def machine_description(device):
    if device == 'cuda':
        return torch.cuda.get_device_name()
    model = next((line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo') if line.startswith('model name')),
                 platform.processor()) if os.path.exists('/proc/cpuinfo') else platform.processor()
    return '%s, %d cores available, %d torch threads' % (model, len(os.sched_getaffinity(0)), torch.get_num_threads())


def parse_setting(text):
    path, _, value = text.partition('=')
    return [path, json.loads(value)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('script', help='e.g. airbench94.py')
    parser.add_argument('--runs', type=int, default=2)
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--data-dir', default='/tmp/cifar10-jpeg', help='where the official-format files are written')
    parser.add_argument('--shared-data', default=DEFAULT_SHARED, help='folder of make_cifar10_batches.py')
    parser.add_argument('--set', type=parse_setting, action='append', default=[], metavar='PATH=JSON',
                        help='edit hyp before training, e.g. opt.train_epochs=4')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--results', default=os.path.join(ROOT, 'benchmarks', 'RESULTS.md'))
    args = parser.parse_args()

    if not os.path.isdir(os.path.join(args.data_dir, 'cifar-10-batches-py')):
        subprocess.run([sys.executable, os.path.join(args.shared_data, 'make_cifar10_batches.py'), args.data_dir],
                       check=True)
    log_dir = os.path.join(ROOT, 'benchmarks', 'logs')
    script = os.path.join(ROOT, args.script)
    cli = ['--device', args.device, '--data-dir', args.data_dir, '--runs', str(args.runs), '--seed', str(args.seed),
           '--log-dir', log_dir] + (['--no-warmup'] if args.device == 'cpu' else [])
    before = set(glob.glob(os.path.join(log_dir, '*.json')))
    start = time.time()
    if args.set:
        command = [sys.executable, '-c', DRIVER, script, json.dumps(args.set)] + cli
    else:
        command = [sys.executable, script] + cli
    returncode = subprocess.run(command, cwd=ROOT).returncode
    wall_seconds = time.time() - start
    new_logs = sorted(set(glob.glob(os.path.join(log_dir, '*.json'))) - before)
    if returncode != 0 or len(new_logs) != 1:
        sys.exit('benchmark failed: exit code %d, %d new logs' % (returncode, len(new_logs)))
    log = json.load(open(new_logs[0]))

    summary = log['summary']
    accs = ', '.join('%.2f%%' % (100 * r['tta_val_acc']) for r in log['runs'] if r['status'] == 'ok')
    times = ', '.join('%.0f s' % r['time_seconds'] for r in log['runs'] if r['status'] == 'ok')
    shown = ' '.join(['python', os.path.relpath(script, ROOT)] + cli).replace(log_dir, 'benchmarks/logs')
    entry = [
        '### %s on real images, %s, %s' % (args.script, args.device, time.strftime('%Y-%m-%d')),
        '',
        '- command: `python benchmarks/real_images.py %s --runs %d --device %s%s` (runs `%s`)' % (
            args.script, args.runs, args.device, ''.join(' --set %s=%s' % (p, json.dumps(v)) for p, v in args.set), shown),
        '- hyp edits: %s' % (', '.join('%s=%s' % (p, json.dumps(v)) for p, v in args.set) or 'none (the published method)'),
        '- machine: %s; torch %s; dtype %s' % (machine_description(args.device), log['torch_version'], log['dtype']),
        '- n = %d finished, %d failed; TTA accuracy per run: %s' % (summary['ok'], summary['failed'], accs),
        '- mean TTA accuracy: %s; std %s' % (
            '%.2f%%' % (100 * summary['tta_val_acc_mean']) if summary['ok'] else 'n/a',
            '%.2f' % (100 * summary['tta_val_acc_std']) if summary.get('tta_val_acc_std') is not None else 'n/a'),
        '- timed seconds per run: %s; wall time of the whole benchmark: %.0f s' % (times, wall_seconds),
        '- log: `%s`' % os.path.relpath(new_logs[0], ROOT),
        '',
    ]
    with open(args.results, 'a') as f:
        f.write('\n'.join(entry) + '\n')
    print('\n'.join(entry))


if __name__ == '__main__':
    main()
