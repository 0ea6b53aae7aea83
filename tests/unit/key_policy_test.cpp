// Tests of the key policy calls of apikeys/key_manager.hpp over a MemoryStore, a
// MemoryCache and a ManualClock: create with metadata and scopes, the rules of both
// (refused with invalid_argument, never echoing the value), update's leave / set /
// clear, versions and conflicts, disable and enable, rotate, revoke_all, pages and
// their cursors, and get. Every change must show in the very next validation, however
// warm the cache.
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "apikeys/error.hpp"
#include "apikeys/hasher.hpp"
#include "apikeys/key_manager.hpp"
#include "apikeys/memory_cache.hpp"
#include "apikeys/memory_store.hpp"
#include "apikeys/types.hpp"
#include "catch.hpp"
#include "store_contract.hpp"
#include "store_doubles.hpp"
#include "test_support.hpp"

using apikeys::CreatedKey;
using apikeys::CreateRequest;
using apikeys::ErrorCode;
using apikeys::FieldUpdate;
using apikeys::KeyInfo;
using apikeys::KeyPage;
using apikeys::KeyStatus;
using apikeys::KeyUpdate;
using apikeys::ListOptions;
using apikeys::Requirements;
using apikeys::RotateRequest;
using apikeys::TimePoint;
using apikeys::Uuid;
using apikeys::ValidationCode;
using apikeys::ValidationResult;
using apikeys_test::account_id;
using apikeys_test::make_manager;
using apikeys_test::TestManager;
using apikeys_test::contract::check_same_key;
using std::chrono::hours;
using std::chrono::milliseconds;
using std::chrono::seconds;

namespace {

constexpr hours kDay{24};

// A string that looks like a secret: what users paste where it does not belong. Every
// refused value below carries it, and no error message may.
const std::string kMarker = "sk_zq8xht3plw9vbn2mkc7ryf4dgj6sha1e";

CreateRequest policy_request(std::string metadata = {}, std::vector<std::string> scopes = {},
                             std::optional<int> days = std::nullopt) {
  return CreateRequest("policy key", "with a policy", days, std::move(metadata), std::move(scopes));
}

std::string token(const CreatedKey& k) {
  return k.info.public_key + ":" + std::string(k.secret_key.reveal());
}

// The Error `f` throws: its code and message. code is nullopt when it throws none.
struct Thrown {
  std::optional<ErrorCode> code;
  std::string message;
};
template <typename F>
Thrown thrown_by(F&& f) {
  try {
    f();
  } catch (const apikeys::Error& e) {
    return {e.code(), e.what()};
  }
  return {};
}

bool contains(std::string_view hay, std::string_view needle) {
  return hay.find(needle) != std::string_view::npos;
}

// {"a":{"a":...1...}}: `depth` objects, the top one included.
std::string nested_objects(std::size_t depth) {
  std::string s = "\"" + kMarker + "\"";
  for (std::size_t i = 0; i < depth; ++i) s = "{\"a\":" + s + "}";
  return s;
}

// {"a":[[...1...]]}: the top object and `arrays` arrays inside it.
std::string nested_arrays(std::size_t arrays) {
  return "{\"a\":" + std::string(arrays, '[') + "\"" + kMarker + "\"" + std::string(arrays, ']') +
         "}";
}

// A JSON object of exactly `bytes` bytes: {"k":"<marker>xxx..."}.
std::string metadata_of_size(std::size_t bytes) {
  std::string s = "{\"k\":\"" + kMarker;
  s.append(bytes - s.size() - 2, 'x');
  s += "\"}";
  return s;
}

// `n` distinct valid scopes.
std::vector<std::string> many_scopes(std::size_t n) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < n; ++i) out.push_back("scope" + std::to_string(i) + ".read");
  return out;
}

// Each key of a page walk, in walk order.
std::vector<Uuid> walk(TestManager& t, const Uuid& account, std::size_t limit,
                       std::optional<KeyStatus> status = std::nullopt,
                       std::size_t* pages = nullptr) {
  std::vector<Uuid> out;
  ListOptions options;
  options.limit = limit;
  options.status = status;
  for (std::size_t n = 0;; ++n) {
    const KeyPage page = t->list(account, options);
    for (const KeyInfo& k : page.keys) out.push_back(k.key_id);
    if (!page.next_cursor) {
      if (pages != nullptr) *pages = n + 1;
      return out;
    }
    options.cursor = *page.next_cursor;
  }
}

// True when `keys` is in page order: created_at descending, then key id descending.
bool in_page_order(const std::vector<KeyInfo>& keys) {
  for (std::size_t i = 1; i < keys.size(); ++i) {
    const KeyInfo& a = keys[i - 1];
    const KeyInfo& b = keys[i];
    if (a.created_at < b.created_at) return false;
    if (a.created_at == b.created_at && !(b.key_id < a.key_id)) return false;
  }
  return true;
}

// Validates `k` until its verdict is in the cache (the second answer is a cache hit),
// and returns that answer.
ValidationResult warm(TestManager& t, const CreatedKey& k, const Requirements& required = {}) {
  (void)t->validate(token(k), required);
  const ValidationResult r = t->validate(token(k), required);
  CHECK(t.cache->size() > 0);
  return r;
}

}  // namespace

TEST_CASE("KeyManager::create keeps metadata as given and scopes normalised",
          "[key_manager][key_policy]") {
  TestManager t = make_manager();
  const Uuid alice = account_id(1);
  const std::string metadata = "  {\"team\": \"billing\",  \"n\": [1, 2.5e3, {\"x\": null}]}\n";
  const CreatedKey k = t->create(
      alice, policy_request(metadata, {"reports.**", "invoices.read", "invoices.read", "**"}));

  CHECK(k.info.metadata == metadata);  // byte-exact, white space included
  CHECK(k.info.scopes == std::vector<std::string>{"**", "invoices.read", "reports.**"});
  CHECK(k.info.version == 1);
  CHECK(k.info.updated_at == k.info.created_at);
  CHECK(k.info.updated_at == t.clock->now());
  CHECK_FALSE(k.info.rotated_from);
  CHECK_FALSE(k.info.rotated_to);
  check_same_key(t->get(alice, k.info.key_id), k.info);
  check_same_key(t->list(alice).at(0), k.info);

  const ValidationResult r = t->validate(token(k));
  REQUIRE(r.ok());
  CHECK(r.scopes == k.info.scopes);
  CHECK(r.metadata == metadata);

  SECTION("none of either is none") {
    const CreatedKey plain = t->create(alice, policy_request());
    CHECK(plain.info.metadata.empty());
    CHECK(plain.info.scopes.empty());
    CHECK(t->get(alice, plain.info.key_id).metadata.empty());
    const ValidationResult p = t->validate(token(plain));
    CHECK(p.ok());
    CHECK(p.scopes.empty());
  }

  SECTION("normalize_request sorts and deduplicates scopes too") {
    const CreateRequest n = apikeys::normalize_request(policy_request("{}", {"b", "a:b", "b"}));
    CHECK(n.scopes == std::vector<std::string>{"a:b", "b"});
    CHECK(n.metadata == "{}");
  }
}

