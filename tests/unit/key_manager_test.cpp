// Tests of apikeys/key_manager.hpp: create/list/revoke/remove and validation through
// the KeyManager, over a MemoryStore, HmacSha256Hasher, MemoryCache and ManualClock.
// Request rules (title, description, expiry), account isolation, immediate revocation
// with a warm cache, expiry with cached verdicts, and secrets kept out of listings and
// error messages.
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "apikeys/error.hpp"
#include "apikeys/key_generator.hpp"
#include "apikeys/key_manager.hpp"
#include "apikeys/memory_store.hpp"
#include "apikeys/types.hpp"
#include "catch.hpp"
#include "test_support.hpp"

#include "../../src/hex.hpp"

using apikeys::CreatedKey;
using apikeys::CreateRequest;
using apikeys::ErrorCode;
using apikeys::KeyInfo;
using apikeys::KeyStatus;
using apikeys::Uuid;
using apikeys::ValidationCode;
using apikeys::ValidationResult;
using apikeys_test::account_id;
using apikeys_test::make_manager;
using apikeys_test::TestManager;
using std::chrono::milliseconds;

namespace {

constexpr std::int64_t kDayMs = 86'400'000;

CreateRequest req(std::string title, std::string description = {},
                  std::optional<int> days = std::nullopt) {
  CreateRequest r;
  r.title = std::move(title);
  r.description = std::move(description);
  r.expires_in_days = days;
  return r;
}

std::string repeat(std::string_view s, std::size_t n) {
  std::string out;
  out.reserve(s.size() * n);
  for (std::size_t i = 0; i < n; ++i) out += s;
  return out;
}

// Printable form of arbitrary bytes, for failure messages.
std::string show(std::string_view s) {
  std::string out;
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(ch);
    } else {
      char digits[2];
      apikeys::detail::hex_encode(&c, 1, digits);
      out.append("\\x").append(digits, 2);
    }
  }
  if (out.size() > 80) out = out.substr(0, 80) + "...(" + std::to_string(s.size()) + " bytes)";
  return out;
}

std::string describe(const CreateRequest& r) {
  return "title=\"" + show(r.title) + "\" description=\"" + show(r.description) + "\" days=" +
         (r.expires_in_days ? std::to_string(*r.expires_in_days) : std::string("none"));
}

// "" when create() refused `r` with Error(invalid_argument) and wrote nothing;
// otherwise what went wrong (so a failed CHECK shows the input).
std::string refusal_problem(TestManager& t, const Uuid& account, const CreateRequest& r) {
  const std::size_t stored_before = t.store->size();
  const std::size_t listed_before = t->list(account).size();
  std::string problem;
  try {
    const CreatedKey created = t->create(account, r);
    problem = "accepted " + describe(r);
  } catch (const apikeys::Error& e) {
    if (e.code() != ErrorCode::invalid_argument) {
      problem = std::string("refused with ") + apikeys::to_string(e.code()) + ": " + describe(r);
    }
  } catch (const std::exception& e) {
    problem = std::string("threw a non-apikeys exception (") + e.what() + "): " + describe(r);
  }
  if (problem.empty() &&
      (t.store->size() != stored_before || t->list(account).size() != listed_before)) {
    problem = "refused but wrote to the store: " + describe(r);
  }
  return problem;
}

// "" when create() accepts `r`; otherwise the error.
std::string acceptance_problem(TestManager& t, const Uuid& account, const CreateRequest& r) {
  try {
    const CreatedKey created = t->create(account, r);
    return {};
  } catch (const std::exception& e) {
    return std::string("refused (") + e.what() + "): " + describe(r);
  }
}

// The what() of the invalid_argument error create() throws for `r`, or "" if none.
std::string refusal_message(TestManager& t, const Uuid& account, const CreateRequest& r) {
  try {
    const CreatedKey created = t->create(account, r);
  } catch (const apikeys::Error& e) {
    if (e.code() == ErrorCode::invalid_argument) return e.what();
  } catch (...) {
  }
  return {};
}

// The code of the Error that revoke() throws, or nullopt when it succeeds.
std::optional<ErrorCode> error_code_of_revoke(TestManager& t, const Uuid& account,
                                              const Uuid& key) {
  try {
    (void)t->revoke(account, key);
  } catch (const apikeys::Error& e) {
    return e.code();
  }
  return std::nullopt;
}

// The code of the Error that remove() throws, or nullopt when it succeeds.
std::optional<ErrorCode> error_code_of_remove(TestManager& t, const Uuid& account,
                                              const Uuid& key) {
  try {
    (void)t->remove(account, key);
  } catch (const apikeys::Error& e) {
    return e.code();
  }
  return std::nullopt;
}

std::string secret_of(const CreatedKey& k) { return std::string(k.secret_key.reveal()); }

bool contains(std::string_view hay, std::string_view needle) {
  return hay.find(needle) != std::string_view::npos;
}

// A string that looks like a secret: the kind of thing users paste into titles.
const std::string kFakeSecret = "sk_Zq8XhT3pLw9VbN2mKc7RyF4dGj6sHa1E";

}  // namespace

