"""airbench-harness, or python -m airbench: harness.py, whose SCRIPT may also name an installed script (airbench94).

    airbench-harness airbench94 --runs 200
    torchrun --standalone --nproc_per_node=8 -m airbench airbench94 --runs 10000
"""
import importlib.util
import os
import re
import sys


def load_harness():
    try:
        from airbench import harness  # the wheel carries harness.py inside the package
    except ImportError:  # a checkout or an editable install: harness.py beside the package
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'harness.py')
        spec = importlib.util.spec_from_file_location('harness', path)
        harness = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(harness)
    return harness


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and re.fullmatch(r'airbench\d\d\w*(\.py)?', argv[0]) and not os.path.exists(argv[0]):
        spec = importlib.util.find_spec(argv[0].removesuffix('.py'))
        argv[0] = spec.origin if spec and spec.origin else argv[0]
    harness = load_harness()
    harness.PROG = 'airbench-harness'
    return harness.main(argv)


if __name__ == '__main__':
    sys.exit(main())
