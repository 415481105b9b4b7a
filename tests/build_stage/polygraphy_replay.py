"""polygraphy 0.53.6's TrtRunner on the host side, for tests without a GPU: the device work is a
numpy stand-in engine, everything after it is what TrtRunner does with the outputs.

What TrtRunner._infer_impl (polygraphy/backend/trt/runner.py) does per output, replayed here:
one flat uint8 host buffer per output name, kept in `host_output_buffers` for the runner's life
and reused by every infer(): `util.array.resize_or_reallocate` to the output's byte size (a numpy
`resize(refcheck=False)` in place), a copy of the device output into it (cudaMemcpy; here the
stand-in's bytes), and `util.array.view(raw, dtype, shape)`: a view of that buffer, returned in
an OrderedDict. So outputs kept from one infer() change on the next. The runner subclasses
polygraphy's own BaseRunner, so infer() checks the feeds' dtypes and shapes as the real one does.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
from polygraphy import util
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.datatype import DataType

# feeds -> {output name: float32 array}: what the engine's device buffers would hold.
StandInEngine = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
Inputs = list[tuple[str, type, tuple[int, ...]]]


class ReplayedTrtRunner(BaseRunner):
    def __init__(self, engine: StandInEngine, inputs: Inputs) -> None:
        super().__init__(prefix="ReplayedTrtRunner")
        self._engine = engine
        self._inputs = inputs
        self.infer_calls = 0

    def activate_impl(self) -> None:
        self.host_output_buffers: OrderedDict[str, np.ndarray] = OrderedDict()

    def get_input_metadata_impl(self) -> TensorMetadata:
        # A new object per call, read from the engine, as TrtRunner's (get_input_metadata
        # converts dtypes in place).
        meta = TensorMetadata()
        for name, dtype, shape in self._inputs:
            meta.add(name, DataType.from_dtype(np.dtype(dtype)), shape)
        return meta

    def infer_impl(self, feed_dict, copy_outputs_to_host=None, return_raw_buffers=None):
        assert copy_outputs_to_host in (None, True) and not return_raw_buffers
        start = time.time()
        self.infer_calls += 1
        outputs = OrderedDict()
        for name, device in self._engine(feed_dict).items():
            device = np.ascontiguousarray(device, dtype=np.float32)
            nbytes = device.nbytes
            if name not in self.host_output_buffers:
                self.host_output_buffers[name] = np.empty((nbytes,), dtype=np.uint8)
            raw = util.array.resize_or_reallocate(self.host_output_buffers[name], (nbytes,))
            self.host_output_buffers[name] = raw
            raw[:] = device.reshape(-1).view(np.uint8)  # cudaMemcpy DeviceToHost
            outputs[name] = util.array.view(raw, DataType.FLOAT32, device.shape)
        self.inference_time = time.time() - start
        return outputs

    def deactivate_impl(self) -> None:
        del self.host_output_buffers


def engine_inputs(chw: tuple[int, ...], *extra: tuple[str, type]) -> Inputs:
    """The engine's inputs (name, dtype, shape; -1 dynamic): the uint8 image plus [N, 1] ones."""
    return [("image", np.uint8, (-1, *chw)), *((name, dtype, (-1, 1)) for name, dtype in extra)]


def install(monkeypatch, engine: StandInEngine, inputs: Inputs) -> list[ReplayedTrtRunner]:
    """Makes `from polygraphy.backend.trt import TrtRunner, EngineFromBytes` (imported by
    engine_check._run when it runs) give the replayed runner; returns the runners it made."""
    import polygraphy.backend.trt as trt_backend

    made: list[ReplayedTrtRunner] = []

    def runner(loader) -> ReplayedTrtRunner:
        assert isinstance(loader, bytes)  # EngineFromBytes below: the plan itself
        made.append(ReplayedTrtRunner(engine, inputs))
        return made[-1]

    monkeypatch.setattr(trt_backend, "EngineFromBytes", lambda plan: bytes(plan))
    monkeypatch.setattr(trt_backend, "TrtRunner", runner)
    return made
