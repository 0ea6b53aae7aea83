// The audit trail part of the apikeys::Store contract (Store::keeps_audit() and the
// `*_audited` writes, audit_events(), prune_audit()): what every store that keeps an
// audit trail must do, and what a store written before the audit trail existed does
// through the Store defaults. Call run_audit_contract(factory) from a TEST_CASE, with
// keeps_audit = false for such an older store; the factory must return a new, empty
// store each time (each SECTION calls it once).
// Thread-safety: the suite drives threads only in its concurrency section; each
// RecordingAudit is used by one call at a time, as a store uses a ChangeAudit.
// Ownership: stores are held through std::shared_ptr, as the library holds them.
#ifndef APIKEYS_TESTS_AUDIT_CONTRACT_HPP
#define APIKEYS_TESTS_AUDIT_CONTRACT_HPP

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "apikeys/error.hpp"
#include "apikeys/observer.hpp"
#include "apikeys/store.hpp"
#include "apikeys/types.hpp"
#include "catch.hpp"
#include "store_contract.hpp"
#include "test_support.hpp"

namespace apikeys_test {

namespace contract {

/// What RecordingAudit throws when told to: a store must let it through unchanged.
struct AuditFailure : std::runtime_error {
  AuditFailure() : std::runtime_error("the audit event could not be built") {}
};

/// `text` as a JSON string (quotes, backslashes and control characters escaped).
inline std::string json_string(const std::string& text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      static const char* const kHex = "0123456789abcdef";
      out += "\\u00";
      out += kHex[(static_cast<unsigned char>(c) >> 4) & 0xf];
      out += kHex[static_cast<unsigned char>(c) & 0xf];
    } else {
      out += c;
    }
  }
  out += '"';
  return out;
}

/// The fields of `key` an audit event in this suite records, as a JSON object with no
/// spaces and members in an order no JSON normaliser keeps (a store keeps it as text).
inline std::string describe(const apikeys::KeyInfo* key) {
  if (key == nullptr) return "{}";
  std::string out = "{\"title\":" + json_string(key->title);
  out += ",\"status\":" + std::to_string(static_cast<int>(key->status));
  out += ",\"version\":" + std::to_string(key->version);
  out += ",\"credits\":";
  out += key->credits ? std::to_string(key->credits->remaining) : "null";
  out += '}';
  return out;
}

/// A ChangeAudit that keeps a copy of every (before, after) it is given and of every
/// event it returns. Each event gets a fresh random id, `time`, `action`, `context`, the
/// key's account and id, and describe() of both states. It returns nullopt when
/// `return_nothing` is set, and throws AuditFailure on its `throw_on_call`-th call
/// (counting from 1; 0: never).
class RecordingAudit final : public apikeys::ChangeAudit {
 public:
  struct Call {
    std::optional<apikeys::KeyInfo> before;
    std::optional<apikeys::KeyInfo> after;
  };

  explicit RecordingAudit(apikeys::TimePoint time = at(0),
                          apikeys::AuditAction action = apikeys::AuditAction::update,
                          apikeys::ChangeContext context = {})
      : time_(time), action_(action), context_(std::move(context)) {}

  bool return_nothing = false;
  std::size_t throw_on_call = 0;

  [[nodiscard]] std::optional<apikeys::AuditEvent> event(
      const apikeys::KeyInfo* before, const apikeys::KeyInfo* after) const override {
    Call call;
    if (before != nullptr) call.before = *before;
    if (after != nullptr) call.after = *after;
    calls_.push_back(std::move(call));
    if (throw_on_call != 0 && calls_.size() == throw_on_call) throw AuditFailure();
    if (return_nothing) return std::nullopt;
    const apikeys::KeyInfo& key = after != nullptr ? *after : *before;
    apikeys::AuditEvent e;
    e.event_id = apikeys::Uuid::random();
    e.time = time_;
    e.action = action_;
    e.context = context_;
    e.account_id = key.account_id;
    e.key_id = key.key_id;
    e.before = describe(before);
    e.after = describe(after);
    events_.push_back(e);
    return e;
  }

  /// Every call, in order.
  [[nodiscard]] const std::vector<Call>& calls() const { return calls_; }
  /// Every event returned, in order.
  [[nodiscard]] const std::vector<apikeys::AuditEvent>& events() const { return events_; }

 private:
  apikeys::TimePoint time_;
  apikeys::AuditAction action_;
  apikeys::ChangeContext context_;
  mutable std::vector<Call> calls_;
  mutable std::vector<apikeys::AuditEvent> events_;
};

/// Exactly `bytes` bytes of UTF-8 (no character cut): CJK, an emoji, accents, ASCII.
inline std::string utf8_of_length(std::size_t bytes) {
  static const char* const kPieces[] = {"\xE6\x97\xA5", "\xF0\x9F\x94\x91", "\xC3\xA9", "k",
                                        "\xE2\x9C\x93"};
  std::string out;
  for (std::size_t i = 0;; ++i) {
    const std::string piece = kPieces[i % 5];
    if (out.size() + piece.size() > bytes) break;
    out += piece;
  }
  out.append(bytes - out.size(), 'x');
  return out;
}

/// A context with every field at its longest, in non-ASCII UTF-8.
inline apikeys::ChangeContext longest_context() {
  apikeys::ChangeContext c;
  c.actor.type = apikeys::ActorType::service;
  c.actor.id = utf8_of_length(apikeys::Actor::kMaxActorIdLength);
  c.actor.detail = utf8_of_length(apikeys::Actor::kMaxActorDetailLength);
  c.reason = utf8_of_length(apikeys::ChangeContext::kMaxReasonLength);
  return c;
}

/// True when `a` comes before `b` in audit_events() order: time descending, then
/// event_id descending.
inline bool newer_event(const apikeys::AuditEvent& a, const apikeys::AuditEvent& b) {
  if (a.time != b.time) return a.time > b.time;
  return b.event_id < a.event_id;
}

/// `events` in audit_events() order.
inline std::vector<apikeys::AuditEvent> newest_first(std::vector<apikeys::AuditEvent> events) {
  std::sort(events.begin(), events.end(), newer_event);
  return events;
}

/// Every field of `got` is that of `want`, byte for byte.
inline void check_same_event(const apikeys::AuditEvent& got, const apikeys::AuditEvent& want) {
  CHECK(got.event_id == want.event_id);
  CHECK(got.time == want.time);
  CHECK(got.action == want.action);
  CHECK(got.context.actor.type == want.context.actor.type);
  CHECK(got.context.actor.id == want.context.actor.id);
  CHECK(got.context.actor.detail == want.context.actor.detail);
  CHECK(got.context.reason == want.context.reason);
  CHECK(got.account_id == want.account_id);
  CHECK(got.key_id == want.key_id);
  CHECK(got.before == want.before);
  CHECK(got.after == want.after);
}

/// check_same_event over two lists, in order.
inline void check_same_events(const std::vector<apikeys::AuditEvent>& got,
                              const std::vector<apikeys::AuditEvent>& want) {
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO("event " << i);
    check_same_event(got[i], want[i]);
  }
}

