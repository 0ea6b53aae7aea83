// Tests of the change events a KeyManager gives its observers (Observer::on_change,
// AuditEvent): one event per changed key for every action, with its ids, context and
// the touched fields before and after under the CLI's JSON names; none for a no-op or a
// failed call; the ChangeContext checks; observers that throw; and no secret or digest
// in any event.
#include <array>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "apikeys/cache.hpp"
#include "apikeys/error.hpp"
#include "apikeys/key_manager.hpp"
#include "apikeys/memory_cache.hpp"
#include "apikeys/memory_store.hpp"
#include "apikeys/observer.hpp"
#include "apikeys/types.hpp"
#include "catch.hpp"
#include "store_doubles.hpp"
#include "test_support.hpp"

using apikeys::Actor;
using apikeys::ActorType;
using apikeys::AuditAction;
using apikeys::AuditEvent;
using apikeys::ChangeContext;
using apikeys::CreatedKey;
using apikeys::CreateRequest;
using apikeys::ErrorCode;
using apikeys::KeyInfo;
using apikeys::KeyStatus;
using apikeys::Uuid;
using Json = nlohmann::json;

namespace {

// Keeps a copy of every event and error it is given.
class Recorder final : public apikeys::Observer {
 public:
  void on_change(const AuditEvent& event) override {
    std::lock_guard<std::mutex> l(mu_);
    events_.push_back(event);
  }
  void on_error(const apikeys::BackgroundError& error) override {
    std::lock_guard<std::mutex> l(mu_);
    errors_.push_back({error.component, std::string(error.operation)});
  }
  std::vector<AuditEvent> events() const {
    std::lock_guard<std::mutex> l(mu_);
    return events_;
  }
  std::vector<std::pair<apikeys::Component, std::string>> errors() const {
    std::lock_guard<std::mutex> l(mu_);
    return errors_;
  }
  void clear() {
    std::lock_guard<std::mutex> l(mu_);
    events_.clear();
    errors_.clear();
  }

 private:
  mutable std::mutex mu_;
  std::vector<AuditEvent> events_;
  std::vector<std::pair<apikeys::Component, std::string>> errors_;
};

// Throws from every change event.
class Thrower final : public apikeys::Observer {
 public:
  std::atomic<int> calls{0};
  void on_change(const AuditEvent& /*event*/) override {
    ++calls;
    throw std::runtime_error("observer failed");
  }
};

// A MemoryStore behind a store that can fail every write before it reaches it.
class FailingStore final : public apikeys_test::ForwardingStore {
 public:
  explicit FailingStore(std::shared_ptr<apikeys::MemoryStore> inner)
      : ForwardingStore(inner), memory_(std::move(inner)) {}
  std::atomic<bool> fail_writes{false};

  void insert(const apikeys::KeyRecord& r) override {
    fail();
    ForwardingStore::insert(r);
  }
  std::optional<KeyInfo> remove(const Uuid& a, const Uuid& k) override {
    fail();
    return ForwardingStore::remove(a, k);
  }
  apikeys::WriteResult replace(const Uuid& a, const KeyInfo& next, std::uint64_t v) override {
    fail();
    return ForwardingStore::replace(a, next, v);
  }
  apikeys::WriteResult rotate(const Uuid& a, const KeyInfo& old_next, std::uint64_t v,
                              const apikeys::KeyRecord& successor) override {
    fail();
    return ForwardingStore::rotate(a, old_next, v, successor);
  }
  std::vector<KeyInfo> revoke_all(const Uuid& a, apikeys::TimePoint at) override {
    fail();
    return ForwardingStore::revoke_all(a, at);
  }
  std::optional<KeyInfo> change_credits(const Uuid& a, const Uuid& k,
                                        const apikeys::CreditsChange& change) override {
    fail();
    return memory_->change_credits(a, k, change);
  }
  apikeys::CreditTake take_credits(const Uuid& lineage, std::uint64_t min, std::uint64_t max,
                                   apikeys::TimePoint now) override {
    return memory_->take_credits(lineage, min, max, now);
  }
  void return_credits(const Uuid& lineage, std::uint64_t n, std::int64_t period) override {
    memory_->return_credits(lineage, n, period);
  }

 private:
  void fail() const {
    if (fail_writes) throw std::runtime_error("disk on fire");
  }
  std::shared_ptr<apikeys::MemoryStore> memory_;
};

// A MemoryCache whose erase() can fail, as an unreachable shared cache does.
class FlakyCache final : public apikeys::Cache {
 public:
  apikeys::MemoryCache inner;
  std::atomic<bool> fail_erase{false};

