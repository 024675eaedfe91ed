"""Train our independent reference implementation of the published airbench94 loop on the real images.

The counterpart of `real_images.py airbench94.py`: same data, same machine, the loop of
support/reference_loop.py (written by us from the method description and facts about the
published code's order of operations and random draws) instead of our script: whole-dataset
flip/pad/crop preprocessing, the published order of lookahead and whitening init. If both land
at the same accuracy, a gap to the reference figure is not in our code. Appends the result to
benchmarks/RESULTS.md.

    python -m benchmarks.reference_loop_real_images --seed 0   # from the repository root
"""
import argparse
import os
import pickle
import time

import numpy
import torch

from benchmarks.common import append_result, load_script, machine_description, write_real_images
from support.reference_loop import reference_run

CIFAR_MEAN = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1)
CIFAR_STD = torch.tensor((0.2470, 0.2435, 0.2616)).view(1, 3, 1, 1)


def read_split(folder, names):
    """Images in [0,1] (N,3,32,32 float32) and labels, read with plain pickle: these are files we wrote."""
    images, labels = [], []
    for name in names:
        with open(os.path.join(folder, name), 'rb') as f:
            batch = pickle.load(f, encoding='latin1')
        images.append(numpy.asarray(batch['data'], dtype=numpy.uint8).reshape(-1, 3, 32, 32))
        labels += batch['labels']
    return torch.from_numpy(numpy.concatenate(images)).float() / 255, torch.tensor(labels)


def main():
    parser = argparse.ArgumentParser(prog='python -m benchmarks.reference_loop_real_images',
                                     description=__doc__.splitlines()[0])
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--data-dir', default='/tmp/cifar10-jpeg')
    args = parser.parse_args()
    write_real_images(args.data_dir)
    folder = os.path.join(args.data_dir, 'cifar-10-batches-py')
    train_images, train_labels = read_split(folder, ['data_batch_%d' % i for i in range(1, 6)])
    test_images, test_labels = read_split(folder, ['test_batch'])
    airbench94 = load_script('airbench94.py')  # for its hyp values only (tested against SPEC.md)

    start = time.time()
    _, logits = reference_run(airbench94.hyp, train_images, train_labels, test_images, seed=args.seed,
                              normalize=lambda x: (x - CIFAR_MEAN) / CIFAR_STD, lookahead_before_whitening=True)
    seconds = time.time() - start
    accuracy = (logits.argmax(1) == test_labels).float().mean().item()
    append_result([
        '### Independent reference implementation of the published airbench94 loop on real images, cpu, %s'
        % time.strftime('%Y-%m-%d'),
        '',
        '- command: `python -m benchmarks.reference_loop_real_images --seed %d` (the loop of support/reference_loop.py, '
        'airbench94.py\'s hyp, the published order of lookahead and whitening init)' % args.seed,
        '- machine: %s; torch %s; dtype float32' % (machine_description('cpu'), torch.__version__),
        '- n = 1; TTA accuracy: %.2f%%' % (100 * accuracy),
        '- wall seconds (training + TTA, no progress evals): %.0f' % seconds,
    ])


if __name__ == '__main__':
    main()
