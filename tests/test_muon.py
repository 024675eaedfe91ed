"""airbench94_muon.py against SPEC.md's "airbench94_muon": Newton-Schulz, one Muon step by hand,
the optimizers' groups and learning rates, the network's differences, and a run of the real
schedule (200 steps, the whitening bias trained for exactly 75) at a small scale."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_pre_hook

from conftest import SMALL_HYP, SPEC_FIGURES, edited_hyp, load_script, make_loaders, small_loaders

SCRIPT = 'airbench94_muon.py'
FIGURES = SPEC_FIGURES['airbench94_muon']
COEFFICIENTS = (3.4445, -4.7750, 2.0315)


@pytest.fixture(scope='module')
def muon():
    return load_script(SCRIPT)


def small_run_hyp(edits=()):
    """conftest's SMALL_HYP (its compiled net is shared with other tests), edited further."""
    return edited_hyp(load_script(SCRIPT), SMALL_HYP + list(edits))


def by_hand_newton_schulz(d):
    """SPEC.md's NS, written out: normalize, then 3 quintic iterations, in bfloat16 (d is never tall here)."""
    a, b, c = COEFFICIENTS
    X = d.bfloat16()
    X = X / (X.norm() + 1e-7)
    for _ in range(3):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X


# Newton-Schulz

@pytest.mark.parametrize('shape', [(64, 216), (64, 576), (256, 576), (256, 2304)])  # the six filters' shapes
def test_newton_schulz_puts_every_singular_value_in_half_to_one_and_a_half(muon, shape):
    G = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    X = muon.newton_schulz(G, COEFFICIENTS, 3)
    assert X.shape == shape and X.dtype == torch.bfloat16
    singular_values = torch.linalg.svdvals(X.float())
    assert 0.5 <= singular_values.min() and singular_values.max() <= 1.5  # measured: about 0.67 to 1.21


def test_newton_schulz_transposes_a_tall_input(muon):
    G = torch.randn(576, 64, generator=torch.Generator().manual_seed(1))
    X = muon.newton_schulz(G, COEFFICIENTS, 3)
    assert X.shape == (576, 64)
    assert torch.allclose(X.float(), muon.newton_schulz(G.T, COEFFICIENTS, 3).T.float(), atol=1e-2)
    singular_values = torch.linalg.svdvals(X.float())
    assert 0.5 <= singular_values.min() and singular_values.max() <= 1.5


def test_newton_schulz_works_in_bfloat16_on_the_frobenius_normalized_input(muon):
    G = torch.randn(64, 216, generator=torch.Generator().manual_seed(2))
    for dtype in (torch.float, torch.half):
        assert muon.newton_schulz(G.to(dtype), COEFFICIENTS, 3).dtype == torch.bfloat16
    normalized = muon.newton_schulz(G, COEFFICIENTS, 0)  # no iteration: the normalized input
    expected = G.bfloat16() / (G.bfloat16().norm() + 1e-7)
    assert torch.equal(normalized, expected) and normalized.float().norm() == pytest.approx(1, abs=1e-2)
    assert torch.equal(muon.newton_schulz(64 * G, COEFFICIENTS, 3), muon.newton_schulz(G, COEFFICIENTS, 3))
    assert torch.equal(muon.newton_schulz(G, COEFFICIENTS, 3), by_hand_newton_schulz(G))


def test_compiled_newton_schulz_matches_the_eager_one(muon):
    G = torch.randn(64, 216, generator=torch.Generator().manual_seed(3))  # CUDA runs the compiled one
    compiled = muon.compiled_newton_schulz(G, COEFFICIENTS, 3)
    assert compiled.dtype == torch.bfloat16
    assert torch.allclose(compiled.float(), muon.newton_schulz(G, COEFFICIENTS, 3).float(), atol=1e-2)


# The Muon step

def test_muon_steps_match_the_formulas_by_hand(muon):
    generator = torch.Generator().manual_seed(4)
    w = torch.randn(8, 4, 3, 3, generator=generator)  # C_out, C_in, k, k
    weight = torch.nn.Parameter(w.clone())
    optimizer = muon.Muon([weight], lr=0.24, momentum=0.6, nesterov=True, coefficients=COEFFICIENTS, steps=3)
    buf = torch.zeros_like(w)
    for _ in range(2):  # the second step uses the momentum of the first
        g = torch.randn(w.shape, generator=generator)
        weight.grad = g.clone()
        optimizer.step()
        buf = 0.6 * buf + g
        direction = g + 0.6 * buf
        w = w * math.sqrt(8) / w.norm()  # Frobenius norm sqrt(C_out) before the update
        w = w - 0.24 * by_hand_newton_schulz(direction.reshape(8, -1)).float().view(w.shape)
        assert torch.allclose(optimizer.state[weight]['momentum_buffer'], buf, atol=1e-6)
        assert torch.allclose(weight.detach(), w, atol=1e-5)


