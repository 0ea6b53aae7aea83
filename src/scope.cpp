#include "scope.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>

#include "apikeys/error.hpp"
#include "apikeys/types.hpp"

namespace apikeys::detail {

namespace {

// The grammar's character classes, one table lookup per character: scope_error() runs on
// every required scope of every validation that is not 8 to 16 characters long
// (is_literal_scope() checks those in one vector).
enum CharClass : std::uint8_t { kOther = 0, kSegment = 1, kSeparator = 2, kStar = 3 };

constexpr std::array<std::uint8_t, 256> make_classes() noexcept {
  std::array<std::uint8_t, 256> t{};
  for (int c = 'a'; c <= 'z'; ++c) t[static_cast<std::size_t>(c)] = kSegment;
  for (int c = '0'; c <= '9'; ++c) t[static_cast<std::size_t>(c)] = kSegment;
  t[static_cast<unsigned char>('_')] = kSegment;
  t[static_cast<unsigned char>('-')] = kSegment;
  t[static_cast<unsigned char>('.')] = kSeparator;
  t[static_cast<unsigned char>(':')] = kSeparator;
  t[static_cast<unsigned char>('*')] = kStar;
  return t;
}
constexpr std::array<std::uint8_t, 256> kClasses = make_classes();

std::uint8_t class_of(char c) noexcept { return kClasses[static_cast<unsigned char>(c)]; }

constexpr const char* kBadLength = "a scope must be 1 to 128 characters";
constexpr const char* kBadSegments =
    "a scope is segments of 1 to 64 characters joined by '.' or ':'";
constexpr const char* kBadWildcard = "a scope wildcard must be a whole last segment: * or **";

}  // namespace

const char* scope_error(std::string_view scope, bool wildcard_allowed) noexcept {
  if (scope.empty() || scope.size() > KeyPolicyLimits::kMaxScopeLength) return kBadLength;
  std::string_view body = scope;
  if (wildcard_allowed) {
    // A wildcard is the whole last segment: "**", "*", "p.**", "p.*" (p a literal path).
    std::size_t stars = 0;
    while (stars < body.size() && stars < 2 && body[body.size() - 1 - stars] == '*') ++stars;
    if (stars > 0) {
      body.remove_suffix(stars);
      if (body.empty()) return nullptr;  // "*" or "**" alone
      if (class_of(body.back()) != kSeparator) return kBadWildcard;
      body.remove_suffix(1);
    }
  }
  // Left to right, the first rule broken: a segment's length is judged at its end.
  std::size_t segment = 0;
  for (const char c : body) {
    const std::uint8_t k = class_of(c);
    if (k == kSegment) {
      ++segment;
    } else if (k == kSeparator) {
      if (segment == 0 || segment > KeyPolicyLimits::kMaxSegmentLength) return kBadSegments;
      segment = 0;
    } else if (k == kStar) {
      return wildcard_allowed ? kBadWildcard : "a required scope must not contain a wildcard";
    } else {
      return "scope segments may contain only a-z, 0-9, '_' and '-'";
    }
  }
  if (segment == 0 || segment > KeyPolicyLimits::kMaxSegmentLength) return kBadSegments;
  return nullptr;
}

bool is_literal_scope(std::string_view scope) noexcept {
#if defined(__SSE2__)
  const std::size_t n = scope.size();
  if (n >= 8 && n <= 16) {
    // The scope in one vector, from two 8-byte loads that overlap when n < 16 (the
    // second shifted so that byte i of the vector is character i; the rest are 0, which
    // no class accepts, and lie past n, where the masks look no further).
    std::uint64_t lo = 0;
    std::uint64_t hi = 0;
    std::memcpy(&lo, scope.data(), 8);
    std::memcpy(&hi, scope.data() + n - 8, 8);
    hi = n == 8 ? 0 : hi >> (8 * (16 - n));
    const __m128i v = _mm_set_epi64x(static_cast<long long>(hi), static_cast<long long>(lo));
    const auto in = [&v](char first, char last) {
      // Signed compares: bytes of 0x80 and over are negative and fall in no range.
      return _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8(static_cast<char>(first - 1))),
                           _mm_cmplt_epi8(v, _mm_set1_epi8(static_cast<char>(last + 1))));
    };
    const auto is = [&v](char c) { return _mm_cmpeq_epi8(v, _mm_set1_epi8(c)); };
    const __m128i segment =
        _mm_or_si128(_mm_or_si128(in('a', 'z'), in('0', '9')), _mm_or_si128(is('_'), is('-')));
    const __m128i separator = _mm_or_si128(is('.'), is(':'));
    const unsigned all = (1U << n) - 1;
    const auto seg = static_cast<unsigned>(_mm_movemask_epi8(segment)) & all;
    const auto sep = static_cast<unsigned>(_mm_movemask_epi8(separator)) & all;
    // Every character a segment character or a separator; no separator first, last or
    // next to another (segments of 1 to 16 characters: within the 64 allowed).
    return (seg | sep) == all && (sep & 1U) == 0 && (sep >> (n - 1)) == 0 &&
           (sep & (sep >> 1)) == 0;
  }
