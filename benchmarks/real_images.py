"""Fidelity benchmark: train a script on real images, CIFAR-10 or the project's JPEG copy, and record it.

Runs the script through harness.py in a subprocess on CIFAR-10 (in cifar10/ at the repository root,
downloaded there if absent) or, with --shared-data DIR, on the project's JPEG-re-encoded images
(written in the official on-disk format once), and appends the result (command, data, machine,
torch version, n, per-run accuracy and time, wall time) to benchmarks/RESULTS.md.

    python -m benchmarks.real_images airbench94.py --runs 2 --shared-data .data
    python -m benchmarks.real_images airbench96.py --runs 1 --set opt.train_epochs=4   # shortened, said in RESULTS.md

(from the repository root.) --set edits the script's `hyp` before anything runs, passed on as
harness.py's own --set, and is recorded with the result. On the JPEG images the published 94%
method reaches about 90.8%.
"""
import argparse
import json
import os
import sys
import time

if not __package__:  # run as a file, the repository's imports below would fail: say how to run it
    print('run it from the repository root as: python -m benchmarks.%s' % os.path.basename(__file__)[:-3],
          file=sys.stderr)
    sys.exit(2)

from benchmarks.common import (HARNESS, ROOT, add_data_flags, append_result, check_data_flags, compiles, load_script,
                               machine_description, parse_setting, prepare_data, run_logged, settings_flags,
                               settings_text, shown_command)


def main():
    parser = argparse.ArgumentParser(prog='python -m benchmarks.real_images', description=__doc__.splitlines()[0])
    parser.add_argument('script', help='e.g. airbench94.py')
    parser.add_argument('--runs', type=int, default=2)
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    add_data_flags(parser)
    parser.add_argument('--set', type=parse_setting, action='append', default=[], metavar='PATH=JSON',
                        help='edit hyp before training, e.g. opt.train_epochs=4')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--eager', action='store_true', help="a compiling script's compiled code runs eagerly, "
                        "without the warm-up (harness.py --eager --no-warmup): accuracy only; on a CPU the warm-up is "
                        "a whole run")
    parser.add_argument('--from-log', metavar='LOG', help='record an existing log of such a run (e.g. one stopped '
                        'with Ctrl-C after some runs) instead of training')
    args = parser.parse_args()
    check_data_flags(parser, args)
    if args.from_log:
        with open(args.from_log) as f:
            log = json.load(f)
        record(args, log, args.from_log, logged_command(log), wall_seconds=None)
        return

    args.data = prepare_data(args)
    log_dir = os.path.join(ROOT, 'benchmarks', 'logs')
    cli = ['--device', args.device, '--data-dir', args.data_dir, '--runs', str(args.runs), '--seed', str(args.seed),
           '--log-dir', log_dir]
    if args.eager:
        cli += ['--eager', '--no-warmup']
    elif args.device == 'cpu' and not compiles(load_script(args.script)):
        cli.append('--no-warmup')  # on CPU the warm-up warms nothing (a compiling script needs it to compile)
    returncode, wall_seconds, log_path = run_logged(args.script, args.set, cli, log_dir)
    if returncode != 0 or log_path is None:
        sys.exit('benchmark failed: exit code %d, %s' % (returncode, 'its log: %s' % log_path if log_path else 'no log'))
    with open(log_path) as f:
        log = json.load(f)
    record(args, log, log_path, logged_command(log), wall_seconds)


def logged_command(log):
    """The command that wrote a log: harness.py's (its log has 'script_path'), or, for the logs the
    scripts wrote themselves before the harness, the script's own command line."""
    if 'script_path' in log:
        return [sys.executable, HARNESS] + log['argv']
    return [sys.executable, os.path.join(ROOT, log['script'])] + log['argv']


def record(args, log, log_path, command, wall_seconds):
    summary = log['summary']
    ok = [r for r in log['runs'] if r['status'] == 'ok']
    settings = log.get('sets', args.set)  # a harness log holds its hyp edits
    append_result([
        '### %s on real images, %s, %s' % (args.script, args.device, time.strftime('%Y-%m-%d')),
        '',
        '- command: `python -m benchmarks.real_images %s --runs %d --device %s --seed %d%s%s` (runs `%s`)' % (
            args.script, args.runs, args.device, args.seed, settings_flags(args.set),
            ' --eager' if args.eager else '', shown_command(command)),
        '- data: %s' % (args.data if not args.from_log else 'the log\'s, %s' % log.get('data_dir', 'n/a')),
        '- hyp edits: %s' % (settings_text(settings) or 'none (the published method)'),
        '- machine: %s; torch %s; dtype %s' % (machine_description(args.device), log['torch_version'],
                                              log.get('dtype', 'n/a')),
        '- n = %d finished, %d failed; TTA accuracy per run: %s' % (
            summary['ok'], summary['failed'], ', '.join('%.2f%%' % (100 * r['tta_val_acc']) for r in ok)),
        '- mean TTA accuracy: %s; std %s' % (
            '%.2f%%' % (100 * summary['tta_val_acc_mean']) if ok else 'n/a',
            '%.2f' % (100 * summary['tta_val_acc_std']) if summary.get('tta_val_acc_std') is not None else 'n/a'),
        '- timed seconds per run: %s; wall time of the whole benchmark: %s' % (
            ', '.join('%.0f' % r['time_seconds'] for r in ok), '%.0f s' % wall_seconds if wall_seconds else 'n/a'),
        '- log: `%s`%s' % (os.path.relpath(log_path, ROOT), ' (recorded with --from-log)' if args.from_log else ''),
    ] + (['- interrupted with Ctrl-C after the runs above; the runs it had not finished are not counted']
         if log['interrupted'] else []))


if __name__ == '__main__':
    main()
