"""One command for the first CUDA GPU: run everything only a GPU can confirm, append it to RESULTS.md.

    python benchmarks/gpu_check.py                            # the project's real images (--shared-data)
    python benchmarks/gpu_check.py --data-dir cifar10         # or an official-format or downloaded CIFAR-10
    python benchmarks/gpu_check.py --runs airbench95.py=5 --runs airbench96.py=2
    python benchmarks/gpu_check.py --device cpu --smoke --results /tmp/entry.md   # tests/test_gpu_check.py

In order:
1. tests/test_cuda.py under pytest (the CUDA precision policy on the device, no host sync in the
   training steps, the compiled script's runs without recompiling, channels_last at every conv
   input, cuDNN benchmarking): how many passed, failed and skipped.
2. Timed runs of every airbench*.py through its own command line, n per script (--runs): from
   each JSON log, mean and std of the TTA accuracy and of the seconds per run, the warm-up
   (compile) time and the graphs compiled during the timed runs.
3. Where one run's time goes: torch.profiler over one train() of each script after a warm-up
   train(): the whitening init, each epoch and the final TTA (the spans between the script's own
   device_clock calls), device busy against wall time, and the achieved TFLOP/s against a
   measured matmul ceiling.
4. One entry appended to RESULTS.md with all of it, the GPU, driver, torch and CUDA versions and
   the command.

--smoke runs the same pipeline on tiny data it makes itself (1 run per script, tiny networks, a
small matmul, and the timed runs beside the profiles rather than before them), so that a CPU
test keeps this file working; its numbers mean nothing.
"""
import argparse
import concurrent.futures
import contextlib
import glob
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from unittest import mock
from xml.etree import ElementTree

import torch
from torch.autograd import DeviceType
from torch.utils.flop_counter import FlopCounterMode

from common import (ROOT, RESULTS, SHARED_DATA, append_result, machine_description, run_logged, settings_text,
                    write_real_images)
from run_with_hyp import load_edited

sys.path.insert(0, os.path.join(ROOT, 'tests'))
import cifar_files  # noqa: E402 (tests/: small learnable data in the official format)

# --smoke: the tests' TINY_HYP (tests/conftest.py) shortened to 2 epochs (8 steps of 128 over 640
# images that tests/cifar_files.py writes), and 250 test images: a run of seconds on a CPU
SMOKE_HYP = [['opt.batch_size', 128], ['opt.train_epochs', 1.5],
             ['net.widths', {'block1': 16, 'block2': 32, 'block3': 32}], ['net.whiten_images', 256]]
SMOKE_TRAIN_IMAGES, SMOKE_TEST_IMAGES = 640, 250

# Timed runs per script unless --runs says otherwise; any other airbench*.py gets OTHER_RUNS
DEFAULT_RUNS = {'airbench94.py': 50, 'airbench94_compiled.py': 50, 'airbench95.py': 20, 'airbench96.py': 5}
OTHER_RUNS = 5

# Whole-run FLOPs (training forward and backward, and the final 6-view TTA) of the published
# configurations, from SPEC.md's "Figures to check an implementation against" (FlopCounterMode).
# Other scripts, and every script under --smoke's hyp edits, are counted on the fly (timed_flops).
SPEC_TFLOPS = {'airbench94.py': 350, 'airbench94_compiled.py': 350, 'airbench95.py': 1338, 'airbench96.py': 4895}

REAL_IMAGES_DIR = '/tmp/cifar10-jpeg'  # where the shared images are written, as by benchmarks/real_images.py
CUDA_TESTS = 'tests/test_cuda.py'
JUNIT_OUTCOMES = {'failure': 'failed', 'error': 'errors', 'skipped': 'skipped'}


