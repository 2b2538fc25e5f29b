// Storage types of the CUDA kernels (framework-free: the launchers map torch dtypes).
#pragma once

namespace lddm {
namespace cuda {

enum class DType { kFloat32, kBFloat16, kFloat16 };

}  // namespace cuda
}  // namespace lddm
