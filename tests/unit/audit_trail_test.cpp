// Tests of the audit trail as KeyManager reads it back (KeyManager::audit(),
// prune_audit()): newest first even within one millisecond, pages that neither skip nor
// repeat, cursors bound to their account and filters, the key and since filters,
// not_supported over a store without a trail, and no event that outlives its change or
// names a key the change did not write. Over MemoryStore and SqliteStore.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "apikeys/error.hpp"
#include "apikeys/hasher.hpp"
#include "apikeys/key_manager.hpp"
#include "apikeys/memory_store.hpp"
#include "apikeys/observer.hpp"
#include "apikeys/sqlite_store.hpp"
#include "apikeys/types.hpp"
#include "catch.hpp"
#include "store_doubles.hpp"
#include "temp_dir.hpp"
#include "test_support.hpp"

using apikeys::AuditAction;
using apikeys::AuditEvent;
using apikeys::AuditPage;
using apikeys::AuditQuery;
using apikeys::ChangeAudit;
using apikeys::CreateRequest;
using apikeys::ErrorCode;
using apikeys::KeyInfo;
using apikeys::Uuid;

namespace {

const Uuid kAccount = apikeys_test::account_id(1);
const Uuid kOther = apikeys_test::account_id(2);

// Keeps a copy of every change event.
class Recorder final : public apikeys::Observer {
 public:
  void on_change(const AuditEvent& event) override {
    std::lock_guard<std::mutex> l(mu_);
    events_.push_back(event);
  }
  std::vector<AuditEvent> events() const {
    std::lock_guard<std::mutex> l(mu_);
    return events_;
  }

 private:
  mutable std::mutex mu_;
  std::vector<AuditEvent> events_;
};

// A KeyManager over `store`, on a manual clock that stands still unless a test moves it.
struct Trail {
  std::shared_ptr<apikeys::ManualClock> clock =
      std::make_shared<apikeys::ManualClock>(apikeys_test::test_start());
  std::shared_ptr<Recorder> recorder = std::make_shared<Recorder>();
  std::unique_ptr<apikeys::KeyManager> manager;

  explicit Trail(std::shared_ptr<apikeys::Store> store) {
    apikeys::KeyManagerOptions options;
    options.validation.clock = clock;
    options.validation.record_last_use = false;
    options.validation.observers = {recorder};
    manager = std::make_unique<apikeys::KeyManager>(
        std::move(store), std::make_shared<apikeys::HmacSha256Hasher>(apikeys_test::kTestPepper),
        std::move(options));
  }
  apikeys::KeyManager* operator->() const { return manager.get(); }
};

// Every event of the account (through `query`'s filters), page by page.
std::vector<AuditEvent> walk(apikeys::KeyManager& m, const Uuid& account, AuditQuery query,
                             std::size_t* pages = nullptr) {
  std::vector<AuditEvent> out;
  for (std::size_t n = 1;; ++n) {
    const AuditPage page = m.audit(account, query);
    REQUIRE(page.events.size() <= (query.limit == 0 ? AuditQuery::kDefaultLimit : query.limit));
    out.insert(out.end(), page.events.begin(), page.events.end());
    if (!page.next_cursor) {
      if (pages != nullptr) *pages = n;
      return out;
    }
    REQUIRE_FALSE(page.events.empty());
    query.cursor = *page.next_cursor;
  }
}

std::vector<AuditAction> actions(const std::vector<AuditEvent>& events) {
  std::vector<AuditAction> out;
  for (const AuditEvent& e : events) out.push_back(e.action);
  return out;
}

void refused(const std::function<void()>& call) {
  try {
    call();
    FAIL("not refused");
  } catch (const apikeys::Error& e) {
    CHECK(e.code() == ErrorCode::invalid_argument);
  }
}

// Runs `check` over a MemoryStore and over a SqliteStore in a temporary file.
template <class Check>
void over_each_store(const Check& check) {
  SECTION("MemoryStore") { check(std::make_shared<apikeys::MemoryStore>()); }
  SECTION("SqliteStore") {
    apikeys_test::TempDir dir;
    check(std::make_shared<apikeys::SqliteStore>(dir.file("keys.db")));
  }
}

}  // namespace