TEST_CASE("KeyManager refuses metadata that breaks a rule, naming the rule only",
          "[key_manager][key_policy]") {
  TestManager t = make_manager();
  const Uuid alice = account_id(1);
  const std::string m = "\"" + kMarker + "\"";  // a JSON string holding the marker
  const std::vector<std::pair<std::string, std::string>> bad{
      {"4096 + 1 bytes", metadata_of_size(4097)},
      {"depth 9 (objects)", nested_objects(9)},
      {"depth 9 (arrays)", nested_arrays(8)},
      {"invalid UTF-8 (bare continuation)", "{\"k\":\"" + kMarker + "\x80\"}"},
      {"invalid UTF-8 (truncated)", "{\"k\":\"" + kMarker + "\xE2\x82\"}"},
      {"invalid UTF-8 (overlong)", "{\"k\":\"" + kMarker + "\xC0\xAF\"}"},
      {"invalid UTF-8 (surrogate)", "{\"k\":\"" + kMarker + "\xED\xA0\x80\"}"},
      {"invalid UTF-8 (0xFF)", "{\"" + kMarker + "\":\"\xFF\"}"},
      {"top-level array", "[" + m + "]"},
      {"top-level string", m},
      {"top-level number", "42"},
      {"top-level null", "null"},
      {"white space only", "  \n"},
      {"duplicate member", "{\"" + kMarker + "\":1,\"" + kMarker + "\":2}"},
      {"duplicate nested member", "{\"o\":{\"k\":" + m + ",\"k\":2}}"},
      {"duplicate after escapes", "{\"a\":" + m + ",\"\\u0061\":2}"},
      {"trailing comma", "{\"k\":" + m + ",}"},
      {"comment", "{\"k\":" + m + "/* c */}"},
      {"text after the object", "{\"k\":1} " + m},
      {"single quotes", "{'k':" + m + "}"},
      {"bare name", "{k:" + m + "}"},
      {"unterminated", "{\"k\":" + m},
      {"NaN", "{\"k\":NaN," + m + ":1}"},
      {"control character in a string", "{\"k\":\"" + kMarker + "\x01\"}"},
  };
  for (const auto& [rule, metadata] : bad) {
    CAPTURE(rule);
    const Thrown create = thrown_by([&] { (void)t->create(alice, policy_request(metadata)); });
    CHECK(create.code == ErrorCode::invalid_argument);
    CHECK(contains(create.message, "metadata"));
    CHECK_FALSE(contains(create.message, kMarker));
    CHECK_FALSE(contains(create.message, metadata));
  }
  CHECK(t.store->size() == 0);

  // The same rules on update, which writes nothing either.
  const CreatedKey k = t->create(alice, policy_request("{\"ok\":true}"));
  for (const auto& [rule, metadata] : bad) {
    CAPTURE(rule);
    KeyUpdate u;
    u.metadata = metadata;
    const Thrown update = thrown_by([&] { (void)t->update(alice, k.info.key_id, u); });
    CHECK(update.code == ErrorCode::invalid_argument);
    CHECK_FALSE(contains(update.message, kMarker));
  }
  check_same_key(t->get(alice, k.info.key_id), k.info);

  SECTION("the limits themselves are accepted") {
    const std::vector<std::string> good{
        metadata_of_size(4096),
        nested_objects(8),
        nested_arrays(7),
        "{}",
        " { } ",
        "{\"a\":1,\"b\":{\"a\":1},\"c\":[{\"k\":1},{\"k\":2}]}",  // same names, other objects
        "{\"k\":\"\xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x94\x91 \\u00e9\"}",
        "{\"n\":-1.5e-3,\"t\":true,\"f\":false,\"z\":null,\"s\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"}",
    };
    for (const std::string& metadata : good) {
      CAPTURE(metadata.size());
      const CreatedKey ok = t->create(alice, policy_request(metadata));
      CHECK(t->get(alice, ok.info.key_id).metadata == metadata);
    }
  }
}

TEST_CASE("KeyManager refuses scopes that break the grammar, naming the rule only",
          "[key_manager][key_policy]") {
  TestManager t = make_manager();
  const Uuid alice = account_id(1);
  const std::string seg64(64, 'a');
  const std::vector<std::pair<std::string, std::vector<std::string>>> bad{
      {"empty", {""}},
      {"upper case", {kMarker + ".Read"}},
      {"empty segment", {kMarker + "..read"}},
      {"leading separator", {"." + kMarker}},
      {"trailing separator", {kMarker + "."}},
      {"trailing colon", {kMarker + ":"}},
      {"two separators", {kMarker + ".:read"}},
      {"space", {kMarker + " read"}},
      {"slash", {kMarker + "/read"}},
      {"tab", {kMarker + "\tread"}},
      {"NUL", {kMarker + std::string(1, '\0') + "read"}},
      {"non-ASCII", {kMarker + ".\xC3\xA9"}},
      {"segment of 65", {kMarker + "." + std::string(65, 'a')}},
      {"129 characters", {seg64 + "." + seg64}},
      {"129 characters with the marker", {kMarker + std::string(129 - kMarker.size(), 'x')}},
      {"wildcard inside a segment", {kMarker + ".*b"}},
      {"wildcard suffix", {kMarker + "*"}},
      {"wildcard not last", {"*." + kMarker}},
      {"double wildcard not last", {"**." + kMarker}},
      {"wildcard in the middle", {kMarker + ".**.read"}},
      {"two wildcards", {kMarker + ".*.*"}},
      {"triple star", {kMarker + ".***"}},
      {"triple star alone", {"***"}},
      {"one bad among good", {"invoices.read", kMarker + ".Bad", "reports.write"}},
  };
  for (const auto& [rule, scopes] : bad) {
    CAPTURE(rule);
    const Thrown create = thrown_by([&] { (void)t->create(alice, policy_request({}, scopes)); });
    CHECK(create.code == ErrorCode::invalid_argument);
    CHECK(contains(create.message, "scope"));
    CHECK_FALSE(contains(create.message, kMarker));
  }
  CHECK(t.store->size() == 0);

  SECTION("65 scopes are refused; 64, or 65 with a duplicate, are accepted") {
    std::vector<std::string> scopes = many_scopes(65);
    scopes.back() = kMarker;
    const Thrown many = thrown_by([&] { (void)t->create(alice, policy_request({}, scopes)); });
    CHECK(many.code == ErrorCode::invalid_argument);
    CHECK_FALSE(contains(many.message, kMarker));
    CHECK(t->create(alice, policy_request({}, many_scopes(64))).info.scopes.size() == 64);
    std::vector<std::string> with_duplicate = many_scopes(64);
    with_duplicate.push_back(with_duplicate.front());
    CHECK(t->create(alice, policy_request({}, with_duplicate)).info.scopes.size() == 64);
  }

  SECTION("128 characters, 64-character segments and whole wildcards are accepted") {
    const std::vector<std::string> good{seg64 + "." + std::string(63, 'b'),
                                        seg64,
                                        "a-b_c.d:e",
                                        "invoices.*",
                                        "invoices.**",
                                        "a:b.**",
                                        "*",
                                        "**",
                                        "0.9"};
    const CreatedKey k = t->create(alice, policy_request({}, good));
    CHECK(k.info.scopes.size() == good.size());
    CHECK(std::is_sorted(k.info.scopes.begin(), k.info.scopes.end()));
  }

  SECTION("the same rules on update, which writes nothing") {
    const CreatedKey k = t->create(alice, policy_request({}, {"a.b"}));
    for (const auto& [rule, scopes] : bad) {
      CAPTURE(rule);
      KeyUpdate u;
      u.scopes = scopes;
      const Thrown update = thrown_by([&] { (void)t->update(alice, k.info.key_id, u); });
      CHECK(update.code == ErrorCode::invalid_argument);
      CHECK_FALSE(contains(update.message, kMarker));
    }
    KeyUpdate too_many;
    too_many.scopes = many_scopes(65);
    CHECK(thrown_by([&] { (void)t->update(alice, k.info.key_id, too_many); }).code ==
          ErrorCode::invalid_argument);
    check_same_key(t->get(alice, k.info.key_id), k.info);
  }
}