def parse_args(argv, scripts):
    def runs_setting(text):
        script, _, n = text.partition('=')
        if not n.isdigit() or int(n) < 1:
            raise argparse.ArgumentTypeError('expected SCRIPT=N with N a positive integer, not %r' % text)
        return script, int(n)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n'.join(__doc__.splitlines()[1:]))
    parser.add_argument('--device', choices=['cuda', 'cpu'], default='cuda', help='cpu only with --smoke')
    parser.add_argument('--smoke', action='store_true',
                        help='check the pipeline on tiny data made here: 1 run per script, tiny networks')
    parser.add_argument('--shared-data', metavar='DIR', default=SHARED_DATA,
                        help="the project's real-image archive: a folder with cifar10-jpeg.tar.gz and "
                             'make_cifar10_batches.py, written in the official format to %s once '
                             '(default: %%(default)s)' % REAL_IMAGES_DIR)
    parser.add_argument('--data-dir', metavar='DIR',
                        help='use the CIFAR-10 in DIR instead: cifar-10-batches-py/ or cifar-10-python.tar.gz '
                             '(the scripts download it there if neither is present)')
    parser.add_argument('--runs', metavar='SCRIPT=N', type=runs_setting, action='append', default=[],
                        help='timed runs of SCRIPT, repeatable; defaults: %s, any other airbench*.py %d; '
                             '--smoke: 1' % (', '.join('%s=%d' % item for item in DEFAULT_RUNS.items()), OTHER_RUNS))
    parser.add_argument('--results', metavar='FILE',
                        help='append the entry to FILE (default: benchmarks/RESULTS.md; --smoke: print it only)')
    args = parser.parse_args(argv)
    unknown = sorted({script for script, _ in args.runs} - set(scripts))
    if unknown:
        parser.error('--runs: no script %s here (there are %s)' % (', '.join(unknown), ', '.join(scripts)))
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is available (the CPU smoke test: --device cpu --smoke)')
    if args.device == 'cpu' and not args.smoke:
        parser.error('--device cpu: only with --smoke (full runs on a CPU take days, and measure nothing of a GPU)')
    if not (args.smoke or args.data_dir or os.path.exists(os.path.join(args.shared_data, 'cifar10-jpeg.tar.gz'))):
        parser.error('no cifar10-jpeg.tar.gz in %s: pass --shared-data DIR (the folder of the real-image archive) '
                     'or --data-dir DIR (CIFAR-10 in the official format, or where to download it)' % args.shared_data)
    return args


STARTED = time.time()


def say(text):
    print('\n== gpu_check, %.0f s: %s' % (time.time() - STARTED, text), flush=True)


def prepare_data(args, tmp):
    """(the data dir the scripts read, as absolute path; how the entry describes it)."""
    if args.smoke:
        data_dir = os.path.join(tmp, 'cifar10')
        cifar_files.write_batches(data_dir, n_train=SMOKE_TRAIN_IMAGES, n_test=SMOKE_TEST_IMAGES)
        return data_dir, 'tiny look-alike data made by tests/cifar_files.py'
    if args.data_dir:
        return os.path.abspath(args.data_dir), 'CIFAR-10 from --data-dir %s' % args.data_dir
    write_real_images(REAL_IMAGES_DIR, shared_data=args.shared_data)
    return REAL_IMAGES_DIR, ("the project's real images (CIFAR-10 re-encoded as JPEG, about 3 points below the "
                             'published accuracies) in the official format in %s' % REAL_IMAGES_DIR)

#############################################
#      1. The CUDA-only tests (pytest)      #
#############################################

def run_cuda_tests(tmp):
    """tests/test_cuda.py under pytest in a subprocess: counts by outcome and the failed tests' names."""
    report = os.path.join(tmp, 'test_cuda.xml')
    start = time.time()
    returncode = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-rs', '-p', 'no:cacheprovider', CUDA_TESTS,
                                 '--junitxml', report], cwd=ROOT).returncode
    tests = dict(passed=0, failed=0, errors=0, skipped=0, names_failed=[], exit_code=returncode,
                 seconds=time.time() - start)
    if not os.path.exists(report):
        tests['names_failed'].append('pytest wrote no report (exit code %d)' % returncode)
        return tests
    for case in ElementTree.parse(report).iter('testcase'):
        outcome = next((JUNIT_OUTCOMES[child.tag] for child in case if child.tag in JUNIT_OUTCOMES), 'passed')
        tests[outcome] += 1
        if outcome in ('failed', 'errors'):
            tests['names_failed'].append(case.get('name'))
    return tests

#############################################
#       2. Timed runs through the CLI       #
#############################################

def warms_up(module, device):
    """Whether a warm-up run warms anything: cuDNN's algorithm search on CUDA, or compilation."""
    return device.type == 'cuda' or module.compile_mode(device) is not None