/// All of the account's events (at most 1001), newest first.
inline std::vector<apikeys::AuditEvent> all_events(apikeys::Store& store,
                                                   const apikeys::Uuid& account) {
  apikeys::AuditRange range;
  range.limit = 1001;
  return store.audit_events(account, range);
}

/// The fields of one audit call's key that the suite checks.
inline void check_audit_key(const std::optional<apikeys::KeyInfo>& got,
                            const apikeys::KeyInfo& want) {
  REQUIRE(got);
  CHECK(got->key_id == want.key_id);
  CHECK(got->account_id == want.account_id);
  CHECK(got->title == want.title);
  CHECK(got->status == want.status);
  CHECK(got->version == want.version);
  CHECK(got->credits.has_value() == want.credits.has_value());
  if (got->credits && want.credits) CHECK(got->credits->remaining == want.credits->remaining);
}

/// Everything a reader sees of `account`'s keys: list(), and get() and find() of each.
struct AccountView {
  std::vector<apikeys::KeyInfo> keys;
  std::vector<std::optional<apikeys::KeyRecord>> found;
};

inline AccountView view_of(apikeys::Store& store, const apikeys::Uuid& account) {
  AccountView v;
  v.keys = store.list(account);
  for (const apikeys::KeyInfo& k : v.keys) v.found.push_back(store.find(k.public_key));
  return v;
}

/// Nothing a reader sees of the account changed since `before`.
inline void check_unchanged(apikeys::Store& store, const apikeys::Uuid& account,
                            const AccountView& before) {
  const AccountView now = view_of(store, account);
  REQUIRE(now.keys.size() == before.keys.size());
  for (std::size_t i = 0; i < now.keys.size(); ++i) {
    check_same_key(now.keys[i], before.keys[i]);
    CHECK(now.keys[i].credits.has_value() == before.keys[i].credits.has_value());
    if (now.keys[i].credits && before.keys[i].credits) {
      CHECK(now.keys[i].credits->remaining == before.keys[i].credits->remaining);
    }
    const auto got = store.get(account, before.keys[i].key_id);
    REQUIRE(got);
    check_same_key(*got, before.keys[i]);
    REQUIRE(now.found[i]);
    REQUIRE(before.found[i]);
    check_same_full_record(*now.found[i], *before.found[i]);
  }
}

/// The account's first key with credits `remaining` (no refill), starting its lineage.
inline apikeys::KeyRecord credited_record(std::uint32_t n, const apikeys::Uuid& account,
                                          std::uint64_t remaining) {
  return lineage_record(n, account, credits_of(remaining));
}

/// The system actor the library's own changes (rehash on use, credit refills) carry.
inline apikeys::ChangeContext system_context(const char* detail) {
  apikeys::ChangeContext c;
  c.actor.type = apikeys::ActorType::system;
  c.actor.id = "apikeys";
  c.actor.detail = detail;
  return c;
}

/// True when `key`'s digest is exactly `want` (bytes and pepper id).
inline bool has_digest(apikeys::Store& store, std::uint32_t n, const apikeys::Digest& want) {
  const auto found = store.find(public_key(n));
  return found && found->digest.bytes == want.bytes && found->digest.pepper_id == want.pepper_id;
}

/// What an older store (keeps_audit() false) must do: each `*_audited` write does what
/// the plain write does and never calls the audit; audit_events() and prune_audit()
/// throw not_supported. A write the store does not support at all must throw
/// not_supported both ways.
inline void run_audit_defaults(const std::shared_ptr<apikeys::Store>& store) {
  using apikeys::ErrorCode;
  using apikeys::KeyStatus;
  using apikeys::WriteOutcome;
  const apikeys::Uuid alice = account_id(1);
  const apikeys::Uuid bob = account_id(2);
  RecordingAudit audit;
  audit.throw_on_call = 1;  // any call fails the write

  SECTION("without an audit trail, the audited writes are the plain ones") {
    CHECK_FALSE(store->keeps_audit());
    store->insert_audited(record(1, alice), audit);
    store->insert_audited(record(2, alice, 10), audit);
    store->insert_audited(record(3, bob, 20), audit);
    REQUIRE(store->find(public_key(1)));
    REQUIRE(store->find(public_key(3)));
    CHECK(ids_of(store->list(alice)) == ids({2, 1}));
    CHECK(error_code_of([&] { store->insert_audited(record(1, alice), audit); }) ==
          ErrorCode::already_exists);

    apikeys::KeyInfo next = store->find(public_key(1))->info;
    next.title = "renamed";
    const auto replace_code = error_code_of([&] {
      const apikeys::WriteResult w = store->replace_audited(alice, next, next.version, audit);
      CHECK(w.outcome == WriteOutcome::applied);
      CHECK(w.key.title == "renamed");
    });
    if (replace_code) {
      CHECK(replace_code == ErrorCode::not_supported);
      CHECK(error_code_of([&] { (void)store->replace(alice, next, next.version); }) ==
            ErrorCode::not_supported);
      CHECK(store->find(public_key(1))->info.title == "key 1");
    } else {
      CHECK(store->find(public_key(1))->info.title == "renamed");
      CHECK(store->replace_audited(alice, next, next.version, audit).outcome ==
            WriteOutcome::conflict);
    }

    apikeys::KeyInfo old_next = store->find(public_key(2))->info;
    apikeys::KeyRecord successor = record(4, alice, 30);
    successor.info.rotated_from = old_next.key_id;
    old_next.rotated_to = successor.info.key_id;
    const auto rotate_code = error_code_of([&] {
      const apikeys::WriteResult w =
          store->rotate_audited(alice, old_next, old_next.version, successor, audit);
      CHECK(w.outcome == WriteOutcome::applied);
    });
    if (rotate_code) {
      CHECK(rotate_code == ErrorCode::not_supported);
      CHECK(error_code_of([&] {
              (void)store->rotate(alice, old_next, old_next.version, successor);
            }) == ErrorCode::not_supported);
      CHECK_FALSE(store->find(successor.info.public_key));
    } else {
      REQUIRE(store->find(successor.info.public_key));
      CHECK(store->get(alice, key_id(2))->rotated_to == successor.info.key_id);
    }

    apikeys::CreditsChange change;
    change.remaining = 5;
    change.at = at(0);
    const auto credits_code = error_code_of([&] {
      const auto changed = store->change_credits_audited(alice, key_id(1), change, audit);
      REQUIRE(changed);
      REQUIRE(changed->credits);
      CHECK(changed->credits->remaining == 5);
    });
    if (credits_code) {
      CHECK(credits_code == ErrorCode::not_supported);
      CHECK(error_code_of([&] { (void)store->change_credits(alice, key_id(1), change); }) ==
            ErrorCode::not_supported);
    } else {
      REQUIRE(store->get(alice, key_id(1))->credits);
    }

    CHECK_FALSE(store->remove_audited(bob, key_id(1), audit));
    const auto removed = store->remove_audited(alice, key_id(1), audit);
    REQUIRE(removed);
    CHECK(removed->key_id == key_id(1));
    CHECK_FALSE(store->find(public_key(1)));

    const auto revoked = store->revoke_all_audited(alice, at(100), audit);
    CHECK_FALSE(revoked.empty());
    for (const apikeys::KeyInfo& k : store->list(alice)) CHECK(k.status == KeyStatus::revoked);
    CHECK(store->find(public_key(3))->info.status == KeyStatus::active);
    CHECK(audit.calls().empty());
  }

  SECTION("without an audit trail, the library's own audited writes are the plain ones") {
    store->insert(record(1, alice));
    const apikeys::Digest to = digest(1, 2);
    const auto rehash_code = error_code_of([&] {
      const std::size_t rewritten =
          store->replace_digests_audited({{key_id(1), record(1, alice).digest, to}}, audit);
      CHECK(rewritten == 1);
      CHECK(has_digest(*store, 1, to));
    });
    if (rehash_code) {
      CHECK(rehash_code == ErrorCode::not_supported);
      CHECK(has_digest(*store, 1, record(1, alice).digest));
    }

    const auto refill =
        contract::refill_of(100, apikeys::RefillInterval::daily, apikeys::RefillMode::reset);
    const apikeys::TimePoint day = utc(2026, 3, 31);
    const std::int64_t p = apikeys::refill_period(apikeys::RefillInterval::daily, day);
    store->insert(lineage_record(2, alice, credits_of(30, refill, p)));
    const auto take_code = error_code_of([&] {
      // A refill comes due: taken after it, and no audit call.
      check_take(store->take_credits_audited(key_id(2), 1, 1, utc(2026, 4, 1), audit),
                 apikeys::CreditTake::Outcome::taken, 1, 99);
      check_take(store->take_credits(key_id(2), 0, 0, utc(2026, 4, 1, 5)),
                 apikeys::CreditTake::Outcome::taken, 0, 99);
    });
    if (take_code) CHECK(take_code == ErrorCode::not_supported);
    CHECK(audit.calls().empty());
  }

  SECTION("without an audit trail, audit_events and prune_audit are not supported") {
    CHECK_FALSE(store->keeps_audit());
    store->insert_audited(record(1, alice), audit);
    apikeys::AuditRange range;
    CHECK(error_code_of([&] { (void)store->audit_events(alice, range); }) ==
          ErrorCode::not_supported);
    CHECK(error_code_of([&] { (void)store->prune_audit(at(1'000'000)); }) ==
          ErrorCode::not_supported);
    CHECK(store->find(public_key(1)));
    CHECK(audit.calls().empty());
  }
}

}  // namespace contract

