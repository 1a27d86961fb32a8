"""model/measure/quant_graphs.py's int8 rewrites of a layer graph and model/measure/quant_check.py's layer identity (issue 33).

    /usr/bin/python3 -m unittest discover -s model/tests -v      (npm run test:model)
"""
import collections, sys, tempfile, unittest
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from measure import quant_graphs   # noqa: E402
from measure.quant_check import weight_key   # noqa: E402

LAYER = Path(__file__).resolve().parents[2] / "test/fixtures/tiny.layer1.onnx"


class QuantGraphsTest(unittest.TestCase):
    def test_every_constant_matmul_is_rewritten_and_nothing_else(self):
        src = onnx.load(str(LAYER))
        weights = [w for _, _, w in quant_graphs.constant_matmuls(src)]
        self.assertGreaterEqual(len(weights), 4)
        before = collections.Counter(n.op_type for n in src.graph.node)
        for form, op in (("dynamic", "DynamicQuantizeMatMul"), ("static", "MatMulIntegerToFloat"),
                         ("rowwise", "MatMulInteger"), ("nbits8", "MatMulNBits"), ("nbits4", "MatMulNBits")):
            if form.startswith("nbits") and any(w.shape[0] % 32 for w in weights):
                continue      # MatMulNBits needs K a multiple of its block
            m, n = quant_graphs.rewrite(LAYER, form, {})
            after = collections.Counter(x.op_type for x in m.graph.node)
            self.assertEqual(n, len(weights), form)
            self.assertEqual(after[op], len(weights), form)
            self.assertEqual(after["MatMul"], before["MatMul"] - len(weights), form)   # the attention's MatMuls stay
            self.assertEqual([o.name for o in m.graph.output], [o.name for o in src.graph.output])
            with tempfile.TemporaryDirectory() as d:    # serialisable, and every input it names exists
                onnx.save(m, str(Path(d) / "x.onnx"))
                known = {i.name for i in m.graph.input} | {i.name for i in m.graph.initializer} | {""}
                for x in m.graph.node:
                    self.assertTrue(set(x.input) <= known, f"{form}: {x.op_type} reads an unknown tensor")
                    known |= set(x.output)

    def test_int8_weights_are_the_weights_per_column(self):
        m, _ = quant_graphs.rewrite(LAYER, "static", {})
        inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        src = [w for _, _, w in quant_graphs.constant_matmuls(onnx.load(str(LAYER)))]
        got = [(inits[x.input[1]], inits[x.input[3]]) for x in m.graph.node if x.op_type == "MatMulIntegerToFloat"]
        for w, (q, s) in zip(src, got):
            self.assertEqual(q.dtype, np.int8)
            self.assertLessEqual(float(np.abs(q.astype(np.float32) * s - w).max()), float(s.max()) / 2 + 1e-7)

    def test_static_scale_comes_from_the_calibration_matched_by_weight(self):
        m0 = onnx.load(str(LAYER))
        _, _, w = next(quant_graphs.constant_matmuls(m0))
        key = weight_key(torch.from_numpy(np.ascontiguousarray(w.T)))      # torch's (out, in) weight
        m, _ = quant_graphs.rewrite(LAYER, "static", {key: 12.7})
        inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        first = next(x for x in m.graph.node if x.op_type == "QuantizeLinear")
        self.assertAlmostEqual(float(inits[first.input[1]]), 0.1, places=6)        # 12.7 / 127
        others = [float(inits[x.input[1]]) for x in m.graph.node if x.op_type == "QuantizeLinear"][1:]
        self.assertTrue(all(abs(v - 8.0 / 127) < 1e-7 for v in others))             # uncalibrated: the default


if __name__ == "__main__":
    unittest.main()
