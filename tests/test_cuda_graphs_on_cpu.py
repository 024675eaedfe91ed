"""CUDA-graph output reuse, emulated on the CPU: evaluation and training must not keep a model
output across calls.

Compiled with mode='max-autotune' on CUDA, the net runs as CUDA graphs: an output is valid only
until the next call, which writes into the same memory. ReusedOutputs gives any model that
behaviour on the CPU (the previous output turns to NaN at every call), so code that keeps an
output too long gives different results here, as it would crash or silently read the wrong
batch on a GPU.
"""
import pytest
import torch
from torch import nn

from conftest import SMALL_HYP, edited_hyp, make_loaders, small_loaders


class ReusedOutputs(nn.Module):
    """`model` (a net, or a compiled training step returning outputs and loss), whose every call
    overwrites the output tensors of the previous one (here with NaN); with overwrite=False the same
    wrapper that leaves outputs alone, for the run to compare with."""

    def __init__(self, model, overwrite=True):
        super().__init__()
        self.model, self.overwrite = model, overwrite
        self.last_output = None

    def forward(self, *inputs):
        if self.last_output is not None and self.overwrite:
            with torch.no_grad():
                for output in self.last_output if isinstance(self.last_output, tuple) else [self.last_output]:
                    output.fill_(float('nan'))
        self.last_output = self.model(*inputs)
        return self.last_output


@pytest.mark.parametrize('tta_level', [0, 1, 2])
def test_infer_and_evaluate_keep_no_output_across_calls(module, cifar_source, tta_level):
    hyp = edited_hyp(module, SMALL_HYP)
    _, test_loader = make_loaders(module, hyp, cifar_source, test_batch_size=200)  # the last batch partial
    torch.manual_seed(0)
    net = module.make_net(hyp)
    expected = module.infer(net, test_loader, tta_level)
    assert torch.equal(module.infer(ReusedOutputs(net), test_loader, tta_level), expected)
    assert module.evaluate(ReusedOutputs(net), test_loader, tta_level) == module.evaluate(net, test_loader, tta_level)


def test_train_keeps_no_output_across_calls(module, cifar_source, monkeypatch):
    # Both runs call the model through the same wrapper, so only the overwriting differs. (When the
    # op recorder still let compiled nets run under it, a net it had touched ran eagerly ever after,
    # so a wrapped run and a direct one could round differently.)
    fresh_net, hyp = module.fresh_net, edited_hyp(module, SMALL_HYP)

    def run(overwrite):
        def fresh_net_wrapped(*args):
            net, model, *steps = fresh_net(*args)  # airbench94_progressive: and its compiled steps
            return net, ReusedOutputs(model, overwrite), *[{resolution: ReusedOutputs(step, overwrite)
                                                            for resolution, step in s.items()} for s in steps]
        monkeypatch.setattr(module, 'fresh_net', fresh_net_wrapped)
        return module.train(hyp, *small_loaders(module, hyp, cifar_source), seed=0, verbose=False)
    expected = run(overwrite=False)
    expected_weights = [v.clone() for v in expected['net'].state_dict().values()]  # the net object is reused
    result = run(overwrite=True)
    untimed = [[{k: v for k, v in row.items() if k != 'time_seconds'} for row in r['epochs']] for r in (result, expected)]
    assert untimed[0] == untimed[1] and result['tta_val_acc'] == expected['tta_val_acc']
    # The returned logits are the run's own: the second run's calls overwrote no output they hold
    assert torch.equal(result['logits'], expected['logits']) and torch.isfinite(expected['logits']).all()
    for a, b in zip(result['net'].state_dict().values(), expected_weights, strict=True):
        assert torch.equal(a, b)