  std::optional<apikeys::Verdict> get(std::string_view pk, const apikeys::Digest& d) override {
    return inner.get(pk, d);
  }
  std::uint64_t fill_token(std::string_view pk) override { return inner.fill_token(pk); }
  void put(std::string_view pk, const apikeys::Digest& d, const apikeys::Verdict& v,
           std::chrono::milliseconds ttl, std::uint64_t token) override {
    inner.put(pk, d, v, ttl, token);
  }
  std::atomic<ErrorCode> erase_error{ErrorCode::busy};

  void erase(std::string_view pk) override {
    if (fail_erase) throw apikeys::Error(erase_error.load(), "cache unreachable");
    inner.erase(pk);
  }
  void clear() override { inner.clear(); }
};

// A KeyManager over a MemoryStore (behind a FailingStore) with `observers`.
struct Observed {
  std::shared_ptr<apikeys::ManualClock> clock =
      std::make_shared<apikeys::ManualClock>(apikeys_test::test_start());
  std::shared_ptr<apikeys::MemoryStore> memory = std::make_shared<apikeys::MemoryStore>();
  std::shared_ptr<FailingStore> store = std::make_shared<FailingStore>(memory);
  // With a legacy pepper, for import_keys().
  std::shared_ptr<apikeys::HmacSha256Hasher> hasher = std::make_shared<apikeys::HmacSha256Hasher>(
      std::vector<apikeys::Pepper>{{1, apikeys_test::kTestPepper}}, 1, "python-service-secret");
  std::shared_ptr<FlakyCache> cache = std::make_shared<FlakyCache>();
  std::shared_ptr<Recorder> recorder = std::make_shared<Recorder>();
  std::unique_ptr<apikeys::KeyManager> manager;

  explicit Observed(std::vector<std::shared_ptr<apikeys::Observer>> extra = {},
                    bool recorder_first = true) {
    apikeys::KeyManagerOptions options;
    options.validation.clock = clock;
    options.validation.cache = cache;
    options.validation.record_last_use = false;
    if (recorder_first) options.validation.observers.push_back(recorder);
    for (auto& o : extra) options.validation.observers.push_back(std::move(o));
    if (!recorder_first) options.validation.observers.push_back(recorder);
    manager = std::make_unique<apikeys::KeyManager>(store, hasher, std::move(options));
  }

