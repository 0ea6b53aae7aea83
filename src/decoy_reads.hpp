// Private: how many decoy records this thread's Store::find() misses have read
// (the timing oracle of doc/failure-modes.md), so that tests can check that every miss
// reads one.
// Not installed and not exported: tests of a static build reach it by this declaration.
// A function rather than an `extern thread_local` variable: GCC reaches a thread_local
// of another translation unit through a TLS wrapper call, and with UBSan at -O2 that
// access is reported as "load of null pointer of type 'uint64_t'" (a false report that
// aborts the sanitizer suite). A function-local thread_local has no such wrapper.
#pragma once

#include <cstdint>

namespace apikeys::detail {

// This thread's counter. Thread-safety: each thread has its own; never shared.
std::uint64_t& decoy_reads() noexcept;

}  // namespace apikeys::detail
