// The scope grammar, the matcher and the normal form of a key's scopes (src/scope.cpp):
// lengths at their limits, every kind of broken scope, the wildcard table, and that no
// error message repeats the scope it refuses.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "apikeys/error.hpp"
#include "apikeys/types.hpp"
#include "catch.hpp"
#include "scope.hpp"

using apikeys::Error;
using apikeys::ErrorCode;
using apikeys::KeyPolicyLimits;
using apikeys::detail::is_literal_scope;
using apikeys::detail::join_scopes;
using apikeys::detail::normalize_scopes;
using apikeys::detail::scope_error;
using apikeys::detail::scope_grants;
using apikeys::detail::scopes_grant;
using apikeys::detail::split_scopes;

namespace {

bool valid_granted(const std::string& s) { return scope_error(s, true) == nullptr; }
bool valid_required(const std::string& s) { return scope_error(s, false) == nullptr; }

// The message for `s`, checked to name a rule without quoting `s` (a scope shorter than
// three characters could appear in any English sentence, so only longer ones are checked).
std::string refusal(const std::string& s, bool wildcard_allowed) {
  const char* rule = scope_error(s, wildcard_allowed);
  REQUIRE(rule != nullptr);
  const std::string message(rule);
  CHECK_FALSE(message.empty());
  if (s.size() >= 3) CHECK(message.find(s) == std::string::npos);
  return message;
}

}  // namespace

TEST_CASE("scope grammar: segment and scope lengths at their limits", "[scope]") {
  static_assert(KeyPolicyLimits::kMaxSegmentLength == 64, "the tests assume 64");
  static_assert(KeyPolicyLimits::kMaxScopeLength == 128, "the tests assume 128");
  const std::string s64(64, 's');
  const std::string s65(65, 's');
  for (bool wild : {false, true}) {
    CHECK(scope_error(s64, wild) == nullptr);
    CHECK(scope_error(s64 + "." + std::string(63, 't'), wild) == nullptr);  // 128
    CHECK(scope_error("a:" + s64, wild) == nullptr);
    CHECK(scope_error("a." + s64 + ".b", wild) == nullptr);
    // 65 in the first, a middle and the last segment.
    CHECK(refusal(s65, wild).find("64") != std::string::npos);
    CHECK(refusal(s65 + ".a", wild).find("64") != std::string::npos);
    CHECK(refusal("a." + s65 + ".b", wild).find("64") != std::string::npos);
    CHECK(refusal("a:" + s65, wild).find("64") != std::string::npos);
    // 129 characters of valid segments.
    CHECK(refusal(s64 + "." + s64, wild).find("128") != std::string::npos);
    CHECK(refusal(std::string(129, 'x'), wild).find("128") != std::string::npos);
  }
  // A wildcard counts toward the 128 characters, and its path's segments are checked.
  const std::string path125 = s64 + "." + std::string(60, 'p');
  CHECK(valid_granted(path125 + ".**"));         // 128
  CHECK_FALSE(valid_granted(path125 + "x.**"));  // 129
  CHECK(valid_granted(path125 + "x.*"));         // 128
  CHECK_FALSE(valid_granted(path125 + "xx.*"));  // 129
  CHECK_FALSE(valid_granted(s65 + ".*"));
  CHECK_FALSE(valid_granted(s65 + ":**"));
}

TEST_CASE("scope grammar: empty scopes and empty segments", "[scope]") {
  for (bool wild : {false, true}) {
    CHECK(scope_error("", wild) != nullptr);
    for (const char* s :
         {".", ":", ".a", ":a", "a.", "a:", "a..b", "a.:b", "a::b", "a.b.", "..", ".a.b", "a. b"}) {
      INFO(s);
      refusal(s, wild);
    }
  }
  // A wildcard needs a non-empty path before its separator.
  for (const char* s : {".*", ".**", ":*", ":**", "a..*", "a.:**", "..**"}) {
    INFO(s);
    refusal(s, true);
    refusal(s, false);
  }
}

