"""airbench94_compiled.py is airbench94.py's method: same runs from the same seed, compiled once, no state carried."""
import pytest
import torch

from conftest import edited_hyp, load_script, make_loaders, run_cli


@pytest.fixture(scope='module')
def setup(cifar_source):
    eager, compiled = load_script('airbench94.py'), load_script('airbench94_compiled.py')
    hyp = edited_hyp(eager)
    loaders = {m: make_loaders(m, hyp, cifar_source) for m in (eager, compiled)}
    return eager, compiled, hyp, loaders


def train(setup, module, seed):
    _, _, hyp, loaders = setup
    return module.train(hyp, *loaders[module], seed=seed, verbose=False)


def graphs_compiled():
    return torch._dynamo.utils.counters['stats']['unique_graphs']


def test_compiled_matches_eager_from_the_same_seed(setup):
    eager, compiled = setup[:2]
    a, b = train(setup, eager, 0), train(setup, compiled, 0)
    losses_a, losses_b = [[row['train_loss'] for row in r['epochs']] for r in (a, b)]
    assert losses_b[0] == pytest.approx(losses_a[0], rel=1e-4)  # the first steps: float tolerance
    assert losses_b == pytest.approx(losses_a, rel=1e-2)
    assert abs(a['tta_val_acc'] - b['tta_val_acc']) <= 0.02  # the trained accuracy: a small tolerance


def test_runs_reuse_the_compiled_net_and_carry_no_state(setup):
    compiled = setup[1]
    train(setup, compiled, 0)  # compiles, unless an earlier test already has
    graphs = graphs_compiled()
    first, other, again = train(setup, compiled, 1), train(setup, compiled, 2), train(setup, compiled, 1)
    assert graphs_compiled() == graphs  # no recompilation, whitening bias freeze included
    assert first['net'] is again['net']  # one network, re-initialized for every run
    assert first['tta_val_acc'] == again['tta_val_acc'] != other['tta_val_acc']
    assert [r['train_loss'] for r in first['epochs']] == [r['train_loss'] for r in again['epochs']]


def test_no_warmup_is_refused_because_compilation_must_stay_untimed(tmp_path):
    result = run_cli('airbench94_compiled.py', ['--no-warmup'], cwd=str(tmp_path), edits=())
    assert result.returncode == 2 and '--no-warmup: this script compiles during its warm-up' in result.stderr
