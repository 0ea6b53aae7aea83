// Threads validating while another revokes, deletes or changes the keys' policy
// (MemoryStore, MemoryCache): once revoke(), remove(), update(), disable() or rotate() has
// returned, no validation that starts afterwards answers from the old state; and a
// compare-and-set update has exactly one winner.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
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

namespace {

constexpr int kThreads = 4;

struct Key {
  std::string pk;
  std::string sk;
  Uuid id;
  std::atomic<bool> changed{false};  // set (release) once the change has returned
};

std::vector<Key> make_keys(apikeys_test::TestManager& t, int n, std::vector<std::string> scopes) {
  std::vector<Key> keys(static_cast<std::size_t>(n));
  for (auto& k : keys) {
    CreateRequest r;
    r.title = "k";
    r.scopes = scopes;
    auto c = t->create(apikeys_test::account_id(1), r);
    k.pk = c.info.public_key;
    k.sk = std::string(c.secret_key.reveal());
    k.id = c.info.key_id;
  }
  return keys;
}

// Runs `check(key, changed_before)` on kThreads threads over `keys` round robin while
// `change(i)` runs for each key in turn (then marks it changed); returns the number of
// validations made.
template <class Check, class Change>
long race(std::vector<Key>& keys, Check check, Change change) {
  std::atomic<bool> done{false};
  std::atomic<long> validations{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < kThreads; ++w) {
    workers.emplace_back([&, w] {
      auto i = static_cast<std::size_t>(w);
      while (!done.load()) {
        Key& k = keys[i++ % keys.size()];
        check(k, k.changed.load(std::memory_order_acquire));
        ++validations;
      }
    });
  }
  for (std::size_t i = 0; i < keys.size(); ++i) {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    change(i);
    keys[i].changed.store(true, std::memory_order_release);
  }
  done = true;
  for (auto& th : workers) th.join();
  return validations.load();
}

}  // namespace

TEST_CASE("no old scopes after update returned, under concurrent validation", "[concurrency]") {
  auto t = apikeys_test::make_manager();
  std::vector<Key> keys = make_keys(t, 64, {"orders.read", "orders.write"});
  Requirements write;
  write.scopes = {"orders.write"};
  std::atomic<int> violations{0};
  std::atomic<int> old_answers{0};
  const long validations = race(
      keys,
      [&](const Key& k, bool changed_before) {
        const ValidationResult r = t->validate(k.pk + ":" + k.sk, write);
        const bool old_scopes = r.ok();  // orders.write granted
        if (!changed_before && old_scopes) ++old_answers;
        if (changed_before && (old_scopes || r.code != ValidationCode::insufficient_scope)) {
          ++violations;
        }
        if (!changed_before && r.code != ValidationCode::valid &&
            r.code != ValidationCode::insufficient_scope) {
          ++violations;
        }
      },
      [&](std::size_t i) {
        KeyUpdate u;
        u.scopes = std::vector<std::string>{"orders.read"};
        const KeyInfo after = t->update(apikeys_test::account_id(1), keys[i].id, u);
        REQUIRE(after.scopes == std::vector<std::string>{"orders.read"});
      });
  CHECK(violations.load() == 0);
  CHECK(validations > 0);
  CHECK(old_answers.load() > 0);  // the race ran: validations saw the old scopes too
  for (auto& k : keys) {
    const ValidationResult r = t->validate(k.pk + ":" + k.sk, write);
    CHECK(r.code == ValidationCode::insufficient_scope);
    CHECK(r.missing_scopes == std::vector<std::string>{"orders.write"});
  }
}

TEST_CASE("no valid after disable returned, under concurrent validation", "[concurrency]") {
  auto t = apikeys_test::make_manager();
  std::vector<Key> keys = make_keys(t, 64, {});
  std::atomic<int> violations{0};
  const long validations = race(
      keys,
      [&](const Key& k, bool changed_before) {
        const ValidationCode c = t->validate(k.pk, k.sk).code;
        if (changed_before && c != ValidationCode::disabled) ++violations;
        if (!changed_before && c != ValidationCode::valid && c != ValidationCode::disabled) {
          ++violations;
        }
      },
      [&](std::size_t i) {
        CHECK(t->disable(apikeys_test::account_id(1), keys[i].id).status == KeyStatus::disabled);
      });
  CHECK(violations.load() == 0);
  CHECK(validations > 0);
  for (auto& k : keys) CHECK(t->validate(k.pk, k.sk).code == ValidationCode::disabled);
  // And back: once enable() returns, valid again (the cached `disabled` is gone).
  for (auto& k : keys) {
    t->enable(apikeys_test::account_id(1), k.id);
    CHECK(t->validate(k.pk, k.sk).ok());
  }
}

