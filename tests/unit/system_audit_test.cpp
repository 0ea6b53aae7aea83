// The library's own changes in the audit trail: a digest rewritten by rehash on use and a
// credit refill written during admission each leave one event with the system actor
// {system, "apikeys", ...}, in the store's trail (KeyManager::audit()) and at the
// observers (on_change); a take with no refill due leaves none, a key without credits
// takes nothing, and a store without an audit trail gets no guessed events.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "apikeys/error.hpp"
#include "apikeys/hasher.hpp"
#include "apikeys/key_manager.hpp"
#include "apikeys/memory_store.hpp"
#include "apikeys/observer.hpp"
#include "apikeys/sqlite_store.hpp"
#include "apikeys/store.hpp"
#include "apikeys/types.hpp"
#include "apikeys/validator.hpp"
#include "catch.hpp"
#include "store_doubles.hpp"
#include "temp_dir.hpp"
#include "test_support.hpp"

using namespace apikeys;
using Json = nlohmann::json;

namespace {

// Keeps a copy of every change event and every write it is told of.
class Recorder final : public Observer {
 public:
  void on_change(const AuditEvent& event) override {
    std::lock_guard<std::mutex> l(mu_);
    events_.push_back(event);
  }
  void on_write(const BackgroundWrite& write) override {
    std::lock_guard<std::mutex> l(mu_);
    if (write.component == Component::rehash) rehash_rows_ += write.rows;
  }
  std::vector<AuditEvent> events(std::optional<AuditAction> action = std::nullopt) const {
    std::lock_guard<std::mutex> l(mu_);
    std::vector<AuditEvent> out;
    for (const AuditEvent& e : events_) {
      if (!action || e.action == *action) out.push_back(e);
    }
    return out;
  }
  std::size_t rehash_rows() const {
    std::lock_guard<std::mutex> l(mu_);
    return rehash_rows_;
  }

 private:
  mutable std::mutex mu_;
  std::vector<AuditEvent> events_;
  std::size_t rehash_rows_ = 0;
};

// A MemoryStore that keeps the events of its digest rewrites and refills as a store with
// an audit trail must (one event per digest rewritten, one per refill written, none
// otherwise), and counts its credit takes. The other writes are forwarded plainly.
class TrailStore final : public apikeys_test::ForwardingStore {
 public:
  explicit TrailStore(bool keeps = true) : TrailStore(std::make_shared<MemoryStore>(), keeps) {}

  std::atomic<int> takes{0};  // take_credits and take_credits_audited calls

  bool keeps_audit() const noexcept override { return keeps_; }

  void insert(const KeyRecord& r) override {
    ForwardingStore::insert(r);
    std::lock_guard<std::mutex> l(mu_);
    accounts_[r.info.key_id] = r.info.account_id;
  }
  std::size_t replace_digests(const std::vector<DigestChange>& changes) override {
    return memory_->replace_digests(changes);
  }
  std::vector<PepperCount> pepper_counts() override { return memory_->pepper_counts(); }
  CreditTake take_credits(const Uuid& lineage, std::uint64_t min, std::uint64_t max,
                          TimePoint now) override {
    count_take();
    return memory_->take_credits(lineage, min, max, now);
  }
  void return_credits(const Uuid& lineage, std::uint64_t n, std::int64_t period) override {
    memory_->return_credits(lineage, n, period);
  }
  std::optional<KeyInfo> change_credits(const Uuid& a, const Uuid& k,
                                        const CreditsChange& change) override {
    return memory_->change_credits(a, k, change);
  }

  std::size_t replace_digests_audited(const std::vector<DigestChange>& changes,
                                      const ChangeAudit& audit) override {
    if (!keeps_) return Store::replace_digests_audited(changes, audit);
    std::size_t n = 0;
    for (const DigestChange& c : changes) {
      if (memory_->replace_digests({c}) == 0) continue;  // skipped: no event
      ++n;
      const std::optional<KeyInfo> key = key_of(c.key_id);
      if (!key) continue;
      std::optional<AuditEvent> e = audit.event(&*key, &*key);
      if (e) keep(std::move(*e));
    }
    return n;
  }

