"""airbench96_faster.py on real images: accuracy, where the time goes, and what the filter keeps.

On CIFAR-10 (in cifar10/ at the repository root, downloaded there if absent) or, with --shared-data
DIR, the project's JPEG-re-encoded copy (written in the official on-disk format once), compiles both
networks in an untimed warm-up of 2 steps (the harness's warm-up would repeat the whole run,
which on a CPU costs as much as the run itself), then calls train() once in this process and appends to
benchmarks/RESULTS.md:

- the TTA accuracy, and the validation accuracy after every epoch;
- the timed span split into the whitening inits, the training stream (augmentation), the
  proxy's part of each step (scoring all 1024 images, picking the hardest 512, learning every
  4th step), the main network's part (training on the kept 512, the LR schedulers, the
  lookahead) and the final TTA;
- per epoch, the mean per-example loss of the kept and the dropped halves, as the proxy scored
  them (every step), and as the main network itself scores them (in eval mode, without
  gradients, on the same augmented batch every --probe-every steps), with the main network's
  accuracy on each half and the share of the proxy's kept images among the main network's
  own hardest half (0.5 would be a random pick).

    python -m benchmarks.faster_real_images --set opt.train_epochs=10   # from the repository root

--set edits hyp as harness.py's --set does (its loader and editor: benchmarks.common.load_script).

The split comes from timestamps taken where train() hands control to code outside it: the
training stream (wrapped), its record hook, and device_clock (wrapped). On a CPU every op has
finished when the timestamp is taken, so the split is exact; on CUDA each timestamp
synchronizes the device, which slows the run. The main network's probe is timed and reported
apart; the timed span minus the probe is what the run costs without it.
"""
import argparse
import copy
import datetime
import json
import math
import os
import sys
import time

if not __package__:  # run as a file, the repository's imports below would fail: say how to run it
    print('run it from the repository root as: python -m benchmarks.%s' % os.path.basename(__file__)[:-3],
          file=sys.stderr)
    sys.exit(2)

import torch

from benchmarks.common import (RESULTS, ROOT, add_data_flags, append_result, check_data_flags, load_script,
                               machine_description, parse_setting, prepare_data, settings_flags, settings_text)

SCRIPT = 'airbench96_faster.py'
PARTS = ['whitening', 'stream', 'proxy', 'main', 'tta']  # the timed span, in the order of a run


class Timeline:
    """Timestamps of a train() call, each naming the part of the run that begins there."""

    def __init__(self, clock, epochs):
        self.clock, self.epochs = clock, epochs
        self.events, self.clock_calls = [], 0

    def stamp(self, part):
        self.events.append((self.clock(), part))

    def device_clock_part(self):
        """What follows the k-th device_clock call of train(): the whitening init, the untimed
        setup of the lookahead, an epoch's steps, its untimed progress evaluation, the final TTA."""
        k, self.clock_calls = self.clock_calls, self.clock_calls + 1
        if k == 0:
            return 'whitening'
        if k == 1:
            return 'untimed'  # train() sets up the lookahead outside its clock
        if k < 2 + 2 * self.epochs:
            return 'epoch' if k % 2 == 0 else 'untimed'  # an epoch's steps begin / its progress evaluation
        return 'tta' if k == 2 + 2 * self.epochs else 'end'

    def seconds(self):
        """{part: seconds} overall and a list of such dicts for the steps of each epoch."""
        total, per_epoch = {}, []
        for (start, part), (end, _) in zip(self.events, self.events[1:]):
            if part == 'epoch':
                per_epoch.append({})
                part = 'other'
            total[part] = total.get(part, 0.0) + end - start
            if per_epoch and part in ('stream', 'proxy', 'main', 'probe', 'other'):
                per_epoch[-1][part] = per_epoch[-1].get(part, 0.0) + end - start
        return total, per_epoch


class Probe:
    """Passed to train() as `record`: train() appends to it after the proxy's part of every step."""

    def __init__(self, timeline, main_net, example_loss_fn, probe_every, steps_per_epoch):
        self.timeline, self.main_net, self.loss_fn = timeline, main_net, example_loss_fn
        self.probe_every, self.steps_per_epoch = probe_every, steps_per_epoch
        self.batch, self.step, self.rows = None, 0, []

    def append(self, entry):
        self.timeline.stamp('probe')
        kept = torch.zeros(len(entry['indices']), dtype=torch.bool, device=entry['kept'].device)
        kept[entry['kept']] = True
        losses = entry['proxy_losses'].float()
        row = dict(epoch=self.step // self.steps_per_epoch, proxy_kept=losses[kept].mean().item(),
                   proxy_dropped=losses[~kept].mean().item())
        if self.step % self.probe_every == 0:
            indices, inputs, labels = self.batch
            assert torch.equal(indices, entry['indices'])  # the batch the proxy just scored
            net = self.main_net
            with torch.no_grad():
                net.eval()
                logits = net(inputs)
                net.train()
            main_losses = self.loss_fn(logits, labels)
            correct = (logits.argmax(1) == labels).float()
            hardest = main_losses.topk(int(kept.sum())).indices
            row.update(main_kept=main_losses[kept].mean().item(), main_dropped=main_losses[~kept].mean().item(),
                       acc_kept=correct[kept].mean().item(), acc_dropped=correct[~kept].mean().item(),
                       overlap=kept[hardest].float().mean().item())
        self.rows.append(row)
        self.step += 1
        self.timeline.stamp('main')