TEST_CASE("scope grammar: characters and separators", "[scope]") {
  for (bool wild : {false, true}) {
    for (const char* s : {"a", "a.b", "a:b", "a.b:c", "a:b.c", "read_all", "x-y", "0", "09.az_-:_",
                          "orders:read", "billing.invoices.read"}) {
      INFO(s);
      CHECK(scope_error(s, wild) == nullptr);
    }
    // Upper case, other ASCII, control characters, Unicode (é, Cyrillic а, fullwidth a).
    for (std::string s :
         std::vector<std::string>{"A",      "a.B",  "Orders:read", "a b",      "a/b",
                                  "a,b",    "a;b",  "a+b",         "a=b",      "a#b",
                                  "a\tb",   "a\nb", "caf\xc3\xa9", "\xd0\xb0", "\xef\xbd\x81",
                                  "a.\xff", "a@b",  "a~b",         "a'b",      "a\"b",
                                  "a\\b",   "a|b",  "a!b",         "a?b",      "a%b"}) {
      INFO(s);
      refusal(s, wild);
    }
    refusal(std::string("a\0b", 3), wild);
    refusal(std::string(1, '\0'), wild);
  }
}

TEST_CASE("scope grammar: where a wildcard may stand", "[scope]") {
  for (const char* s : {"*", "**", "a.*", "a.**", "a:*", "a:**", "a.b:c.*", "a.b.**"}) {
    INFO(s);
    CHECK(valid_granted(s));
    // A required scope is literal.
    CHECK(refusal(s, false) == std::string("a required scope must not contain a wildcard"));
  }
  for (const char* s : {"a*",    "*a",    "a.b*", "a.*b",  "a.**b",  "***",   "****",
                        "a.***", "*.a",   "**.a", "a.*.b", "a.**.b", "a:*:b", "*.*",
                        "**.**", "a.*.*", "a*.b", "*:",    "**:",    "* ",    " *"}) {
    INFO(s);
    refusal(s, true);
    refusal(s, false);
  }
}

TEST_CASE("scope matcher: the wildcard table", "[scope]") {
  struct Row {
    const char* granted;
    const char* required;
    bool grants;
  };
  const Row rows[] = {
      // One more segment, with the wildcard's own separator.
      {"a.*", "a.b", true},
      {"a.*", "a.b.c", false},
      {"a.*", "a", false},
      {"a.*", "a:b", false},
      {"a.*", "ab", false},
      {"a.*", "ab.c", false},
      {"a.*", "b.a", false},
      {"a:*", "a:b", true},
      {"a:*", "a.b", false},
      {"a:*", "a:b:c", false},
      {"a.b.*", "a.b.c", true},
      {"a.b.*", "a.b", false},
      {"a.b.*", "a.c.d", false},
      // One or more further segments, with either separator after the first.
      {"a.**", "a.b", true},
      {"a.**", "a.b.c", true},
      {"a.**", "a.b:c", true},
      {"a.**", "a.b.c.d.e", true},
      {"a.**", "a", false},
      {"a.**", "a:b", false},
      {"a.**", "ab.c", false},
      {"a.**", "b.a.c", false},
      {"a:**", "a:b.c", true},
      {"a:**", "a.b", false},
      // Everything.
      {"**", "a", true},
      {"**", "a.b.c", true},
      {"**", "x:y", true},
      {"**", "orders.read", true},
      // Any one segment.
      {"*", "a", true},
      {"*", "orders", true},
      {"*", "a.b", false},
      {"*", "a:b", false},
      // Literal scopes grant themselves only.
      {"a", "a", true},
      {"a.b", "a.b", true},
      {"a", "a.b", false},
      {"a.b", "a", false},
      {"a.b", "a:b", false},
      {"a.b", "a.bc", false},
  };
  for (const Row& row : rows) {
    INFO(row.granted << " grants " << row.required << "? expected " << row.grants);
    REQUIRE(valid_granted(row.granted));
    REQUIRE(valid_required(row.required));
    CHECK(scope_grants(row.granted, row.required) == row.grants);
    CHECK(scopes_grant({row.granted}, row.required) == row.grants);
  }
}

TEST_CASE("scope matcher: an invalid required scope is never granted", "[scope]") {
  const std::vector<std::string> everything = {"*", "**", "a", "a.*", "a.**"};
  for (std::string required :
       std::vector<std::string>{"", "A", "a.", ".a", "a..b", "*", "**", "a.*", "a.**", "a b",
                                std::string(65, 'a'), std::string(129, 'a'), "caf\xc3\xa9"}) {
    INFO(required);
    CHECK_FALSE(scopes_grant(everything, required));
  }
  CHECK_FALSE(scopes_grant({}, "a"));
  CHECK(scopes_grant({"b", "a"}, "a"));
}

