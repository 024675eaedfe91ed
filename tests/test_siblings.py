"""The scripts are copies by design: shared code must stay identical, and hyp may differ only as intended."""
import ast
import os
import re

import pytest

from conftest import ROOT, SCRIPTS, compiles, load_script

# Top-level definitions that may differ from airbench94.py, and why
INTENDED_CODE_DIFFERENCES = {
    'airbench95.py': set(),
    'airbench96.py': {'ConvGroup'},  # a third conv per block, residual over the last two
    # one compiled net per process; main requires the warm-up that compiles it
    'airbench94_compiled.py': {'fresh_net', 'compile_mode', 'run_all'},
    # logits / width, whitening bias init, head init, the step loop; compiled as airbench94_compiled
    'airbench94_muon.py': {'Net', 'make_net', 'train', 'fresh_net', 'compile_mode', 'run_all'},
    # blocks of 2 (the proxy) or 3 convs; compiled; the proxy and the stream in the step loop
    'airbench96_faster.py': {'ConvGroup', 'Net', 'fresh_net', 'compile_mode', 'train', 'run_all'},
}
# Top-level names only a sibling has
INTENDED_EXTRA_NAMES = {
    'airbench94_compiled.py': {'compiled_nets'},
    'airbench94_muon.py': {'compiled_nets', 'newton_schulz', 'compiled_newton_schulz', 'Muon', 'make_optimizers',
                           'set_learning_rates'},
    'airbench96_faster.py': {'compiled_nets', 'training_stream', 'proxy_hyp', 'make_example_loss_fn', 'select_hardest'},
}
# Top-level names of airbench94.py that a sibling's method has no use for
INTENDED_MISSING_NAMES = {'airbench94_muon.py': {'LookaheadState', 'lookahead_decay', 'make_optimizer', 'lr_multiplier'}}
# Section banners of airbench94.py that a sibling replaces, in place
INTENDED_BANNER_CHANGES = {'airbench94_muon.py': {'Lookahead': 'Muon'}}

ABSENT = '(not in hyp)'
# hyp entries that differ from airbench94.py: (dotted path) -> value, or ABSENT
INTENDED_HYP_DIFFERENCES = {
    'airbench95.py': {'opt.train_epochs': 15, 'opt.lr': 10.0,
                      'net.widths': {'block1': 128, 'block2': 384, 'block3': 384}},
    'airbench94_compiled.py': {},
    'airbench96.py': {'opt.train_epochs': 37, 'opt.lr': 9.0, 'opt.weight_decay': 0.012,
                      'opt.lr_warmup_frac': 0.1, 'opt.lr_end': 0.0, 'aug.translate': 4, 'aug.cutout': 12,
                      'net.widths': {'block1': 128, 'block2': 384, 'block3': 512}, 'net.batchnorm_momentum': 0.1},
    'airbench94_muon.py': {'opt.train_epochs': 8, 'opt.batch_size': 2000, 'opt.weight_decay': 2e-6,
                           'opt.whiten_bias_lr': 0.053, 'opt.norm_bias_lr': 0.053, 'opt.head_lr': 0.67,
                           'opt.muon_lr': 0.24, 'opt.muon_momentum': 0.6, 'opt.muon_nesterov': True,
                           'opt.newton_schulz_coefficients': (3.4445, -4.7750, 2.0315), 'opt.newton_schulz_steps': 3,
                           'opt.whiten_bias_steps': 75,
                           **{path: ABSENT for path in ['opt.lr', 'opt.bias_scaler', 'opt.whiten_bias_epochs',
                                                        'opt.lr_warmup_frac', 'opt.lr_start', 'opt.lr_end',
                                                        'lookahead.every_steps', 'lookahead.decay_per_step',
                                                        'lookahead.power', 'net.scaling_factor']}},
    'airbench96_faster.py': {'opt.train_epochs': 45, 'opt.lr': 9.0, 'opt.weight_decay': 0.012,
                             'opt.lr_warmup_frac': 0.1, 'opt.lr_end': 0.0, 'aug.translate': 4, 'aug.cutout': 12,
                             'net.widths': {'block1': 128, 'block2': 384, 'block3': 512}, 'net.batchnorm_momentum': 0.1,
                             # entries airbench94.py does not have
                             'opt.whiten_bias_freeze': False, 'net.convs_per_block': 3,
                             'proxy.widths': {'block1': 32, 'block2': 64, 'block3': 64}, 'proxy.convs_per_block': 2,
                             'proxy.keep_fraction': 0.5, 'proxy.train_every_steps': 4},
}

