// Your own storage behind apikeys: MapStore implements apikeys::Store over a std::map
// guarded by a std::mutex, following the contract in apikeys/store.hpp (thread-safe,
// "not found" is an empty result, duplicates throw Error(already_exists), list is newest
// first, last use keeps the later time). A database-backed store has the same shape.
// main() drives it through a KeyManager and checks a few contract points directly; the
// tests also run the library's full Store contract suite on it (examples/CMakeLists.txt)
// and check that a store of this shape keeps working as the interface grows
// (tests/unit/extending_test.cpp, doc/extending.md).
// Returns 0 when everything behaves as documented, 1 otherwise.
#include <algorithm>
#include <cstdint>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "apikeys/apikeys.hpp"

namespace {

class MapStore final : public apikeys::Store {
 public:
  void insert(const apikeys::KeyRecord& record) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (by_public_key_.count(record.info.public_key) != 0 ||
        public_key_of_.count(record.info.key_id) != 0) {
      throw apikeys::Error(apikeys::ErrorCode::already_exists, "public key or key id taken");
    }
    by_public_key_.emplace(record.info.public_key, Entry{record, next_sequence_++});
    public_key_of_.emplace(record.info.key_id, record.info.public_key);
  }

  std::optional<apikeys::KeyRecord> find(std::string_view public_key) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = by_public_key_.find(public_key);
    if (it == by_public_key_.end()) return std::nullopt;
    return it->second.record;
  }

  std::vector<apikeys::KeyInfo> list(const apikeys::Uuid& account_id) override {
    std::vector<const Entry*> mine;
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [public_key, entry] : by_public_key_) {
      if (entry.record.info.account_id == account_id) mine.push_back(&entry);
    }
    // Newest first; among equal creation times, the latest insert first.
    std::sort(mine.begin(), mine.end(), [](const Entry* a, const Entry* b) {
      return std::tie(a->record.info.created_at, a->sequence) >
             std::tie(b->record.info.created_at, b->sequence);
    });
    std::vector<apikeys::KeyInfo> out;
    out.reserve(mine.size());
    for (const Entry* entry : mine) out.push_back(entry->record.info);
    return out;
  }

  std::optional<apikeys::KeyInfo> set_status(const apikeys::Uuid& account_id,
                                             const apikeys::Uuid& key_id,
                                             apikeys::KeyStatus status) override {
    std::lock_guard<std::mutex> lock(mutex_);
    Entry* entry = owned(account_id, key_id);
    if (entry == nullptr) return std::nullopt;
    entry->record.info.status = status;
    return entry->record.info;
  }

  std::optional<apikeys::KeyInfo> remove(const apikeys::Uuid& account_id,
                                         const apikeys::Uuid& key_id) override {
    std::lock_guard<std::mutex> lock(mutex_);
    Entry* entry = owned(account_id, key_id);
    if (entry == nullptr) return std::nullopt;
    apikeys::KeyInfo removed = entry->record.info;
    by_public_key_.erase(removed.public_key);
    public_key_of_.erase(key_id);
    return removed;
  }

  void record_last_use(const std::vector<apikeys::LastUse>& uses) override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const apikeys::LastUse& use : uses) {
      const auto id = public_key_of_.find(use.key_id);
      if (id == public_key_of_.end()) continue;  // deleted meanwhile: ignore
      auto& last = by_public_key_.find(id->second)->second.record.info.last_used_at;
      if (!last || *last < use.at) last = use.at;
    }
  }

  // revision() keeps its default (0 forever): nothing outside this process can change
  // a std::map, and KeyManager already drops cached verdicts on its own revokes. A store
  // shared between processes must return a number that moves on every revoke and delete.

 private:
  struct Entry {
    apikeys::KeyRecord record;
    std::uint64_t sequence;  // insertion order, for list()
  };

  Entry* owned(const apikeys::Uuid& account_id, const apikeys::Uuid& key_id) {
    const auto id = public_key_of_.find(key_id);
    if (id == public_key_of_.end()) return nullptr;
    Entry& entry = by_public_key_.find(id->second)->second;
    return entry.record.info.account_id == account_id ? &entry : nullptr;
  }

  std::mutex mutex_;
  std::map<std::string, Entry, std::less<>> by_public_key_;  // less<>: find by string_view
  std::map<apikeys::Uuid, std::string> public_key_of_;       // key id -> public key
  std::uint64_t next_sequence_ = 0;
};

}  // namespace