/// Runs the audit trail contract against stores made by `make`. keeps_audit: the store
/// keeps an audit trail (every bundled store); false for a store written before the
/// audit trail existed, which keeps the Store defaults.
inline void run_audit_contract(const StoreFactory& make, bool keeps_audit = true) {
  using apikeys::AuditAction;
  using apikeys::AuditEvent;
  using apikeys::AuditRange;
  using apikeys::CreditsChange;
  using apikeys::CreditsOp;
  using apikeys::ErrorCode;
  using apikeys::KeyInfo;
  using apikeys::KeyRecord;
  using apikeys::KeyStatus;
  using apikeys::WriteOutcome;
  using apikeys::WriteResult;
  using namespace contract;
  const apikeys::Uuid alice = account_id(1);
  const apikeys::Uuid bob = account_id(2);

  std::shared_ptr<apikeys::Store> store = make();
  REQUIRE(store != nullptr);

  if (!keeps_audit) {
    run_audit_defaults(store);
    return;
  }

  SECTION("keeps_audit is true and a new store has no events") {
    CHECK(store->keeps_audit());
    CHECK(all_events(*store, alice).empty());
    CHECK(store->prune_audit(apikeys::TimePoint::max()) == 0);
  }

  SECTION("insert_audited: one event, every field byte-exact") {
    RecordingAudit audit(at(500), AuditAction::create, longest_context());
    KeyRecord r = credited_record(1, alice, 40);
    r.info.title = "\xF0\x9F\x94\x91 \"quoted\" \\ \xE6\x97\xA5\xE6\x9C\xAC";
    store->insert_audited(r, audit);
    REQUIRE(audit.calls().size() == 1);
    CHECK_FALSE(audit.calls()[0].before);
    check_audit_key(audit.calls()[0].after, r.info);
    REQUIRE(store->find(r.info.public_key));
    const auto events = all_events(*store, alice);
    check_same_events(events, audit.events());
    CHECK(events[0].context.actor.id.size() == apikeys::Actor::kMaxActorIdLength);
    CHECK(events[0].context.actor.detail.size() == apikeys::Actor::kMaxActorDetailLength);
    CHECK(events[0].context.reason.size() == apikeys::ChangeContext::kMaxReasonLength);

    // Every actor type and action code, and empty context strings, round trip too.
    for (int t = 0; t <= static_cast<int>(apikeys::kLastActorType); ++t) {
      apikeys::ChangeContext c;
      c.actor.type = static_cast<apikeys::ActorType>(t);
      RecordingAudit more(at(600 + t),
                          static_cast<AuditAction>(static_cast<int>(apikeys::kLastAuditAction) - t),
                          c);
      store->insert_audited(record(10 + static_cast<std::uint32_t>(t), alice), more);
      const auto got = all_events(*store, alice);
      REQUIRE(got.size() == static_cast<std::size_t>(t) + 2);
      REQUIRE(more.events().size() == 1);
      check_same_event(got[0], more.events()[0]);
    }
  }

  SECTION("replace_audited: an applied change is audited once, before and after") {
    const KeyRecord r = credited_record(1, alice, 30);
    store->insert(r);
    const KeyInfo before = *store->get(alice, r.info.key_id);
    KeyInfo next = before;
    next.title = "\xC3\xA9t\xC3\xA9 renamed";
    next.status = KeyStatus::disabled;
    next.updated_at = at(1000);
    RecordingAudit audit(at(1000), AuditAction::disable, longest_context());
    const WriteResult w = store->replace_audited(alice, next, before.version, audit);
    REQUIRE(w.outcome == WriteOutcome::applied);
    CHECK(w.key.version == before.version + 1);
    REQUIRE(audit.calls().size() == 1);
    check_audit_key(audit.calls()[0].before, before);
    check_audit_key(audit.calls()[0].after, w.key);
    CHECK(audit.calls()[0].after->status == KeyStatus::disabled);
    CHECK(audit.calls()[0].after->title == next.title);
    CHECK(store->get(alice, r.info.key_id)->title == next.title);
    check_same_events(all_events(*store, alice), audit.events());
    CHECK(all_events(*store, bob).empty());
  }

  SECTION("rotate_audited: the old key's event, then the successor's") {
    const KeyRecord r = credited_record(1, alice, 25);
    store->insert(r);
    const KeyInfo before = *store->get(alice, r.info.key_id);
    KeyRecord successor = record(2, alice, 50);
    successor.info.lineage_id = r.info.key_id;
    successor.info.rotated_from = r.info.key_id;
    successor.info.title = "successor \xE2\x9C\x93";
    KeyInfo old_next = before;
    old_next.rotated_to = successor.info.key_id;
    old_next.expires_at = at(9000);
    old_next.updated_at = at(50);
    RecordingAudit audit(at(50), AuditAction::rotate);
    const WriteResult w = store->rotate_audited(alice, old_next, before.version, successor, audit);
    REQUIRE(w.outcome == WriteOutcome::applied);
    REQUIRE(audit.calls().size() == 2);
    check_audit_key(audit.calls()[0].before, before);
    check_audit_key(audit.calls()[0].after, w.key);
    CHECK(audit.calls()[0].after->rotated_to == successor.info.key_id);
    CHECK(audit.calls()[0].after->version == before.version + 1);
    CHECK_FALSE(audit.calls()[1].before);
    KeyInfo shared = successor.info;
    shared.credits = before.credits;  // the lineage's, not its own
    check_audit_key(audit.calls()[1].after, shared);
    REQUIRE(store->find(successor.info.public_key));
    const auto events = all_events(*store, alice);
    check_same_events(events, newest_first(audit.events()));
    CHECK(events.size() == 2);
  }

  SECTION("remove_audited: the deleted key's event, after nothing") {
    const KeyRecord r = credited_record(1, alice, 12);
    store->insert(r);
    store->insert(record(2, alice, 5));
    const KeyInfo before = *store->get(alice, r.info.key_id);
    RecordingAudit audit(at(70), AuditAction::remove);
    const auto removed = store->remove_audited(alice, r.info.key_id, audit);
    REQUIRE(removed);
    REQUIRE(audit.calls().size() == 1);
    check_audit_key(audit.calls()[0].before, before);
    CHECK_FALSE(audit.calls()[0].after);
    CHECK_FALSE(store->find(r.info.public_key));
    check_same_events(all_events(*store, alice), audit.events());
    CHECK(audit.events()[0].after == "{}");
  }

  SECTION("revoke_all_audited: one event per key it revokes, and only those") {
    for (std::uint32_t n = 1; n <= 3; ++n) store->insert(record(n, alice, n));
    REQUIRE(store->set_status(alice, key_id(2), KeyStatus::revoked));
    store->insert(record(4, bob, 4));
    const std::vector<KeyInfo> before = store->list(alice);
    RecordingAudit audit(at(80), AuditAction::revoke);
    const auto revoked = store->revoke_all_audited(alice, at(80), audit);
    REQUIRE(revoked.size() == 2);
    REQUIRE(audit.calls().size() == 2);
    std::vector<apikeys::Uuid> audited;
    for (const auto& call : audit.calls()) {
      REQUIRE(call.before);
      REQUIRE(call.after);
      CHECK(call.before->key_id == call.after->key_id);
      CHECK(call.before->status == KeyStatus::active);
      CHECK(call.after->status == KeyStatus::revoked);
      CHECK(call.after->version == call.before->version + 1);
      CHECK(call.after->updated_at == at(80));
      for (const KeyInfo& k : before) {
        if (k.key_id == call.before->key_id) check_audit_key(call.before, k);
      }
      audited.push_back(call.after->key_id);
    }
    std::sort(audited.begin(), audited.end());
    std::vector<apikeys::Uuid> want = ids_of(revoked);
    std::sort(want.begin(), want.end());
    CHECK(audited == want);
    CHECK(std::find(audited.begin(), audited.end(), key_id(2)) == audited.end());
    check_same_events(all_events(*store, alice), newest_first(audit.events()));
    CHECK(all_events(*store, bob).empty());
    CHECK(store->find(public_key(4))->info.status == KeyStatus::active);
  }

  SECTION("change_credits_audited: configure, add and remove, each audited once") {
    const KeyRecord a = lineage_record(1, alice);
    store->insert(a);
    KeyRecord b = record(2, alice, 5);
    b.info.lineage_id = a.info.key_id;
    store->insert(b);

    CreditsChange configure;
    configure.remaining = 20;
    configure.at = at(90);
    RecordingAudit set(at(90), AuditAction::set_credits);
    auto changed = store->change_credits_audited(alice, b.info.key_id, configure, set);
    REQUIRE(changed);
    REQUIRE(set.calls().size() == 1);
    check_audit_key(set.calls()[0].before, b.info);  // no credits yet
    CHECK_FALSE(set.calls()[0].before->credits);
    check_audit_key(set.calls()[0].after, *changed);
    REQUIRE(set.calls()[0].after->credits);
    CHECK(set.calls()[0].after->credits->remaining == 20);
    CHECK(set.calls()[0].after->key_id == b.info.key_id);

    CreditsChange add;
    add.op = CreditsOp::add;
    add.delta = 5;
    add.at = at(91);
    RecordingAudit added(at(91), AuditAction::add_credits);
    changed = store->change_credits_audited(alice, a.info.key_id, add, added);
    REQUIRE(changed);
    REQUIRE(added.calls().size() == 1);
    REQUIRE(added.calls()[0].before);
    REQUIRE(added.calls()[0].before->credits);
    CHECK(added.calls()[0].before->credits->remaining == 20);
    REQUIRE(added.calls()[0].after);
    REQUIRE(added.calls()[0].after->credits);
    CHECK(added.calls()[0].after->credits->remaining == 25);
    CHECK(added.calls()[0].after->key_id == a.info.key_id);

    CreditsChange remove;
    remove.op = CreditsOp::remove;
    remove.at = at(92);
    RecordingAudit removed(at(92), AuditAction::set_credits);
    changed = store->change_credits_audited(alice, a.info.key_id, remove, removed);
    REQUIRE(changed);
    CHECK_FALSE(changed->credits);
    REQUIRE(removed.calls().size() == 1);
    REQUIRE(removed.calls()[0].before);
    REQUIRE(removed.calls()[0].before->credits);
    CHECK(removed.calls()[0].before->credits->remaining == 25);
    REQUIRE(removed.calls()[0].after);
    CHECK_FALSE(removed.calls()[0].after->credits);

    std::vector<AuditEvent> want = set.events();
    want.insert(want.end(), added.events().begin(), added.events().end());
    want.insert(want.end(), removed.events().begin(), removed.events().end());
    check_same_events(all_events(*store, alice), newest_first(want));
  }

  SECTION("a write that changes nothing is not audited and writes no event") {
    store->insert(credited_record(1, alice, 10));
    store->insert(record(2, alice, 5));
    store->insert(record(3, bob, 6));
    REQUIRE(store->set_status(bob, key_id(3), KeyStatus::revoked));
    const AccountView alice_before = view_of(*store, alice);
    const AccountView bob_before = view_of(*store, bob);
    RecordingAudit audit(at(100));
    const KeyInfo key = *store->get(alice, key_id(1));
    KeyInfo next = key;
    next.title = "never";

    // A stale version, another account's key, an unknown key.
    CHECK(store->replace_audited(alice, next, key.version + 1, audit).outcome ==
          WriteOutcome::conflict);
    CHECK(store->replace_audited(alice, next, key.version - 1, audit).outcome ==
          WriteOutcome::conflict);
    CHECK(store->replace_audited(bob, next, key.version, audit).outcome == WriteOutcome::not_found);
    KeyInfo unknown = next;
    unknown.key_id = key_id(99);
    CHECK(store->replace_audited(alice, unknown, 1, audit).outcome == WriteOutcome::not_found);
    KeyRecord successor = record(4, alice, 20);
    successor.info.lineage_id = key.key_id;
    next.rotated_to = successor.info.key_id;
    CHECK(store->rotate_audited(alice, next, key.version + 1, successor, audit).outcome ==
          WriteOutcome::conflict);
    KeyInfo unknown_old = next;
    unknown_old.key_id = key_id(99);
    CHECK(store->rotate_audited(alice, unknown_old, 1, successor, audit).outcome ==
          WriteOutcome::not_found);
    CHECK_FALSE(store->remove_audited(bob, key_id(1), audit));
    CHECK_FALSE(store->remove_audited(alice, key_id(99), audit));
    CHECK(store->revoke_all_audited(bob, at(100), audit).empty());  // all revoked already
    CHECK(store->revoke_all_audited(account_id(3), at(100), audit).empty());
    CreditsChange configure;
    configure.remaining = 1;
    configure.at = at(100);
    CHECK_FALSE(store->change_credits_audited(bob, key_id(1), configure, audit));
    CHECK_FALSE(store->change_credits_audited(alice, key_id(99), configure, audit));
    CreditsChange add;
    add.op = CreditsOp::add;
    add.delta = 1;
    add.at = at(100);
    CHECK(error_code_of([&] {
            (void)store->change_credits_audited(alice, key_id(2), add, audit);
          }) == ErrorCode::conflict);
    CHECK(audit.calls().empty());

    // A duplicate insert or successor: refused, and no event whether or not it was built.
    RecordingAudit duplicate(at(100));
    CHECK(error_code_of([&] { store->insert_audited(record(1, alice), duplicate); }) ==
          ErrorCode::already_exists);
    KeyInfo rotate_next = key;
    rotate_next.rotated_to = key_id(2);
    CHECK(error_code_of([&] {
            (void)store->rotate_audited(alice, rotate_next, key.version, record(2, alice, 5),
                                        duplicate);
          }) == ErrorCode::already_exists);

    check_unchanged(*store, alice, alice_before);
    check_unchanged(*store, bob, bob_before);
    CHECK_FALSE(store->find(successor.info.public_key));
    CHECK(all_events(*store, alice).empty());
    CHECK(all_events(*store, bob).empty());
  }

  SECTION("when the audit throws, the write throws and changes nothing") {
    store->insert(credited_record(1, alice, 10));
    store->insert(record(2, alice, 5));
    store->insert(record(3, alice, 6));
    const AccountView before = view_of(*store, alice);
    const KeyInfo key = *store->get(alice, key_id(1));

    RecordingAudit fails(at(110));
    fails.throw_on_call = 1;
    CHECK_THROWS_AS(store->insert_audited(record(4, alice, 7), fails), AuditFailure);
    CHECK_FALSE(store->find(public_key(4)));
    CHECK_FALSE(store->get(alice, key_id(4)));

    KeyInfo next = key;
    next.title = "never";
    next.status = KeyStatus::disabled;
    RecordingAudit fails_replace(at(110));
    fails_replace.throw_on_call = 1;
    CHECK_THROWS_AS(store->replace_audited(alice, next, key.version, fails_replace), AuditFailure);

    KeyRecord successor = record(5, alice, 20);
    successor.info.lineage_id = key.key_id;
    successor.info.rotated_from = key.key_id;
    next.rotated_to = successor.info.key_id;
    for (const std::size_t k : {std::size_t{1}, std::size_t{2}}) {
      INFO("throwing on call " << k);
      RecordingAudit fails_rotate(at(110));
      fails_rotate.throw_on_call = k;
      CHECK_THROWS_AS(store->rotate_audited(alice, next, key.version, successor, fails_rotate),
                      AuditFailure);
      CHECK(fails_rotate.calls().size() == k);
      CHECK_FALSE(store->find(successor.info.public_key));
      CHECK_FALSE(store->get(alice, successor.info.key_id));
    }

    RecordingAudit fails_remove(at(110));
    fails_remove.throw_on_call = 1;
    CHECK_THROWS_AS(store->remove_audited(alice, key_id(1), fails_remove), AuditFailure);

    RecordingAudit fails_revoke(at(110));
    fails_revoke.throw_on_call = 2;
    CHECK_THROWS_AS(store->revoke_all_audited(alice, at(110), fails_revoke), AuditFailure);
    CHECK(fails_revoke.calls().size() == 2);

    for (const CreditsOp op : {CreditsOp::configure, CreditsOp::add, CreditsOp::remove}) {
      CreditsChange change;
      change.op = op;
      change.remaining = 99;
      change.delta = 3;
      change.at = at(110);
      RecordingAudit fails_credits(at(110));
      fails_credits.throw_on_call = 1;
      CHECK_THROWS_AS(store->change_credits_audited(alice, key_id(1), change, fails_credits),
                      AuditFailure);
    }

    check_unchanged(*store, alice, before);
    for (const KeyInfo& k : store->list(alice)) CHECK(k.status == KeyStatus::active);
    CHECK(store->take_credits(key_id(1), 0, 0, at(110)).remaining == 10);
    CHECK(all_events(*store, alice).empty());
    // And the store still works.
    RecordingAudit ok(at(120));
    store->insert_audited(record(4, alice, 7), ok);
    check_same_events(all_events(*store, alice), ok.events());
  }

  SECTION("when the audit returns no event, the write commits without one") {
    RecordingAudit nothing(at(130));
    nothing.return_nothing = true;
    store->insert_audited(credited_record(1, alice, 10), nothing);
    store->insert_audited(record(2, alice, 5), nothing);
    REQUIRE(store->find(public_key(1)));
    KeyInfo next = *store->get(alice, key_id(1));
    next.title = "renamed";
    const WriteResult w = store->replace_audited(alice, next, next.version, nothing);
    REQUIRE(w.outcome == WriteOutcome::applied);
    KeyRecord successor = record(3, alice, 20);
    successor.info.lineage_id = key_id(1);
    KeyInfo old_next = w.key;
    old_next.rotated_to = successor.info.key_id;
    REQUIRE(store->rotate_audited(alice, old_next, old_next.version, successor, nothing).outcome ==
            WriteOutcome::applied);
    CreditsChange add;
    add.op = CreditsOp::add;
    add.delta = 5;
    add.at = at(130);
    CHECK(store->change_credits_audited(alice, key_id(1), add, nothing)->credits->remaining == 15);
    CHECK(store->revoke_all_audited(alice, at(130), nothing).size() == 3);
    REQUIRE(store->remove_audited(alice, key_id(2), nothing));
    CHECK(nothing.calls().size() == 1 + 1 + 1 + 2 + 1 + 3 + 1);
    CHECK(store->get(alice, key_id(1))->title == "renamed");
    CHECK(store->find(successor.info.public_key));
    CHECK_FALSE(store->find(public_key(2)));
    CHECK(all_events(*store, alice).empty());
  }

  SECTION("audit_events: newest first, by key, since, after and limit, per account") {
    // 22 inserts at times with ties (three per time), then 3 changes of key 1: 25 events.
    std::vector<AuditEvent> written;
    for (std::uint32_t n = 1; n <= 22; ++n) {
      RecordingAudit audit(at(1000 + (n / 3) * 10), AuditAction::create);
      store->insert_audited(record(n, alice, n), audit);
      written.push_back(audit.events().at(0));
    }
    for (const std::int64_t t : {2000, 2000, 2010}) {
      KeyInfo next = *store->get(alice, key_id(1));
      next.title = "at " + std::to_string(t);
      RecordingAudit audit(at(t));
      REQUIRE(store->replace_audited(alice, next, next.version, audit).outcome ==
              WriteOutcome::applied);
      written.push_back(audit.events().at(0));
    }
    RecordingAudit bobs(at(1500), AuditAction::create);
    store->insert_audited(record(30, bob, 1), bobs);
    RecordingAudit bobs_later(at(5000), AuditAction::create);
    store->insert_audited(record(31, bob, 2), bobs_later);

    const std::vector<AuditEvent> ordered = newest_first(written);
    check_same_events(all_events(*store, alice), ordered);

    // Another account's events are never returned, whatever the range.
    std::vector<AuditEvent> bob_events = bobs.events();
    bob_events.push_back(bobs_later.events().at(0));
    check_same_events(all_events(*store, bob), newest_first(bob_events));
    CHECK(all_events(*store, account_id(3)).empty());
    AuditRange other;
    other.key_id = key_id(1);
    other.limit = 1001;
    CHECK(store->audit_events(bob, other).empty());

    // limit
    AuditRange range;
    range.limit = 5;
    check_same_events(store->audit_events(alice, range),
                      std::vector<AuditEvent>(ordered.begin(), ordered.begin() + 5));
    range.limit = 1;
    check_same_events(store->audit_events(alice, range), {ordered.front()});

    // key filter
    AuditRange by_key;
    by_key.key_id = key_id(1);
    by_key.limit = 1001;
    std::vector<AuditEvent> key1;
    for (const AuditEvent& e : ordered) {
      if (e.key_id == key_id(1)) key1.push_back(e);
    }
    REQUIRE(key1.size() == 4);
    check_same_events(store->audit_events(alice, by_key), key1);
    by_key.key_id = key_id(99);
    CHECK(store->audit_events(alice, by_key).empty());

    // since: inclusive (three events are exactly at 1050)
    AuditRange since;
    since.since = at(1050);
    since.limit = 1001;
    std::vector<AuditEvent> recent;
    for (const AuditEvent& e : ordered) {
      if (e.time >= at(1050)) recent.push_back(e);
    }
    REQUIRE(recent.size() == 3 + 3 + 2 + 3);  // at 1050, 1060, 1070, and the changes
    check_same_events(store->audit_events(alice, since), recent);
    since.key_id = key_id(1);
    check_same_events(store->audit_events(alice, since),
                      std::vector<AuditEvent>(key1.begin(), key1.begin() + 3));
    since.key_id.reset();
    since.since = at(3000);
    CHECK(store->audit_events(alice, since).empty());

    // after: strict, in the order; 25 events in pages of 7, each exactly once.
    std::vector<AuditEvent> paged;
    AuditRange page;
    page.limit = 7;
    for (int pages = 0; pages < 10; ++pages) {
      const auto got = store->audit_events(alice, page);
      CHECK(got.size() <= 7);
      if (got.empty()) break;
      paged.insert(paged.end(), got.begin(), got.end());
      page.after = apikeys::AuditPosition{got.back().time, got.back().event_id};
    }
    check_same_events(paged, ordered);

    // after, from inside a group of equal times; with a key filter and since.
    for (std::size_t i = 0; i < ordered.size(); ++i) {
      INFO("after event " << i);
      AuditRange rest;
      rest.after = apikeys::AuditPosition{ordered[i].time, ordered[i].event_id};
      rest.limit = 1001;
      check_same_events(store->audit_events(alice, rest),
                        std::vector<AuditEvent>(
                            ordered.begin() + static_cast<std::ptrdiff_t>(i) + 1, ordered.end()));
    }
    AuditRange key_after;
    key_after.key_id = key_id(1);
    key_after.after = apikeys::AuditPosition{key1[1].time, key1[1].event_id};
    key_after.since = at(1000);
    key_after.limit = 1;
    check_same_events(store->audit_events(alice, key_after), {key1[2]});
  }

  SECTION("prune_audit deletes exactly the events older than its time, of every account") {
    std::vector<AuditEvent> alice_events;
    for (std::uint32_t n = 1; n <= 6; ++n) {
      RecordingAudit audit(at(static_cast<std::int64_t>(n) * 100), AuditAction::create);
      store->insert_audited(record(n, alice, n), audit);
      alice_events.push_back(audit.events().at(0));
    }
    RecordingAudit old_bob(at(150), AuditAction::create);
    store->insert_audited(record(10, bob, 1), old_bob);
    RecordingAudit new_bob(at(450), AuditAction::create);
    store->insert_audited(record(11, bob, 2), new_bob);

    // Before 300: alice's at 100 and 200, bob's at 150. The one at 300 stays.
    CHECK(store->prune_audit(at(300)) == 3);
    const std::vector<AuditEvent> kept(alice_events.begin() + 2, alice_events.end());
    check_same_events(all_events(*store, alice), newest_first(kept));
    check_same_events(all_events(*store, bob), new_bob.events());
    CHECK(store->prune_audit(at(300)) == 0);
    CHECK(store->prune_audit(at(0)) == 0);
    // The keys are untouched.
    CHECK(store->list(alice).size() == 6);
    CHECK(store->list(bob).size() == 2);
    CHECK(store->prune_audit(at(100'000)) == 5);
    CHECK(all_events(*store, alice).empty());
    CHECK(all_events(*store, bob).empty());
  }

  SECTION("replace_digests_audited: one event per rewritten digest, none for skipped ones") {
    store->insert(record(1, alice, 10));
    store->insert(record(2, alice, 20));
    store->insert(credited_record(3, bob, 7));
    const KeyInfo one = *store->get(alice, key_id(1));
    const KeyInfo three = *store->get(bob, key_id(3));
    const std::uint64_t revision = store->revision();
    const apikeys::Digest old1 = record(1, alice).digest;
    const apikeys::Digest old2 = record(2, alice).digest;
    apikeys::Digest old3 = store->find(public_key(3))->digest;
    apikeys::Digest not_two = old2;
    not_two.bytes[0] ^= 0x01;
    RecordingAudit audit(at(700), AuditAction::rehash, system_context("rehash on use"));
    const std::size_t rewritten = store->replace_digests_audited(
        {{key_id(1), old1, digest(1, 2)},
         {key_id(2), not_two, digest(2, 2)},  // another digest: skipped
         {key_id(99), old1, digest(9, 2)},    // no such key: skipped
         {key_id(3), old3, digest(3, 2)}},
        audit);
    CHECK(rewritten == 2);
    CHECK(has_digest(*store, 1, digest(1, 2)));
    CHECK(has_digest(*store, 2, old2));
    CHECK(has_digest(*store, 3, digest(3, 2)));
    // One call per rewritten digest, in order; both states are the key as it is.
    REQUIRE(audit.calls().size() == 2);
    check_audit_key(audit.calls()[0].before, one);
    check_audit_key(audit.calls()[0].after, one);
    check_audit_key(audit.calls()[1].before, three);
    check_audit_key(audit.calls()[1].after, three);
    check_same_events(all_events(*store, alice), {audit.events().at(0)});
    check_same_events(all_events(*store, bob), {audit.events().at(1)});
    // Nothing else changed: not the key, nor the revision.
    check_same_key(*store->get(alice, key_id(1)), one);
    check_same_key(*store->get(bob, key_id(3)), three);
    CHECK(store->revision() == revision);

    // Again: every `from` is stale now, so nothing is rewritten and nothing audited.
    RecordingAudit again(at(710), AuditAction::rehash, system_context("rehash on use"));
    CHECK(store->replace_digests_audited({{key_id(1), old1, digest(1, 3)}}, again) == 0);
    CHECK(store->replace_digests_audited({}, again) == 0);
    CHECK(again.calls().empty());
    CHECK(all_events(*store, alice).size() == 1);
    // And an audit that returns nothing lets the rewrite commit without an event.
    RecordingAudit nothing(at(720));
    nothing.return_nothing = true;
    CHECK(store->replace_digests_audited({{key_id(2), old2, digest(2, 2)}}, nothing) == 1);
    CHECK(has_digest(*store, 2, digest(2, 2)));
    CHECK(all_events(*store, alice).size() == 1);
  }

  SECTION("take_credits_audited: one event per refill, of the lineage's newest key") {
    using apikeys::CreditTake;
    using apikeys::RefillInterval;
    using std::chrono::milliseconds;
    const auto refill = refill_of(100, RefillInterval::daily, apikeys::RefillMode::reset);
    const apikeys::TimePoint day = utc(2026, 3, 31);
    const std::int64_t p = apikeys::refill_period(RefillInterval::daily, day);
    const apikeys::Uuid l = key_id(1);
    store->insert(lineage_record(1, alice, credits_of(30, refill, p)));
    // The lineage's newest key is its successor (created later); a newer key of another
    // lineage is not the lineage's.
    KeyRecord successor = record(2, alice, 50);
    successor.info.lineage_id = l;
    store->insert(successor);
    store->insert(credited_record(3, alice, 5));
    store->insert(record(4, alice, 90));
    const auto system = system_context("credit refill");

    // No refill due: taken, no event.
    RecordingAudit none(at(800), AuditAction::refill, system);
    check_take(store->take_credits_audited(l, 1, 1, day + milliseconds(1000), none),
               CreditTake::Outcome::taken, 1, 29);
    CHECK(none.calls().empty());
    CHECK(all_events(*store, alice).empty());

    // A new day: the reset refill is written with one event, stored credits before and
    // refilled credits (before the take) after.
    RecordingAudit first(at(810), AuditAction::refill, system);
    const CreditTake t = store->take_credits_audited(l, 1, 1, utc(2026, 4, 1), first);
    check_take(t, CreditTake::Outcome::taken, 1, 99);
    CHECK(t.period == p + 1);
    REQUIRE(first.calls().size() == 1);
    const auto& call = first.calls()[0];
    REQUIRE(call.before);
    REQUIRE(call.after);
    CHECK(call.before->key_id == successor.info.key_id);
    CHECK(call.after->key_id == successor.info.key_id);
    CHECK(call.before->title == call.after->title);
    CHECK(call.before->version == call.after->version);
    REQUIRE(call.before->credits);
    REQUIRE(call.after->credits);
    CHECK(call.before->credits->remaining == 29);
    CHECK(call.before->credits->refilled_period == p);
    CHECK(call.after->credits->remaining == 100);
    CHECK(call.after->credits->refilled_period == p + 1);
    CHECK(call.after->credits->refill == refill);
    check_same_events(all_events(*store, alice), first.events());

    // A second take in the same period: no refill, no event.
    RecordingAudit same_day(at(820), AuditAction::refill, system);
    check_take(store->take_credits_audited(l, 1, 1, utc(2026, 4, 1, 1000), same_day),
               CreditTake::Outcome::taken, 1, 98);
    CHECK(same_day.calls().empty());

    // A refill is audited even when the take then finds too little.
    RecordingAudit short_take(at(830), AuditAction::refill, system);
    check_take(store->take_credits_audited(l, 101, 101, utc(2026, 4, 3), short_take),
               CreditTake::Outcome::insufficient, 0, 100);
    REQUIRE(short_take.calls().size() == 1);
    CHECK(short_take.calls()[0].before->credits->remaining == 98);
    CHECK(short_take.calls()[0].after->credits->remaining == 100);

    // A refill the plain take wrote is not written, nor audited, again.
    check_take(store->take_credits(l, 1, 1, utc(2026, 4, 4)), CreditTake::Outcome::taken, 1, 99);
    RecordingAudit after_plain(at(840), AuditAction::refill, system);
    check_take(store->take_credits_audited(l, 1, 1, utc(2026, 4, 4, 10), after_plain),
               CreditTake::Outcome::taken, 1, 98);
    CHECK(after_plain.calls().empty());

    // The lineage's first key gone: the refill's event is still its newest key's.
    REQUIRE(store->remove(alice, l));
    RecordingAudit rooted(at(850), AuditAction::refill, system);
    check_take(store->take_credits_audited(l, 0, 0, utc(2026, 4, 5), rooted),
               CreditTake::Outcome::taken, 0, 100);
    REQUIRE(rooted.calls().size() == 1);
    CHECK(rooted.calls()[0].after->key_id == successor.info.key_id);

    // A lineage without a refill, or without credits: no event.
    RecordingAudit others(at(860), AuditAction::refill, system);
    check_take(store->take_credits_audited(key_id(3), 1, 1, utc(2026, 5, 1), others),
               CreditTake::Outcome::taken, 1, 4);
    CHECK(store->take_credits_audited(key_id(4), 1, 1, utc(2026, 5, 1), others).outcome ==
          CreditTake::Outcome::no_credits);
    CHECK(store->take_credits_audited(key_id(99), 1, 1, utc(2026, 5, 1), others).outcome ==
          CreditTake::Outcome::no_credits);
    CHECK(others.calls().empty());

    std::vector<AuditEvent> written = first.events();
    written.push_back(short_take.events().at(0));
    written.push_back(rooted.events().at(0));
    check_same_events(all_events(*store, alice), newest_first(written));
    for (const AuditEvent& e : written) CHECK(e.key_id == successor.info.key_id);
  }

  SECTION("when the audit throws, a rehash or a refill changes nothing") {
    using apikeys::CreditTake;
    using apikeys::RefillInterval;
    using std::chrono::milliseconds;
    store->insert(record(1, alice, 10));
    store->insert(record(2, alice, 20));
    const apikeys::Digest old1 = record(1, alice).digest;
    const apikeys::Digest old2 = record(2, alice).digest;
    for (const std::size_t k : {std::size_t{1}, std::size_t{2}}) {
      INFO("throwing on call " << k);
      RecordingAudit fails(at(900), AuditAction::rehash, system_context("rehash on use"));
      fails.throw_on_call = k;
      CHECK_THROWS_AS(
          store->replace_digests_audited(
              {{key_id(1), old1, digest(1, 2)}, {key_id(2), old2, digest(2, 2)}}, fails),
          AuditFailure);
      CHECK(fails.calls().size() == k);
      // The batch is all or nothing: the first digest is not left rewritten.
      CHECK(has_digest(*store, 1, old1));
      CHECK(has_digest(*store, 2, old2));
    }

    const auto refill = refill_of(100, RefillInterval::daily, apikeys::RefillMode::reset);
    const apikeys::TimePoint day = utc(2026, 3, 31);
    const std::int64_t p = apikeys::refill_period(RefillInterval::daily, day);
    store->insert(lineage_record(3, alice, credits_of(30, refill, p)));
    RecordingAudit fails_refill(at(910), AuditAction::refill, system_context("credit refill"));
    fails_refill.throw_on_call = 1;
    CHECK_THROWS_AS(store->take_credits_audited(key_id(3), 1, 1, utc(2026, 4, 1), fails_refill),
                    AuditFailure);
    // Neither the refill nor the take was written.
    const auto kept = store->get(alice, key_id(3));
    REQUIRE(kept);
    REQUIRE(kept->credits);
    CHECK(kept->credits->remaining == 30);
    CHECK(kept->credits->refilled_period == p);
    CHECK(all_events(*store, alice).empty());

    // And both still work.
    RecordingAudit ok(at(920), AuditAction::refill, system_context("credit refill"));
    check_take(store->take_credits_audited(key_id(3), 1, 1, utc(2026, 4, 1), ok),
               CreditTake::Outcome::taken, 1, 99);
    RecordingAudit ok_rehash(at(930), AuditAction::rehash, system_context("rehash on use"));
    CHECK(store->replace_digests_audited({{key_id(1), old1, digest(1, 2)}}, ok_rehash) == 1);
    std::vector<AuditEvent> written = ok.events();
    written.push_back(ok_rehash.events().at(0));
    check_same_events(all_events(*store, alice), newest_first(written));
  }

  SECTION("concurrent take_credits_audited as a refill comes due: one refill, one event") {
    using apikeys::RefillInterval;
    const auto refill = refill_of(100, RefillInterval::daily, apikeys::RefillMode::reset);
    const std::int64_t p = apikeys::refill_period(RefillInterval::daily, utc(2026, 3, 31));
    store->insert(lineage_record(1, alice, credits_of(30, refill, p)));
    constexpr int kThreads = 4;
    std::vector<std::unique_ptr<RecordingAudit>> audits;
    for (int t = 0; t < kThreads; ++t) {
      audits.push_back(std::make_unique<RecordingAudit>(at(1000), AuditAction::refill,
                                                        system_context("credit refill")));
    }
    std::atomic<int> ready{0};
    std::atomic<int> taken{0};
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        ++ready;
        while (ready.load() < kThreads) std::this_thread::yield();
        try {
          const apikeys::CreditTake got = store->take_credits_audited(
              key_id(1), 1, 1, utc(2026, 4, 1, t), *audits[static_cast<std::size_t>(t)]);
          if (got.outcome == apikeys::CreditTake::Outcome::taken) ++taken;
        } catch (...) {
          ++failures;
        }
      });
    }
    for (auto& th : threads) th.join();
    CHECK(failures.load() == 0);
    CHECK(taken.load() == kThreads);
    CHECK(store->get(alice, key_id(1))->credits->remaining == 100 - kThreads);
    const auto events = all_events(*store, alice);
    REQUIRE(events.size() == 1);
    // The event is one an audit built (a store that retries may have called others).
    int built = 0;
    for (const auto& audit : audits) {
      for (const AuditEvent& e : audit->events()) {
        if (e.event_id == events[0].event_id) ++built;
      }
    }
    CHECK(built == 1);
    CHECK(events[0].before.find("\"credits\":30") != std::string::npos);
    CHECK(events[0].after.find("\"credits\":100") != std::string::npos);
  }

  SECTION("the plain writes still work and write no event") {
    store->insert(credited_record(1, alice, 10));
    store->insert(record(2, alice, 5));
    KeyInfo next = *store->get(alice, key_id(1));
    next.title = "plain";
    const WriteResult w = store->replace(alice, next, next.version);
    REQUIRE(w.outcome == WriteOutcome::applied);
    KeyRecord successor = record(3, alice, 20);
    successor.info.lineage_id = key_id(1);
    KeyInfo old_next = w.key;
    old_next.rotated_to = successor.info.key_id;
    REQUIRE(store->rotate(alice, old_next, old_next.version, successor).outcome ==
            WriteOutcome::applied);
    CreditsChange add;
    add.op = CreditsOp::add;
    add.delta = 1;
    add.at = at(0);
    REQUIRE(store->change_credits(alice, key_id(1), add));
    REQUIRE(store->set_status(alice, key_id(2), KeyStatus::disabled));
    CHECK(store->revoke_all(alice, at(10)).size() == 3);
    REQUIRE(store->remove(alice, key_id(2)));
    CHECK(store->list(alice).size() == 2);
    CHECK(all_events(*store, alice).empty());
  }

  SECTION("concurrent replace_audited of one key: one applies, one event") {
    store->insert(record(1, alice));
    const KeyInfo key = *store->get(alice, key_id(1));
    constexpr int kThreads = 4;
    std::vector<std::unique_ptr<RecordingAudit>> audits;
    for (int t = 0; t < kThreads; ++t) audits.push_back(std::make_unique<RecordingAudit>(at(200)));
    std::atomic<int> ready{0};
    std::atomic<int> applied{0};
    std::atomic<int> conflicts{0};
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        KeyInfo next = key;
        next.title = "thread " + std::to_string(t);
        ++ready;
        while (ready.load() < kThreads) std::this_thread::yield();
        try {
          const WriteResult w = store->replace_audited(alice, next, key.version,
                                                       *audits[static_cast<std::size_t>(t)]);
          if (w.outcome == WriteOutcome::applied) ++applied;
          if (w.outcome == WriteOutcome::conflict) ++conflicts;
        } catch (...) {
          ++failures;
        }
      });
    }
    for (auto& th : threads) th.join();
    CHECK(failures.load() == 0);
    CHECK(applied.load() == 1);
    CHECK(conflicts.load() == kThreads - 1);
    const auto events = all_events(*store, alice);
    REQUIRE(events.size() == 1);
    const KeyInfo now = *store->get(alice, key_id(1));
    CHECK(now.version == key.version + 1);
    // The event is one the winner's audit built (a store that retries may have called
    // the losers' too), and it says what the key now is.
    int built = 0;
    for (const auto& audit : audits) {
      for (std::size_t i = 0; i < audit->events().size(); ++i) {
        if (audit->events()[i].event_id != events[0].event_id) continue;
        ++built;
        check_same_event(events[0], audit->events()[i]);
        REQUIRE(audit->calls()[i].after);
        CHECK(audit->calls()[i].after->title == now.title);
      }
    }
    CHECK(built == 1);
  }
}

}  // namespace apikeys_test

#endif  // APIKEYS_TESTS_AUDIT_CONTRACT_HPP
