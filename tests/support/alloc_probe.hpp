// A probe on the test program's global operator new and delete (alloc_probe.cpp
// replaces them): make every allocation fail for a while, count allocations, or look at
// every block freed for a marker that should have been wiped first. Blocks come from calloc, so a
// freed block holds only what C++ code wrote into it. C libraries (libpq, hiredis) allocate with
// malloc and are not seen. Thread-safety: every function may be called from any thread; the
// settings apply to every thread of the process. Ownership: the probe keeps its own copy of the
// marker.
#ifndef APIKEYS_TESTS_ALLOC_PROBE_HPP
#define APIKEYS_TESTS_ALLOC_PROBE_HPP

#include <cstddef>
#include <string_view>

// AddressSanitizer keeps its own operator new and checks that what it allocated is freed
// by its own delete; a replaced pair would trip that check on blocks allocated before
// (or around) the replacement. Under ASan the probe is off: nothing is replaced, and
// tests that need it say so and check nothing.
#if defined(__SANITIZE_ADDRESS__)
#define APIKEYS_TEST_ALLOC_PROBE 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define APIKEYS_TEST_ALLOC_PROBE 0
#endif
#endif
#ifndef APIKEYS_TEST_ALLOC_PROBE
#define APIKEYS_TEST_ALLOC_PROBE 1
#endif

namespace apikeys_test::alloc_probe {

/// True when the probe sees operator new and delete (not under AddressSanitizer).
inline constexpr bool kActive = APIKEYS_TEST_ALLOC_PROBE != 0;

/// While on, every operator new (any thread) throws std::bad_alloc.
void fail_allocations(bool on) noexcept;

/// From now on, counts the blocks freed through operator delete (any thread) that
/// still hold `marker` (1..255 bytes; longer ones are cut). Resets the count.
void watch_frees_for(std::string_view marker) noexcept;
/// Stops watching; the count stays readable.
void stop_watching() noexcept;
/// Blocks freed while watching that still held the marker.
std::size_t unwiped_frees() noexcept;

/// Makes the `n`th operator new from now on the calling thread (1 for the next) throw
/// std::bad_alloc, once; 0 cancels. Other threads' allocations are not counted, so a
/// sweep over `n` meets the same allocation each time, whatever background threads do.
void fail_nth_allocation_here(std::size_t n) noexcept;

/// Starts counting the blocks allocated through operator new (any thread), from 0.
void count_allocations(bool on) noexcept;
/// Blocks allocated while counting (the count stays readable after it stops).
std::size_t allocations() noexcept;

/// Counts allocations while alive.
struct CountAllocations {
  CountAllocations() noexcept { count_allocations(true); }
  ~CountAllocations() { count_allocations(false); }
  CountAllocations(const CountAllocations&) = delete;
  CountAllocations& operator=(const CountAllocations&) = delete;
  /// Blocks allocated since this was made.
  [[nodiscard]] std::size_t count() const noexcept { return allocations(); }
};

/// Turns allocation failures off when it dies (so a failed REQUIRE cannot leave them on).
struct FailAllocations {
  FailAllocations() noexcept { fail_allocations(true); }
  ~FailAllocations() { fail_allocations(false); }
  FailAllocations(const FailAllocations&) = delete;
  FailAllocations& operator=(const FailAllocations&) = delete;
};

/// fail_nth_allocation_here(n) on construction, cancelled when it dies.
struct FailNthAllocationHere {
  explicit FailNthAllocationHere(std::size_t n) noexcept { fail_nth_allocation_here(n); }
  ~FailNthAllocationHere() { fail_nth_allocation_here(0); }
  FailNthAllocationHere(const FailNthAllocationHere&) = delete;
  FailNthAllocationHere& operator=(const FailNthAllocationHere&) = delete;
};

/// Watches for `marker` while alive.
struct WatchFrees {
  explicit WatchFrees(std::string_view marker) noexcept { watch_frees_for(marker); }
  ~WatchFrees() { stop_watching(); }
  WatchFrees(const WatchFrees&) = delete;
  WatchFrees& operator=(const WatchFrees&) = delete;
};

}  // namespace apikeys_test::alloc_probe

#endif  // APIKEYS_TESTS_ALLOC_PROBE_HPP
