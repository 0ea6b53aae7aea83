// The apikeys::Store contract suite: what every backend (bundled, a user's own, a
// future PostgreSQL one) must do. Call run_store_contract(factory) from a TEST_CASE;
// the factory must return a new, empty store each time (each SECTION calls it once).
// Thread-safety: the suite itself drives threads only in its concurrency section.
// Ownership: stores are held through std::shared_ptr, as the library holds them.
#ifndef APIKEYS_TESTS_STORE_CONTRACT_HPP
#define APIKEYS_TESTS_STORE_CONTRACT_HPP

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "apikeys/error.hpp"
#include "apikeys/store.hpp"
#include "apikeys/types.hpp"
#include "catch.hpp"
#include "test_support.hpp"

namespace apikeys_test {

using StoreFactory = std::function<std::shared_ptr<apikeys::Store>()>;

namespace contract {

/// A deterministic version-4 key id, distinct from test_support's account_id(n).
inline apikeys::Uuid key_id(std::uint32_t n) {
  std::array<std::uint8_t, 16> bytes{};
  bytes[0] = static_cast<std::uint8_t>(n >> 24);
  bytes[1] = static_cast<std::uint8_t>(n >> 16);
  bytes[2] = static_cast<std::uint8_t>(n >> 8);
  bytes[3] = static_cast<std::uint8_t>(n);
  bytes[6] = 0x40;
  bytes[8] = 0x80;
  bytes[15] = 0xa5;
  return apikeys::Uuid(bytes);
}

/// A millisecond-exact time (the precision every bundled store keeps).
inline apikeys::TimePoint at(std::int64_t offset_ms) {
  return apikeys::from_unix_millis(kTestStartMillis + offset_ms);
}

/// "pk_" + 32 characters, unique per n.
inline std::string public_key(std::uint32_t n) {
  std::string digits = std::to_string(n);
  return "pk_" + std::string(32 - digits.size(), 'K') + digits;
}

/// An active record of `account` created at at(created_offset_ms), no expiry, never used.
inline apikeys::KeyRecord record(std::uint32_t n, const apikeys::Uuid& account,
                                 std::int64_t created_offset_ms = 0) {
  apikeys::KeyRecord r;
  r.info.key_id = key_id(n);
  r.info.account_id = account;
  r.info.public_key = public_key(n);
  r.info.title = "key " + std::to_string(n);
  r.info.created_at = at(created_offset_ms);
  for (std::size_t i = 0; i < r.digest.bytes.size(); ++i) {
    r.digest.bytes[i] = static_cast<std::uint8_t>(n * 31 + i * 7);
  }
  r.digest.pepper_id = 1;
  return r;
}

inline void check_same_info(const apikeys::KeyInfo& got, const apikeys::KeyInfo& want) {
  CHECK(got.key_id == want.key_id);
  CHECK(got.account_id == want.account_id);
  CHECK(got.public_key == want.public_key);
  CHECK(got.title == want.title);
  CHECK(got.description == want.description);
  CHECK(got.status == want.status);
  CHECK(got.created_at == want.created_at);
  CHECK(got.expires_at.has_value() == want.expires_at.has_value());
  if (got.expires_at && want.expires_at) CHECK(*got.expires_at == *want.expires_at);
  CHECK(got.last_used_at.has_value() == want.last_used_at.has_value());
  if (got.last_used_at && want.last_used_at) CHECK(*got.last_used_at == *want.last_used_at);
}

inline void check_same_record(const apikeys::KeyRecord& got, const apikeys::KeyRecord& want) {
  check_same_info(got.info, want.info);
  CHECK(got.digest.bytes == want.digest.bytes);
  CHECK(got.digest.pepper_id == want.digest.pepper_id);
}

/// The code of the apikeys::Error that `f` throws; nullopt when it throws nothing.
/// Any other exception escapes (and fails the test).
template <typename F>
std::optional<apikeys::ErrorCode> error_code_of(F&& f) {
  try {
    f();
  } catch (const apikeys::Error& e) {
    return e.code();
  }
  return std::nullopt;
}

inline std::vector<apikeys::Uuid> ids_of(const std::vector<apikeys::KeyInfo>& keys) {
  std::vector<apikeys::Uuid> out;
  for (const auto& k : keys) out.push_back(k.key_id);
  return out;
}

}  // namespace contract

/// Runs the whole Store contract against stores made by `make`.
inline void run_store_contract(const StoreFactory& make) {
  using apikeys::ErrorCode;
  using apikeys::KeyStatus;
  using namespace contract;
  const apikeys::Uuid alice = account_id(1);
  const apikeys::Uuid bob = account_id(2);

  std::shared_ptr<apikeys::Store> store = make();
  REQUIRE(store != nullptr);

  SECTION("insert then find returns every field, byte-exact") {
    apikeys::KeyRecord plain = record(1, alice, 5);
    plain.info.title = R"(She said "hi" & 'bye' \ back\slash)";
    plain.info.description = "";

    apikeys::KeyRecord full = record(2, alice, 7);
    full.info.title =
        "\xF0\x9F\x94\x91 prod key \xE2\x9C\x93 \xE6\x97\xA5\xE6\x9C\xAC";  // emoji, CJK
    full.info.description = "'); DROP TABLE api_keys;--";
    full.info.status = KeyStatus::revoked;
    full.info.expires_at = at(10LL * 365 * 24 * 3600 * 1000);
    full.info.last_used_at = at(-1234);
    full.digest.bytes.fill(0xff);
    full.digest.bytes[3] = 0x00;  // An embedded zero byte must survive.
    full.digest.pepper_id = 0xffffffffu;

    apikeys::KeyRecord injection = record(3, bob, 9);
    injection.info.title = "'); DROP TABLE api_keys;--";
    injection.info.description = "\"; DELETE FROM api_keys; --";

    store->insert(plain);
    store->insert(full);
    store->insert(injection);

    auto got_plain = store->find(plain.info.public_key);
    REQUIRE(got_plain);
    check_same_record(*got_plain, plain);
    CHECK_FALSE(got_plain->info.expires_at);
    CHECK_FALSE(got_plain->info.last_used_at);

    auto got_full = store->find(full.info.public_key);
    REQUIRE(got_full);
    check_same_record(*got_full, full);

    auto got_injection = store->find(injection.info.public_key);
    REQUIRE(got_injection);
    check_same_record(*got_injection, injection);
    CHECK(store->list(alice).size() == 2);  // The "DROP TABLE" titles dropped nothing.
  }

  SECTION("find of an unknown public key is nullopt") {
    CHECK_FALSE(store->find(public_key(1)));
    store->insert(record(1, alice));
    CHECK_FALSE(store->find(public_key(2)));
    CHECK_FALSE(store->find(""));
    CHECK_FALSE(store->find(public_key(1) + "x"));
    CHECK_FALSE(store->find(public_key(1).substr(0, 20)));
    CHECK(store->find(public_key(1)));
  }

  SECTION("list is newest first; equal created_at lists the latest insert first") {
    store->insert(record(1, alice, 1000));
    store->insert(record(2, alice, 3000));
    store->insert(record(10, bob, 5000));
    store->insert(record(3, alice, 2000));
    store->insert(record(4, alice, 3000));
    store->insert(record(11, bob, 3000));
    store->insert(record(5, alice, 3000));

    const auto keys = store->list(alice);
    const std::vector<apikeys::Uuid> want{key_id(5), key_id(4), key_id(2), key_id(3), key_id(1)};
    CHECK(ids_of(keys) == want);
    for (const auto& k : keys) CHECK(k.account_id == alice);
    REQUIRE(keys.size() == 5);
    check_same_info(keys[0], record(5, alice, 3000).info);

    CHECK(ids_of(store->list(bob)) == std::vector<apikeys::Uuid>{key_id(10), key_id(11)});
    CHECK(store->list(account_id(3)).empty());
  }

  SECTION("set_status only touches the owning account's key") {
    const apikeys::KeyRecord r = record(1, alice);
    store->insert(r);

    CHECK_FALSE(store->set_status(bob, r.info.key_id, KeyStatus::revoked));
    CHECK(store->find(r.info.public_key)->info.status == KeyStatus::active);
    CHECK_FALSE(store->set_status(alice, key_id(99), KeyStatus::revoked));

    auto revoked = store->set_status(alice, r.info.key_id, KeyStatus::revoked);
    REQUIRE(revoked);
    apikeys::KeyInfo want = r.info;
    want.status = KeyStatus::revoked;
    check_same_info(*revoked, want);
    CHECK(store->find(r.info.public_key)->info.status == KeyStatus::revoked);
    CHECK(store->list(alice).at(0).status == KeyStatus::revoked);
    check_same_record(*store->find(r.info.public_key), apikeys::KeyRecord{want, r.digest});

    auto active = store->set_status(alice, r.info.key_id, KeyStatus::active);
    REQUIRE(active);
    CHECK(active->status == KeyStatus::active);
    CHECK(store->find(r.info.public_key)->info.status == KeyStatus::active);
  }

  SECTION("remove only deletes the owning account's key") {
    const apikeys::KeyRecord r = record(1, alice);
    const apikeys::KeyRecord other = record(2, alice);
    store->insert(r);
    store->insert(other);

    CHECK_FALSE(store->remove(bob, r.info.key_id));
    CHECK(store->find(r.info.public_key));
    CHECK_FALSE(store->remove(alice, key_id(99)));

    auto removed = store->remove(alice, r.info.key_id);
    REQUIRE(removed);
    check_same_info(*removed, r.info);
    CHECK_FALSE(store->find(r.info.public_key));
    CHECK(ids_of(store->list(alice)) == std::vector<apikeys::Uuid>{other.info.key_id});
    CHECK_FALSE(store->remove(alice, r.info.key_id));
    CHECK_FALSE(store->set_status(alice, r.info.key_id, KeyStatus::revoked));
    CHECK(store->find(other.info.public_key));

    // The public key and key id are free again.
    store->insert(r);
    CHECK(store->find(r.info.public_key));
  }

  SECTION("a duplicate public key or key id is already_exists and changes nothing") {
    const apikeys::KeyRecord r = record(1, alice);
    store->insert(r);

    apikeys::KeyRecord same_public = record(2, bob);
    same_public.info.public_key = r.info.public_key;
    CHECK(error_code_of([&] { store->insert(same_public); }) == ErrorCode::already_exists);

    apikeys::KeyRecord same_id = record(3, bob);
    same_id.info.key_id = r.info.key_id;
    CHECK(error_code_of([&] { store->insert(same_id); }) == ErrorCode::already_exists);

    check_same_record(*store->find(r.info.public_key), r);
    CHECK_FALSE(store->find(same_id.info.public_key));
    CHECK(store->list(bob).empty());
    CHECK(store->list(alice).size() == 1);
    CHECK_FALSE(store->remove(bob, same_public.info.key_id));
  }

  SECTION("record_last_use keeps the later time and ignores unknown ids") {
    const apikeys::KeyRecord a = record(1, alice);
    apikeys::KeyRecord b = record(2, alice);
    b.info.last_used_at = at(50'000);
    store->insert(a);
    store->insert(b);

    store->record_last_use({});
    store->record_last_use({{a.info.key_id, at(20'000)}, {key_id(99), at(30'000)}});
    CHECK(store->find(a.info.public_key)->info.last_used_at == at(20'000));

    store->record_last_use({{a.info.key_id, at(10'000)}, {b.info.key_id, at(40'000)}});
    CHECK(store->find(a.info.public_key)->info.last_used_at == at(20'000));
    CHECK(store->find(b.info.public_key)->info.last_used_at == at(50'000));

    // Several entries for one key in a batch: the latest wins, whatever the order.
    store->record_last_use(
        {{a.info.key_id, at(25'000)}, {a.info.key_id, at(60'000)}, {a.info.key_id, at(30'000)}});
    CHECK(store->find(a.info.public_key)->info.last_used_at == at(60'000));
    CHECK(store->list(alice).at(1).last_used_at == at(60'000));
    CHECK_FALSE(store->find(public_key(99)));
  }

  SECTION("concurrent inserts and finds from 4 threads") {
    constexpr std::uint32_t kThreads = 4;
    constexpr std::uint32_t kPerThread = 50;
    std::atomic<int> failures{0};
    std::atomic<int> misses{0};
    std::vector<std::thread> threads;
    for (std::uint32_t t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        const apikeys::Uuid account = account_id(static_cast<std::uint8_t>(10 + t));
        try {
          for (std::uint32_t i = 0; i < kPerThread; ++i) {
            const std::uint32_t n = 1000 * (t + 1) + i;
            store->insert(record(n, account, i));
            auto got = store->find(public_key(n));
            if (!got || got->info.key_id != key_id(n)) ++misses;
            // Read another thread's range too: present or not, never an error.
            (void)store->find(public_key(1000 * ((t + 1) % kThreads + 1) + i));
            if (i % 10 == 0) (void)store->list(account);
          }
        } catch (...) {
          ++failures;
        }
      });
    }
    for (auto& th : threads) th.join();
    CHECK(failures.load() == 0);
    CHECK(misses.load() == 0);
    for (std::uint32_t t = 0; t < kThreads; ++t) {
      const auto keys = store->list(account_id(static_cast<std::uint8_t>(10 + t)));
      REQUIRE(keys.size() == kPerThread);
      CHECK(keys.front().key_id == key_id(1000 * (t + 1) + kPerThread - 1));
    }
  }
}

/// The change log of a store that keeps one (Store::changes_since): every revoke and
/// delete after a revision is named, in order, and a revision the log cannot answer
/// for is refused rather than answered with a partial list. `log_size` is how many
/// changes the store promises to keep.
inline void run_change_log_contract(const StoreFactory& make, std::uint64_t log_size) {
  using apikeys::KeyStatus;
  using namespace contract;
  const apikeys::Uuid alice = account_id(1);
  const apikeys::Uuid bob = account_id(2);
  std::shared_ptr<apikeys::Store> store = make();
  for (std::uint32_t n = 1; n <= 3; ++n) store->insert(record(n, alice));
  const std::uint64_t r0 = store->revision();

  SECTION("every revoke and delete after a revision, oldest first") {
    REQUIRE_FALSE(store->set_status(bob, key_id(1), KeyStatus::revoked));  // not bob's: no change
    REQUIRE(store->set_status(alice, key_id(1), KeyStatus::revoked));
    REQUIRE(store->remove(alice, key_id(2)));
    const std::uint64_t r1 = store->revision();
    REQUIRE(r1 == r0 + 2);

    const auto all = store->changes_since(r0);
    REQUIRE(all);
    CHECK(all->revision == r1);
    CHECK(all->public_keys == std::vector<std::string>{public_key(1), public_key(2)});
    const auto last = store->changes_since(r0 + 1);
    REQUIRE(last);
    CHECK(last->public_keys == std::vector<std::string>{public_key(2)});
    const auto none = store->changes_since(r1);
    REQUIRE(none);
    CHECK(none->revision == r1);
    CHECK(none->public_keys.empty());
    // A revision the store never reached (a validator that saw a newer backup).
    CHECK_FALSE(store->changes_since(r1 + 1));
  }

  SECTION("a revision older than the log reaches is refused, not answered in part") {
    for (std::uint64_t i = 0; i <= log_size; ++i) {
      REQUIRE(store->set_status(alice, key_id(3), KeyStatus::revoked));
    }
    const std::uint64_t r1 = store->revision();
    REQUIRE(r1 == r0 + log_size + 1);
    CHECK_FALSE(store->changes_since(r0));
    const auto kept = store->changes_since(r1 - log_size);
    REQUIRE(kept);
    CHECK(kept->public_keys.size() == log_size);
    CHECK(kept->public_keys.back() == public_key(3));
  }
}

}  // namespace apikeys_test

#endif  // APIKEYS_TESTS_STORE_CONTRACT_HPP
