"""harness.py: runs any airbench script by path, with torchrun scale-out, statistics, hyp edits and saved logits.

    python harness.py airbench94.py --runs 200                          # t-test of the mean against 0.94
    python harness.py airbench96.py --set opt.train_epochs=4 --save-logits logits
    torchrun --nproc_per_node=8 harness.py airbench94.py --runs 10000   # run i on rank i mod 8
    python harness.py airbench94_progressive.py --preset E1 --graded-split --runs 200  # as its record was graded

The script is imported, never run: the harness uses only its public API (hyp, CifarLoader, train,
warm_up, format_row, LOG_COLUMNS, DataError, TrainingDiverged, compile_mode where it compiles,
PRESETS where it has named sets of hyp values, and Forecast where it says early how long a command takes).
Run i (counting from 0) uses seed S+i on rank i mod WORLD_SIZE, so the set of results does not
depend on the number of processes. One JSON log per invocation, written by rank 0.
"""
import argparse, contextlib, copy, datetime, importlib.util, json, math, os, platform, random, re  # noqa: E401
import functools, hashlib, signal, statistics, sys, tempfile, time  # noqa: E401

import torch

PROG = 'harness.py'
MIN_TORCH = (2, 4)  # the scripts' minimum: the published runs used torch 2.4
DIST_TIMEOUT_SECONDS = 1800  # a rank that waits this long on the others gives up with an error
CIFAR10_COUNTS = {'train': 50000, 'test': 10000}
# The 2026 record holders grade on test images 2000-9999 and report 0-1999 apart (their "feedback" split)
GRADED_FROM = 2000

#############################################
#               Statistics                  #
#############################################