TEST_CASE("scope matcher: a wildcard inside a segment grants nothing", "[scope]") {
  // The bundled stores keep only scopes that follow the grammar, but a store of the
  // caller's own returns whatever it holds: "read*" must not grant "readwrite".
  for (const std::string granted : {"read*", "read**", "a.b*", "a.b**", "***", "a.***"}) {
    INFO(granted);
    REQUIRE_FALSE(valid_granted(granted));
    for (const char* required : {"readwrite", "read", "a.bc", "a.b.c", "a.bc.d", "a", "a.b"}) {
      INFO(required);
      CHECK_FALSE(scope_grants(granted, required));
      CHECK_FALSE(scopes_grant({granted}, required));
    }
  }
  // A whole-segment wildcard still does.
  CHECK(scopes_grant({"read.*"}, "read.write"));
  CHECK(scopes_grant({"*"}, "readwrite"));
}

namespace {

// The grammar written plainly, character by character: the model the table-driven
// scope_error() must agree with, message for message.
const char* reference_scope_error(std::string_view scope, bool wildcard_allowed) {
  const auto segment_char = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  };
  const auto separator = [](char c) { return c == '.' || c == ':'; };
  if (scope.empty() || scope.size() > KeyPolicyLimits::kMaxScopeLength) {
    return "a scope must be 1 to 128 characters";
  }
  std::string_view body = scope;
  if (wildcard_allowed) {
    std::size_t stars = 0;
    while (stars < body.size() && stars < 2 && body[body.size() - 1 - stars] == '*') ++stars;
    if (stars > 0) {
      body.remove_suffix(stars);
      if (body.empty()) return nullptr;
      if (!separator(body.back())) return "a scope wildcard must be a whole last segment: * or **";
      body.remove_suffix(1);
    }
  }
  std::size_t segment = 0;
  for (std::size_t i = 0; i <= body.size(); ++i) {
    if (i == body.size() || separator(body[i])) {
      if (segment == 0 || segment > KeyPolicyLimits::kMaxSegmentLength) {
        return "a scope is segments of 1 to 64 characters joined by '.' or ':'";
      }
      segment = 0;
    } else if (segment_char(body[i])) {
      ++segment;
    } else if (body[i] == '*') {
      return wildcard_allowed ? "a scope wildcard must be a whole last segment: * or **"
                              : "a required scope must not contain a wildcard";
    } else {
      return "scope segments may contain only a-z, 0-9, '_' and '-'";
    }
  }
  return nullptr;
}

}  // namespace

TEST_CASE("scope grammar: the checker agrees with the plain model on random strings", "[scope]") {
  // Every class of character the grammar tells apart, and bytes it never allows.
  const std::string alphabet = std::string("az09_-.:*A \x7f\x80\xff") + std::string(1, '\0');
  std::uint64_t state = 0x5c09e5;
  const auto next = [&state] {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<std::size_t>(state >> 33);
  };
  for (int i = 0; i < 200000; ++i) {
    std::string s;
    // Mostly short; some around the segment and scope limits.
    const std::size_t pick = next() % 10;
    const std::size_t len = pick < 7 ? next() % 12 : 60 + next() % 75;
    for (std::size_t j = 0; j < len; ++j) {
      // Long runs of one segment character reach the 64-character segment limit.
      s += (pick >= 7 && next() % 8 != 0) ? 'a' : alphabet[next() % alphabet.size()];
    }
    for (const bool wildcard : {false, true}) {
      const char* got = scope_error(s, wildcard);
      const char* want = reference_scope_error(s, wildcard);
      INFO("scope of " << s.size() << " bytes, wildcard " << wildcard);
      REQUIRE((got == nullptr) == (want == nullptr));
      if (got != nullptr) REQUIRE(std::string(got) == std::string(want));
    }
  }
}