SIBLINGS = [s for s in SCRIPTS if s != 'airbench94.py']


def definitions(script):
    """{name: source} of every top-level function, class and assignment of a script."""
    source = open(os.path.join(ROOT, script)).read()
    tree = ast.parse(source)
    found = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found[node.name] = ast.get_source_segment(source, node)
        elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            found[','.join(t.id for t in node.targets)] = ast.get_source_segment(source, node)
    return found


def flatten(d, prefix=''):
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and key != 'widths':
            out.update(flatten(value, prefix + key + '.'))
        else:
            out[prefix + key] = value
    return out


def banners(script):
    return re.findall(r'^#\s+(\S.*?)\s+#$', open(os.path.join(ROOT, script)).read(), flags=re.M)


@pytest.mark.parametrize('sibling', SIBLINGS)
def test_shared_definitions_are_identical_to_airbench94(sibling):
    reference, other = definitions('airbench94.py'), definitions(sibling)
    intended = INTENDED_CODE_DIFFERENCES[sibling] | {'hyp'}
    assert set(other) - set(reference) == INTENDED_EXTRA_NAMES.get(sibling, set())
    assert set(reference) - set(other) == INTENDED_MISSING_NAMES.get(sibling, set())
    drifted = sorted(name for name in other if name in reference and name not in intended
                     and reference[name] != other[name])
    assert drifted == [], '%s drifted from airbench94.py in %s' % (sibling, drifted)
    unused = sorted(name for name in intended - {'hyp'} if reference[name] == other[name])
    assert unused == [], 'listed as different but identical: %s' % unused


@pytest.mark.parametrize('sibling', SIBLINGS)
def test_hyp_differs_from_airbench94_exactly_as_intended(sibling):
    reference, other = flatten(load_script('airbench94.py').hyp), flatten(load_script(sibling).hyp)
    differences = {k: other.get(k, ABSENT) for k in set(reference) | set(other)
                   if other.get(k, ABSENT) != reference.get(k, ABSENT)}
    assert differences == INTENDED_HYP_DIFFERENCES[sibling]


@pytest.mark.parametrize('sibling', SIBLINGS)
def test_header_lists_every_intended_change(sibling):
    header = load_script(sibling).__doc__
    assert 'Changes relative to airbench94.py' in header
    for path in INTENDED_HYP_DIFFERENCES[sibling]:
        assert path.split('.')[-1] in header, '%s is not in the change list' % path


@pytest.mark.parametrize('sibling', SIBLINGS)
def test_section_banners_come_in_the_same_order(sibling):
    changes = INTENDED_BANNER_CHANGES.get(sibling, {})
    assert banners(sibling) == [changes.get(banner, banner) for banner in banners('airbench94.py')]


@pytest.mark.parametrize('script', [s for s in SCRIPTS if compiles(s)])
def test_a_compiled_script_has_no_branch_for_skipping_the_warm_up_it_requires(script):
    # parse_args refuses --no-warmup; nothing after it may still ask whether it was given
    readers = sorted(name for name, source in definitions(script).items() if 'no_warmup' in source)
    assert readers == ['parse_args']


def test_airbench94_has_the_house_sections():
    assert banners('airbench94.py') == ['Imports', 'Hyperparameters', 'Dataset', 'Network', 'Whitening initialization',
                                        'Lookahead', 'Logging', 'Evaluation', 'Training', 'Main']
