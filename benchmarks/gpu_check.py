"""One command for the first CUDA GPU: run what only a GPU can confirm, within a time budget, and record it.

    python -m benchmarks.gpu_check --shared-data .data --budget-seconds 540 --out "$OUT"   # benchmarks/README.md
    python -m benchmarks.gpu_check --record DIR   # then: DIR's entry into RESULTS.md, its logs into benchmarks/logs
    python -m benchmarks.gpu_check --runs airbench95.py=5 --runs airbench96.py=2   # CIFAR-10 in cifar10/
    python -m benchmarks.gpu_check --device cpu --smoke --results /tmp/entry.md   # tests/test_gpu_check.py

(from the repository root, as every benchmark.)

Stages, in order of value:
a. The CUDA-only tests (CUDA_TESTS: tests/test_on_gpu.py) under pytest (the CUDA precision policy on
   the device, no host sync in the training steps, the compiled scripts' runs without recompiling,
   channels_last at every conv input, cuDNN benchmarking): how many passed, failed and skipped.
b.-e. Timed runs of each airbench*.py through harness.py (`python harness.py SCRIPT --runs n --seed 0
   ...`, --set for --smoke's hyp edits), n per script: TIMED_RUNS in that order, then any other
   airbench*.py (OTHER_RUNS); --runs SCRIPT=N overrides n. From each harness JSON log: mean and std
   of the TTA accuracy, the one-sided t-test of mean > the script's target (p-value), mean and std
   of the seconds per run (airbench's convention: whitening init + training + final TTA), the mean
   seconds without the final TTA, the warm-up (compile) time and the graphs compiled during the
   timed runs.
f. Where one run's time goes: a matmul ceiling, then torch.profiler over one train() of each script
   after a warm-up train(): the whitening init, each epoch and the final TTA (the spans between the
   script's own device_clock calls), device busy against wall time, and the achieved TFLOP/s
   against the ceiling.

The budget (--budget-seconds, counted from the end of this file's imports): a stage starts only if its
estimate fits in the time left; a stage that does not is skipped with a line giving its estimate
and the time left. Estimates rest only on what this invocation measured: for a script already
timed, its seconds per run, its warm-up (compilation included) and the rest of its command's wall
time; for one not yet timed, those of a timed script scaled by their published A100 times
(PUBLISHED_SECONDS), with a warm-up like that of a timed script that warms up alike (compiles, or
not), a compilation counted COMPILE_MARGIN times, and the whole ESTIMATE_MARGIN times. A stage with
nothing comparable measured before it (the tests, the first timed script, the first compiling one)
starts whenever time is left. A stage still running when the budget ends is stopped as by Ctrl-C:
the harness and pytest then log what finished, and that is kept.

--out DIR: after every stage, DIR/stages.jsonl (one JSON object per stage: what it measured or why
it was skipped; a timed stage holds its harness JSON log whole) and DIR/entry.md (the RESULTS.md
entry so far) are rewritten atomically, so that a command killed at any moment leaves every stage
that finished. `--record DIR` appends that entry to benchmarks/RESULTS.md and writes the logs to
benchmarks/logs, where the entry points. At the end the entry is printed and appended to
--results FILE, by default to benchmarks/RESULTS.md unless --out or --smoke is given.

--smoke runs the same stages on tiny data it makes itself (1 run per script, tiny networks, a small
matmul), so that a CPU test keeps this file working; its numbers mean nothing.
"""
import argparse
import contextlib
import glob
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from unittest import mock
from xml.etree import ElementTree

if not __package__:  # run as a file, the repository's imports below would fail: say how to run it
    print('run it from the repository root as: python -m benchmarks.%s' % os.path.basename(__file__)[:-3],
          file=sys.stderr)
    sys.exit(2)

import torch
from torch.autograd import DeviceType
from torch.utils.flop_counter import FlopCounterMode

import harness
from benchmarks.common import (ROOT, RESULTS, add_data_flags, append_result, check_data_flags, compiles, load_script,
                               machine_description, prepare_data as prepare_real_data, run_logged, run_until,
                               settings_text, write_atomically)
from support import cifar_files  # small learnable data in the official format

# --smoke: the tests' TINY_HYP (tests/conftest.py) shortened to 2 epochs (8 steps of 128 over 640
# images that support/cifar_files.py writes), and 250 test images: a run of seconds on a CPU
SMOKE_HYP = [['opt.batch_size', 128], ['opt.train_epochs', 1.5],
             ['net.widths', {'block1': 16, 'block2': 32, 'block3': 32}], ['net.whiten_images', 256]]