def instrument(module, timeline, probe):
    """Wrap the training stream and device_clock of `module` so that they stamp the timeline;
    returns a function that unwraps them."""
    stream, device_clock = module.training_stream, module.device_clock

    def stamped_stream(loader):
        batches = stream(loader)
        while True:
            timeline.stamp('stream')
            probe.batch = next(batches)
            timeline.stamp('proxy')
            yield probe.batch

    def stamped_clock(device):
        now = device_clock(device)
        timeline.events.append((now, timeline.device_clock_part()))
        return now

    def restore():
        module.training_stream, module.device_clock = stream, device_clock
    module.training_stream, module.device_clock = stamped_stream, stamped_clock
    return restore


def measure(module, hyp, train_loader, test_loader, seed, probe_every):
    """One train() of `module` (airbench96_faster) with its time split and the filter's choices
    recorded; returns (train()'s result, the Timeline, the Probe)."""
    device = train_loader.images.device
    device_clock = module.device_clock
    timeline = Timeline(lambda: device_clock(device), math.ceil(hyp['opt']['train_epochs']))
    main_net = module.fresh_net(hyp, device, train_loader.policy)[0]  # the net train() will reload and train
    probe = Probe(timeline, main_net, module.make_example_loss_fn(hyp), probe_every, len(train_loader))
    restore = instrument(module, timeline, probe)
    try:
        result = module.train(hyp, train_loader, test_loader, seed=seed, run=1, record=probe)
    finally:
        restore()
    return result, timeline, probe


def mean(values):
    return sum(values) / len(values) if values else float('nan')


