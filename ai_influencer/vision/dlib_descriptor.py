"""dlib's 128-d face descriptor network run by ONNX Runtime: the same model file, the same numbers, ~10x faster.

Why: dlib-bin runs its ResNet with its own CPU code (no BLAS): ~90 ms a face on this project's 2-core
machines, the largest single cost of QC once the face scan is cheap (docs/streaming.md). The network
in ``dlib_face_recognition_resnet_model_v1.dat`` (public domain, from ``face-recognition-models``) is a
ResNet of plain layers: convolutions with their affine (batch-norm) layers, ReLU, max/average pooling,
residual additions and one fully connected layer. This module reads its weights from dlib's file format
and builds the same graph for ONNX Runtime in memory (nothing is written to disk, no new model file):
on the 44 faces of the test photos the largest difference to dlib's own descriptor is 3e-7, at ~10 ms a
face with one thread.

How the file is read: dlib serialises a network layer by layer from the input up; each layer starts with
its name ("con_4", "affine_", ...), and parameter tensors are 4 sizes and raw little-endian float32. The
layer names are found in order; strides, paddings and filter counts come from the file itself. Residual
blocks are rebuilt from dlib's layout (a block's input is added to its output, through the 2x2 average
pool that precedes the addition in the file for a downsampling block; dlib's ``add_prev`` zero-pads the
smaller tensor). Anything unexpected raises ``DescriptorUnavailable``, and ``DlibDescriptor.load`` also
compares the built network with dlib's own on a check image: the face engine then keeps dlib's descriptor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHIP = 150  # dlib's input_rgb_image_sized<150>
# input_rgb_image_sized's per-channel means; dlib scales (pixel - mean) by 1/256
MEAN_RGB = np.array([122.782, 117.001, 104.298], dtype=np.float32)
CHECK_TOLERANCE = 1e-4  # largest difference to dlib's own descriptor on the check image
_LAYER = re.compile(rb"\x01[\x04-\x0f](con_\d|affine_|fc_\d|avg_pool_\d|max_pool_\d|add_prev_|relu_)")


class DescriptorUnavailable(RuntimeError):
    """The model file is not the network this module knows, or ONNX Runtime disagrees with dlib on it."""


@dataclass
class _Layer:
    kind: str  # con | affine | relu | max | avg | add | fc
    params: np.ndarray | None = None
    geometry: tuple[int, ...] = ()  # con: filters, rows, cols, stride y/x, padding y/x; pools: the same less filters


class _Reader:
    """dlib's serialisation: an int is one byte giving its length (0x80: negative) and that many bytes."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def int(self) -> int:
        head = self.data[self.pos]
        size = head & 0x0F
        value = int.from_bytes(self.data[self.pos + 1 : self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if head & 0x80 else value

    def text(self) -> str:
        size = self.int()
        value = self.data[self.pos : self.pos + size]
        self.pos += size
        return value.decode("ascii")

    def tensor(self) -> np.ndarray:
        if (version := self.int()) != 2:
            raise DescriptorUnavailable(f"tensor format {version}, expected 2")
        count = int(np.prod([self.int() for _ in range(4)]))
        if count <= 0 or self.pos + 4 * count > len(self.data):
            raise DescriptorUnavailable("tensor size out of range")
        values = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos)
        self.pos += 4 * count
        return values.astype(np.float32)


def read_layers(model_file: Path) -> list[_Layer]:
    """The network's layers from the input up (see the module doc)."""
    data = Path(model_file).read_bytes()
    layers: list[_Layer] = []
    end = 0
    for match in _LAYER.finditer(data):
        if match.start() < end:  # inside the floats of the tensor just read
            continue
        r = _Reader(data, match.start())
        name = r.text()
        if name.startswith("con_"):
            params = r.tensor()
            layers.append(_Layer("con", params, tuple(r.int() for _ in range(7))))
        elif name == "affine_":
            layers.append(_Layer("affine", r.tensor()))
        elif name.startswith("fc_"):
            outputs, inputs = r.int(), r.int()
            layers.append(_Layer("fc", r.tensor(), (outputs, inputs)))
        elif name.startswith(("max_pool", "avg_pool")):
            layers.append(_Layer(name[:3], None, tuple(r.int() for _ in range(6))))
        else:
            layers.append(_Layer("relu" if name == "relu_" else "add"))
        end = r.pos
    return layers


def build_model(layers: list[_Layer]) -> bytes:
    """The ONNX model (serialised) computing what dlib computes from a normalised NCHW chip."""
    from onnx import TensorProto, checker, helper, numpy_helper

    nodes, weights = [], []
    counter = iter(range(1_000_000))

    def name(prefix: str) -> str:
        return f"{prefix}{next(counter)}"

    def constant(values: np.ndarray, prefix: str, dtype: type = np.float32) -> str:
        key = name(prefix)
        weights.append(numpy_helper.from_array(np.ascontiguousarray(values, dtype=dtype), key))
        return key

    def pooled(size: int, window: int, stride: int, pad: int) -> int:
        return (size + 2 * pad - window) // stride + 1

    current, shape = "x", (3, CHIP, CHIP)
    block: tuple[str, tuple[int, int, int]] | None = None  # a residual block's input, once it has begun
    stem, i, fc_seen = True, 0, False
    while i < len(layers):
        layer = layers[i]
        if layer.kind == "con":
            filters, rows, cols, sy, sx, py, px = layer.geometry
            if i + 1 >= len(layers) or layers[i + 1].kind != "affine":
                raise DescriptorUnavailable("a convolution without its affine layer")
            w_size = filters * shape[0] * rows * cols
            params, affine = layer.params, layers[i + 1].params
            if params is None or affine is None or params.size != w_size + filters or affine.size != 2 * filters:
                raise DescriptorUnavailable(f"convolution {i}: unexpected parameter count")
            gamma, beta = affine[:filters], affine[filters:]
            kernel = params[:w_size].reshape(filters, shape[0], rows, cols) * gamma[:, None, None, None]
            bias = params[w_size:] * gamma + beta
            if not stem and block is None:
                block = (current, shape)
            out = name("conv")
            nodes.append(
                helper.make_node(
                    "Conv",
                    [current, constant(kernel, "w"), constant(bias, "b")],
                    [out],
                    kernel_shape=[rows, cols],
                    strides=[sy, sx],
                    pads=[py, px, py, px],
                )
            )
            current = out
            shape = (filters, pooled(shape[1], rows, sy, py), pooled(shape[2], cols, sx, px))
            i += 2
            continue
        if layer.kind == "relu":
            out = name("relu")
            nodes.append(helper.make_node("Relu", [current], [out]))
            current = out
        elif layer.kind == "max":
            rows, cols, sy, sx, py, px = layer.geometry
            out = name("maxpool")
            nodes.append(
                helper.make_node(
                    "MaxPool", [current], [out], kernel_shape=[rows, cols], strides=[sy, sx], pads=[py, px, py, px]
                )
            )
            current, stem = out, False
            shape = (shape[0], pooled(shape[1], rows, sy, py), pooled(shape[2], cols, sx, px))
        elif layer.kind == "avg" and layer.geometry[:2] == (0, 0):  # avg_pool_everything
            out = name("gap")
            nodes.append(helper.make_node("GlobalAveragePool", [current], [out]))
            current, shape = out, (shape[0], 1, 1)
        elif layer.kind == "avg":  # the skip path of a downsampling block
            if block is None:
                raise DescriptorUnavailable("an average pool outside a residual block")
            rows, cols, sy, sx, py, px = layer.geometry
            src, s = block
            out = name("avgpool")
            nodes.append(
                helper.make_node(
                    "AveragePool", [src], [out], kernel_shape=[rows, cols], strides=[sy, sx], pads=[py, px, py, px]
                )
            )
            block = (out, (s[0], pooled(s[1], rows, sy, py), pooled(s[2], cols, sx, px)))
        elif layer.kind == "add":
            if block is None:
                raise DescriptorUnavailable("a residual addition without a block")
            full = tuple(max(a, b) for a, b in zip(block[1], shape, strict=True))
            terms = []
            for tensor, s in (block, (current, shape)):
                if s != full:  # dlib's add_prev: the smaller tensor is zero-padded (channels, rows, columns)
                    pads = constant(
                        np.array([0, 0, 0, 0, 0, *(f - d for f, d in zip(full, s, strict=True))]), "pad", np.int64
                    )
                    padded = name("padded")
                    nodes.append(helper.make_node("Pad", [tensor, pads], [padded], mode="constant"))
                    tensor = padded
                terms.append(tensor)
            out = name("add")
            nodes.append(helper.make_node("Add", terms, [out]))
            current, shape, block = out, full, None
        elif layer.kind == "fc":
            outputs, inputs = layer.geometry
            if layer.params is None or layer.params.size != outputs * inputs or shape != (inputs, 1, 1):
                raise DescriptorUnavailable("the fully connected layer does not fit")
            flat = name("flat")
            nodes.append(helper.make_node("Flatten", [current], [flat]))
            nodes.append(
                helper.make_node("MatMul", [flat, constant(layer.params.reshape(inputs, outputs), "fc")], ["y"])
            )
            fc_seen, shape = True, (outputs, 1, 1)
        i += 1
    if not fc_seen or stem:
        raise DescriptorUnavailable("not the network of dlib_face_recognition_resnet_model_v1")
    graph = helper.make_graph(
        nodes,
        "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, CHIP, CHIP])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", shape[0]])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    checker.check_model(model)
    return model.SerializeToString()