  CreditTake take_credits_audited(const Uuid& lineage, std::uint64_t min, std::uint64_t max,
                                  TimePoint now, const ChangeAudit& audit) override {
    if (!keeps_) return Store::take_credits_audited(lineage, min, max, now, audit);
    count_take();
    const std::optional<KeyInfo> before = key_of(lineage);
    std::optional<AuditEvent> e;
    if (before && before->credits) {
      KeyInfo after = *before;
      after.credits = refilled(*before->credits, now);
      if (after.credits->refilled_period != before->credits->refilled_period) {
        e = audit.event(&*before, &after);  // a refill is written by this take
      }
    }
    const CreditTake take = memory_->take_credits(lineage, min, max, now);
    if (e) keep(std::move(*e));
    return take;
  }

  std::vector<AuditEvent> audit_events(const Uuid& account_id, const AuditRange& range) override {
    std::lock_guard<std::mutex> l(mu_);
    std::vector<AuditEvent> out;
    for (auto it = trail_.rbegin(); it != trail_.rend() && out.size() < range.limit; ++it) {
      if (it->account_id == account_id) out.push_back(*it);
    }
    return out;
  }

  std::vector<AuditEvent> trail() const {
    std::lock_guard<std::mutex> l(mu_);
    return trail_;
  }

 private:
  TrailStore(std::shared_ptr<MemoryStore> memory, bool keeps)
      : ForwardingStore(memory), memory_(std::move(memory)), keeps_(keeps) {}

  void count_take() { ++takes; }
  void keep(AuditEvent e) {
    std::lock_guard<std::mutex> l(mu_);
    trail_.push_back(std::move(e));
  }
  std::optional<KeyInfo> key_of(const Uuid& key_id) {
    std::optional<Uuid> account;
    {
      std::lock_guard<std::mutex> l(mu_);
      const auto it = accounts_.find(key_id);
      if (it != accounts_.end()) account = it->second;
    }
    if (!account) return std::nullopt;
    return memory_->get(*account, key_id);
  }

  std::shared_ptr<MemoryStore> memory_;
  const bool keeps_;
  mutable std::mutex mu_;
  std::map<Uuid, Uuid> accounts_;
  std::vector<AuditEvent> trail_;
};

int takes_of(const TrailStore& store) { return store.takes.load(); }

void check_system_actor(const AuditEvent& e, const char* detail) {
  CHECK(e.context.actor.type == ActorType::system);
  CHECK(e.context.actor.id == "apikeys");
  CHECK(e.context.actor.detail == detail);
  CHECK(e.context.reason.empty());
  CHECK_FALSE(e.event_id.is_nil());
}

struct Key {
  Uuid key_id;
  std::string public_key;
  std::string secret;
};

Key create(KeyManager& manager, const Uuid& account, std::optional<Credits> credits = {},
           std::vector<RateLimit> limits = {}) {
  CreateRequest request("key");
  request.credits = credits;
  request.rate_limits = std::move(limits);
  CreatedKey k = manager.create(account, request);
  return Key{k.info.key_id, k.info.public_key, std::string(k.secret_key.reveal())};
}

// Validation options: no last-use writes, and a writer thread that never wakes during a
// test, so rehash batches are written by flush_last_use() only.
KeyManagerOptions manager_options(const std::shared_ptr<ManualClock>& clock,
                                  const std::shared_ptr<Recorder>& recorder) {
  KeyManagerOptions o;
  o.validation.clock = clock;
  o.validation.record_last_use = false;
  o.validation.flush_interval = std::chrono::hours(1);
  if (recorder) o.validation.observers = {recorder};
  return o;
}

// The events of `action` among `events`, in their order.
std::vector<AuditEvent> of_action(const std::vector<AuditEvent>& events, AuditAction action) {
  std::vector<AuditEvent> out;
  for (const AuditEvent& e : events) {
    if (e.action == action) out.push_back(e);
  }
  return out;
}

Credits daily_credits(std::uint64_t remaining, std::uint64_t amount) {
  Credits c;
  c.remaining = remaining;
  CreditRefill r;
  r.amount = amount;
  r.interval = RefillInterval::daily;
  r.mode = RefillMode::reset;
  c.refill = r;
  return c;
}

// Keys made under pepper 1, then validated by a manager whose current pepper is 2: the
// flush rewrites each digest, and the store's trail and the observers get one rehash
// event per key, the same ones.
void rehash_after_rotation(const std::shared_ptr<Store>& store) {
  auto clock = std::make_shared<ManualClock>(apikeys_test::test_start());
  const Uuid account = apikeys_test::account_id(1);
  std::vector<Key> keys;
  {
    auto old_hasher = std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper);
    KeyManager before(store, old_hasher, manager_options(clock, nullptr));
    for (int i = 0; i < 5; ++i) keys.push_back(create(before, account));
  }
  // Pepper 2 becomes current; pepper 1 still verifies.
  auto hasher =
      std::make_shared<HmacSha256Hasher>(std::vector<Pepper>{Pepper{1, apikeys_test::kTestPepper},
                                                             Pepper{2, apikeys_test::kTestPepper2}},
                                         2);
  auto recorder = std::make_shared<Recorder>();
  KeyManager manager(store, hasher, manager_options(clock, recorder));
  for (const Key& k : keys) REQUIRE(manager.validate(k.public_key, k.secret).ok());
  manager.validator().flush_last_use();
  REQUIRE(manager.validator().rehashed() == keys.size());