def test_a_step_under_the_cuda_policy_agrees_with_fp32_up_to_bfloat16_noise(muon, cifar_source):
    """fp16 channels_last filters and gradients, fp32 BatchNorm, Newton-Schulz in bfloat16: one
    step of both optimizers from the same weights and batch, against the same step in fp32."""
    hyp = small_run_hyp()
    train_loader, _ = small_loaders(muon, hyp, cifar_source)
    inputs, labels = next(iter(train_loader))
    torch.manual_seed(0)
    start = muon.make_net(hyp)
    muon.init_whitening_conv(start.whiten, train_loader.normalize(train_loader.images), hyp['net']['whiten_eps'])
    losses, updates = [], []
    for policy in (muon.precision_policy('cpu'), muon.precision_policy('cuda')):
        net = muon.make_net(hyp, 'cpu', policy)
        net.load_state_dict(start.state_dict())
        optimizers = muon.make_optimizers(net, hyp, 20)
        loss = muon.make_loss_fn(hyp)(net(inputs.to(policy['dtype']).contiguous(memory_format=policy['memory_format'])),
                                      labels)
        loss.backward()
        muon.set_learning_rates(optimizers, 0)
        for optimizer in optimizers:
            optimizer.step()
        losses.append(loss.item())
        updates.append({name: p.detach().float() - start.state_dict()[name] for name, p in net.named_parameters()})
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
    fp32, fp16 = updates
    assert (fp16['head.weight'] - fp32['head.weight']).norm() <= 0.05 * fp32['head.weight'].norm()
    filters = [name for name, update in fp32.items() if update.dim() == 4 and name != 'whiten.weight']
    assert len(filters) == 6
    for name in filters:  # NS amplifies rounding differences along the direction's small singular values:
        assert (fp16[name] - fp32[name]).norm() <= 0.2 * fp32[name].norm(), name  # measured 5 to 9%


def test_muon_steps_without_nesterov_along_the_momentum_buffer(muon):
    generator = torch.Generator().manual_seed(5)
    w = torch.randn(4, 2, 3, 3, generator=generator)
    weight = torch.nn.Parameter(w.clone())
    optimizer = muon.Muon([weight], lr=0.1, momentum=0.5, nesterov=False, coefficients=COEFFICIENTS, steps=3)
    g = torch.randn(w.shape, generator=generator)
    weight.grad = g.clone()
    optimizer.step()
    expected = w * 2 / w.norm() - 0.1 * by_hand_newton_schulz(g.reshape(4, -1)).float().view(w.shape)
    assert torch.allclose(weight.detach(), expected, atol=1e-5)


# The optimizers and their learning rates

