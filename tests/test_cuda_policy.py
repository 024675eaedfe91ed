"""The precision policy: one function decides how each device stores the data and the network,
so that tests can ask for the CUDA configuration on a CPU."""
import pytest
import torch

from conftest import SMALL_HYP, edited_hyp, make_loaders


def test_one_function_decides_how_each_device_stores_data_and_net(module, cifar_source):
    assert module.precision_policy('cpu') == dict(dtype=torch.float, memory_format=torch.contiguous_format,
                                                  batchnorm_dtype=torch.float)
    assert module.precision_policy('cuda:1') == dict(dtype=torch.half, memory_format=torch.channels_last,
                                                     batchnorm_dtype=torch.float)
    loader = module.CifarLoader(cifar_source, train=False, device='cpu')
    assert loader.policy == module.precision_policy('cpu') and loader.images.dtype == torch.float
    cuda_loader = module.CifarLoader(cifar_source, train=False, device='cpu', policy=module.precision_policy('cuda'))
    assert cuda_loader.images.dtype == torch.half
    assert cuda_loader.images.is_contiguous(memory_format=torch.channels_last)


def test_train_refuses_loaders_stored_differently(module, cifar_source):
    hyp = edited_hyp(module, SMALL_HYP)
    train_loader, _ = make_loaders(module, hyp, cifar_source)
    _, test_loader = make_loaders(module, hyp, cifar_source, module.precision_policy('cuda'))
    with pytest.raises(ValueError, match='train_loader and test_loader must store images alike'):
        module.train(hyp, train_loader, test_loader, verbose=False)
