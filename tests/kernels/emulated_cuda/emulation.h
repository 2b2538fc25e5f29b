// Host emulation of the CUDA subset csrc/cuda uses, so its kernels run on a CPU under
// the address and undefined-behaviour sanitizers (tests/kernels/test_cuda_emulated.py).
// Force-included (g++ -include) ahead of each csrc/cuda/*.cu source, after
// emulated_cuda.py has rewritten its launches `k<<<grid, block, smem, stream>>>(args)`
// into `::lddm_emu::launcher(k, grid, block, smem, stream)(args)`, its block-scope
// `__shared__` arrays into statics and its `extern __shared__` array into a pointer.
//
// A launch runs its blocks one after another, each on blockDim OS threads: so a block's
// `__syncthreads` is a real barrier, a missing one a real race, and a static stands for
// shared memory. Threads that return leave the block and warp barriers (as exited
// threads stop counting on sm_70+). Dynamic shared memory is a heap buffer of exactly
// the launch's size (the address sanitizer reports an overrun), filled with 0xFF bytes
// (NaN) before each block, so a value read before it is written shows. Launch checks as
// the hardware's: at most 1024 threads, grid.y and grid.z at most 65,535, dynamic shared
// memory above 48 KB only after cudaFuncSetAttribute allowed it, and never above the
// opt-in limit (LDDM_EMU_SMEM_OPTIN bytes, an H100's 232,448 by default).
// LDDM_EMU_GRID_X_CAP=k runs at most k blocks along x, as if the launcher's grid cap
// (kMaxGrid, 65,535) were k: the kernels' grid-stride loops then take several items a
// block at test sizes, as they do past the cap on a GPU.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <type_traits>
#include <vector>

#define __launch_bounds__(...)

namespace lddm_emu {

inline constexpr int kWarpSize = 32;
inline constexpr size_t kDefaultDynamicSmem = 48 * 1024;

// A barrier whose participants may leave (arrive_and_drop), on a mutex of its own.
// Not std::barrier: libstdc++ waits on a mutex table shared by all atomics, so the
// thread sanitizer would see every barrier order every other one, hiding races.
class Barrier {
 public:
  explicit Barrier(unsigned expected) : expected_(expected) {}

  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const unsigned long phase = phase_;
    if (++arrived_ == expected_) {
      complete();
    } else {
      done_.wait(lock, [&] { return phase_ != phase; });
    }
  }

  void arrive_and_drop() {
    std::lock_guard<std::mutex> lock(mutex_);
    --expected_;
    if (expected_ > 0 && arrived_ == expected_) complete();
  }

 private:
  void complete() {
    arrived_ = 0;
    ++phase_;
    done_.notify_all();
  }

  std::mutex mutex_;
  std::condition_variable done_;
  unsigned expected_, arrived_ = 0;
  unsigned long phase_ = 0;
};

struct Warp {
  explicit Warp(unsigned lanes) : sync(lanes) {}
  Barrier sync;
  uint64_t slots[kWarpSize];
};

struct Block {
  std::optional<Barrier> sync;
  std::vector<std::unique_ptr<Warp>> warps;
  unsigned char* dynamic = nullptr;
};

inline thread_local uint3 thread_index{0, 0, 0};
inline thread_local uint3 block_index{0, 0, 0};
inline thread_local Block* block = nullptr;
inline thread_local unsigned linear_thread = 0;
// One launch at a time (the emulated stream is synchronous).
inline dim3 grid_dim{1, 1, 1};
inline dim3 block_dim{1, 1, 1};

inline std::mutex state_mutex;
inline cudaError_t last_error = cudaSuccess;
inline std::map<const void*, int> max_dynamic_smem;  // cudaFuncSetAttribute's per kernel

inline int env_int(const char* name, int fallback) {
  const char* env = std::getenv(name);
  return env ? std::atoi(env) : fallback;
}

inline int smem_optin() { return env_int("LDDM_EMU_SMEM_OPTIN", 232448); }

inline void set_error(cudaError_t err) {
  std::lock_guard<std::mutex> lock(state_mutex);
  last_error = err;
}

template <typename T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(block->dynamic);
}

inline void sync_block() { block->sync->arrive_and_wait(); }

