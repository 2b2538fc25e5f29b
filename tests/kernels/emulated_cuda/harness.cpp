// Runs one framework-free CUDA entry point of csrc/cuda on the host emulation
// (emulation.h), for tests/kernels/test_cuda_emulated.py:
//
//   harness DIR
//
// DIR/args.txt holds `key value` lines: `op` (group_norm, group_norm_backward,
// temporal_attention, temporal_attention_backward or sampler_step) and the op's sizes
// and flags;
// each input buffer is DIR/NAME.in (its raw bytes; an absent optional one is a null
// pointer). Each buffer goes into a heap block of exactly its size, so the address
// sanitizer reports any access past it; outputs and workspaces start as 0xFF bytes (NaN
// in every float format), so an element a kernel does not write fails the caller's
// comparison. Outputs are written to DIR/NAME.out. Exit status 0, or 1 with the reason on stderr (the entry point's error
// included).
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/group_norm.h"
#include "cuda/group_norm_backward.h"
#include "cuda/sampler_step.h"
#include "cuda/temporal_attention.h"

// The runtime calls the entry points make (no libcudart: one emulated device).
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  if (attr != cudaDevAttrMaxSharedMemoryPerBlockOptin) return cudaErrorInvalidValue;
  *value = lddm_emu::smem_optin();
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  if (value < 0 || value > lddm_emu::smem_optin()) return cudaErrorInvalidValue;
  std::lock_guard<std::mutex> lock(lddm_emu::state_mutex);
  lddm_emu::max_dynamic_smem[func] = value;
  return cudaSuccess;
}

cudaError_t cudaGetLastError() {
  std::lock_guard<std::mutex> lock(lddm_emu::state_mutex);
  const cudaError_t err = lddm_emu::last_error;
  lddm_emu::last_error = cudaSuccess;
  return err;
}

const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    default:
      return "error";
  }
}

namespace {

using lddm::cuda::DType;
using lddm::cuda::GroupNormLayout;

// A heap block of exactly `size` bytes (no slack for an overrun to hide in).
struct Buffer {
  std::unique_ptr<unsigned char[]> bytes;
  size_t size = 0;
  void* data() { return bytes.get(); }
  void assign(const unsigned char* from, size_t n) {
    bytes.reset(new unsigned char[n ? n : 1]);
    size = n;
    if (from) std::memcpy(bytes.get(), from, n);
  }
};

class Call {
 public:
  explicit Call(std::string dir) : dir_(std::move(dir)) {
    std::ifstream in(dir_ + "/args.txt");
    if (!in) throw std::runtime_error(dir_ + "/args.txt: cannot read");
    std::string key, value;
    while (in >> key >> value) args_[key] = value;
  }

  std::string str(const std::string& key) const {
    const auto it = args_.find(key);
    if (it == args_.end()) throw std::runtime_error("args.txt: no `" + key + "`");
    return it->second;
  }
  int64_t num(const std::string& key) const { return std::stoll(str(key)); }
  double real(const std::string& key) const { return std::stod(str(key)); }

