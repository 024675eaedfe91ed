"""benchmarks/gpu_check.py, the one command for the first GPU, kept working without one: its
--smoke mode runs the whole pipeline on the CPU on tiny data and writes an entry with every section
(its timed runs through harness.py, read from the harness's logs); under a short --budget-seconds it
skips what does not fit, and with --out it leaves every finished stage behind, even when killed."""
import functools
import glob
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import common, gpu_check
from support import cifar_files

ROOT, RESULTS = common.ROOT, common.RESULTS
SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'airbench*.py')))
load_script = functools.lru_cache(maxsize=None)(lambda script: common.load_script(script))  # one per script
# One thread per process: as fast for tiny tensors, and no OpenMP oversubscription when the
# machine is shared (two threads then made this take twice as long)
ENV = dict(os.environ, OMP_NUM_THREADS='1')
# Every stage a smoke run plans, by (kind, script): all of them fit in the full run's budget
PLANNED = ({('cuda-tests', None), ('matmul-ceiling', None)}
           | {(kind, script) for kind in ('timed', 'profile') for script in SCRIPTS})
# The short run's budget leaves time for the tests and a timed run or two, not for every stage;
# it may end that much later: Python's start, a stop's grace (common.run_until) and the entry
SHORT_BUDGET, SHORT_ALLOWANCE = 25, 20


def table(entry, header):
    """{script: its other cells} of the markdown table whose header row starts with `header`."""
    lines = entry[entry.index(header):].split('\n\n')[0].splitlines()[2:]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip('|').split('|')] for line in lines)}


def field(entry, pattern):
    return re.search(pattern, entry, re.M).groups()


def smoke_command(*flags):
    """The check as benchmarks/README.md runs it: a module of the benchmarks package, from the repository root."""
    return [sys.executable, '-m', 'benchmarks.gpu_check', '--device', 'cpu', '--smoke', *flags]


def planned(stage):
    return stage['stage'], stage.get('script')


def finished(stages):
    """The stages that ran (the first, 'setup', and the last, 'end', are none)."""
    return [s for s in stages if planned(s) in PLANNED and 'not_started' not in s]


def cuda_tests_line(entry):
    """(passed, failed, errors, skipped) of the entry's CUDA tests line, under --device cpu."""
    command = re.escape(' '.join(gpu_check.CUDA_TESTS))  # the stage's files, one constant
    return tuple(map(int, field(entry, r'^- CUDA tests \(`python -m pytest %s`, \d+ s\): (\d+) passed, (\d+) failed, '
                                       r'(\d+) errors, (\d+) skipped \(--device cpu: no CUDA device visible to them, '
                                       r'every test skips\)$' % command)))


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
    """One whole smoke run, with a budget that holds every stage: its entry and --out folder."""
    tmp = tmp_path_factory.mktemp('gpu_check')
    results, out, real_results = tmp / 'entry.md', tmp / 'out', open(RESULTS, 'rb').read()
    flags = ['--budget-seconds', '1500', '--results', str(results), '--out', str(out)]
    process = subprocess.run(smoke_command(*flags), cwd=ROOT, capture_output=True, text=True, timeout=1800, env=ENV)
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-3000:]
    assert open(RESULTS, 'rb').read() == real_results
    return dict(entry=results.read_text(), flags=flags, out=str(out))