  const std::vector<AuditEvent> seen = recorder->events(AuditAction::rehash);
  const std::vector<AuditEvent> trail =
      of_action(manager.audit(account).events, AuditAction::rehash);
  REQUIRE(seen.size() == keys.size());
  REQUIRE(trail.size() == keys.size());
  CHECK(recorder->rehash_rows() == keys.size());
  std::map<Uuid, AuditEvent> by_key;
  for (const AuditEvent& e : trail) by_key[e.key_id] = e;
  for (const Key& k : keys) {
    INFO(k.key_id.to_string());
    REQUIRE(by_key.count(k.key_id) == 1);
    const AuditEvent& e = by_key[k.key_id];
    CHECK(e.action == AuditAction::rehash);
    check_system_actor(e, "rehash on use");
    CHECK(e.account_id == account);
    CHECK(e.time == apikeys_test::test_start());
    CHECK(Json::parse(e.before) == Json{{"pepper_id", 1}});
    CHECK(Json::parse(e.after) == Json{{"pepper_id", 2}});
  }
  // The observers were given exactly the events the store wrote.
  std::map<Uuid, Uuid> written;
  for (const AuditEvent& e : trail) written[e.event_id] = e.key_id;
  for (const AuditEvent& e : seen) {
    REQUIRE(written.count(e.event_id) == 1);
    CHECK(written[e.event_id] == e.key_id);
  }

  // Rewritten keys verify under the current pepper: nothing more to rehash or record.
  for (const Key& k : keys) REQUIRE(manager.validate(k.public_key, k.secret).ok());
  manager.validator().flush_last_use();
  CHECK(recorder->events(AuditAction::rehash).size() == keys.size());
  CHECK(of_action(manager.audit(account).events, AuditAction::rehash).size() == keys.size());
}

