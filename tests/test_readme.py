"""The README stays true: its example runs, and CI runs its test command."""
import json
import os
import re
import subprocess
import sys

from conftest import MAIN_WITH_EDITS, ROOT, TINY_HYP
from support import cifar_files

README = open(os.path.join(ROOT, 'README.md')).read()

# Imports airbench94 under its own name with the tiny hyp (as MAIN_WITH_EDITS edits it), then runs the
# README's code as is, in the repository's folder, as a reader who copied the example would
EXAMPLE_DRIVER = MAIN_WITH_EDITS.replace('sys.exit(module.main(sys.argv[3:]))', """
sys.modules['airbench94'] = module
exec(sys.argv[3])
""")


def test_data_selection_example_runs(tmp_path):
    code = re.search(r'<!-- data-selection-example -->\n```python\n(.*?)```', README, flags=re.S).group(1)
    cifar_files.write_batches(str(tmp_path / 'cifar10'))
    # One epoch per run: the example's 11 trainings need to run, not to learn
    edits = TINY_HYP + [['opt.train_epochs', 1]]
    result = subprocess.run([sys.executable, '-c', EXAMPLE_DRIVER, os.path.join(ROOT, 'airbench94.py'), json.dumps(edits),
                             code],
                            cwd=str(tmp_path), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split(':')[0] for line in lines] == ['least confident half', 'random half']
    assert all(re.search(r'mean TTA accuracy 0\.\d{4} over 5 runs$', line) for line in lines)


def test_ci_runs_the_readme_test_command():
    command = re.search(r'&& (python3 -m pytest [^\n]*)', README).group(1)
    assert command in open(os.path.join(ROOT, '.ci', 'run')).read()
