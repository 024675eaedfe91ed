"""Run an airbench script's CLI after editing its hyp, the way a researcher would edit the file.

    python benchmarks/run_with_hyp.py airbench96.py '[["opt.train_epochs", 4]]' --runs 1 ...

Each edit is [path, value]: a dotted path into `hyp` ("opt.train_epochs"), or an UPPER_CASE
name of a module constant (the tests use this, e.g. for CIFAR10_TARBALL_MD5). The benchmarks
and the tests both run scripts through this file; as a file it also works under torchrun:
torchrun ... benchmarks/run_with_hyp.py SCRIPT EDITS ARGS.
"""
import importlib.util
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def edit_hyp(hyp, edits):
    """Apply the dotted-path edits to `hyp` in place (constants are skipped); returns hyp."""
    for path, value in edits:
        if not path.isupper():
            *parents, key = path.split('.')
            target = hyp
            for name in parents:
                target = target[name]
            target[key] = value
    return hyp


def load_edited(script, edits, name='__airbench__'):
    """Import `script` (a path, relative to the repository or absolute) and apply `edits`."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    edit_hyp(module.hyp, edits)
    for path, value in edits:
        if path.isupper():
            setattr(module, path, value)
    return module


if __name__ == '__main__':
    sys.exit(load_edited(sys.argv[1], json.loads(sys.argv[2])).main(sys.argv[3:]))
