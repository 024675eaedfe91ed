"""FLOPs of one whole run of each Muon script, counted by FlopCounterMode as SPEC.md counts them, into RESULTS.md.

    python -m benchmarks.flops_per_run            # airbench94_muon.py and airbench94_progressive.py

Per script: the forward and backward of every training step at its resolution, with the whitening bias
trainable or frozen as the schedule has it (support/flops.py), the final full 6-view TTA of the 10,000
test images, and, apart, the Newton-Schulz arithmetic of all its Muon steps (per filter in
airbench94_muon.py; one zero-padded batch of the six in airbench94_progressive.py). Then the ratios of
airbench94_progressive.py's figures to airbench94_muon.py's. Seconds on a CPU; nothing is trained.
"""
import os
import sys
import time

if not __package__:  # run as a file, the repository's imports below would fail: say how to run it
    print('run it from the repository root as: python -m benchmarks.%s' % os.path.basename(__file__)[:-3],
          file=sys.stderr)
    sys.exit(2)

import torch

from benchmarks.common import append_result, load_script, machine_description
from support.flops import count_flops, run_flops, schedule

SCRIPTS = ['airbench94_muon.py', 'airbench94_progressive.py']
PADDED_NEWTON_SCHULZ = {'airbench94_progressive.py'}  # one zero-padded batch of all filters per step


def newton_schulz_flops(script, module):
    """FLOPs of Newton-Schulz over a whole run: per step, for the six filters as C_out x C_in*9 matrices."""
    net = module.make_net(module.hyp)
    shapes = [(len(p), p[0].numel()) for p in net.parameters() if p.dim() == 4 and p.requires_grad]
    opt = module.hyp['opt']
    coefficients, steps = opt['newton_schulz_coefficients'], opt['newton_schulz_steps']
    if script in PADDED_NEWTON_SCHULZ:
        padded = torch.zeros(len(shapes), max(r for r, _ in shapes), max(c for _, c in shapes))
        per_step = count_flops(lambda: module.newton_schulz(padded, coefficients, steps))
    else:
        per_step = sum(count_flops(lambda: module.newton_schulz(torch.zeros(shape), coefficients, steps))
                       for shape in shapes)
    return per_step * len(schedule(module))


def main():
    start, figures = time.perf_counter(), {}
    for script in SCRIPTS:
        module = load_script(script)
        figures[script] = dict(run_flops(module), newton_schulz=newton_schulz_flops(script, module),
                               steps=len(schedule(module)), batch=module.hyp['opt']['batch_size'])
    muon, progressive = (figures[s] for s in SCRIPTS)
    lines = ['### FLOPs per run: airbench94_progressive.py against airbench94_muon.py, %s' % time.strftime('%Y-%m-%d'),
             '',
             '- command: `python -m benchmarks.flops_per_run` (%.0f s)' % (time.perf_counter() - start),
             '- machine: %s; torch %s; counted by torch.utils.flop_counter.FlopCounterMode in float32 (2 FLOPs per '
             'multiply-add of convs and matmuls), per image on the full-size networks, times each script\'s own '
             'schedule at CIFAR-10\'s size (support/flops.py)' % (machine_description('cpu'), torch.__version__),
             '',
             '| script | steps x batch | training TFLOPs | final 6-view TTA | whole run | Newton-Schulz (apart) |',
             '|---|---|---|---|---|---|']
    for script in SCRIPTS:
        f = figures[script]
        lines.append('| %s | %d x %d | %.1f | %.2f | %.1f | %.2f |' % (
            script, f['steps'], f['batch'], f['training'] / 1e12, f['tta'] / 1e12, f['whole'] / 1e12,
            f['newton_schulz'] / 1e12))
    lines += ['',
              '- airbench94_progressive.py / airbench94_muon.py: training / whole run %.3f (the issue\'s measure, '
              'at most 0.85); training / training %.3f; whole run / whole run %.3f; with Newton-Schulz, whole / '
              'whole %.3f' % (progressive['training'] / muon['whole'], progressive['training'] / muon['training'],
                              progressive['whole'] / muon['whole'],
                              (progressive['whole'] + progressive['newton_schulz'])
                              / (muon['whole'] + muon['newton_schulz']))]
    append_result(lines)


if __name__ == '__main__':
    main()