def student_t_cdf(t, df):
    """P(T <= t) for Student's t with `df` degrees of freedom, from the closed form of
    Abramowitz & Stegun 26.7.3-4 for A(t) = P(|T| < t): exact for every integer df."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    theta = math.atan(t / math.sqrt(df))
    c2, total, term = math.cos(theta)**2, 0.0 if df == 1 else 1.0, 1.0
    for k in range(3 if df % 2 else 2, df - 1 if df % 2 else df, 2):
        term *= c2 * (k - 1) / k
        total += term
    if df % 2:
        two_sided = 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    else:
        two_sided = math.sin(theta) * total
    return 0.5 + two_sided / 2  # A is odd in t, so this holds for negative t too


def t_quantile(q, df):
    """The t with P(T <= t) = q, 0 < q < 1, by bisection on student_t_cdf."""
    if q < 0.5:
        return -t_quantile(1 - q, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < q:
        low, high = high, 2 * high
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if student_t_cdf(mid, df) < q else (low, mid)
    return (low + high) / 2


def summarize(runs, target, graded=False):
    """Counts, then over the finished runs: mean, std and 95% confidence interval of the mean
    (Student t) of the TTA accuracy (with `graded`, also of the accuracy on the graded split), the
    one-sided t-test of mean > target (of the graded accuracy with `graded`), and the mean times.
    What needs two runs is None with one; runs of equal accuracy get an interval of width 0."""
    ok = [r for r in runs if r['status'] == 'ok']
    accuracies = ['tta_val_acc'] + (['graded_tta_val_acc'] if graded else [])
    summary = dict(runs=len(runs), ok=len(ok), failed=len(runs) - len(ok), target=target, tested=accuracies[-1],
                   **{key + suffix: None for key in accuracies for suffix in ('_mean', '_std', '_ci95')},
                   t_statistic=None, p_value=None, time_seconds_mean=None, train_seconds_mean=None)
    if not ok:
        return summary
    summary['time_seconds_mean'] = statistics.mean(r['time_seconds'] for r in ok)
    summary['train_seconds_mean'] = statistics.mean(r['train_seconds'] for r in ok)
    n = len(ok)
    for key in accuracies:
        # statistics computes exactly, then rounds: equal accuracies give exactly their value and std 0
        accs = [r[key] for r in ok]
        mean = summary[key + '_mean'] = statistics.mean(accs)
        if n > 1:
            std = summary[key + '_std'] = statistics.stdev(accs)
            sem = std / math.sqrt(n)
            half_width = t_quantile(0.975, n - 1) * sem
            summary[key + '_ci95'] = [mean - half_width, mean + half_width]
    if n > 1:
        mean, sem = summary[accuracies[-1] + '_mean'], summary[accuracies[-1] + '_std'] / math.sqrt(n)
        # With std 0 the statistic is infinite (or, at the target itself, 0: p = 0.5)
        t = (mean - target) / sem if sem > 0 else math.copysign(math.inf, mean - target) if mean != target else 0.0
        summary['t_statistic'], summary['p_value'] = t, 1 - student_t_cdf(t, n - 1)  # p = P(T >= t)
    return summary


def format_summary(summary):
    lines = ['runs: %d finished, %d failed' % (summary['ok'], summary['failed'])]
    if not summary['ok']:
        return '\n'.join(lines)
    one_run = 'n/a (1 run)'
    for key, what in [('tta_val_acc', ''), ('graded_tta_val_acc', ' (test images %d on, as the 2026 records grade)'
                                                                   % GRADED_FROM)]:
        if key + '_mean' in summary:
            std, ci = summary[key + '_std'], summary[key + '_ci95']
            lines.append('%s: mean %.4f  std %s  95%% CI of the mean %s%s' % (
                key, summary[key + '_mean'], one_run if std is None else '%.4f' % std,
                one_run if ci is None else '[%.4f, %.4f]' % tuple(ci), what))
    lines.append('one-sided t-test of mean %s > %g: %s' % (summary['tested'], summary['target'], one_run
                 if summary['p_value'] is None else 't = %.2f, p = %.4g (n = %d)' % (
                     summary['t_statistic'], summary['p_value'], summary['ok'])))
    lines.append('time per run: mean %.3f s (whitening init + training + final TTA, as airbench times it); mean '
                 '%.3f s without the final TTA (as the 2026 records time it)'
                 % (summary['time_seconds_mean'], summary['train_seconds_mean']))
    return '\n'.join(lines)

#############################################
#          Script, flags, files             #
#############################################

def load_script(path):
    """The script at `path` as a new module (tests wrap this to change what a rank runs)."""
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_set(text):
    """--set PATH=VALUE as (path, value), VALUE read as JSON."""
    path, equals, value = text.partition('=')
    if not equals or not path:
        raise argparse.ArgumentTypeError('expected PATH=VALUE (e.g. opt.train_epochs=2.5), not %r' % text)
    try:
        return path, json.loads(value)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError('%s: the value %r is not JSON (%s); quote strings: %s=\'"text"\''
                                         % (path, value, e, path)) from None


def edit_hyp(hyp, path, value):
    """hyp[a][b]... = value for the dotted path 'a.b...'; returns None, or an error message if a key
    is not already in hyp (a typo must not silently do nothing)."""
    *parents, key = path.split('.')
    target, where = hyp, 'hyp'
    for name in parents + [key]:
        if not isinstance(target, dict):
            return '%s is %r, not a dict' % (where, target)
        if name not in target:
            return '%s has no key %r (it has %s)' % (where, name, ', '.join(map(repr, target)))
        parent, target, where = target, target[name], '%s[%r]' % (where, name)
    parent[key] = value
    return None


def writable_dir(parser, flag, folder):
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        parser.error('%s %s: cannot write there (%s); pass another folder' % (flag, folder, e))


def parse_args(argv):
    """The flags, checked; args.module is the loaded script with the --set edits applied to its hyp."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                     epilog='Run i uses seed S+i; under torchrun it runs on rank i mod WORLD_SIZE.')
    parser.add_argument('script', help='an airbench*.py script')
    parser.add_argument('--runs', type=int, default=25, help='timed training runs (default 25)')
    parser.add_argument('--seed', type=int, help='run i uses seed+i (default: a random base seed, logged)')
    parser.add_argument('--device', choices=['auto', 'cuda', 'cpu'], default='auto', help='auto: CUDA if any')
    parser.add_argument('--data-dir', default='cifar10', help='where CIFAR-10 is or is downloaded to')
    parser.add_argument('--no-warmup', action='store_true', help='skip the untimed warm-up run on random labels')
    parser.add_argument('--eager', action='store_true', help="run a compiling script's compiled code eagerly: the "
                        "same method without compilation, so --no-warmup is allowed; times are not the compiled "
                        "script's (for accuracy checks on a CPU, and debugging)")
    parser.add_argument('--log-dir', default='logs', help='folder for the JSON log (default ./logs)')
    parser.add_argument('--preset', help="apply the script's PRESETS[PRESET] hyp edits before any --set (e.g. E1 "
                        "for airbench94_progressive.py: every value of Fulcrum's E1 at once)")
    parser.add_argument('--set', dest='sets', metavar='PATH=VALUE', type=parse_set, action='append', default=[],
                        help="set hyp's dotted PATH to a JSON VALUE before anything runs, e.g. opt.train_epochs=2.5 "
                        "(repeatable, applied in order; PATH must already be in hyp)")
    parser.add_argument('--save-logits', metavar='DIR', help="save each run's test logits (float32, test-set order) "
                        "with and without TTA, the test labels and a SHA-256 of the test images as "
                        "DIR/runNNNNN-seedS.pt, for python -m benchmarks.variance DIR")
    parser.add_argument('--graded-split', action='store_true', help='also grade each run on test images %d on '
                        '(2000-9999 of CIFAR-10), as the 2026 record holders grade, and test that mean against the '
                        'target; the log records it' % GRADED_FROM)
    parser.add_argument('--target', type=float, help='accuracy the t-test compares the mean with (default: '
                        'from the file name, 0.94 for airbench94*)')
    args = parser.parse_args(argv)
    if not args.script.endswith('.py') or not os.path.isfile(args.script):
        parser.error('SCRIPT %s: not a .py file' % args.script)
    if args.runs < 1:
        parser.error('--runs: must be a positive integer, not %d' % args.runs)
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is available (use --device cpu or auto)')
    if args.target is None:
        digits = re.search(r'airbench(\d\d)', os.path.basename(args.script))
        if not digits:
            parser.error('--target: %s has no accuracy in its name (airbenchNN); pass --target'
                         % os.path.basename(args.script))
        args.target = int(digits.group(1)) / 100
    with open(args.script) as f, open(__file__) as g:  # now: the log holds the code that ran, even if edited meanwhile
        args.source, args.harness_source = f.read(), g.read()
    args.module = load_script(args.script)
    presets = getattr(args.module, 'PRESETS', {})
    if args.preset is not None and args.preset not in presets:
        parser.error('--preset %s: %s has %s' % (args.preset, os.path.basename(args.script), 'the presets ' + ', '.join(
            presets) if presets else 'no presets'))
    edits = [('--preset %s: ' % args.preset, path, value) for path, value in presets.get(args.preset, {}).items()]
    for flag, path, value in edits + [('--set ', path, value) for path, value in args.sets]:
        error = edit_hyp(args.module.hyp, path, copy.deepcopy(value))  # a copy: the script's PRESETS stay as they are
        if error:
            parser.error('%s%s: %s' % (flag, path, error))
    if args.no_warmup and hasattr(args.module, 'compile_mode') and not args.eager:
        parser.error('--no-warmup: %s compiles during its warm-up, which keeps compilation out of the timed runs'
                     % os.path.basename(args.script))
    if args.save_logits:  # every rank writes its own runs' logits
        writable_dir(parser, '--save-logits', args.save_logits)
    if int(os.environ.get('RANK', 0)) == 0:  # only rank 0 writes the log
        writable_dir(parser, '--log-dir', args.log_dir)
    args.seed = random.SystemRandom().randrange(2**31) if args.seed is None else args.seed
    return args