  Buffer& input(const std::string& name, bool required = true) {
    Buffer& b = buffers_[name];
    std::ifstream in(dir_ + "/" + name + ".in", std::ios::binary);
    if (!in) {
      if (required) throw std::runtime_error(dir_ + "/" + name + ".in: cannot read");
      return b;
    }
    const std::string content((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
    b.assign(reinterpret_cast<const unsigned char*>(content.data()), content.size());
    return b;
  }

  Buffer& output(const std::string& name, size_t bytes) {
    Buffer& b = buffers_[name];
    b.assign(nullptr, bytes);
    std::memset(b.data(), 0xFF, bytes);
    outputs_.push_back(name);
    return b;
  }

  void write_outputs() {
    for (const auto& name : outputs_) {
      std::ofstream out(dir_ + "/" + name + ".out", std::ios::binary);
      const Buffer& b = buffers_[name];
      out.write(reinterpret_cast<const char*>(b.bytes.get()), std::streamsize(b.size));
      if (!out) throw std::runtime_error(dir_ + "/" + name + ".out: cannot write");
    }
  }

 private:
  std::string dir_;
  std::map<std::string, std::string> args_;
  std::map<std::string, Buffer> buffers_;
  std::vector<std::string> outputs_;
};

DType dtype_of(const std::string& name) {
  if (name == "float32") return DType::kFloat32;
  if (name == "bfloat16") return DType::kBFloat16;
  if (name == "float16") return DType::kFloat16;
  throw std::runtime_error("unknown dtype " + name);
}

size_t element_size(DType d) { return d == DType::kFloat32 ? 4 : 2; }

GroupNormLayout layout_of(const std::string& name) {
  if (name == "ncs") return GroupNormLayout::kNCS;
  if (name == "nsc") return GroupNormLayout::kNSC;
  throw std::runtime_error("unknown layout " + name);
}

float* floats(Buffer& b) { return static_cast<float*>(b.data()); }

lddm::cuda::SpatialModulation spatial_of(Call& call) {
  lddm::cuda::SpatialModulation sp;
  sp.scale = floats(call.input("spatial_scale", false));
  sp.shift = floats(call.input("spatial_shift", false));
  sp.period = sp.active() ? call.num("period") : 0;
  return sp;
}

cudaError_t group_norm(Call& call) {
  const DType dtype = dtype_of(call.str("dtype"));
  const GroupNormLayout layout = layout_of(call.str("layout"));
  const int64_t N = call.num("N"), C = call.num("C"), S = call.num("S"), G = call.num("G");
  Buffer& x = call.input("x");
  void* y = call.num("with_y") ? call.output("y", x.size).data() : nullptr;
  double* stats = nullptr;
  if (call.num("with_stats"))
    stats = static_cast<double*>(call.output("stats", size_t(N * G * 2) * sizeof(double)).data());
  Buffer& ws =
      call.output("workspace", lddm::cuda::group_norm_workspace_bytes(layout, N, C, S, G));
  return lddm::cuda::group_norm(
      dtype, layout, x.data(), y, floats(call.input("weight", false)),
      floats(call.input("bias", false)), floats(call.input("scale", false)),
      floats(call.input("shift", false)), spatial_of(call), N, C, S, G, call.real("eps"),
      call.num("silu") != 0, stats, ws.data(), nullptr);
}

cudaError_t group_norm_backward(Call& call) {
  const DType dtype = dtype_of(call.str("dtype"));
  const GroupNormLayout layout = layout_of(call.str("layout"));
  const int64_t N = call.num("N"), C = call.num("C"), S = call.num("S"), G = call.num("G");
  Buffer& x = call.input("x");
  Buffer& dy = call.input("dy");
  Buffer& stats = call.input("stats");
  Buffer& dx = call.output("dx", x.size);
  lddm::cuda::GroupNormParamGrads grads;
  grads.weight = floats(call.output("grad_weight", size_t(C) * 4));
  grads.bias = floats(call.output("grad_bias", size_t(C) * 4));
  grads.scale = floats(call.output("grad_scale", size_t(N * C) * 4));
  grads.shift = floats(call.output("grad_shift", size_t(N * C) * 4));
  const lddm::cuda::SpatialModulation sp = spatial_of(call);
  if (sp.active()) {
    grads.spatial_scale = floats(call.output("grad_spatial_scale", size_t(N * C * S) * 4));
    grads.spatial_shift = floats(call.output("grad_spatial_shift", size_t(N * C * S) * 4));
  }
  Buffer& ws = call.output("workspace",
                           lddm::cuda::group_norm_backward_workspace_bytes(layout, N, C, S, G));
  return lddm::cuda::group_norm_backward(
      dtype, layout, dy.data(), x.data(), dx.data(), static_cast<const double*>(stats.data()),
      floats(call.input("weight", false)), floats(call.input("bias", false)),
      floats(call.input("scale", false)), floats(call.input("shift", false)), sp, N, C, S, G,
      call.num("silu") != 0, grads, ws.data(), nullptr);
}

lddm::cuda::VideoStrides strides(Call& call, const std::string& name) {
  std::istringstream in(call.str(name));
  lddm::cuda::VideoStrides s;
  char comma;
  in >> s.b >> comma >> s.c >> comma >> s.t >> comma >> s.y >> comma >> s.x;
  if (!in) throw std::runtime_error("args.txt: `" + name + "` is not 5 strides b,c,t,y,x");
  return s;
}

// q, k, v (and go): the spans their strides reach (views of one qkv storage arrive as
// three copies of it); outputs dense, in the strides args.txt gives them.
cudaError_t temporal_attention(Call& call) {
  const DType dtype = dtype_of(call.str("dtype"));
  const int64_t B = call.num("B"), heads = call.num("heads"), D = call.num("D");
  const int64_t T = call.num("T"), H = call.num("H"), W = call.num("W");
  Buffer& q = call.input("q");
  Buffer& k = call.input("k");
  Buffer& v = call.input("v");
  Buffer& o = call.output("o", size_t(B * heads * D * T * H * W) * element_size(dtype));
  float* lse = call.num("with_lse") ? floats(call.output("lse", size_t(B * heads * T * H * W) * 4))
                                    : nullptr;
  return lddm::cuda::temporal_attention(dtype, q.data(), k.data(), v.data(), o.data(), lse,
                                        strides(call, "sq"), strides(call, "sk"),
                                        strides(call, "sv"), strides(call, "so"), B, heads, D,
                                        T, H, W, float(call.real("scale")), nullptr);
}

cudaError_t temporal_attention_backward(Call& call) {
  const DType dtype = dtype_of(call.str("dtype"));
  const int64_t B = call.num("B"), heads = call.num("heads"), D = call.num("D");
  const int64_t T = call.num("T"), H = call.num("H"), W = call.num("W");
  const size_t bytes = size_t(B * heads * D * T * H * W) * element_size(dtype);
  Buffer& go = call.input("go");
  Buffer& q = call.input("q");
  Buffer& k = call.input("k");
  Buffer& v = call.input("v");
  Buffer& lse = call.input("lse");
  Buffer& dq = call.output("dq", bytes);
  Buffer& dk = call.output("dk", bytes);
  Buffer& dv = call.output("dv", bytes);
  return lddm::cuda::temporal_attention_backward(
      dtype, go.data(), q.data(), k.data(), v.data(), floats(lse), dq.data(), dk.data(),
      dv.data(), strides(call, "sgo"), strides(call, "sq"), strides(call, "sk"),
      strides(call, "sv"), strides(call, "sdq"), strides(call, "sdk"), strides(call, "sdv"), B,
      heads, D, T, H, W, float(call.real("scale")), nullptr);
}

cudaError_t sampler_step(Call& call) {
  const DType dtype = dtype_of(call.str("dtype"));
  const int64_t batch = call.num("batch"), per_sample = call.num("per_sample");
  Buffer& x = call.input("x");
  Buffer& out = call.output("out", x.size);
  return lddm::cuda::sampler_step(dtype, x.data(), call.input("eps").data(),
                                  call.input("noise", false).data(), out.data(),
                                  floats(call.input("a")), floats(call.input("b")),
                                  floats(call.input("c", false)), batch, per_sample, nullptr);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: harness DIR\n";
    return 2;
  }
  try {
    Call call(argv[1]);
    const std::string op = call.str("op");
    cudaError_t err;
    if (op == "group_norm")
      err = group_norm(call);
    else if (op == "group_norm_backward")
      err = group_norm_backward(call);
    else if (op == "temporal_attention")
      err = temporal_attention(call);
    else if (op == "temporal_attention_backward")
      err = temporal_attention_backward(call);
    else if (op == "sampler_step")
      err = sampler_step(call);
    else
      throw std::runtime_error("unknown op " + op);
    if (err != cudaSuccess) {
      std::cerr << op << ": " << cudaGetErrorString(err) << " (" << int(err) << ")\n";
      return 1;
    }
    call.write_outputs();
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
  return 0;
}
