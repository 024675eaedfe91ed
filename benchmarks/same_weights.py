"""Each script at a git revision and in the working tree train the same weights from the same seed.

    python -m benchmarks.same_weights --before REV [--scripts airbench94.py ...]

Both versions train in one process, on the same small learnable data in the official format
(support.cifar_files), from seed 0, in two configurations: the tests' tiny network (2.5 epochs, with
the whitening-bias freeze reached), and the published network for one epoch of 4,096 images.
A script compares equal when every tensor of the returned network's state dict, every per-epoch
row (times aside) and the TTA accuracy are bit-identical.
"""
import argparse
import copy
import importlib.util
import math
import os
import subprocess
import sys
import tempfile

if not __package__:  # run as a file, the repository's imports below would fail: say how to run it
    print('run it from the repository root as: python -m benchmarks.%s' % os.path.basename(__file__)[:-3],
          file=sys.stderr)
    sys.exit(2)

import torch

from support import cifar_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ['airbench94.py', 'airbench94_compiled.py', 'airbench94_muon.py', 'airbench95.py', 'airbench96.py',
           'airbench96_faster.py']
CONFIGS = {
    'tiny': [['opt.batch_size', 128], ['opt.train_epochs', 2.5], ['opt.whiten_bias_epochs', 1],
             ['net.widths', {'block1': 16, 'block2': 32, 'block3': 32}], ['net.whiten_images', 256]],
    'published network, 1 epoch': [['opt.train_epochs', 1], ['net.whiten_images', 1024]],
}


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def edited(hyp, edits):
    hyp = copy.deepcopy(hyp)
    for path, value in edits:
        *parents, key = path.split('.')
        target = hyp
        for part in parents:
            target = target[part]
        target[key] = value  # Muon has no whiten_bias_epochs: a key it never reads
    return hyp


def run(module, edits, data_dir):
    hyp = edited(module.hyp, edits)
    train = module.CifarLoader(data_dir, train=True, batch_size=hyp['opt']['batch_size'], aug=hyp['aug'], device='cpu')
    test = module.CifarLoader(data_dir, train=False, batch_size=500, device='cpu')
    result = module.train(hyp, train, test, seed=0, verbose=False)
    rows = [{k: v for k, v in row.items() if k != 'time_seconds'} for row in result['epochs']]
    return result['net'].state_dict(), rows, result['tta_val_acc']


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--before', required=True, help='the git revision to compare with')
    parser.add_argument('--scripts', nargs='+', default=SCRIPTS)
    args = parser.parse_args()
    print('torch %s, %d threads; before: %s' % (torch.__version__, torch.get_num_threads(), args.before))
    with tempfile.TemporaryDirectory() as tmp:
        cifar_files.write_batches(os.path.join(tmp, 'data'), n_train=4096, n_test=500)
        failures = 0
        for script in args.scripts:
            old_path = os.path.join(tmp, 'before_' + script)
            with open(old_path, 'w') as f:
                f.write(subprocess.run(['git', 'show', '%s:%s' % (args.before, script)], cwd=ROOT, check=True,
                                       capture_output=True, text=True).stdout)
            before, after = load(old_path, 'before_' + script[:-3]), load(os.path.join(ROOT, script), script[:-3])
            for config, edits in CONFIGS.items():
                data_dir = os.path.join(tmp, 'data')
                (w0, r0, a0), (w1, r1, a1) = run(before, edits, data_dir), run(after, edits, data_dir)
                same = (w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0) and r0 == r1 and a0 == a1)
                failures += not same
                print('%-24s %-28s %s (tta_val_acc %.4f / %.4f, %d tensors)' % (
                    script, config, 'bit-identical' if same else 'DIFFERENT', a0, a1, len(w0)), flush=True)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
