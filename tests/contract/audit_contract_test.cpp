// Runs the audit trail contract (audit_contract.hpp) on MemoryStore and SqliteStore, and on a store
// written before the audit trail existed, which keeps the Store defaults.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "apikeys/memory_store.hpp"
#include "apikeys/sqlite_store.hpp"
#include "apikeys/store.hpp"
#include "audit_contract.hpp"
#include "catch.hpp"
#include "store_doubles.hpp"
#include "test_support.hpp"

namespace {

// A store with every operation of the interface before the audit trail (conditional
// writes, digest rewrites, credits), over a MemoryStore, and none of the audit trail's:
// keeps_audit(), the `*_audited` writes, audit_events() and prune_audit() are the
// Store defaults.
class PreAuditStore final : public apikeys_test::ForwardingStore {
 public:
  PreAuditStore() : ForwardingStore(std::make_shared<apikeys::MemoryStore>()) {}

  std::size_t replace_digests(const std::vector<apikeys::DigestChange>& changes) override {
    return inner().replace_digests(changes);
  }
  std::vector<apikeys::PepperCount> pepper_counts() override { return inner().pepper_counts(); }
  apikeys::CreditTake take_credits(const apikeys::Uuid& lineage_id, std::uint64_t min,
                                   std::uint64_t max, apikeys::TimePoint now) override {
    return inner().take_credits(lineage_id, min, max, now);
  }
  void return_credits(const apikeys::Uuid& lineage_id, std::uint64_t n,
                      std::int64_t period) override {
    inner().return_credits(lineage_id, n, period);
  }
  std::optional<apikeys::KeyInfo> change_credits(const apikeys::Uuid& account_id,
                                                 const apikeys::Uuid& key_id,
                                                 const apikeys::CreditsChange& change) override {
    return inner().change_credits(account_id, key_id, change);
  }
};

}  // namespace

TEST_CASE("MemoryStore satisfies the audit contract", "[store][memory][audit]") {
  apikeys_test::run_audit_contract([] { return std::make_shared<apikeys::MemoryStore>(); });
}

TEST_CASE("SqliteStore satisfies the audit contract", "[store][sqlite][audit]") {
  apikeys_test::TempDir dir;
  int n = 0;
  apikeys_test::run_audit_contract([&] {
    apikeys::SqliteStoreOptions options;
    options.durable = false;  // Faster in tests; the contract is the same.
    return std::make_shared<apikeys::SqliteStore>(dir.file("audit-" + std::to_string(n++) + ".db"),
                                                  options);
  });
}

TEST_CASE("A store without an audit trail keeps the audit defaults", "[store][audit]") {
  apikeys_test::run_audit_contract([] { return std::make_shared<PreAuditStore>(); }, false);
}

namespace {

// Returns the same event, with the key's ids, every time.
class FixedAudit final : public apikeys::ChangeAudit {
 public:
  explicit FixedAudit(apikeys::AuditEvent event) : event_(std::move(event)) {}
  [[nodiscard]] std::optional<apikeys::AuditEvent> event(
      const apikeys::KeyInfo* before, const apikeys::KeyInfo* after) const override {
    apikeys::AuditEvent e = event_;
    const apikeys::KeyInfo& key = after != nullptr ? *after : *before;
    e.account_id = key.account_id;
    e.key_id = key.key_id;
    return e;
  }

 private:
  apikeys::AuditEvent event_;
};

}  // namespace

TEST_CASE("MemoryStore keeps at most max_audit_events, dropping the oldest",
          "[store][memory][audit]") {
  using apikeys_test::contract::at;
  using apikeys_test::contract::record;
  using apikeys_test::contract::RecordingAudit;
  const apikeys::Uuid alice = apikeys_test::account_id(1);
  const apikeys::Uuid bob = apikeys_test::account_id(2);
  apikeys::MemoryStoreOptions options;
  options.max_audit_events = 3;
  apikeys::MemoryStore store(options);
  CHECK(store.keeps_audit());

  // Written out of time order: the three newest by time stay, whoever wrote last.
  std::vector<apikeys::AuditEvent> written;
  const std::int64_t times[] = {500, 100, 300, 400, 200};
  for (std::uint32_t n = 0; n < 5; ++n) {
    RecordingAudit audit(at(times[n]));
    store.insert_audited(record(n + 1, n % 2 == 0 ? alice : bob), audit);
    written.push_back(audit.events().at(0));
  }
  CHECK(store.size() == 5);  // every change committed
  CHECK(store.audit_size() == 3);
  apikeys::AuditRange range;
  range.limit = 1001;
  const auto alices = store.audit_events(alice, range);  // keys 1, 3, 5: at 500, 300, 200
  REQUIRE(alices.size() == 2);
  CHECK(alices[0].event_id == written[0].event_id);
  CHECK(alices[1].event_id == written[2].event_id);
  const auto bobs = store.audit_events(bob, range);  // keys 2, 4: at 100, 400
  REQUIRE(bobs.size() == 1);
  CHECK(bobs[0].event_id == written[3].event_id);
  CHECK(store.prune_audit(at(1000)) == 3);
  CHECK(store.audit_size() == 0);

  // 0 keeps none; the writes still work.
  apikeys::MemoryStoreOptions none;
  none.max_audit_events = 0;
  apikeys::MemoryStore forgetful(none);
  RecordingAudit audit(at(0));
  forgetful.insert_audited(record(1, alice), audit);
  CHECK(audit.calls().size() == 1);
  CHECK(forgetful.find(apikeys_test::contract::public_key(1)));
  CHECK(forgetful.audit_size() == 0);
  CHECK(forgetful.audit_events(alice, range).empty());
}

TEST_CASE("MemoryStore refuses an audit event id it already holds, and changes nothing",
          "[store][memory][audit]") {
  using apikeys_test::contract::at;
  using apikeys_test::contract::error_code_of;
  using apikeys_test::contract::record;
  const apikeys::Uuid alice = apikeys_test::account_id(1);
  apikeys::MemoryStore store;
  apikeys::AuditEvent event;
  event.event_id = apikeys::Uuid::random();
  event.time = at(10);
  const FixedAudit same(event);
  store.insert_audited(record(1, alice), same);
  CHECK(error_code_of([&] { store.insert_audited(record(2, alice), same); }) ==
        apikeys::ErrorCode::already_exists);
  CHECK_FALSE(store.find(apikeys_test::contract::public_key(2)));
  // Both of one rotate's events with the same id: neither key changes.
  apikeys::KeyInfo old_next = *store.get(alice, apikeys_test::contract::key_id(1));
  apikeys::AuditEvent other = event;
  other.event_id = apikeys::Uuid::random();
  const FixedAudit twice(other);
  apikeys::KeyRecord successor = record(3, alice, 5);
  old_next.rotated_to = successor.info.key_id;
  CHECK(error_code_of([&] {
          (void)store.rotate_audited(alice, old_next, old_next.version, successor, twice);
        }) == apikeys::ErrorCode::already_exists);
  CHECK_FALSE(store.find(successor.info.public_key));
  CHECK(store.get(alice, apikeys_test::contract::key_id(1))->version == 1);
  CHECK(store.audit_size() == 1);
}