// A refill that comes due during admission: one refill event, in the trail and at the
// observers, and none on the same day before or after it.
void refill_during_admission(const std::shared_ptr<Store>& store) {
  auto clock = std::make_shared<ManualClock>(apikeys_test::test_start() + std::chrono::hours(12));
  auto hasher = std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper);
  auto recorder = std::make_shared<Recorder>();
  KeyManager manager(store, hasher, manager_options(clock, recorder));
  const Uuid account = apikeys_test::account_id(3);
  const Key k = create(manager, account, daily_credits(5, 10));
  const auto refills = [&] {
    return of_action(manager.audit(account).events, AuditAction::refill);
  };

  // The same day: no refill is due, so no take writes one.
  for (int i = 0; i < 3; ++i) REQUIRE(manager.validate(k.public_key, k.secret).ok());
  CHECK(recorder->events(AuditAction::refill).empty());
  CHECK(refills().empty());

  // The next day's first admission writes the refill: one event, the credits before as
  // stored (2 left of day 0) and after as refilled (10), before the charge.
  clock->advance(std::chrono::hours(24));
  const ValidationResult r = manager.validate(k.public_key, k.secret);
  REQUIRE(r.ok());
  REQUIRE(r.credits_remaining == std::optional<std::uint64_t>(9));
  const std::vector<AuditEvent> trail = refills();
  REQUIRE(trail.size() == 1);
  const AuditEvent& e = trail.front();
  check_system_actor(e, "credit refill");
  CHECK(e.key_id == k.key_id);
  CHECK(e.account_id == account);
  CHECK(e.time == clock->now());
  const Json before = Json::parse(e.before);
  const Json after = Json::parse(e.after);
  REQUIRE(before.size() == 1);
  REQUIRE(after.size() == 1);
  CHECK(before["credits"]["remaining"] == 2);
  CHECK(after["credits"]["remaining"] == 10);
  CHECK(before["credits"]["next_refill_at"] != after["credits"]["next_refill_at"]);

  const std::vector<AuditEvent> seen = recorder->events(AuditAction::refill);
  REQUIRE(seen.size() == 1);
  CHECK(seen.front().event_id == e.event_id);
  CHECK(seen.front().before == e.before);
  CHECK(seen.front().after == e.after);

  // Later admissions of the same day find the refill written: no second event.
  for (int i = 0; i < 3; ++i) REQUIRE(manager.validate(k.public_key, k.secret).ok());
  CHECK(recorder->events(AuditAction::refill).size() == 1);
  CHECK(refills().size() == 1);
}

}  // namespace

TEST_CASE("system audit: a pepper rotation's rehash on use leaves one rehash event per key",
          "[audit][rehash]") {
  SECTION("a store double with a trail") { rehash_after_rotation(std::make_shared<TrailStore>()); }
  SECTION("MemoryStore") { rehash_after_rotation(std::make_shared<MemoryStore>()); }
  SECTION("SqliteStore") {
    apikeys_test::TempDir dir("apikeys-system-audit");
    rehash_after_rotation(std::make_shared<SqliteStore>(dir.file("keys.db")));
  }
}

TEST_CASE("system audit: a refill that comes due during admission leaves one refill event",
          "[audit][admission]") {
  SECTION("a store double with a trail") {
    refill_during_admission(std::make_shared<TrailStore>());
  }
  SECTION("MemoryStore") { refill_during_admission(std::make_shared<MemoryStore>()); }
  SECTION("SqliteStore") {
    apikeys_test::TempDir dir("apikeys-system-audit");
    refill_during_admission(std::make_shared<SqliteStore>(dir.file("keys.db")));
  }
}

TEST_CASE("system audit: a store without an audit trail rehashes, and no event is guessed",
          "[audit][rehash]") {
  auto store = std::make_shared<TrailStore>(false);
  auto clock = std::make_shared<ManualClock>(apikeys_test::test_start());
  const Uuid account = apikeys_test::account_id(2);
  std::vector<Key> keys;
  {
    auto old_hasher = std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper);
    KeyManager before(store, old_hasher, manager_options(clock, nullptr));
    for (int i = 0; i < 3; ++i) keys.push_back(create(before, account));
  }
  auto hasher =
      std::make_shared<HmacSha256Hasher>(std::vector<Pepper>{Pepper{1, apikeys_test::kTestPepper},
                                                             Pepper{2, apikeys_test::kTestPepper2}},
                                         2);
  auto recorder = std::make_shared<Recorder>();
  KeyManager manager(store, hasher, manager_options(clock, recorder));
  for (const Key& k : keys) REQUIRE(manager.validate(k.public_key, k.secret).ok());
  manager.validator().flush_last_use();
  CHECK(manager.validator().rehashed() == keys.size());
  CHECK(recorder->rehash_rows() == keys.size());  // the write is still reported
  CHECK(recorder->events(AuditAction::rehash).empty());
  CHECK(store->trail().empty());
}

