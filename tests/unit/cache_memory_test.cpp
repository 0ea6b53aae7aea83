// MemoryCache's memory after clear(), seen through the allocation probe (a program of
// its own: alloc_probe.cpp replaces operator new and delete).
#include <array>
#include <chrono>
#include <cstddef>
#include <memory>
#include <new>
#include <string>
#include <thread>

#include "alloc_probe.hpp"
#include "apikeys/clock.hpp"
#include "apikeys/memory_cache.hpp"
#include "apikeys/types.hpp"
#include "catch.hpp"
#include "test_support.hpp"

using apikeys::Digest;
using apikeys::MemoryCache;
using apikeys::MemoryCacheOptions;
using apikeys::ValidationCode;
using apikeys::Verdict;
using std::chrono::milliseconds;

namespace {

std::string pk(std::size_t n) { return "pk_" + std::to_string(n) + std::string(20, 'k'); }

}  // namespace

// The hint runs before anything that may fail on the Validator's path, in a noexcept
// function: on a thread's first use, whose read section would allocate, it must do
// nothing rather than throw (std::terminate).
TEST_CASE("MemoryCache: prefetch() on a thread's first use allocates nothing", "[cache]") {
  if (!apikeys_test::alloc_probe::kActive) return;  // the probe is off under ASan
  MemoryCache cache;
  Digest d;
  d.bytes.fill(3);
  d.pepper_id = 1;
  const std::string key = pk(1);  // built before allocations fail
  cache.put(key, d, Verdict{ValidationCode::valid}, milliseconds(60'000), cache.fill_token(key));
  bool threw = false;
  std::size_t allocated = 0;
  std::thread fresh([&] {
    {
      apikeys_test::alloc_probe::CountAllocations count;
      apikeys_test::alloc_probe::FailAllocations fail;
      cache.prefetch(key);
      allocated = count.count();
      Verdict out;
      try {
        (void)cache.get_into(key, d, out);  // this one may fail, and says so by throwing
      } catch (const std::bad_alloc&) {
        threw = true;
      }
    }
    Verdict out;
    CHECK(cache.get_into(key, d, out));
    cache.prefetch(key);  // with its slot: a real hint
  });
  fresh.join();
  CHECK(allocated == 0);
  CHECK(threw);
}

// What clear() takes out is freed before it returns, and so is every entry that puts
// replaced before it (held back until no get could still read them): nothing is left
// for a later write to free.
TEST_CASE("MemoryCache: clear() frees every entry taken out, replaced ones included", "[cache]") {
  if (!apikeys_test::alloc_probe::kActive) return;  // the probe is off under ASan
  MemoryCacheOptions o;
  o.shards = 1;
  o.clock = std::make_shared<apikeys::ManualClock>(apikeys_test::test_start());
  MemoryCache cache(o);
  const auto fill = [&cache](const std::string& key, const Digest& d, const Verdict& verdict) {
    cache.put(key, d, verdict, milliseconds(60'000), cache.fill_token(key));
  };
  Digest d;
  d.bytes.fill(9);
  d.pepper_id = 1;
  const std::string marker = "clear-frees-this-entry";
  Verdict v;
  v.code = ValidationCode::valid;
  v.account_id = apikeys_test::account_id(7);
  v.has_policy = true;
  v.metadata = marker;
  constexpr std::size_t kKeys = 20;
  constexpr std::size_t kReplaced = 10;  // with the array clear() retires, under a batch
  for (std::size_t i = 0; i < kKeys; ++i) fill(pk(i), d, v);
  for (std::size_t i = 0; i < kReplaced; ++i) fill(pk(i), d, v);
  apikeys_test::alloc_probe::WatchFrees watch(marker);
  cache.clear();
  CHECK(apikeys_test::alloc_probe::unwiped_frees() == kKeys + kReplaced);
  CHECK(cache.size() == 0);
  CHECK(cache.bytes() == 0);
}