def timed_runs(script, n, edits, device, data_dir, log_dir, warmup):
    """`n` timed runs of the script's CLI (after its own warm-up), summarized from its JSON log."""
    cli = ['--runs', str(n), '--seed', '0', '--device', device.type, '--data-dir', data_dir, '--log-dir', log_dir]
    if not warmup:
        cli.append('--no-warmup')
    returncode, _, log_path = run_logged(script, edits, cli, log_dir)
    if log_path is None:
        return dict(n=n, error='exit code %d, no log' % returncode)
    log = json.load(open(log_path))
    ok = [r for r in log['runs'] if r['status'] == 'ok']
    return dict(n=n, ok=len(ok), failed=len(log['runs']) - len(ok), accs=[r['tta_val_acc'] for r in ok],
                seconds=[r['time_seconds'] for r in ok], warmup_seconds=log['warmup_seconds'], compile=log['compile'],
                data_counts=log['data_counts'], log=shown_path(log_path),
                error=None if returncode == 0 else 'exit code %d' % returncode)


def mean_std(values):
    return (statistics.mean(values) if values else None), (statistics.stdev(values) if len(values) > 1 else None)

#############################################
#       3. Where one run's time goes        #
#############################################

@contextlib.contextmanager
def clock_calls(module, read=lambda: None):
    """While the block runs, every call of the script's device_clock also records (its seconds,
    read()). train() calls it at both ends of each timed span: whitening init, each epoch, final TTA."""
    clock, calls = module.device_clock, []

    def recording_clock(device):
        seconds = clock(device)
        calls.append((seconds, read()))
        return seconds
    with mock.patch.object(module, 'device_clock', recording_clock):
        yield calls


def span_lengths(readings):
    """[stop - start] of each timed span, from the readings at consecutive start and stop clocks."""
    return [stop - start for start, stop in zip(readings[::2], readings[1::2])]


def busy_seconds(profiler, device):
    """Seconds the device was running something: the union of its kernels' intervals (on the CPU,
    of the ATen ops', so that Python overhead counts as idle)."""
    if device.type == 'cuda':
        ranges = [e.time_range for e in profiler.events() if e.device_type == DeviceType.CUDA]
    else:
        ranges = [e.time_range for e in profiler.events() if e.name.startswith('aten::')]
    busy_us, covered_until = 0, -math.inf
    for span in sorted(ranges, key=lambda span: span.start):
        busy_us += max(0, span.end - max(span.start, covered_until))
        covered_until = max(covered_until, span.end)
    return busy_us / 1e6


def timed_flops(module, loaders):
    """FLOPs in a run's timed spans (the per-epoch progress evaluations excluded), counted by
    FlopCounterMode over one train(), read at every device_clock call. Compiled scripts run their
    network uncompiled here (the same ops, each seen by the counter, and no recompilation)."""
    fresh_net = module.fresh_net

    def uncompiled_fresh_net(*args):
        net, _ = fresh_net(*args)
        return net, net
    counter = FlopCounterMode(display=False)
    with (mock.patch.object(module, 'fresh_net', uncompiled_fresh_net),
          clock_calls(module, counter.get_total_flops) as calls, counter):
        module.train(module.hyp, *loaders, seed=0, verbose=False)
    return sum(span_lengths([flops for _, flops in calls]))


def profile_run(module, device, data_dir, count_flops):
    """One train() under torch.profiler, after a warm-up train() where it warms something (cuDNN's
    algorithm search, compilation); with count_flops, one more under FlopCounterMode."""
    train_loader, test_loader, error = module.load_data(argparse.Namespace(data_dir=data_dir), device, 0, 0, 1)
    if error:
        raise RuntimeError(error)
    loaders = (train_loader, test_loader)
    if warms_up(module, device):
        module.train(module.hyp, *loaders, seed=0, verbose=False)
    activity = torch.profiler.ProfilerActivity.CUDA if device.type == 'cuda' else torch.profiler.ProfilerActivity.CPU
    with clock_calls(module) as calls, torch.profiler.profile(activities=[activity]) as profiler:
        start = time.perf_counter()
        result = module.train(module.hyp, *loaders, seed=1, verbose=False)
        wall_seconds = time.perf_counter() - start
    whitening, *epochs, tta = span_lengths([seconds for seconds, _ in calls])
    return dict(whitening=whitening, epochs=epochs, tta=tta, timed=result['time_seconds'], wall=wall_seconds,
                busy=busy_seconds(profiler, device), flops=timed_flops(module, loaders) if count_flops else None)


def matmul_ceiling(module, device, size, repeats=10):
    """TFLOP/s of torch.mm of two size x size matrices in the scripts' dtype on `device` (fp16 on
    CUDA), timed with the scripts' own clock over `repeats` products after two warm-up ones."""
    dtype = module.precision_policy(device)['dtype']
    a, b = torch.randn(2, size, size, device=device).to(dtype)
    for _ in range(2):
        torch.mm(a, b)
    start = module.device_clock(device)
    for _ in range(repeats):
        torch.mm(a, b)
    seconds = module.device_clock(device) - start
    return dict(size=size, dtype=str(dtype).replace('torch.', ''), repeats=repeats,
                tflops=2 * size**3 * repeats / seconds / 1e12)