TEST_CASE("audit trail: newest first, even for changes in one millisecond",
          "[key_manager][audit]") {
  over_each_store([](std::shared_ptr<apikeys::Store> store) {
    Trail t(std::move(store));  // the clock stands still: every event has the same time
    const KeyInfo k = t->create(kAccount, CreateRequest("k")).info;
    t->disable(kAccount, k.key_id);
    t->enable(kAccount, k.key_id);
    t->revoke(kAccount, k.key_id);
    const std::vector<AuditEvent> events = walk(*t.manager, kAccount, AuditQuery());
    CHECK(actions(events) == std::vector<AuditAction>{AuditAction::revoke, AuditAction::enable,
                                                      AuditAction::disable, AuditAction::create});
    for (const AuditEvent& e : events) CHECK(e.time == events.front().time);
  });
}

TEST_CASE("audit trail: pages neither skip nor repeat, and the last has no cursor",
          "[key_manager][audit]") {
  over_each_store([](std::shared_ptr<apikeys::Store> store) {
    Trail t(std::move(store));
    std::vector<Uuid> keys;
    for (int i = 0; i < 25; ++i) {
      keys.push_back(t->create(kAccount, CreateRequest("k" + std::to_string(i))).info.key_id);
      if (i % 3 == 0) t.clock->advance(std::chrono::milliseconds(1));  // some share a time
    }
    (void)t->create(kOther, CreateRequest("someone else's"));
    AuditQuery query;
    query.limit = 10;
    std::size_t pages = 0;
    const std::vector<AuditEvent> events = walk(*t.manager, kAccount, query, &pages);
    CHECK(pages == 3);
    REQUIRE(events.size() == 25);
    std::set<Uuid> ids;
    for (std::size_t i = 0; i < events.size(); ++i) {
      CHECK(events[i].account_id == kAccount);
      CHECK(events[i].key_id == keys[keys.size() - 1 - i]);  // newest first
      ids.insert(events[i].event_id);
    }
    CHECK(ids.size() == 25);
    // The observers saw exactly the events the store kept.
    std::size_t seen = 0;
    for (const AuditEvent& e : t.recorder->events()) {
      if (e.account_id == kAccount) CHECK(ids.count(e.event_id) == 1);
      seen += e.account_id == kAccount ? 1 : 0;
    }
    CHECK(seen == 25);

    query.limit = 0;  // the default, 100: one page
    const AuditPage all = t->audit(kAccount, query);
    CHECK(all.events.size() == 25);
    CHECK_FALSE(all.next_cursor);
  });
}

TEST_CASE("audit trail: a page holds 100 events by default, and at most 1,000",
          "[key_manager][audit]") {
  Trail t(std::make_shared<apikeys::MemoryStore>());
  for (int i = 0; i < 150; ++i) (void)t->create(kAccount, CreateRequest("k" + std::to_string(i)));
  AuditQuery query;  // the default limit
  const AuditPage first = t->audit(kAccount, query);
  CHECK(first.events.size() == 100);
  REQUIRE(first.next_cursor);
  query.cursor = *first.next_cursor;
  CHECK(t->audit(kAccount, query).events.size() == 50);
  query = AuditQuery{};
  query.limit = 0;  // also the default
  CHECK(t->audit(kAccount, query).events.size() == 100);
  query.limit = 1'000;
  CHECK(t->audit(kAccount, query).events.size() == 150);
  query.limit = 1'001;
  refused([&] { (void)t->audit(kAccount, query); });
}

TEST_CASE("audit trail: a cursor works only for its account, key and since",
          "[key_manager][audit]") {
  over_each_store([](std::shared_ptr<apikeys::Store> store) {
    Trail t(std::move(store));
    const KeyInfo a = t->create(kAccount, CreateRequest("a")).info;
    for (int i = 0; i < 3; ++i) t->disable(kAccount, a.key_id), t->enable(kAccount, a.key_id);
    (void)t->create(kOther, CreateRequest("b"));
    AuditQuery query;
    query.limit = 2;
    const AuditPage first = t->audit(kAccount, query);
    REQUIRE(first.next_cursor);
    const std::string cursor = *first.next_cursor;

    AuditQuery next = query;
    next.cursor = cursor;
    CHECK(t->audit(kAccount, next).events.size() == 2);
    refused([&] { (void)t->audit(kOther, next); });
    AuditQuery keyed = next;
    keyed.key_id = a.key_id;
    refused([&] { (void)t->audit(kAccount, keyed); });
    AuditQuery since = next;
    since.since = apikeys_test::test_start();
    refused([&] { (void)t->audit(kAccount, since); });
    for (std::size_t i : {std::size_t{0}, cursor.size() / 2, cursor.size() - 1}) {
      AuditQuery edited = next;
      edited.cursor[i] = edited.cursor[i] == '0' ? '1' : '0';
      refused([&] { (void)t->audit(kAccount, edited); });
    }
    AuditQuery garbage = query;
    garbage.cursor = "not a cursor";
    refused([&] { (void)t->audit(kAccount, garbage); });
    AuditQuery huge = query;
    huge.limit = AuditQuery::kMaxLimit + 1;
    refused([&] { (void)t->audit(kAccount, huge); });
  });
}

