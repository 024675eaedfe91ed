"""A literal port of the published airbench94 training code (Jordan 2024), for CPU float32.

It follows the published code's structure (an nn.Sequential net, parameter groups by name, a
LambdaLR get_lr, LookaheadState over the state dict, whole-dataset normalize/flip/pad
preprocessing with the per-epoch batch_crop, get_patches + eigh(UPLO='U') whitening, infer
with TTA) and imports nothing from our scripts, so it can check them: tests/test_reference.py
compares our training with it, and benchmarks/published_port_real_images.py trains it on the
real images.
"""
from math import ceil

import torch
import torch.nn.functional as F
from torch import nn


class Conv(nn.Conv2d):
    def __init__(self, in_channels, out_channels, kernel_size=3, padding='same', bias=False):
        super().__init__(in_channels, out_channels, kernel_size=kernel_size, padding=padding, bias=bias)

    def reset_parameters(self):
        super().reset_parameters()
        if self.bias is not None:
            self.bias.data.zero_()
        w = self.weight.data
        torch.nn.init.dirac_(w[:w.size(1)])


class BatchNorm(nn.BatchNorm2d):
    def __init__(self, num_features, momentum, eps=1e-12, weight=False, bias=True):
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = weight
        self.bias.requires_grad = bias


class ConvGroup(nn.Module):
    def __init__(self, channels_in, channels_out, batchnorm_momentum):
        super().__init__()
        self.conv1 = Conv(channels_in, channels_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(channels_out, batchnorm_momentum)
        self.conv2 = Conv(channels_out, channels_out)
        self.norm2 = BatchNorm(channels_out, batchnorm_momentum)
        self.activ = nn.GELU()

    def forward(self, x):
        x = self.conv1(x)
        x = self.pool(x)
        x = self.norm1(x)
        x = self.activ(x)
        x = self.conv2(x)
        x = self.norm2(x)
        x = self.activ(x)
        return x


class Mul(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


def make_net(widths, batchnorm_momentum):
    net = nn.Sequential(Conv(3, 24, 2, padding=0, bias=True), nn.GELU(),
                        ConvGroup(24, widths['block1'], batchnorm_momentum),
                        ConvGroup(widths['block1'], widths['block2'], batchnorm_momentum),
                        ConvGroup(widths['block2'], widths['block3'], batchnorm_momentum),
                        nn.MaxPool2d(3), nn.Flatten(), nn.Linear(widths['block3'], 10, bias=False), Mul(1 / 9))
    net[0].weight.requires_grad = False
    return net


def init_whitening_conv(layer, train_set, eps=5e-4):
    c, (h, w) = train_set.shape[1], layer.weight.shape[2:]
    patches = train_set.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w).float()
    n = len(patches)
    patches_flat = patches.view(n, -1)
    eigenvalues, eigenvectors = torch.linalg.eigh((patches_flat.T @ patches_flat) / n, UPLO='U')
    eigenvalues, eigenvectors = eigenvalues.flip(0).view(-1, 1, 1, 1), eigenvectors.T.reshape(c * h * w, c, h, w).flip(0)
    eigenvectors_scaled = eigenvectors / torch.sqrt(eigenvalues + eps)
    layer.weight.data[:] = torch.cat((eigenvectors_scaled, -eigenvectors_scaled))


class LookaheadState:
    def __init__(self, net):
        self.net_ema = {k: v.clone() for k, v in net.state_dict().items()}

    def update(self, net, decay):
        for ema_param, net_param in zip(self.net_ema.values(), net.state_dict().values()):
            if net_param.dtype in (torch.half, torch.float):
                ema_param.lerp_(net_param, 1 - decay)
                net_param.copy_(ema_param)


def infer(model, test_images):
    def infer_mirror(inputs, net):
        return 0.5 * net(inputs) + 0.5 * net(inputs.flip(-1))

    def infer_mirror_translate(inputs, net):
        logits = infer_mirror(inputs, net)
        padded_inputs = F.pad(inputs, (1,) * 4, 'reflect')
        logits_translate_list = [infer_mirror(padded_inputs[:, :, 0:32, 0:32], net),
                                 infer_mirror(padded_inputs[:, :, 2:34, 2:34], net)]
        return 0.5 * logits + 0.5 * torch.stack(logits_translate_list).mean(0)

    model.eval()
    with torch.no_grad():
        return torch.cat([infer_mirror_translate(inputs, model) for inputs in test_images.split(2000)])


def batch_flip_lr(inputs):
    flip_mask = (torch.rand(len(inputs), device=inputs.device) < 0.5).view(-1, 1, 1, 1)
    return torch.where(flip_mask, inputs.flip(-1), inputs)


def batch_crop(images, crop_size):
    r = (images.size(-1) - crop_size) // 2
    shifts = torch.randint(-r, r + 1, size=(len(images), 2), device=images.device)
    images_out = torch.empty((len(images), 3, crop_size, crop_size), device=images.device, dtype=images.dtype)
    for sy in range(-r, r + 1):
        for sx in range(-r, r + 1):
            mask = (shifts[:, 0] == sy) & (shifts[:, 1] == sx)
            images_out[mask] = images[mask, :, r + sy:r + sy + crop_size, r + sx:r + sx + crop_size]
    return images_out


def published_run(hyp, images, labels, test_images, seed, normalize, lookahead_before_whitening=False):
    """The published main(run) with hyp's values, on CPU tensors (images in [0,1], N,3,32,32).
    Returns the trained net and its TTA logits on test_images."""
    torch.manual_seed(seed)
    opt = hyp['opt']
    batch_size, epochs, momentum = opt['batch_size'], opt['train_epochs'], opt['momentum']
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
    lr = opt['lr'] / kilostep_scale
    wd = opt['weight_decay'] * batch_size / kilostep_scale
    lr_biases = lr * opt['bias_scaler']
    loss_fn = nn.CrossEntropyLoss(label_smoothing=opt['label_smoothing'], reduction='none')
    total_train_steps = ceil(len(images) // batch_size * epochs)

    model = make_net(hyp['net']['widths'], 1 - hyp['net']['batchnorm_momentum'])  # the paper's convention
    norm_biases = [p for k, p in model.named_parameters() if 'norm' in k and p.requires_grad]
    other_params = [p for k, p in model.named_parameters() if 'norm' not in k and p.requires_grad]
    optimizer = torch.optim.SGD([dict(params=norm_biases, lr=lr_biases, weight_decay=wd / lr_biases),
                                 dict(params=other_params, lr=lr, weight_decay=wd / lr)],
                                momentum=momentum, nesterov=True)

    def get_lr(step):
        warmup_steps = int(total_train_steps * 0.23)
        warmdown_steps = total_train_steps - warmup_steps
        if step < warmup_steps:
            frac = step / warmup_steps
            return 0.2 * (1 - frac) + 1.0 * frac
        frac = (step - warmup_steps) / warmdown_steps
        return 1.0 * (1 - frac) + 0.07 * frac
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, get_lr)
    if lookahead_before_whitening:  # the published order
        lookahead_state = LookaheadState(model)
    init_whitening_conv(model[0], normalize(images[:hyp['net']['whiten_images']]))  # 5000 in the published code
    if not lookahead_before_whitening:  # our order (see airbench94.py)
        lookahead_state = LookaheadState(model)

    # The published loader: normalize, flip and pad the whole dataset once; then every epoch
    # crop it all, and mirror it all on odd epochs
    flipped = batch_flip_lr(normalize(images))
    pad = hyp['aug']['translate']
    padded = F.pad(flipped, (pad,) * 4, 'reflect') if pad > 0 else None
    current_steps = 0
    for epoch in range(ceil(epochs)):
        model[0].bias.requires_grad = (epoch < opt['whiten_bias_epochs'])
        epoch_images = batch_crop(padded, images.shape[-1]) if pad > 0 else flipped
        epoch_images = epoch_images.flip(-1) if epoch % 2 == 1 else epoch_images
        indices = torch.randperm(len(epoch_images))
        model.train()
        for i in range(len(epoch_images) // batch_size):
            idxs = indices[i * batch_size:(i + 1) * batch_size]
            outputs = model(epoch_images[idxs])
            loss = loss_fn(outputs, labels[idxs]).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            current_steps += 1
            if current_steps % 5 == 0:  # (a Python float where the original indexes a float32 tensor)
                lookahead_state.update(model, decay=0.95**5 * (current_steps / total_train_steps)**3)
            if current_steps >= total_train_steps:
                lookahead_state.update(model, decay=1.0)
                break
    return model, infer(model, normalize(test_images))
