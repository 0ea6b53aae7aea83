// fuzz_scope: the scope grammar (detail::scope_error), the matcher (scope_grants,
// scopes_grant), the normal form of a key's set (normalize_scopes) and its stored form
// (join_scopes / split_scopes), each against a reference written here from the rules in
// README.md ("Key policy"): a scope split into segments and separators by hand, no
// prefix arithmetic. Errors must name a rule (one of a fixed set), never the scope.
// Input: a required scope \0 then granted scopes, each ending at a NUL.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "apikeys/error.hpp"
#include "fuzz_support.hpp"
#include "scope.hpp"

namespace {

// A scope cut at its separators: segments[i] is followed by separators[i].
struct Split {
  std::vector<std::string_view> segments;
  std::vector<char> separators;
};

Split split(std::string_view s) {
  Split out;
  std::size_t start = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '.' || s[i] == ':') {
      out.segments.push_back(s.substr(start, i - start));
      out.separators.push_back(s[i]);
      start = i + 1;
    }
  }
  out.segments.push_back(s.substr(start));
  return out;
}

bool ref_literal_segment(std::string_view seg) {
  if (seg.empty() || seg.size() > 64) return false;
  for (char c : seg) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

bool is_wildcard(std::string_view seg) { return seg == "*" || seg == "**"; }

bool ref_valid(std::string_view s, bool wildcard_allowed) {
  if (s.empty() || s.size() > 128) return false;
  const Split p = split(s);
  for (std::size_t i = 0; i < p.segments.size(); ++i) {
    const bool last = i + 1 == p.segments.size();
    if (last && wildcard_allowed && is_wildcard(p.segments[i])) continue;
    if (!ref_literal_segment(p.segments[i])) return false;
  }
  return true;
}

// `g` a valid granted scope, `r` a valid literal one, both split.
bool ref_grants(const Split& g, const Split& r) {
  const std::string_view last = g.segments.back();
  if (!is_wildcard(last)) return g.segments == r.segments && g.separators == r.separators;
  const std::size_t fixed = g.segments.size() - 1;  // literal segments before the wildcard
  if (last == "*" ? r.segments.size() != fixed + 1 : r.segments.size() < fixed + 1) {
    return false;
  }
  for (std::size_t i = 0; i < fixed; ++i) {
    // The wildcard's own separator (separators[fixed - 1]) must match too.
    if (g.segments[i] != r.segments[i] || g.separators[i] != r.separators[i]) return false;
  }
  return true;
}

// Every message scope_error() and normalize_scopes() may give: a rule, never a value.
bool known_rule(std::string_view m) {
  static const char* const kRules[] = {
      "a scope must be 1 to 128 characters",
      "a scope is segments of 1 to 64 characters joined by '.' or ':'",
      "scope segments may contain only a-z, 0-9, '_' and '-'",
      "a scope wildcard must be a whole last segment: * or **",
      "a required scope must not contain a wildcard",
      "a key may have at most 64 scopes",
  };
  return std::any_of(std::begin(kRules), std::end(kRules), [&](const char* r) { return m == r; });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace apikeys::detail;
  fuzz::Reader in(data, size);
  const std::string required(in.field());
  std::vector<std::string> granted;
  while (!in.empty() && granted.size() < 80) granted.emplace_back(in.field());

  // The grammar, for every scope of the input, both ways.
  std::vector<std::string> all = granted;
  all.push_back(required);
  for (const std::string& s : all) {
    const char* as_granted = scope_error(s, true);
    const char* as_required = scope_error(s, false);
    FUZZ_CHECK((as_granted == nullptr) == ref_valid(s, true));
    FUZZ_CHECK((as_required == nullptr) == ref_valid(s, false));
    FUZZ_CHECK(as_granted == nullptr || known_rule(as_granted));
    FUZZ_CHECK(as_required == nullptr || known_rule(as_required));
    // A literal scope is a valid granted one; a valid scope has no space (join_scopes).
    if (as_required == nullptr) FUZZ_CHECK(as_granted == nullptr);
    if (as_granted == nullptr) FUZZ_CHECK(s.find(' ') == std::string::npos);
  }

  // The matcher: each valid granted scope against the required one, and (the first 16,
  // to keep the pairs few) against each other scope read as a required one.
  const bool required_ok = ref_valid(required, false);
  const Split required_split = split(required);
  std::vector<Split> splits;
  std::vector<bool> literal;
  for (const std::string& g : granted) {
    splits.push_back(split(g));
    literal.push_back(ref_valid(g, false));
  }
  bool any = false;
  std::vector<std::string> valid_granted;
  for (std::size_t i = 0; i < granted.size(); ++i) {
    const std::string& g = granted[i];
    if (!ref_valid(g, true)) continue;
    valid_granted.push_back(g);
    if (required_ok) {
      const bool grants = ref_grants(splits[i], required_split);
      FUZZ_CHECK(scope_grants(g, required) == grants);
      any = any || grants;
    }
    for (std::size_t j = 0; i < 16 && j < granted.size() && j < 16; ++j) {
      if (literal[j]) FUZZ_CHECK(scope_grants(g, granted[j]) == ref_grants(splits[i], splits[j]));
    }
    // A scope grants itself when it is literal; `**` grants every literal scope.
    if (literal[i]) FUZZ_CHECK(scope_grants(g, g));
  }
  if (required_ok) FUZZ_CHECK(scope_grants("**", required));
  FUZZ_CHECK(scopes_grant(valid_granted, required) == (required_ok && any));

  // The normal form: sorted, unique, at most 64, or a refusal naming a rule.
  std::vector<std::string> expected = granted;
  std::sort(expected.begin(), expected.end());
  expected.erase(std::unique(expected.begin(), expected.end()), expected.end());
  const bool all_valid = valid_granted.size() == granted.size();
  const bool should_accept = all_valid && expected.size() <= 64;
  try {
    const std::vector<std::string> normal = normalize_scopes(granted);
    FUZZ_CHECK(should_accept);
    FUZZ_CHECK(normal == expected);
    FUZZ_CHECK(normalize_scopes(normal) == normal);
    FUZZ_CHECK(split_scopes(join_scopes(normal)) == normal);
  } catch (const apikeys::Error& e) {
    FUZZ_CHECK(!should_accept);
    FUZZ_CHECK(e.code() == apikeys::ErrorCode::invalid_argument);
    FUZZ_CHECK(known_rule(e.what()));
    // An invalid scope is reported before the count.
    if (!all_valid) FUZZ_CHECK(std::strcmp(e.what(), "a key may have at most 64 scopes") != 0);
  }
  return 0;
}