TEST_CASE("KeyManager::update leaves, sets or clears each field", "[key_manager][key_policy]") {
  TestManager t = make_manager();
  const Uuid alice = account_id(1);
  const CreatedKey k = t->create(
      alice, CreateRequest("Original", "first description", 30, "{\"a\":1}", {"x.read", "y"}));
  const CreatedKey other = t->create(alice, policy_request("{\"other\":1}", {"other"}));
  t.clock->advance(milliseconds(5000));
  const TimePoint now = t.clock->now();

  // The key as it should be after one change: `change` applied, version + 1, updated now.
  const auto expect = [&](auto change) {
    KeyInfo want = k.info;
    change(want);
    want.version = k.info.version + 1;
    want.updated_at = now;
    return want;
  };
  const auto applied = [&](const KeyUpdate& u, const KeyInfo& want) {
    const KeyInfo returned = t->update(alice, k.info.key_id, u);
    check_same_key(returned, want);
    check_same_key(t->get(alice, k.info.key_id), want);
    check_same_key(t->get(alice, other.info.key_id), other.info);  // the other key: untouched
  };

  SECTION("leaving every field changes nothing, not even the version") {
    const KeyInfo same = t->update(alice, k.info.key_id, KeyUpdate{});
    check_same_key(same, k.info);
    check_same_key(t->get(alice, k.info.key_id), k.info);
  }
  SECTION("title: set (trimmed); clearing is refused") {
    KeyUpdate u;
    u.title = "  Renamed \xE2\x9C\x93 ";
    applied(u, expect([](KeyInfo& w) { w.title = "Renamed \xE2\x9C\x93"; }));
  }
  SECTION("title: clearing is refused, and so is a blank one; nothing is written") {
    KeyUpdate clear;
    clear.title = FieldUpdate<std::string>::clear();
    clear.description = "would change";
    const Thrown refused = thrown_by([&] { (void)t->update(alice, k.info.key_id, clear); });
    CHECK(refused.code == ErrorCode::invalid_argument);
    CHECK(contains(refused.message, "title"));
    KeyUpdate blank;
    blank.title = "   ";
    CHECK(thrown_by([&] { (void)t->update(alice, k.info.key_id, blank); }).code ==
          ErrorCode::invalid_argument);
    KeyUpdate control;
    control.title = kMarker + "\x07";
    const Thrown bad = thrown_by([&] { (void)t->update(alice, k.info.key_id, control); });
    CHECK(bad.code == ErrorCode::invalid_argument);
    CHECK_FALSE(contains(bad.message, kMarker));
    check_same_key(t->get(alice, k.info.key_id), k.info);
  }
  SECTION("description: set and clear") {
    KeyUpdate set;
    set.description = "second description";
    applied(set, expect([](KeyInfo& w) { w.description = "second description"; }));
    KeyUpdate clear;
    clear.description = FieldUpdate<std::string>::clear();
    const KeyInfo cleared = t->update(alice, k.info.key_id, clear);
    CHECK(cleared.description.empty());
    CHECK(cleared.version == k.info.version + 2);
    CHECK(cleared.title == k.info.title);
  }
  SECTION("metadata: set and clear") {
    KeyUpdate set;
    set.metadata = "{\"b\": [2]}";
    applied(set, expect([](KeyInfo& w) { w.metadata = "{\"b\": [2]}"; }));
    KeyUpdate clear;
    clear.metadata = FieldUpdate<std::string>::clear();
    const KeyInfo cleared = t->update(alice, k.info.key_id, clear);
    CHECK(cleared.metadata.empty());
    CHECK(cleared.scopes == k.info.scopes);
    CHECK(t->validate(token(k)).metadata.empty());
  }
  SECTION("scopes: set (normalised) and clear") {
    KeyUpdate set;
    set.scopes = std::vector<std::string>{"z", "a.*", "z"};
    applied(set, expect([](KeyInfo& w) { w.scopes = {"a.*", "z"}; }));
    KeyUpdate clear;
    clear.scopes = FieldUpdate<std::vector<std::string>>::clear();
    const KeyInfo cleared = t->update(alice, k.info.key_id, clear);
    CHECK(cleared.scopes.empty());
    CHECK(cleared.metadata == k.info.metadata);
  }
  SECTION("expiry: set from now, clear, and the day bounds") {
    KeyUpdate set;
    set.expires_in_days = 10;
    applied(set, expect([&](KeyInfo& w) { w.expires_at = now + 10 * kDay; }));
    KeyUpdate clear;
    clear.expires_in_days = FieldUpdate<int>::clear();
    const KeyInfo cleared = t->update(alice, k.info.key_id, clear);
    CHECK_FALSE(cleared.expires_at);
    CHECK(cleared.version == k.info.version + 2);
    for (const int days : {0, -1, 366}) {
      KeyUpdate bad;
      bad.expires_in_days = days;
      CHECK(thrown_by([&] { (void)t->update(alice, k.info.key_id, bad); }).code ==
            ErrorCode::invalid_argument);
    }
    check_same_key(t->get(alice, k.info.key_id), cleared);
  }
  SECTION("several fields in one update, one version") {
    KeyUpdate u;
    u.title = "All";
    u.description = FieldUpdate<std::string>::clear();
    u.metadata = "{}";
    u.scopes = std::vector<std::string>{"**"};
    u.expires_in_days = FieldUpdate<int>::clear();
    applied(u, expect([](KeyInfo& w) {
              w.title = "All";
              w.description.clear();
              w.metadata = "{}";
              w.scopes = {"**"};
              w.expires_at.reset();
            }));
  }
  SECTION("another account's key, or no such key, is not_found") {
    KeyUpdate u;
    u.title = "Stolen";
    CHECK(thrown_by([&] { (void)t->update(account_id(2), k.info.key_id, u); }).code ==
          ErrorCode::not_found);
    CHECK(thrown_by([&] { (void)t->update(alice, Uuid::random(), u); }).code ==
          ErrorCode::not_found);
    check_same_key(t->get(alice, k.info.key_id), k.info);
  }
}