TEST_CASE("KeyManager::create returns the stored fields and a secret once", "[key_manager]") {
  TestManager t = make_manager();
  const Uuid acct = account_id(1);
  const CreatedKey k = t->create(acct, req("My key", "for the build server"));
  const std::string sk = secret_of(k);

  CHECK(k.info.account_id == acct);
  CHECK(k.info.title == "My key");
  CHECK(k.info.description == "for the build server");
  CHECK(k.info.status == KeyStatus::active);
  CHECK(k.info.created_at == t.clock->now());
  CHECK_FALSE(k.info.expires_at.has_value());
  CHECK_FALSE(k.info.last_used_at.has_value());
  CHECK_FALSE(k.info.key_id.is_nil());
  CHECK((k.info.key_id.bytes()[6] >> 4) == 4);
  CHECK(k.info.public_key.rfind("pk_", 0) == 0);
  CHECK(sk.rfind("sk_", 0) == 0);
  const apikeys::KeyFormat fmt;
  CHECK(fmt.is_public_key(k.info.public_key));
  CHECK(fmt.is_secret_key(sk));
  CHECK(k.info.public_key.substr(3) != sk.substr(3));
  CHECK(t.store->size() == 1);

  const std::vector<KeyInfo> listed = t->list(acct);
  REQUIRE(listed.size() == 1);
  CHECK(listed[0].key_id == k.info.key_id);
  CHECK(listed[0].account_id == acct);
  CHECK(listed[0].public_key == k.info.public_key);
  CHECK(listed[0].title == "My key");
  CHECK(listed[0].description == "for the build server");
  CHECK(listed[0].status == KeyStatus::active);
  CHECK(listed[0].created_at == k.info.created_at);
  CHECK_FALSE(listed[0].expires_at.has_value());

  SECTION("the pair validates, as two strings and as one token") {
    const ValidationResult r = t->validate(k.info.public_key, sk);
    CHECK(r.code == ValidationCode::valid);
    CHECK(r.ok());
    CHECK(r.account_id == acct);
    CHECK(r.key_id == k.info.key_id);
    const ValidationResult r2 = t->validate(k.info.public_key + ":" + sk);
    CHECK(r2.code == ValidationCode::valid);
    CHECK(r2.account_id == acct);
    CHECK(r2.key_id == k.info.key_id);
    // Cached path gives the same answer.
    const ValidationResult r3 = t->validate(k.info.public_key, sk);
    CHECK(r3.code == ValidationCode::valid);
    CHECK(r3.account_id == acct);
    CHECK(r3.key_id == k.info.key_id);
    const ValidationResult r4 = t->validator().validate(k.info.public_key, sk);
    CHECK(r4.code == ValidationCode::valid);
  }
  SECTION("every key is distinct") {
    std::set<std::string> pks{k.info.public_key};
    std::set<std::string> sks{sk};
    std::set<Uuid> ids{k.info.key_id};
    for (int i = 0; i < 50; ++i) {
      const CreatedKey more = t->create(acct, req("k" + std::to_string(i)));
      pks.insert(more.info.public_key);
      sks.insert(secret_of(more));
      ids.insert(more.info.key_id);
    }
    CHECK(pks.size() == 51);
    CHECK(sks.size() == 51);
    CHECK(ids.size() == 51);
    CHECK(t->list(acct).size() == 51);
  }
}