def test_muon_takes_exactly_the_six_3x3_filters_and_sgd_the_rest_in_three_groups(muon):
    hyp = muon.hyp
    net = muon.make_net(hyp)
    sgd, filters_optimizer = muon.make_optimizers(net, hyp, FIGURES['steps'])
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 6
    muon_group, = filters_optimizer.param_groups
    assert [id(p) for p in muon_group['params']] == [id(m.weight) for m in convs]
    assert (muon_group['lr'], muon_group['momentum'], muon_group['nesterov']) == (0.24, 0.6, True)
    assert tuple(muon_group['coefficients']) == COEFFICIENTS and muon_group['steps'] == 3
    norm_biases = [m.bias for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    groups = [[id(p) for p in group['params']] for group in sgd.param_groups]
    assert groups == [[id(net.whiten.bias)], [id(p) for p in norm_biases], [id(net.head.weight)]]
    assert [group['lr'] for group in sgd.param_groups] == [0.053, 0.053, 0.67]
    for group in sgd.param_groups:  # decoupled: 2e-6 per example x 2000 = 0.004 per step, whatever the lr
        assert group['lr'] * group['weight_decay'] == pytest.approx(0.004)
        assert group['momentum'] == 0.85 and group['nesterov']
    trainable = [p for p in net.parameters() if p.requires_grad]
    optimized = [p for group in sgd.param_groups + filters_optimizer.param_groups for p in group['params']]
    assert sorted(map(id, trainable)) == sorted(map(id, optimized))  # each trainable parameter exactly once
    assert all(p is not net.whiten.weight for p in optimized)


def test_learning_rates_at_spec_steps(muon):
    net = muon.make_net(muon.hyp)
    optimizers = muon.make_optimizers(net, muon.hyp, FIGURES['steps'])
    groups = dict(zip(['whiten_bias', 'norm_biases', 'head', 'muon'], optimizers[0].param_groups
                      + optimizers[1].param_groups))
    for i, step in enumerate(FIGURES['lr_steps']):
        muon.set_learning_rates(optimizers, step)
        for name, values in FIGURES['learning_rates'].items():
            if i < len(values):
                assert groups[name]['lr'] == pytest.approx(values[i], rel=1e-3), (name, step)  # rounded figures
    assert groups['whiten_bias']['lr'] == 0  # past its 75 steps (it is frozen by then)


# The network

def test_logits_are_the_head_divided_by_the_feature_width(muon):
    for widths, width in [(muon.hyp['net']['widths'], 256), ({'block1': 8, 'block2': 16, 'block3': 32}, 32)]:
        hyp = edited_hyp(muon, [['net.widths', widths]])
        torch.manual_seed(0)
        net = muon.make_net(hyp).eval()
        x = torch.randn(4, 3, 32, 32)
        features = net.pool(net.blocks(F.gelu(net.whiten(x)))).flatten(1)
        assert features.shape == (4, width)
        assert torch.equal(net(x), net.head(features) / width)


def test_head_has_unit_std_and_whitening_bias_its_default_init_at_every_initialization(muon):
    biases = []
    for seed in range(3):
        torch.manual_seed(seed)
        net = muon.make_net(muon.hyp)
        assert net.head.weight.std().item() == pytest.approx(1, abs=1e-6)
        bias = net.whiten.bias.detach()
        assert bias.abs().min() > 0 and bias.abs().max() <= 1 / math.sqrt(3 * 2 * 2)  # PyTorch's uniform bound
        biases.append(bias)
    assert not torch.equal(biases[0], biases[1])


# Training at small scale

def test_the_real_schedule_runs_200_steps_and_trains_the_whitening_bias_for_exactly_75(muon, cifar_source):
    """The schedule of the published run: 8 epochs of 25 steps (here 800 images in batches of 32,
    as CIFAR-10's 50,000 in batches of 2000), whiten_bias_steps 75; only the sizes shrunk."""
    hyp = small_run_hyp([['opt.train_epochs', muon.hyp['opt']['train_epochs']]])
    assert hyp['opt']['whiten_bias_steps'] == FIGURES['whiten_bias_steps']
    train_loader, test_loader = make_loaders(muon, hyp, cifar_source, train_images=800, test_batch_size=250)
    assert len(train_loader) == FIGURES['steps_per_epoch']
    sgd, filters = [], []  # per step of each optimizer: its learning rates and which parameters have a gradient

    def record(optimizer, args, kwargs):
        groups = optimizer.param_groups
        row = dict(lrs=[group['lr'] for group in groups], grads=[p.grad is not None for g in groups for p in g['params']])
        if isinstance(optimizer, muon.Muon):
            filters.append(row)
        else:
            sgd.append(dict(row, whiten_bias=groups[0]['params'][0].detach().clone()))
    handle = register_optimizer_step_pre_hook(record)
    try:
        muon.train(hyp, train_loader, test_loader, seed=0, verbose=False)
    finally:
        handle.remove()
    assert len(sgd) == len(filters) == FIGURES['steps']  # both optimizers step every step
    assert [row['grads'][0] for row in sgd] == [True] * 75 + [False] * 125  # the whitening bias
    assert all(all(row['grads'][1:]) for row in sgd) and all(all(row['grads']) for row in filters)
    biases = [row['whiten_bias'] for row in sgd]
    assert not torch.equal(biases[0], biases[74])  # trained...
    assert all(torch.equal(biases[75], b) for b in biases[75:])  # ...then frozen: no update, no decay
    rates = FIGURES['learning_rates']
    for i, step in enumerate(FIGURES['lr_steps']):  # the figures are rounded to 5 significant digits
        whiten, norm, head = sgd[step]['lrs']
        assert head == pytest.approx(rates['head'][i], rel=1e-3)
        assert norm == pytest.approx(rates['norm_biases'][i], rel=1e-3)
        assert filters[step]['lrs'] == [pytest.approx(rates['muon'][i], rel=1e-3)]
        if step < 75:
            assert whiten == pytest.approx(rates['whiten_bias'][i], rel=1e-3)


def test_runs_reuse_the_compiled_net_and_recompile_nothing_when_the_bias_freezes(muon, cifar_source):
    hyp = small_run_hyp([['opt.whiten_bias_steps', 10]])  # 20 steps: frozen from step 10 on
    loaders = small_loaders(muon, hyp, cifar_source)

    def train(seed):
        return muon.train(hyp, *loaders, seed=seed, verbose=False)
    train(0)  # compiles both graphs (bias trainable and frozen), unless an earlier test already has
    graphs = torch._dynamo.utils.counters['stats']['unique_graphs']
    first, other, again = train(1), train(2), train(1)
    assert torch._dynamo.utils.counters['stats']['unique_graphs'] == graphs
    assert first['net'] is not again['net']  # each run returns its own copy of the one compiled net
    losses = [[row['train_loss'] for row in r['epochs']] for r in (first, other, again)]
    assert first['tta_val_acc'] == again['tta_val_acc'] and losses[0] == losses[2] != losses[1]
    net, _ = muon.fresh_net(hyp, torch.device('cpu'), muon.precision_policy('cpu'))  # a re-initialization
    assert net.head.weight.std().item() == pytest.approx(1, abs=1e-6) and net.whiten.bias.abs().min() > 0


def test_no_warmup_is_refused_because_compilation_must_stay_untimed(muon, capsys):
    with pytest.raises(SystemExit) as exit_info:
        muon.parse_args(['--no-warmup'])
    assert exit_info.value.code == 2 and '--no-warmup: this script compiles during its warm-up' in capsys.readouterr().err