def main():
    parser = argparse.ArgumentParser(prog='python -m benchmarks.faster_real_images',
                                     description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    add_data_flags(parser)
    parser.add_argument('--set', type=parse_setting, action='append', default=[], metavar='PATH=JSON',
                        help='edit hyp before training, e.g. opt.train_epochs=10')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--probe-every', type=int, default=16, help="steps between the main network's probes")
    parser.add_argument('--results', default=RESULTS, help='the file the entry is appended to')
    args = parser.parse_args()
    check_data_flags(parser, args)

    args.data = prepare_data(args)
    module = load_script(SCRIPT, args.set)
    hyp, device = module.hyp, torch.device(args.device)
    train_loader = module.CifarLoader(args.data_dir, train=True, batch_size=hyp['opt']['batch_size'], aug=hyp['aug'],
                                      device=device)
    test_loader = module.CifarLoader(args.data_dir, train=False, batch_size=2000, device=device)

    # Warm-up: 2 steps (one where the proxy learns, one where it only scores) and both evaluations
    # on one test batch of the real batch size compile every graph the timed run uses
    warmup_hyp = copy.deepcopy(hyp)
    warmup_hyp['opt']['train_epochs'] = 2 / len(train_loader)
    warmup_test = copy.copy(test_loader)
    warmup_test.images, warmup_test.labels = test_loader.images[:2000], test_loader.labels[:2000]
    start = time.perf_counter()
    module.train(warmup_hyp, train_loader, warmup_test, seed=args.seed, run='warmup', verbose=False)
    warmup_seconds = time.perf_counter() - start
    graphs_before = torch._dynamo.utils.counters['stats']['unique_graphs']

    result, timeline, probe = measure(module, hyp, train_loader, test_loader, args.seed, args.probe_every)
    graphs_compiled = torch._dynamo.utils.counters['stats']['unique_graphs'] - graphs_before
    record(args, module, result, timeline, probe, warmup_seconds, graphs_compiled, train_loader)


FILTER_COLUMNS = ['proxy_kept', 'proxy_dropped', 'main_kept', 'main_dropped', 'acc_kept', 'acc_dropped', 'overlap']


def filter_means(rows):
    """Means over steps of the Probe's columns (the main network's: over its probed steps only)."""
    return {key: mean([row[key] for row in rows if key in row]) for key in FILTER_COLUMNS}


def timed_parts(total):
    """The parts of train()'s timed span in `total` (Timeline.seconds()), the probe included."""
    return {part: total.get(part, 0.0) for part in PARTS + ['probe', 'other']}


def table_row(label, val_acc, seconds, means):
    return '| %s | %s | %.0f | %.0f | %.3f | %.3f | %.3f | %.3f | %.1f%% | %.1f%% | %.1f%% |' % (
        label, val_acc, seconds.get('proxy', 0.0), seconds.get('main', 0.0),
        *(means[key] for key in FILTER_COLUMNS[:4]), *(100 * means[key] for key in FILTER_COLUMNS[4:]))


def record(args, module, result, timeline, probe, warmup_seconds, graphs_compiled, train_loader):
    total, per_epoch = timeline.seconds()
    parts = timed_parts(total)
    method_seconds = sum(parts.values()) - parts['probe']
    steps_seconds = sum(parts[p] for p in ('stream', 'proxy', 'main'))
    log = dict(script=SCRIPT, argv=sys.argv[1:], hyp=module.hyp, seed=args.seed, torch_version=torch.__version__,
               device=args.device, machine=machine_description(args.device), warmup_seconds=warmup_seconds,
               graphs_compiled_in_timed_run=graphs_compiled, tta_val_acc=result['tta_val_acc'],
               time_seconds=result['time_seconds'], seconds=total, seconds_per_epoch=per_epoch,
               epochs=result['epochs'], probe_rows=probe.rows)
    log_path = os.path.join(ROOT, 'benchmarks', 'logs', 'faster-split-%s-%d.json' % (
        datetime.datetime.now().strftime('%Y%m%d-%H%M%S'), os.getpid()))
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, 'w') as f:
        json.dump(log, f, indent=1)

    lines = [
        '### %s on real images: accuracy, time split, what the filter keeps; %s, %s' % (
            SCRIPT, args.device, time.strftime('%Y-%m-%d')),
        '',
        '- command: `python -m benchmarks.faster_real_images --device %s --seed %d --probe-every %d%s`' % (
            args.device, args.seed, args.probe_every,
            settings_flags(args.set)),
        '- data: %s; hyp edits: %s' % (args.data, settings_text(args.set) or 'none'),
        '- machine: %s; torch %s; dtype %s; n = 1 run, seed %d' % (
            machine_description(args.device), torch.__version__, str(train_loader.images.dtype).replace('torch.', ''),
            args.seed),
        '- TTA accuracy: %.2f%%; validation accuracy (no TTA) after each epoch: %s' % (
            100 * result['tta_val_acc'], ', '.join('%.1f' % (100 * e['val_acc']) for e in result['epochs'])),
        "- timed seconds (train()): %.0f, of which the main network's probe %.0f (not part of the method); "
        'untimed progress evaluations %.0f; warm-up (compiling both networks, 2 steps) %.0f; '
        'graphs compiled during the timed run: %d' % (
            result['time_seconds'], parts['probe'], total.get('untimed', 0.0), warmup_seconds, graphs_compiled),
        '- the timed span without the probe (%.0f s): %s; loop bookkeeping %.1f s' % (
            method_seconds, ', '.join('%s %.0f s (%.1f%%)' % (p, parts[p], 100 * parts[p] / method_seconds) for p in PARTS),
            parts['other']),
        '- of the training steps alone (%.0f s): the proxy %.1f%%, the main network %.1f%%, the stream %.1f%%' % (
            steps_seconds, *(100 * parts[p] / steps_seconds for p in ('proxy', 'main', 'stream'))),
        "- the parts add up to %.1f s of train()'s %.1f s; log: `%s`" % (
            sum(parts.values()), result['time_seconds'], os.path.relpath(log_path, ROOT)),
        '',
        '| epoch | val acc | proxy s | main s | proxy loss kept | dropped | main-net loss kept | dropped | '
        "main-net acc kept | dropped | kept among main's hardest half |",
        '|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for e, (seconds, epoch) in enumerate(zip(per_epoch, result['epochs'])):
        rows = [row for row in probe.rows if row['epoch'] == e]
        lines.append(table_row(e + 1, '%.1f%%' % (100 * epoch['val_acc']), seconds, filter_means(rows)))
    lines.append(table_row('all', '', total, filter_means(probe.rows)))
    lines += ['', '- proxy columns: every step (%d steps); main-network columns: one step in %d (%d probes of %d images)' % (
        len(probe.rows), args.probe_every, sum('main_kept' in row for row in probe.rows), module.hyp['opt']['batch_size'])]
    append_result(lines, args.results)


if __name__ == '__main__':
    main()
