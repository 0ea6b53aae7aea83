// Counts the misses of Store::find() that read no decoy record (the timing oracle of
// doc/failure-modes.md), through the library's private per-thread counter
// (src/decoy_reads.hpp), which only a static build lets a test link to: include this
// header under #if defined(APIKEYS_STATIC_DEFINE).
#pragma once

#include <cstdint>
#include <string>

#include "../../src/decoy_reads.hpp"
#include "apikeys/store.hpp"
#include "catch.hpp"
#include "store_contract.hpp"

namespace apikeys_test {

// Looks up `misses` absent public keys (contract::public_key(1'000'000 + n)), each twice
// (a key's decoy must not depend on luck that repeats) through find() and twice through
// find_for_validation() (what Validator reads), and counts the lookups that read no
// decoy; a miss reads at most one.
inline std::uint64_t misses_without_decoy(apikeys::Store& store, std::uint32_t misses) {
  std::uint64_t without = 0;
  for (std::uint32_t n = 0; n < misses; ++n) {
    for (int round = 0; round < 4; ++round) {
      const std::string pk = contract::public_key(1'000'000 + n);
      const std::uint64_t before = apikeys::detail::decoy_reads();
      const bool found =
          round < 2 ? store.find(pk).has_value() : store.find_for_validation(pk).has_value();
      CHECK_FALSE(found);
      const std::uint64_t read = apikeys::detail::decoy_reads() - before;
      CHECK(read <= 1);
      if (read == 0) ++without;
    }
  }
  return without;
}

}  // namespace apikeys_test
