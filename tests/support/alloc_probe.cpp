// The replaced global operator new and delete behind alloc_probe.hpp. Linked into one
// test program only: a program has one global operator new.
#include "alloc_probe.hpp"

#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>

namespace apikeys_test::alloc_probe {
namespace {

std::atomic<bool> g_fail{false};
std::atomic<bool> g_watching{false};
std::atomic<bool> g_counting{false};
std::atomic<std::size_t> g_allocations{0};
std::atomic<std::size_t> g_unwiped{0};
// fail_nth_allocation_here(): allocations left on this thread before the one that
// fails (0: none fails).
thread_local std::size_t t_fail_in = 0;
// Written only while not watching; read only while watching (acquire/release on
// g_watching orders the two).
char g_marker[256];
std::size_t g_marker_size = 0;

[[maybe_unused]] void* allocate(std::size_t n) {
  if (g_fail.load(std::memory_order_acquire)) throw std::bad_alloc();
  if (t_fail_in != 0 && --t_fail_in == 0) throw std::bad_alloc();
  if (g_counting.load(std::memory_order_relaxed)) {
    g_allocations.fetch_add(1, std::memory_order_relaxed);
  }
  // calloc: a block then holds only what its C++ owner wrote (never bytes a C library
  // left in the same memory earlier), so a marker found at free time is the owner's.
  void* p = std::calloc(1, n == 0 ? 1 : n);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

[[maybe_unused]] void release(void* p) noexcept {
  if (p == nullptr) return;
  if (g_watching.load(std::memory_order_acquire) && g_marker_size > 0) {
    const std::size_t size = ::malloc_usable_size(p);
    if (::memmem(p, size, g_marker, g_marker_size) != nullptr) {
      g_unwiped.fetch_add(1, std::memory_order_relaxed);
    }
  }
  std::free(p);
}

}  // namespace

void fail_allocations(bool on) noexcept { g_fail.store(on, std::memory_order_release); }

void fail_nth_allocation_here(std::size_t n) noexcept { t_fail_in = n; }

void count_allocations(bool on) noexcept {
  if (on) g_allocations.store(0, std::memory_order_relaxed);
  g_counting.store(on, std::memory_order_release);
}

std::size_t allocations() noexcept { return g_allocations.load(std::memory_order_relaxed); }

void watch_frees_for(std::string_view marker) noexcept {
  g_watching.store(false, std::memory_order_release);
  g_marker_size = std::min(marker.size(), sizeof g_marker);
  std::memcpy(g_marker, marker.data(), g_marker_size);
  g_unwiped.store(0, std::memory_order_relaxed);
  g_watching.store(true, std::memory_order_release);
}

void stop_watching() noexcept { g_watching.store(false, std::memory_order_release); }

std::size_t unwiped_frees() noexcept { return g_unwiped.load(std::memory_order_relaxed); }

}  // namespace apikeys_test::alloc_probe

#if APIKEYS_TEST_ALLOC_PROBE
// The replacements (aligned forms keep the library's own: they are not probed).
void* operator new(std::size_t n) { return apikeys_test::alloc_probe::allocate(n); }
void* operator new[](std::size_t n) { return apikeys_test::alloc_probe::allocate(n); }
void operator delete(void* p) noexcept { apikeys_test::alloc_probe::release(p); }
void operator delete[](void* p) noexcept { apikeys_test::alloc_probe::release(p); }
void operator delete(void* p, std::size_t) noexcept { apikeys_test::alloc_probe::release(p); }
void operator delete[](void* p, std::size_t) noexcept { apikeys_test::alloc_probe::release(p); }
#endif
