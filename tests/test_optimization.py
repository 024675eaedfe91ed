"""The optimizer, its schedules, the loss and the lookahead, against SPEC.md's figures."""
import pytest
import torch

from conftest import skip_unless_sgd_method


def test_sgd_values_match_spec(script, module):
    skip_unless_sgd_method(script, 'single SGD in decoupled form with a bias scaler')
    optimizer = module.make_optimizer(module.make_net(module.hyp), module.hyp)
    norm_group, other_group = optimizer.param_groups
    opt = module.hyp['opt']
    kilostep = 1024 * (1 + 1 / (1 - opt['momentum']))
    assert norm_group['lr'] == pytest.approx(opt['lr'] / kilostep * 64)
    assert other_group['lr'] == pytest.approx(opt['lr'] / kilostep)
    for group in optimizer.param_groups:  # the same decay per step for every parameter
        assert group['lr'] * group['weight_decay'] == pytest.approx(opt['weight_decay'] * 1024 / kilostep)
        assert group['nesterov'] and group['momentum'] == opt['momentum']
    if module.__name__.startswith('airbench94'):
        assert other_group['lr'] == pytest.approx(1.4648e-3, rel=1e-4)
        assert norm_group['lr'] == pytest.approx(9.375e-2, rel=1e-4)
        assert other_group['lr'] * other_group['weight_decay'] == pytest.approx(1.9957e-3, rel=1e-4)


def test_param_groups_split_batchnorm_biases_from_the_rest(script, module):
    skip_unless_sgd_method(script, 'single SGD in decoupled form with a bias scaler')
    net = module.make_net(module.hyp)
    norm_group, other_group = module.make_optimizer(net, module.hyp).param_groups
    norm_biases = [m.bias for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert [id(p) for p in norm_group['params']] == [id(p) for p in norm_biases]
    assert any(p is net.whiten.bias for p in other_group['params'])  # ordinary group, not the BN one
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert len(norm_group['params']) + len(other_group['params']) == len(trainable)


def test_lr_schedule_matches_spec(script, module, figures):
    skip_unless_sgd_method(script, 'warm-up LR schedule')
    total = figures['steps']
    for step, value in figures['schedule']:
        assert module.lr_multiplier(step, total, module.hyp) == pytest.approx(value, abs=5e-5)
    values = [module.lr_multiplier(s, total, module.hyp) for s in range(total)]
    peak = figures['schedule'][1][0]
    assert all(a < b for a, b in zip(values[:peak], values[1:peak + 1]))  # rises to the peak...
    assert all(a > b for a, b in zip(values[peak:], values[peak + 1:]))  # ...then falls


def test_lookahead_decay_matches_spec(script, module, figures):
    skip_unless_sgd_method(script, 'lookahead')
    step, value = figures['lookahead_last']
    assert module.lookahead_decay(step, figures['steps'], module.hyp) == pytest.approx(value, abs=5e-5)
    assert module.lookahead_decay(5, figures['steps'], module.hyp) < 1e-6  # ~no averaging early


def test_lookahead_update_moves_every_float_entry_towards_ema_and_resets(script, module):
    skip_unless_sgd_method(script, 'lookahead')
    net = module.make_net(module.hyp)
    state = module.LookaheadState(net)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for value in net.state_dict().values():  # weights, biases and BatchNorm statistics alike
        if value.is_floating_point():
            value.add_(1.0)
    state.update(decay=0.75)
    for key, value in net.state_dict().items():
        if value.is_floating_point():  # ema = 0.75 * old + 0.25 * new, and params reset to it
            assert torch.allclose(value, before[key] + 0.25, atol=1e-6), key
    state.update(decay=1.0)  # params <- ema, unchanged
    assert all(torch.allclose(v, before[k] + 0.25, atol=1e-6) for k, v in net.state_dict().items() if v.is_floating_point())


def test_loss_is_label_smoothed_cross_entropy_summed_over_the_batch(module, figures):
    torch.manual_seed(0)
    logits, labels = torch.randn(64, 10), torch.randint(0, 10, (64,))
    eps = module.hyp['opt']['label_smoothing']
    assert eps == figures.get('label_smoothing', 0.2)
    log_probs = logits.log_softmax(1)
    expected = -((1 - eps) * log_probs[torch.arange(64), labels] + eps * log_probs.mean(1)).sum()
    assert torch.allclose(module.make_loss_fn(module.hyp)(logits, labels), expected, atol=1e-4)


def test_loss_stays_finite_where_an_fp16_sum_overflows(module):
    labels = torch.arange(1024) % 10
    logits = torch.zeros(1024, 10)
    logits[torch.arange(1024), (labels + 1) % 10] = 100.0  # confidently wrong: about 98 per example
    expected = torch.nn.functional.cross_entropy(logits.double(), labels, reduction='sum',
                                                 label_smoothing=module.hyp['opt']['label_smoothing'])
    assert expected > 65504  # more than fp16 can hold
    loss = module.make_loss_fn(module.hyp)(logits.half(), labels)
    assert torch.isfinite(loss), 'the summed loss overflowed to %s' % loss
    assert loss.dtype == torch.float and loss.item() == pytest.approx(expected.item(), rel=1e-4)