SMOKE_TRAIN_IMAGES, SMOKE_TEST_IMAGES = 640, 250

# Timed runs per script, in order of value (--runs overrides n; --smoke: 1); any other airbench*.py
# gets OTHER_RUNS, after these
TIMED_RUNS = {'airbench94.py': 10, 'airbench94_compiled.py': 10, 'airbench94_muon.py': 5,
              'airbench94_progressive.py': 5, 'airbench95.py': 3, 'airbench96.py': 1, 'airbench96_faster.py': 1}
OTHER_RUNS = 1

# The published A100 seconds per run (README.md's table): a script not yet timed is estimated from
# a timed one by their ratio; a script without a published time, as the slowest published one
PUBLISHED_SECONDS = {'airbench94.py': 3.83, 'airbench94_compiled.py': 3.09, 'airbench94_muon.py': 2.59,
                     'airbench94_progressive.py': 1.865, 'airbench95.py': 10.4, 'airbench96.py': 34.7, 'airbench96_faster.py': 27.3}
# Margins of the estimates, chosen, not measured: every estimate is ESTIMATE_MARGIN times what it
# scales; a compilation not yet measured COMPILE_MARGIN times the measured one (airbench96_faster
# compiles two networks); a train() under the profiler or the FLOP counter PROFILED_RUN timed runs
ESTIMATE_MARGIN, COMPILE_MARGIN, PROFILED_RUN = 1.25, 2, 2

# Whole-run FLOPs (training forward and backward, and the final 6-view TTA) of the published
# configurations, from SPEC.md's "Figures to check an implementation against" (FlopCounterMode).
# Other scripts, and every script under --smoke's hyp edits, are counted on the fly (timed_flops).
SPEC_TFLOPS = {'airbench94.py': 350, 'airbench94_compiled.py': 350, 'airbench95.py': 1338, 'airbench96.py': 4895}

CUDA_TESTS = ['tests/test_on_gpu.py']  # stage a's pytest files, relative to the repository root
JUNIT_OUTCOMES = {'failure': 'failed', 'error': 'errors', 'skipped': 'skipped'}
STAGES, ENTRY = 'stages.jsonl', 'entry.md'  # what --out writes
STAGE_NAMES = {'cuda-tests': 'the CUDA-only tests (%s)' % ' '.join(CUDA_TESTS),
               'timed': 'timed runs of %(script)s, n = %(n)d',
               'matmul-ceiling': 'the matmul ceiling', 'profile': 'the profile of %(script)s'}