def test_smoke_entry_names_the_command_machine_data_and_cuda_tests(smoke):
    entry = smoke['entry']
    assert entry.startswith('### GPU check smoke test (--smoke: tiny data and networks, its numbers mean nothing), cpu, ')
    assert field(entry, r'^- command: `(.*)`$') == (
        ' '.join(['python -m benchmarks.gpu_check --device cpu --smoke'] + smoke['flags']),)
    # A CUDA build of torch names its CUDA version on a machine without a GPU too
    machine = field(entry, r'^- machine: (.*)$')[0]
    assert 'torch %s, CUDA %s' % (torch.__version__, torch.version.cuda or 'none') in machine
    assert field(entry, r'^- data: .*, (\d+) train / (\d+) test images$') == (
        str(gpu_check.SMOKE_TRAIN_IMAGES), str(gpu_check.SMOKE_TEST_IMAGES))
    passed, failed, errors, skipped = cuda_tests_line(entry)
    assert (passed, failed, errors) == (0, 0, 0) and skipped >= 2 * len(SCRIPTS)
    assert float(field(entry, r'^- matmul ceiling: torch.mm of two 512 x 512 float32 matrices, 10 timed after 2 '
                              r'warm-up: (\S+) TFLOP/s$')[0]) > 0
    assert re.search(r'^- budget: 1500 s \(`--budget-seconds`\); the check ended after \d+ s$', entry, re.M)
    assert 'not started' not in entry and 'stopped at the end of the budget' not in entry


def test_smoke_entry_has_a_timed_row_per_script(smoke):
    timed = table(smoke['entry'], '| script | n |')
    assert sorted(timed) == SCRIPTS
    for script, cells in timed.items():
        n, finished_runs, acc, acc_std, t_test, seconds, seconds_std, train_seconds, warmup, graphs, log = cells
        compiled = common.compiles(load_script(script))
        assert (n, finished_runs, acc_std, seconds_std) == ('1', '1 / 0', 'n/a', 'n/a')
        assert 20 < float(acc.rstrip('%')) <= 100 and float(seconds) > 0  # learnable data: chance is 10%
        # the harness's target from the file name; a t-test needs two runs
        assert t_test == '> %s%%: n/a (1 run)' % re.match(r'airbench(\d\d)', script).group(1)
        assert 0 < float(train_seconds) < float(seconds)  # the time without the final TTA
        assert (warmup != 'n/a', graphs) == ((True, '0') if compiled else (False, '-'))  # CPU: warm-up to compile
        assert re.fullmatch(r'`.*/%s-harness-[\d-]+\.json`' % script[:-3], log)


def test_a_timed_row_shows_the_t_test_and_the_time_without_the_final_tta():
    """With two runs or more: the p-value of the harness's one-sided t-test of mean > target, and the
    mean seconds without the final TTA beside airbench's (whitening init + training + final TTA)."""
    stage = dict(n=2, ok=2, failed=0, accs=[0.9402, 0.9412], run_seconds=[3.5, 3.7], train_seconds=[3.25, 3.35],
                 target=0.94, t_statistic=2.2, p_value=0.1357, warmup_seconds=12.3,
                 compile=dict(mode='max-autotune', graphs_compiled_in_timed_runs=0), error=None, stopped=False,
                 log='benchmarks/logs/airbench94_compiled-harness-20261202-120000-1.json')
    entry = gpu_check.results_entry([dict(stage='setup', smoke=False, gpu='GPU', date='today', command='c', machine='m',
                                          data='d', hyp_edits='none', budget_seconds=540, device='cuda', at_seconds=0),
                                     dict(stage, stage='timed', script='airbench94_compiled.py', at_seconds=30)])
    row = table('\n'.join(entry), '| script | n |')['airbench94_compiled.py']
    assert row == ['2', '2 / 0', '94.07%', '0.07', '> 94%: p = 0.136', '3.600', '0.141', '3.300', '12.3', '0',
                   '`%s`' % stage['log']]


