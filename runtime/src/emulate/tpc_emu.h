// tpc's CUDA emulator: what the generated kernels.cu needs of CUDA, in C++ for the host, so the
// very source NVRTC compiles can be run and checked on a machine without a GPU.
//
// A launch runs its blocks one after another; a block's threads are fibers (ucontext) on the
// calling OS thread, switched only at barriers (__syncthreads, __syncwarp, the shuffles). That
// is enough for CUDA's semantics as the generated kernels use them: shared memory is per block
// (a block's statics, reused by the next block), a barrier releases when every thread that has
// not returned waits at it, and a warp barrier when every live lane of the warp does. Threads
// that wait at different kinds of barrier are a deadlock on a GPU too: reported, not hung.
// Every piece of state is thread_local, so ranks on different OS threads emulate in parallel.
#pragma once
#define TPC_EMULATE 1

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static thread_local
#define __align__(n) __attribute__((aligned(n)))

struct uint3 { unsigned int x, y, z; };
struct dim3 { unsigned int x, y, z; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) uint2 { unsigned int x, y; };
struct alignas(16) uint4 { unsigned int x, y, z, w; };

static thread_local uint3 threadIdx;
static thread_local uint3 blockIdx;
static thread_local dim3 blockDim;
static thread_local dim3 gridDim;

static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline float __uint_as_float(unsigned int i) { float f; memcpy(&f, &i, 4); return f; }
static inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
static inline unsigned int __float_as_uint(float f) { unsigned int i; memcpy(&i, &f, 4); return i; }
static inline long long __double_as_longlong(double d) { long long i; memcpy(&i, &d, 8); return i; }
static inline double __longlong_as_double(long long i) { double d; memcpy(&d, &i, 8); return d; }
// Blocks run one after another and a block's threads take turns: a fence orders nothing more,
// and an atomic needs no lock.
static inline void __threadfence() {}
static inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  unsigned long long old = *p;
  *p = old + v;
  return old;
}
static inline unsigned int __umulhi(unsigned int a, unsigned int b) {
  return (unsigned int)(((unsigned long long)a * b) >> 32);
}

// f16 conversions (the GPU uses one cvt instruction each; these round the same way).
static inline float tpc_from_f16(unsigned short h) { _Float16 x; memcpy(&x, &h, 2); return (float)x; }
static inline unsigned short tpc_to_f16(float f) { _Float16 x = (_Float16)f; unsigned short h; memcpy(&h, &x, 2); return h; }

