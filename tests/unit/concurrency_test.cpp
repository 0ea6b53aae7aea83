// Threads validating while another revokes or deletes: once revoke()/remove() has
// returned, no validation that starts afterwards may answer `valid` for that key.
#include <atomic>
#include <thread>
#include <vector>

#include "apikeys/apikeys.hpp"
#include "catch.hpp"
#include "test_support.hpp"

using namespace apikeys;

TEST_CASE("no valid after revoke returned, under concurrent validation", "[concurrency]") {
  constexpr int kKeys = 64;
  constexpr int kThreads = 4;
  auto t = apikeys_test::make_manager();
  struct Key {
    std::string pk;
    std::string sk;
    Uuid id;
    std::atomic<bool> gone{false};
  };
  std::vector<Key> keys(kKeys);
  for (auto& k : keys) {
    auto c = t->create(apikeys_test::account_id(1), CreateRequest{"k", "", std::nullopt});
    k.pk = c.info.public_key;
    k.sk = std::string(c.secret_key.reveal());
    k.id = c.info.key_id;
  }
  std::atomic<bool> done{false};
  std::atomic<int> violations{0};
  std::atomic<long> validations{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < kThreads; ++w) {
    workers.emplace_back([&, w] {
      unsigned i = static_cast<unsigned>(w);
      while (!done.load()) {
        Key& k = keys[i++ % kKeys];
        const bool gone_before = k.gone.load(std::memory_order_acquire);
        const auto r = t->validate(k.pk, k.sk);
        if (gone_before && r.ok()) ++violations;
        if (!gone_before && r.code != ValidationCode::valid && r.code != ValidationCode::revoked &&
            r.code != ValidationCode::not_found) {
          ++violations;
        }
        ++validations;
      }
    });
  }
  for (int i = 0; i < kKeys; ++i) {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    if (i % 2 == 0) {
      t->revoke(apikeys_test::account_id(1), keys[i].id);
    } else {
      t->remove(apikeys_test::account_id(1), keys[i].id);
    }
    keys[i].gone.store(true, std::memory_order_release);
  }
  done = true;
  for (auto& th : workers) th.join();
  CHECK(violations.load() == 0);
  CHECK(validations.load() > 0);
  for (auto& k : keys) CHECK_FALSE(t->validate(k.pk, k.sk).ok());
}