TEST_CASE("KeyManager::update with expected_version: a stale one is a conflict",
          "[key_manager][key_policy]") {
  TestManager t = make_manager();
  const Uuid alice = account_id(1);
  const CreatedKey k = t->create(alice, policy_request("{\"v\":1}", {"a"}));
  REQUIRE(k.info.version == 1);

  KeyUpdate first;
  first.title = "First writer";
  first.expected_version = 1;
  const KeyInfo v2 = t->update(alice, k.info.key_id, first);
  CHECK(v2.version == 2);
  CHECK(v2.title == "First writer");

  // A second writer that read version 1 too: refused, and nothing it asked is written.
  KeyUpdate second;
  second.title = "Second writer";
  second.metadata = FieldUpdate<std::string>::clear();
  second.scopes = std::vector<std::string>{"**"};
  second.expected_version = 1;
  const Thrown stale = thrown_by([&] { (void)t->update(alice, k.info.key_id, second); });
  CHECK(stale.code == ErrorCode::conflict);
  check_same_key(t->get(alice, k.info.key_id), v2);
  CHECK(t->validate(token(k)).scopes == std::vector<std::string>{"a"});

  second.expected_version = 3;  // a version from the future: the same
  CHECK(thrown_by([&] { (void)t->update(alice, k.info.key_id, second); }).code ==
        ErrorCode::conflict);
  check_same_key(t->get(alice, k.info.key_id), v2);

  // Even an update that would change nothing checks the version.
  KeyUpdate nothing;
  nothing.expected_version = 1;
  CHECK(thrown_by([&] { (void)t->update(alice, k.info.key_id, nothing); }).code ==
        ErrorCode::conflict);

  second.expected_version = 2;
  const KeyInfo v3 = t->update(alice, k.info.key_id, second);
  CHECK(v3.version == 3);
  CHECK(v3.title == "Second writer");
  CHECK(v3.metadata.empty());

  // Disable, enable and revoke count as changes too.
  CHECK(t->disable(alice, k.info.key_id).version == 4);
  first.expected_version = 3;
  CHECK(thrown_by([&] { (void)t->update(alice, k.info.key_id, first); }).code ==
        ErrorCode::conflict);
}

TEST_CASE("KeyManager::disable and enable, revocation is final", "[key_manager][key_policy]") {
  TestManager t = make_manager();
  const Uuid alice = account_id(1);
  const CreatedKey k = t->create(alice, policy_request());
  const CreatedKey other = t->create(alice, policy_request());
  CHECK(warm(t, k).ok());

  const KeyInfo disabled = t->disable(alice, k.info.key_id);
  CHECK(disabled.status == KeyStatus::disabled);
  CHECK(disabled.version == 2);
  CHECK(t->validate(token(k)).code == ValidationCode::disabled);  // at once
  CHECK(t->validate(token(other)).ok());
  // Disabling a disabled key: no change.
  const KeyInfo again = t->disable(alice, k.info.key_id);
  check_same_key(again, disabled);

  CHECK(warm(t, k).code == ValidationCode::disabled);  // a cached `disabled`
  const KeyInfo enabled = t->enable(alice, k.info.key_id);
  CHECK(enabled.status == KeyStatus::active);
  CHECK(enabled.version == 3);
  CHECK(t->validate(token(k)).ok());                         // at once
  check_same_key(t->enable(alice, k.info.key_id), enabled);  // enabling an active key

  // Another account cannot switch it either way.
  CHECK(thrown_by([&] { (void)t->disable(account_id(2), k.info.key_id); }).code ==
        ErrorCode::not_found);
  CHECK(thrown_by([&] { (void)t->enable(account_id(2), k.info.key_id); }).code ==
        ErrorCode::not_found);
  CHECK(t->validate(token(k)).ok());

  // Revoked: final. Neither call brings it back, and neither writes anything.
  (void)t->disable(alice, k.info.key_id);
  const KeyInfo revoked = t->revoke(alice, k.info.key_id);
  CHECK(revoked.status == KeyStatus::revoked);
  CHECK(thrown_by([&] { (void)t->enable(alice, k.info.key_id); }).code == ErrorCode::conflict);
  CHECK(thrown_by([&] { (void)t->disable(alice, k.info.key_id); }).code == ErrorCode::conflict);
  check_same_key(t->get(alice, k.info.key_id), revoked);
  CHECK(t->validate(token(k)).code == ValidationCode::revoked);
}

TEST_CASE("KeyManager::rotate copies the key and ends the old one after the grace",
          "[key_manager][key_policy]") {
  TestManager t = make_manager();
  const Uuid alice = account_id(1);
  const TimePoint t0 = t.clock->now();

  SECTION("fields copied, the same absolute expiry, old expiry now + grace, links set") {
    const CreatedKey old_key =
        t->create(alice, CreateRequest("Rotating", "desc", 30, "{\"m\":[1]}", {"a.*", "b:c"}));
    t.clock->advance(kDay);
    const TimePoint t1 = t.clock->now();
    CHECK(warm(t, old_key).expires_at == t0 + 30 * kDay);
    RotateRequest request;
    request.grace = hours(1);
    const CreatedKey next = t->rotate(alice, old_key.info.key_id, request);

    CHECK(next.info.account_id == alice);
    CHECK(next.info.key_id != old_key.info.key_id);
    CHECK(next.info.public_key != old_key.info.public_key);
    CHECK(next.info.title == "Rotating");
    CHECK(next.info.description == "desc");
    CHECK(next.info.metadata == "{\"m\":[1]}");
    CHECK(next.info.scopes == old_key.info.scopes);
    CHECK(next.info.expires_at == old_key.info.expires_at);  // t0 + 30 days, not t1 + 30
    CHECK(next.info.expires_at == t0 + 30 * kDay);
    CHECK(next.info.created_at == t1);
    CHECK(next.info.updated_at == t1);
    CHECK(next.info.status == KeyStatus::active);
    CHECK(next.info.version == 1);
    CHECK(next.info.rotated_from == old_key.info.key_id);
    CHECK_FALSE(next.info.rotated_to);
    check_same_key(t->get(alice, next.info.key_id), next.info);

    const KeyInfo old_now = t->get(alice, old_key.info.key_id);
    CHECK(old_now.expires_at == t1 + hours(1));
    CHECK(old_now.rotated_to == next.info.key_id);
    CHECK_FALSE(old_now.rotated_from);
    CHECK(old_now.version == 2);
    CHECK(old_now.updated_at == t1);
    CHECK(old_now.status == KeyStatus::active);
    CHECK(old_now.title == "Rotating");

    // Both work during the grace, the old one with its new expiry, at once.
    const ValidationResult during = t->validate(token(old_key));
    CHECK(during.ok());
    CHECK(during.expires_at == t1 + hours(1));
    CHECK(t->validate(token(next)).ok());
    CHECK(t->validate(token(next)).scopes == old_key.info.scopes);
    t.clock->advance(hours(1) - milliseconds(1));
    CHECK(t->validate(token(old_key)).ok());
    t.clock->advance(milliseconds(1));
    CHECK(t->validate(token(old_key)).code == ValidationCode::expired);
    CHECK(t->validate(token(next)).ok());
    // The successor ends when the old key would have.
    t.clock->set(t0 + 30 * kDay);
    CHECK(t->validate(token(next)).code == ValidationCode::expired);
    CHECK(t.store->size() == 2);
  }

  SECTION("the old key's own expiry stays when it is sooner than now + grace") {
    const CreatedKey old_key = t->create(alice, policy_request({}, {}, 1));
    t.clock->advance(hours(23));
    RotateRequest request;
    request.grace = hours(24 * 7);
    const CreatedKey next = t->rotate(alice, old_key.info.key_id, request);
    CHECK(t->get(alice, old_key.info.key_id).expires_at == t0 + kDay);
    CHECK(next.info.expires_at == t0 + kDay);
  }

  SECTION("a key without expiry: the old one gets now + grace, the successor none") {
    const CreatedKey old_key = t->create(alice, policy_request());
    t.clock->advance(hours(5));
    RotateRequest request;
    request.grace = seconds(90);
    const CreatedKey next = t->rotate(alice, old_key.info.key_id, request);
    CHECK(t->get(alice, old_key.info.key_id).expires_at == t0 + hours(5) + seconds(90));
    CHECK_FALSE(next.info.expires_at);
  }

  SECTION("grace 0 ends the old key at once, however warm the cache") {
    const CreatedKey old_key = t->create(alice, policy_request("{}", {"x"}, 30));
    CHECK(warm(t, old_key).ok());
    const CreatedKey next = t->rotate(alice, old_key.info.key_id, RotateRequest{});
    CHECK(t->get(alice, old_key.info.key_id).expires_at == t.clock->now());
    CHECK(t->validate(token(old_key)).code == ValidationCode::expired);
    CHECK(t->validate(token(next)).ok());
  }

  SECTION("grace bounds: 0 s to 7 days") {
    const CreatedKey a = t->create(alice, policy_request());
    RotateRequest too_long;
    too_long.grace = hours(24 * 7) + seconds(1);
    CHECK(thrown_by([&] { (void)t->rotate(alice, a.info.key_id, too_long); }).code ==
          ErrorCode::invalid_argument);
    RotateRequest negative;
    negative.grace = seconds(-1);
    CHECK(thrown_by([&] { (void)t->rotate(alice, a.info.key_id, negative); }).code ==
          ErrorCode::invalid_argument);
    CHECK(t.store->size() == 1);
    check_same_key(t->get(alice, a.info.key_id), a.info);
    RotateRequest longest;
    longest.grace = apikeys::KeyManager::kMaxRotationGrace;
    (void)t->rotate(alice, a.info.key_id, longest);
    CHECK(t->get(alice, a.info.key_id).expires_at == t.clock->now() + hours(24 * 7));
  }

  SECTION("another account's key is not_found, and nothing is created") {
    const CreatedKey a = t->create(alice, policy_request());
    CHECK(thrown_by([&] { (void)t->rotate(account_id(2), a.info.key_id, RotateRequest{}); }).code ==
          ErrorCode::not_found);
    CHECK(thrown_by([&] { (void)t->rotate(alice, Uuid::random(), RotateRequest{}); }).code ==
          ErrorCode::not_found);
    CHECK(t.store->size() == 1);
    check_same_key(t->get(alice, a.info.key_id), a.info);
  }
}