def test_smoke_entry_has_a_profile_row_and_epoch_times_per_script(smoke):
    entry = smoke['entry']
    profile = table(entry, '| script | whitening init s |')
    assert sorted(profile) == SCRIPTS
    for script, (whitening, training, tta, total, busy, tflops, source, achieved, share) in profile.items():
        training_seconds, epochs = re.fullmatch(r'(\S+) \((\d+)\)', training).groups()
        assert epochs == '2'  # ceil(1.5)
        # the spans between the script's clock calls add up to its timed seconds
        assert float(whitening) + float(training_seconds) + float(tta) == pytest.approx(float(total), abs=0.003)
        busy_seconds, wall_seconds = map(float, re.fullmatch(r'(\S+) / (\S+) \(\d+%\)', busy).groups())
        assert 0 < busy_seconds <= wall_seconds
        assert source == 'counted (FlopCounterMode)' and float(tflops) > 0 and float(achieved) > 0
        assert float(share.rstrip('%')) > 0
        per_epoch = field(entry, r'^- seconds per epoch, %s: (\S+), (\S+)$' % re.escape(script))
        assert sum(map(float, per_epoch)) == pytest.approx(float(training_seconds), abs=0.003)


def test_smoke_out_holds_every_stage_and_the_entry(smoke):
    """--out: one JSON line per stage in the order they ran, each timed one with its script's whole
    log, and the final entry.md the same entry as the results file's."""
    stages = gpu_check.read_stages(smoke['out'])
    assert [s['stage'] for s in stages] == (['setup', 'cuda-tests'] + ['timed'] * len(SCRIPTS) + ['matmul-ceiling']
                                            + ['profile'] * len(SCRIPTS) + ['end'])
    assert {planned(s) for s in finished(stages)} == PLANNED and stages[-1]['exit_code'] == 0
    assert [s['at_seconds'] for s in stages] == sorted(s['at_seconds'] for s in stages)
    for stage in stages[2:2 + len(SCRIPTS)]:
        log = stage['log_json']  # the harness's: argv starts with the script; --smoke's hyp edits as --set
        script = stage['script']
        assert (log['script'], log['argv'][:3], log['interrupted']) == (script, [script, '--runs', '1'], False)
        assert log['sets'] == [list(edit) for edit in gpu_check.SMOKE_HYP] and log['seed'] == 0
        assert stage['run_seconds'] == [run['time_seconds'] for run in log['runs']] and not stage['stopped']
        assert stage['train_seconds'] == [run['train_seconds'] for run in log['runs']]
        assert (stage['target'], stage['p_value']) == (log['summary']['target'], log['summary']['p_value'])
        assert stage['compile'] == log['compile'] and (log['compile'] is not None) == common.compiles(
            load_script(stage['script']))
    assert sorted(os.listdir(smoke['out'])) == [gpu_check.ENTRY, gpu_check.STAGES]
    assert open(os.path.join(smoke['out'], gpu_check.ENTRY)).read() + '\n' == smoke['entry']


def test_an_estimate_of_a_timed_stage_is_its_measured_wall_time_times_the_margin(smoke):
    """What the budget rests on: the parts of a timed stage's wall time that the estimates scale add
    up to the whole, so a script's estimate from its own measurement is its wall time, with the margin."""
    timed = {s['script']: s for s in gpu_check.read_stages(smoke['out']) if s['stage'] == 'timed'}
    modules = {script: load_script(script) for script in SCRIPTS}
    for script, stage in timed.items():
        seconds, basis = gpu_check.estimate(script, stage['n'], timed, modules, torch.device('cpu'))
        assert seconds == pytest.approx(gpu_check.ESTIMATE_MARGIN * stage['wall_seconds'])
        assert basis == "%s's timed runs" % script


def test_record_appends_the_entry_and_writes_the_logs_where_it_points(smoke, tmp_path):
    results = tmp_path / 'RESULTS.md'
    results.write_text('# Results\n\n')
    assert gpu_check.main(['--record', smoke['out'], '--results', str(results)]) == 0
    assert results.read_text() == '# Results\n\n' + smoke['entry']
    logs = {os.path.basename(s['log']): s['log_json'] for s in gpu_check.read_stages(smoke['out'])
            if s['stage'] == 'timed'}
    assert sorted(os.listdir(tmp_path / 'logs')) == sorted(logs) and len(logs) == len(SCRIPTS)
    for name, log in logs.items():
        assert json.load(open(tmp_path / 'logs' / name)) == log


