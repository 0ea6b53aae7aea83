#include "sqlite/admission.hpp"

#include <chrono>
#include <cstdint>
#include <string>

#include "apikeys/error.hpp"
#include "apikeys/limiter.hpp"
#include "sqlite/statement.hpp"

namespace apikeys::detail::sqlite {
namespace {

// A whole number of 1 to 18 digits, else nullopt.
std::optional<std::uint64_t> number(std::string_view s) noexcept {
  if (s.empty() || s.size() > 18) return std::nullopt;
  std::uint64_t v = 0;
  for (const char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return v;
}

// `text` up to `sep` (removed from `text`), or nullopt when `sep` is not there.
std::optional<std::string_view> take_until(std::string_view& text, char sep) noexcept {
  const std::size_t at = text.find(sep);
  if (at == std::string_view::npos) return std::nullopt;
  std::string_view head = text.substr(0, at);
  text.remove_prefix(at + 1);
  return head;
}

}  // namespace

std::string encode_rate_limits(const std::vector<RateLimit>& limits) {
  std::string out;
  for (const RateLimit& l : limits) {
    if (!out.empty()) out += ';';
    out += l.name;
    out += '=';
    out += std::to_string(l.limit);
    out += '/';
    out += std::to_string(l.period.count());
    out += '/';
    out += std::to_string(l.burst);
  }
  return out;
}

std::vector<RateLimit> decode_rate_limits(std::string_view text, const char* op) {
  std::vector<RateLimit> out;
  if (text.empty()) return out;
  const auto bad = [op]() { corrupt(op, "rate_limits does not parse"); };
  for (;;) {
    const std::size_t end = text.find(';');
    std::string_view item = text.substr(0, end);
    RateLimit l;
    const auto name = take_until(item, '=');
    const auto limit = take_until(item, '/');
    const auto period = take_until(item, '/');
    if (!name || !limit || !period) bad();
    const auto lim = number(*limit);
    const auto per = number(*period);
    const auto burst = number(item);
    if (!lim || !per || !burst) bad();
    l.name.assign(*name);
    l.limit = *lim;
    l.period = std::chrono::milliseconds(static_cast<std::int64_t>(*per));
    l.burst = *burst;
    out.push_back(std::move(l));
    if (end == std::string_view::npos) break;
    text.remove_prefix(end + 1);
    if (out.size() > KeyPolicyLimits::kMaxRateLimits) bad();
  }
  const std::size_t n = out.size();
  try {
    out = normalize_rate_limits(std::move(out));  // every rule, duplicates too
  } catch (const Error&) {
    corrupt(op, "rate_limits breaks a rule of RateLimit");
  }
  if (out.size() != n) corrupt(op, "rate_limits breaks a rule of RateLimit");
  return out;
}

void read_admission(sqlite3_stmt* s, int i, const char* op, KeyInfo& info, bool find_read) {
  if (sqlite3_column_type(s, i) == SQLITE_NULL) {
    info.lineage_id = Uuid();
  } else {
    const std::optional<Uuid> id = Uuid::parse(read_text_view(s, i, op, "lineage_id"));
    if (!id) corrupt(op, "lineage_id is not a UUID");
    info.lineage_id = *id;
  }
  info.rate_limits = find_read && empty_text_marker(s, i + 1)
                         ? std::vector<RateLimit>{}
                         : decode_rate_limits(read_text_view(s, i + 1, op, "rate_limits"), op);
}

Credits read_credits(sqlite3_stmt* s, int i, const char* op) {
  constexpr auto kMax = static_cast<std::int64_t>(KeyPolicyLimits::kMaxCredits);
  Credits c;
  const std::int64_t remaining = read_int(s, i, op, "credits remaining");
  if (remaining < 0 || remaining > kMax) corrupt(op, "credits remaining out of range");
  c.remaining = static_cast<std::uint64_t>(remaining);
  const std::int64_t interval = read_int(s, i + 2, op, "refill_interval");
  const std::int64_t mode = read_int(s, i + 3, op, "refill_mode");
  const std::int64_t cap = read_int(s, i + 4, op, "refill_cap");
  c.refilled_period = read_int(s, i + 5, op, "refilled_period");
  if (sqlite3_column_type(s, i + 1) != SQLITE_NULL) {
    const std::int64_t amount = read_int(s, i + 1, op, "refill_amount");
    if (amount < 1 || amount > kMax) corrupt(op, "refill_amount out of range");
    if (interval != 0 && interval != 1) corrupt(op, "unknown refill_interval");
    if (mode != 0 && mode != 1) corrupt(op, "unknown refill_mode");
    if (cap < 0 || cap > kMax) corrupt(op, "refill_cap out of range");
    CreditRefill r;
    r.amount = static_cast<std::uint64_t>(amount);
    r.interval = static_cast<RefillInterval>(interval);
    r.mode = static_cast<RefillMode>(mode);
    r.cap = static_cast<std::uint64_t>(cap);
    c.refill = r;
  }
  return c;
}

int bind_credits(sqlite3_stmt* s, const Credits& c) {
  constexpr std::uint64_t kMax = KeyPolicyLimits::kMaxCredits;
  const auto clamp = [](std::uint64_t v) {
    return static_cast<sqlite3_int64>(v < kMax ? v : kMax);
  };
  int rc = sqlite3_bind_int64(s, 2, clamp(c.remaining));
  const auto keep = [&rc](int r) {
    if (rc == SQLITE_OK) rc = r;
  };
  if (c.refill) {
    keep(sqlite3_bind_int64(s, 3, clamp(c.refill->amount)));
    keep(sqlite3_bind_int(s, 4, static_cast<int>(c.refill->interval)));
    keep(sqlite3_bind_int(s, 5, static_cast<int>(c.refill->mode)));
    keep(sqlite3_bind_int64(s, 6, clamp(c.refill->cap)));
  } else {
    keep(sqlite3_bind_null(s, 3));
    keep(sqlite3_bind_int(s, 4, 0));
    keep(sqlite3_bind_int(s, 5, 0));
    keep(sqlite3_bind_int64(s, 6, 0));
  }
  keep(sqlite3_bind_int64(s, 7, c.refilled_period));
  return rc;
}

}  // namespace apikeys::detail::sqlite