namespace tpc_emu {

enum Wait { RUNNING = 0, AT_BLOCK = 1, AT_WARP = 2, DONE = 3 };

struct Fiber {
  ucontext_t ctx;
  Wait wait;
};

static const size_t STACK_BYTES = 64 * 1024;

// A thread's fibers, their stacks, and one 8-byte slot per fiber for the shuffles; freed when
// the OS thread ends.
struct Pool {
  Fiber* fibers = nullptr;
  char* stacks = nullptr;
  unsigned long long* slots = nullptr;
  unsigned int capacity = 0;
  void release() {
    free(fibers);
    free(stacks);
    free(slots);
    fibers = nullptr;
    stacks = nullptr;
    slots = nullptr;
    capacity = 0;
  }
  ~Pool() { release(); }
};

static thread_local Pool pool;
static thread_local Fiber* fibers = nullptr;
static thread_local unsigned long long* slots = nullptr;
static thread_local unsigned int current = 0;
static thread_local ucontext_t scheduler;
static thread_local void (*entry)(void**) = nullptr;
static thread_local void** entry_args = nullptr;

static void fiber_main() {
  entry(entry_args);
  fibers[current].wait = DONE;
  // Returning resumes uc_link: the scheduler.
}

static inline void wait_at(Wait w) {
  unsigned int me = current;
  fibers[me].wait = w;
  swapcontext(&fibers[me].ctx, &scheduler);
}

// Makes room for `n` threads; false when memory runs out.
static bool reserve(unsigned int n) {
  if (n > pool.capacity) {
    pool.release();
    pool.fibers = (Fiber*)calloc(n, sizeof(Fiber));
    pool.stacks = (char*)malloc((size_t)n * STACK_BYTES);
    pool.slots = (unsigned long long*)calloc(n, sizeof(unsigned long long));
    if (!pool.fibers || !pool.stacks || !pool.slots) {
      pool.release();
      return false;
    }
    pool.capacity = n;
  }
  fibers = pool.fibers;
  slots = pool.slots;
  return true;
}

// Runs one block to completion. Returns 0, or writes why not into err.
static int run_block(unsigned int n, char* err, size_t errlen) {
  for (unsigned int t = 0; t < n; ++t) {
    Fiber& f = fibers[t];
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = pool.stacks + (size_t)t * STACK_BYTES;
    f.ctx.uc_stack.ss_size = STACK_BYTES;
    f.ctx.uc_link = &scheduler;
    makecontext(&f.ctx, fiber_main, 0);
    f.wait = RUNNING;
  }
  for (;;) {
    for (unsigned int t = 0; t < n; ++t) {
      if (fibers[t].wait != RUNNING) continue;
      current = t;
      threadIdx.x = t;
      threadIdx.y = 0;
      threadIdx.z = 0;
      swapcontext(&scheduler, &fibers[t].ctx);
    }
    // Every thread has returned or waits at a barrier: release what can be released.
    bool live = false, released = false, all_at_block = true;
    for (unsigned int t = 0; t < n; ++t) {
      if (fibers[t].wait == DONE) continue;
      live = true;
      if (fibers[t].wait != AT_BLOCK) all_at_block = false;
    }
    if (!live) return 0;
    if (all_at_block) {
      for (unsigned int t = 0; t < n; ++t)
        if (fibers[t].wait == AT_BLOCK) fibers[t].wait = RUNNING;
      continue;
    }
    for (unsigned int w = 0; w < n; w += 32) {
      unsigned int end = w + 32 < n ? w + 32 : n;
      bool any = false, all = true;
      for (unsigned int t = w; t < end; ++t) {
        if (fibers[t].wait == DONE) continue;
        if (fibers[t].wait == AT_WARP) any = true; else all = false;
      }
      if (any && all) {
        for (unsigned int t = w; t < end; ++t)
          if (fibers[t].wait == AT_WARP) fibers[t].wait = RUNNING;
        released = true;
      }
    }
    if (!released) {
      snprintf(err, errlen,
               "block (%u, %u, %u): its threads wait at different barriers (__syncthreads in "
               "some, a warp barrier in others): a deadlock on a GPU",
               blockIdx.x, blockIdx.y, blockIdx.z);
      return 1;
    }
  }
}

// Runs `kernel` (a trampoline that unpacks CUDA-style argument pointers) over the grid.
static int launch(void (*kernel)(void**), void** args, unsigned int gx, unsigned int gy,
                  unsigned int gz, unsigned int block, char* err, size_t errlen) {
  if (block == 0 || block > 1024 || gx == 0 || gy == 0 || gz == 0) {
    snprintf(err, errlen, "invalid launch geometry: grid (%u, %u, %u), block %u", gx, gy, gz, block);
    return 1;
  }
  if (!reserve(block)) {
    snprintf(err, errlen, "out of memory for %u emulated threads", block);
    return 1;
  }
  entry = kernel;
  entry_args = args;
  gridDim.x = gx; gridDim.y = gy; gridDim.z = gz;
  blockDim.x = block; blockDim.y = 1; blockDim.z = 1;
  for (unsigned int z = 0; z < gz; ++z)
    for (unsigned int y = 0; y < gy; ++y)
      for (unsigned int x = 0; x < gx; ++x) {
        blockIdx.x = x; blockIdx.y = y; blockIdx.z = z;
        if (run_block(block, err, errlen) != 0) return 1;
      }
  return 0;
}

}  // namespace tpc_emu

static inline void __syncthreads() { tpc_emu::wait_at(tpc_emu::AT_BLOCK); }
static inline void __syncwarp(unsigned int = 0xffffffffu) { tpc_emu::wait_at(tpc_emu::AT_WARP); }

template <class T>
static inline T __shfl_xor_sync(unsigned int, T v, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= 8, "a shuffled value fits a slot");
  unsigned int me = threadIdx.x;
  unsigned long long bits = 0;
  memcpy(&bits, &v, sizeof(T));
  tpc_emu::slots[me] = bits;
  tpc_emu::wait_at(tpc_emu::AT_WARP);
  unsigned int lane = me & 31u;
  unsigned int src = (me - lane) + ((lane ^ (unsigned int)lane_mask) & (unsigned int)(width - 1)) +
                     (lane & ~(unsigned int)(width - 1));
  T r = v;
  if (src < blockDim.x) memcpy(&r, &tpc_emu::slots[src], sizeof(T));
  // Nobody writes its slot again before every lane has read.
  tpc_emu::wait_at(tpc_emu::AT_WARP);
  return r;
}