TEST_CASE("KeyManager::rotate refuses revoked, disabled, expired and rotated keys",
          "[key_manager][key_policy]") {
  TestManager t = make_manager();
  const Uuid alice = account_id(1);
  const CreatedKey revoked = t->create(alice, policy_request());
  const CreatedKey disabled = t->create(alice, policy_request());
  const CreatedKey expiring = t->create(alice, policy_request({}, {}, 1));
  const CreatedKey rotated = t->create(alice, policy_request());
  (void)t->revoke(alice, revoked.info.key_id);
  (void)t->disable(alice, disabled.info.key_id);
  RotateRequest grace;
  grace.grace = hours(48);
  const CreatedKey successor = t->rotate(alice, rotated.info.key_id, grace);
  t.clock->advance(kDay);  // `expiring` expires now

  for (const CreatedKey* k : {&revoked, &disabled, &expiring, &rotated}) {
    const KeyInfo before = t->get(alice, k->info.key_id);
    const std::size_t stored = t.store->size();
    const Thrown refused = thrown_by([&] { (void)t->rotate(alice, k->info.key_id, grace); });
    CHECK(refused.code == ErrorCode::conflict);
    CHECK(t.store->size() == stored);
    check_same_key(t->get(alice, k->info.key_id), before);
  }
  // The successor of a rotated key rotates.
  const CreatedKey third = t->rotate(alice, successor.info.key_id, RotateRequest{});
  CHECK(third.info.rotated_from == successor.info.key_id);
  // An enabled key rotates again.
  (void)t->enable(alice, disabled.info.key_id);
  CHECK(t->rotate(alice, disabled.info.key_id, RotateRequest{}).info.rotated_from ==
        disabled.info.key_id);
}

TEST_CASE("KeyManager::revoke_all revokes every key of that account only",
          "[key_manager][key_policy]") {
  TestManager t = make_manager();
  const Uuid alice = account_id(1);
  const Uuid bob = account_id(2);
  std::vector<CreatedKey> alices;
  for (int i = 0; i < 4; ++i) alices.push_back(t->create(alice, policy_request()));
  std::vector<CreatedKey> bobs;
  for (int i = 0; i < 2; ++i) bobs.push_back(t->create(bob, policy_request()));
  (void)t->revoke(alice, alices[0].info.key_id);
  (void)t->disable(alice, alices[1].info.key_id);
  for (const CreatedKey& k : alices) (void)warm(t, k);
  for (const CreatedKey& k : bobs) CHECK(warm(t, k).ok());
  const KeyInfo already = t->get(alice, alices[0].info.key_id);
  t.clock->advance(milliseconds(777));

  CHECK(t->revoke_all(alice) == 3);
  for (const CreatedKey& k : alices) {
    CHECK(t->validate(token(k)).code == ValidationCode::revoked);  // at once
    const KeyInfo now = t->get(alice, k.info.key_id);
    CHECK(now.status == KeyStatus::revoked);
    if (k.info.key_id != already.key_id) {
      CHECK(now.updated_at == t.clock->now());
      CHECK(now.version == (k.info.key_id == alices[1].info.key_id ? 3U : 2U));
    }
  }
  check_same_key(t->get(alice, already.key_id), already);  // untouched
  for (const CreatedKey& k : bobs) {
    CHECK(t->validate(token(k)).ok());
    check_same_key(t->get(bob, k.info.key_id), k.info);
  }
  CHECK(t->revoke_all(alice) == 0);
  CHECK(t->revoke_all(account_id(3)) == 0);
  CHECK(t->list(alice).size() == 4);  // revoked, not deleted
}

TEST_CASE("KeyManager::list pages: the limit", "[key_manager][key_policy]") {
  TestManager t = make_manager();
  const Uuid alice = account_id(1);
  for (int i = 0; i < 205; ++i) {
    (void)t->create(alice, policy_request());
    if (i % 3 == 0) t.clock->advance(milliseconds(1));  // some share a creation time
  }
  (void)t->create(account_id(2), policy_request());

  const KeyPage first = t->list(alice, ListOptions{});
  CHECK(first.keys.size() == 100);  // the default
  CHECK(first.next_cursor);
  CHECK(in_page_order(first.keys));
  ListOptions zero;
  zero.limit = 0;
  CHECK(t->list(alice, zero).keys.size() == 100);  // 0 means the default

  ListOptions most;
  most.limit = 1000;
  const KeyPage all = t->list(alice, most);
  CHECK(all.keys.size() == 205);
  CHECK_FALSE(all.next_cursor);
  CHECK(in_page_order(all.keys));
  for (const KeyInfo& k : all.keys) CHECK(k.account_id == alice);
  std::vector<KeyInfo> prefix(all.keys.begin(), all.keys.begin() + 100);
  CHECK(apikeys_test::contract::ids_of(first.keys) == apikeys_test::contract::ids_of(prefix));

  ListOptions too_many;
  too_many.limit = 1001;
  const Thrown refused = thrown_by([&] { (void)t->list(alice, too_many); });
  CHECK(refused.code == ErrorCode::invalid_argument);
  CHECK(contains(refused.message, "limit"));

  // Pages of the default size: 100, 100, 5. Pages of 5: exactly 41, the last without a
  // cursor even though it is full.
  std::size_t pages = 0;
  CHECK(walk(t, alice, 0, std::nullopt, &pages).size() == 205);
  CHECK(pages == 3);
  const std::vector<Uuid> by_five = walk(t, alice, 5, std::nullopt, &pages);
  CHECK(pages == 41);
  CHECK(by_five == apikeys_test::contract::ids_of(all.keys));

  ListOptions one;
  one.limit = 1;
  CHECK(t->list(alice, one).keys.size() == 1);
  CHECK(t->list(account_id(3), ListOptions{}).keys.empty());
  CHECK_FALSE(t->list(account_id(3), ListOptions{}).next_cursor);
}