#endif
  return scope_error(scope, /*wildcard_allowed=*/false) == nullptr;
}

std::vector<std::string> normalize_scopes(const std::vector<std::string>& scopes) {
  for (const std::string& s : scopes) {
    if (const char* rule = scope_error(s, /*wildcard_allowed=*/true)) {
      throw Error(ErrorCode::invalid_argument, rule);
    }
  }
  std::vector<std::string> out(scopes);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  if (out.size() > KeyPolicyLimits::kMaxScopes) {
    throw Error(ErrorCode::invalid_argument, "a key may have at most 64 scopes");
  }
  return out;
}

namespace {

// scope_grants(), inlined into scopes_grant()'s wildcard loop.
inline bool grants(std::string_view granted, std::string_view required) noexcept {
  const std::size_t n = granted.size();
  if (n == 0) return false;
  if (granted[n - 1] != '*') {
    // Most granted scopes differ from the required one in length or in their first
    // character; those two tests come before the library's memcmp call.
    return n == required.size() && granted[0] == required[0] &&
           std::memcmp(granted.data(), required.data(), n) == 0;
  }
  const bool deep = n >= 2 && granted[n - 2] == '*';
  const std::string_view prefix = granted.substr(0, n - (deep ? 2 : 1));
  // A wildcard is a whole last segment. One inside a segment ("read*", which only a
  // store of the caller's own could return) grants nothing, not every scope it begins.
  if (!prefix.empty() && class_of(prefix.back()) != kSeparator) return false;
  if (required.size() <= prefix.size() || required.substr(0, prefix.size()) != prefix) {
    return false;
  }
  if (deep) return true;
  const std::string_view rest = required.substr(prefix.size());
  return std::none_of(rest.begin(), rest.end(), [](char c) { return class_of(c) == kSeparator; });
}

}  // namespace

bool scope_grants(std::string_view granted, std::string_view required) noexcept {
  return grants(granted, required);
}

bool scopes_grant(const std::vector<std::string>& granted, std::string_view required) noexcept {
  if (!is_literal_scope(required)) return false;
  // A literal required scope is granted by an equal scope (literal too) or by a
  // wildcard: equality first, in a loop of plain loads and compares, as most required
  // scopes are granted that way.
  const std::size_t n = required.size();
  for (const std::string& g : granted) {
    if (g.size() == n && g[0] == required[0] && std::memcmp(g.data(), required.data(), n) == 0) {
      return true;
    }
  }
  for (const std::string& g : granted) {
    if (!g.empty() && g.back() == '*' && grants(g, required)) return true;
  }
  return false;
}

std::string join_scopes(const std::vector<std::string>& scopes) {
  std::string out;
  for (const std::string& s : scopes) {
    if (!out.empty()) out += ' ';
    out += s;
  }
  return out;
}

std::vector<std::string> split_scopes(std::string_view joined) {
  std::vector<std::string> out;
  while (!joined.empty()) {
    const std::size_t space = joined.find(' ');
    const std::string_view one = joined.substr(0, space);
    if (!one.empty()) out.emplace_back(one);
    if (space == std::string_view::npos) break;
    joined.remove_prefix(space + 1);
  }
  return out;
}

}  // namespace apikeys::detail