TEST_CASE("KeyManager::validate refuses what is not the pair", "[key_manager]") {
  TestManager t = make_manager();
  const Uuid acct = account_id(1);
  const CreatedKey a = t->create(acct, req("a"));
  const CreatedKey b = t->create(acct, req("b"));
  const std::string pk_a = a.info.public_key;
  const std::string sk_a = secret_of(a);
  const std::string sk_b = secret_of(b);

  auto check_not_valid = [](const ValidationResult& r, ValidationCode expected) {
    CHECK(r.code == expected);
    CHECK_FALSE(r.ok());
    CHECK(r.account_id.is_nil());
    CHECK(r.key_id.is_nil());
  };

  SECTION("another key's secret") {
    check_not_valid(t->validate(pk_a, sk_b), ValidationCode::wrong_secret);
    check_not_valid(t->validate(pk_a + ":" + sk_b), ValidationCode::wrong_secret);
  }
  SECTION("a secret one character off") {
    std::string off = sk_a;
    off.back() = off.back() == 'A' ? 'B' : 'A';
    check_not_valid(t->validate(pk_a, off), ValidationCode::wrong_secret);
  }
  SECTION("an unknown public key") {
    check_not_valid(t->validate("pk_" + std::string(32, 'Q'), sk_a), ValidationCode::not_found);
  }
  SECTION("malformed input") {
    check_not_valid(t->validate("", ""), ValidationCode::malformed);
    check_not_valid(t->validate(pk_a, ""), ValidationCode::malformed);
    check_not_valid(t->validate("", sk_a), ValidationCode::malformed);
    check_not_valid(t->validate(sk_a, pk_a), ValidationCode::malformed);
    check_not_valid(t->validate(pk_a, sk_a.substr(3)), ValidationCode::malformed);
    check_not_valid(t->validate(pk_a, sk_a + "x"), ValidationCode::malformed);
    check_not_valid(t->validate(pk_a + std::string(1, '\0'), sk_a), ValidationCode::malformed);
    check_not_valid(t->validate(pk_a + sk_a), ValidationCode::malformed);
    check_not_valid(t->validate(pk_a + "::" + sk_a), ValidationCode::malformed);
    check_not_valid(t->validate(std::string(10'000, ':')), ValidationCode::malformed);
  }
  SECTION("a wrong secret does not lock the owner out") {
    for (int i = 0; i < 3; ++i) {
      check_not_valid(t->validate(pk_a, sk_b), ValidationCode::wrong_secret);
    }
    const ValidationResult r = t->validate(pk_a, sk_a);
    CHECK(r.code == ValidationCode::valid);
    CHECK(r.key_id == a.info.key_id);
    // And the cached valid verdict does not answer the wrong secret.
    check_not_valid(t->validate(pk_a, sk_b), ValidationCode::wrong_secret);
  }
}

TEST_CASE("KeyManager title rules", "[key_manager]") {
  TestManager t = make_manager();
  const Uuid acct = account_id(1);

  SECTION("ASCII white space is trimmed") {
    const CreatedKey k = t->create(acct, req("  hi  "));
    CHECK(k.info.title == "hi");
    const CreatedKey k2 = t->create(acct, req("\t\r\n hello world \n\t"));
    CHECK(k2.info.title == "hello world");
    const CreatedKey k3 = t->create(acct, req("a  b"));
    CHECK(k3.info.title == "a  b");
    const auto listed = t->list(acct);
    REQUIRE(listed.size() == 3);
    std::set<std::string> titles;
    for (const auto& i : listed) titles.insert(i.title);
    CHECK(titles == std::set<std::string>{"hi", "hello world", "a  b"});
  }
  SECTION("255 code points accepted, 256 refused") {
    CHECK(acceptance_problem(t, acct, req(repeat("\xc3\xa9", 255))) == "");  // é
    CHECK(acceptance_problem(t, acct, req(repeat("a", 255))) == "");
    CHECK(acceptance_problem(t, acct, req(repeat("\xe2\x82\xac", 255))) == "");      // €
    CHECK(acceptance_problem(t, acct, req(repeat("\xf0\x9f\x98\x80", 255))) == "");  // U+1F600
    CHECK(acceptance_problem(t, acct, req("   " + repeat("a", 255) + "\t ")) == "");
    const std::size_t accepted = t.store->size();
    REQUIRE(accepted == 5);
    CHECK(refusal_problem(t, acct, req(repeat("\xc3\xa9", 256))) == "");
    CHECK(refusal_problem(t, acct, req(repeat("a", 256))) == "");
    CHECK(refusal_problem(t, acct, req(repeat("\xf0\x9f\x98\x80", 256))) == "");
    CHECK(refusal_problem(t, acct, req(repeat("a", 100'000))) == "");
    CHECK(t.store->size() == accepted);
  }
  SECTION("the stored title of 255 multi-byte code points is exact") {
    const std::string title = repeat("\xc3\xa9", 255);
    const CreatedKey k = t->create(acct, req(title));
    CHECK(k.info.title == title);
    CHECK(t->list(acct).at(0).title == title);
  }
  SECTION("empty and blank titles are refused") {
    CHECK(refusal_problem(t, acct, req("")) == "");
    CHECK(refusal_problem(t, acct, req("   ")) == "");
    CHECK(refusal_problem(t, acct, req("\t\t")) == "");
    CHECK(refusal_problem(t, acct, req(" \r\n ")) == "");
    CHECK(t.store->size() == 0);
    CHECK(t->list(acct).empty());
  }
  SECTION("invalid UTF-8 is refused") {
    const std::vector<std::string> bad = {
        "\xff",                  // never valid
        "\xfe",                  // never valid
        "\x80",                  // lone continuation byte
        "\xc3",                  // truncated two-byte sequence (at the end)
        "\xc3(",                 // bad continuation
        "\xc0\xaf",              // overlong '/'
        "\xc1\xbf",              // overlong
        "\xe0\x80\xaf",          // overlong three-byte
        "\xf0\x80\x80\xaf",      // overlong four-byte
        "\xed\xa0\x80",          // UTF-16 surrogate U+D800
        "\xed\xbf\xbf",          // UTF-16 surrogate U+DFFF
        "\xf4\x90\x80\x80",      // above U+10FFFF
        "\xf8\x88\x80\x80\x80",  // five-byte form
        "\xe2\x82",              // truncated three-byte sequence
    };
    for (const std::string& b : bad) {
      CHECK(refusal_problem(t, acct, req("ok" + b)) == "");
      CHECK(refusal_problem(t, acct, req(b + "ok")) == "");
    }
    CHECK(t.store->size() == 0);
    CHECK(t->list(acct).empty());
  }
  SECTION("valid UTF-8 at the edges of the ranges is accepted") {
    for (const char* good : {"\xed\x9f\xbf",                 // U+D7FF, just below the surrogates
                             "\xee\x80\x80",                 // U+E000, just above them
                             "\xf4\x8f\xbf\xbf",             // U+10FFFF, the last code point
                             "\xc2\xa0",                     // U+00A0, no-break space (not control)
                             "\xe6\x97\xa5\xe6\x9c\xac"}) {  // 日本
      CHECK(acceptance_problem(t, acct, req(std::string("x") + good + "x")) == "");
    }
  }
  SECTION("control characters and NUL are refused") {
    const std::vector<std::string> bad = {
        std::string("a\0b", 3),
        std::string("ab\0", 3),
        "a\x01"
        "b",
        "a\x1f"
        "b",
        "a\x7f"
        "b",     // DEL
        "a\tb",  // tab: allowed in descriptions, not titles
        "a\nb",
        "a\rb",
        "a\x1b[31mred",
    };
    for (const std::string& b : bad) CHECK(refusal_problem(t, acct, req(b)) == "");
    CHECK(t.store->size() == 0);
  }
  SECTION("C1 control characters (U+0080-U+009F) are refused") {
    CHECK(refusal_problem(t, acct,
                          req("a\xc2\x80"
                              "b")) == "");
    CHECK(refusal_problem(t, acct,
                          req("a\xc2\x85"
                              "b")) == "");  // NEL
    CHECK(refusal_problem(t, acct,
                          req("a\xc2\x9f"
                              "b")) == "");
    CHECK(t.store->size() == 0);
  }
}

TEST_CASE("KeyManager description rules", "[key_manager]") {
  TestManager t = make_manager();
  const Uuid acct = account_id(1);

  SECTION("tab, line feed and carriage return are kept exactly") {
    const std::string d = "line one\nline two\tcol\r\nline three";
    const CreatedKey k = t->create(acct, req("t", d));
    CHECK(k.info.description == d);
    CHECK(t->list(acct).at(0).description == d);
  }
  SECTION("empty means none") {
    const CreatedKey k = t->create(acct, req("t", ""));
    CHECK(k.info.description.empty());
  }
  SECTION("1024 code points accepted, 1025 refused") {
    CHECK(acceptance_problem(t, acct, req("t", repeat("\xc3\xa9", 1024))) == "");
    CHECK(acceptance_problem(t, acct, req("t", repeat("d", 1024))) == "");
    CHECK(refusal_problem(t, acct, req("t", repeat("\xc3\xa9", 1025))) == "");
    CHECK(refusal_problem(t, acct, req("t", repeat("d", 1025))) == "");
    CHECK(refusal_problem(t, acct, req("t", repeat("d", 1'000'000))) == "");
    CHECK(t.store->size() == 2);
  }
  SECTION("other control characters, NUL and invalid UTF-8 are refused") {
    for (const std::string& b :
         {std::string("a\0b", 3),
          std::string("a\x01"
                      "b"),
          std::string("a\x7f"
                      "b"),
          std::string("a\x0b"
                      "b"),
          std::string("a\x1b"
                      "b"),
          std::string("a\xff"), std::string("a\xc0\xaf"), std::string("a\xed\xa0\x80")}) {
      CHECK(refusal_problem(t, acct, req("t", b)) == "");
    }
    CHECK(t.store->size() == 0);
  }
}

namespace {

// UTF-8 of one code point (U+0080 to U+FFFF).
std::string utf8(std::uint32_t cp) {
  std::string out;
  if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
  } else {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
  }
  out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  return out;
}

// The bidirectional formatting and zero-width characters titles and descriptions refuse.
const std::vector<std::uint32_t> kInvisible = {
    0x061C,                                  // ARABIC LETTER MARK
    0x200B, 0x200C, 0x200D,                  // zero-width space, non-joiner, joiner
    0x200E, 0x200F,                          // LEFT-TO-RIGHT and RIGHT-TO-LEFT MARK
    0x202A, 0x202B, 0x202C, 0x202D, 0x202E,  // embeddings, pop, overrides
    0x2060,                                  // WORD JOINER
    0x2061, 0x2062, 0x2063, 0x2064,          // invisible math operators
    0x034F,                                  // COMBINING GRAPHEME JOINER
    0x180E,                                  // MONGOLIAN VOWEL SEPARATOR
    0x115F, 0x1160, 0x3164, 0xFFA0,          // Hangul fillers
    0x2066, 0x2067, 0x2068, 0x2069,          // isolates and their pop
    0xFEFF,                                  // zero-width no-break space (BOM)
};

}  // namespace

TEST_CASE("KeyManager refuses bidirectional formatting and zero-width characters",
          "[key_manager]") {
  TestManager t = make_manager();
  const Uuid acct = account_id(1);
  const std::string kTitleRule =
      "title must not contain bidirectional formatting or zero-width characters";
  const std::string kDescriptionRule =
      "description must not contain bidirectional formatting or zero-width characters";
  for (const std::uint32_t cp : kInvisible) {
    const std::string c = utf8(cp);
    INFO("U+" << std::hex << cp);
    for (const std::string& text :
         {c + "billing", "bill" + c + "ing", "billing" + c, c, "  " + c + "  ",
          "\xd7\xa2\xd7\x91" + c + "123", c + kFakeSecret}) {
      INFO(show(text));
      CHECK(refusal_problem(t, acct, req(text)) == "");
      CHECK(refusal_message(t, acct, req(text)) == kTitleRule);
      CHECK(refusal_problem(t, acct, req("t", text)) == "");
      CHECK(refusal_message(t, acct, req("t", text)) == kDescriptionRule);
      CHECK(refusal_message(t, acct, req("t", "line one\n" + text + "\nline three")) ==
            kDescriptionRule);
    }
  }
  // The classic spoof: an override that makes "txt.exe" display as "exe.txt".
  CHECK(refusal_message(t, acct, req("invoice" + utf8(0x202E) + "txt.exe")) == kTitleRule);
  CHECK(t.store->size() == 0);
  CHECK(t->list(acct).empty());
  // normalize_request applies the same rule without a store.
  CHECK_THROWS_AS(apikeys::normalize_request(req("a" + utf8(0x2066) + "b")), apikeys::Error);
}

TEST_CASE("KeyManager accepts text in any script, emoji and the invisibles' neighbours",
          "[key_manager]") {
  TestManager t = make_manager();
  const Uuid acct = account_id(1);
  const std::vector<std::string> good = {
      "Z\xc3\xbcrich",                             // Zürich
      "\xe6\x9d\xb1\xe4\xba\xac",                  // 東京
      "\xf0\x9f\x94\x91 deploy \xf0\x9f\x9a\x80",  // emoji
      "\xe2\x9d\xa4\xef\xb8\x8f",                  // U+2764 U+FE0F: emoji with a variation selector
      "\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd",          // emoji with a skin-tone modifier
      "\xd9\x85\xd9\x81\xd8\xaa\xd8\xa7\xd8\xad",  // Arabic letters
      "\xd7\x9e\xd7\xa4\xd7\xaa\xd7\x97 API 2",    // Hebrew letters, then Latin and digits
      "\xe0\xa4\x95\xe0\xa5\x81\xe0\xa4\x82\xe0\xa4\x9c\xe0\xa5\x80",  // Devanagari
      "e\xcc\x81",                                                     // e + combining acute accent
      "a\xc2\xa0"
      "b",  // no-break space
      // Code points beside the refused ones.
      "a" + utf8(0x061B) + utf8(0x061D) + "b",
      "a" + utf8(0x200A) + utf8(0x2010) + "b",
      "a" + utf8(0x2027) + utf8(0x202F) + "b",
      "a" + utf8(0x205F) + utf8(0x2070) + "b",
      "a" + utf8(0xFEFC) + utf8(0xFF01) + "b",
  };
  for (const std::string& g : good) {
    CHECK(acceptance_problem(t, acct, req(g)) == "");
    CHECK(acceptance_problem(t, acct, req("t", g)) == "");
  }
  CHECK(t.store->size() == 2 * good.size());
}

TEST_CASE("KeyManager expiry rules", "[key_manager]") {
  TestManager t = make_manager();
  const Uuid acct = account_id(1);

  SECTION("out-of-range days are refused") {
    for (int days : {0, -1, 366, INT_MIN, INT_MAX, -365}) {
      CHECK(refusal_problem(t, acct, req("t", "", days)) == "");
    }
    CHECK(t.store->size() == 0);
    CHECK(t->list(acct).empty());
  }
  SECTION("1 and 365 days are accepted; expires_at = created_at + N days") {
    for (int days : {1, 30, 365}) {
      const CreatedKey k = t->create(acct, req("t", "", days));
      REQUIRE(k.info.expires_at.has_value());
      CHECK(k.info.created_at == t.clock->now());
      CHECK(apikeys::to_unix_millis(*k.info.expires_at) ==
            apikeys::to_unix_millis(k.info.created_at) + days * kDayMs);
      t.clock->advance(milliseconds(1));
    }
    for (const KeyInfo& i : t->list(acct)) {
      REQUIRE(i.expires_at.has_value());
      const std::int64_t span =
          apikeys::to_unix_millis(*i.expires_at) - apikeys::to_unix_millis(i.created_at);
      CHECK((span == 1 * kDayMs || span == 30 * kDayMs || span == 365 * kDayMs));
    }
  }
}

TEST_CASE("KeyManager: nothing is stored when a request is refused", "[key_manager]") {
  TestManager t = make_manager();
  const Uuid acct = account_id(1);
  CHECK(refusal_problem(t, acct, req("")) == "");
  CHECK(refusal_problem(t, acct, req("ok", "", 0)) == "");
  CHECK(refusal_problem(t, acct, req("ok", repeat("d", 1025))) == "");
  CHECK(refusal_problem(t, acct, req("\xff")) == "");
  // A good field does not save a bad one, in any position.
  CHECK(refusal_problem(t, acct, req(repeat("a", 256), "fine", 30)) == "");
  CHECK(refusal_problem(t, acct, req("fine", "fine", 366)) == "");
  CHECK(t->list(acct).empty());
  CHECK(t.store->size() == 0);
}

TEST_CASE("normalize_request applies the same rules without a store", "[key_manager]") {
  const CreateRequest n = apikeys::normalize_request(req("  padded title \t", "desc\n", 7));
  CHECK(n.title == "padded title");
  CHECK(n.description == "desc\n");
  REQUIRE(n.expires_in_days.has_value());
  CHECK(*n.expires_in_days == 7);
  const CreateRequest none = apikeys::normalize_request(req("x"));
  CHECK_FALSE(none.expires_in_days.has_value());

  for (const CreateRequest& bad :
       {req(""), req("  "), req(repeat("a", 256)), req("\xff"), req("a\x01"),
        req("t", repeat("d", 1025)), req("t", "", 0), req("t", "", 366)}) {
    bool refused = false;
    try {
      (void)apikeys::normalize_request(bad);
    } catch (const apikeys::Error& e) {
      refused = e.code() == ErrorCode::invalid_argument;
    }
    CHECK(refused);
  }
}

TEST_CASE("KeyManager::list is newest first and per account", "[key_manager]") {
  TestManager t = make_manager();
  const Uuid acct = account_id(1);
  const Uuid other = account_id(2);

  const CreatedKey a = t->create(acct, req("a"));
  t.clock->advance(milliseconds(1000));
  const CreatedKey b = t->create(acct, req("b"));
  t.clock->advance(milliseconds(1));
  const CreatedKey c = t->create(acct, req("c"));
  const CreatedKey x = t->create(other, req("x"));
  t.clock->advance(milliseconds(60'000));
  // Two at the same instant: the later insert comes first.
  const CreatedKey d = t->create(acct, req("d"));
  const CreatedKey e = t->create(acct, req("e"));

  const std::vector<KeyInfo> listed = t->list(acct);
  REQUIRE(listed.size() == 5);
  CHECK(listed[0].key_id == e.info.key_id);
  CHECK(listed[1].key_id == d.info.key_id);
  CHECK(listed[2].key_id == c.info.key_id);
  CHECK(listed[3].key_id == b.info.key_id);
  CHECK(listed[4].key_id == a.info.key_id);
  CHECK(listed[0].title == "e");
  CHECK(listed[4].title == "a");
  for (std::size_t i = 1; i < listed.size(); ++i) {
    CHECK(listed[i - 1].created_at >= listed[i].created_at);
  }
  for (const KeyInfo& i : listed) CHECK(i.account_id == acct);

  const std::vector<KeyInfo> others = t->list(other);
  REQUIRE(others.size() == 1);
  CHECK(others[0].key_id == x.info.key_id);
  CHECK(t->list(account_id(3)).empty());
  CHECK(t->list(Uuid()).empty());

  SECTION("listings never contain a secret") {
    std::vector<std::string> secrets;
    for (const CreatedKey* k : {&a, &b, &c, &d, &e, &x}) secrets.push_back(secret_of(*k));
    for (const Uuid& who : {acct, other}) {
      for (const KeyInfo& i : t->list(who)) {
        for (const std::string& s : secrets) {
          const std::string body = s.substr(3);
          CHECK_FALSE(contains(i.title, body));
          CHECK_FALSE(contains(i.description, body));
          CHECK_FALSE(contains(i.public_key, body));
          CHECK(i.public_key != s);
        }
      }
    }
  }
}

TEST_CASE("KeyManager: another account's key cannot be revoked or removed", "[key_manager]") {
  TestManager t = make_manager();
  const Uuid owner = account_id(1);
  const Uuid intruder = account_id(2);
  const CreatedKey k = t->create(owner, req("owned"));
  const std::string sk = secret_of(k);
  const CreatedKey own = t->create(intruder, req("intruder's own"));

  CHECK(error_code_of_revoke(t, intruder, k.info.key_id) == ErrorCode::not_found);
  CHECK(error_code_of_remove(t, intruder, k.info.key_id) == ErrorCode::not_found);
  CHECK(error_code_of_revoke(t, Uuid(), k.info.key_id) == ErrorCode::not_found);
  CHECK(error_code_of_remove(t, Uuid(), k.info.key_id) == ErrorCode::not_found);
  // The owner with a key id that does not exist, or with the intruder's key id.
  CHECK(error_code_of_revoke(t, owner, Uuid::random()) == ErrorCode::not_found);
  CHECK(error_code_of_remove(t, owner, Uuid::random()) == ErrorCode::not_found);
  CHECK(error_code_of_revoke(t, owner, own.info.key_id) == ErrorCode::not_found);

  const ValidationResult r = t->validate(k.info.public_key, sk);
  CHECK(r.code == ValidationCode::valid);
  CHECK(r.account_id == owner);
  const auto listed = t->list(owner);
  REQUIRE(listed.size() == 1);
  CHECK(listed[0].status == KeyStatus::active);
  CHECK(t->validate(own.info.public_key, secret_of(own)).code == ValidationCode::valid);
  CHECK(t.store->size() == 2);
}

TEST_CASE("KeyManager::revoke takes effect at once, even with a warm cache", "[key_manager]") {
  TestManager t = make_manager();
  const Uuid acct = account_id(1);
  const CreatedKey k = t->create(acct, req("to revoke"));
  const CreatedKey keep = t->create(acct, req("to keep"));
  const std::string sk = secret_of(k);

  // Warm the cache: the second call is a hit.
  REQUIRE(t->validate(k.info.public_key, sk).code == ValidationCode::valid);
  REQUIRE(t->validate(k.info.public_key, sk).code == ValidationCode::valid);
  REQUIRE(t->validate(k.info.public_key + ":" + sk).code == ValidationCode::valid);

  const KeyInfo revoked = t->revoke(acct, k.info.key_id);
  CHECK(revoked.key_id == k.info.key_id);
  CHECK(revoked.status == KeyStatus::revoked);

  const ValidationResult r = t->validate(k.info.public_key, sk);
  CHECK(r.code == ValidationCode::revoked);
  CHECK(r.account_id.is_nil());
  CHECK(r.key_id.is_nil());
  CHECK(t->validate(k.info.public_key + ":" + sk).code == ValidationCode::revoked);
  CHECK(t->validate(k.info.public_key, sk).code == ValidationCode::revoked);

  // Other keys are untouched.
  CHECK(t->validate(keep.info.public_key, secret_of(keep)).code == ValidationCode::valid);

  SECTION("revoking again succeeds") {
    KeyInfo again;
    REQUIRE_NOTHROW(again = t->revoke(acct, k.info.key_id));
    CHECK(again.status == KeyStatus::revoked);
    CHECK(t->validate(k.info.public_key, sk).code == ValidationCode::revoked);
  }
  SECTION("list shows the status") {
    for (const KeyInfo& i : t->list(acct)) {
      CHECK(i.status == (i.key_id == k.info.key_id ? KeyStatus::revoked : KeyStatus::active));
    }
  }
  SECTION("the revoked verdict survives time passing") {
    t.clock->advance(std::chrono::hours(2));
    CHECK(t->validate(k.info.public_key, sk).code == ValidationCode::revoked);
  }
  SECTION("a revoked key can still be removed") {
    const KeyInfo gone = t->remove(acct, k.info.key_id);
    CHECK(gone.status == KeyStatus::revoked);
    CHECK(t->validate(k.info.public_key, sk).code == ValidationCode::not_found);
  }
}

TEST_CASE("KeyManager::remove takes effect at once, even with a warm cache", "[key_manager]") {
  TestManager t = make_manager();
  const Uuid acct = account_id(1);
  const CreatedKey k = t->create(acct, req("to remove", "desc", 10));
  const std::string sk = secret_of(k);
  REQUIRE(t->validate(k.info.public_key, sk).code == ValidationCode::valid);
  REQUIRE(t->validate(k.info.public_key, sk).code == ValidationCode::valid);

  const KeyInfo gone = t->remove(acct, k.info.key_id);
  CHECK(gone.key_id == k.info.key_id);
  CHECK(gone.title == "to remove");
  CHECK(gone.status == KeyStatus::active);
  CHECK(gone.public_key == k.info.public_key);

  const ValidationResult r = t->validate(k.info.public_key, sk);
  CHECK(r.code == ValidationCode::not_found);
  CHECK(r.account_id.is_nil());
  CHECK(t->list(acct).empty());
  CHECK(t.store->size() == 0);
  CHECK(error_code_of_remove(t, acct, k.info.key_id) == ErrorCode::not_found);
  CHECK(error_code_of_revoke(t, acct, k.info.key_id) == ErrorCode::not_found);
  CHECK(t->validate(k.info.public_key, sk).code == ValidationCode::not_found);
}

TEST_CASE("KeyManager stores titles and descriptions byte-exactly", "[key_manager]") {
  TestManager t = make_manager();
  const Uuid acct = account_id(1);
  const std::vector<std::string> tricky = {
      "Robert'); DROP TABLE keys;--",
      "' OR '1'='1",
      "\"double\" and 'single' quotes",
      "back\\slash \\\\ and \\'",
      "100% {} {0} %s %n %x",
      "<script>alert(1)</script>",
      "semi;colon -- comment /* block */",
      "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x94\x91",  // 日本語 🔑
      "a:b:c pk_x:sk_y",
  };
  std::set<std::string> wanted;
  for (const std::string& s : tricky) {
    const CreatedKey k = t->create(acct, req(s, s));
    CHECK(k.info.title == s);
    CHECK(k.info.description == s);
    CHECK(t->validate(k.info.public_key, secret_of(k)).code == ValidationCode::valid);
    wanted.insert(s);
  }
  std::set<std::string> titles;
  std::set<std::string> descriptions;
  for (const KeyInfo& i : t->list(acct)) {
    titles.insert(i.title);
    descriptions.insert(i.description);
  }
  CHECK(titles == wanted);
  CHECK(descriptions == wanted);
}

TEST_CASE("KeyManager expiry on the injected clock", "[key_manager]") {
  SECTION("valid until expires_at - 1 ms, expired at expires_at") {
    TestManager t = make_manager();
    const CreatedKey k = t->create(account_id(1), req("expiring", "", 1));
    const std::string sk = secret_of(k);
    REQUIRE(k.info.expires_at.has_value());
    const apikeys::TimePoint expires = *k.info.expires_at;

    REQUIRE(t->validate(k.info.public_key, sk).code == ValidationCode::valid);
    t.clock->set(expires - milliseconds(1));
    CHECK(t->validate(k.info.public_key, sk).code == ValidationCode::valid);
    CHECK(t->validate(k.info.public_key, sk).code == ValidationCode::valid);
    t.clock->set(expires);
    const ValidationResult r = t->validate(k.info.public_key, sk);
    CHECK(r.code == ValidationCode::expired);
    CHECK(r.account_id.is_nil());
    t.clock->set(expires + std::chrono::hours(24 * 400));
    CHECK(t->validate(k.info.public_key, sk).code == ValidationCode::expired);
  }
  SECTION("a cached valid verdict does not outlive the expiry (default TTL)") {
    TestManager t = make_manager();
    const CreatedKey k = t->create(account_id(1), req("expiring", "", 1));
    const std::string sk = secret_of(k);
    const apikeys::TimePoint expires = *k.info.expires_at;
    // Cached 60 s before expiry with a 120 s TTL.
    t.clock->set(expires - milliseconds(60'000));
    REQUIRE(t->validate(k.info.public_key, sk).code == ValidationCode::valid);
    REQUIRE(t->validate(k.info.public_key, sk).code == ValidationCode::valid);
    t.clock->set(expires);
    CHECK(t->validate(k.info.public_key, sk).code == ValidationCode::expired);
  }
  SECTION("a cached valid verdict does not outlive the expiry (long TTL)") {
    apikeys::KeyManagerOptions o;
    o.validation.ttl_valid = std::chrono::hours(48);
    TestManager t = make_manager(o);
    const CreatedKey k = t->create(account_id(1), req("expiring", "", 1));
    const std::string sk = secret_of(k);
    const apikeys::TimePoint expires = *k.info.expires_at;
    REQUIRE(t->validate(k.info.public_key, sk).code == ValidationCode::valid);
    REQUIRE(t->validate(k.info.public_key, sk).code == ValidationCode::valid);
    t.clock->set(expires - milliseconds(1));
    CHECK(t->validate(k.info.public_key, sk).code == ValidationCode::valid);
    t.clock->set(expires);
    CHECK(t->validate(k.info.public_key, sk).code == ValidationCode::expired);
  }
  SECTION("a key without expiry stays valid") {
    TestManager t = make_manager();
    const CreatedKey k = t->create(account_id(1), req("forever"));
    t.clock->advance(std::chrono::hours(24 * 365 * 50));
    CHECK(t->validate(k.info.public_key, secret_of(k)).code == ValidationCode::valid);
  }
}

TEST_CASE("KeyManager error messages never echo secret-like input", "[key_manager]") {
  TestManager t = make_manager();
  const Uuid acct = account_id(1);
  const std::string needle = kFakeSecret.substr(3, 16);  // Any recognisable part of it.
  const std::vector<CreateRequest> refused = {
      req(kFakeSecret + repeat("x", 300)),            // title too long
      req(kFakeSecret + "\x01"),                      // control character
      req(kFakeSecret + "\xff"),                      // invalid UTF-8
      req("ok", kFakeSecret + repeat("y", 1100)),     // description too long
      req("ok", kFakeSecret + std::string(1, '\0')),  // NUL in description
  };
  for (const CreateRequest& r : refused) {
    const std::string what = refusal_message(t, acct, r);
    CHECK_FALSE(what.empty());  // It was refused with invalid_argument.
    CHECK_FALSE(contains(what, needle));
    CHECK_FALSE(contains(what, kFakeSecret));
    std::string what_normalize;
    try {
      (void)apikeys::normalize_request(r);
    } catch (const apikeys::Error& e) {
      what_normalize = e.what();
    }
    CHECK_FALSE(what_normalize.empty());
    CHECK_FALSE(contains(what_normalize, needle));
  }
  CHECK(t.store->size() == 0);

  SECTION("not_found errors do not carry the secret either") {
    const CreatedKey k = t->create(acct, req("k"));
    const std::string sk = secret_of(k);
    try {
      (void)t->revoke(account_id(2), k.info.key_id);
    } catch (const apikeys::Error& e) {
      CHECK_FALSE(contains(e.what(), sk.substr(3)));
    }
  }
}

TEST_CASE("KeyManager construction checks its arguments", "[key_manager]") {
  auto store = std::make_shared<apikeys::MemoryStore>();
  auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(apikeys_test::kTestPepper);
  auto code_of = [](auto make) -> std::optional<ErrorCode> {
    try {
      make();
    } catch (const apikeys::Error& e) {
      return e.code();
    }
    return std::nullopt;
  };
  CHECK(code_of([&] { apikeys::KeyManager m(nullptr, hasher); }) == ErrorCode::invalid_argument);
  CHECK(code_of([&] { apikeys::KeyManager m(store, nullptr); }) == ErrorCode::invalid_argument);
  CHECK(code_of([&] {
          apikeys::KeyManagerOptions o;
          o.validation.format.secret_prefix = o.validation.format.public_prefix;
          apikeys::KeyManager m(store, hasher, o);
        }) == ErrorCode::invalid_argument);
  CHECK(code_of([&] {
          apikeys::KeyManagerOptions o;
          o.validation.format.length = 8;
          apikeys::KeyManager m(store, hasher, o);
        }) == ErrorCode::invalid_argument);
  CHECK_FALSE(code_of([&] { apikeys::KeyManager m(store, hasher); }).has_value());
}

TEST_CASE("KeyManager with a custom key format", "[key_manager]") {
  apikeys::KeyManagerOptions o;
  o.validation.format.public_prefix = "pk_live_";
  o.validation.format.secret_prefix = "sk_live_";
  o.validation.format.length = 40;
  TestManager t = make_manager(o);
  const CreatedKey k = t->create(account_id(1), req("live"));
  const std::string sk = secret_of(k);
  CHECK(k.info.public_key.rfind("pk_live_", 0) == 0);
  CHECK(k.info.public_key.size() == 8 + 40);
  CHECK(sk.rfind("sk_live_", 0) == 0);
  CHECK(sk.size() == 8 + 40);
  CHECK(t->validate(k.info.public_key, sk).code == ValidationCode::valid);
  CHECK(t->validate(k.info.public_key + ":" + sk).code == ValidationCode::valid);
  // Keys of the default shape are not even looked up.
  CHECK(t->validate("pk_" + std::string(32, 'a'), "sk_" + std::string(32, 'a')).code ==
        ValidationCode::malformed);
}

TEST_CASE("a listing cursor signed with the legacy pepper is refused", "[key_manager]") {
  // The legacy pepper (a configuration string of the replaced service, possibly short)
  // only verifies imported keys' digests: a cursor tagged under it was not made by this
  // manager and must not be accepted, or the listing becomes an oracle for guessing it.
  constexpr std::string_view kLegacy = "0123456789abcdefghijklmnopqrstuv";
  auto store = std::make_shared<apikeys::MemoryStore>();
  auto hasher = std::make_shared<apikeys::HmacSha256Hasher>(
      std::vector<apikeys::Pepper>{apikeys::Pepper{1, apikeys_test::kTestPepper}}, 1, kLegacy);
  apikeys::KeyManagerOptions options;
  options.validation.record_last_use = false;
  apikeys::KeyManager manager(store, hasher, options);
  const Uuid account = account_id(7);
  for (int i = 0; i < 3; ++i) (void)manager.create(account, CreateRequest("k"));

  apikeys::ListOptions first;
  first.limit = 1;
  const apikeys::KeyPage page = manager.list(account, first);
  REQUIRE(page.next_cursor);

  // The same cursor body, tagged by a manager whose pepper has the legacy pepper's bytes,
  // then relabelled with the legacy pepper's id.
  auto forger_hasher = std::make_shared<apikeys::HmacSha256Hasher>(kLegacy);
  apikeys::KeyManager forger(store, forger_hasher, options);
  const apikeys::KeyPage forged_page = forger.list(account, first);
  REQUIRE(forged_page.next_cursor);
  std::string forged = *forged_page.next_cursor;
  constexpr std::size_t kPepperIdHex = 2 * (1 + 1 + 8 + 16);
  REQUIRE(forged.substr(kPepperIdHex, 8) == "00000001");
  forged.replace(kPepperIdHex, 8, "ffffffff");

  apikeys::ListOptions next = first;
  next.cursor = forged;
  try {
    (void)manager.list(account, next);
    FAIL("a cursor tagged under the legacy pepper was accepted");
  } catch (const apikeys::Error& e) {
    CHECK(e.code() == ErrorCode::invalid_argument);
  }
  // The manager's own cursor still works.
  next.cursor = *page.next_cursor;
  CHECK(manager.list(account, next).keys.size() == 1);
}

TEST_CASE("KeyManager::create erases a not_found its own cache kept for the new public key",
          "[key_manager]") {
  // A predictable generator: someone presented the next pair before it existed.
  class Predictable final : public apikeys::KeyGenerator {
   public:
    apikeys::KeyPair generate(const apikeys::KeyFormat& format) override {
      apikeys::KeyPair pair;
      pair.public_key = format.public_prefix + std::string(format.length, 'P');
      pair.secret_key =
          apikeys::SecretString(format.secret_prefix + std::string(format.length, 'S'));
      return pair;
    }
  };
  auto store = std::make_shared<apikeys::MemoryStore>();
  apikeys::KeyManagerOptions options;
  options.validation.cache = std::make_shared<apikeys::MemoryCache>();
  options.validation.record_last_use = false;
  options.generator = std::make_shared<Predictable>();
  apikeys::KeyManager m(
      store, std::make_shared<apikeys::HmacSha256Hasher>(apikeys_test::kTestPepper), options);
  const std::string pk = "pk_" + std::string(32, 'P');
  const std::string sk = "sk_" + std::string(32, 'S');
  REQUIRE(m.validate(pk, sk).code == ValidationCode::not_found);
  REQUIRE(m.validate(pk, sk).code == ValidationCode::not_found);  // now from the cache
  const CreatedKey created = m.create(account_id(1), CreateRequest("predicted"));
  REQUIRE(created.info.public_key == pk);
  CHECK(m.validate(pk, sk).code == ValidationCode::valid);
}