TEST_CASE("KeyManager::list pages: a cursor walk sees every key once while keys are created",
          "[key_manager][key_policy]") {
  TestManager t = make_manager();
  const Uuid alice = account_id(1);
  const TimePoint t0 = t.clock->now();
  std::set<Uuid> existing;
  for (int i = 0; i < 40; ++i) {
    existing.insert(t->create(alice, policy_request()).info.key_id);
    if (i % 4 == 3) t.clock->advance(milliseconds(10));  // groups of 4 share a time
  }
  const TimePoint latest = t.clock->now();

  std::vector<KeyInfo> walked;
  std::set<Uuid> older_created;  // created meanwhile, older than every key: must be seen
  std::set<Uuid> newer_created;  // created meanwhile, newer: before the position
  ListOptions options;
  options.limit = 7;
  for (int page_no = 0; page_no < 100; ++page_no) {
    const KeyPage page = t->list(alice, options);
    walked.insert(walked.end(), page.keys.begin(), page.keys.end());
    if (!page.next_cursor) break;
    options.cursor = *page.next_cursor;
    // Between pages: one key newer than all, one older than all, one at the same time
    // as the last key listed (before or after it, by its random id).
    t.clock->set(latest + milliseconds(page_no + 1));
    newer_created.insert(t->create(alice, policy_request()).info.key_id);
    t.clock->set(t0 - milliseconds(page_no + 1));
    older_created.insert(t->create(alice, policy_request()).info.key_id);
    t.clock->set(page.keys.back().created_at);
    (void)t->create(alice, policy_request());
  }
  CHECK(in_page_order(walked));
  std::map<Uuid, int> seen;
  for (const KeyInfo& k : walked) ++seen[k.key_id];
  for (const auto& [id, n] : seen) CHECK(n == 1);                   // none repeated
  for (const Uuid& id : existing) CHECK(seen.count(id) == 1);       // none skipped
  for (const Uuid& id : older_created) CHECK(seen.count(id) == 1);  // after the position
  for (const Uuid& id : newer_created) CHECK(seen.count(id) == 0);  // before it
}

TEST_CASE("KeyManager::list pages with a status filter", "[key_manager][key_policy]") {
  TestManager t = make_manager();
  const Uuid alice = account_id(1);
  std::set<Uuid> active;
  std::set<Uuid> disabled;
  for (int i = 0; i < 20; ++i) {
    const CreatedKey k = t->create(alice, policy_request());
    t.clock->advance(milliseconds(1));
    if (i % 5 == 1) {
      (void)t->revoke(alice, k.info.key_id);
    } else if (i % 5 == 2) {
      (void)t->disable(alice, k.info.key_id);
      disabled.insert(k.info.key_id);
    } else {
      active.insert(k.info.key_id);
    }
  }
  const std::vector<Uuid> active_walk = walk(t, alice, 3, KeyStatus::active);
  CHECK(active_walk.size() == active.size());
  CHECK(std::set<Uuid>(active_walk.begin(), active_walk.end()) == active);
  const std::vector<Uuid> disabled_walk = walk(t, alice, 3, KeyStatus::disabled);
  CHECK(std::set<Uuid>(disabled_walk.begin(), disabled_walk.end()) == disabled);
  CHECK(walk(t, alice, 3, KeyStatus::revoked).size() == 4);
  CHECK(walk(t, alice, 3).size() == 20);
}

TEST_CASE("KeyManager::list pages: a cursor is good only for its account and filter",
          "[key_manager][key_policy]") {
  TestManager t = make_manager();
  const Uuid alice = account_id(1);
  const Uuid bob = account_id(2);
  for (int i = 0; i < 5; ++i) {
    (void)t->create(alice, policy_request());
    (void)t->create(bob, policy_request());
    t.clock->advance(milliseconds(1));
  }
  ListOptions options;
  options.limit = 2;
  const std::string cursor = *t->list(alice, options).next_cursor;
  options.cursor = cursor;
  REQUIRE(t->list(alice, options).keys.size() == 2);  // the real one works

  const auto refused = [&](const Uuid& account, const ListOptions& o) {
    const Thrown thrown = thrown_by([&] { (void)t->list(account, o); });
    CHECK(thrown.code == ErrorCode::invalid_argument);
    CHECK(contains(thrown.message, "cursor"));
    if (o.cursor.size() >= 8) CHECK_FALSE(contains(thrown.message, o.cursor));
  };

  SECTION("another account's listing") { refused(bob, options); }
  SECTION("another status filter") {
    for (const KeyStatus status : {KeyStatus::active, KeyStatus::revoked, KeyStatus::disabled}) {
      ListOptions filtered = options;
      filtered.status = status;
      refused(alice, filtered);
    }
    // And the other way: a filtered listing's cursor without the filter.
    ListOptions active;
    active.limit = 2;
    active.status = KeyStatus::active;
    ListOptions unfiltered;
    unfiltered.limit = 2;
    unfiltered.cursor = *t->list(alice, active).next_cursor;
    refused(alice, unfiltered);
    active.cursor = unfiltered.cursor;
    CHECK(t->list(alice, active).keys.size() == 2);
  }
  SECTION("any one hex digit changed") {
    REQUIRE(cursor.size() % 2 == 0);
    for (std::size_t i = 0; i < cursor.size(); ++i) {
      CAPTURE(i);
      ListOptions flipped = options;
      flipped.cursor[i] = cursor[i] == '0' ? '1' : '0';
      refused(alice, flipped);
    }
  }
  SECTION("garbage") {
    const std::string ff(cursor.size(), 'f');
    for (const std::string& bad :
         {std::string("garbage"), std::string("00"), std::string(cursor.size(), 'z'), ff,
          std::string(cursor.size(), '0'), cursor.substr(0, cursor.size() - 2), cursor + "00",
          cursor.substr(0, cursor.size() - 1), " " + cursor, kMarker}) {
      ListOptions o = options;
      o.cursor = bad;
      refused(alice, o);
    }
  }
  SECTION("a cursor made under another pepper") {
    apikeys::KeyManager other(
        t.store, std::make_shared<apikeys::HmacSha256Hasher>(apikeys_test::kTestPepper2));
    ListOptions o = options;
    ListOptions first;
    first.limit = 2;
    o.cursor = *other.list(alice, first).next_cursor;
    refused(alice, o);
  }
}

TEST_CASE("KeyManager::get is scoped to the account", "[key_manager][key_policy]") {
  TestManager t = make_manager();
  const Uuid alice = account_id(1);
  const CreatedKey k = t->create(alice, policy_request("{\"a\":1}", {"a"}));
  check_same_key(t->get(alice, k.info.key_id), k.info);
  const Thrown other = thrown_by([&] { (void)t->get(account_id(2), k.info.key_id); });
  CHECK(other.code == ErrorCode::not_found);
  CHECK(thrown_by([&] { (void)t->get(alice, Uuid::random()); }).code == ErrorCode::not_found);
  (void)t->remove(alice, k.info.key_id);
  CHECK(thrown_by([&] { (void)t->get(alice, k.info.key_id); }).code == ErrorCode::not_found);
}