TEST_CASE("rotation under load: the old key until its new expiry, never after", "[concurrency]") {
  auto t = apikeys_test::make_manager();
  std::vector<Key> keys = make_keys(t, 1, {"orders.read"});
  const Key& old_key = keys[0];
  constexpr auto kGrace = std::chrono::seconds(10);
  const TimePoint start = t.clock->now();
  const TimePoint old_expiry = start + kGrace;

  std::atomic<bool> done{false};
  std::atomic<bool> rotated{false};
  std::atomic<int> violations{0};
  std::atomic<long> accepted_after_rotation{0};
  std::atomic<long> refused{0};
  std::mutex new_mu;
  std::string new_token;  // guarded by new_mu
  std::vector<std::thread> workers;
  for (int w = 0; w < kThreads; ++w) {
    workers.emplace_back([&] {
      while (!done.load()) {
        const bool rotated_before = rotated.load(std::memory_order_acquire);
        const TimePoint before = t.clock->now();
        const ValidationResult r = t->validate(old_key.pk, old_key.sk);
        const TimePoint after = t.clock->now();
        // Started at or after its expiry: never valid. Done before it: always valid.
        if (rotated_before && before >= old_expiry && r.ok()) ++violations;
        if (after < old_expiry && !r.ok()) ++violations;
        if (r.ok() && rotated_before) {
          ++accepted_after_rotation;
          // A verdict from after the rotation carries the new expiry.
          if (!r.expires_at || *r.expires_at != old_expiry) ++violations;
        }
        if (!r.ok()) {
          ++refused;
          if (r.code != ValidationCode::expired) ++violations;
        }
        std::string token;
        {
          std::lock_guard<std::mutex> l(new_mu);
          token = new_token;
        }
        if (!token.empty() && !t->validate(token).ok()) ++violations;  // the successor
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  RotateRequest rr;
  rr.grace = kGrace;
  const CreatedKey next = t->rotate(apikeys_test::account_id(1), old_key.id, rr);
  {
    std::lock_guard<std::mutex> l(new_mu);
    new_token = next.info.public_key + ":" + std::string(next.secret_key.reveal());
  }
  rotated.store(true, std::memory_order_release);
  CHECK_FALSE(next.info.expires_at.has_value());  // the old key never expired: nor does it
  // Walk the clock across the old key's expiry in 250 ms steps, letting validations run
  // at each.
  while (t.clock->now() < old_expiry + std::chrono::seconds(2)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    t.clock->advance(std::chrono::milliseconds(250));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  done = true;
  for (auto& th : workers) th.join();
  CHECK(violations.load() == 0);
  CHECK(accepted_after_rotation.load() > 0);
  CHECK(refused.load() > 0);
  CHECK(t->validate(old_key.pk, old_key.sk).code == ValidationCode::expired);
  CHECK(t->validate(next.info.public_key, next.secret_key.reveal()).ok());
  const KeyInfo old_info = t->get(apikeys_test::account_id(1), old_key.id);
  CHECK(old_info.rotated_to == next.info.key_id);
  REQUIRE(old_info.expires_at.has_value());
  CHECK(to_unix_millis(*old_info.expires_at) == to_unix_millis(old_expiry));
}

TEST_CASE("two updates with the same expected version: exactly one wins", "[concurrency]") {
  auto t = apikeys_test::make_manager();
  std::vector<Key> keys = make_keys(t, 1, {});
  const Uuid account = apikeys_test::account_id(1);
  const Uuid id = keys[0].id;
  for (int round = 0; round < 100; ++round) {
    const std::uint64_t version = t->get(account, id).version;
    std::mutex mu;
    std::condition_variable cv;
    int ready = 0;
    bool go = false;
    std::atomic<int> wins{0};
    std::atomic<int> conflicts{0};
    std::atomic<int> others{0};
    std::string winner;  // guarded by mu
    std::vector<std::thread> writers;
    for (const char* title : {"left", "right"}) {
      writers.emplace_back([&, title] {
        {
          std::unique_lock<std::mutex> l(mu);
          ++ready;
          cv.notify_all();
          cv.wait(l, [&] { return go; });
        }
        KeyUpdate u;
        u.title = std::string(title);
        u.expected_version = version;
        try {
          const KeyInfo after = t->update(account, id, u);
          ++wins;
          std::lock_guard<std::mutex> l(mu);
          winner = title;
          if (after.version != version + 1) ++others;
        } catch (const Error& e) {
          if (e.code() == ErrorCode::conflict) {
            ++conflicts;
          } else {
            ++others;
          }
        }
      });
    }
    {
      std::unique_lock<std::mutex> l(mu);
      cv.wait(l, [&] { return ready == 2; });
      go = true;
      cv.notify_all();
    }
    for (auto& th : writers) th.join();
    INFO("round " << round);
    REQUIRE(wins.load() == 1);
    REQUIRE(conflicts.load() == 1);
    REQUIRE(others.load() == 0);
    const KeyInfo now = t->get(account, id);
    CHECK(now.version == version + 1);
    CHECK(now.title == winner);
  }
}
