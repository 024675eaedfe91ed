"""Run an airbench script's CLI after editing its hyp, the way a researcher would edit the file.

    python benchmarks/run_with_hyp.py airbench96.py '[["opt.train_epochs", 4]]' --runs 1 ...

Works under torchrun too (it is a file): torchrun ... benchmarks/run_with_hyp.py SCRIPT EDITS ARGS.
"""
import importlib.util
import json
import os
import sys

if __name__ == '__main__':
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), sys.argv[1])
    spec = importlib.util.spec_from_file_location('__airbench__', script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for path, value in json.loads(sys.argv[2]):
        *parents, key = path.split('.')
        target = module.hyp
        for name in parents:
            target = target[name]
        target[key] = value
    sys.exit(module.main(sys.argv[3:]))