TEST_CASE("KeyManager: every policy change shows in the very next validation",
          "[key_manager][key_policy]") {
  TestManager t = make_manager();
  const Uuid alice = account_id(1);
  const CreatedKey k = t->create(alice, CreateRequest("Live", "", 30, "{\"v\":1}", {"a.read"}));
  const Requirements needs_write{{"a.write"}};
  const Requirements needs_read{{"a.read"}};

  SECTION("scopes granted and taken away") {
    const ValidationResult before = warm(t, k, needs_write);
    CHECK(before.code == ValidationCode::insufficient_scope);
    CHECK(before.missing_scopes == std::vector<std::string>{"a.write"});
    CHECK(warm(t, k, needs_read).ok());
    KeyUpdate grant;
    grant.scopes = std::vector<std::string>{"a.*"};
    (void)t->update(alice, k.info.key_id, grant);
    CHECK(t->validate(token(k), needs_write).ok());
    CHECK(t->validate(token(k)).scopes == std::vector<std::string>{"a.*"});
    KeyUpdate take;
    take.scopes = FieldUpdate<std::vector<std::string>>::clear();
    (void)t->update(alice, k.info.key_id, take);
    CHECK(t->validate(token(k), needs_read).code == ValidationCode::insufficient_scope);
  }
  SECTION("metadata") {
    CHECK(warm(t, k).metadata == "{\"v\":1}");
    KeyUpdate u;
    u.metadata = "{\"v\":2}";
    (void)t->update(alice, k.info.key_id, u);
    CHECK(t->validate(token(k)).metadata == "{\"v\":2}");
  }
  SECTION("expiry") {
    CHECK(warm(t, k).expires_at == k.info.expires_at);
    KeyUpdate u;
    u.expires_in_days = 1;
    (void)t->update(alice, k.info.key_id, u);
    CHECK(t->validate(token(k)).expires_at == t.clock->now() + kDay);
    t.clock->advance(kDay);
    CHECK(t->validate(token(k)).code == ValidationCode::expired);
  }
  SECTION("disable, enable") {
    CHECK(warm(t, k).ok());
    (void)t->disable(alice, k.info.key_id);
    CHECK(t->validate(token(k)).code == ValidationCode::disabled);
    CHECK(warm(t, k).code == ValidationCode::disabled);
    (void)t->enable(alice, k.info.key_id);
    CHECK(t->validate(token(k)).ok());
  }
  SECTION("rotate with a grace: the old key's new expiry") {
    CHECK(warm(t, k).expires_at == k.info.expires_at);
    RotateRequest r;
    r.grace = seconds(60);
    (void)t->rotate(alice, k.info.key_id, r);
    CHECK(t->validate(token(k)).expires_at == t.clock->now() + seconds(60));
  }
  SECTION("revoke_all") {
    CHECK(warm(t, k).ok());
    CHECK(t->revoke_all(alice) == 1);
    CHECK(t->validate(token(k)).code == ValidationCode::revoked);
  }
}

namespace {

// A cache that cannot be reached for erases (a shared Redis the rotating node is cut
// off from): every other call goes to a MemoryCache.
class EraseFailsCache final : public apikeys::Cache {
 public:
  explicit EraseFailsCache(std::shared_ptr<apikeys::Clock> clock) {
    apikeys::MemoryCacheOptions o;
    o.clock = std::move(clock);
    inner_ = std::make_shared<apikeys::MemoryCache>(o);
  }
  std::optional<apikeys::Verdict> get(std::string_view pk, const apikeys::Digest& d) override {
    return inner_->get(pk, d);
  }
  std::uint64_t fill_token(std::string_view pk) override { return inner_->fill_token(pk); }
  void put(std::string_view pk, const apikeys::Digest& d, const apikeys::Verdict& v,
           std::chrono::milliseconds ttl, std::uint64_t token) override {
    inner_->put(pk, d, v, ttl, token);
  }
  void erase(std::string_view /*pk*/) override {
    throw apikeys::Error(ErrorCode::busy, "cache unreachable");
  }
  void clear() override { inner_->clear(); }

 private:
  std::shared_ptr<apikeys::MemoryCache> inner_;
};

}  // namespace

TEST_CASE("KeyManager::rotate returns the new key even when a cache cannot erase",
          "[key_manager][key_policy]") {
  // Throwing after the commit would lose the only copy of the new secret. Every other
  // cache over the same store still drops the old key's verdict before rotate returns.
  auto clock = std::make_shared<apikeys::ManualClock>(apikeys_test::test_start());
  auto store = std::make_shared<apikeys::MemoryStore>();
  auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(apikeys_test::kTestPepper);
  apikeys::KeyManagerOptions mo;
  mo.validation.clock = clock;
  mo.validation.cache = std::make_shared<EraseFailsCache>(clock);
  mo.validation.record_last_use = false;
  apikeys::KeyManager manager(store, hasher, mo);
  apikeys::ValidatorOptions vo;
  vo.clock = clock;
  apikeys::MemoryCacheOptions co;
  co.clock = clock;
  vo.cache = std::make_shared<apikeys::MemoryCache>(co);
  vo.record_last_use = false;
  apikeys::Validator hot_path(store, hasher, vo);

  const Uuid alice = account_id(1);
  const CreatedKey k = manager.create(alice, CreateRequest("Rotated"));
  REQUIRE(hot_path.validate(token(k)).ok());
  REQUIRE(hot_path.validate(token(k)).ok());  // now answered by its cache

  CreatedKey next;
  CHECK_NOTHROW(next = manager.rotate(alice, k.info.key_id, RotateRequest{}));
  CHECK(hot_path.validate(token(next)).ok());
  CHECK(hot_path.validate(token(k)).code == ValidationCode::expired);
  CHECK(manager.get(alice, k.info.key_id).rotated_to == next.info.key_id);
  // The other changes still report the cache they could not reach.
  CHECK(thrown_by([&] { (void)manager.disable(alice, next.info.key_id); }).code == ErrorCode::busy);
}

namespace {

// A MemoryStore behind hooks: a store whose reply to a committed change is lost, a 0.1
// store whose set_status fails part way, and a rotate that commits while revoke_all runs.
class HookedStore final : public apikeys_test::ForwardingStore {
 public:
  using ForwardingStore::ForwardingStore;
  int lose_replace_replies = 0;    // this many applied replaces then throw Error(busy)
  int set_status_calls_left = -1;  // >= 0: set_status fails once this reaches 0
  bool old_interface = false;      // replace and revoke_all as a 0.1 store has them
  std::function<void()> after_first_revoke_all;
  std::function<void()> before_next_replace;  // runs once, just before a replace