class DlibDescriptor:
    """``embed(chips)``: dlib's descriptors of 150 px aligned face chips (``dlib.get_face_chip``), any batch size."""

    def __init__(self, model: bytes, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # QC runs one worker per CPU
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    @classmethod
    def load(cls, model_file: Path, reference: object, threads: int = 1) -> DlibDescriptor:
        """Built from ``model_file`` and checked against ``reference`` (dlib's ``face_recognition_model_v1``)
        on a fixed random chip; ``DescriptorUnavailable`` when they disagree."""
        net = cls(build_model(read_layers(model_file)), threads)
        chip = np.random.default_rng(0).integers(0, 256, size=(CHIP, CHIP, 3), dtype=np.uint8)
        expected = np.asarray(reference.compute_face_descriptor(chip), dtype=np.float32)  # type: ignore[attr-defined]
        difference = float(np.abs(net.embed([chip])[0] - expected).max())
        if not difference <= CHECK_TOLERANCE:
            raise DescriptorUnavailable(f"ONNX Runtime differs from dlib by {difference:.2g} on the check image")
        return net

    def embed(self, chips: list[np.ndarray]) -> np.ndarray:
        batch = (np.stack(chips).astype(np.float32) - MEAN_RGB) / 256.0
        return self._session.run(None, {"x": np.ascontiguousarray(batch.transpose(0, 3, 1, 2))})[0]
