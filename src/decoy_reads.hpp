// Private: how many decoy records this thread's Store::find() misses have read
// (the timing oracle of doc/failure-modes.md), so that tests can check that every miss
// reads one.
// Not installed and not exported: tests of a static build reach it by this declaration.
#pragma once

#include <cstdint>

namespace apikeys::detail {

extern thread_local std::uint64_t decoy_reads;

}  // namespace apikeys::detail
