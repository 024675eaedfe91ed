"""What only a CUDA device can confirm, on the device: the precision policy, the layout of every
conv input, cuDNN benchmarking, no host sync in the training steps, and the compiled script's
timed runs without recompilation (CUDA graphs included).

Every test skips without CUDA, so CI on a CPU skips this file; tests/test_cuda_policy_on_cpu.py runs the
same configuration on the CPU. `python -m benchmarks.gpu_check` runs it and records the counts.
"""
import math

import pytest
import torch

from conftest import (SCRIPTS, TINY_HYP, assert_all_channels_last, assert_cuda_storage, conv_input_layouts,
                      edited_hyp, load_script, make_loaders)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')

COMPILED = [s for s in SCRIPTS if hasattr(load_script(s), 'compile_mode')]


def cuda_loaders(module, hyp, cifar_source):
    """The small dataset on the GPU, stored as precision_policy('cuda') says, in two evaluation
    batches (so that a model output kept across calls, which CUDA graphs overwrite, shows)."""
    return make_loaders(module, hyp, cifar_source, test_batch_size=250, device='cuda')


def graphs_compiled():
    return torch._dynamo.utils.counters['stats']['unique_graphs']


@pytest.fixture(scope='module', params=SCRIPTS)
def cuda_run(request, cifar_source):
    """A train() of the script on the GPU with cuDNN benchmarking switched off before it and the
    layout of every conv input recorded. Compiled scripts run their network eagerly here (the
    recording forces it: dynamo would recompile the recording hook at every call); the last test runs
    them compiled."""
    module = load_script(request.param)
    hyp = edited_hyp(module)
    loaders = cuda_loaders(module, hyp, cifar_source)
    with conv_input_layouts() as conv_inputs:
        torch.backends.cudnn.benchmark = False
        result = module.train(hyp, *loaders, seed=1, verbose=False)
    return dict(module=module, hyp=hyp, loaders=loaders, result=result, conv_inputs=conv_inputs,
                cudnn_benchmark=torch.backends.cudnn.benchmark)


def test_cuda_policy_trains_with_fp16_convs_and_its_batchnorm_dtype(cuda_run):
    result = cuda_run['result']
    assert all(math.isfinite(row['train_loss']) for row in result['epochs'])
    assert result['tta_val_acc'] > 0.5  # learnable data: chance is 0.1
    assert all(p.is_cuda for p in result['net'].parameters())
    assert_cuda_storage(result['net'], cuda_run['module'].precision_policy('cuda'))


def test_every_conv_input_is_channels_last(cuda_run):
    assert_all_channels_last(cuda_run['conv_inputs'])


def test_train_switches_on_cudnn_benchmarking(cuda_run):
    assert cuda_run['cudnn_benchmark'] is True


def test_training_steps_make_no_host_sync(cuda_run, monkeypatch):
    """torch.cuda.set_sync_debug_mode('error') from every epoch's start clock to its stop clock,
    so any .item(), nonzero, boolean-mask index ... in the steps raises. The whitening init (eigh)
    and the evaluations sync legitimately: they run in mode 'default'."""
    module, hyp, loaders = cuda_run['module'], cuda_run['hyp'], cuda_run['loaders']
    module.train(hyp, *loaders, seed=2, verbose=False)  # a warm-up: compiling (which syncs) happens here
    epochs, clock, calls = math.ceil(hyp['opt']['train_epochs']), module.device_clock, []

    def clock_switching_sync_debug_mode(device):
        span, is_stop = divmod(len(calls), 2)  # span 0: whitening init, 1..epochs: the epochs, then the TTA
        calls.append(span)
        if is_stop:
            torch.cuda.set_sync_debug_mode('default')
            return clock(device)  # synchronizes
        seconds = clock(device)
        if 1 <= span <= epochs:
            torch.cuda.set_sync_debug_mode('error')
        return seconds
    monkeypatch.setattr(module, 'device_clock', clock_switching_sync_debug_mode)
    try:
        module.train(hyp, *loaders, seed=3, verbose=False)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert len(calls) == 2 * (epochs + 2)  # every epoch was checked


@pytest.mark.parametrize('script', COMPILED)
def test_compiled_runs_reuse_the_warmup_graphs_and_report_true_accuracies(script, cifar_source):
    module = load_script(script)
    hyp = edited_hyp(module, TINY_HYP + [['opt.train_epochs', 4]])  # past the whitening bias freeze
    train_loader, test_loader = cuda_loaders(module, hyp, cifar_source)
    module.train(hyp, train_loader, test_loader, seed=0, verbose=False)  # warm-up: compiles (max-autotune)
    graphs = graphs_compiled()
    for seed in (1, 2):
        result = module.train(hyp, train_loader, test_loader, seed=seed, verbose=False)
        accs = [row['val_acc'] for row in result['epochs']]
        assert all(0.2 < acc <= 1 for acc in accs), accs  # finite and above chance (0.1)
        # The last epoch's accuracy, from the compiled net (CUDA graphs), against the eager net's
        assert abs(accs[-1] - module.evaluate(result['net'], test_loader)) <= 0.02
    assert graphs_compiled() == graphs