TEST_CASE("audit trail: a cursor outlives a pepper rotation, not the pepper's removal",
          "[key_manager][audit]") {
  auto store = std::make_shared<apikeys::MemoryStore>();
  const auto manager_with = [&](std::vector<apikeys::Pepper> peppers, std::uint32_t current) {
    apikeys::KeyManagerOptions options;
    options.validation.record_last_use = false;
    return std::make_unique<apikeys::KeyManager>(
        store, std::make_shared<apikeys::HmacSha256Hasher>(peppers, current), std::move(options));
  };
  const apikeys::Pepper one{1, apikeys_test::kTestPepper};
  const apikeys::Pepper two{2, apikeys_test::kTestPepper2};
  auto first = manager_with({one}, 1);
  for (int i = 0; i < 3; ++i) (void)first->create(kAccount, CreateRequest("k"));
  AuditQuery query;
  query.limit = 1;
  const AuditPage page = first->audit(kAccount, query);
  REQUIRE(page.next_cursor);
  query.cursor = *page.next_cursor;

  // Pepper 2 is current, pepper 1 still known: the cursor still reads the next page.
  auto rotated = manager_with({one, two}, 2);
  CHECK(rotated->audit(kAccount, query).events.size() == 1);
  // Pepper 1 dropped: refused, as a cursor nobody could have made.
  auto dropped = manager_with({two}, 2);
  refused([&] { (void)dropped->audit(kAccount, query); });
}

TEST_CASE("audit trail: key_id and since filter the events", "[key_manager][audit]") {
  over_each_store([](std::shared_ptr<apikeys::Store> store) {
    Trail t(std::move(store));
    const KeyInfo a = t->create(kAccount, CreateRequest("a")).info;
    const KeyInfo b = t->create(kAccount, CreateRequest("b")).info;
    t.clock->advance(std::chrono::hours(1));
    const apikeys::TimePoint later = t.clock->now();
    t->disable(kAccount, a.key_id);
    t->revoke(kAccount, b.key_id);

    AuditQuery only_a;
    only_a.key_id = a.key_id;
    const auto a_events = walk(*t.manager, kAccount, only_a);
    CHECK(actions(a_events) == std::vector<AuditAction>{AuditAction::disable, AuditAction::create});
    for (const AuditEvent& e : a_events) CHECK(e.key_id == a.key_id);

    AuditQuery recent;
    recent.since = later;
    CHECK(actions(walk(*t.manager, kAccount, recent)) ==
          std::vector<AuditAction>{AuditAction::revoke, AuditAction::disable});
    CHECK(walk(*t.manager, kOther, AuditQuery()).empty());
  });
}

TEST_CASE("audit trail: prune_audit deletes the events before a time, of every account",
          "[key_manager][audit]") {
  over_each_store([](std::shared_ptr<apikeys::Store> store) {
    Trail t(std::move(store));
    const KeyInfo a = t->create(kAccount, CreateRequest("a")).info;
    (void)t->create(kOther, CreateRequest("b"));
    t.clock->advance(std::chrono::hours(24));
    const apikeys::TimePoint cut = t.clock->now();
    t->disable(kAccount, a.key_id);
    CHECK(t->prune_audit(cut) == 2);
    CHECK(actions(walk(*t.manager, kAccount, AuditQuery())) ==
          std::vector<AuditAction>{AuditAction::disable});
    CHECK(walk(*t.manager, kOther, AuditQuery()).empty());
    CHECK(t->prune_audit(cut) == 0);
    // The keys themselves are untouched.
    CHECK(t->get(kAccount, a.key_id).status == apikeys::KeyStatus::disabled);
  });
}

