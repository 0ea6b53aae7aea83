// fuzz_rate_limit: parse_rate_limit() against a reference written here from the rules of
// limiter.hpp ("NAME=LIMIT/PERIOD[:BURST]"): it never crashes, accepts exactly what the
// reference accepts, refuses with Error(invalid_argument) naming a rule (never the
// input), and what it accepts reads back the same through format_rate_limit().
// Input: the spec, as is.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "apikeys/error.hpp"
#include "apikeys/limiter.hpp"
#include "fuzz_support.hpp"

namespace {

// 1 to 18 decimal digits.
std::optional<std::uint64_t> ref_number(std::string_view s) {
  if (s.empty() || s.size() > 18) return std::nullopt;
  std::uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return v;
}

bool ref_name(std::string_view n) {
  if (n.empty() || n.size() > 64) return false;
  for (char c : n) {
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
    if (!ok) return false;
  }
  const char f = n.front();
  return (f >= 'a' && f <= 'z') || (f >= '0' && f <= '9');
}

// The period in ms, when it is digits and a unit (any value; checked by the caller).
std::optional<std::uint64_t> ref_period(std::string_view p) {
  struct Unit {
    std::string_view suffix;
    std::uint64_t ms;
  };
  // "ms" before "s" and "m": the longest suffix that leaves only digits.
  for (const Unit u : {Unit{"ms", 1}, Unit{"s", 1000}, Unit{"m", 60'000}, Unit{"h", 3'600'000},
                       Unit{"d", 86'400'000}}) {
    if (p.size() <= u.suffix.size() || p.substr(p.size() - u.suffix.size()) != u.suffix) continue;
    const std::optional<std::uint64_t> n = ref_number(p.substr(0, p.size() - u.suffix.size()));
    if (!n) continue;
    if (*n > 86'400'000) return 86'400'001;  // out of range, whatever the unit
    return *n * u.ms;
  }
  return std::nullopt;
}

struct Parsed {
  std::string name;
  std::uint64_t limit = 0;
  std::uint64_t period_ms = 0;
  std::uint64_t burst = 0;
};

std::optional<Parsed> ref_parse(std::string_view spec) {
  const auto eq = spec.find('=');
  if (eq == std::string_view::npos) return std::nullopt;
  Parsed out;
  if (!ref_name(spec.substr(0, eq))) return std::nullopt;
  out.name = std::string(spec.substr(0, eq));
  std::string_view rest = spec.substr(eq + 1);
  const auto slash = rest.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  const auto limit = ref_number(rest.substr(0, slash));
  if (!limit || *limit < 1 || *limit > 1'000'000'000) return std::nullopt;
  out.limit = *limit;
  rest = rest.substr(slash + 1);
  const auto colon = rest.find(':');
  if (colon != std::string_view::npos) {
    const auto burst = ref_number(rest.substr(colon + 1));
    if (!burst || *burst < 1 || *burst > 1'000'000'000) return std::nullopt;
    out.burst = *burst;
    rest = rest.substr(0, colon);
  }
  const auto period = ref_period(rest);
  if (!period || *period < 1000 || *period > 86'400'000) return std::nullopt;
  out.period_ms = *period;
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view spec(reinterpret_cast<const char*>(data), size);
  const std::optional<Parsed> expected = ref_parse(spec);
  try {
    const apikeys::RateLimit l = apikeys::parse_rate_limit(spec);
    FUZZ_CHECK(expected.has_value());
    FUZZ_CHECK(l.name == expected->name);
    FUZZ_CHECK(l.limit == expected->limit);
    FUZZ_CHECK(static_cast<std::uint64_t>(l.period.count()) == expected->period_ms);
    FUZZ_CHECK(l.burst == expected->burst);
    // What it accepts, normalize_rate_limits() accepts too, and it reads back.
    FUZZ_CHECK(apikeys::normalize_rate_limits({l}).size() == 1);
    const std::string formatted = apikeys::format_rate_limit(l);
    const apikeys::RateLimit back = apikeys::parse_rate_limit(formatted);
    FUZZ_CHECK(back.name == l.name && back.limit == l.limit && back.period == l.period &&
               back.burst == l.burst);
    FUZZ_CHECK(apikeys::format_rate_limit(back) == formatted);
  } catch (const apikeys::Error& e) {
    FUZZ_CHECK(!expected.has_value());
    FUZZ_CHECK(e.code() == apikeys::ErrorCode::invalid_argument);
    // A rule, never the input: the message is one of a few fixed texts.
    const std::string_view m = e.what();
    FUZZ_CHECK(m.substr(0, 12) == "rate limit: ");
    FUZZ_CHECK(m.size() < 120);
  }
  return 0;
}
