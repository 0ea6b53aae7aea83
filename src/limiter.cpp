// The Limiter interface's out-of-line parts, and the rules of rate limits and credits:
// parse_rate_limit, format_rate_limit, normalize_rate_limits, check_credits.
#include "apikeys/limiter.hpp"

#include <algorithm>
#include <cstdint>
#include <string>

#include "apikeys/error.hpp"

namespace apikeys {

// Defined here so the vtable lives in the library.
Limiter::~Limiter() = default;

void Limiter::admit_into(const AdmissionRequest& request, Admission& out) { out = admit(request); }

namespace {

[[noreturn]] void refuse(const std::string& why) {
  throw Error(ErrorCode::invalid_argument, "rate limit: " + why);
}

bool name_char(char c) noexcept {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
}

void check_name(std::string_view name) {
  if (name.empty()) refuse("the name is empty");
  if (name.size() > KeyPolicyLimits::kMaxRateLimitName) {
    refuse("the name is longer than " + std::to_string(KeyPolicyLimits::kMaxRateLimitName) +
           " characters");
  }
  if (!std::all_of(name.begin(), name.end(), name_char)) {
    refuse("the name may hold only a-z, 0-9, '_', '.' and '-'");
  }
  if (!name_char(name.front()) || name.front() == '_' || name.front() == '.' ||
      name.front() == '-') {
    refuse("the name must start with a letter or digit");
  }
}

void check_values(const RateLimit& l) {
  if (l.limit < 1 || l.limit > KeyPolicyLimits::kMaxRateLimitValue) {
    refuse("the limit must be 1 to " + std::to_string(KeyPolicyLimits::kMaxRateLimitValue));
  }
  if (l.period < KeyPolicyLimits::kMinRateLimitPeriod ||
      l.period > KeyPolicyLimits::kMaxRateLimitPeriod) {
    refuse("the period must be 1 s to 1 day");
  }
  if (l.burst > KeyPolicyLimits::kMaxRateLimitValue) {
    refuse("the burst must be 1 to " + std::to_string(KeyPolicyLimits::kMaxRateLimitValue));
  }
}

// A whole number of at most 18 digits (no sign, no leading '+'), else nullopt.
std::optional<std::uint64_t> parse_number(std::string_view s) noexcept {
  if (s.empty() || s.size() > 18) return std::nullopt;
  std::uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return v;
}

}  // namespace

RateLimit parse_rate_limit(std::string_view spec) {
  const auto eq = spec.find('=');
  if (eq == std::string_view::npos) refuse("expected NAME=LIMIT/PERIOD[:BURST]");
  RateLimit out;
  const std::string_view name = spec.substr(0, eq);
  check_name(name);
  out.name = std::string(name);
  std::string_view rest = spec.substr(eq + 1);
  const auto slash = rest.find('/');
  if (slash == std::string_view::npos) refuse("expected NAME=LIMIT/PERIOD[:BURST]");
  const std::optional<std::uint64_t> limit = parse_number(rest.substr(0, slash));
  if (!limit) refuse("the limit must be a whole number");
  out.limit = *limit;
  rest = rest.substr(slash + 1);
  std::string_view period = rest;
  const auto colon = rest.find(':');
  if (colon != std::string_view::npos) {
    period = rest.substr(0, colon);
    const std::optional<std::uint64_t> burst = parse_number(rest.substr(colon + 1));
    if (!burst) refuse("the burst must be a whole number");
    if (*burst < 1) refuse("the burst must be at least 1");
    out.burst = *burst;
  }
  constexpr const char* kPeriodRule =
      "the period must be a whole number followed by ms, s, m, h or d";
  std::uint64_t unit_ms = 0;
  std::string_view digits;
  if (period.size() > 2 && period.substr(period.size() - 2) == "ms") {
    unit_ms = 1;  // what format_rate_limit() writes for a period of no whole second
    digits = period.substr(0, period.size() - 2);
  } else if (period.size() >= 2) {
    switch (period.back()) {
      case 's': unit_ms = 1000; break;
      case 'm': unit_ms = 60'000; break;
      case 'h': unit_ms = 3'600'000; break;
      case 'd': unit_ms = 86'400'000; break;
      default: refuse(kPeriodRule);
    }
    digits = period.substr(0, period.size() - 1);
  } else {
    refuse(kPeriodRule);
  }
  const std::optional<std::uint64_t> count = parse_number(digits);
  if (!count) refuse(kPeriodRule);
  // Anything above a day is out of range; checked before multiplying.
  if (*count > 86'400'000 / unit_ms) refuse("the period must be 1 s to 1 day");
  out.period = std::chrono::milliseconds(static_cast<std::int64_t>(*count * unit_ms));
  check_values(out);
  return out;
}

std::string format_rate_limit(const RateLimit& limit) {
  const std::int64_t ms = limit.period.count();
  std::string period;
  if (ms > 0 && ms % 86'400'000 == 0) {
    period = std::to_string(ms / 86'400'000) + "d";
  } else if (ms > 0 && ms % 3'600'000 == 0) {
    period = std::to_string(ms / 3'600'000) + "h";
  } else if (ms > 0 && ms % 60'000 == 0) {
    period = std::to_string(ms / 60'000) + "m";
  } else if (ms > 0 && ms % 1000 == 0) {
    period = std::to_string(ms / 1000) + "s";
  } else {
    period = std::to_string(ms) + "ms";
  }
  std::string out = limit.name + "=" + std::to_string(limit.limit) + "/" + period;
  if (limit.burst != 0) out += ":" + std::to_string(limit.burst);
  return out;
}

std::vector<RateLimit> normalize_rate_limits(std::vector<RateLimit> limits) {
  if (limits.size() > KeyPolicyLimits::kMaxRateLimits) {
    refuse("a key has at most " + std::to_string(KeyPolicyLimits::kMaxRateLimits) + " rate limits");
  }
  for (const RateLimit& l : limits) {
    check_name(l.name);
    check_values(l);
  }
  std::sort(limits.begin(), limits.end(),
            [](const RateLimit& a, const RateLimit& b) { return a.name < b.name; });
  for (std::size_t i = 1; i < limits.size(); ++i) {
    if (limits[i].name == limits[i - 1].name) refuse("two rate limits have the same name");
  }
  return limits;
}

void check_credits(const Credits& credits) {
  constexpr std::uint64_t kMax = KeyPolicyLimits::kMaxCredits;
  if (credits.remaining > kMax) {
    throw Error(ErrorCode::invalid_argument, "credits: the balance must be 0 to 2^53");
  }
  if (credits.refill) {
    const CreditRefill& r = *credits.refill;
    if (r.amount < 1 || r.amount > kMax) {
      throw Error(ErrorCode::invalid_argument, "credits: the refill amount must be 1 to 2^53");
    }
    if (r.cap > kMax) {
      throw Error(ErrorCode::invalid_argument, "credits: the refill cap must be 1 to 2^53");
    }
    if (r.interval != RefillInterval::daily && r.interval != RefillInterval::monthly) {
      throw Error(ErrorCode::invalid_argument,
                  "credits: the refill interval must be daily or monthly");
    }
    if (r.mode != RefillMode::reset && r.mode != RefillMode::add_capped) {
      throw Error(ErrorCode::invalid_argument, "credits: the refill mode must be reset or add");
    }
  }
}

}  // namespace apikeys
