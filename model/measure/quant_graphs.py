"""int8 forms of one exported layer graph, for timing them against it (issue 33): every MatMul with a constant
2-D weight rewritten, int8 weights per output column, in one of onnxruntime's integer forms.

    /usr/bin/python3 model/measure/quant_graphs.py model/release/infdit-s4.layer1.onnx /tmp/forms [--amax runs/int8/amax.json]
    node --import tsx bench/layer-forms.ts /tmp/forms/*.onnx --batches 8,16

Forms written (<stem>.<form>.onnx):
  dynamic   com.microsoft DynamicQuantizeMatMul: uint8 activations quantised per call over the whole batch (so a
            block's bytes would depend on its batch: not usable as is, the speed of the integer kernels)
  static    QuantizeLinear with one fixed scale per layer + com.microsoft MatMulIntegerToFloat: batch-invariant
            (scales: --amax, quant_check.py's calibration, matched by weight; else 8 / 127 for every layer)
  rowwise   a scale per token computed in the graph (Abs, ReduceMax, Div, Round, Add, Cast) + MatMulInteger:
            batch-invariant at the quality of quant_check.py --activations token
  nbits8, nbits4   com.microsoft MatMulNBits (block 32, accuracy level 4: int8 activations per block of K)
These graphs are for timing only: their quality is quant_check.py's measure, on the PyTorch model.
"""
import json, sys
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # model/: modules by room


def constant_matmuls(m):
    """(index, node, weight array) of every MatMul whose second input is a constant 2-D tensor."""
    inits = {i.name: i for i in m.graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in m.graph.node if n.op_type == "Constant"}
    for i, n in enumerate(m.graph.node):
        if n.op_type == "MatMul":
            b = n.input[1]
            w = numpy_helper.to_array(inits[b]) if b in inits else consts.get(b)
            if w is not None and w.ndim == 2:
                yield i, n, w


def per_column(w):
    s = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0
    return np.clip(np.round(w / s), -127, 127).astype(np.int8), s.astype(np.float32)


def amax_for(w, amax):
    """The calibrated max |x| of the layer whose weight (torch's, out × in, or a row slice of it) is w's transpose."""
    wt = w.T
    for key, v in amax.items():
        shape = tuple(int(x) for x in key.split(":")[0].strip("()").split(",") if x.strip())
        firsts = [float(x) for x in key.split(":")[1].split(",")]
        if shape[1] == wt.shape[1] and shape[0] >= wt.shape[0] and np.allclose(wt.flatten()[:6], firsts, rtol=1e-6, atol=0):
            return v
    return None


def rewrite(src, form, amax):
    m = onnx.load(str(src))
    C = lambda name, arr: m.graph.initializer.append(numpy_helper.from_array(np.asarray(arr), name)) or name
    C("iq_zp", np.array(128, np.uint8)); C("iq_127", np.array(127.0, np.float32))
    C("iq_eps", np.array(1e-8, np.float32)); C("iq_128", np.array(128.0, np.float32))
    replace = {}
    for i, n, w in constant_matmuls(m):
        a, y, p = n.input[0], n.output[0], (n.name or n.output[0]).replace("/", "_") + "_" + form
        if form.startswith("nbits"):
            bits, block = int(form[5:]), 32
            K, N = w.shape
            zp, qmax = 2 ** (bits - 1), 2 ** (bits - 1) - 1
            wt = w.T.reshape(N, K // block, block)
            s = np.maximum(np.abs(wt).max(axis=2), 1e-12) / qmax
            q = (np.clip(np.round(wt / s[..., None]), -qmax, qmax) + zp).astype(np.uint8)
            if bits == 4:
                q = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
            C(p + "W", q); C(p + "S", s.reshape(-1).astype(np.float32))
            replace[i] = [helper.make_node("MatMulNBits", [a, p + "W", p + "S"], [y], name=n.name, domain="com.microsoft",
                                               K=K, N=N, bits=bits, block_size=block, accuracy_level=4)]
            continue
        q, s = per_column(w)
        C(p + "W", q); C(p + "S", s)
        if form == "dynamic":
            replace[i] = [helper.make_node("DynamicQuantizeMatMul", [a, p + "W", p + "S"], [y], name=n.name, domain="com.microsoft")]
        elif form == "static":
            v = amax_for(w, amax) if amax else None
            C(p + "AS", np.array((v if v else 8.0) / 127.0, np.float32))
            replace[i] = [helper.make_node("QuantizeLinear", [a, p + "AS", "iq_zp"], [p + "aq"]),
                              helper.make_node("MatMulIntegerToFloat", [p + "aq", p + "W", p + "AS", p + "S", "iq_zp"], [y],
                                               name=n.name, domain="com.microsoft")]
        elif form == "rowwise":
            replace[i] = [helper.make_node("Abs", [a], [p + "abs"]),
                              helper.make_node("ReduceMax", [p + "abs"], [p + "amax"], axes=[-1], keepdims=1),
                              helper.make_node("Max", [p + "amax", "iq_eps"], [p + "amax1"]),
                              helper.make_node("Div", [p + "amax1", "iq_127"], [p + "as"]),
                              helper.make_node("Div", [a, p + "as"], [p + "ad"]),
                              helper.make_node("Round", [p + "ad"], [p + "ar"]),
                              helper.make_node("Add", [p + "ar", "iq_128"], [p + "ap"]),
                              helper.make_node("Cast", [p + "ap"], [p + "aq"], to=onnx.TensorProto.UINT8),
                              helper.make_node("MatMulInteger", [p + "aq", p + "W", "iq_zp"], [p + "y32"]),
                              helper.make_node("Cast", [p + "y32"], [p + "yf"], to=onnx.TensorProto.FLOAT),
                              helper.make_node("Mul", [p + "yf", p + "as"], [p + "y1"]),
                              helper.make_node("Mul", [p + "y1", p + "S"], [y], name=n.name)]
        else:
            raise SystemExit(f"unknown form {form!r}")
    nodes = [x for i, n in enumerate(m.graph.node) for x in replace.get(i, [n])]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    if not any(o.domain == "com.microsoft" for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return m, len(replace)


def main():
    args = sys.argv[1:]
    amax = {}
    if "--amax" in args:
        i = args.index("--amax")
        amax = json.loads(Path(args[i + 1]).read_text())
        del args[i:i + 2]
    if len(args) != 2 or not args[0].endswith(".onnx") or not Path(args[0]).exists():
        raise SystemExit("usage: quant_graphs.py LAYER.onnx OUT_DIR [--amax AMAX.json] (LAYER.onnx: an exported layer graph)")
    src, out = Path(args[0]), Path(args[1])
    out.mkdir(parents=True, exist_ok=True)
    for form in ("dynamic", "static", "rowwise", "nbits8", "nbits4"):
        m, n = rewrite(src, form, amax)
        dst = out / f"{src.stem}.{form}.onnx"
        onnx.save(m, str(dst))
        print(f"{dst}: {n} MatMuls")


if __name__ == "__main__":
    main()