  apikeys::KeyManager* operator->() const { return manager.get(); }
  std::vector<AuditEvent> events() const { return recorder->events(); }
};

const Uuid kAccount = apikeys_test::account_id(1);

ChangeContext alice(std::string reason = "ticket 42") {
  ChangeContext c;
  c.actor.type = ActorType::user;
  c.actor.id = "alice@example.com";
  c.actor.detail = "203.0.113.7";
  c.reason = std::move(reason);
  return c;
}

// The member names of a JSON object.
std::set<std::string> names(const Json& j) {
  std::set<std::string> out;
  for (auto it = j.begin(); it != j.end(); ++it) out.insert(it.key());
  return out;
}

const std::set<std::string> kEveryField = {
    "key_id",       "public_key",   "title",      "description", "status",   "created_at",
    "expires_at",   "last_used_at", "updated_at", "version",     "metadata", "scopes",
    "rotated_from", "rotated_to",   "lineage_id", "rate_limits", "credits"};

// Checks what every event shares: a v7 (time-ordered) event id, the clock's time, the context.
void check_common(const AuditEvent& e, AuditAction action, const ChangeContext& context,
                  const Uuid& key_id, apikeys::TimePoint now) {
  CHECK(e.action == action);
  CHECK(e.account_id == kAccount);
  CHECK(e.key_id == key_id);
  CHECK_FALSE(e.event_id.is_nil());
  CHECK((e.event_id.bytes()[6] >> 4) == 7);
  CHECK((e.event_id.bytes()[8] & 0xC0) == 0x80);
  CHECK(e.time == now);
  CHECK(e.context.actor.type == context.actor.type);
  CHECK(e.context.actor.id == context.actor.id);
  CHECK(e.context.actor.detail == context.actor.detail);
  CHECK(e.context.reason == context.reason);
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Neither `secret` nor any of `digests_hex` (in either case) is in any text of `e`.
void check_no_secret(const AuditEvent& e, std::string_view secret,
                     const std::vector<std::string>& digests_hex) {
  for (const std::string* text :
       {&e.before, &e.after, &e.context.actor.id, &e.context.actor.detail, &e.context.reason}) {
    if (!secret.empty()) CHECK(text->find(secret) == std::string::npos);
    if (!secret.empty()) CHECK(text->find(secret.substr(3)) == std::string::npos);
    for (const std::string& hex : digests_hex) {
      CHECK(lower(*text).find(hex) == std::string::npos);
      CHECK(lower(*text).find(hex.substr(0, 16)) == std::string::npos);
    }
  }
}

std::string digest_hex(apikeys::MemoryStore& store, const std::string& public_key) {
  const auto record = store.find(public_key);
  REQUIRE(record);
  return lower(apikeys_test::to_hex(record->digest.bytes));
}

CreateRequest request_with_credits(std::uint64_t credits) {
  CreateRequest r("Billing");
  apikeys::Credits c;
  c.remaining = credits;
  r.credits = c;
  return r;
}

}  // namespace

TEST_CASE("audit: create reports every field of the new key, and nothing secret",
          "[key_manager][audit]") {
  Observed t;
  CreateRequest r("Billing export", "nightly job", 30,
                  R"({"team":"data","n":12345678901234567890})", {"invoices:read"});
  const CreatedKey created = t->create(kAccount, r, alice());
  const auto events = t.events();
  REQUIRE(events.size() == 1);
  const AuditEvent& e = events[0];
  check_common(e, AuditAction::create, alice(), created.info.key_id, t.clock->now());
  CHECK(e.before == "{}");
  const Json after = Json::parse(e.after);
  CHECK(names(after) == kEveryField);
  CHECK(after["key_id"] == created.info.key_id.to_string());
  CHECK(after["public_key"] == created.info.public_key);
  CHECK(after["title"] == "Billing export");
  CHECK(after["description"] == "nightly job");
  CHECK(after["status"] == "active");
  CHECK(after["version"] == 1);
  CHECK(after["scopes"] == Json::array({"invoices:read"}));
  CHECK(after["metadata"]["team"] == "data");
  // The metadata is the stored text, so a number beyond 64 bits keeps its digits.
  CHECK(e.after.find("12345678901234567890") != std::string::npos);
  CHECK(after["expires_at"] == apikeys::format_utc(*created.info.expires_at));
  CHECK(after["last_used_at"].is_null());
  CHECK(after["rotated_from"].is_null());
  CHECK(after["credits"].is_null());
  CHECK(after["lineage_id"] == created.info.key_id.to_string());
  CHECK_FALSE(after.contains("secret_key"));
  check_no_secret(e, created.secret_key.reveal(), {digest_hex(*t.memory, created.info.public_key)});
}

TEST_CASE("audit: a key's text in an event is one line that no terminal acts on",
          "[key_manager][audit]") {
  // The key owner's title and metadata may hold a line separator, C1 controls (NEL, CSI)
  // and a right-to-left override, and the metadata line breaks between its tokens: in
  // `after` they are escapes and spaces, and a JSON reader gets the same values back.
  Observed t;
  const std::string title = "pay\u2028roll";
  const std::string metadata =
      "{\n\t\"n\": \"a\u0085b\u009b2J\u202egnp.exe\u2029\",\r\n\t\"m\": 1\n}";
  CreateRequest r(title, "", std::nullopt, metadata, {});
  const CreatedKey created = t->create(kAccount, r, alice());
  const auto events = t.events();
  REQUIRE(events.size() == 1);
  const std::string& text = events[0].after;
  for (const std::string raw :
       {"\n", "\t", "\r", "\u2028", "\u2029", "\u0085", "\u009b", "\u202e"}) {
    INFO(Json(raw).dump());
    CHECK(text.find(raw) == std::string::npos);
  }
  const Json after = Json::parse(text);
  CHECK(after["title"] == title);
  CHECK(after["metadata"] == Json::parse(metadata));
  CHECK(created.info.title == title);  // stored as given: only the event's text is escaped
}

TEST_CASE("audit: the default context is the system actor with no reason", "[key_manager][audit]") {
  Observed t;
  const CreatedKey created = t->create(kAccount, CreateRequest("k"));
  const auto events = t.events();
  REQUIRE(events.size() == 1);
  check_common(events[0], AuditAction::create, ChangeContext(), created.info.key_id,
               t.clock->now());
  CHECK(events[0].context.actor.type == ActorType::system);
  CHECK(events[0].context.actor.id.empty());
  CHECK(events[0].context.reason.empty());
}

TEST_CASE("audit: update reports exactly the fields it changed", "[key_manager][audit]") {
  Observed t;
  const CreatedKey created = t->create(kAccount, request_with_credits(10));
  const Uuid id = created.info.key_id;
  t.recorder->clear();
  t.clock->advance(std::chrono::seconds(5));

  SECTION("the key's own fields") {
    apikeys::KeyUpdate u;
    u.title = "Renamed";
    u.scopes = std::vector<std::string>{"a:b"};
    const KeyInfo updated = t->update(kAccount, id, u, alice());
    const auto events = t.events();
    REQUIRE(events.size() == 1);
    check_common(events[0], AuditAction::update, alice(), id, t.clock->now());
    const Json before = Json::parse(events[0].before);
    const Json after = Json::parse(events[0].after);
    const std::set<std::string> want = {"title", "scopes", "updated_at", "version"};
    CHECK(names(before) == want);
    CHECK(names(after) == want);
    CHECK(before["title"] == "Billing");
    CHECK(after["title"] == "Renamed");
    CHECK(before["scopes"] == Json::array());
    CHECK(after["scopes"] == Json::array({"a:b"}));
    CHECK(before["version"] == 1);
    CHECK(after["version"] == 2);
    CHECK(after["updated_at"] == apikeys::format_utc(updated.updated_at));
  }
  SECTION("the lineage's credits only") {
    apikeys::KeyUpdate u;
    u.credits = std::uint64_t{25};
    t->update(kAccount, id, u, alice());
    const auto events = t.events();
    REQUIRE(events.size() == 1);
    const Json before = Json::parse(events[0].before);
    const Json after = Json::parse(events[0].after);
    CHECK(names(before) == std::set<std::string>{"credits"});
    CHECK(names(after) == std::set<std::string>{"credits"});
    CHECK(before["credits"]["remaining"] == 10);
    CHECK(after["credits"]["remaining"] == 25);
  }
  SECTION("both at once: two writes, an event for each, fields first") {
    apikeys::KeyUpdate u;
    u.description = "now described";
    u.credits = apikeys::FieldUpdate<std::uint64_t>::clear();
    t->update(kAccount, id, u, alice());
    const auto events = t.events();
    REQUIRE(events.size() == 2);
    CHECK(events[0].action == apikeys::AuditAction::update);
    CHECK(events[1].action == apikeys::AuditAction::update);
    CHECK(names(Json::parse(events[0].after)) ==
          std::set<std::string>{"description", "updated_at", "version"});
    const Json after = Json::parse(events[1].after);
    CHECK(names(after) == std::set<std::string>{"credits"});
    CHECK(after["credits"].is_null());
    CHECK(Json::parse(events[1].before)["credits"]["remaining"] == 10);
    CHECK(events[0].event_id != events[1].event_id);
  }
  SECTION("clearing the refill of a key without credits: nothing to clear, no error") {
    const CreatedKey plain = t->create(kAccount, apikeys::CreateRequest("Plain"));
    t.recorder->clear();
    apikeys::KeyUpdate u;
    u.refill = apikeys::FieldUpdate<apikeys::CreditRefill>::clear();
    const KeyInfo same = t->update(kAccount, plain.info.key_id, u, alice());
    CHECK_FALSE(same.credits);
    CHECK(same.version == 1);
    CHECK(t.events().empty());
    // With a field of the key's own: that field is written, the credits untouched.
    u.title = "Renamed";
    const KeyInfo renamed = t->update(kAccount, plain.info.key_id, u, alice());
    CHECK(renamed.title == "Renamed");
    CHECK_FALSE(renamed.credits);
    const auto events = t.events();
    REQUIRE(events.size() == 1);
    const std::set<std::string> written = names(Json::parse(events[0].after));
    CHECK(written.count("title") == 1);
    CHECK(written.count("credits") == 0);
    // Setting a refill without a balance is still refused.
    apikeys::KeyUpdate set;
    apikeys::CreditRefill r;
    r.amount = 5;
    set.refill = r;
    CHECK_THROWS_AS(t->update(kAccount, plain.info.key_id, set, alice()), apikeys::Error);
  }
  SECTION("nothing to change, or a failed update: no event") {
    t->update(kAccount, id, apikeys::KeyUpdate{}, alice());
    CHECK(t.events().empty());
    // Writing the same title again still writes the key (a new version): reported
    // with only the fields that differ.
    apikeys::KeyUpdate same;
    same.title = "Billing";
    t->update(kAccount, id, same, alice());
    const auto events = t.events();
    REQUIRE(events.size() == 1);
    CHECK(names(Json::parse(events[0].after)) == std::set<std::string>{"updated_at", "version"});
    t.recorder->clear();
    apikeys::KeyUpdate stale;
    stale.title = "x";
    stale.expected_version = 1;
    CHECK_THROWS_AS(t->update(kAccount, id, stale, alice()), apikeys::Error);
    CHECK(t.events().empty());
  }
}

TEST_CASE("audit: disable, enable and revoke report status, updated_at and version",
          "[key_manager][audit]") {
  Observed t;
  const Uuid id = t->create(kAccount, CreateRequest("k")).info.key_id;
  t.recorder->clear();
  const std::set<std::string> want = {"status", "updated_at", "version"};

  t->disable(kAccount, id, alice("suspicious traffic"));
  t->disable(kAccount, id, alice());  // already disabled: no change
  auto events = t.events();
  REQUIRE(events.size() == 1);
  check_common(events[0], AuditAction::disable, alice("suspicious traffic"), id, t.clock->now());
  CHECK(names(Json::parse(events[0].before)) == want);
  CHECK(Json::parse(events[0].before)["status"] == "active");
  CHECK(Json::parse(events[0].after)["status"] == "disabled");
  CHECK(Json::parse(events[0].after)["version"] == 2);

  t.recorder->clear();
  t->enable(kAccount, id, alice());
  t->enable(kAccount, id, alice());  // already active
  events = t.events();
  REQUIRE(events.size() == 1);
  check_common(events[0], AuditAction::enable, alice(), id, t.clock->now());
  CHECK(Json::parse(events[0].before)["status"] == "disabled");
  CHECK(Json::parse(events[0].after)["status"] == "active");

  t.recorder->clear();
  t->revoke(kAccount, id, alice());
  t->revoke(kAccount, id, alice());  // already revoked
  events = t.events();
  REQUIRE(events.size() == 1);
  check_common(events[0], AuditAction::revoke, alice(), id, t.clock->now());
  CHECK(names(Json::parse(events[0].after)) == want);
  CHECK(Json::parse(events[0].before)["status"] == "active");
  CHECK(Json::parse(events[0].after)["status"] == "revoked");
  CHECK(Json::parse(events[0].after)["version"] == 4);
}

TEST_CASE("audit: rotate reports the old key's change and the new key's creation",
          "[key_manager][audit]") {
  Observed t;
  const CreatedKey old = t->create(kAccount, CreateRequest("k"));
  t.recorder->clear();
  apikeys::RotateRequest r;
  r.grace = std::chrono::hours(1);
  const CreatedKey next = t->rotate(kAccount, old.info.key_id, r, alice());
  const auto events = t.events();
  REQUIRE(events.size() == 2);

  check_common(events[0], AuditAction::rotate, alice(), old.info.key_id, t.clock->now());
  const Json before = Json::parse(events[0].before);
  const Json after = Json::parse(events[0].after);
  CHECK(names(after) == std::set<std::string>{"expires_at", "rotated_to", "updated_at", "version"});
  CHECK(names(before) == names(after));
  CHECK(before["rotated_to"].is_null());
  CHECK(after["rotated_to"] == next.info.key_id.to_string());
  CHECK(before["expires_at"].is_null());
  CHECK(after["expires_at"] == apikeys::format_utc(t.clock->now() + std::chrono::hours(1)));

  check_common(events[1], AuditAction::create, alice(), next.info.key_id, t.clock->now());
  CHECK(events[1].before == "{}");
  const Json created = Json::parse(events[1].after);
  CHECK(names(created) == kEveryField);
  CHECK(created["rotated_from"] == old.info.key_id.to_string());
  CHECK(created["lineage_id"] == old.info.key_id.to_string());
  for (const AuditEvent& e : events) {
    check_no_secret(e, old.secret_key.reveal(), {digest_hex(*t.memory, old.info.public_key)});
    check_no_secret(e, next.secret_key.reveal(), {digest_hex(*t.memory, next.info.public_key)});
  }
}

TEST_CASE("audit: set_credits and add_credits report the credits before and after",
          "[key_manager][audit]") {
  Observed t;
  const Uuid id = t->create(kAccount, request_with_credits(10)).info.key_id;
  t.recorder->clear();

  t->set_credits(kAccount, id, 100, alice());
  auto events = t.events();
  REQUIRE(events.size() == 1);
  check_common(events[0], AuditAction::set_credits, alice(), id, t.clock->now());
  CHECK(names(Json::parse(events[0].before)) == std::set<std::string>{"credits"});
  CHECK(Json::parse(events[0].before)["credits"]["remaining"] == 10);
  CHECK(Json::parse(events[0].after)["credits"]["remaining"] == 100);

  t.recorder->clear();
  t->add_credits(kAccount, id, -30, alice());
  events = t.events();
  REQUIRE(events.size() == 1);
  check_common(events[0], AuditAction::add_credits, alice(), id, t.clock->now());
  CHECK(Json::parse(events[0].before)["credits"]["remaining"] == 100);
  CHECK(Json::parse(events[0].after)["credits"]["remaining"] == 70);

  // No change: no event.
  t.recorder->clear();
  t->add_credits(kAccount, id, 0, alice());
  t->set_credits(kAccount, id, 70, alice());
  CHECK(t.events().empty());
}

TEST_CASE("audit: revoke_all reports one event with the count", "[key_manager][audit]") {
  Observed t;
  (void)t->create(kAccount, CreateRequest("a"));
  (void)t->create(kAccount, CreateRequest("b"));
  const Uuid gone = t->create(kAccount, CreateRequest("c")).info.key_id;
  t->revoke(kAccount, gone);
  t.recorder->clear();

  CHECK(t->revoke_all(kAccount, alice()) == 2);
  auto events = t.events();
  REQUIRE(events.size() == 1);
  check_common(events[0], AuditAction::revoke_all, alice(), Uuid(), t.clock->now());
  CHECK(events[0].key_id.is_nil());
  CHECK(events[0].before == "{}");
  CHECK(Json::parse(events[0].after) == Json{{"revoked", 2}});

  t.recorder->clear();
  CHECK(t->revoke_all(kAccount, alice()) == 0);
  CHECK(t.events().empty());
}

TEST_CASE("audit: remove reports every field before and {} after", "[key_manager][audit]") {
  Observed t;
  const CreatedKey created = t->create(kAccount, CreateRequest("k"));
  const std::string digest = digest_hex(*t.memory, created.info.public_key);
  t.recorder->clear();
  t->remove(kAccount, created.info.key_id, alice());
  const auto events = t.events();
  REQUIRE(events.size() == 1);
  check_common(events[0], AuditAction::remove, alice(), created.info.key_id, t.clock->now());
  CHECK(events[0].after == "{}");
  const Json before = Json::parse(events[0].before);
  CHECK(names(before) == kEveryField);
  CHECK(before["title"] == "k");
  check_no_secret(events[0], created.secret_key.reveal(), {digest});
}

TEST_CASE("audit: import reports each imported key, not the skipped or rejected rows",
          "[key_manager][audit]") {
  Observed t;
  const auto row = [](int n) {
    std::array<std::uint8_t, 16> b{};
    b[0] = 0xAB;
    b[6] = 0x40;
    b[8] = 0x80;
    b[15] = static_cast<std::uint8_t>(n);
    Json j;
    j["key_id"] = Uuid(b).to_string();
    std::string pk = "pk_" + std::to_string(1000 + n);
    pk.append(35 - pk.size(), 'P');
    j["public_key"] = pk;
    j["secret_key_hash"] = std::string(62, 'a') + std::to_string(10 + n);
    j["account_id"] = kAccount.to_string();
    j["status"] = "active";
    j["created_at"] = "2024-11-24T19:00:28.123456+00:00";
    j["title"] = "Imported " + std::to_string(n);
    return j.dump() + "\n";
  };
  std::string text = row(1) + row(2) + "{\"key_id\": 7}\n";
  {
    std::istringstream in(text);
    const apikeys::ImportReport report = t->import_keys(in, {}, alice("migration"));
    CHECK(report.imported == 2);
    CHECK(report.rejected == 1);
  }
  auto events = t.events();
  REQUIRE(events.size() == 2);
  for (std::size_t i = 0; i < 2; ++i) {
    const Json after = Json::parse(events[i].after);
    CHECK(events[i].action == AuditAction::import);
    CHECK(events[i].before == "{}");
    CHECK(events[i].context.reason == "migration");
    CHECK(events[i].account_id == kAccount);
    CHECK(names(after) == kEveryField);
    CHECK(after["key_id"] == events[i].key_id.to_string());
    CHECK(after["title"] == "Imported " + std::to_string(i + 1));
    check_no_secret(events[i], {}, {std::string(62, 'a') + std::to_string(11 + i)});
    CHECK(events[i].after.find("aaaaaaaaaaaaaaaa") == std::string::npos);
  }
  // A second run skips every row: nothing more is reported.
  t.recorder->clear();
  std::istringstream again(text);
  CHECK(t->import_keys(again, {}, alice()).skipped == 2);
  CHECK(t.events().empty());
}

TEST_CASE("audit: a call that fails reports nothing", "[key_manager][audit]") {
  Observed t;
  const Uuid id = t->create(kAccount, request_with_credits(5)).info.key_id;
  const Uuid missing = apikeys_test::account_id(99);
  t.recorder->clear();

  SECTION("not_found") {
    CHECK_THROWS_AS(t->revoke(kAccount, missing, alice()), apikeys::Error);
    CHECK_THROWS_AS(t->disable(kAccount, missing, alice()), apikeys::Error);
    CHECK_THROWS_AS(t->remove(kAccount, missing, alice()), apikeys::Error);
    CHECK_THROWS_AS(t->set_credits(kAccount, missing, 3, alice()), apikeys::Error);
    CHECK_THROWS_AS(t->rotate(apikeys_test::account_id(2), id, {}, alice()), apikeys::Error);
  }
  SECTION("conflict") {
    t->revoke(kAccount, id);
    t.recorder->clear();
    CHECK_THROWS_AS(t->disable(kAccount, id, alice()), apikeys::Error);
    CHECK_THROWS_AS(t->enable(kAccount, id, alice()), apikeys::Error);
    CHECK_THROWS_AS(t->rotate(kAccount, id, {}, alice()), apikeys::Error);
  }
  SECTION("a store that throws") {
    t.store->fail_writes = true;
    CHECK_THROWS_AS(t->create(kAccount, CreateRequest("x"), alice()), apikeys::Error);
    CHECK_THROWS_AS(t->revoke(kAccount, id, alice()), apikeys::Error);
    CHECK_THROWS_AS(t->disable(kAccount, id, alice()), apikeys::Error);
    CHECK_THROWS_AS(t->remove(kAccount, id, alice()), apikeys::Error);
    CHECK_THROWS_AS(t->rotate(kAccount, id, {}, alice()), apikeys::Error);
    CHECK_THROWS_AS(t->revoke_all(kAccount, alice()), apikeys::Error);
    CHECK_THROWS_AS(t->set_credits(kAccount, id, 9, alice()), apikeys::Error);
    CHECK_THROWS_AS(t->add_credits(kAccount, id, 1, alice()), apikeys::Error);
    apikeys::KeyUpdate u;
    u.title = "y";
    CHECK_THROWS_AS(t->update(kAccount, id, u, alice()), apikeys::Error);
  }
  CHECK(t.events().empty());
  CHECK(t->observer_failures() == 0);
}

TEST_CASE("audit: a change that commits before a cache fails is reported, then thrown",
          "[key_manager][audit]") {
  Observed t;
  const Uuid id = t->create(kAccount, CreateRequest("k")).info.key_id;
  t.recorder->clear();
  t.cache->fail_erase = true;
  CHECK_THROWS_AS(t->revoke(kAccount, id, alice()), apikeys::Error);
  auto events = t.events();
  REQUIRE(events.size() == 1);
  CHECK(events[0].action == AuditAction::revoke);
  // The retry finds it revoked: nothing more to report.
  t.cache->fail_erase = false;
  t.recorder->clear();
  CHECK(t->revoke(kAccount, id, alice()).status == KeyStatus::revoked);
  CHECK(t.events().empty());
}

TEST_CASE("audit: a cache failing with not_supported after a revoke reports it once",
          "[key_manager][audit]") {
  // not_supported from the store's replace() sends revoke() to set_status(); the same
  // code from a cache, after the revoke committed, must not report the revoke again.
  Observed t;
  const Uuid id = t->create(kAccount, CreateRequest("k")).info.key_id;
  t.recorder->clear();
  t.cache->erase_error = ErrorCode::not_supported;
  t.cache->fail_erase = true;
  CHECK_THROWS_AS(t->revoke(kAccount, id, alice()), apikeys::Error);
  const auto events = t.events();
  REQUIRE(events.size() == 1);
  CHECK(events[0].action == AuditAction::revoke);
}

TEST_CASE("audit: a throwing observer changes nothing, and the others still hear",
          "[key_manager][audit]") {
  auto thrower = std::make_shared<Thrower>();
  // The thrower first, so the recorder is called after it failed.
  Observed t({thrower}, /*recorder_first=*/false);
  const CreatedKey created = t->create(kAccount, CreateRequest("k"), alice());
  CHECK(thrower->calls == 1);
  CHECK(t->observer_failures() == 1);
  const KeyInfo revoked = t->revoke(kAccount, created.info.key_id, alice());
  CHECK(revoked.status == KeyStatus::revoked);
  CHECK(t->get(kAccount, created.info.key_id).status == KeyStatus::revoked);
  CHECK(t->observer_failures() == 2);
  const auto events = t.events();
  REQUIRE(events.size() == 2);
  CHECK(events[0].action == AuditAction::create);
  CHECK(events[1].action == AuditAction::revoke);
  const auto errors = t.recorder->errors();
  REQUIRE(errors.size() == 2);
  for (const auto& e : errors) CHECK(e.first == apikeys::Component::observer);
  CHECK(t->validate(created.info.public_key, created.secret_key.reveal()).code ==
        apikeys::ValidationCode::revoked);
}

TEST_CASE("audit: a bad context is refused before anything is written", "[key_manager][audit]") {
  Observed t;
  const Uuid id = t->create(kAccount, CreateRequest("k")).info.key_id;
  t.recorder->clear();

  struct Case {
    const char* name;
    ChangeContext context;
    const char* field;
    std::string value;  // must not appear in the message
  };
  std::vector<Case> cases;
  const auto with = [](auto set) {
    ChangeContext c = alice();
    set(c);
    return c;
  };
  cases.push_back({"control character in the id",
                   with([](ChangeContext& c) { c.actor.id = "mallory\nforged line"; }), "actor id",
                   "forged line"});
  cases.push_back({"DEL in the reason",
                   with([](ChangeContext& c) { c.reason = "because\x7fhidden"; }), "reason",
                   "hidden"});
  cases.push_back({"C1 control in the detail",
                   with([](ChangeContext& c) { c.actor.detail = "x\xc2\x9bsecretish"; }),
                   "actor detail", "secretish"});
  cases.push_back({"a right-to-left override in the id",
                   with([](ChangeContext& c) { c.actor.id = "\xE2\x80\xAEnimda"; }), "actor id",
                   "nimda"});
  cases.push_back({"a zero-width space in the detail",
                   with([](ChangeContext& c) { c.actor.detail = "ad\xE2\x80\x8Bmin"; }),
                   "actor detail", "min"});
  cases.push_back({"a line separator in the reason", with([](ChangeContext& c) {
                     c.reason =
                         "ok\xE2\x80\xA8"
                         "forged line";
                   }),
                   "reason", "forged line"});
  cases.push_back({"a paragraph separator in the id", with([](ChangeContext& c) {
                     c.actor.id =
                         "ok\xE2\x80\xA9"
                         "forged";
                   }),
                   "actor id", "forged"});
  cases.push_back({"bad UTF-8 in the id",
                   with([](ChangeContext& c) { c.actor.id = "bob\xff\xfeoops"; }), "actor id",
                   "oops"});
  cases.push_back({"an overlong id",
                   with([](ChangeContext& c) { c.actor.id = std::string(257, 'i'); }), "actor id",
                   std::string(64, 'i')});
  cases.push_back({"an overlong detail",
                   with([](ChangeContext& c) { c.actor.detail = std::string(1025, 'd'); }),
                   "actor detail", std::string(64, 'd')});
  cases.push_back({"an overlong reason",
                   with([](ChangeContext& c) { c.reason = std::string(1025, 'r'); }), "reason",
                   std::string(64, 'r')});
  cases.push_back({"an unknown actor type",
                   with([](ChangeContext& c) { c.actor.type = static_cast<ActorType>(7); }),
                   "actor type", "\x07"});

  for (const Case& c : cases) {
    INFO(c.name);
    const auto refused = [&](auto call) {
      try {
        call();
        FAIL("not refused");
      } catch (const apikeys::Error& e) {
        CHECK(e.code() == ErrorCode::invalid_argument);
        const std::string message = e.what();
        CHECK(message.find(c.field) != std::string::npos);
        CHECK(message.find(c.value) == std::string::npos);
      }
    };
    refused([&] { (void)t->create(kAccount, CreateRequest("new"), c.context); });
    refused([&] { t->revoke(kAccount, id, c.context); });
    refused([&] { t->disable(kAccount, id, c.context); });
    refused([&] { t->remove(kAccount, id, c.context); });
    refused([&] { (void)t->rotate(kAccount, id, {}, c.context); });
    refused([&] { t->revoke_all(kAccount, c.context); });
    refused([&] { t->set_credits(kAccount, id, 1, c.context); });
    refused([&] { t->add_credits(kAccount, id, 1, c.context); });
    apikeys::KeyUpdate u;
    u.title = "changed";
    refused([&] { t->update(kAccount, id, u, c.context); });
    refused([&] {
      std::istringstream in("");
      t->import_keys(in, {}, c.context);
    });
  }
  // Nothing was written: the one key is as it was, and nothing was reported.
  const std::vector<KeyInfo> keys = t->list(kAccount);
  REQUIRE(keys.size() == 1);
  CHECK(keys[0].status == KeyStatus::active);
  CHECK(keys[0].version == 1);
  CHECK(keys[0].title == "k");
  CHECK(t.events().empty());

  // At the limits, and with any script's letters, it is taken.
  ChangeContext longest;
  longest.actor.type = ActorType::service;
  longest.actor.id = std::string(Actor::kMaxActorIdLength, 'i');
  longest.actor.detail = std::string(Actor::kMaxActorDetailLength, 'd');
  longest.reason = "Ротация ключей 🔑 " + std::string(900, 'r');
  CHECK(longest.reason.size() <= ChangeContext::kMaxReasonLength);
  t->disable(kAccount, id, longest);
  const auto events = t.events();
  REQUIRE(events.size() == 1);
  CHECK(events[0].context.actor.id == longest.actor.id);
  CHECK(events[0].context.reason == longest.reason);
}

TEST_CASE("audit: without observers, every call works as before", "[key_manager][audit]") {
  auto t = apikeys_test::make_manager();
  const CreatedKey created = t->create(kAccount, request_with_credits(3), alice());
  t->set_credits(kAccount, created.info.key_id, 4, alice());
  t->disable(kAccount, created.info.key_id, alice());
  t->revoke(kAccount, created.info.key_id, alice());
  CHECK(t->observer_failures() == 0);
  ChangeContext bad;
  bad.reason = "line one\nline two";
  CHECK_THROWS_AS(t->remove(kAccount, created.info.key_id, bad), apikeys::Error);
  CHECK(t->get(kAccount, created.info.key_id).status == KeyStatus::revoked);
}