@pytest.fixture(scope='module')
def short(tmp_path_factory):
    """A smoke run whose budget is too short for every stage: its wall time, stdout and stages."""
    tmp = tmp_path_factory.mktemp('gpu_check_short')
    out = tmp / 'out'
    start = time.monotonic()
    process = subprocess.run(smoke_command('--budget-seconds', str(SHORT_BUDGET), '--out', str(out)), cwd=ROOT,
                             capture_output=True, text=True, timeout=600, env=ENV)
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-3000:]
    return dict(seconds=time.monotonic() - start, stdout=process.stdout, out=str(out),
                stages=gpu_check.read_stages(out))


def test_a_short_budget_skips_what_does_not_fit_and_ends_in_time(short):
    stages = short['stages']
    assert short['seconds'] <= SHORT_BUDGET + SHORT_ALLOWANCE
    assert (stages[0]['stage'], stages[-1]['stage']) == ('setup', 'end')
    # Each planned stage once: run, or not started with a printed reason
    assert sorted(map(planned, stages[1:-1]), key=str) == sorted(PLANNED, key=str)
    not_started = [s for s in stages if 'not_started' in s]
    assert not_started and finished(stages)
    for stage in not_started:
        assert ' s: skipped %s: %s' % (gpu_check.stage_name(stage), stage['not_started']) in short['stdout']
        if stage['estimate_seconds'] is None:
            assert stage['not_started'] == 'no time left' and stage['left_seconds'] <= 0
        else:
            assert stage['estimate_seconds'] > stage['left_seconds']


def test_a_short_budget_leaves_every_finished_stage_in_out(short):
    entry = open(os.path.join(short['out'], gpu_check.ENTRY)).read()
    stages = finished(short['stages'])
    assert re.search(r'^- budget: %d s \(`--budget-seconds`\); the check ended after \d+ s$' % SHORT_BUDGET,
                     entry, re.M)
    assert field(entry, r'^- not started, too little time left: (.*)$')[0] == '; '.join(
        '%s (%s)' % (gpu_check.stage_name(s), s['not_started']) for s in short['stages'] if 'not_started' in s)
    # On a slow machine the budget may end inside the tests: stopped, pytest writes no counts to compare
    tests = [s for s in stages if s['stage'] == 'cuda-tests' and not s['stopped']]
    if tests:
        assert cuda_tests_line(entry) == tuple(tests[0][k] for k in ('passed', 'failed', 'errors', 'skipped'))
    timed = [s['script'] for s in stages if s['stage'] == 'timed']
    assert sorted(table(entry, '| script | n |') if timed else []) == sorted(timed)


def test_a_killed_check_leaves_its_finished_stages_intact(tmp_path):
    """SIGKILL, as a command stopped at its time limit gets it, once --out holds a finished stage:
    the stages that finished are there, whole, and the entry shows them."""
    out = tmp_path / 'out'
    # TMPDIR: the check's temporary folder, which a killed process cannot remove, goes to tmp_path
    process = subprocess.Popen(smoke_command('--budget-seconds', '60', '--out', str(out)), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                               env=dict(ENV, TMPDIR=str(tmp_path)))
    try:
        give_up = time.monotonic() + 300
        while process.poll() is None and time.monotonic() < give_up:
            if os.path.exists(out / gpu_check.STAGES) and finished(gpu_check.read_stages(out)):
                break
            time.sleep(0.1)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the check and the run it was doing
        process.wait()
    stages = gpu_check.read_stages(out)
    assert [s['stage'] for s in stages] == ['setup', 'cuda-tests']  # killed part-way: no 'end'
    entry = open(out / gpu_check.ENTRY).read()
    assert entry.startswith('### GPU check smoke test') and 'the check had not ended' in entry
    assert cuda_tests_line(entry) == tuple(stages[1][k] for k in ('passed', 'failed', 'errors', 'skipped'))
    assert sorted(os.listdir(out)) == [gpu_check.ENTRY, gpu_check.STAGES]