def parse_args(argv, scripts):
    def runs_setting(text):
        script, _, n = text.partition('=')
        if not n.isdigit() or int(n) < 1:
            raise argparse.ArgumentTypeError('expected SCRIPT=N with N a positive integer, not %r' % text)
        return script, int(n)

    def positive(text):
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError('expected a positive whole number of seconds, not %r' % text)
        return int(text)

    parser = argparse.ArgumentParser(prog='python -m benchmarks.gpu_check', description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n'.join(__doc__.splitlines()[1:]))
    parser.add_argument('--device', choices=['cuda', 'cpu'], default='cuda', help='cpu only with --smoke')
    parser.add_argument('--smoke', action='store_true',
                        help='check the pipeline on tiny data made here: 1 run per script, tiny networks')
    add_data_flags(parser)
    parser.add_argument('--runs', metavar='SCRIPT=N', type=runs_setting, action='append', default=[],
                        help='timed runs of SCRIPT, repeatable; defaults: %s, any other airbench*.py %d; '
                             '--smoke: 1' % (', '.join('%s=%d' % item for item in TIMED_RUNS.items()), OTHER_RUNS))
    parser.add_argument('--budget-seconds', metavar='S', type=positive, default=540,
                        help='start a stage only if its estimate fits in what is left of S seconds from the start, '
                             'and stop one still running at the end of them (default: %(default)s)')
    parser.add_argument('--out', metavar='DIR',
                        help='after every stage, rewrite DIR/%s (what each stage measured) and DIR/%s (the '
                             'entry so far)' % (STAGES, ENTRY))
    parser.add_argument('--record', metavar='DIR',
                        help="run nothing: append DIR/%s (an --out folder's) to the results file and write the "
                             "timed runs' logs kept in DIR/%s to the logs/ folder beside it" % (ENTRY, STAGES))
    parser.add_argument('--results', metavar='FILE',
                        help='append the entry to FILE (default: benchmarks/RESULTS.md; with --out or --smoke and '
                             'without --record: print it only)')
    args = parser.parse_args(argv)
    if args.record:
        if not os.path.isfile(os.path.join(args.record, ENTRY)):
            parser.error('--record: no %s in %s (a folder that --out DIR wrote)' % (ENTRY, args.record))
        return args
    unknown = sorted({script for script, _ in args.runs} - set(scripts))
    if unknown:
        parser.error('--runs: no script %s here (there are %s)' % (', '.join(unknown), ', '.join(scripts)))
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is available (the CPU smoke test: --device cpu --smoke)')
    if args.device == 'cpu' and not args.smoke:
        parser.error('--device cpu: only with --smoke (full runs on a CPU take days, and measure nothing of a GPU)')
    check_data_flags(parser, args)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    return args


STARTED = time.time()  # the budget counts from here, after Python's start and torch's import


def say(text):
    print('\n== gpu_check, %.0f s: %s' % (time.time() - STARTED, text), flush=True)


def prepare_data(args, tmp):
    """(the data dir the scripts read, as absolute path; how the entry describes it)."""
    if args.smoke:
        data_dir = os.path.join(tmp, 'cifar10')
        cifar_files.write_batches(data_dir, n_train=SMOKE_TRAIN_IMAGES, n_test=SMOKE_TEST_IMAGES)
        return data_dir, 'tiny look-alike data made by support/cifar_files.py'
    return args.data_dir, prepare_real_data(args)


def planned_runs(scripts, args):
    """{script: n timed runs}, in the order the stages run them."""
    runs = {script: n for script, n in TIMED_RUNS.items() if script in scripts}
    runs.update((script, OTHER_RUNS) for script in scripts if script not in runs)
    if args.smoke:
        runs = dict.fromkeys(runs, 1)
    runs.update(args.runs)
    return runs

#############################################
#      1. The CUDA-only tests (pytest)      #
#############################################

def run_cuda_tests(tmp, deadline, device):
    """The CUDA_TESTS under pytest in a subprocess, stopped at `deadline`: counts by outcome, the
    failed tests' names and each test's seconds. With --device cpu (--smoke) the tests see no CUDA
    device, on a machine with one too: every test skips, as on a CPU."""
    report = os.path.join(tmp, 'test_cuda.xml')
    start = time.time()
    returncode = run_until([sys.executable, '-m', 'pytest', '-q', '-rs', '-p', 'no:cacheprovider', *CUDA_TESTS,
                            '--junitxml', report], deadline, cwd=ROOT,
                           env=dict(os.environ, **({} if device.type == 'cuda' else {'CUDA_VISIBLE_DEVICES': ''})))
    tests = dict(stage='cuda-tests', passed=0, failed=0, errors=0, skipped=0, names_failed=[], exit_code=returncode,
                 seconds=time.time() - start, stopped=time.time() >= deadline, test_seconds={})
    if not os.path.exists(report):
        tests['names_failed'].append('pytest wrote no report (exit code %d)' % returncode)
        return tests
    for case in ElementTree.parse(report).iter('testcase'):
        if case.get('name') is None:
            continue  # the test that a stop interrupted: pytest reports it without a name or an outcome
        outcome = next((JUNIT_OUTCOMES[child.tag] for child in case if child.tag in JUNIT_OUTCOMES), 'passed')
        tests[outcome] += 1
        tests['test_seconds'][case.get('name')] = float(case.get('time', 'nan'))
        if outcome in ('failed', 'errors'):
            tests['names_failed'].append(case.get('name'))
    return tests

#############################################
#     2. Timed runs through the harness     #
#############################################

def warms_up(module, device):
    """Whether a warm-up run warms anything: cuDNN's algorithm search on CUDA, or compilation."""
    return device.type == 'cuda' or compiles(module)


def timed_runs(stage, edits, device, data_dir, log_dir, warmup, deadline):
    """The stage's n timed runs of its script through the harness (after the harness's warm-up run,
    where `warmup`), with the hyp `edits` as --set flags, stopped at `deadline`, summarized from the
    harness's JSON log, which the record keeps whole ('log_json')."""
    script, n = stage['script'], stage['n']
    cli = ['--runs', str(n), '--seed', '0', '--device', device.type, '--data-dir', data_dir, '--log-dir', log_dir]
    if not warmup:
        cli.append('--no-warmup')
    returncode, wall_seconds, log_path = run_logged(script, edits, cli, log_dir, deadline)
    stage = dict(stage, wall_seconds=wall_seconds, stopped=time.time() >= deadline)
    if log_path is None:
        return dict(stage, error='exit code %d, no log' % returncode)
    with open(log_path) as f:
        log = json.load(f)
    ok = [r for r in log['runs'] if r['status'] == 'ok']
    stopped = stage['stopped'] or log['interrupted']
    summary = log['summary']
    return dict(stage, ok=len(ok), failed=len(log['runs']) - len(ok), accs=[r['tta_val_acc'] for r in ok],
                run_seconds=[r['time_seconds'] for r in ok], train_seconds=[r['train_seconds'] for r in ok],
                target=summary['target'], t_statistic=summary['t_statistic'], p_value=summary['p_value'],
                warmup_seconds=log['warmup_seconds'], compile=log['compile'], data_counts=log['data_counts'],
                log=shown_path(log_path), stopped=stopped,
                error=None if returncode == 0 or stopped else 'exit code %d' % returncode, log_json=log)


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
    FlopCounterMode over one train(), read at every device_clock call. Compiled code runs eagerly
    here (the same ops, each seen by the counter, and no recompilation)."""
    counter = FlopCounterMode(display=False)
    with (torch.compiler.set_stance('force_eager'), clock_calls(module, counter.get_total_flops) as calls, counter):
        module.train(module.hyp, *loaders, seed=0, verbose=False)
    return sum(span_lengths([flops for _, flops in calls]))


def profile_run(module, device, data_dir, count_flops):
    """One train() under torch.profiler, after a warm-up train() where it warms something (cuDNN's
    algorithm search, compilation); with count_flops, one more under FlopCounterMode."""
    loaders, error = harness.load_data(module, data_dir, device, rank=0, local_rank=0, world_size=1)
    if error:
        raise RuntimeError(error)
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
#               4. The budget               #
#############################################

class OutOfBudget(BaseException):
    """The end of the budget, raised in an in-process stage; like KeyboardInterrupt, no `except Exception`
    (torch's own, around a compilation, say) takes it for a failure."""


def command_costs(timed):
    """(seconds outside the warm-up and the runs, warm-up seconds, mean seconds per run) of a timed stage."""
    per_run = statistics.mean(timed['run_seconds'])
    warmup = timed['warmup_seconds'] or 0
    return max(timed['wall_seconds'] - warmup - sum(timed['run_seconds']), 0), warmup, per_run


def expected_costs(script, timed, modules, device):
    """(command_costs() expected of the script's command line, their basis): its own timed stage's,
    or those of the first timed script with a published time scaled by the ratio of published times,
    with a warm-up of one such run plus the compilation (or cuDNN search) measured in the first
    script timed that warms up alike. None where nothing comparable has been measured yet."""
    measured = [s for s, t in timed.items() if t.get('run_seconds')]
    if script in measured:
        return command_costs(timed[script]), "%s's timed runs" % script
    like = next((s for s in measured if s in PUBLISHED_SECONDS), None)
    if like is None:
        return None
    published = PUBLISHED_SECONDS.get(script, max(PUBLISHED_SECONDS.values()))
    outside, _, per_run = command_costs(timed[like])
    per_run *= published / PUBLISHED_SECONDS[like]
    basis = "%s's timed runs x %.3g / %.3g (published A100 seconds%s)" % (
        like, published, PUBLISHED_SECONDS[like], '' if script in PUBLISHED_SECONDS else ', none for this script')
    if not warms_up(modules[script], device):
        return (outside, 0, per_run), basis
    compiling = compiles(modules[script])
    alike = next((s for s in measured if warms_up(modules[s], device) and compiles(modules[s]) == compiling), None)
    if alike is None:
        return None
    _, alike_warmup, alike_run = command_costs(timed[alike])
    warmup = per_run + max(alike_warmup - alike_run, 0) * (COMPILE_MARGIN if compiling else 1)
    return (outside, warmup, per_run), '%s; warm-up: a run plus %s' % (
        basis, "%d x %s's compilation" % (COMPILE_MARGIN, alike) if compiling else "%s's cuDNN search" % alike)


def estimate(script, runs, timed, modules, device):
    """(seconds, basis) that the script's command, or its profile, is expected to take with `runs`
    timed runs (a profile: PROFILED_RUN per train() it makes after its warm-up), or None."""
    expected = expected_costs(script, timed, modules, device)
    if expected is None:
        return None
    (outside, warmup, per_run), basis = expected
    return ESTIMATE_MARGIN * (outside + warmup + runs * per_run), basis


def in_process(deadline, work, *args):
    """work(*args), a dict, stopped at `deadline` as by Ctrl-C (SIGALRM raises OutOfBudget in it); a
    stop or a failure is returned as the record's 'stopped' and 'error' rather than ending the check."""
    def stop(signum, frame):
        raise OutOfBudget()
    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, max(deadline - time.time(), 0.001))
    try:
        try:
            return work(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)  # before the handlers below: no stop can interrupt them
    except OutOfBudget:
        return dict(stopped=True, error='stopped at the end of the budget')
    except Exception as e:  # recorded in the entry: one script's failure must not lose the others'
        traceback.print_exc()
        return dict(error='%s: %s' % (type(e).__name__, str(e).splitlines()[0] if str(e) else ''))
    finally:
        signal.signal(signal.SIGALRM, previous)


def stage_name(stage):
    return STAGE_NAMES[stage['stage']] % stage


class Check:
    """The stages so far, against the budget; with --out, DIR's files are rewritten after each one."""

    def __init__(self, args):
        self.out, self.deadline, self.stages = args.out, STARTED + args.budget_seconds, []

    def starts(self, stage, expected):
        """Whether the stage (its record so far) starts: whether `expected`, (seconds, basis) or None
        where nothing comparable has been measured yet, fits in the time left. Says which; a skipped
        stage is recorded with why."""
        left = self.deadline - time.time()
        if left > 0 and (expected is None or expected[0] <= left):
            say('%s (estimate: %s; %.0f s left)' % (stage_name(stage), '%.0f s from %s' % expected if expected
                                                    else 'none, nothing comparable measured yet', left))
            return True
        why = 'estimate %.0f s > %.0f s left' % (expected[0], max(left, 0)) if expected else 'no time left'
        say('skipped %s: %s%s' % (stage_name(stage), why, ' (estimate from %s)' % expected[1] if expected else ''))
        self.add(dict(stage, not_started=why, estimate_seconds=expected and expected[0],
                      estimate_basis=expected and expected[1], left_seconds=max(left, 0)))
        return False

    def add(self, stage):
        self.stages.append(dict(stage, at_seconds=time.time() - STARTED))
        if self.out:  # the entry first: whenever the process is killed, it holds every stage that STAGES holds
            write_atomically(os.path.join(self.out, ENTRY), '\n'.join(results_entry(self.stages)) + '\n')
            write_atomically(os.path.join(self.out, STAGES), ''.join(json.dumps(s) + '\n' for s in self.stages))

#############################################
#    5. The RESULTS entry and --record      #
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


def t_test_cell(t):
    """'> 94%: p = 0.012' (the one-sided t-test of mean > target), or why there is none."""
    if not t['accs']:
        return 'n/a'
    return '> %s%%: %s' % ('%g' % (100 * t['target']),
                           'n/a (1 run)' if t['p_value'] is None else 'p = %.3g' % t['p_value'])


def timed_row(script, t):
    if 'accs' not in t:
        return '| %s | %d | failed: %s | | | | | | | | | |' % (script, t['n'], t['error'])
    acc, acc_std = mean_std(t['accs'])
    seconds, seconds_std = mean_std(t['run_seconds'])
    train_seconds, _ = mean_std(t['train_seconds'])
    graphs = t['compile'] and t['compile']['graphs_compiled_in_timed_runs']
    notes = [t['error']] if t['error'] else []
    notes += ['stopped at the end of the budget'] if t['stopped'] else []
    return '| %s | %d | %d / %d%s | %s | %s | %s | %s | %s | %s | %s | %s | `%s` |' % (
        script, t['n'], t['ok'], t['failed'], ' (%s)' % '; '.join(notes) if notes else '',
        number(acc and 100 * acc, '%.2f%%'), number(acc_std and 100 * acc_std, '%.2f'), t_test_cell(t),
        number(seconds, '%.3f'), number(seconds_std, '%.3f'), number(train_seconds, '%.3f'),
        number(t['warmup_seconds'], '%.1f'), ('n/a' if graphs is None else graphs) if t['compile'] else '-', t['log'])


def profile_row(script, p, tflops, source, seconds_per_run, ceiling_tflops):
    if 'error' in p:
        return '| %s | failed: %s | | | | | | | | |' % (script, p['error'])
    achieved = tflops / seconds_per_run if tflops and seconds_per_run else None
    return '| %s | %.3f | %.3f (%d) | %.3f | %.3f | %.3f / %.3f (%.0f%%) | %s | %s | %s | %s |' % (
        script, p['whitening'], sum(p['epochs']), len(p['epochs']), p['tta'], p['timed'], p['busy'], p['wall'],
        100 * p['busy'] / p['wall'], number(tflops, '%.4g'), source, number(achieved, '%.4g'),
        number(achieved and ceiling_tflops and 100 * achieved / ceiling_tflops, '%.1f%%'))


def results_entry(stages):
    """The entry's lines, from the stages recorded so far (the first: 'setup')."""
    setup, done = stages[0], [s for s in stages if 'not_started' not in s]
    tests = next((s for s in done if s['stage'] == 'cuda-tests'), None)
    timed = {s['script']: s for s in done if s['stage'] == 'timed'}
    ceiling = next((s for s in done if s['stage'] == 'matmul-ceiling' and 'error' not in s), None)
    profiles = {s['script']: s for s in done if s['stage'] == 'profile'}
    end = next((s for s in done if s['stage'] == 'end'), None)
    counts = next((t['data_counts'] for t in timed.values() if 'data_counts' in t), None)
    lines = [
        '### GPU check%s, %s, %s' % (' smoke test (--smoke: tiny data and networks, its numbers mean nothing)'
                                     if setup['smoke'] else '', setup['gpu'], setup['date']),
        '',
        '- command: `%s`' % setup['command'],
        '- machine: %s' % setup['machine'],
        '- data: %s%s' % (setup['data'], ', %d train / %d test images' % (counts['train'], counts['test'])
                          if counts else ''),
        '- hyp edits: %s' % setup['hyp_edits'],
        '- budget: %d s (`--budget-seconds`); %s' % (
            setup['budget_seconds'], 'the check ended after %.0f s' % end['at_seconds'] if end else
            'written %.0f s after the start, after the last stage that finished: the check had not ended'
            % stages[-1]['at_seconds']),
    ]
    not_started = [s for s in stages if 'not_started' in s]
    if not_started:
        lines.append('- not started, too little time left: %s' % '; '.join(
            '%s (%s)' % (stage_name(s), s['not_started']) for s in not_started))
    stopped = [s for s in done if s.get('stopped')]
    if stopped:
        lines.append('- stopped at the end of the budget as by Ctrl-C (what finished before is kept): %s' % ', '.join(
            stage_name(s) for s in stopped))
    if tests:
        lines.append('- CUDA tests (`python -m pytest %s`, %.0f s): %d passed, %d failed, %d errors, %d skipped%s%s' % (
            ' '.join(CUDA_TESTS), tests['seconds'], tests['passed'], tests['failed'], tests['errors'], tests['skipped'],
            ' (--device cpu: no CUDA device visible to them, every test skips)' if setup['device'] != 'cuda' else '',
            '; not passed: %s' % ', '.join(tests['names_failed']) if tests['names_failed'] else ''))
    if ceiling:
        lines.append('- matmul ceiling: torch.mm of two %d x %d %s matrices, %d timed after 2 warm-up: %.4g TFLOP/s' % (
            ceiling['size'], ceiling['size'], ceiling['dtype'], ceiling['repeats'], ceiling['tflops']))
    if timed:
        lines += [
            '',
            'Timed runs through the harness (`python harness.py SCRIPT --runs n --seed 0 --device %s%s`, after '
            'its untimed warm-up run%s; the t-test: one-sided, of mean TTA accuracy > the target, over the finished '
            'runs; seconds per run: whitening init + training + final TTA, device-synchronized, as airbench times '
            'it; without the final TTA: as the 2026 records time it):' % (
                setup['device'], ' --set ...' if setup['smoke'] else '',
                '' if setup['device'] == 'cuda' else ' where the script compiles (--no-warmup elsewhere)'),
            '',
            '| script | n | finished / failed | TTA accuracy mean | std (points) | t-test vs target | '
            'seconds per run mean | std | without final TTA, mean | warm-up s (compile included) | '
            'graphs compiled in timed runs | log |',
            '|---|---|---|---|---|---|---|---|---|---|---|---|',
        ] + [timed_row(script, t) for script, t in timed.items()]
    if profiles:
        lines += [
            '',
            "Where one run's time goes: torch.profiler over one train() in this process, after a warm-up train() (on "
            "a CPU only where the script compiles); spans between the script's own device_clock calls, in seconds "
            'under the profiler; device busy = the union of the device\'s kernel intervals (on a CPU: of ATen ops) '
            'against the wall time of the whole train(), progress evaluations included; achieved TFLOP/s = whole-run '
            'FLOPs / the mean seconds per run above:',
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
            seconds_per_run = mean_std(timed[script].get('run_seconds', []))[0] if script in timed else None
            lines.append(profile_row(script, p, tflops, source, seconds_per_run, ceiling and ceiling['tflops']))
        lines.append('')
        lines += ['- seconds per epoch, %s: %s' % (script, ', '.join('%.3f' % s for s in p['epochs']))
                  for script, p in profiles.items() if 'epochs' in p]
    return lines


def read_stages(out_dir):
    with open(os.path.join(out_dir, STAGES)) as f:
        return [json.loads(line) for line in f]


def record(out_dir, results):
    """--record: append out_dir's entry to `results` and write the timed runs' logs kept in its stages
    to the logs/ folder beside `results` (benchmarks/logs, where the entry's log column points)."""
    log_dir = os.path.join(os.path.dirname(os.path.abspath(results)), 'logs')
    os.makedirs(log_dir, exist_ok=True)
    for stage in read_stages(out_dir):
        if stage.get('log_json'):
            write_atomically(os.path.join(log_dir, os.path.basename(stage['log'])),
                             json.dumps(stage['log_json'], indent=1))
    with open(os.path.join(out_dir, ENTRY)) as f:
        append_result(f.read().rstrip('\n').split('\n'), results)
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    scripts = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'airbench*.py')))
    args = parse_args(argv, scripts)
    if args.record:
        return record(args.record, args.results or RESULTS)
    device = torch.device(args.device)
    runs = planned_runs(scripts, args)
    edits = SMOKE_HYP if args.smoke else []
    modules = {script: load_script(script, edits) for script in runs}
    check = Check(args)
    with tempfile.TemporaryDirectory(prefix='gpu_check-') as tmp:
        data_dir, data_line = prepare_data(args, tmp)
        check.add(dict(stage='setup', smoke=args.smoke, device=device.type, date=time.strftime('%Y-%m-%d'),
                       gpu=machine_description('cuda') if device.type == 'cuda' else 'cpu',
                       command=' '.join(['python', '-m', 'benchmarks.gpu_check'] + [shlex.quote(a) for a in argv]),
                       machine=describe_machine(device), data=data_line, budget_seconds=args.budget_seconds,
                       hyp_edits=settings_text(edits) or 'none (the published methods)'))
        log_dir = os.path.join(tmp, 'logs') if args.smoke else os.path.join(ROOT, 'benchmarks', 'logs')

        if check.starts(dict(stage='cuda-tests'), None):
            check.add(run_cuda_tests(tmp, check.deadline, device))
        timed = {}
        for script, n in runs.items():
            stage = dict(stage='timed', script=script, n=n)
            if check.starts(stage, estimate(script, n, timed, modules, device)):
                timed[script] = timed_runs(stage, edits, device, data_dir, log_dir, warms_up(modules[script], device),
                                           check.deadline)
                check.add(timed[script])
        stage = dict(stage='matmul-ceiling')
        if check.starts(stage, None):  # a second at most
            check.add(dict(stage, **in_process(check.deadline, matmul_ceiling, modules[next(iter(runs))], device,
                                               8192 if device.type == 'cuda' else 512)))
        for script, module in modules.items():
            stage, count_flops = dict(stage='profile', script=script), args.smoke or script not in SPEC_TFLOPS
            if check.starts(stage, estimate(script, PROFILED_RUN * (1 + count_flops), timed, modules, device)):
                check.add(dict(stage, **in_process(check.deadline, profile_run, module, device, data_dir,
                                                   count_flops)))
    failed = [s for s in check.stages
              if s.get('failed') or s.get('errors') or (s.get('error') and not s.get('stopped'))]
    check.add(dict(stage='end', exit_code=1 if failed else 0))
    append_result(results_entry(check.stages), args.results or (None if args.smoke or args.out else RESULTS))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