TEST_CASE("normalize_scopes: sorted, unique, at most 64 after duplicates go", "[scope]") {
  CHECK(normalize_scopes({}).empty());
  CHECK(normalize_scopes({"b", "a:x", "a.x", "b", "**", "a.x"}) ==
        std::vector<std::string>{"**", "a.x", "a:x", "b"});
  std::vector<std::string> many;
  for (int i = 0; i < 64; ++i) many.push_back("s" + std::to_string(i));
  CHECK(normalize_scopes(many).size() == 64);
  many.push_back("s0");  // 65 given, 64 after duplicates are removed
  many.push_back("s63");
  CHECK(normalize_scopes(many).size() == 64);
  CHECK(normalize_scopes(std::vector<std::string>(1000, "dup")).size() == 1);
  many.push_back("s64");  // 65 different
  try {
    (void)normalize_scopes(many);
    FAIL("65 scopes accepted");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::invalid_argument);
    CHECK(std::string(e.what()).find("64") != std::string::npos);
  }
  // One bad scope refuses the whole set, naming the rule and not the scope.
  for (std::string bad :
       std::vector<std::string>{"Secret-Scope-Value", "qqq..zzz", "qqq.zz*", "", "qqq zzz"}) {
    INFO(bad);
    try {
      (void)normalize_scopes({"good", bad});
      FAIL("accepted");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::invalid_argument);
      if (!bad.empty()) CHECK(std::string(e.what()).find(bad) == std::string::npos);
    }
  }
}

TEST_CASE("join_scopes and split_scopes are inverses on normal sets", "[scope]") {
  const std::vector<std::string> set = normalize_scopes({"b.*", "a", "**", "c:d"});
  CHECK(join_scopes(set) == "** a b.* c:d");
  CHECK(split_scopes(join_scopes(set)) == set);
  CHECK(join_scopes({}).empty());
  CHECK(split_scopes("").empty());
  CHECK(split_scopes("a") == std::vector<std::string>{"a"});
  CHECK(split_scopes("  a  b ") == std::vector<std::string>{"a", "b"});
}

TEST_CASE("scope grammar: the fast literal check agrees with the checker", "[scope]") {
  // Lengths around the vector path's 8 to 16, every class of character, and separators
  // at the ends and side by side.
  const std::string alphabet = std::string("az09_-.:*A \x7f\x80\xff") + std::string(1, '\0');
  std::uint64_t state = 0x11e7a1;
  const auto next = [&state] {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<std::size_t>(state >> 33);
  };
  for (int i = 0; i < 200000; ++i) {
    std::string s;
    const std::size_t len = 5 + next() % 15;
    for (std::size_t j = 0; j < len; ++j) {
      // Mostly valid characters, so that valid scopes and single faults both occur.
      s += next() % 4 != 0 ? "abcxyz0129_-"[next() % 12] : alphabet[next() % alphabet.size()];
      if (next() % 16 == 0) s.back() = "`{/;@["[next() % 6];  // just outside the ranges
    }
    INFO("scope of " << s.size() << " bytes");
    REQUIRE(is_literal_scope(s) == (scope_error(s, false) == nullptr));
  }
  // Every byte value at every place of a valid scope of each length the vector path
  // takes: the bytes just outside each accepted range (` { / ; @ [) included.
  for (std::size_t n = 8; n <= 16; ++n) {
    std::string base(n, 'a');
    base[n / 2] = '.';
    REQUIRE(is_literal_scope(base));
    for (std::size_t at = 0; at < n; ++at) {
      for (int b = 0; b < 256; ++b) {
        std::string s = base;
        s[at] = static_cast<char>(b);
        INFO("length " << n << ", byte " << b << " at " << at);
        REQUIRE(is_literal_scope(s) == (scope_error(s, false) == nullptr));
      }
    }
  }
  CHECK(is_literal_scope("billing:read"));
  CHECK(is_literal_scope("abcdefgh"));
  CHECK(is_literal_scope("a.b.c.d.e.f.g.hi"));
  CHECK_FALSE(is_literal_scope("orders.*"));
  CHECK_FALSE(is_literal_scope(".orders.read"));
  CHECK_FALSE(is_literal_scope("orders.read."));
  CHECK_FALSE(is_literal_scope("orders..read"));
  CHECK_FALSE(is_literal_scope("Orders.read"));
  CHECK_FALSE(is_literal_scope(std::string("orders.r\0ad", 11)));
}