def test_a_stage_in_a_subprocess_is_stopped_as_by_ctrl_c_at_its_deadline():
    """run_until: what the scripts and pytest get at the end of the budget, so that they log what finished."""
    code = ('import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    print("stopped")\n'
            '    raise SystemExit(130)')
    start = time.monotonic()
    with open(os.devnull, 'w') as devnull:
        assert common.run_until([sys.executable, '-c', code], time.time() + 1, stdout=devnull) == 130
    assert 1 <= time.monotonic() - start < 10


def test_a_stage_in_this_process_is_stopped_at_its_deadline():
    """in_process: 100,000 products of 1024 x 1024 matrices, stopped after a second; the alarm is
    then off and its handler the one before."""
    handler = signal.getsignal(signal.SIGALRM)
    start = time.monotonic()
    stage = gpu_check.in_process(time.time() + 1, gpu_check.matmul_ceiling, load_script('airbench94.py'),
                                 torch.device('cpu'), 1024, 100000)
    assert stage == dict(stopped=True, error='stopped at the end of the budget')
    assert 1 <= time.monotonic() - start < 10
    assert signal.getsignal(signal.SIGALRM) == handler and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_counted_flops_are_the_training_steps_the_tta_and_the_whitening_init(tmp_path):
    """What timed_flops counts for a script without a SPEC.md figure is what those figures count:
    forward and backward of every training step and the final TTA (plus the small whitening init),
    not the per-epoch progress evaluations."""
    cifar_files.write_batches(str(tmp_path), n_train=256, n_test=500)
    module = common.load_script('airbench94.py', gpu_check.SMOKE_HYP)
    hyp = module.hyp  # 3 steps (1.5 epochs of 2 batches of 128), 2 evaluation batches
    train_loader = module.CifarLoader(str(tmp_path), train=True, batch_size=hyp['opt']['batch_size'], aug=hyp['aug'],
                                      device='cpu')
    test_loader = module.CifarLoader(str(tmp_path), train=False, batch_size=250, device='cpu')
    counted = gpu_check.timed_flops(module, (train_loader, test_loader))
    net = module.make_net(module.hyp)
    inputs, labels = next(iter(train_loader))
    with FlopCounterMode(display=False) as step:
        module.make_loss_fn(module.hyp)(net(inputs), labels).backward()
    with FlopCounterMode(display=False) as tta:
        module.evaluate(net, test_loader, module.hyp['net']['tta_level'])
    with FlopCounterMode(display=False) as whitening:
        module.init_whitening_conv(net.whiten, train_loader.images[:module.hyp['net']['whiten_images']],
                                   module.hyp['net']['whiten_eps'])
    steps = math.ceil(len(train_loader) * hyp['opt']['train_epochs'])
    assert steps == 3 and counted == steps * step.get_total_flops() + tta.get_total_flops() + whitening.get_total_flops()


@pytest.mark.parametrize('argv, message', [
    (['--runs', 'airbench99.py=3'], '--runs: no script airbench99.py here'),
    (['--runs', 'airbench94.py=0'], 'expected SCRIPT=N with N a positive integer'),
    (['--device', 'cpu'], '--device cpu: only with --smoke'),
    (['--budget-seconds', '0'], 'expected a positive whole number of seconds'),
    (['--record', '/nonexistent'], '--record: no entry.md in /nonexistent'),
] + ([(['--shared-data', '/nonexistent'], 'no cifar10-jpeg.tar.gz in /nonexistent')] if torch.cuda.is_available()
     else [([], '--device cuda: no CUDA device is available')]))
def test_bad_flags_get_an_argparse_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.parse_args(argv, SCRIPTS)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
