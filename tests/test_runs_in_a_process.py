"""Many runs in one process, as the scripts' users do them: a run's result depends only on its
seed, never on what ran before it, and what a run returns is the caller's to keep.

The compiled scripts build one network per process and reuse it for every run (the warm-up
included), so anything a run leaves on it reaches the next; each case below starts from a new
instance of the script's module (nothing compiled or cached yet, as in a new process), trains
seed 1, then seed 0, then seed 1 again, with hyp set so that the whitening bias freezes
mid-run (and, for airbench96_faster.py, with its freeze switch on and off).
"""
import pytest
import torch

from conftest import SCRIPTS, edited_hyp, fresh_script, make_loaders, tiny_hyp

FASTER = 'airbench96_faster.py'
CASES = [(script, None) for script in SCRIPTS if script != FASTER] + [(FASTER, True), (FASTER, False)]


def freeze_edits(script, freeze):
    """hyp edits under which the whitening bias freezes within TINY_HYP's 25 steps (10 per epoch)."""
    if script == 'airbench94_muon.py':
        return [['opt.whiten_bias_steps', 10]]
    return [['opt.whiten_bias_epochs', 1]] + ([['opt.whiten_bias_freeze', freeze]] if freeze is not None else [])


def untimed(result):
    return [{k: v for k, v in row.items() if k != 'time_seconds'} for row in result['epochs']]


def weights(net):
    return [v.clone() for v in net.state_dict().values()]


@pytest.fixture(scope='module', params=CASES,
                ids=['%s%s' % (s, '' if f is None else '-freeze-%s' % ('on' if f else 'off')) for s, f in CASES])
def runs(request, cifar_source):
    script, freeze = request.param
    module = fresh_script(script)
    hyp = edited_hyp(module, tiny_hyp(script) + freeze_edits(script, freeze))
    loaders = make_loaders(module, hyp, cifar_source)

    def run(seed):
        result = module.train(hyp, *loaders, seed=seed, verbose=False)
        return dict(result, weights=weights(result['net']))
    # seed 1 first in the process, then after seed 0
    return dict(first=run(1), other=run(0), later=run(1), test_labels=loaders[1].labels)


def test_a_run_depends_only_on_its_seed(runs):
    first, other, later = runs['first'], runs['other'], runs['later']
    assert untimed(later) == untimed(first) != untimed(other)
    assert later['tta_val_acc'] == first['tta_val_acc']
    for a, b in zip(later['weights'], first['weights'], strict=True):
        assert torch.equal(a, b)
    # The final TTA logits too: the first run's still hold, graded they give its accuracy
    assert torch.equal(later['logits'], first['logits'])
    graded = (first['logits'].argmax(1) == runs['test_labels']).float().mean().item()
    assert graded == first['tta_val_acc'] and first['train_seconds'] < first['time_seconds']


def test_a_returned_net_is_the_callers_to_keep(runs):
    first, later = runs['first'], runs['later']
    assert first['net'] is not later['net']
    # Two runs later, the first run's net still holds the weights it was returned with
    for a, b in zip(first['net'].state_dict().values(), first['weights'], strict=True):
        assert torch.equal(a, b)
