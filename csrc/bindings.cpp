// The one registration file: op schemas in the `lddm` namespace, their CPU / CUDA kernels
// and the autograd kernels of those with a backward. The same op names dispatch by device;
// the fake (meta) implementations that torch.compile and CUDA-graph capture need are
// registered by lddm_fast/_ext.py.
#include <Python.h>

#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include "cpu/dispatch.h"
#include "ops.h"

TORCH_LIBRARY(lddm, m) {
  m.set_python_module("lddm_fast._ext");
  m.def(
      "group_norm(Tensor x, int num_groups, Tensor? weight, Tensor? bias, float eps, "
      "Tensor? scale, Tensor? shift, bool silu) -> Tensor");
  m.def(
      "group_norm_stats(Tensor x, int num_groups, Tensor? weight, Tensor? bias, float eps, "
      "Tensor? scale, Tensor? shift, bool silu) -> (Tensor, Tensor)");
  m.def(
      "group_norm_backward(Tensor grad_y, Tensor x, int num_groups, Tensor? weight, "
      "Tensor? bias, float eps, Tensor? scale, Tensor? shift, bool silu, "
      "Tensor? stats=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("temporal_attention(Tensor q, Tensor k, Tensor v, int num_heads, float scale) -> Tensor");
  m.def(
      "temporal_attention_lse(Tensor q, Tensor k, Tensor v, int num_heads, float scale) "
      "-> (Tensor, Tensor)");
  m.def(
      "temporal_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor lse, "
      "int num_heads, float scale) -> (Tensor, Tensor, Tensor)");
  m.def("sampler_step(Tensor x, Tensor eps, Tensor a, Tensor b, Tensor? noise, Tensor? c) -> Tensor");
}

TORCH_LIBRARY_IMPL(lddm, CPU, m) {
  m.impl("group_norm", &lddm::group_norm_cpu);
  m.impl("group_norm_stats", &lddm::group_norm_stats_cpu);
  m.impl("group_norm_backward", &lddm::group_norm_backward_cpu);
  m.impl("temporal_attention", &lddm::temporal_attention_cpu);
  m.impl("temporal_attention_lse", &lddm::temporal_attention_lse_cpu);
  m.impl("temporal_attention_backward", &lddm::temporal_attention_backward_cpu);
  m.impl("sampler_step", &lddm::sampler_step_cpu);
}

// The ops with a backward (csrc/autograd.cpp): every device's training calls pass here.
// The others, the backward ops included, refuse a backward through them with an error
// naming the op (autograd's default fallback would only warn and drop the gradient).
TORCH_LIBRARY_IMPL(lddm, Autograd, m) {
  m.impl("group_norm", &lddm::group_norm_autograd);
  m.impl("group_norm_stats", &lddm::group_norm_stats_autograd);
  m.impl("temporal_attention_lse", &lddm::temporal_attention_lse_autograd);
  for (const char* op : {"group_norm_backward", "temporal_attention",
                         "temporal_attention_backward", "sampler_step"})
    m.impl(op, torch::autograd::autogradNotImplementedFallback());
}

#ifdef LDDM_WITH_CUDA
TORCH_LIBRARY_IMPL(lddm, CUDA, m) {
  m.impl("group_norm", &lddm::group_norm_cuda);
  m.impl("group_norm_stats", &lddm::group_norm_stats_cuda);
  m.impl("group_norm_backward", &lddm::group_norm_backward_cuda);
  m.impl("temporal_attention", &lddm::temporal_attention_cuda);
  m.impl("temporal_attention_lse", &lddm::temporal_attention_lse_cuda);
  m.impl("temporal_attention_backward", &lddm::temporal_attention_backward_cuda);
  m.impl("sampler_step", &lddm::sampler_step_cuda);
}
#endif

// `import lddm_fast._C` runs the registrations above; the module itself only reports
// how the CUDA part was built (decided by CMake) and which CPU kernel build the ops call.
static PyObject* cpu_isa(PyObject*, PyObject*) {
  try {
    return PyUnicode_FromString(lddm::cpu::isa_name(lddm::cpu::selected_isa()));
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
    return nullptr;
  }
}

static PyMethodDef lddm_methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS,
     "cpu_isa() -> str: the CPU kernel build the ops call now: 'avx512', 'avx2' or "
     "'default' (the widest this CPU runs, or the one LDDM_CPU_ISA names)."},
    {nullptr, nullptr, 0, nullptr}};

static PyModuleDef lddm_module = {PyModuleDef_HEAD_INIT, "_C",
                                  "lddm_fast compiled ops (registered as torch.ops.lddm)", -1,
                                  lddm_methods};

PyMODINIT_FUNC PyInit__C() {
  PyObject* module = PyModule_Create(&lddm_module);
  if (module != nullptr &&
      PyModule_AddStringConstant(module, "cuda_status", LDDM_CUDA_STATUS) != 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