#if defined(APIKEYS_EXAMPLE_STORE_ONLY)
// MapStore alone, for a test that includes this file (tests/unit/extending_test.cpp).
#elif !defined(APIKEYS_EXAMPLE_STORE_CONTRACT)
namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  std::cout << (ok ? "ok   " : "FAIL ") << what << '\n';
  if (!ok) ++failures;
}

template <typename F>
bool throws(apikeys::ErrorCode code, F&& f) {
  try {
    f();
  } catch (const apikeys::Error& e) {
    return e.code() == code;
  }
  return false;
}

}  // namespace

int main() {
  std::string pepper;
  apikeys::append_random_base62(pepper, 43);
  auto store = std::make_shared<MapStore>();
  // A verdict cache in front of the custom store, as a busy service would run it.
  apikeys::KeyManagerOptions options;
  options.validation.cache = std::make_shared<apikeys::MemoryCache>();
  apikeys::KeyManager manager(store, std::make_shared<apikeys::HmacSha256Hasher>(pepper), options);

  const apikeys::Uuid alice = apikeys::Uuid::random();
  const apikeys::Uuid bob = apikeys::Uuid::random();
  apikeys::CreateRequest request;
  request.title = "first";
  const apikeys::CreatedKey first = manager.create(alice, request);
  request.title = "second";
  const apikeys::CreatedKey second = manager.create(alice, request);
  request.title = "bob's";
  const apikeys::CreatedKey bobs = manager.create(bob, request);

  expect(manager.validate(first.info.public_key, first.secret_key.reveal()).account_id == alice,
         "alice's key validates to alice");
  expect(manager.validate(bobs.info.public_key, bobs.secret_key.reveal()).account_id == bob,
         "bob's key validates to bob");
  const auto listed = manager.list(alice);
  expect(listed.size() == 2 && listed[0].key_id == second.info.key_id,
         "list shows alice's two keys, newest first");

  expect(throws(apikeys::ErrorCode::not_found, [&] { manager.revoke(bob, first.info.key_id); }),
         "bob cannot revoke alice's key (not_found)");
  manager.revoke(alice, first.info.key_id);
  expect(manager.validate(first.info.public_key, first.secret_key.reveal()).code ==
             apikeys::ValidationCode::revoked,
         "a revoked key is refused at once, cache or not");

  manager.remove(alice, second.info.key_id);
  expect(manager.validate(second.info.public_key, second.secret_key.reveal()).code ==
             apikeys::ValidationCode::not_found,
         "a deleted key is not found");
  expect(manager.list(alice).size() == 1,
         "the revoked key is still listed, the deleted one is not");

  // Contract points checked on the store itself.
  const auto record = store->find(bobs.info.public_key);
  expect(record.has_value() && record->info.title == "bob's", "find returns the record");
  expect(!store->find("pk_nobody").has_value(), "find of an unknown key is empty, not an error");
  expect(throws(apikeys::ErrorCode::already_exists, [&] { store->insert(*record); }),
         "inserting a duplicate throws already_exists");
  const apikeys::TimePoint later = apikeys::from_unix_millis(4'000'000'000'000);
  store->record_last_use({{bobs.info.key_id, later}, {apikeys::Uuid::random(), later}});
  store->record_last_use({{bobs.info.key_id, apikeys::from_unix_millis(0)}});
  expect(store->find(bobs.info.public_key)->info.last_used_at == later,
         "last use keeps the later time and ignores unknown keys");

  std::cout << (failures == 0 ? "custom store: all checks passed\n" : "custom store: FAILED\n");
  return failures == 0 ? 0 : 1;
}

#else  // Built by the tests only: the library's own Store contract suite, run on MapStore.
#include "audit_contract.hpp"
#include "store_contract.hpp"

TEST_CASE("MapStore passes the apikeys::Store contract") {
  // MapStore has only the 0.1 operations: replace(), rotate(), replace_digests() and
  // pepper_counts() are not supported, and get(), list_page() and revoke_all() run on the
  // Store defaults.
  apikeys_test::StoreContractOptions options;
  options.conditional_writes = false;
  options.digest_rewrites = false;
  options.admission = false;
  apikeys_test::run_store_contract([] { return std::make_shared<MapStore>(); }, options);
}

TEST_CASE("MapStore keeps the audit defaults") {
  // MapStore keeps no audit trail: each `*_audited` write is the plain one (or
  // not_supported like it), and audit_events() and prune_audit() are not supported.
  apikeys_test::run_audit_contract([] { return std::make_shared<MapStore>(); }, false);
}
#endif