#############################################
#            4. The RESULTS entry           #
#############################################

def shown_path(path):
    inside = os.path.abspath(path).startswith(ROOT + os.sep)
    return os.path.relpath(path, ROOT) if inside else path


def nvidia_driver():
    try:
        return subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader',
                               '--id=%d' % torch.cuda.current_device()], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'n/a (nvidia-smi failed)'


def describe_machine(device):
    versions = 'torch %s, CUDA %s, cuDNN %s' % (torch.__version__, torch.version.cuda or 'none',
                                                torch.backends.cudnn.version() or 'none')
    if device.type != 'cuda':
        return '%s; %s' % (machine_description('cpu'), versions)
    gpu = torch.cuda.get_device_properties(device)
    return '%s (%.0f GiB), driver %s; %s; host: %s' % (gpu.name, gpu.total_memory / 2**30, nvidia_driver(),
                                                       versions, machine_description('cpu'))


def number(value, form):
    return 'n/a' if value is None else form % value


def timed_row(script, t):
    if 'accs' not in t:
        return '| %s | %d | failed: %s | | | | | | | |' % (script, t['n'], t['error'])
    acc, acc_std = mean_std(t['accs'])
    seconds, seconds_std = mean_std(t['seconds'])
    return '| %s | %d | %d / %d%s | %s | %s | %s | %s | %s | %s | `%s` |' % (
        script, t['n'], t['ok'], t['failed'], ' (%s)' % t['error'] if t['error'] else '',
        number(acc and 100 * acc, '%.2f%%'), number(acc_std and 100 * acc_std, '%.2f'),
        number(seconds, '%.3f'), number(seconds_std, '%.3f'), number(t['warmup_seconds'], '%.1f'),
        t['compile']['graphs_compiled_in_timed_runs'] if t['compile'] else '-', t['log'])


def profile_row(script, p, tflops, source, seconds_per_run, ceiling):
    if 'error' in p:
        return '| %s | failed: %s | | | | | | | | |' % (script, p['error'])
    achieved = tflops / seconds_per_run if tflops and seconds_per_run else None
    return '| %s | %.3f | %.3f (%d) | %.3f | %.3f | %.3f / %.3f (%.0f%%) | %s | %s | %s | %s |' % (
        script, p['whitening'], sum(p['epochs']), len(p['epochs']), p['tta'], p['timed'], p['busy'], p['wall'],
        100 * p['busy'] / p['wall'], number(tflops, '%.4g'), source, number(achieved, '%.4g'),
        number(achieved and 100 * achieved / ceiling['tflops'], '%.1f%%'))