TEST_CASE("audit trail: a store without one answers not_supported, and observers still hear",
          "[key_manager][audit]") {
  auto store =
      std::make_shared<apikeys_test::ForwardingStore>(std::make_shared<apikeys::MemoryStore>());
  REQUIRE_FALSE(store->keeps_audit());
  Trail t(store);
  const KeyInfo k = t->create(kAccount, CreateRequest("k")).info;
  t->revoke(kAccount, k.key_id);
  CHECK(actions(t.recorder->events()) ==
        std::vector<AuditAction>{AuditAction::create, AuditAction::revoke});
  for (const auto& call : std::vector<std::function<void()>>{
           [&] { (void)t->audit(kAccount); }, [&] { (void)t->prune_audit(t.clock->now()); }}) {
    try {
      call();
      FAIL("no error");
    } catch (const apikeys::Error& e) {
      CHECK(e.code() == ErrorCode::not_supported);
    }
  }
}

namespace {

// A MemoryStore with its audit trail, behind a store whose credit probe can fail and
// whose revoke_all first builds an event for a key it then does not write (as a store
// that retried its transaction after the key was deleted would).
class AuditedForwarding final : public apikeys_test::ForwardingStore {
 public:
  explicit AuditedForwarding(std::shared_ptr<apikeys::MemoryStore> inner)
      : ForwardingStore(inner), memory_(std::move(inner)) {}
  bool fail_take = false;
  bool ghost_in_revoke_all = false;

  bool keeps_audit() const noexcept override { return true; }
  void insert_audited(const apikeys::KeyRecord& r, const ChangeAudit& audit) override {
    memory_->insert_audited(r, audit);
  }
  std::optional<KeyInfo> remove_audited(const Uuid& a, const Uuid& k,
                                        const ChangeAudit& audit) override {
    return memory_->remove_audited(a, k, audit);
  }
  std::vector<KeyInfo> revoke_all_audited(const Uuid& a, apikeys::TimePoint at,
                                          const ChangeAudit& audit) override {
    if (ghost_in_revoke_all) {
      KeyInfo ghost;
      ghost.key_id = apikeys_test::account_id(99);
      ghost.account_id = a;
      KeyInfo revoked = ghost;
      revoked.status = apikeys::KeyStatus::revoked;
      (void)audit.event(&ghost, &revoked);  // the attempt that did not commit
    }
    return memory_->revoke_all_audited(a, at, audit);
  }
  std::vector<AuditEvent> audit_events(const Uuid& a, const apikeys::AuditRange& r) override {
    return memory_->audit_events(a, r);
  }
  apikeys::CreditTake take_credits(const Uuid& l, std::uint64_t min, std::uint64_t max,
                                   apikeys::TimePoint now) override {
    if (fail_take) throw apikeys::Error(ErrorCode::busy, "database is locked");
    return memory_->take_credits(l, min, max, now);
  }

 private:
  std::shared_ptr<apikeys::MemoryStore> memory_;
};

}  // namespace

TEST_CASE("audit trail: a key create() takes back leaves no create event alone",
          "[key_manager][audit]") {
  auto memory = std::make_shared<apikeys::MemoryStore>();
  auto store = std::make_shared<AuditedForwarding>(memory);
  store->fail_take = true;
  Trail t(store);
  CreateRequest r("billing");
  apikeys::Credits credits;
  credits.remaining = 10;
  r.credits = credits;
  try {
    (void)t->create(kAccount, r);
    FAIL("create succeeded");
  } catch (const apikeys::Error& e) {
    CHECK(e.code() == ErrorCode::busy);
  }
  CHECK(memory->size() == 0);
  // The trail shows the key and its removal, never a key that is not there.
  CHECK(actions(walk(*t.manager, kAccount, AuditQuery())) ==
        std::vector<AuditAction>{AuditAction::remove, AuditAction::create});
  CHECK(actions(t.recorder->events()) ==
        std::vector<AuditAction>{AuditAction::create, AuditAction::remove});
}

TEST_CASE("audit trail: observers never hear of a key a retried revoke_all did not write",
          "[key_manager][audit]") {
  auto memory = std::make_shared<apikeys::MemoryStore>();
  auto store = std::make_shared<AuditedForwarding>(memory);
  Trail t(store);
  const KeyInfo k = t->create(kAccount, CreateRequest("k")).info;
  store->ghost_in_revoke_all = true;
  CHECK(t->revoke_all(kAccount) == 1);
  std::vector<AuditEvent> heard;
  for (const AuditEvent& e : t.recorder->events()) {
    if (e.action == AuditAction::revoke_all) heard.push_back(e);
  }
  REQUIRE(heard.size() == 1);
  CHECK(heard[0].key_id == k.key_id);
  const auto kept = walk(*t.manager, kAccount, AuditQuery());
  REQUIRE(kept.size() == 2);
  CHECK(kept[0].event_id == heard[0].event_id);
}
