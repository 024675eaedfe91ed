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
import sys
import time

if not __package__:  # run as a file, the repository's imports below would fail: say how to run it
    print('run it from the repository root as: python -m benchmarks.%s' % os.path.basename(__file__)[:-3],
          file=sys.stderr)
    sys.exit(2)

import torch

from benchmarks.common import (add_data_flags, append_result, check_data_flags, load_script, machine_description,
                               prepare_data)
from support.reference_loop import reference_run

CIFAR_MEAN = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1)
CIFAR_STD = torch.tensor((0.2470, 0.2435, 0.2616)).view(1, 3, 1, 1)


def main():
    parser = argparse.ArgumentParser(prog='python -m benchmarks.reference_loop_real_images',
                                     description=__doc__.splitlines()[0])
    parser.add_argument('--seed', type=int, default=0)
    add_data_flags(parser)
    args = parser.parse_args()
    check_data_flags(parser, args)
    data_line = prepare_data(args)
    airbench94 = load_script('airbench94.py')  # for its hyp values (tested against SPEC.md) and its file reader
    data = airbench94.load_cifar10(args.data_dir)
    (train_images, train_labels), (test_images, test_labels) = [
        (data[split + '_images'].float() / 255, data[split + '_labels']) for split in ('train', 'test')]

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
        '- data: %s' % data_line,
        '- machine: %s; torch %s; dtype float32' % (machine_description('cpu'), torch.__version__),
        '- n = 1; TTA accuracy: %.2f%%' % (100 * accuracy),
        '- wall seconds (training + TTA, no progress evals): %.0f' % seconds,
    ])


if __name__ == '__main__':
    main()