def results_entry(args, argv, device, data_line, edits, tests, timed, ceiling, profiles, wall_seconds):
    counts = next((t['data_counts'] for t in timed.values() if 'data_counts' in t), None)
    lines = [
        '### GPU check%s, %s, %s' % (' smoke test (--smoke: tiny data and networks, its numbers mean nothing)'
                                     if args.smoke else '', machine_description('cuda') if device.type == 'cuda'
                                     else 'cpu', time.strftime('%Y-%m-%d')),
        '',
        '- command: `%s`' % ' '.join(['python', 'benchmarks/gpu_check.py'] + [shlex.quote(a) for a in argv]),
        '- machine: %s' % describe_machine(device),
        '- data: %s%s' % (data_line, ', %d train / %d test images' % (counts['train'], counts['test']) if counts else ''),
        '- hyp edits: %s' % (settings_text(edits) or 'none (the published methods)'),
        '- CUDA tests (`python -m pytest %s`, %.0f s): %d passed, %d failed, %d errors, %d skipped%s%s' % (
            CUDA_TESTS, tests['seconds'], tests['passed'], tests['failed'], tests['errors'], tests['skipped'],
            ' (no CUDA device here: every test skips)' if device.type != 'cuda' else '',
            '; not passed: %s' % ', '.join(tests['names_failed']) if tests['names_failed'] else ''),
        '- matmul ceiling: torch.mm of two %d x %d %s matrices, %d timed after 2 warm-up: %.4g TFLOP/s' % (
            ceiling['size'], ceiling['size'], ceiling['dtype'], ceiling['repeats'], ceiling['tflops']),
        '- wall time of the whole check: %.0f s' % wall_seconds,
        '',
        "Timed runs, each script's command line (`--runs n --seed 0 --device %s`, after its own untimed warm-up%s; "
        'seconds per run: whitening init + training + final TTA, device-synchronized):' % (
            device.type, '' if device.type == 'cuda' else ' where the script compiles (--no-warmup elsewhere)'),
        '',
        '| script | n | finished / failed | TTA accuracy mean | std (points) | seconds per run mean | std | '
        'warm-up s (compile included) | graphs compiled in timed runs | log |',
        '|---|---|---|---|---|---|---|---|---|---|',
    ] + [timed_row(script, t) for script, t in timed.items()] + [
        '',
        "Where one run's time goes: torch.profiler over one train() in this process, after a warm-up train() (on a "
        "CPU only where the script compiles); spans between the script's own device_clock calls, in seconds under "
        "the profiler; device busy = the union of the device's kernel intervals (on a CPU: of ATen ops) against "
        'the wall time of the whole train(), progress evaluations included; achieved TFLOP/s = whole-run FLOPs / '
        'the mean seconds per run above:',
        '',
        '| script | whitening init s | training s (epochs) | final TTA s | timed total s | device busy / wall s | '
        'whole-run TFLOPs | FLOPs source | achieved TFLOP/s | of the matmul ceiling |',
        '|---|---|---|---|---|---|---|---|---|---|',
    ]
    for script, p in profiles.items():
        if p.get('flops') is not None:
            tflops, source = p['flops'] / 1e12, 'counted (FlopCounterMode)'
        else:
            tflops, source = SPEC_TFLOPS.get(script), 'SPEC.md'
        lines.append(profile_row(script, p, tflops, source, mean_std(timed[script].get('seconds', []))[0], ceiling))
    lines.append('')
    lines += ['- seconds per epoch, %s: %s' % (script, ', '.join('%.3f' % s for s in p['epochs']))
              for script, p in profiles.items() if 'epochs' in p]
    return lines


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    scripts = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'airbench*.py')))
    args = parse_args(argv, scripts)
    device = torch.device(args.device)
    runs = {script: 1 if args.smoke else DEFAULT_RUNS.get(script, OTHER_RUNS) for script in scripts}
    runs.update(args.runs)
    edits = SMOKE_HYP if args.smoke else []
    modules = {script: load_edited(script, edits, name=script[:-3]) for script in scripts}
    with tempfile.TemporaryDirectory(prefix='gpu_check-') as tmp:
        data_dir, data_line = prepare_data(args, tmp)
        log_dir = os.path.join(tmp, 'logs') if args.smoke else os.path.join(ROOT, 'benchmarks', 'logs')
        say('1/4 the CUDA-only tests: %s' % CUDA_TESTS)
        tests = run_cuda_tests(tmp)

        def timed_stage():
            timed = {}
            for script in scripts:
                say('2/4 timed runs: %s, n = %d' % (script, runs[script]))
                timed[script] = timed_runs(script, runs[script], edits, device, data_dir, log_dir,
                                           warms_up(modules[script], device))
            return timed
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            timing = pool.submit(timed_stage)  # the runs are subprocesses: this thread only waits for them
            if not args.smoke:
                timing.result()  # timings: every stage has the machine to itself (--smoke's numbers mean
                # nothing, so there the runs go on beside the profiles and use a second core)
            say('3/4 matmul ceiling and profiles')
            ceiling = matmul_ceiling(modules[scripts[0]], device, 8192 if device.type == 'cuda' else 512)
            profiles = {}
            for script, module in modules.items():
                say('3/4 profiling %s' % script)
                try:
                    profiles[script] = profile_run(module, device, data_dir, args.smoke or script not in SPEC_TFLOPS)
                except Exception as e:  # recorded in the entry: one script's failure must not lose the others'
                    traceback.print_exc()
                    profiles[script] = dict(error='%s: %s' % (type(e).__name__, str(e).splitlines()[0] if str(e) else ''))
            timed = timing.result()
    say('4/4 the entry')
    lines = results_entry(args, argv, device, data_line, edits, tests, timed, ceiling, profiles, time.time() - STARTED)
    append_result(lines, args.results or (None if args.smoke else RESULTS))
    passed = (tests['failed'] + tests['errors'] == 0 and all(not t.get('error') for t in timed.values())
              and all('error' not in p for p in profiles.values()))
    return 0 if passed else 1


if __name__ == '__main__':
    sys.exit(main())
