"""The ATen ops a training run dispatches, split by the script's own clock: a CPU view of the GPU path.

Every op that reaches ATen passes through a TorchDispatchMode, on any device. On CUDA each
such op is about one kernel launch, and a few of them (SYNC_OPS) make the host wait for the
device. The scripts call `device_clock(device)` at both ends of every timed span (whitening
init, each epoch's training steps, the final TTA), so patching it to start a new segment
splits the recorded ops by span: `timed_segments()` returns them in order. Used by the tests
(no host sync in the step loop) and by benchmarks/ops_per_step.py.
"""
import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that copy a value to the host, or whose output size depends on the data (GPU.md section 5)
SYNC_OPS = frozenset(['aten._local_scalar_dense', 'aten.nonzero', 'aten.masked_select', 'aten.is_nonzero',
                      'aten.equal'])


class OpRecorder(TorchDispatchMode):
    """Records the name of every dispatched op ('aten.convolution', ...) into the current segment,
    and which of them are views (an aliasing output: no kernel on any device)."""

    def __init__(self):
        super().__init__()
        self.segments = [[]]
        self.views = set()

    def __enter__(self):
        # torch.compile'd code runs eagerly while recording, explicitly: dynamo compiles nothing under
        # a dispatch mode anyway, and (torch 2.13) a compiled call made under one would leave that
        # code uncompiled for the rest of the process, for every net and shape it had not yet seen
        self.eager = torch.compiler.set_stance('force_eager')
        try:
            return super().__enter__()
        except BaseException:
            self.eager.__exit__(None, None, None)
            raise

    def __exit__(self, *exc_info):
        try:
            return super().__exit__(*exc_info)
        finally:
            self.eager.__exit__(*exc_info)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        self.segments[-1].append(name)
        if func.is_view:
            self.views.add(name)
        return func(*args, **(kwargs or {}))

    def launching(self, ops):
        """The ops that can launch a kernel: not views, not the profiler's record_function markers."""
        return [op for op in ops if op not in self.views and not op.startswith('profiler.')]

    def new_segment(self):
        self.segments.append([])

    def timed_segments(self):
        """The segments between a clock start and its stop: [whitening, epoch 1, ..., TTA] for train()."""
        return self.segments[1::2]


@contextlib.contextmanager
def recording_by_clock(module):
    """Record every op while the block runs, in a new segment at every call of module.device_clock."""
    recorder, clock = OpRecorder(), module.device_clock

    def clock_and_mark(device):
        seconds = clock(device)
        recorder.new_segment()
        return seconds
    module.device_clock = clock_and_mark
    try:
        with recorder:
            yield recorder
    finally:
        module.device_clock = clock
