"""airbench96_faster.py's method: the training stream, the proxy network, and what each net trains on."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.flop_counter import FlopCounterMode

from conftest import TINY_HYP, edited_hyp, load_script, make_loaders
from benchmarks import faster_real_images
from support.op_counting import SYNC_OPS, recording_by_clock


@pytest.fixture(scope='module')
def faster():
    return load_script('airbench96_faster.py')


def test_proxy_network_matches_spec(faster):
    proxy = faster.make_net(faster.proxy_hyp(faster.hyp))
    assert sum(p.numel() for p in proxy.parameters()) == 146744
    with FlopCounterMode(display=False) as counter:
        proxy(torch.randn(1, 3, 32, 32))
    assert round(counter.get_total_flops() / 1e6, 2) == 34.17
    assert faster.proxy_hyp(faster.hyp)['opt'] is faster.hyp['opt']  # one optimizer configuration for both


def test_main_net_is_airbench96s_and_proxy_is_airbench94s_design(faster):
    airbench94, airbench96 = load_script('airbench94.py'), load_script('airbench96.py')
    proxy_hyp94 = copy.deepcopy(airbench94.hyp)
    proxy_hyp94['net'].update(widths=faster.hyp['proxy']['widths'], batchnorm_momentum=0.1)
    x = torch.randn(4, 3, 32, 32)
    for ours, (theirs, their_hyp) in [(faster.hyp, (airbench96, airbench96.hyp)),
                                      (faster.proxy_hyp(faster.hyp), (airbench94, proxy_hyp94))]:
        torch.manual_seed(0)
        a = faster.make_net(ours)
        torch.manual_seed(0)
        b = theirs.make_net(their_hyp)
        assert a.state_dict().keys() == b.state_dict().keys()
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
        assert torch.equal(a(x), b(x))


def stream_loader(faster, cifar_source, n, batch_size, aug):
    """A training loader over n random images, labels 0..9 in turn."""
    loader = faster.CifarLoader(cifar_source, train=True, batch_size=batch_size, aug=aug, device='cpu')
    torch.manual_seed(123)
    loader.images, loader.labels = torch.rand(n, 3, 32, 32), torch.arange(n) % 10
    return loader


def first_batches(faster, loader, count, seed=0):
    torch.manual_seed(seed)
    stream = faster.training_stream(loader)
    return [next(stream) for _ in range(count)]


def test_stream_shows_every_image_once_per_epoch_in_full_batches_across_epochs(faster, cifar_source):
    loader = stream_loader(faster, cifar_source, 300, 128, faster.hyp['aug'])
    batches = first_batches(faster, loader, 7)  # 896 images: two epochs and most of a third
    assert all(len(index) == len(images) == len(labels) == 128 for index, images, labels in batches)
    assert all(torch.equal(labels, loader.labels[index]) for index, _, labels in batches)
    order = torch.cat([index for index, _, _ in batches])
    epochs = order[:300], order[300:600], order[600:]
    assert torch.equal(epochs[0].sort().values, torch.arange(300)) and torch.equal(epochs[1].sort().values, torch.arange(300))
    assert len(set(epochs[2].tolist())) == 296 and not torch.equal(epochs[0], epochs[1])  # a fresh order each epoch
    # 300 = 2 x 128 + 44: the third batch ends epoch 1 with its first 44 images and starts epoch 2
    straddling = batches[2][0]
    assert set(straddling[:44].tolist()) == set(range(300)) - set(order[:256].tolist())
    assert torch.equal(straddling[44:], epochs[1][:84])


def test_the_same_seed_gives_the_same_stream(faster, cifar_source):
    loader = stream_loader(faster, cifar_source, 300, 128, faster.hyp['aug'])
    first, again, other = (first_batches(faster, loader, 4, seed) for seed in (0, 0, 1))
    for a, b in zip(first, again):
        assert all(torch.equal(x, y) for x, y in zip(a, b))  # indices, augmented images, labels
    assert not torch.equal(first[0][0], other[0][0]) and not torch.equal(first[0][1], other[0][1])


def test_stream_augments_by_exact_translation_alternating_flip_and_cutout(faster, cifar_source):
    n, pixels, size = 40, 4, 12
    loader = stream_loader(faster, cifar_source, n, 32, dict(flip=True, translate=pixels, cutout=size))
    batches = first_batches(faster, loader, 4)  # 128 images: three epochs and a bit
    images, order = torch.cat([b[1] for b in batches])[:3 * n], torch.cat([b[0] for b in batches])[:3 * n]
    padded = F.pad(loader.normalize(loader.images), (pixels,) * 4, mode='reflect')
    shifts = [(dy, dx) for dy in range(2 * pixels + 1) for dx in range(2 * pixels + 1)]
    crops = torch.stack([padded[:, :, dy:dy + 32, dx:dx + 32] for dy, dx in shifts], 1)  # n, 81, C, H, W
    candidates = torch.cat([crops, crops.flip(-1)], 1)  # every shift, plain then mirrored
    mirrored = torch.zeros(3, n, dtype=torch.bool)
    for position, (x, i) in enumerate(zip(images, order.tolist())):
        zero = (x == 0).all(0)
        rows, cols = zero.nonzero(as_tuple=True)
        top, left = int(rows.min()), int(cols.min())
        assert zero.sum() == size * size and zero[top:top + size, left:left + size].all()  # one square, inside
        matches = ((candidates[i] - x).abs() * ~zero).amax((1, 2, 3)) == 0
        assert matches.sum() == 1  # an exact reflect-padded crop, mirrored or not
        mirrored[position // n, i] = bool(matches.nonzero()[0, 0] >= len(shifts))
    assert (mirrored[0] != mirrored[1]).all() and (mirrored[1] != mirrored[2]).all()  # alternating flip
    assert 0.25 < mirrored[0].float().mean() < 0.75  # a coin per image in the first epoch


def test_select_hardest_keeps_exactly_the_highest_losses(faster):
    torch.manual_seed(0)
    losses = torch.randperm(1024).float() / 100
    kept = faster.select_hardest(losses, 512)
    assert len(kept) == 512 and set(kept.tolist()) == set((losses >= 5.12).nonzero().flatten().tolist())


def test_per_example_loss_is_float32_and_sums_to_the_training_loss(faster):
    torch.manual_seed(0)
    logits, labels = torch.randn(64, 10).half(), torch.randint(0, 10, (64,))
    losses = faster.make_example_loss_fn(faster.hyp)(logits, labels)
    assert losses.shape == (64,) and losses.dtype == torch.float
    assert torch.allclose(losses.sum(), faster.make_loss_fn(faster.hyp)(logits, labels))


class Recorded(nn.Module):
    """`model`, recording at every call in training mode its input, its output, and the BatchNorm
    statistics of `net` (the network it runs) before and after (compared later: no sync here)."""

    def __init__(self, model, net):
        super().__init__()
        self.model = model
        self.statistics = [b for name, b in net.named_buffers() if name.endswith(('running_mean', 'running_var'))]
        self.calls = []

    def forward(self, x):
        before = [b.clone() for b in self.statistics]
        output = self.model(x)
        if self.training:
            self.calls.append(dict(inputs=x.clone(), outputs=output.detach().clone(), statistics_before=before,
                                   statistics_after=[b.clone() for b in self.statistics]))
        return output


@pytest.fixture(scope='module')
def recorded_run(faster, cifar_source):
    """One TINY_HYP run with the method's own proxy settings, its nets, optimizer steps, kept
    indices and ops by timed span recorded."""
    hyp = edited_hyp(faster, TINY_HYP)
    train_loader, test_loader = make_loaders(faster, hyp, cifar_source)
    nets, steps, record = [], [], []
    fresh_net = faster.fresh_net

    def recorded_fresh_net(*args):
        net, model = fresh_net(*args)
        nets.append((net, Recorded(model, net)))
        return nets[-1]

    def record_step(optimizer, args, kwargs):
        main = any(p is nets[0][0].head.weight for p in optimizer.param_groups[1]['params'])
        steps.append(dict(net='main' if main else 'proxy', lr=optimizer.param_groups[1]['lr'],
                          whiten_bias_grad=nets[0][0].whiten.bias.grad is not None))

    handle = register_optimizer_step_pre_hook(record_step)
    try:
        with pytest.MonkeyPatch.context() as patch, recording_by_clock(faster) as recorder:
            patch.setattr(faster, 'fresh_net', recorded_fresh_net)
            result = faster.train(hyp, train_loader, test_loader, seed=0, verbose=False, record=record)
    finally:
        handle.remove()
    (net, main), (proxy, proxy_model) = nets
    return dict(hyp=hyp, loader=train_loader, result=result, net=net, main=main, proxy=proxy, proxy_model=proxy_model,
                steps=steps, record=record, timed_ops=recorder.timed_segments(),
                total_steps=math.ceil(len(train_loader) * hyp['opt']['train_epochs']))


def test_proxy_learns_on_every_4th_step_on_the_main_nets_lr_schedule(faster, recorded_run):
    steps, total = recorded_run['steps'], recorded_run['total_steps']
    main_lrs = [s['lr'] for s in steps if s['net'] == 'main']
    assert len(main_lrs) == total == 25
    base_lr = main_lrs[0] / faster.lr_multiplier(0, total, recorded_run['hyp'])
    assert main_lrs == pytest.approx([base_lr * faster.lr_multiplier(i, total, recorded_run['hyp']) for i in range(total)])
    proxy_steps, main_so_far = [], 0
    for s in steps:
        if s['net'] == 'main':
            main_so_far += 1
        else:  # before the main net's step at the same step
            proxy_steps.append(main_so_far)
            assert s['lr'] == pytest.approx(main_lrs[main_so_far])  # its schedule advanced every step
    assert proxy_steps == list(range(0, total, 4))


def test_proxy_scores_every_batch_in_train_mode(recorded_run):
    calls, batch_size = recorded_run['proxy_model'].calls, recorded_run['hyp']['opt']['batch_size']
    assert len(calls) == recorded_run['total_steps'] and all(len(c['inputs']) == batch_size for c in calls)
    for c in calls:  # every BatchNorm statistic updated at every step
        assert all(not torch.equal(a, b) for a, b in zip(c['statistics_before'], c['statistics_after']))
    proxy, net = recorded_run['proxy'], recorded_run['net']
    assert torch.equal(proxy.whiten.bias, torch.zeros(24)) and not proxy.whiten.bias.requires_grad
    assert torch.equal(proxy.whiten.weight, net.whiten.weight)  # its own whitening init, from the same images


def test_main_net_trains_at_each_step_on_the_images_the_proxy_kept(faster, recorded_run):
    record, loader, hyp = recorded_run['record'], recorded_run['loader'], recorded_run['hyp']
    proxy_calls, main_calls = recorded_run['proxy_model'].calls, recorded_run['main'].calls
    assert len(record) == len(proxy_calls) == len(main_calls) == recorded_run['total_steps']
    loss_fn = faster.make_example_loss_fn(hyp)
    for step, (entry, proxy_call, main_call) in enumerate(zip(record, proxy_calls, main_calls)):
        losses = loss_fn(proxy_call['outputs'], loader.labels[entry['indices']])
        assert torch.equal(losses, entry['proxy_losses'])
        hardest = set(losses.topk(64).indices.tolist())
        assert len(entry['kept']) == 64 and set(entry['kept'].tolist()) == hardest, step
        assert torch.equal(main_call['inputs'], proxy_call['inputs'][entry['kept']]), step


def test_main_whitening_bias_trains_every_step_by_default(recorded_run):
    assert recorded_run['hyp']['opt']['whiten_bias_freeze'] is False
    main_steps = [s for s in recorded_run['steps'] if s['net'] == 'main']
    assert all(s['whiten_bias_grad'] for s in main_steps) and len(main_steps) == 25


def test_a_proxy_shaped_like_the_main_network_is_another_network(faster, cifar_source):
    hyp = edited_hyp(faster)
    hyp['proxy'].update(widths=hyp['net']['widths'], convs_per_block=hyp['net']['convs_per_block'])
    result = faster.train(hyp, *make_loaders(faster, hyp, cifar_source), seed=0, verbose=False)
    # The main net's whitening bias trains (freeze off by default), whatever the proxy's shape
    assert result['net'].whiten.bias.abs().min() > 0
    nets = [net for net, _ in faster.compiled_nets.values()]
    assert len({id(net) for net in nets}) == len(nets)


def test_both_nets_whiten_and_train_inside_the_timed_spans_without_host_sync(recorded_run):
    whitening, *epochs, tta = recorded_run['timed_ops']
    assert whitening.count('aten._linalg_eigh') == 2  # the main net's whitening init and the proxy's
    assert [ops.count('aten.topk') for ops in epochs] == [10, 10, 5]  # the proxy's selection, at every step
    for ops in epochs:
        assert sorted(SYNC_OPS.intersection(ops)) == []


def test_the_benchmarks_time_split_adds_up_and_its_probe_changes_nothing(faster, recorded_run, cifar_source):
    """benchmarks/faster_real_images.py: its timestamps split train()'s timed span exactly, the
    proxy's kept half has the higher mean loss at every step, and probing the main network on
    the way leaves the run as it was: the same as a plain train() of the same hyp and seed (both
    compiled; the recorded run ran eagerly under the op recorder, and rounds differently)."""
    hyp = recorded_run['hyp']
    train_loader, test_loader = make_loaders(faster, hyp, cifar_source)
    stream, clock = faster.training_stream, faster.device_clock
    result, timeline, probe = faster_real_images.measure(faster, hyp, train_loader, test_loader, seed=0, probe_every=2)
    assert (faster.training_stream, faster.device_clock) == (stream, clock)  # unwrapped again
    expected = faster.train(hyp, train_loader, test_loader, seed=0, verbose=False)

    def untimed(run):
        return [{k: v for k, v in row.items() if k not in ('time_seconds', 'run')} for row in run['epochs']]
    assert untimed(result) == untimed(expected) and result['tta_val_acc'] == expected['tta_val_acc']

    total, per_epoch = timeline.seconds()
    parts = faster_real_images.timed_parts(total)
    assert sum(parts.values()) == pytest.approx(result['time_seconds'], abs=1e-6)
    assert all(parts[p] > 0 for p in faster_real_images.PARTS + ['probe']) and total['untimed'] > 0
    assert len(per_epoch) == 3 and all(epoch['proxy'] > 0 and epoch['main'] > 0 for epoch in per_epoch)
    assert sum(epoch['main'] for epoch in per_epoch) == pytest.approx(parts['main'])

    assert [row['epoch'] for row in probe.rows] == [0] * 10 + [1] * 10 + [2] * 5
    assert all(row['proxy_kept'] > row['proxy_dropped'] for row in probe.rows)
    assert [i for i, row in enumerate(probe.rows) if 'main_kept' in row] == list(range(0, 25, 2))
    assert all(0 <= row['overlap'] <= 1 and 0 <= row['acc_kept'] <= 1 for row in probe.rows if 'overlap' in row)