template <typename T>
T shfl_down(T value, unsigned delta, int width) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>);
  Warp& w = *block->warps[linear_thread / kWarpSize];
  const unsigned lane = linear_thread % kWarpSize;
  std::memcpy(&w.slots[lane], &value, sizeof(T));
  w.sync.arrive_and_wait();
  // A source lane past the segment's end gives the caller its own value (CUDA's rule).
  const unsigned segment = lane / unsigned(width) * unsigned(width);
  T out = value;
  if (lane - segment + delta < unsigned(width)) std::memcpy(&out, &w.slots[lane + delta], sizeof(T));
  w.sync.arrive_and_wait();  // every lane has read before a next shuffle writes
  return out;
}

// Runs every block of the grid in order; `body` is one thread's call of the kernel.
template <typename Body>
void run_grid(dim3 grid, dim3 threads, size_t smem, Body body) {
  const unsigned count = threads.x * threads.y * threads.z;
  std::unique_ptr<unsigned char[]> dynamic(smem ? new unsigned char[smem] : nullptr);
  Block shared;
  shared.dynamic = dynamic.get();
  grid_dim = grid;
  block_dim = threads;
  Barrier between(count);  // the block's threads, between blocks
  const auto prepare = [&] {      // by thread 0, while the others wait
    shared.sync.emplace(count);
    shared.warps.clear();
    for (unsigned first = 0; first < count; first += kWarpSize)
      shared.warps.push_back(std::make_unique<Warp>(std::min<unsigned>(kWarpSize, count - first)));
    if (smem) std::memset(shared.dynamic, 0xFF, smem);
  };
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < count; ++t) {
    pool.emplace_back([&, t] {
      block = &shared;
      linear_thread = t;
      thread_index = {t % threads.x, t / threads.x % threads.y, t / (threads.x * threads.y)};
      for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
          for (unsigned x = 0; x < grid.x; ++x) {
            if (t == 0) prepare();
            between.arrive_and_wait();
            block_index = {x, y, z};
            body();
            shared.sync->arrive_and_drop();
            shared.warps[t / kWarpSize]->sync.arrive_and_drop();
            between.arrive_and_wait();  // all have left before thread 0 rebuilds
          }
    });
  }
  for (auto& thread : pool) thread.join();
}

template <typename... P>
struct Launch {
  void (*kernel)(P...);
  dim3 grid, threads;
  size_t smem;

  template <typename... A>
  void operator()(A&&... args) const {
    const unsigned count = threads.x * threads.y * threads.z;
    int allowed = int(kDefaultDynamicSmem);
    {
      std::lock_guard<std::mutex> lock(state_mutex);
      const auto it = max_dynamic_smem.find(reinterpret_cast<const void*>(kernel));
      if (it != max_dynamic_smem.end()) allowed = std::max(allowed, it->second);
    }
    if (count == 0 || count > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
        grid.y > 65535 || grid.z > 65535 || smem > size_t(allowed) ||
        smem > size_t(smem_optin())) {
      set_error(cudaErrorInvalidConfiguration);
      return;
    }
    dim3 blocks = grid;
    if (const int cap = env_int("LDDM_EMU_GRID_X_CAP", 0); cap > 0)
      blocks.x = std::min<unsigned>(blocks.x, unsigned(cap));
    const std::tuple<P...> params(std::forward<A>(args)...);
    run_grid(blocks, threads, smem, [&] { std::apply(kernel, params); });
  }
};

template <typename... P>
Launch<P...> launcher(void (*kernel)(P...), dim3 grid, dim3 threads, size_t smem = 0,
                      cudaStream_t = nullptr) {
  return {kernel, grid, threads, smem};
}

}  // namespace lddm_emu

#define threadIdx (::lddm_emu::thread_index)
#define blockIdx (::lddm_emu::block_index)
#define blockDim (::lddm_emu::block_dim)
#define gridDim (::lddm_emu::grid_dim)

// cuda_runtime.h's typed overload, which a host compiler does not see.
template <typename T>
cudaError_t cudaFuncSetAttribute(T* entry, cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(entry), attr, value);
}

inline void __syncthreads() { ::lddm_emu::sync_block(); }
inline float __expf(float x) { return std::exp(x); }

template <typename T>
T __shfl_down_sync(unsigned /*mask: every lane takes part in these kernels*/, T value,
                   unsigned delta, int width = ::lddm_emu::kWarpSize) {
  return ::lddm_emu::shfl_down(value, delta, width);
}
