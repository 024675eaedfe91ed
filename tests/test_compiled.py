"""airbench94_compiled.py is airbench94.py's method: same runs from the same seed, compiled once, no
state carried; and no compiled script ever runs its network eagerly without a word."""
import pytest
import torch

from conftest import SCRIPTS, compiles, edited_hyp, fresh_script, load_script, make_loaders, run_cli, tiny_hyp

# The whitening bias freezes after epoch 1 of TINY_HYP's 2.5, so every run passes the freeze
FREEZE_EARLY = [['opt.whiten_bias_epochs', 1]]


@pytest.fixture(scope='module')
def setup(cifar_source):
    eager, compiled = load_script('airbench94.py'), load_script('airbench94_compiled.py')
    hyp = edited_hyp(eager, tiny_hyp('airbench94.py') + FREEZE_EARLY)
    loaders = {m: make_loaders(m, hyp, cifar_source) for m in (eager, compiled)}
    return eager, compiled, hyp, loaders


def train(setup, module, seed):
    _, _, hyp, loaders = setup
    return module.train(hyp, *loaders[module], seed=seed, verbose=False)


def graphs_compiled():
    return torch._dynamo.utils.counters['stats']['unique_graphs']


def test_compiled_matches_eager_from_the_same_seed_in_every_run_of_a_process(setup):
    eager, compiled = setup[:2]
    # The compiled script's second run of the process is one the warm-up has come before, as in every timed run
    for seed in (0, 1):
        a, b = train(setup, eager, seed), train(setup, compiled, seed)
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
    assert first['net'] is not again['net']  # each run returns its own copy of the one compiled net
    assert first['tta_val_acc'] == again['tta_val_acc'] != other['tta_val_acc']
    assert [r['train_loss'] for r in first['epochs']] == [r['train_loss'] for r in again['epochs']]


@pytest.mark.parametrize('script', [s for s in SCRIPTS if compiles(s)])
def test_past_the_recompile_limit_a_run_fails_rather_than_run_eagerly(script, cifar_source):
    # torch's default: past the limit, code runs eagerly without a word (the suite makes that an
    # error for itself; here it is switched back). A new module instance compiles from nothing, so
    # with a limit of 1 the first evaluation (eval mode, no grad: a second graph) is past it
    module = fresh_script(script)
    hyp = edited_hyp(module)
    loaders = make_loaders(module, hyp, cifar_source)
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=False, recompile_limit=1):
        with pytest.raises(torch._dynamo.exc.FailOnRecompileLimitHit):
            module.train(hyp, *loaders, seed=0, verbose=False)


def test_no_warmup_is_refused_because_compilation_must_stay_untimed(tmp_path):
    result = run_cli('airbench94_compiled.py', ['--no-warmup'], cwd=str(tmp_path), edits=())
    assert result.returncode == 2 and '--no-warmup: this script compiles during its warm-up' in result.stderr


def test_the_progressive_scripts_short_warm_up_compiles_all_that_a_run_needs(cifar_source):
    # Its warm-up trains 6 batches per epoch, not a whole run: every epoch's resolution (tiny_hyp:
    # 28 px, then 32), the whitening bias trained and frozen, the evaluations. From a new module
    # instance, so that nothing another test compiled can stand in for it
    module = fresh_script('airbench94_progressive.py')
    hyp = edited_hyp(module)
    loaders = make_loaders(module, hyp, cifar_source)
    assert len(loaders[0]) > 6  # the warm-up is shorter than a run
    module.warm_up(hyp, *loaders, seed=0, verbose=False)
    graphs = graphs_compiled()
    module.train(hyp, *loaders, seed=1, verbose=False)
    assert graphs_compiled() == graphs
