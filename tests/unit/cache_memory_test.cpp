// MemoryCache's memory after clear(), and a Validator built on one while allocations
// fail, seen through the allocation probe (a program of its own: alloc_probe.cpp
// replaces operator new and delete).
#include <array>
#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "alloc_probe.hpp"
#include "apikeys/clock.hpp"
#include "apikeys/hasher.hpp"
#include "apikeys/key_manager.hpp"
#include "apikeys/memory_cache.hpp"
#include "apikeys/observer.hpp"
#include "apikeys/types.hpp"
#include "apikeys/validator.hpp"
#include "catch.hpp"
#include "store_doubles.hpp"
#include "test_support.hpp"

using apikeys::Digest;
using apikeys::MemoryCache;
using apikeys::MemoryCacheOptions;
using apikeys::ValidationCode;
using apikeys::Verdict;
using std::chrono::milliseconds;

namespace {

std::string pk(std::size_t n) { return "pk_" + std::to_string(n) + std::string(20, 'k'); }

// Keeps the errors observers hear of (their views copied: they live for the call).
class ErrorLog final : public apikeys::Observer {
 public:
  struct Entry {
    apikeys::Component component;
    std::string operation;
    std::string message;
  };
  void on_error(const apikeys::BackgroundError& e) override {
    const std::lock_guard<std::mutex> lock(mu_);
    entries_.push_back(Entry{e.component, std::string(e.operation), std::string(e.message)});
  }
  std::vector<Entry> take() {
    const std::lock_guard<std::mutex> lock(mu_);
    return std::exchange(entries_, {});
  }

 private:
  std::mutex mu_;
  std::vector<Entry> entries_;
};

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

// A Validator on a MemoryCache fingerprints its hasher's peppers once, when it is built,
// so that Validators with the same peppers share verdicts. Built while one allocation
// after another fails, it either throws (nothing half-made) or works; one whose
// fingerprint failed says so to its observers and shares no verdict with anyone.
TEST_CASE("Validator: built while allocations fail, it throws or works, sharing safely",
          "[validator][cache]") {
  if (!apikeys_test::alloc_probe::kActive) return;  // the probe is off under ASan
  auto store = std::make_shared<apikeys_test::InstrumentedStore>();
  auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(apikeys_test::kTestPepper);
  auto log = std::make_shared<ErrorLog>();
  apikeys::ValidatorOptions o;
  o.cache = std::make_shared<MemoryCache>();
  o.observers.push_back(log);
  const apikeys::CreatedKey key =
      apikeys::KeyManager(store, hasher, apikeys::KeyManagerOptions{})
          .create(apikeys_test::account_id(1), apikeys::CreateRequest{"k", "", std::nullopt});
  const std::string public_key = key.info.public_key;
  const std::string secret(key.secret_key.reveal());
  // A verdict in the shared cache, from a Validator whose fingerprint succeeded.
  apikeys::Validator first(store, hasher, o);
  REQUIRE(first.validate(public_key, secret).ok());
  REQUIRE(log->take().empty());

  bool fingerprint_failed = false;
  std::size_t built = 0;
  for (std::size_t n = 1; n <= 400 && built < 20; ++n) {
    std::unique_ptr<apikeys::Validator> v;
    try {
      const apikeys_test::alloc_probe::FailNthAllocationHere fail(n);
      v = std::make_unique<apikeys::Validator>(store, hasher, o);
    } catch (const std::bad_alloc&) {
      continue;  // thrown: the caller has no Validator, and nothing leaked (sanitizers)
    }
    ++built;
    const std::vector<ErrorLog::Entry> errors = log->take();
    const int finds = store->finds.load();
    CAPTURE(n);
    REQUIRE(v->validate(public_key, secret).ok());
    if (errors.empty()) continue;
    // The one failure a Validator survives: its fingerprint, reported with the reason.
    REQUIRE(errors.size() == 1);
    CHECK(errors[0].component == apikeys::Component::cache);
    CHECK(errors[0].operation == "proof_domain");
    CHECK_FALSE(errors[0].message.empty());
    // Its verdicts are its own: the first Validator's entry did not answer it.
    CHECK(store->finds.load() == finds + 1);
    CHECK(v->validate(public_key, secret).ok());
    CHECK(store->finds.load() == finds + 1);  // its own entry answers it
    fingerprint_failed = true;
  }
  CHECK(fingerprint_failed);  // the sweep reached the fingerprint
  CHECK(built == 20);         // and went past the end of construction
}