  apikeys::WriteResult replace(const Uuid& a, const KeyInfo& next, std::uint64_t v) override {
    if (old_interface) return Store::replace(a, next, v);
    if (before_next_replace) {
      auto hook = std::move(before_next_replace);
      before_next_replace = nullptr;
      hook();
    }
    apikeys::WriteResult r = ForwardingStore::replace(a, next, v);
    if (r.outcome == apikeys::WriteOutcome::applied && lose_replace_replies > 0) {
      --lose_replace_replies;
      throw apikeys::Error(ErrorCode::busy, "the reply was lost");
    }
    return r;
  }
  std::optional<KeyInfo> set_status(const Uuid& a, const Uuid& k, KeyStatus s) override {
    if (set_status_calls_left == 0) {
      set_status_calls_left = -1;
      throw apikeys::Error(ErrorCode::busy, "set_status failed");
    }
    if (set_status_calls_left > 0) --set_status_calls_left;
    return ForwardingStore::set_status(a, k, s);
  }
  std::vector<KeyInfo> revoke_all(const Uuid& a, TimePoint at) override {
    if (old_interface) return Store::revoke_all(a, at);
    std::vector<KeyInfo> out = ForwardingStore::revoke_all(a, at);
    if (after_first_revoke_all) {
      auto hook = std::move(after_first_revoke_all);
      after_first_revoke_all = nullptr;
      hook();
    }
    return out;
  }
};

struct HookedSetup {
  std::shared_ptr<apikeys::ManualClock> clock =
      std::make_shared<apikeys::ManualClock>(apikeys_test::test_start());
  std::shared_ptr<apikeys::MemoryStore> memory = std::make_shared<apikeys::MemoryStore>();
  std::shared_ptr<HookedStore> store = std::make_shared<HookedStore>(memory);
  std::shared_ptr<apikeys::HmacSha256Hasher> hasher =
      std::make_shared<apikeys::HmacSha256Hasher>(apikeys_test::kTestPepper);
  std::unique_ptr<apikeys::KeyManager> manager;

  HookedSetup() {
    apikeys::KeyManagerOptions o;
    o.validation.clock = clock;
    apikeys::MemoryCacheOptions co;
    co.clock = clock;
    o.validation.cache = std::make_shared<apikeys::MemoryCache>(co);
    o.validation.record_last_use = false;
    manager = std::make_unique<apikeys::KeyManager>(store, hasher, o);
  }
  // Validates twice: the second answer comes from the cache.
  ValidationResult warm(const CreatedKey& k) {
    (void)manager->validate(token(k));
    return manager->validate(token(k));
  }
};

}  // namespace

TEST_CASE("KeyManager: a change retried after a lost reply still clears the cache",
          "[key_manager][key_policy]") {
  HookedSetup s;
  const Uuid alice = account_id(1);
  const CreatedKey k = s.manager->create(alice, CreateRequest("Lost reply"));
  REQUIRE(s.warm(k).ok());
  s.store->lose_replace_replies = 1;
  CHECK(thrown_by([&] { (void)s.manager->disable(alice, k.info.key_id); }).code == ErrorCode::busy);
  // Committed, but nobody erased the cache: the retry finds nothing to write and must
  // erase anyway.
  CHECK(s.manager->disable(alice, k.info.key_id).status == KeyStatus::disabled);
  CHECK(s.manager->validate(token(k)).code == ValidationCode::disabled);
}

TEST_CASE("KeyManager::revoke_all on a 0.1 store that fails part way, then retried",
          "[key_manager][key_policy]") {
  HookedSetup s;
  s.store->old_interface = true;
  const Uuid alice = account_id(1);
  const CreatedKey a = s.manager->create(alice, CreateRequest("A"));
  const CreatedKey b = s.manager->create(alice, CreateRequest("B"));
  REQUIRE(s.warm(a).ok());
  REQUIRE(s.warm(b).ok());
  s.store->set_status_calls_left = 1;  // the first key is revoked, the second call fails
  CHECK(thrown_by([&] { (void)s.manager->revoke_all(alice); }).code == ErrorCode::busy);
  // Whatever the store revoked before it failed is already out of the cache.
  const int revoked_now = (s.manager->validate(token(a)).code == ValidationCode::revoked) +
                          (s.manager->validate(token(b)).code == ValidationCode::revoked);
  CHECK(revoked_now == 1);
  CHECK(s.manager->revoke_all(alice) == 1);
  CHECK(s.manager->validate(token(a)).code == ValidationCode::revoked);
  CHECK(s.manager->validate(token(b)).code == ValidationCode::revoked);
}

TEST_CASE("KeyManager::revoke_all also revokes a key a concurrent rotate committed",
          "[key_manager][key_policy]") {
  // The store's statement did not see a successor committed while it ran (PostgreSQL
  // under READ COMMITTED): revoke_all asks again until nothing is left.
  HookedSetup s;
  const Uuid alice = account_id(1);
  const CreatedKey k = s.manager->create(alice, CreateRequest("Rotating"));
  apikeys::KeyRecord late;
  late.info = k.info;
  late.info.key_id = Uuid::random();
  late.info.public_key = "pk_" + std::string(32, 'L');
  late.info.status = KeyStatus::active;
  s.store->after_first_revoke_all = [&] { s.memory->insert(late); };
  CHECK(s.manager->revoke_all(alice) == 2);
  for (const KeyInfo& info : s.manager->list(alice)) CHECK(info.status == KeyStatus::revoked);
}

TEST_CASE("KeyManager::update never lengthens a rotated key's life", "[key_manager][key_policy]") {
  TestManager t = make_manager();
  const Uuid alice = account_id(1);
  const CreatedKey k = t->create(alice, CreateRequest("Old"));
  RotateRequest r;
  r.grace = hours(1);
  (void)t->rotate(alice, k.info.key_id, r);
  KeyUpdate endless;
  endless.expires_in_days = FieldUpdate<int>::clear();
  CHECK(thrown_by([&] { (void)t->update(alice, k.info.key_id, endless); }).code ==
        ErrorCode::conflict);
  KeyUpdate later;
  later.expires_in_days = 1;
  CHECK(thrown_by([&] { (void)t->update(alice, k.info.key_id, later); }).code ==
        ErrorCode::conflict);
  t.clock->advance(seconds(1));
  CHECK(t->validate(token(k)).ok());
  KeyUpdate rename;
  rename.title = "Old, renamed";
  CHECK(t->update(alice, k.info.key_id, rename).expires_at ==
        t->get(alice, k.info.key_id).expires_at);
}

TEST_CASE("KeyManager: a disable racing a revoke never brings the key back",
          "[key_manager][key_policy]") {
  // The revoke commits between disable()'s read and its compare-and-set: the write is
  // refused (stale version), disable() reads the key again and finds it revoked.
  HookedSetup s;
  const Uuid alice = account_id(1);
  const CreatedKey k = s.manager->create(alice, CreateRequest("Raced"));
  s.store->before_next_replace = [&] {
    (void)s.memory->set_status(alice, k.info.key_id, KeyStatus::revoked);
  };
  CHECK(thrown_by([&] { (void)s.manager->disable(alice, k.info.key_id); }).code ==
        ErrorCode::conflict);
  CHECK(s.manager->get(alice, k.info.key_id).status == KeyStatus::revoked);
  CHECK(s.manager->validate(token(k)).code == ValidationCode::revoked);
}

TEST_CASE("KeyManager over a 0.1 store: revoke works, the new changes are not supported",
          "[key_manager][key_policy]") {
  HookedSetup s;
  s.store->old_interface = true;
  const Uuid alice = account_id(1);
  const CreatedKey k = s.manager->create(alice, CreateRequest("Old store"));
  REQUIRE(s.warm(k).ok());
  CHECK(thrown_by([&] { (void)s.manager->disable(alice, k.info.key_id); }).code ==
        ErrorCode::not_supported);
  CHECK(s.manager->validate(token(k)).ok());
  CHECK(s.manager->revoke(alice, k.info.key_id).status == KeyStatus::revoked);
  CHECK(s.manager->validate(token(k)).code == ValidationCode::revoked);
}
