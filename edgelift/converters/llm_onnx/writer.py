"""An ONNX graph written node by node, its weights streamed to one external-data file as they come.

The graph proto holds no tensor bytes (beyond a few small constants), so a model of any size is built
in the memory of its largest tensor: each weight is converted, appended to ``<model>.onnx.data`` and
dropped. Large tensors start on a 4 KiB boundary so ONNX Runtime can map them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

PAGE_ALIGN_BYTES = 4096
SMALL_ALIGN_BYTES = 64
PAGE_ALIGN_FROM_BYTES = 1 << 20  # tensors this large are page-aligned
INLINE_MAX_BYTES = 256  # shape constants and scalars stay in the graph proto
MS_DOMAIN = "com.microsoft"


class GraphWriter:
    def __init__(self, data_path: Path) -> None:
        from onnx import TensorProto, helper, numpy_helper

        self._helper, self._numpy_helper, self._tensor_proto = helper, numpy_helper, TensorProto
        self.data_path = data_path
        self._data = open(data_path, "wb")
        self._offset = 0
        self._used: Counter = Counter()
        self.nodes: list = []
        self.initializers: list = []
        self.inputs: list = []
        self.outputs: list = []
        self.weight_bytes = 0

    def unique(self, hint: str) -> str:
        """A value or node name not used before (``hint``, then ``hint_1``...): the checker wants them unique."""
        n = self._used[hint]
        self._used[hint] += 1
        return hint if n == 0 else f"{hint}_{n}"

    def op(self, op_type: str, inputs: list[str], name: str, n_out: int = 1, domain: str = "",
           outputs: list[str] | None = None, **attrs) -> list[str]:
        outs = outputs or [self.unique(f"{name}/out{i}" if n_out > 1 else f"{name}/out") for i in range(n_out)]
        self.nodes.append(self._helper.make_node(op_type, inputs, outs, name=self.unique(name), domain=domain or None,
                                                 **attrs))
        return outs

    def op1(self, op_type: str, inputs: list[str], name: str, domain: str = "", **attrs) -> str:
        return self.op(op_type, inputs, name, 1, domain, **attrs)[0]

    def rename(self, value: str, new: str) -> None:
        """Give the value ``value`` (a node's output) the name ``new``: graph outputs get their public names."""
        for node in reversed(self.nodes):
            for j, out in enumerate(node.output):
                if out == value:
                    node.output[j] = new
                    return
        raise KeyError(value)

    def const(self, name: str, value) -> str:
        """A small constant (shapes, axes, scalars) kept in the graph."""
        arr = np.asarray(value)
        assert arr.nbytes <= INLINE_MAX_BYTES, name
        self.initializers.append(self._numpy_helper.from_array(arr, self.unique(name)))
        return self.initializers[-1].name

    def weight(self, name: str, array: np.ndarray) -> str:
        """``array`` appended to the external-data file; the initializer only points at it."""
        arr = np.ascontiguousarray(array)
        align = PAGE_ALIGN_BYTES if arr.nbytes >= PAGE_ALIGN_FROM_BYTES else SMALL_ALIGN_BYTES
        pad = -self._offset % align
        if pad:
            self._data.write(b"\0" * pad)
            self._offset += pad
        self._data.write(arr.tobytes())
        t = self._tensor_proto()
        t.name = self.unique(name)
        t.dims.extend(arr.shape)
        t.data_type = self._helper.np_dtype_to_tensor_dtype(arr.dtype)
        t.data_location = self._tensor_proto.EXTERNAL
        for k, v in (("location", self.data_path.name), ("offset", str(self._offset)), ("length", str(arr.nbytes))):
            entry = t.external_data.add()
            entry.key, entry.value = k, v
        self._offset += arr.nbytes
        self.weight_bytes += arr.nbytes
        self.initializers.append(t)
        return t.name

    def input(self, name: str, elem_type: int, shape: list) -> str:
        self.inputs.append(self._helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, name: str, elem_type: int, shape: list) -> str:
        self.outputs.append(self._helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def finish(self, model_path: Path, opset: int, producer: str, metadata: dict[str, str]):
        """Close the data file and write the graph proto beside it; the ``ModelProto`` is returned."""
        self._data.close()
        h = self._helper
        graph = h.make_graph(self.nodes, "decoder", self.inputs, self.outputs, self.initializers)
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset), h.make_opsetid(MS_DOMAIN, 1)],
                             producer_name=producer)
        model.ir_version = 8  # ONNX Runtime 1.14+ reads it; opset 17 needs IR >= 8
        for k, v in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = k, v
        model_path.write_bytes(model.SerializeToString())
        return model

    def close(self) -> None:
        if not self._data.closed:
            self._data.close()
