// The one C++ extension of GPT Journey (built at first use by shared/engine/native.py): the GEMV
// kernels (gemv.h), decode attention and the small per-token ops (attention.h), and the fused
// decode step (decode_step.h). This file only binds them to Python.
#include "decode_step.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("f32_gemv", &f32_gemv, "y = x @ w.T + b for 1..4 fp32 rows, w (out, in) float32");
  m.def("int8_gemv", &int8_gemv, "y = x @ (q * scale).T + b for 1..4 fp32 rows");
  m.def("int4_gemv", &int4_gemv, "y = x @ W_hat.T + b for 1..4 fp32 rows, the nibble layout of int4_layout");
  m.def("int4_q8_gemv", &int4_q8_gemv, "int4_gemv with x rounded to int8 per 32 inputs; bf16 (scale, zero) pairs");
  m.def("has_q8_activations", &has_q8_activations, "whether int4_q8_gemv is compiled in (AVX512-VNNI)");
  m.def("isa", &isa, "the vector path compiled in");
  m.def("int4_layout", &int4_layout, "inputs per layout block for rows of `in` inputs: 128 or 32",
        py::arg("in"), py::arg("q8") = false);
  m.def("max_rows", []() { return kMaxRows; });
  m.def("decode_attention", &decode_attention, "decode tokens' attention over the KV cache, writing their K/V");

  py::class_<LinearOp>(m, "LinearOp")
      .def(py::init(&make_linear_op), py::arg("kind"), py::arg("w"), py::arg("s") = py::none(),
           py::arg("z") = py::none(), py::arg("group") = 0, py::arg("bias") = py::none())
      .def("__call__", &LinearOp::apply, "y = x @ W_hat.T + b for 1..4 fp32 rows")
      .def_readonly("in_features", &LinearOp::in_f)
      .def_readonly("out_features", &LinearOp::out_f);
  py::class_<DecodeBlock>(m, "DecodeBlock")
      .def(py::init([](at::Tensor ln1_w, at::Tensor ln1_b, LinearOp qkv, LinearOp attn_out, at::Tensor ln2_w,
                       at::Tensor ln2_b, LinearOp fc, LinearOp fc_out) {
        for (const at::Tensor* t : {&ln1_w, &ln1_b, &ln2_w, &ln2_b})
          TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == qkv.in_f,
                      "LayerNorm weights must be contiguous float32 of n_embd values");
        return DecodeBlock{ln1_w, ln1_b, ln2_w, ln2_b, qkv, attn_out, fc, fc_out};
      }));
  py::class_<DecodeModel>(m, "DecodeModel")
      .def(py::init([](at::Tensor wte, at::Tensor wpe, std::vector<DecodeBlock> blocks, at::Tensor lnf_w,
                       at::Tensor lnf_b, LinearOp lm_head, int64_t n_head, double eps) {
        for (const at::Tensor* t : {&wte, &wpe, &lnf_w, &lnf_b})
          TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->device().is_cpu(),
                      "embeddings and LayerNorm weights must be contiguous float32 CPU tensors");
        return DecodeModel(wte, wpe, std::move(blocks), lnf_w, lnf_b, std::move(lm_head), n_head, eps);
      }))
      .def("step", &DecodeModel::step, "logits [n, vocab] of one decode step; writes the step's K/V",
           py::call_guard<py::gil_scoped_release>())
      .def("step_argmax", &DecodeModel::step_argmax,
           "(logits, argmax of each row: the first NaN, else the first maximum) of one decode step",
           py::call_guard<py::gil_scoped_release>());
}
