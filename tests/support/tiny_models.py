"""Small real models built on the fly (no downloads).

``tiny_segmenter_onnx`` writes a U^2-Net-compatible ONNX graph (input
1x3x320x320, output 1x1x320x320): the per-pixel channel mean through a
sigmoid, so the mask follows image brightness. It exercises rembg's real
session, pre- and post-processing code paths offline.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper


def tiny_segmenter_onnx(path: Path) -> Path:
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 320, 320])
    out = helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, 320, 320])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input.1", "axes"], ["mean"], keepdims=1),
            helper.make_node("Sigmoid", ["mean"], ["mask"]),
        ],
        "tiny_segmenter",
        [inp],
        [out],
        initializer=[axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
