"""The README stays true: its example runs, and CI runs its test command."""
import json
import os
import re
import subprocess
import sys

from conftest import DRIVER, ROOT, TINY_HYP
import cifar_files

README = open(os.path.join(ROOT, 'README.md')).read()

# Imports airbench94 under its own name with the tiny hyp, then runs the README's code as is
EXAMPLE_DRIVER = """
import json, sys
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, %r)
import airbench94
from run_with_hyp import edit_hyp
edit_hyp(airbench94.hyp, json.loads(sys.argv[2]))
exec(sys.argv[3])
""" % os.path.dirname(DRIVER)


def test_data_selection_example_runs(tmp_path):
    code = re.search(r'<!-- data-selection-example -->\n```python\n(.*?)```', README, flags=re.S).group(1)
    cifar_files.write_batches(str(tmp_path / 'cifar10'))
    # One epoch per run: the example's 11 trainings need to run, not to learn
    edits = TINY_HYP + [['opt.train_epochs', 1]]
    result = subprocess.run([sys.executable, '-c', EXAMPLE_DRIVER, ROOT, json.dumps(edits), code],
                            cwd=str(tmp_path), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split(':')[0] for line in lines] == ['least confident half', 'random half']
    assert all(re.search(r'mean TTA accuracy 0\.\d{4} over 5 runs$', line) for line in lines)


def test_ci_runs_the_readme_test_command():
    command = re.search(r'&& (python3 -m pytest [^\n]*)', README).group(1)
    assert command in open(os.path.join(ROOT, '.ci', 'run')).read()