TEST_CASE("system audit: credits without a refill due, or no credits, leave no event",
          "[audit][admission]") {
  auto store = std::make_shared<TrailStore>();
  auto clock = std::make_shared<ManualClock>(apikeys_test::test_start());
  auto hasher = std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper);
  auto recorder = std::make_shared<Recorder>();
  KeyManager manager(store, hasher, manager_options(clock, recorder));
  const Uuid account = apikeys_test::account_id(4);

  SECTION("credits that never refill") {
    Credits fixed;
    fixed.remaining = 100;
    const Key k = create(manager, account, fixed);
    for (int i = 0; i < 5; ++i) {
      REQUIRE(manager.validate(k.public_key, k.secret).ok());
      clock->advance(std::chrono::hours(24 * 40));
    }
  }
  SECTION("a key without credits, with or without rate limits, takes none") {
    const Key bare = create(manager, account);
    const Key limited =
        create(manager, account, std::nullopt, {RateLimit{"rpm", 1000, std::chrono::minutes(1)}});
    const int takes = takes_of(*store);
    for (int i = 0; i < 5; ++i) {
      REQUIRE(manager.validate(bare.public_key, bare.secret).ok());
      REQUIRE(manager.validate(limited.public_key, limited.secret).ok());
      clock->advance(std::chrono::hours(24));
    }
    CHECK(takes_of(*store) == takes);
  }
  CHECK(recorder->events(AuditAction::refill).empty());
  CHECK(store->trail().empty());
}

namespace {
// A store whose audited take builds the refill's event, then fails before
// committing (a commit error, a statement timeout): nothing is written.
class FailingTakeStore final : public apikeys_test::ForwardingStore {
 public:
  explicit FailingTakeStore(std::shared_ptr<MemoryStore> m)
      : ForwardingStore(m), memory_(std::move(m)) {}
  bool fail = false;
  bool keeps_audit() const noexcept override { return true; }
  CreditTake take_credits(const Uuid& l, std::uint64_t min, std::uint64_t max,
                          TimePoint now) override {
    return memory_->take_credits(l, min, max, now);
  }
  CreditTake take_credits_audited(const Uuid& l, std::uint64_t min, std::uint64_t max,
                                  TimePoint now, const ChangeAudit& audit) override {
    if (!fail) return memory_->take_credits_audited(l, min, max, now, audit);
    KeyInfo before;
    before.key_id = l;
    before.credits = daily_credits(2, 10);
    KeyInfo after = before;
    after.credits = daily_credits(10, 10);
    (void)audit.event(&before, &after);
    throw Error(ErrorCode::storage, "commit failed: rolled back");
  }
  std::vector<AuditEvent> audit_events(const Uuid& a, const AuditRange& r) override {
    return memory_->audit_events(a, r);
  }
  std::shared_ptr<MemoryStore> memory_;
};
}  // namespace

TEST_CASE("system audit: a refill whose take rolled back reaches no observer", "[audit][refill]") {
  auto memory = std::make_shared<MemoryStore>();
  auto store = std::make_shared<FailingTakeStore>(memory);
  auto clock = std::make_shared<ManualClock>(apikeys_test::test_start() + std::chrono::hours(12));
  auto hasher = std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper);
  auto recorder = std::make_shared<Recorder>();
  KeyManager manager(store, hasher, manager_options(clock, recorder));
  const Uuid account = apikeys_test::account_id(3);
  const Key k = create(manager, account, daily_credits(5, 10));
  clock->advance(std::chrono::hours(24));
  store->fail = true;
  const ValidationResult r = manager.validate(k.public_key, k.secret);
  CHECK_FALSE(r.ok());
  CHECK(of_action(memory->audit_events(account, AuditRange{}), AuditAction::refill).empty());
  CHECK(recorder->events(AuditAction::refill).empty());
}