def atomic_write(path, write_fn, mode='wb'):
    """Write a file through a temporary one in the same folder, so a crash never leaves half a file."""
    tmp = '%s.%d.tmp' % (path, os.getpid())  # beside it (os.replace stays in one file system); mode from umask
    try:
        with open(tmp, mode) as f:
            write_fn(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

#############################################
#                  Runs                     #
#############################################

def compile_mode(module, device):
    """The script's torch.compile mode on `device`; None for a script that runs eagerly."""
    return module.compile_mode(device) if hasattr(module, 'compile_mode') else None


def graphs_compiled():
    return torch._dynamo.utils.counters['stats']['unique_graphs']


def load_data(module, data_dir, device, rank, local_rank, world_size):
    """((train_loader, test_loader), None), or (None, the error). Under torchrun the ranks take turns:
    global rank 0 prepares the data dir first (download, cache), then each node's local rank 0 (for
    node-local data dirs), then the rest only read, so no two processes write the same file."""
    hyp, turn = module.hyp, 0 if rank == 0 else 1 if local_rank == 0 else 2
    loaders, error = None, None
    for this_turn in range(3 if world_size > 1 else 1):
        if this_turn == turn:
            try:
                loaders = (module.CifarLoader(data_dir, train=True, batch_size=hyp['opt']['batch_size'],
                                              aug=hyp['aug'], device=device),
                           module.CifarLoader(data_dir, train=False, batch_size=2000, device=device))
            except module.DataError as e:
                error = str(e)
        if world_size > 1:  # everyone learns of a failure, and stops
            errors = [None] * world_size
            torch.distributed.all_gather_object(errors, error)
            error = next((e for e in errors if e), None)
        if error:
            return None, error
    return loaders, None


def one_run(args, train_loader, test_loader, i, rank, device, on_epoch=None):
    """Run i (counting from 0) as its log entry; a diverged run is reported and logged, not raised."""
    module, run, seed, where = args.module, i + 1, args.seed + i, dict(rank=rank, device=str(device))
    try:
        result = module.train(module.hyp, train_loader, test_loader, seed=seed, run=run, verbose=rank == 0,
                              **dict(on_epoch=on_epoch) if on_epoch else {})
    except module.TrainingDiverged as e:
        print('%s: run %d (seed %d) failed: %s' % (PROG, run, seed, e), file=sys.stderr)
        return dict(run=run, seed=seed, status='diverged', error=str(e), **where)
    if args.save_logits:
        save_logits(args.save_logits, module, result, test_loader, run, seed)
    entry = dict(run=run, seed=seed, status='ok', tta_val_acc=result['tta_val_acc'], val_acc=result['val_acc'],
                 time_seconds=result['time_seconds'], train_seconds=result['train_seconds'], **where)
    if args.graded_split:
        graded = result['logits'][GRADED_FROM:].argmax(1) == test_loader.labels[GRADED_FROM:]
        entry['graded_tta_val_acc'] = graded.float().mean().item()
    return entry


def save_logits(folder, module, result, test_loader, run, seed):
    """DIR/runNNNNN-seedS.pt: the run's final TTA logits and, from the same trained net outside the timed span, its
    logits without TTA (level 0), float32 on the CPU (loads anywhere; fp16 converts to it exactly), with the labels
    and a fingerprint of the test images, so that an analysis can check that every run saw the same test set."""
    logits_no_tta = module.infer(result['net'], test_loader, 0).float().cpu()
    labels = test_loader.labels.cpu()
    record = dict(logits=result['logits'].float().cpu(), labels=labels, run=run, seed=seed,
                  tta_val_acc=result['tta_val_acc'], tta_level=module.hyp['net']['tta_level'],
                  logits_no_tta=logits_no_tta, no_tta_val_acc=(logits_no_tta.argmax(1) == labels).float().mean().item(),
                  test_images_sha256=images_sha256(test_loader))
    atomic_write(os.path.join(folder, 'run%05d-seed%d.pt' % (run, seed)), lambda f: torch.save(record, f))


@functools.lru_cache(maxsize=1)  # once per process: the harness has one test loader
def images_sha256(loader):
    """SHA-256 of the loader's images as the uint8 N,3,32,32 bytes they were read from (x * 255, rounded: exact in
    fp16 too), so the same test set gives the same digest on every device and precision."""
    images = (loader.images.float() * 255).round().to(torch.uint8).cpu().contiguous()
    return hashlib.sha256(images.numpy().tobytes()).hexdigest()


def stop_once(signum, frame):
    """The first Ctrl-C stops the runs; any later one (torchrun forwards its own) is ignored, so that
    the summary and the log of the finished runs are still written."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def run_all(args, device, rank, local_rank, world_size):
    module, mode = args.module, None if args.eager else compile_mode(args.module, device)
    say = print if rank == 0 else (lambda *a, **k: None)  # other ranks print only problems
    say('note: CPU run in float32, for tests and laptops; timings mean nothing for GPUs' if device.type == 'cpu'
        else 'device: %s' % torch.cuda.get_device_name(device))
    if mode:
        say("note: torch.compile(mode='%s') compiles during the warm-up run" % mode)
    elif args.eager and compile_mode(module, device):
        say("note: --eager: the script's compiled code runs eagerly; times are not the compiled script's")
    loaders, error = load_data(module, args.data_dir, device, rank, local_rank, world_size)
    if loaders and len(loaders[0]) == 0:
        error = '%d training images are fewer than one batch of %d' % (len(loaders[0].images), loaders[0].batch_size)
    elif loaders and args.graded_split and len(loaders[1].images) <= GRADED_FROM:
        error = '--graded-split grades test images %d on, and this test set has %d' % (GRADED_FROM,
                                                                                       len(loaders[1].images))
    if error:
        if rank == 0:
            print('%s: error: %s' % (PROG, error), file=sys.stderr)
        return 1
    train_loader, test_loader = loaders
    counts = {'train': len(train_loader.images), 'test': len(test_loader.images)}
    say('data: %d train / %d test images from %s%s' % (counts['train'], counts['test'], args.data_dir,
        '' if counts == CIFAR10_COUNTS else ' (not the full 50000 / 10000 of CIFAR-10)'))
    say('runs: %d, run i uses seed %d+i, device %s%s' % (args.runs, args.seed, device, ', %d processes (run i on '
        'rank i mod %d)' % (world_size, world_size) if world_size > 1 else ''))
    say(module.format_row({c: c for c in module.LOG_COLUMNS}))
    on_epoch = None  # the script's forecast of the command's time, if it has one; rank 0 has the most runs
    if rank == 0 and hasattr(module, 'Forecast'):
        shorter = None if args.runs == 1 and args.no_warmup else '--eager --no-warmup --runs 1' if mode else \
            '--runs 1 --no-warmup'
        phases = len(range(0, args.runs, world_size)) + (not args.no_warmup)
        on_epoch = module.Forecast(module.hyp, train_loader, phases, shorter, args.start).on_epoch

    runs, interrupted, warmup_seconds, graphs_before, new_graphs = [], False, None, None, None
    ctrl_c = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # not if started with it ignored
    if ctrl_c:
        signal.signal(signal.SIGINT, stop_once)
    try:
        if not args.no_warmup:  # untimed, on random labels: warms up cuDNN, and compiles where the script does
            warmup_seconds = module.warm_up(module.hyp, train_loader, test_loader, args.seed, verbose=rank == 0,
                                            **dict(on_epoch=on_epoch) if on_epoch else {})
            say('warm-up: %.1f s, untimed%s' % (warmup_seconds, ', including compilation' if mode else ''))
        graphs_before = graphs_compiled()
        for i in range(rank, args.runs, world_size):
            runs.append(one_run(args, train_loader, test_loader, i, rank, device, on_epoch))
    except KeyboardInterrupt:
        interrupted = True
    if ctrl_c:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # from here on a Ctrl-C would only lose the log
    if graphs_before is not None:
        new_graphs = graphs_compiled() - graphs_before
    if world_size > 1:  # rank 0 gathers every rank's runs
        parts = [None] * world_size if rank == 0 else None
        torch.distributed.gather_object((runs, interrupted, new_graphs), parts, dst=0)
        if rank == 0:
            runs = sorted((r for part, _, _ in parts for r in part), key=lambda r: r['run'])
            interrupted = any(part_interrupted for _, part_interrupted, _ in parts)
            counted = [n for _, _, n in parts if n is not None]
            new_graphs = sum(counted) if counted else None
    code = report(args, runs, interrupted, warmup_seconds, new_graphs, counts, train_loader, device,
                  world_size) if rank == 0 else None
    if world_size > 1:  # the others wait until the log is written: torchrun stops every rank once one ends nonzero
        shared = [code]
        torch.distributed.broadcast_object_list(shared, src=0)
        code = shared[0]
    return code


def report(args, runs, interrupted, warmup_seconds, new_graphs, counts, train_loader, device, world_size):
    """Rank 0: every run in order (under torchrun), the summary, the log. Returns the exit code."""
    for r in runs if world_size > 1 else []:
        print('run %d (seed %d, rank %d, %s): %s' % (r['run'], r['seed'], r['rank'], r['device'], r['status'] if
              r['status'] != 'ok' else 'tta_val_acc %.4f, %.3f s' % (r['tta_val_acc'], r['time_seconds'])))
    if interrupted:
        print('\ninterrupted: summarizing the %d finished runs' % len(runs))
    summary = summarize(runs, args.target, graded=args.graded_split)
    print(format_summary(summary))
    mode = None if args.eager else compile_mode(args.module, device)
    if mode:  # must be 0: the warm-up compiles everything, so that no timed run includes compilation
        print('graphs compiled during the timed runs: %s' % (
            'n/a (the warm-up did not finish)' if new_graphs is None else new_graphs if new_graphs == 0
            else '%d (should be 0: those runs\' times include compilation)' % new_graphs))
    record = dict(
        script=os.path.basename(args.script), script_path=os.path.abspath(args.script), argv=args.argv,
        preset=args.preset, sets=[[path, value] for path, value in args.sets], hyp=args.module.hyp,
        grading='test images %d-%d' % (GRADED_FROM, counts['test'] - 1) if args.graded_split else
        'all %d test images' % counts['test'], target=args.target, seed=args.seed,
        world_size=world_size, data_dir=os.path.abspath(args.data_dir), data_counts=counts, device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu',
        dtype=str(train_loader.images.dtype).replace('torch.', ''), torch_version=torch.__version__,
        python_version=platform.python_version(), warmup_seconds=warmup_seconds,
        compile=dict(mode=mode, graphs_compiled_in_timed_runs=new_graphs) if mode else None, eager=args.eager,
        interrupted=interrupted, runs=runs, summary=summary, source=args.source, harness_source=args.harness_source)
    stem = os.path.splitext(os.path.basename(args.script))[0]
    path = os.path.join(args.log_dir, '%s-harness-%s-%d.json' % (stem, time.strftime('%Y%m%d-%H%M%S'), os.getpid()))
    atomic_write(path, lambda f: json.dump(record, f, indent=1), mode='w')
    print('log: %s' % path)
    return 130 if interrupted else 1 if summary['failed'] else 0


def main(argv=None):
    """Exit codes: 0 every run finished, 1 an error (one line), a diverged run or a failed rank, 2 a bad
    flag, 130 Ctrl-C."""
    if tuple(int(part) for part in torch.__version__.split('.')[:2]) < MIN_TORCH:  # as the scripts' main() checks
        print('%s: error: torch %s is too old: the scripts need torch %d.%d or newer'
              % ((PROG, torch.__version__) + MIN_TORCH), file=sys.stderr)
        return 1
    start = time.perf_counter()
    args = parse_args(argv)
    args.argv, args.start = sys.argv[1:] if argv is None else list(argv), start
    # Before any process group exists: imported later (the first optimizer step does), dynamo keeps
    # references to the group, destroy_process_group cannot free it, and gloo's threads then outlive
    # main() and can abort the process as Python shuts down
    import torch._dynamo as dynamo  # noqa: F401 (`import torch._dynamo` would make torch a local)
    # torchrun sets these; without it this is one process doing every run
    rank, local_rank = int(os.environ.get('RANK', 0)), int(os.environ.get('LOCAL_RANK', 0))
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    use_cuda = args.device == 'cuda' or (args.device == 'auto' and torch.cuda.is_available())
    device = torch.device('cuda', local_rank) if use_cuda else torch.device('cpu')
    previous_ctrl_c = signal.getsignal(signal.SIGINT)
    try:
        if world_size > 1:
            if use_cuda:
                torch.cuda.set_device(device)
            torch.distributed.init_process_group('nccl' if use_cuda else 'gloo',
                                                 timeout=datetime.timedelta(seconds=DIST_TIMEOUT_SECONDS))
            seed = [args.seed]
            torch.distributed.broadcast_object_list(seed, src=0)  # rank 0's base seed, drawn or given
            args.seed = seed[0]
        with torch.compiler.set_stance('force_eager') if args.eager else contextlib.nullcontext():
            return run_all(args, device, rank, local_rank, world_size)
    except Exception as e:
        if world_size == 1:
            raise
        print('%s: rank %d failed: %s: %s' % (PROG, rank, type(e).__name__, e), file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, previous_ctrl_c)
        if world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == '__main__':
    sys.exit(main())
